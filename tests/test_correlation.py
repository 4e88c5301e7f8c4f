"""Correlation and traces on a live bus (SPEC 5)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest

from actors import Event, EventBus, EventConfig, Trace
from tests._support import WAIT, Collector


def _react(bus: EventBus, publish: Callable[[Event], object]) -> Collector:
    """Subscribe ``publish`` to ``cause.*`` and collect everything under ``effect.*``."""
    effects = Collector(1)
    bus.subscribe("effect.*", effects)
    bus.subscribe("cause.*", publish)
    return effects


# -- inheritance inside handlers -----------------------------------------------------------


def test_publish_inside_a_sync_handler_inherits_correlation_and_causation(
    bus: EventBus,
) -> None:
    effects = _react(bus, lambda e: bus.publish("effect.done", {"from": e.event_type}))
    cid = uuid.uuid4()
    cause = bus.publish_correlated("cause.start", None, cid).get(timeout=WAIT)
    assert effects.done.wait(WAIT)
    effect = effects.events[0]
    assert effect.causation_id == cause.id
    assert effect.correlation_id == cid
    assert effect.sequence is not None
    assert cause.sequence is not None
    assert effect.sequence > cause.sequence


def test_publishing_an_event_object_inside_a_handler_inherits_too(bus: EventBus) -> None:
    effects = _react(bus, lambda e: bus.publish(Event(event_type="effect.done")))
    cid = uuid.uuid4()
    cause = bus.publish_correlated("cause.start", None, cid).get(timeout=WAIT)
    assert effects.done.wait(WAIT)
    assert effects.events[0].causation_id == cause.id
    assert effects.events[0].correlation_id == cid


def test_publish_inside_an_async_handler_inherits_correlation_and_causation(
    bus: EventBus,
) -> None:
    async def handler(event: Event) -> None:
        await asyncio.sleep(0)  # cross an await: the context must survive it
        bus.publish("effect.done")

    effects = _react(bus, handler)
    cid = uuid.uuid4()
    cause = bus.publish_correlated("cause.start", None, cid).get(timeout=WAIT)
    assert effects.done.wait(WAIT)
    assert effects.events[0].causation_id == cause.id
    assert effects.events[0].correlation_id == cid


def test_cause_without_correlation_still_sets_causation(bus: EventBus) -> None:
    effects = _react(bus, lambda e: bus.publish("effect.done"))
    cause = bus.publish("cause.start").get(timeout=WAIT)
    assert effects.done.wait(WAIT)
    assert effects.events[0].causation_id == cause.id
    assert effects.events[0].correlation_id is None


def test_explicit_ids_win_inside_a_handler(bus: EventBus) -> None:
    other_cid = uuid.uuid4()
    other_cause = uuid.uuid4()
    effects = Collector(2)
    bus.subscribe("effect.*", effects)

    def handler(event: Event) -> None:
        bus.publish("effect.kw", correlation_id=other_cid, causation_id=other_cause)
        bus.publish(
            Event(event_type="effect.obj", correlation_id=other_cid, causation_id=other_cause)
        )

    bus.subscribe("cause.*", handler)
    bus.publish_correlated("cause.start", None, uuid.uuid4())
    assert effects.done.wait(WAIT)
    for effect in effects.events:
        assert effect.correlation_id == other_cid
        assert effect.causation_id == other_cause


def test_publish_outside_a_handler_inherits_nothing(bus: EventBus) -> None:
    bus.subscribe("cause.*", lambda e: None)
    bus.publish_correlated("cause.start", None, uuid.uuid4())
    bus.flush(WAIT)
    plain = bus.publish("effect.done").get(timeout=WAIT)
    assert plain.causation_id is None
    assert plain.correlation_id is None


# -- get_correlated -----------------------------------------------------------------------


def test_get_correlated_reads_its_own_writes(bus: EventBus) -> None:
    cid = uuid.uuid4()
    for i in range(20):
        future = bus.publish_correlated("wf.step", i, cid)
        # No wait for the future: the query is ordered after the publish.
        events = bus.get_correlated(cid)
        assert [e.data for e in events] == list(range(i + 1))
        assert events[-1].id == future.get(timeout=WAIT).id


def test_get_correlated_in_sequence_order_across_threads(bus: EventBus) -> None:
    cid = uuid.uuid4()
    noise = uuid.uuid4()
    start = threading.Barrier(3)

    def publish(tag: str, correlation: uuid.UUID) -> None:
        start.wait(WAIT)
        for i in range(300):
            bus.publish_correlated("wf.step", {"tag": tag, "i": i}, correlation)

    workers = [
        threading.Thread(target=publish, args=("a", cid)),
        threading.Thread(target=publish, args=("b", cid)),
        threading.Thread(target=publish, args=("noise", noise)),
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WAIT)
    events = bus.get_correlated(cid)
    assert len(events) == 600
    assert all(e.correlation_id == cid for e in events)
    seqs = [e.sequence for e in events]
    assert seqs == sorted(seqs)  # type: ignore[type-var]
    for tag in ("a", "b"):
        assert [e.data["i"] for e in events if e.data["tag"] == tag] == list(range(300))


def test_get_correlated_unknown_id_is_empty(bus: EventBus) -> None:
    assert bus.get_correlated(uuid.uuid4()) == []


# -- traces ----------------------------------------------------------------------------------


def _run_workflow(bus: EventBus) -> tuple[uuid.UUID, dict[str, Event]]:
    """start -> (plan, fetch); plan -> execute -> done.  Return the events by type."""
    next_steps = {
        "wf.start": ["wf.plan", "wf.fetch"],
        "wf.plan": ["wf.execute"],
        "wf.execute": ["wf.done"],
    }
    finished = threading.Event()

    def agent(event: Event) -> None:
        for step in next_steps.get(event.event_type, []):
            bus.publish(step, {"after": event.event_type}, source="agent")
        if event.event_type == "wf.done":
            finished.set()

    bus.subscribe("wf.*", agent)
    cid = uuid.uuid4()
    bus.publish_correlated("wf.start", {"workflow": "analysis"}, cid, source="user")
    assert finished.wait(WAIT)
    bus.flush(WAIT)
    return cid, {e.event_type: e for e in bus.get_correlated(cid)}


def test_trace_of_a_multi_step_workflow(bus: EventBus) -> None:
    cid, by_type = _run_workflow(bus)
    assert set(by_type) == {"wf.start", "wf.plan", "wf.fetch", "wf.execute", "wf.done"}
    start, plan, fetch = by_type["wf.start"], by_type["wf.plan"], by_type["wf.fetch"]
    execute, done = by_type["wf.execute"], by_type["wf.done"]

    trace = bus.trace(cid)
    assert isinstance(trace, Trace)
    assert trace.correlation_id == cid
    assert [e.id for e in trace.events] == [e.id for e in bus.get_correlated(cid)]
    assert trace.roots() == [start]
    assert trace.children(start.id) == [plan, fetch]
    assert trace.children(plan.id) == [execute]
    assert trace.children(fetch.id) == []
    assert trace.chain(done.id) == [start, plan, execute, done]
    assert trace.chain(start.id) == [start]
    assert trace.leaves() == [fetch, done]
    assert trace.depth == 4
    assert trace.duration == max(e.timestamp for e in trace.events) - min(
        e.timestamp for e in trace.events
    )
    assert trace.duration >= timedelta(0)
    with pytest.raises(KeyError):
        trace.children(uuid.uuid4())


def test_trace_render_is_a_tree_with_relative_timings(bus: EventBus) -> None:
    cid, _ = _run_workflow(bus)
    text = bus.trace(cid).render()
    lines = text.splitlines()
    assert len(lines) == 6  # a header plus one line per event
    assert "5 events" in lines[0]
    body = "\n".join(lines[1:])
    for event_type in ("wf.start", "wf.plan", "wf.fetch", "wf.execute", "wf.done"):
        assert event_type in body
    assert lines[1].lstrip("└├─ ").startswith("+0.000 ms")  # the root is the time origin
    assert all(" ms  " in line for line in lines[1:])
    # Children are indented deeper than their parent.
    indent = {
        t: next(len(x) - len(x.lstrip(" │")) for x in lines if t in x)
        for t in ("wf.start", "wf.plan", "wf.execute", "wf.done")
    }
    assert indent["wf.start"] < indent["wf.plan"] < indent["wf.execute"] < indent["wf.done"]


def test_trace_of_an_unknown_correlation_is_empty(bus: EventBus) -> None:
    trace = bus.trace(uuid.uuid4())
    assert len(trace) == 0
    assert trace.roots() == []
    assert trace.depth == 0
    assert trace.duration == timedelta(0)


# -- bounded memory -----------------------------------------------------------------------------


def test_max_traces_evicts_the_oldest_trace() -> None:
    with EventBus(EventConfig(max_traces=2)) as b:
        first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        b.publish_correlated("wf.a", 1, first)
        b.publish_correlated("wf.b", 2, second)
        assert len(b.get_correlated(first)) == 1
        b.publish_correlated("wf.c", 3, third)
        assert b.get_correlated(first) == []  # no journal: gone with its trace
        assert [e.data for e in b.get_correlated(second)] == [2]
        assert [e.data for e in b.get_correlated(third)] == [3]


def test_max_events_per_trace_keeps_the_most_recent() -> None:
    with EventBus(EventConfig(max_events_per_trace=3)) as b:
        cid = uuid.uuid4()
        for i in range(10):
            b.publish_correlated("wf.step", i, cid)
        assert [e.data for e in b.get_correlated(cid)] == [7, 8, 9]


# -- what the trace store keeps ----------------------------------------------------------------


def test_held_traces_keep_no_event_objects_for_the_collector_to_walk(bus: EventBus) -> None:
    import gc  # noqa: PLC0415 - only this test looks at the collector

    cids = [uuid.uuid4() for _ in range(20)]
    published = [
        Event(event_type="trace.step", data={"i": i, "tags": ["x"]}, correlation_id=cids[i % 20])
        for i in range(2000)
    ]
    bus.publish_many(published)
    bus.flush(WAIT)
    first = bus.get_correlated(cids[3])
    assert [e.data for e in first] == [p.data for p in published if p.correlation_id == cids[3]]
    del published, first
    gc.collect()
    held = sum(1 for o in gc.get_objects() if type(o) is Event and o.event_type == "trace.step")
    # 2,000 events in 20 held traces, none of them as objects (a few may be
    # in flight in a recorder's last batch).
    assert held < 100, held
    trace = bus.trace(cids[5])
    assert len(trace.events) == 100
    assert [e.data["i"] for e in trace.events] == list(range(5, 2000, 20))  # type: ignore[index]
