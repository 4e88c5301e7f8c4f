"""Traces, correlation, query, replay, ttl and the topic grammar at their edges.

Everything runs in one process on real parts: a real bus, a real RocksDB
journal in the test's folder.  The promises are those of SPEC sections 2, 3,
5 and 6, docs/observability.md, docs/persistence.md and docs/topics.md;
where they are silent the test says what a user plainly expects.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pykka
import pytest

from actors import (
    Event,
    EventBus,
    EventFilter,
    EventQuery,
    InvalidEventError,
    InvalidPatternError,
)
from tests._support import WAIT, Recorder, tracer_provider, wait_for

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
BASE = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def publish_all(bus: EventBus, events: list[Event]) -> list[Event]:
    return [f.get(WAIT) for f in bus.publish_many(events)]


def dicts(events: Any) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


def run_bounded(fn: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Run ``fn`` in a thread; fail if it does not return within ``timeout``."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test
            out["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not return within {timeout}s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- forged causation: cycles, forward references, other correlations ------------------


def _forward_cause(cid: uuid.UUID) -> list[Event]:
    later_id = uuid.uuid4()
    return [
        Event(event_type="wf.a", correlation_id=cid, causation_id=later_id),
        Event(event_type="wf.b", id=later_id, correlation_id=cid),
    ]


def _ring_with_tail(cid: uuid.UUID) -> list[Event]:
    ids = [uuid.uuid4() for _ in range(3)]
    ring = [
        Event(event_type=f"ring.e{i}", id=ids[i], correlation_id=cid, causation_id=ids[i - 1])
        for i in range(3)
    ]
    return [*ring, Event(event_type="ring.tail", correlation_id=cid, causation_id=ids[2])]


# get_correlated answers in sequence order, also when the journal is merged in
# (after a restart memory is empty): events of one node are never reordered by
# the causes a caller gave them (a cause that names a later event, a forged
# ring); only events merged from several nodes are put after their causes.
@pytest.mark.parametrize("shape", [_forward_cause, _ring_with_tail])
def test_forged_causes_keep_sequence_order_after_restart(
    open_bus: Callable[..., EventBus], shape: Callable[[uuid.UUID], list[Event]]
) -> None:
    bus = open_bus()
    cid = uuid.uuid4()
    publish_all(bus, shape(cid))
    live = bus.get_correlated(cid)
    assert [e.sequence for e in live] == sorted(e.sequence or 0 for e in live)
    bus.close(timeout=WAIT)
    again = open_bus()
    restored = again.get_correlated(cid)
    assert [e.sequence for e in restored] == sorted(e.sequence or 0 for e in restored)
    assert dicts(restored) == dicts(live)


def test_forged_causation_cycle_through_the_journal(open_bus: Callable[..., EventBus]) -> None:
    # Trace: "a hand-built or corrupt trace may hold [a cycle]; the earliest event of
    # each cycle (in trace order) is then treated as a root ... every walk terminates".
    bus = open_bus()
    cid = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(3)]
    ring = [
        Event(event_type=f"ring.e{i}", id=ids[i], correlation_id=cid, causation_id=ids[i - 1])
        for i in range(3)
    ]
    tail = Event(event_type="ring.tail", correlation_id=cid, causation_id=ids[2])
    publish_all(bus, [*ring, tail])
    live = bus.trace(cid)
    bus.close(timeout=WAIT)
    again = open_bus()
    trace = run_bounded(lambda: again.trace(cid))
    assert len(trace) == 4
    assert [e.event_type for e in trace.roots()] == ["ring.e0"]
    assert [e.event_type for e in trace.chain(tail.id)] == [
        "ring.e0",
        "ring.e1",
        "ring.e2",
        "ring.tail",
    ]
    lines = trace.render().splitlines()
    assert len(lines) == 5
    assert "(causation cycle)" in lines[1]
    assert trace.render() == live.render()
    # get_correlated after the restart still returns all four, once each.
    assert sorted(e.id for e in again.get_correlated(cid)) == sorted(e.id for e in [*ring, tail])


def test_self_caused_event_through_the_journal(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    cid = uuid.uuid4()
    me = uuid.uuid4()
    publish_all(bus, [Event(event_type="self.loop", id=me, correlation_id=cid, causation_id=me)])
    bus.close(timeout=WAIT)
    trace = open_bus().trace(cid)
    assert [e.id for e in trace.roots()] == [me]
    assert trace.depth == 1
    assert trace.chain(me) == [trace.get(me)]


def test_cause_in_another_correlation_is_a_root_of_its_own_trace(
    open_bus: Callable[..., EventBus],
) -> None:
    # SPEC 5: trace(cid) holds the events *of that correlation*; a cause that
    # belongs to another workflow is not pulled in, the event is a root that
    # says its cause is not in the trace (Trace.render).
    bus = open_bus()
    cid_a, cid_b = uuid.uuid4(), uuid.uuid4()
    (a,) = publish_all(bus, [Event(event_type="wf.a", correlation_id=cid_a)])
    (b,) = publish_all(bus, [Event(event_type="wf.b", correlation_id=cid_b, causation_id=a.id)])
    for trace in (bus.trace(cid_b), bus.trace(cid_a)):
        assert len(trace) == 1
    tb = bus.trace(cid_b)
    assert tb.roots() == [b]
    assert tb.parent(b.id) is None
    assert f"(cause {str(a.id)[:8]}… not in trace)" in tb.render()
    assert bus.trace(cid_a).children(a.id) == []
    bus.close(timeout=WAIT)
    again = open_bus()
    assert dicts(again.get_correlated(cid_b)) == dicts([b])
    assert dicts(again.get_correlated(cid_a)) == dicts([a])


def test_handler_inherits_cause_of_a_forged_event_and_trace_stays_a_forest(bus: EventBus) -> None:
    # SPEC 5: publishing from a handler sets causation_id to the handled
    # event's id and inherits its correlation id.  The handled event itself
    # names a cause that does not exist: the child still hangs under it.
    cid = uuid.uuid4()
    done = threading.Event()

    def step(event: Event) -> None:
        bus.publish("cyc.child", None).get(WAIT)
        done.set()

    bus.subscribe("cyc.parent", step)
    ghost = uuid.uuid4()
    (parent,) = publish_all(
        bus, [Event(event_type="cyc.parent", correlation_id=cid, causation_id=ghost)]
    )
    assert done.wait(WAIT)
    trace = bus.trace(cid)
    assert [e.event_type for e in trace.roots()] == ["cyc.parent"]
    (child,) = trace.children(parent.id)
    assert child.causation_id == parent.id
    assert child.correlation_id == cid


# -- big and deep traces ------------------------------------------------------------------


def test_trace_of_100000_events_from_journal_and_memory(open_bus: Callable[..., EventBus]) -> None:
    # SPEC 5: memory is bounded by max_events_per_trace; persistence.md: when the
    # memory trace is not complete get_correlated/trace merge in the journal.
    bus = open_bus(max_events_per_trace=1000)
    cid = uuid.uuid4()
    n = 100_000
    events: list[Event] = []
    for i in range(n):
        cause = events[(i - 1) // 2].id if i else None  # a binary heap: depth 17
        events.append(
            Event(
                event_type="big.step",
                data=i,
                correlation_id=cid,
                causation_id=cause,
                timestamp=BASE + timedelta(microseconds=i),
            )
        )
    for start in range(0, n, 10_000):
        futures = bus.publish_many(events[start : start + 10_000])
    futures[-1].get(60)
    bus.flush(60)
    got = bus.get_correlated(cid, timeout=60)
    assert len(got) == n
    assert [e.data for e in got] == list(range(n))
    trace = Trace_from(got, cid)
    assert len(trace.roots()) == 1
    assert trace.depth == n.bit_length()
    assert len(trace.leaves()) == n - n // 2
    assert len(trace.render().splitlines()) == n + 1


def Trace_from(events: list[Event], cid: uuid.UUID) -> Any:
    from actors._model.trace import Trace  # noqa: PLC0415

    return Trace(cid, events)


def test_chain_of_10000_levels_renders_exports_and_walks(bus: EventBus) -> None:
    # The render is "a text tree"; a user expects a chain of 10,000 causes to
    # render, walk and export without hitting Python's recursion limit.
    cid = uuid.uuid4()
    n = 10_000
    events: list[Event] = []
    for i in range(n):
        events.append(
            Event(
                event_type="deep.step",
                correlation_id=cid,
                causation_id=events[-1].id if events else None,
                timestamp=BASE + timedelta(microseconds=i),
            )
        )
    publish_all(bus, events)
    trace = bus.trace(cid)
    assert trace.depth == n
    assert len(trace.chain(events[-1].id)) == n
    lines = trace.render().splitlines()
    assert len(lines) == n + 1
    assert lines[-1].endswith("deep.step")
    assert [d for _, d in trace.walk()] == list(range(n))
    provider, sink = tracer_provider()
    assert trace.to_otel(provider) == n
    spans = sink.wait_for(n)
    by_id = {s.context.span_id: s for s in spans}
    # Children lie inside their parents: each span ends at the last descendant.
    last = max(s.end_time for s in spans)
    assert all(s.end_time == last for s in spans)
    assert sum(1 for s in spans if s.parent is None or s.parent.span_id not in by_id) == 1


def test_deep_chain_published_out_of_order_renders_in_causal_shape(bus: EventBus) -> None:
    # Children published before their parents (sequence order disagrees with
    # causation): the tree is still the causal one, every event once.
    cid = uuid.uuid4()
    n = 2000
    events: list[Event] = []
    for _ in range(n):
        events.append(
            Event(
                event_type="rev.step",
                correlation_id=cid,
                causation_id=events[-1].id if events else None,
            )
        )
    publish_all(bus, list(reversed(events)))
    trace = bus.trace(cid)
    assert trace.depth == n
    assert [e.id for e in trace.chain(events[-1].id)] == [e.id for e in events]
    assert len(trace.render().splitlines()) == n + 1


# -- memory evicted, journal full -----------------------------------------------------------


def test_cause_truncated_from_memory_is_found_in_the_journal(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus(max_events_per_trace=3)
    cid = uuid.uuid4()
    events: list[Event] = []
    for i in range(10):
        events.append(
            Event(
                event_type="chain.step",
                data=i,
                correlation_id=cid,
                causation_id=events[-1].id if events else None,
            )
        )
    publish_all(bus, events)
    trace = bus.trace(cid)
    assert len(trace) == 10
    assert trace.depth == 10
    assert "not in trace" not in trace.render()
    assert [e.data for e in bus.get_correlated(cid)] == list(range(10))


def test_restart_with_a_small_per_trace_bound_reads_the_whole_trace(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    cid = uuid.uuid4()
    first = publish_all(
        bus, [Event(event_type="wf.old", data=i, correlation_id=cid) for i in range(50)]
    )
    bus.close(timeout=WAIT)
    again = open_bus(max_events_per_trace=5)
    # Memory empty, journal full.
    assert dicts(again.get_correlated(cid)) == dicts(first)
    # Memory now holds a truncated tail of the same correlation.
    more = publish_all(
        again, [Event(event_type="wf.new", data=i, correlation_id=cid) for i in range(10)]
    )
    got = again.get_correlated(cid)
    assert dicts(got) == dicts(first + more)
    assert len({e.id for e in got}) == 60
    assert len(again.trace(cid)) == 60


def test_trace_ttl_eviction_reads_back_from_the_journal(open_bus: Callable[..., EventBus]) -> None:
    # persistence.md: evicted by trace_ttl -> merged from the journal.
    bus = open_bus(trace_ttl=0.05)
    cid = uuid.uuid4()
    sent = publish_all(
        bus, [Event(event_type="wf.ttl", data=i, correlation_id=cid) for i in range(5)]
    )

    # The store sweeps expired traces as events arrive: keep other workflows
    # publishing until the clock has evicted this one.
    def evicted() -> bool:
        bus.publish_correlated("wf.other", None, uuid.uuid4()).get(WAIT)
        return bus.metrics().traces_evicted >= 1

    assert wait_for(evicted)
    assert dicts(bus.get_correlated(cid)) == dicts(sent)


# -- ttl -------------------------------------------------------------------------------------


def _stale(event_type: str, data: Any, ttl: float = 1.0, **fields: Any) -> Event:
    """An event stamped an hour ago with a short ttl: expired before it is ever handled."""
    return Event(
        event_type=event_type,
        data=data,
        ttl=ttl,
        timestamp=datetime.now(UTC) - timedelta(hours=1),
        **fields,
    )


def test_expired_event_is_not_delivered_live_but_is_journaled(
    open_bus: Callable[..., EventBus],
) -> None:
    # SPEC 2: "an expired event is not delivered"; the query differential shows
    # expired events are stored.  A later, fresh event is delivered.
    bus = open_bus()
    rec = Recorder()
    sub = bus.subscribe("ttl.*", rec)
    stale = bus.publish(_stale("ttl.x", "stale")).get(WAIT)
    fresh = bus.publish("ttl.x", "fresh", ttl=3600.0).get(WAIT)
    rec.wait_for(fresh)
    bus.flush(WAIT)
    assert rec.data == ["fresh"]
    assert sub.statistics().delivered == 1
    assert bus.metrics().expired == 1
    assert [e.id for e in bus.query(EventQuery(event_types="ttl.*"))] == [stale.id, fresh.id]


def test_future_stamped_event_with_zero_ttl_is_delivered(bus: EventBus) -> None:
    # event_checks: expired "once strictly more than ttl seconds have passed since
    # timestamp": a timestamp an hour ahead with ttl 0 has not expired yet.
    rec = Recorder()
    bus.subscribe("ttl.future", rec)
    ev = bus.publish(
        Event(event_type="ttl.future", ttl=0.0, timestamp=datetime.now(UTC) + timedelta(hours=1))
    ).get(WAIT)
    rec.wait_for(ev)
    assert rec.data == [None]


def test_catch_up_skips_events_expired_in_the_journal(open_bus: Callable[..., EventBus]) -> None:
    # SPEC 2 (expired: not delivered) holds for catch-up delivery as well.
    bus = open_bus()
    publish_all(bus, [_stale("cu.a", 1), Event(event_type="cu.a", data=2)])
    bus.close(timeout=WAIT)
    again = open_bus()
    rec = Recorder()
    sub = again.subscribe("cu.*", rec, from_sequence=1)
    last = again.publish("cu.a", 3).get(WAIT)
    rec.wait_for(last)
    assert rec.data == [2, 3]
    assert wait_for(lambda: sub.statistics().delivered == 2)


def test_expired_event_delivered_to_an_actor_ref_handler_is_not(bus: EventBus) -> None:
    # SPEC 4: handler may be a pykka.ActorRef; SPEC 2: an expired event is not delivered.
    got: list[Any] = []
    seen = threading.Event()

    class Sink(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            got.append(message)
            if getattr(message, "data", None) == "fresh":
                seen.set()

    ref = Sink.start()
    try:
        bus.subscribe("ttl.actor", ref)
        bus.publish(_stale("ttl.actor", "stale")).get(WAIT)
        bus.publish("ttl.actor", "fresh").get(WAIT)
        assert seen.wait(WAIT)
        assert [getattr(m, "data", m) for m in got] == ["fresh"]
    finally:
        ref.stop()


def test_expired_event_during_durable_resume_moves_the_checkpoint(
    open_bus: Callable[..., EventBus],
) -> None:
    # persistence.md: a durable subscription resumes "exactly after the last event
    # it handled"; an expired event it skipped must not be offered again.
    bus = open_bus()
    rec = Recorder()
    bus.subscribe("dur.*", rec, durable="d1")
    publish_all(bus, [_stale("dur.a", 1)])
    last = bus.publish("dur.a", 2).get(WAIT)
    rec.wait_for(last)
    bus.close(timeout=WAIT)
    again = open_bus()
    rec2 = Recorder()
    again.subscribe("dur.*", rec2, durable="d1")
    nxt = again.publish("dur.a", 3).get(WAIT)
    rec2.wait_for(nxt)
    assert rec2.data == [3]


# -- priority, tags, metadata edge values -----------------------------------------------


EDGE_FIELDS: list[dict[str, Any]] = [
    {"priority": INT64_MIN, "tags": (), "metadata": {}},
    {"priority": INT64_MAX, "tags": ("",), "metadata": {"": ""}},
    {"priority": -1, "tags": ("ü", "事件", "a b", "x" * 10_000), "metadata": {"k\x00": "v\x00"}},
    {"priority": 0, "tags": ("dup", "dup"), "metadata": {"ключ": "значение", "e": "😀" * 100}},
]


@pytest.mark.parametrize("fields", EDGE_FIELDS)
def test_edge_fields_round_trip_through_journal_trace_and_restart(
    open_bus: Callable[..., EventBus], fields: dict[str, Any]
) -> None:
    # SPEC 2: "Round trips are exact"; persistence.md: queries return "the stored
    # events exactly as published".
    bus = open_bus()
    cid = uuid.uuid4()
    sent = bus.publish("edge.fields", {"n": 1}, correlation_id=cid, **fields).get(WAIT)
    live = bus.get_correlated(cid)
    assert dicts(live) == dicts([sent])
    bus.close(timeout=WAIT)
    again = open_bus()
    assert dicts(again.query(EventQuery(correlation_id=cid))) == dicts([sent])
    assert dicts(again.get_correlated(cid)) == dicts([sent])
    assert again.trace(cid).render().count("\n") == 1


def test_min_priority_filter_at_the_int64_edges(bus: EventBus) -> None:
    # SPEC 4: EventFilter(min_priority=...): events below it are not delivered.
    rec = Recorder()
    bus.subscribe("prio.*", rec, filter=EventFilter(min_priority=INT64_MAX))
    low = bus.publish("prio.x", "low", priority=INT64_MAX - 1).get(WAIT)
    high = bus.publish("prio.x", "high", priority=INT64_MAX).get(WAIT)
    rec.wait_for(high)
    assert rec.data == ["high"]
    assert low.priority == INT64_MAX - 1
    rec_all = Recorder()
    bus.subscribe("prio.*", rec_all, filter=EventFilter(min_priority=INT64_MIN))
    bottom = bus.publish("prio.x", "bottom", priority=INT64_MIN).get(WAIT)
    rec_all.wait_for(bottom)
    assert rec_all.data == ["bottom"]


@pytest.mark.parametrize("priority", [INT64_MAX + 1, INT64_MIN - 1, True, 1.0])
def test_priority_outside_int64_is_refused(bus: EventBus, priority: Any) -> None:
    with pytest.raises(InvalidEventError, match="priority"):
        bus.publish("prio.bad", None, priority=priority)


@pytest.mark.parametrize("ttl", [-1.0, math.inf, math.nan, True, "1"])
def test_bad_ttl_is_refused(bus: EventBus, ttl: Any) -> None:
    with pytest.raises(InvalidEventError, match="ttl"):
        bus.publish("ttl.bad", None, ttl=ttl)


# -- the topic grammar at its edges --------------------------------------------------------


def test_double_star_alone_never_sees_reserved_events_but_dollar_bus_does(
    open_bus: Callable[..., EventBus],
) -> None:
    # topics.md: "`**` every non-`$` type ... does not match `$bus.deadletter`";
    # `$bus.**` does.  A failing handler produces a dead letter.
    bus = open_bus(handler_retries=0)
    everything = Recorder()
    reserved = Recorder()
    bus.subscribe("**", everything)
    bus.subscribe("$bus.**", reserved)

    def boom(event: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe("dl.x", boom)
    bus.publish("dl.x", 1).get(WAIT)
    assert wait_for(lambda: len(reserved.events) >= 1)
    bus.flush(WAIT)
    assert [e.event_type for e in everything.events] == ["dl.x"]
    assert [e.event_type for e in reserved.events] == ["$bus.deadletter"]
    assert [e.event_type for e in bus.query(EventQuery(event_types="**"))] == ["dl.x"]
    assert [e.event_type for e in bus.query(EventQuery(event_types=["$bus.**"]))] == [
        "$bus.deadletter"
    ]
    assert [e.event_type for e in bus.query(EventQuery(event_types="$b*.deadletter"))] == [
        "$bus.deadletter"
    ]
    for blind in ("*.deadletter", "**.deadletter", "?bus.deadletter", "{$bus,a}.deadletter"):
        assert bus.query(EventQuery(event_types=blind)) == [], blind
    assert {e.event_type for e in bus.query(EventQuery())} == {"dl.x", "$bus.deadletter"}


def test_double_star_in_the_middle_routes_and_queries(open_bus: Callable[..., EventBus]) -> None:
    # topics.md table: `a.**.b` matches a.b, a.x.b, a.x.y.b, not a.x.c; `**.x.**`.
    bus = open_bus()
    mid, around = Recorder(), Recorder()
    bus.subscribe("a.**.b", mid)
    bus.subscribe("**.x.**", around)
    types = ["a.b", "a.x.b", "a.x.y.b", "a.x.c", "x", "q.x", "x.q", "q.x.q", "a.bb", "b"]
    publish_all(bus, [Event(event_type=t) for t in types])
    bus.flush(WAIT)
    want_mid = ["a.b", "a.x.b", "a.x.y.b"]
    want_around = ["a.x.b", "a.x.y.b", "a.x.c", "x", "q.x", "x.q", "q.x.q"]
    assert [e.event_type for e in mid.events] == want_mid
    assert [e.event_type for e in around.events] == want_around
    assert [e.event_type for e in bus.query(EventQuery(event_types="a.**.b"))] == want_mid
    assert [e.event_type for e in bus.query(EventQuery(event_types="**.x.**"))] == want_around


def test_unicode_and_longest_types_route_query_and_survive_restart(
    open_bus: Callable[..., EventBus],
) -> None:
    # topics.md: non-ASCII letters are allowed; the whole type is at most 255
    # characters (characters, not bytes: 255 three-byte characters are valid).
    bus = open_bus()
    longest_ascii = ".".join(["a" * 127, "b" * 127])  # 255 characters
    longest_wide = "事" * 127 + "." + "件" * 127  # 255 characters, 763 bytes
    unicode_type = "ünïcode.事件"
    assert len(longest_ascii) == len(longest_wide) == 255
    rec = Recorder()
    bus.subscribe("ünïcode.*", rec)
    wide = Recorder()
    bus.subscribe("事*.件?*", wide)
    sent = publish_all(
        bus,
        [Event(event_type=t) for t in (unicode_type, longest_ascii, longest_wide, "ÜNÏCODE.事件")],
    )
    rec.wait_for(sent[0])
    wide.wait_for(sent[2])
    bus.flush(WAIT)
    assert [e.event_type for e in rec.events] == [unicode_type]  # case-sensitive
    assert [e.event_type for e in wide.events] == [longest_wide]
    bus.close(timeout=WAIT)
    again = open_bus()
    for t in (unicode_type, longest_ascii, longest_wide):
        assert [e.event_type for e in again.query(EventQuery(event_types=t))] == [t]
    assert [e.event_type for e in again.query(EventQuery(event_types="**"))] == [
        e.event_type for e in sent
    ]
    with pytest.raises(InvalidEventError):
        again.publish(longest_ascii + "c")
    with pytest.raises(InvalidEventError):
        again.publish("事" * 256)


def test_pattern_length_limit_is_1024_characters(bus: EventBus) -> None:
    # topics.md: a pattern "longer than 1,024 characters" is invalid, so 1,024 is fine.
    exact = "a." * 511 + "b*"
    assert len(exact) == 1024
    sub = bus.subscribe(exact, lambda e: None)
    assert str(sub.pattern) == exact
    with pytest.raises(InvalidPatternError):
        bus.subscribe(exact + "c", lambda e: None)
    with pytest.raises(InvalidPatternError):
        EventQuery(event_types=[exact + "c"])
    EventQuery(event_types=[exact])


def test_overlapping_patterns_of_one_subscription_deliver_once(bus: EventBus) -> None:
    # topics.md: "Results come back in subscription order, each subscription once".
    rec = Recorder()
    bus.subscribe("**.**.**", rec)
    ev = bus.publish("a.b.c", None).get(WAIT)
    rec.wait_for(ev)
    bus.flush(WAIT)
    assert [e.id for e in rec.events] == [ev.id]


# -- EventQuery against a model at its exact boundaries -------------------------------------


def _model(published: list[Event], q: EventQuery) -> list[Event]:
    def utc(m: datetime) -> datetime:
        return m if m.tzinfo else m.replace(tzinfo=UTC)

    out = []
    for e in published:
        if q.correlation_id is not None and e.correlation_id != q.correlation_id:
            continue
        if q.source is not None and e.source != q.source:
            continue
        if q.after_sequence is not None and (e.sequence or 0) <= q.after_sequence:
            continue
        if q.time_range is not None:
            start, end = q.time_range
            if start is not None and e.timestamp < utc(start):
                continue
            if end is not None and e.timestamp >= utc(end):
                continue
        if q.event_types is not None and not any(
            p == e.event_type or (p.endswith(".*") and e.event_type.startswith(p[:-1]))
            for p in q.event_types
        ):
            continue
        out.append(e)
    if q.descending:
        out.reverse()
    return out if q.limit is None else out[: q.limit]


@pytest.fixture
def extreme_journal(open_bus: Callable[..., EventBus]) -> tuple[EventBus, list[Event]]:
    """Events stamped from year 1 to year 9999, before and after 1970, out of order."""
    bus = open_bus()
    cid = uuid.uuid4()
    stamps = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        BASE,
        BASE,  # a tie
        BASE + timedelta(microseconds=1),
        BASE - timedelta(microseconds=1),
        datetime(1900, 6, 1, tzinfo=UTC),
    ]
    events = [
        Event(
            event_type=("q.a", "q.b")[i % 2],
            data=i,
            timestamp=ts,
            correlation_id=cid if i % 3 else None,
            source=("s1", "", None)[i % 3],  # "" is a source, None is none
        )
        for i, ts in enumerate(stamps)
    ]
    return bus, publish_all(bus, events)


def test_queries_over_extreme_timestamps_match_the_model(
    extreme_journal: tuple[EventBus, list[Event]],
) -> None:
    # persistence.md Query table: start inclusive, end exclusive, naive = UTC,
    # fields AND, descending newest first, with limit the newest N.
    bus, published = extreme_journal
    cid = next(e.correlation_id for e in published if e.correlation_id)
    minus3 = timezone(timedelta(hours=-3))
    ranges: list[Any] = [
        None,
        (BASE, BASE),  # empty
        (BASE, BASE + timedelta(microseconds=1)),  # exactly the two ties
        (BASE.replace(tzinfo=None), (BASE + timedelta(microseconds=2)).replace(tzinfo=None)),
        (BASE.astimezone(minus3), None),
        (None, datetime(1970, 1, 1)),  # naive epoch, exclusive
        (datetime(1969, 12, 31, 23, 59, 59, 999_999), datetime(1970, 1, 1, 0, 0, 0, 1)),
        (datetime(1, 1, 1), datetime(1, 1, 1, 0, 0, 0, 1)),
        (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), None),
        (None, datetime(9999, 12, 31, 23, 59, 59, 999_999)),
        (None, None),
    ]
    count = 0
    for time_range in ranges:
        for types in (None, ["q.a"], ["q.*"], ["q.b", "q.a"]):
            for cidq in (None, cid):
                for source in (None, "s1", ""):
                    for after in (None, 0, 3):
                        for limit in (None, 0, 1, 2):
                            for desc in (False, True):
                                q = EventQuery(
                                    event_types=types,
                                    time_range=time_range,
                                    correlation_id=cidq,
                                    source=source,
                                    after_sequence=after,
                                    limit=limit,
                                    descending=desc,
                                )
                                count += 1
                                if count % 7:  # a fixed sample keeps the run short
                                    continue
                                got = bus.query(q, timeout=WAIT)
                                assert dicts(got) == dicts(_model(published, q)), q
    # And every range on its own, with no other field, exactly.
    for time_range in ranges:
        q = EventQuery(time_range=time_range)
        assert dicts(bus.query(q)) == dicts(_model(published, q)), q


def test_descending_limit_and_after_sequence_give_the_newest_after(
    extreme_journal: tuple[EventBus, list[Event]],
) -> None:
    bus, published = extreme_journal
    last = published[-1].sequence or 0
    for after in range(last + 2):
        for limit in range(4):
            q = EventQuery(after_sequence=after, limit=limit, descending=True)
            got = [e.sequence for e in bus.query(q)]
            want = sorted(
                (e.sequence or 0 for e in published if (e.sequence or 0) > after), reverse=True
            )
            assert got == want[:limit], (after, limit)


def test_time_range_with_start_after_end_is_refused_even_across_zones() -> None:
    # EventQuery: "a time_range whose start is after its end" is a ValueError;
    # the same instant in two zones is not after itself.
    later = BASE + timedelta(seconds=1)
    with pytest.raises(ValueError, match="time_range"):
        EventQuery(time_range=(later, BASE))
    # 12:00 UTC == 09:00 at -03:00: a valid, empty range.
    EventQuery(time_range=(BASE, BASE.astimezone(timezone(timedelta(hours=-3)))))
    # Naive 12:00 (UTC) is after 12:00+01:00 (11:00 UTC).
    with pytest.raises(ValueError, match="time_range"):
        EventQuery(
            time_range=(
                BASE.replace(tzinfo=None),
                BASE.replace(tzinfo=timezone(timedelta(hours=1))),
            )
        )


# -- replay: speed and timestamps that run backwards ------------------------------------------


def test_replay_with_speed_and_backwards_timestamps_delivers_at_once(
    open_bus: Callable[..., EventBus],
) -> None:
    # persistence.md: "an event whose timestamp runs backwards is delivered at once,
    # after its predecessor.  Order and count never depend on speed."
    bus = open_bus()
    stamps = [BASE, BASE - timedelta(days=1), BASE - timedelta(days=400), BASE - timedelta(hours=5)]
    sent = publish_all(
        bus, [Event(event_type="rp.x", data=i, timestamp=ts) for i, ts in enumerate(stamps)]
    )
    seen: list[Any] = []
    count = run_bounded(lambda: bus.replay(EventQuery(event_types="rp.*"), seen.append, speed=1.0))
    assert count == 4
    assert dicts(seen) == dicts(sent)


def test_replay_with_huge_speed_and_huge_forward_gaps_finishes(
    open_bus: Callable[..., EventBus],
) -> None:
    # speed scales the spacing: a year apart at speed 1e12 is 31 microseconds.
    bus = open_bus()
    stamps = [datetime(1, 1, 1, tzinfo=UTC), datetime(5000, 1, 1, tzinfo=UTC)]
    stamps.append(datetime(9999, 1, 1, tzinfo=UTC))
    sent = publish_all(
        bus, [Event(event_type="rp.y", data=i, timestamp=t) for i, t in enumerate(stamps)]
    )
    seen: list[Any] = []
    assert (
        run_bounded(lambda: bus.replay(EventQuery(event_types="rp.y"), seen.append, speed=1e15))
        == 3
    )
    assert dicts(seen) == dicts(sent)


@pytest.mark.parametrize("speed", [0, -1.0, math.nan, -math.inf])
def test_replay_refuses_a_speed_that_is_not_positive(
    open_bus: Callable[..., EventBus], speed: float
) -> None:
    # persistence.md: "speed <= 0 raises ValueError"; NaN is no positive speed either.
    bus = open_bus()
    with pytest.raises(ValueError, match="speed"):
        bus.replay(EventQuery(), lambda e: None, speed=speed)


def test_replay_descending_with_speed_delivers_newest_first_at_once(
    open_bus: Callable[..., EventBus],
) -> None:
    # A descending query replays timestamps that run backwards by construction.
    bus = open_bus()
    sent = publish_all(
        bus,
        [Event(event_type="rp.d", data=i, timestamp=BASE + timedelta(hours=i)) for i in range(5)],
    )
    seen: list[Any] = []
    n = run_bounded(
        lambda: bus.replay(EventQuery(event_types="rp.d", descending=True), seen.append, speed=1.0)
    )
    assert n == 5
    assert dicts(seen) == dicts(list(reversed(sent)))


def test_replay_handler_publishes_join_the_replayed_trace(
    open_bus: Callable[..., EventBus],
) -> None:
    # persistence.md: a publish from the replay handler inherits the replayed
    # event's correlation id and takes its id as causation id; it is live and
    # journaled; the replayed event is not journaled again.
    bus = open_bus()
    cid = uuid.uuid4()
    original = bus.publish_correlated("rp.root", 1, cid).get(WAIT)
    futures: list[Any] = []
    bus.replay(EventQuery(correlation_id=cid), lambda e: futures.append(bus.publish("rp.child", 2)))
    child = futures[0].get(WAIT)
    trace = bus.trace(cid)
    assert [e.id for e in trace.chain(child.id)] == [original.id, child.id]
    assert len(bus.query(EventQuery(correlation_id=cid))) == 2


def test_dead_letter_hangs_under_its_event_in_the_trace_live_and_after_restart(
    open_bus: Callable[..., EventBus],
) -> None:
    # observability.md's rendered workflow: the `$bus.deadletter` of a failed
    # handler sits under the event it failed on, with source `bus`.
    bus = open_bus(handler_retries=0)

    def boom(event: Event) -> None:
        raise TimeoutError("fetch timed out")

    bus.subscribe("tool.call", boom)
    cid = uuid.uuid4()
    call = bus.publish_correlated("tool.call", {"tool": "fetch"}, cid).get(WAIT)
    assert wait_for(lambda: len(bus.trace(cid)) == 2)
    live = bus.trace(cid)
    (letter,) = live.children(call.id)
    assert letter.event_type == "$bus.deadletter"
    assert live.render().splitlines()[-1].endswith("$bus.deadletter  [bus]")
    bus.close(timeout=WAIT)
    again = open_bus()
    assert again.trace(cid).render() == live.render()
