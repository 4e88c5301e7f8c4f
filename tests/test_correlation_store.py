"""Tests for actors._model.tracestore.TraceStore: bounds, eviction and completeness."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from actors._model.event import Event
from actors._model.tracestore import TraceStore, TraceStoreStatistics


class FakeClock:
    """A settable clock: tests move time, nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_seq = iter(range(1, 1_000_000))


def ev(cid: uuid.UUID | None, name: str = "step", seq: int | None = None) -> Event:
    return Event(event_type=name, correlation_id=cid, sequence=next(_seq) if seq is None else seq)


def cids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_add_and_get(clock: FakeClock) -> None:
    store = TraceStore(clock=clock)
    a, b = cids(2)
    e1, e2, e3 = ev(a, "one"), ev(b, "two"), ev(a, "three")
    assert store.add(e1)
    assert store.add_many([e2, e3]) == 2
    assert store.get(a) == [e1, e3]
    assert store.get(b) == [e2]
    assert store.get(uuid.uuid4()) is None
    assert len(store) == 2
    assert a in store
    assert store.is_complete(a)
    assert store.statistics() == TraceStoreStatistics(
        traces=2, events=3, evicted_traces=0, truncated_traces=0
    )
    assert store.stats() == store.statistics()


def test_get_returns_sequence_order_and_a_copy(clock: FakeClock) -> None:
    store = TraceStore(clock=clock)
    (a,) = cids(1)
    late, early = ev(a, "late", 9), ev(a, "early", 3)
    unsequenced = Event(event_type="u", correlation_id=a)
    store.add_many([unsequenced, late, early])
    got = store.get(a)
    assert got == [early, late, unsequenced]
    assert got is not None
    got.clear()
    assert store.get(a) == [early, late, unsequenced]


def test_events_without_correlation_are_ignored(clock: FakeClock) -> None:
    store = TraceStore(clock=clock)
    assert not store.add(ev(None))
    assert store.add_many([ev(None), ev(uuid.uuid4())]) == 1
    assert len(store) == 1
    assert store.statistics().events == 1


def test_truncation_drops_oldest_and_marks_incomplete(clock: FakeClock) -> None:
    store = TraceStore(max_events_per_trace=3, clock=clock)
    a, b = cids(2)
    events = [ev(a, f"e{i}") for i in range(5)]
    store.add_many(events)
    store.add(ev(b))
    assert store.get(a) == events[2:]
    assert not store.is_complete(a)
    assert store.is_complete(b)
    stats = store.statistics()
    assert stats.events == 4
    assert stats.truncated_traces == 1  # counted once per trace, not per dropped event


def test_lru_eviction_by_last_activity(clock: FakeClock) -> None:
    store = TraceStore(max_traces=3, trace_ttl=None, clock=clock)
    a, b, c, d, e = cids(5)
    for cid in (a, b, c):
        clock.now += 1
        store.add(ev(cid))
    clock.now += 1
    store.add(ev(a))  # a is now the most recently active
    clock.now += 1
    store.add(ev(d))  # evicts b, the least recently active
    assert store.get(b) is None
    assert [x in store for x in (a, c, d)] == [True, True, True]
    store.add(ev(e))  # evicts c
    assert c not in store
    assert len(store) == 3
    stats = store.statistics()
    assert stats.evicted_traces == 2
    assert stats.events == 4  # a: 2, d: 1, e: 1


def test_reads_do_not_count_as_activity(clock: FakeClock) -> None:
    store = TraceStore(max_traces=2, trace_ttl=None, clock=clock)
    a, b, c = cids(3)
    store.add(ev(a))
    store.add(ev(b))
    assert store.get(a) is not None
    store.add(ev(c))
    assert a not in store
    assert b in store


def test_ttl_expiry(clock: FakeClock) -> None:
    store = TraceStore(trace_ttl=10.0, clock=clock)
    a, b = cids(2)
    store.add(ev(a))
    clock.now += 6
    store.add(ev(b))
    clock.now += 4
    assert store.evict_expired() == 0  # a is exactly 10 s old: not older than the ttl
    clock.now += 0.5
    assert store.evict_expired() == 1
    assert a not in store
    assert store.get(a) is None
    assert not store.is_complete(a)
    clock.now += 6
    # Expired traces are gone for readers even before anyone calls evict_expired.
    assert store.get(b) is None
    assert len(store) == 0
    assert store.statistics() == TraceStoreStatistics(
        traces=0, events=0, evicted_traces=2, truncated_traces=0
    )


def test_activity_refreshes_ttl(clock: FakeClock) -> None:
    store = TraceStore(trace_ttl=10.0, clock=clock)
    (a,) = cids(1)
    for _ in range(5):
        store.add(ev(a))
        clock.now += 8
    assert store.evict_expired() == 0
    assert store.get(a) is not None
    assert len(store.get(a) or []) == 5


def test_add_evicts_expired_traces(clock: FakeClock) -> None:
    store = TraceStore(trace_ttl=1.0, clock=clock)
    old = cids(100)
    for cid in old:
        store.add(ev(cid))
    clock.now += 2
    store.add(ev(uuid.uuid4()))
    assert len(store) == 1
    assert store.statistics().events == 1


def test_no_ttl_keeps_traces(clock: FakeClock) -> None:
    store = TraceStore(trace_ttl=None, clock=clock)
    (a,) = cids(1)
    store.add(ev(a))
    clock.now += 1e9
    assert store.evict_expired() == 0
    assert store.is_complete(a)


def test_trace_restarted_after_eviction_is_incomplete(clock: FakeClock) -> None:
    store = TraceStore(max_traces=1, trace_ttl=None, clock=clock)
    a, b = cids(2)
    store.add(ev(a))
    store.add(ev(b))  # evicts a
    late = ev(a, "late")
    store.add(late)  # evicts b; a starts again, without its first event
    assert store.get(a) == [late]
    assert not store.is_complete(a)
    assert store.statistics().truncated_traces == 1


def test_unknown_correlation_is_not_complete(clock: FakeClock) -> None:
    assert not TraceStore(clock=clock).is_complete(uuid.uuid4())


def test_bounds_hold_under_load(clock: FakeClock) -> None:
    store = TraceStore(max_traces=50, max_events_per_trace=20, trace_ttl=100.0, clock=clock)
    pool = cids(200)
    for i in range(20_000):
        clock.now += 0.01
        store.add(ev(pool[(i * 7919) % len(pool)]))
        assert len(store) <= 50
    stats = store.statistics()
    assert stats.traces == len(store) == 50
    assert stats.events == sum(len(store.get(c) or []) for c in pool)
    assert stats.events <= 50 * 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_traces": 0}, "max_traces"),
        ({"max_events_per_trace": 0}, "max_events_per_trace"),
        ({"trace_ttl": 0.0}, "trace_ttl"),
        ({"trace_ttl": -1.0}, "trace_ttl"),
        ({"trace_ttl": float("nan")}, "trace_ttl"),
    ],
)
def test_invalid_bounds(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TraceStore(**kwargs)


def test_statistics_is_frozen(clock: FakeClock) -> None:
    stats = TraceStore(clock=clock).statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.traces = 5  # type: ignore[misc]
