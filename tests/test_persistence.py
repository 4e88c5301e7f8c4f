"""The persistent bus through its public API: query, replay, catch-up, durable, retention.

Every test runs a real RocksDB journal in ``tmp_path``.  Multi-process
behaviour (kill -9, locks across processes, full disks) is in
``test_durability.py``.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from actors import (
    Event,
    EventBus,
    EventBusError,
    EventConfig,
    EventQuery,
    JournalLockedError,
    Pattern,
    PersistentEventBus,
)
from actors._journal import actor as journal_actor
from tests._support import Recorder, publish_all

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# -- opening, sequences, retention ----------------------------------------------------


def test_persistent_event_bus_requires_a_path() -> None:
    with pytest.raises(ValueError, match="persistence_path"):
        PersistentEventBus(EventConfig())


def test_a_bus_without_journal_refuses_queries() -> None:
    with EventBus() as bus, pytest.raises(EventBusError, match="no journal"):
        bus.query(EventQuery())


def test_second_open_in_the_same_process_is_locked_and_the_first_keeps_working(
    open_bus: Callable[..., EventBus], journal: str
) -> None:
    bus = open_bus()
    with pytest.raises(JournalLockedError):
        EventBus(EventConfig(persistence_path=journal))
    event = bus.publish("still.working", 1).get(timeout=10)
    assert [e.id for e in bus.query(EventQuery(event_types=["still.*"]))] == [event.id]


def test_reopen_continues_sequences(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    first = publish_all(bus, [Event(event_type="a.b", data=i) for i in range(5)])
    bus.close()
    bus = open_bus()
    second = bus.publish("a.b", 5).get(timeout=10)
    assert second.sequence == (first[-1].sequence or 0) + 1
    stored = bus.query(EventQuery())
    assert [e.sequence for e in stored] == [e.sequence for e in [*first, second]]
    assert [e.id for e in stored] == [e.id for e in [*first, second]]


def _journal_of_old_events(open_bus: Callable[..., EventBus]) -> int:
    """Leave a closed journal of four 400-day-old events; return the last sequence."""
    bus = open_bus()
    old = T0 - timedelta(days=400)
    stored = publish_all(bus, [Event(event_type="old.e", timestamp=old) for _ in range(4)])
    bus.close()
    return stored[-1].sequence or 0


def test_sequences_continue_after_retention_trimmed_everything(
    open_bus: Callable[..., EventBus],
) -> None:
    high = _journal_of_old_events(open_bus)
    bus = open_bus(retention_days=30)  # trims all four at open
    assert bus.query(EventQuery()) == []
    assert (bus.publish("new.e").get(timeout=10).sequence or 0) > high


def test_sequences_continue_after_reopening_a_trimmed_journal_twice(
    open_bus: Callable[..., EventBus],
) -> None:
    high = _journal_of_old_events(open_bus)
    open_bus(retention_days=30).close()  # trims everything, publishes nothing
    bus = open_bus(retention_days=30)
    assert (bus.publish("new.e").get(timeout=10).sequence or 0) > high


def test_retention_at_open_keeps_the_newest_max_events(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    stored = publish_all(bus, [Event(event_type="r.e", data=i) for i in range(30)])
    bus.close()
    bus = open_bus(max_events=10)
    assert [e.id for e in bus.query(EventQuery())] == [e.id for e in stored[-10:]]


def test_retention_by_age_at_open_keeps_recent_events(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    now = datetime.now(UTC)
    events = [
        Event(event_type="r.e", data=i, timestamp=now - timedelta(days=d))
        for i, d in enumerate([10, 1, 12, 0, 3])
    ]
    stored = publish_all(bus, events)
    bus.close()
    bus = open_bus(retention_days=5)
    assert [e.data for e in bus.query(EventQuery())] == [1, 3, 4]
    assert [e.id for e in bus.query(EventQuery())] == [stored[i].id for i in (1, 3, 4)]


def test_retention_runs_periodically_while_open(
    open_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run retention after every journal turn instead of every 60 s.
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)
    bus = open_bus(max_events=10)
    stored = publish_all(bus, [Event(event_type="r.e", data=i) for i in range(50)])
    bus.flush(timeout=30)  # the turn that wrote them has ended: retention ran
    assert [e.id for e in bus.query(EventQuery())] == [e.id for e in stored[-10:]]


# -- corrupt records ----------------------------------------------------------------


def _corrupt(journal: str, bad_header: int, bad_payload: int) -> None:
    """Overwrite two primary records: one with an unreadable header, one with a bad payload."""
    db = rocksdict.Rdict(journal, rocksdict.Options(raw_mode=True))
    try:
        key = bad_payload.to_bytes(8, "big")
        value = db[key]
        # Records without correlation id or source have a 14-byte header
        # (docs/storage.md); keep it, replace the protobuf payload.
        assert value[1] == 0, "expected a record without optional header parts"
        db[key] = value[:14] + b"\xff\xff\xff\xff\xff"
        db[bad_header.to_bytes(8, "big")] = b"\x07garbage"
    finally:
        db.close()


def test_corrupt_records_are_reported_and_skipped(
    open_bus: Callable[..., EventBus], journal: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = open_bus()
    stored = publish_all(bus, [Event(event_type="c.e", data=i) for i in range(10)])
    bus.close()
    bad_header, bad_payload = stored[3].sequence or 0, stored[6].sequence or 0
    _corrupt(journal, bad_header, bad_payload)

    caplog.set_level(logging.ERROR, logger="actors")
    bus = open_bus()
    good = [e for e in stored if e.sequence not in (bad_header, bad_payload)]
    assert [e.id for e in bus.query(EventQuery())] == [e.id for e in good]
    assert [e.id for e in bus.query(EventQuery(event_types=["c.*"], descending=True))] == [
        e.id for e in reversed(good)
    ]
    replayed: list[Event] = []
    assert bus.replay(EventQuery(), replayed.append) == len(good)
    # A catch-up subscription reads past them too.
    seen = Recorder()
    bus.subscribe("c.*", seen, from_sequence=1)
    seen.wait_for(good[-1])
    assert seen.sequences == [e.sequence for e in good]
    # Reported: logged with the sequence, and counted.
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        str(bad_header) in m and r.name == "actors.storage"
        for m, r in zip(messages, caplog.records, strict=True)
    )
    assert any(
        str(bad_payload) in m or str(bad_payload) in str(r.exc_info)
        for m, r in zip(messages, caplog.records, strict=True)
        if r.name == "actors.journal"
    )
    # Counted: the unreadable header by the storage, the bad payload by the journal actor.
    assert bus.metrics().journal_corrupt_records >= 2
    # The bus keeps working.
    after = bus.publish("c.e", "after").get(timeout=10)
    assert bus.query(EventQuery(after_sequence=stored[-1].sequence))[0].id == after.id
    seen.wait_for(after)
    assert seen.events[-1].id == after.id


# -- query --------------------------------------------------------------------------

TYPES = [
    "agent.start",
    "agent.execution",
    "agent.execution.step",
    "tool.error",
    "db.error",
    "workflow.etl.complete",
]
CID_A = uuid.UUID("0190f000-0000-7000-8000-00000000000a")
CID_B = uuid.UUID("0190f000-0000-7000-8000-00000000000b")


def _sample_events() -> list[Event]:
    rng = random.Random(7)
    events = []
    for i in range(150):
        # Mostly rising timestamps, some running backwards (several publishers).
        offset = i - (rng.randrange(5) if rng.random() < 0.2 else 0)
        events.append(
            Event(
                event_type=rng.choice(TYPES),
                data={"i": i},
                timestamp=T0 + timedelta(seconds=offset),
                correlation_id=rng.choice([CID_A, CID_B, None]),
                source=rng.choice(["planner", "executor", None]),
            )
        )
    return events


def _reference(events: list[Event], q: EventQuery) -> list[Event]:
    out = list(events)
    if q.event_types is not None:
        patterns = [Pattern.parse(p) for p in q.event_types]
        out = [e for e in out if any(p.matches(e.event_type) for p in patterns)]
    if q.time_range is not None:
        start, end = q.time_range
        out = [
            e
            for e in out
            if (start is None or e.timestamp >= start) and (end is None or e.timestamp < end)
        ]
    if q.correlation_id is not None:
        out = [e for e in out if e.correlation_id == q.correlation_id]
    if q.source is not None:
        out = [e for e in out if e.source == q.source]
    if q.after_sequence is not None:
        out = [e for e in out if (e.sequence or 0) > (q.after_sequence or 0)]
    if q.descending:
        out.reverse()
    if q.limit is not None:
        out = out[: q.limit]
    return out


@pytest.fixture
def sample(open_bus: Callable[..., EventBus]) -> tuple[EventBus, list[Event]]:
    bus = open_bus()
    return bus, publish_all(bus, _sample_events())


def _t(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


QUERIES = {
    "all": EventQuery(),
    "one type": EventQuery(event_types=["agent.execution"]),
    "type star": EventQuery(event_types=["agent.*"]),
    "type doublestar": EventQuery(event_types=["agent.**"]),
    "leading doublestar": EventQuery(event_types=["**.error"]),
    "brace glob": EventQuery(event_types=["tool.{error,start}"]),
    "two patterns": EventQuery(event_types=["agent.start", "*.error"]),
    "a bare string type": EventQuery(event_types="db.error"),
    "unknown type": EventQuery(event_types=["nothing.here"]),
    "time range": EventQuery(time_range=(_t(10), _t(50))),
    "time open start": EventQuery(time_range=(None, _t(30))),
    "time open end": EventQuery(time_range=(_t(120), None)),
    "time empty": EventQuery(time_range=(_t(40), _t(40))),
    "cid": EventQuery(correlation_id=CID_A),
    "unknown cid": EventQuery(correlation_id=uuid.UUID(int=99)),
    "source": EventQuery(source="planner"),
    "after": EventQuery(after_sequence=40),
    "limit": EventQuery(limit=7),
    "limit zero": EventQuery(limit=0),
    "descending": EventQuery(descending=True),
    "types and time": EventQuery(event_types=["agent.**"], time_range=(_t(20), _t(90))),
    "types cid source": EventQuery(
        event_types=["*.error"], correlation_id=CID_B, source="executor"
    ),
    "cid time desc limit": EventQuery(
        correlation_id=CID_A, time_range=(_t(30), _t(130)), descending=True, limit=6
    ),
    "types after limit": EventQuery(event_types=["agent.*"], after_sequence=60, limit=9),
    "time source desc": EventQuery(time_range=(_t(5), _t(100)), source="planner", descending=True),
    "everything": EventQuery(
        event_types=["agent.**", "db.error"],
        time_range=(_t(3), _t(140)),
        correlation_id=CID_B,
        source="planner",
        after_sequence=10,
        limit=4,
        descending=True,
    ),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_matches_a_reference_filter(sample: tuple[EventBus, list[Event]], name: str) -> None:
    bus, events = sample
    query = QUERIES[name]
    got = bus.query(query)
    want = _reference(events, query)
    assert [(e.sequence, e.id) for e in got] == [(e.sequence, e.id) for e in want]
    assert got == want  # stored events round-trip exactly
    if name not in ("unknown type", "time empty", "unknown cid", "limit zero"):
        assert want, f"query {name!r} should select something in the sample"


def test_query_sees_events_published_just_before_it_without_flush(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    for i in range(20):
        bus.publish("q.e", i)  # futures not awaited, no flush
        got = bus.query(EventQuery(event_types=["q.e"], descending=True, limit=1))
        assert [e.data for e in got] == [i]


def test_query_sees_unflushed_events_with_sync_durability(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus(durability="sync")
    futures = [bus.publish("q.e", i) for i in range(50)]
    assert [e.data for e in bus.query(EventQuery(event_types=["q.*"]))] == list(range(50))
    assert [f.get(timeout=10).data for f in futures] == list(range(50))


# -- replay --------------------------------------------------------------------------


def test_replay_goes_to_the_handler_only_in_order(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    live: list[Event] = []
    bus.subscribe("**", live.append)
    stored = publish_all(bus, [Event(event_type="rp.e", data=i) for i in range(2500)])
    bus.flush(timeout=30)
    assert len(live) == 2500
    written = bus.metrics().journal_written

    replayed: list[Event] = []
    count = bus.replay(EventQuery(event_types=["rp.*"]), replayed.append)  # several pages
    bus.flush(timeout=30)
    assert count == 2500
    assert replayed == stored
    assert len(live) == 2500  # live subscribers saw nothing of the replay
    assert bus.metrics().journal_written == written  # nothing journaled again
    assert len(bus.query(EventQuery())) == 2500


def test_replay_honours_after_sequence_limit_and_descending(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    stored = publish_all(bus, [Event(event_type="rp.e", data=i) for i in range(30)])
    got: list[Any] = []
    bus.replay(EventQuery(after_sequence=stored[9].sequence), lambda e: got.append(e.data))
    assert got == list(range(10, 30))
    got.clear()
    bus.replay(EventQuery(limit=3, descending=True), lambda e: got.append(e.data))
    assert got == [29, 28, 27]


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_replay_with_speed_keeps_order_and_count(
    open_bus: Callable[..., EventBus], speed: float
) -> None:
    bus = open_bus()
    # Close timestamps (at most 20 ms in all), one running backwards.
    offsets = [0, 1, 2, 2, 5, 4, 9, 14, 20]
    events = [
        Event(event_type="sp.e", data=i, timestamp=T0 + timedelta(milliseconds=ms))
        for i, ms in enumerate(offsets)
    ]
    stored = publish_all(bus, events)
    got: list[Event] = []
    assert bus.replay(EventQuery(), got.append, speed=speed) == len(offsets)
    assert [e.id for e in got] == [e.id for e in stored]


def test_replay_rejects_a_non_positive_speed(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    with pytest.raises(ValueError, match="speed"):
        bus.replay(EventQuery(), print, speed=0)


def test_replay_handler_error_stops_and_propagates(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    publish_all(bus, [Event(event_type="rp.e", data=i) for i in range(5)])
    got: list[Any] = []

    def handler(event: Event) -> None:
        if event.data == 2:
            raise RuntimeError("boom")
        got.append(event.data)

    with pytest.raises(RuntimeError, match="boom"):
        bus.replay(EventQuery(), handler)
    assert got == [0, 1]


# -- catch-up -------------------------------------------------------------------------


# -- correlation and dead letters from the journal ----------------------------------------


def test_get_correlated_and_trace_after_restart_come_from_the_journal(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    cid = uuid.uuid4()
    root = bus.publish_correlated("workflow.start", {"w": 1}, cid).get(timeout=10)
    step = bus.publish("workflow.step", {"n": 1}, correlation_id=cid, causation_id=root.id).get(
        timeout=10
    )
    bus.publish("unrelated.e").get(timeout=10)
    end = bus.publish("workflow.complete", None, correlation_id=cid, causation_id=step.id).get(
        timeout=10
    )
    bus.close()

    bus = open_bus()
    got = bus.get_correlated(cid)
    assert got == [root, step, end]
    trace = bus.trace(cid)
    assert [e.id for e in trace.roots()] == [root.id]
    assert [e.id for e in trace.chain(end.id)] == [root.id, step.id, end.id]
    assert bus.get_correlated(uuid.uuid4()) == []


def test_get_correlated_falls_back_to_the_journal_for_evicted_traces(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus(max_traces=1)
    first, second = uuid.uuid4(), uuid.uuid4()
    a = [bus.publish_correlated("wf.e", i, first).get(timeout=10) for i in range(3)]
    b = [bus.publish_correlated("wf.e", i, second).get(timeout=10) for i in range(2)]
    assert bus.get_correlated(first) == a  # evicted from memory
    assert bus.get_correlated(second) == b


def test_dead_letters_survive_a_restart(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()

    def failing(event: Event) -> None:
        raise RuntimeError(f"cannot handle {event.data}")

    bus.subscribe("job.*", failing)
    bad = bus.publish("job.run", "x").get(timeout=10)
    bus.flush(timeout=30)
    before = bus.dead_letters()
    assert [d.event.id for d in before] == [bad.id]
    bus.close()

    bus = open_bus()
    letters = bus.dead_letters()
    assert [d.event.id for d in letters] == [bad.id]
    assert letters[0].event == bad
    assert letters[0].error_type == "RuntimeError"
    assert "cannot handle x" in letters[0].error
    assert letters[0].pattern == "job.*"
    assert letters[0].letter is not None
    assert letters[0].letter.event_type == "$bus.deadletter"


def test_backpressure_events_keep_the_journal_in_sequence_order(tmp_path: Path) -> None:
    # A $bus.backpressure.started event is emitted while an event is routed;
    # both must reach the journal in sequence order.
    release = threading.Event()
    config = EventConfig(persistence_path=str(tmp_path / "j"), durability="sync")
    with EventBus(config) as bus:
        bus.subscribe("bp.*", lambda _e: release.wait(30), capacity=10)
        futures = [bus.publish("bp.e", i) for i in range(30)]
        release.set()
        sequences = [f.get(timeout=30).sequence for f in futures]
        bus.flush(timeout=30)
        stored = bus.query(EventQuery())
        assert [e.sequence for e in stored] == sorted(e.sequence for e in stored)
        assert any(e.event_type == "$bus.backpressure.started" for e in stored)
        assert set(sequences) <= {e.sequence for e in stored}


def test_get_correlated_refuses_a_string_on_every_bus(tmp_path: Path) -> None:
    cid = uuid.uuid4()
    for config in (EventConfig(), EventConfig(persistence_path=str(tmp_path / "j"))):
        with EventBus(config) as bus, pytest.raises(TypeError, match="correlation_id"):
            bus.get_correlated(str(cid))  # type: ignore[arg-type]
