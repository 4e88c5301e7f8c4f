"""Forged correlation and causation ids, and traces at their size and time bounds.

Real buses throughout, and a real RocksDB journal in the test's folder where
persistence matters.  The promises are those of ``Trace`` (a causal forest
whose every walk terminates, cycles cut at their earliest event, an id seen
twice kept once), docs/persistence.md (memory first, the journal merged in
when memory is not complete), docs/architecture.md (bounds of the trace
store, correlation ids are ``uuid.UUID``s) and docs/cli.md (``trace``).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from actors import BusClosedError, Event, EventBus, EventConfig, EventQuery, PersistentEventBus
from tests._support import WAIT, finished, in_background, wait_for


def publish_all(bus: EventBus, events: list[Event]) -> list[Event]:
    futures = bus.publish_many(events)
    return [f.get(WAIT) for f in futures]


def cli_trace(journal: Path, cid: uuid.UUID | str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m actors trace CID --journal DIR`` in its own process, bounded."""
    return subprocess.run(
        [sys.executable, "-m", "actors", "trace", str(cid), "--journal", str(journal), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check_json_rows(rows: list[dict[str, Any]]) -> None:
    """Each row's depth is one more than its parent's, which came before it."""
    depth_of: dict[str, int] = {}
    for row in rows:
        parent = row["parent"]
        if parent is None:
            assert row["depth"] == 0
        else:
            assert parent in depth_of, f"{row['id']} printed before its parent {parent}"
            assert row["depth"] == depth_of[parent] + 1
        assert row["id"] not in depth_of
        depth_of[row["id"]] = row["depth"]


# -- cycles ------------------------------------------------------------------------------


def test_two_event_ring_and_a_self_cause_through_journal_trace_and_cli(tmp_path: Path) -> None:
    """a caused by b, b by a, c by itself, d by b: every reader terminates, each event once."""
    path = tmp_path / "j"
    cid = uuid.uuid4()
    ida, idb, idc = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    forged = [
        Event(event_type="ring.a", id=ida, correlation_id=cid, causation_id=idb),
        Event(event_type="ring.b", id=idb, correlation_id=cid, causation_id=ida),
        Event(event_type="self.c", id=idc, correlation_id=cid, causation_id=idc),
        Event(event_type="tail.d", correlation_id=cid, causation_id=idb),
    ]
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as bus:
        sent = publish_all(bus, forged)
        trace = bus.trace(cid)
        stored = bus.query(EventQuery(correlation_id=cid))
        rendered = trace.render()
    assert [e.sequence for e in stored] == [e.sequence for e in sent]
    assert len(trace) == 4
    assert [e.event_type for e in trace.roots()] == ["ring.a", "self.c"]
    assert [e.event_type for e in trace.chain(forged[3].id)] == ["ring.a", "ring.b", "tail.d"]
    assert trace.depth == 3
    lines = rendered.splitlines()
    assert len(lines) == 5
    assert sum("(causation cycle)" in line for line in lines) == 2

    text = cli_trace(path, cid)
    assert text.returncode == 0, text.stderr
    out = text.stdout.splitlines()
    assert out[:-1] == lines
    assert out[-1] == "origins: - (4)"

    as_json = cli_trace(path, cid, "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(str(e.id) for e in forged)
    check_json_rows(rows)
    assert [(r["event_type"], r["depth"]) for r in rows] == [
        ("ring.a", 0),
        ("ring.b", 1),
        ("tail.d", 2),
        ("self.c", 0),
    ]


def test_ring_of_10000_events_from_the_journal_renders_and_prints_json(tmp_path: Path) -> None:
    """A forged ring 10,000 long: cut at its first event, a chain of 10,000 in text and JSON."""
    path = tmp_path / "j"
    cid = uuid.uuid4()
    n = 10_000
    ids = [uuid.uuid4() for _ in range(n)]
    ring = [
        Event(
            event_type="ring.step", id=ids[i], data=i, correlation_id=cid, causation_id=ids[i - 1]
        )
        for i in range(n)
    ]
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as bus:
        publish_all(bus, ring)
        live = bus.trace(cid)
    assert [e.id for e in live.roots()] == [ids[0]]
    assert live.depth == n

    text = cli_trace(path, cid)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == n + 2  # header, the events, origins
    assert "(causation cycle)" in lines[1]
    assert sum("(causation cycle)" in line for line in lines) == 1

    as_json = cli_trace(path, cid, "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["data"] for r in rows] == list(range(n))
    assert [r["depth"] for r in rows] == list(range(n))
    check_json_rows(rows)


def test_cycle_across_two_correlations_is_two_roots_with_missing_causes(bus: EventBus) -> None:
    """a (workflow A) caused by b (workflow B) and b by a: neither trace pulls in the other."""
    cid_a, cid_b = uuid.uuid4(), uuid.uuid4()
    ida, idb = uuid.uuid4(), uuid.uuid4()
    publish_all(
        bus,
        [
            Event(event_type="x.a", id=ida, correlation_id=cid_a, causation_id=idb),
            Event(event_type="x.b", id=idb, correlation_id=cid_b, causation_id=ida),
        ],
    )
    for cid, own, other in ((cid_a, ida, idb), (cid_b, idb, ida)):
        trace = bus.trace(cid)
        assert [e.id for e in trace] == [own]
        assert trace.parent(own) is None
        line = trace.render().splitlines()[1]
        assert f"(cause {str(other)[:8]}… not in trace)" in line
        assert "(causation cycle)" not in line


# -- the same id twice ---------------------------------------------------------------------


def test_an_id_published_twice_gives_the_same_trace_before_and_after_a_restart(
    tmp_path: Path,
) -> None:
    """An event object published twice is one event in the trace, the first copy, always."""
    path = tmp_path / "j"
    cid = uuid.uuid4()
    x = Event(event_type="dup.x", correlation_id=cid)
    y = Event(event_type="dup.y", correlation_id=cid)
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as bus:
        for event in (x, y, x):
            bus.publish(event).get(WAIT)
        live = bus.trace(cid)
    assert [(e.event_type, e.sequence) for e in live] == [("dup.x", 1), ("dup.y", 2)]
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as again:
        restored = again.trace(cid)
    assert [(e.event_type, e.sequence) for e in restored] == [("dup.x", 1), ("dup.y", 2)]
    assert restored.render() == live.render()


def test_get_correlated_keeps_one_copy_of_an_id_in_memory_after_a_restart_and_async(
    tmp_path: Path,
) -> None:
    """Memory-only, journal-merged and async answers list an id published twice once."""
    import asyncio  # noqa: PLC0415 - only this test

    from actors import AsyncEventBus  # noqa: PLC0415

    cid = uuid.uuid4()
    x = Event(event_type="dup.x", correlation_id=cid)
    y = Event(event_type="dup.y", correlation_id=cid)
    expected = [("dup.x", 1), ("dup.y", 2)]
    with EventBus() as bus:  # no journal: the trace is complete in memory
        for event in (x, y, x, y):
            bus.publish(event).get(WAIT)
        memory = [(e.event_type, e.sequence) for e in bus.get_correlated(cid)]
    assert memory == expected
    path = tmp_path / "j"
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as bus:
        for event in (x, y, x):
            bus.publish(event).get(WAIT)
        live = [(e.event_type, e.sequence) for e in bus.get_correlated(cid)]
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as again:
        restored = [(e.event_type, e.sequence) for e in again.get_correlated(cid)]

    async def from_async() -> list[tuple[str, int | None]]:
        async with AsyncEventBus() as abus:
            for event in (x, x, y):
                await abus.publish(event)
            await abus.flush()
            return [(e.event_type, e.sequence) for e in await abus.get_correlated(cid)]

    assert live == expected
    assert restored == expected
    assert asyncio.run(from_async()) == [("dup.x", 1), ("dup.y", 3)]


# -- size ----------------------------------------------------------------------------------


def test_fan_out_of_50000_children_under_one_parent() -> None:
    """One cause, 50,000 effects: two levels, every child under it, one line each."""
    n = 50_000
    cid = uuid.uuid4()
    root = Event(event_type="fan.root", correlation_id=cid)
    kids = [
        Event(event_type="fan.kid", data=i, correlation_id=cid, causation_id=root.id)
        for i in range(n)
    ]
    with EventBus(EventConfig(max_events_per_trace=n + 1)) as bus:
        bus.publish_many([root, *kids])[-1].get(WAIT)
        trace = bus.trace(cid)
        truncated = bus.metrics().traces_truncated
    assert truncated == 0
    assert len(trace) == n + 1
    assert trace.roots() == [trace.get(root.id)]
    assert trace.depth == 2
    assert [e.data for e in trace.children(root.id)] == list(range(n))
    assert len(trace.leaves()) == n
    lines = trace.render().splitlines()
    assert len(lines) == n + 2
    assert lines[-1].startswith("   └─ ")
    assert all(line.startswith("   ├─ ") for line in lines[2:-1])


def test_fan_out_beyond_the_per_trace_bound_keeps_the_newest_as_orphans() -> None:
    """Past max_events_per_trace the parent is dropped: the kept children name a missing cause."""
    n = 50_000
    bound = 1000
    cid = uuid.uuid4()
    root = Event(event_type="fan.root", correlation_id=cid)
    kids = [
        Event(event_type="fan.kid", data=i, correlation_id=cid, causation_id=root.id)
        for i in range(n)
    ]
    with EventBus(EventConfig(max_events_per_trace=bound)) as bus:
        bus.publish_many([root, *kids])[-1].get(WAIT)
        trace = bus.trace(cid)
        figures = bus.metrics()
    assert figures.traces == 1
    assert figures.traces_truncated == 1
    assert len(trace) == bound
    assert [e.data for e in trace] == list(range(n - bound, n))
    assert root.id not in trace
    assert len(trace.roots()) == bound
    missing = f"(cause {str(root.id)[:8]}… not in trace)"
    assert all(missing in line for line in trace.render().splitlines()[1:])


# -- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize("persistent", [False, True], ids=["memory", "journal"])
def test_effect_of_a_cause_expired_by_trace_ttl(tmp_path: Path, persistent: bool) -> None:
    """Without a journal an expired cause is gone (a marked root); with one it comes back."""
    config = EventConfig(
        trace_ttl=0.05, persistence_path=str(tmp_path / "j") if persistent else None
    )
    bus = PersistentEventBus(config) if persistent else EventBus(config)
    with bus:
        cid = uuid.uuid4()
        (cause,) = publish_all(bus, [Event(event_type="ttl.cause", correlation_id=cid)])

        def expired() -> bool:
            # The store sweeps expired traces as events arrive; the oldest
            # trace (this one) is the first to go.
            bus.publish_correlated("ttl.other", None, uuid.uuid4()).get(WAIT)
            return bus.metrics().traces_evicted >= 1

        assert wait_for(expired)
        (effect,) = publish_all(
            bus, [Event(event_type="ttl.effect", correlation_id=cid, causation_id=cause.id)]
        )
        trace = bus.trace(cid)
    if persistent:
        assert [e.id for e in trace] == [cause.id, effect.id]
        assert trace.parent(effect.id) == trace.get(cause.id)
        assert "not in trace" not in trace.render()
    else:
        assert [e.id for e in trace] == [effect.id]
        assert f"(cause {str(cause.id)[:8]}… not in trace)" in trace.render()


# -- correlation ids that are not UUIDs, and the UUIDs at the edges -----------------------


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 1_000_000, "ワークフロー-🔥", "00000000-0000-0000-0000-000000000000", b"\0" * 16, 0],
    ids=["empty", "huge", "unicode", "uuid-text", "bytes", "int"],
)
def test_correlation_ids_that_are_not_uuids_are_refused_and_the_bus_goes_on(
    bus: EventBus, bad: Any
) -> None:
    """trace, get_correlated and publish_correlated raise TypeError; nothing is published."""
    with pytest.raises(TypeError):
        bus.trace(bad)
    with pytest.raises(TypeError):
        bus.get_correlated(bad)
    with pytest.raises(TypeError):
        bus.publish_correlated("odd.id", None, bad)
    cid = uuid.uuid4()
    bus.publish_correlated("odd.ok", 1, cid).get(WAIT)
    assert [e.event_type for e in bus.trace(cid)] == ["odd.ok"]
    assert bus.metrics().published == 1


def test_nil_and_max_uuid_correlations_stay_apart_through_a_restart(tmp_path: Path) -> None:
    """The all-zero and all-one ids are workflows like any other, in memory and in the journal."""
    path = tmp_path / "j"
    nil, top = uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)
    near = [uuid.UUID(int=1), uuid.UUID(int=2**128 - 2)]
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as bus:
        for i in range(3):
            bus.publish_correlated("edge.nil", i, nil)
            bus.publish_correlated("edge.top", i, top)
        bus.flush(WAIT)
        live = {cid: bus.trace(cid).render(show_data=True) for cid in (nil, top)}
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as again:
        for cid, kind in ((nil, "edge.nil"), (top, "edge.top")):
            got = again.get_correlated(cid)
            assert [(e.event_type, e.data) for e in got] == [(kind, i) for i in range(3)]
            assert again.trace(cid).render(show_data=True) == live[cid]
        for cid in near:
            assert again.get_correlated(cid) == []
    result = cli_trace(path, nil, "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["data"] for line in result.stdout.splitlines()] == [0, 1, 2]
    refused = cli_trace(path, "not-a-uuid")
    assert refused.returncode == 2
    assert refused.stderr.startswith("Error: ")


# -- bounds under a flood, and readers while events flow ----------------------------------


def test_flood_from_threads_keeps_trace_bounds_and_consistent_figures() -> None:
    """4 threads, 160 workflows: at most max_traces held, the newest; figures add up."""
    max_traces, per_trace = 50, 20
    threads, per_thread = 4, 40
    sizes = {True: 30, False: 10}  # above and below the per-trace bound
    results: dict[uuid.UUID, list[Event]] = {}
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def flood(t: int) -> None:
        start.wait(WAIT)
        for k in range(per_thread):
            cid = uuid.uuid4()
            big = (t + k) % 2 == 0
            batch = [
                Event(event_type="flood.step", data=i, correlation_id=cid)
                for i in range(sizes[big])
            ]
            sent = publish_all(bus, batch)
            with lock:
                results[cid] = sent

    with EventBus(EventConfig(max_traces=max_traces, max_events_per_trace=per_trace)) as bus:
        runs = [in_background(functools.partial(flood, t)) for t in range(threads)]
        for thread, outcome in runs:
            assert finished(thread, outcome, timeout=60) is None
        bus.flush(WAIT)
        figures = bus.metrics()
        held = {cid: bus.get_correlated(cid) for cid in results}
    total = threads * per_thread
    assert len(results) == total
    assert figures.traces == max_traces
    assert figures.traces_evicted == total - max_traces
    assert figures.traces_truncated == sum(len(v) > per_trace for v in results.values())
    by_last = sorted(results, key=lambda c: results[c][-1].sequence or 0)
    newest = set(by_last[-max_traces:])
    assert {cid for cid, got in held.items() if got} == newest
    for cid in newest:
        sent = results[cid]
        assert [e.id for e in held[cid]] == [e.id for e in sent[-per_trace:]]
    assert sum(len(got) for got in held.values()) <= max_traces * per_trace


@pytest.mark.parametrize("persistent", [False, True], ids=["memory", "journal"])
def test_trace_calls_while_a_chain_grows_see_whole_prefixes(
    tmp_path: Path, persistent: bool
) -> None:
    """Readers racing a handler-built chain each get a prefix: one root, no gap, no repeat."""
    steps = 300
    # With the journal, memory keeps only the newest 16 of each trace: the
    # readers go through the merge of memory and journal.
    config = EventConfig(
        max_events_per_trace=16 if persistent else 10_000,
        persistence_path=str(tmp_path / "j") if persistent else None,
    )
    bus = PersistentEventBus(config) if persistent else EventBus(config)
    done = threading.Event()
    cid = uuid.uuid4()

    def step(event: Event) -> None:
        n = event.data
        assert isinstance(n, int)
        if n < steps:
            bus.publish("grow.step", n + 1)
        else:
            done.set()

    def read() -> int:
        seen = 0
        while not done.is_set() or seen == 0:
            trace = bus.trace(cid, timeout=WAIT)
            data = [e.data for e in trace]
            assert data == list(range(len(data))), data
            if data:
                assert len(trace.roots()) == 1
                assert trace.depth == len(data)
                assert len(trace.chain(trace.events[-1].id)) == len(data)
            seen += 1
        return seen

    with bus:
        bus.subscribe("grow.step", step)
        readers = [in_background(read) for _ in range(3)]
        bus.publish_correlated("grow.step", 0, cid)
        assert done.wait(WAIT)
        for thread, outcome in readers:
            got = finished(thread, outcome, timeout=WAIT)
            assert isinstance(got, int), got
        bus.flush(WAIT)
        final = bus.trace(cid)
    assert [e.data for e in final] == list(range(steps + 1))
    assert final.depth == steps + 1


def test_chain_and_fan_out_mixed_with_unknown_causes_keep_every_event_once(bus: EventBus) -> None:
    """Causes never seen, causes seen later, and real causes together: a forest of all events."""
    cid = uuid.uuid4()
    events: list[Event] = []
    for i in range(3000):
        if i % 3 == 0:
            cause: uuid.UUID | None = uuid.uuid4()  # never published
        elif i % 3 == 1 and events:
            cause = events[i // 2].id
        else:
            cause = None
        events.append(Event(event_type="mix.e", data=i, correlation_id=cid, causation_id=cause))
    late_parent = Event(event_type="mix.late", correlation_id=cid)
    early_child = Event(event_type="mix.early", correlation_id=cid, causation_id=late_parent.id)
    publish_all(bus, [early_child, *events, late_parent])
    trace = bus.trace(cid)
    assert len(trace) == len(events) + 2
    walked = [e.id for e, _ in trace.walk()]
    assert sorted(walked) == sorted(e.id for e in trace)
    assert trace.parent(early_child.id) == trace.get(late_parent.id)
    lines = trace.render().splitlines()
    assert len(lines) == len(trace) + 1
    assert sum("not in trace" in line for line in lines) == 1000


def test_workflow_with_many_threads_and_cross_causes(bus: EventBus) -> None:
    """Handlers on several threads publish into one workflow: every cause is in the trace."""
    cid = uuid.uuid4()
    fan = 200
    got: list[Event] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def spread(event: Event) -> None:
        for i in range(fan):
            bus.publish("web.leaf", i)

    def leaf(event: Event) -> None:
        with lock:
            got.append(event)
            if len(got) == fan:
                all_done.set()

    bus.subscribe("web.root", spread)
    bus.subscribe("web.leaf", leaf)
    (root,) = publish_all(bus, [Event(event_type="web.root", correlation_id=cid)])
    assert all_done.wait(WAIT)
    bus.flush(WAIT)
    trace = bus.trace(cid)
    assert len(trace) == fan + 1
    assert trace.roots() == [root]
    assert [e.data for e in trace.children(root.id)] == list(range(fan))
    assert all(e.causation_id == root.id and e.correlation_id == cid for e in got)


@pytest.mark.parametrize("persistent", [False, True], ids=["memory", "journal"])
def test_trace_calls_racing_close_return_or_raise_bus_closed(
    tmp_path: Path, persistent: bool
) -> None:
    """Readers of a trace while the bus closes: each call answers or raises BusClosedError."""
    config = EventConfig(
        max_events_per_trace=4 if persistent else 10_000,
        persistence_path=str(tmp_path / "j") if persistent else None,
    )
    bus = PersistentEventBus(config) if persistent else EventBus(config)
    cid = uuid.uuid4()
    publish_all(bus, [Event(event_type="close.e", data=i, correlation_id=cid) for i in range(10)])
    started = [threading.Event() for _ in range(3)]

    def read(ready: threading.Event) -> BaseException:
        while True:
            try:
                trace = bus.trace(cid, timeout=WAIT)
            except BusClosedError as exc:
                return exc
            assert [e.data for e in trace] == list(range(10))
            ready.set()

    readers = [in_background(functools.partial(read, r)) for r in started]
    for ready in started:
        assert ready.wait(WAIT)
    bus.close(timeout=WAIT)
    for thread, outcome in readers:
        assert isinstance(finished(thread, outcome, timeout=WAIT), BusClosedError)
    with pytest.raises(BusClosedError):
        bus.trace(cid)
