"""Durable subscriptions and handler policies at their edges.

Durable subscriptions across close/reopen on one journal folder, catch-up
while live events keep arriving, retention trimming events a durable
subscription has not read, and the handler policies (``timeout=``,
``dedicated_thread``, ``retry_backoff=`` with ``retries``) at their edges:
a close or an unsubscribe during a backoff wait, a flush while a handler is
stuck past its timeout, dead letters' attempts and errors, and
``statistics()`` adding up throughout.

Nothing sleeps: blocked handlers wait on ``threading.Event``s that the test
(or its teardown) sets; long backoffs are forced by replacing the jitter
draw, never by waiting for a clock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import (
    BackpressureError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    FutureTimeoutError,
    PersistentEventBus,
)
from actors._core import handling
from tests._support import WAIT, wait_for

# -- helpers ---------------------------------------------------------------------------


def balanced(stats: Any) -> bool:
    """The documented identity, without the ``max(0, ...)`` that hides a negative remainder."""
    rest = (
        stats.accepted
        - stats.delivered
        - stats.expired
        - stats.dead_letters
        - stats.dropped
        - stats.queued
    )
    return rest >= 0 and rest == stats.in_flight


def finished(sub: Any) -> bool:
    """Whether an unsubscribed (or closed) subscription has accounted for every event."""
    stats = sub.statistics()
    return stats.queued == 0 and stats.in_flight == 0


def describe(stats: Any) -> str:
    return (
        f"accepted={stats.accepted} delivered={stats.delivered} expired={stats.expired} "
        f"dead={stats.dead_letters} dropped={stats.dropped} queued={stats.queued} "
        f"in_flight={stats.in_flight} errors={stats.errors} timeouts={stats.timeouts}"
    )


@pytest.fixture
def releases() -> Iterator[list[threading.Event]]:
    """Events that blocked handlers wait on; all set at teardown (before buses close)."""
    gates: list[threading.Event] = []
    yield gates
    for gate in gates:
        gate.set()


@pytest.fixture
def journal_bus(
    tmp_path: Any, releases: list[threading.Event]
) -> Iterator[Callable[..., EventBus]]:
    """Open persistent buses on one journal folder; release gates, then close them, at the end."""
    opened: list[EventBus] = []
    path = str(tmp_path / "journal")

    def opener(**settings: Any) -> EventBus:
        bus = PersistentEventBus(EventConfig(persistence_path=path, threads=2, **settings))
        opened.append(bus)
        return bus

    yield opener
    for gate in releases:
        gate.set()
    for bus in opened:
        bus.close(timeout=WAIT)


@pytest.fixture
def mem_bus(releases: list[threading.Event]) -> Iterator[EventBus]:
    b = EventBus(EventConfig(threads=2))
    yield b
    for gate in releases:
        gate.set()
    b.close(timeout=WAIT)


def publish_n(bus: EventBus, event_type: str, start: int, stop: int) -> list[Event]:
    futures = [bus.publish(event_type, {"n": i}) for i in range(start, stop)]
    return [f.get(timeout=WAIT) for f in futures]


# -- durable subscriptions across close and reopen ------------------------------------


def test_durable_resumes_exactly_across_repeated_reopens(
    journal_bus: Callable[..., EventBus],
) -> None:
    """Three sessions, publishing with and without the subscriber: every event exactly once."""
    seen: list[int] = []
    total = 0
    for session in range(3):
        bus = journal_bus()
        publish_n(bus, "job.run", total, total + 7)  # while no subscriber: read from history
        total += 7
        bus.subscribe("job.*", lambda e: seen.append(e.data["n"]), durable="w", from_sequence=1)
        publish_n(bus, "job.run", total, total + 5)  # live
        publish_n(bus, "other.x", 0, 3)  # never matching: must not disturb the checkpoint
        total += 5
        bus.flush(timeout=WAIT)
        bus.close(timeout=WAIT)
        assert seen == list(range(total)), f"session {session}"


def test_durable_catch_up_while_publishers_keep_going(
    journal_bus: Callable[..., EventBus],
) -> None:
    """A durable subscription resumes from its checkpoint while 2 threads publish: no loss,
    no duplicate, and each publisher's events in its own order."""
    bus = journal_bus()
    first: list[int] = []
    sub = bus.subscribe("job.*", lambda e: first.append(e.sequence), durable="w")
    publish_n(bus, "job.a", 0, 700)
    bus.flush(timeout=WAIT)
    sub.unsubscribe()
    bus.close(timeout=WAIT)

    bus = journal_bus()
    publish_n(bus, "job.a", 700, 1900)  # history: more than two pages
    seen: list[Event] = []
    go = threading.Barrier(3)

    def publisher(kind: str) -> None:
        go.wait(timeout=WAIT)
        for i in range(600):
            bus.publish(kind, {"n": i})

    threads = [threading.Thread(target=publisher, args=(k,)) for k in ("job.b", "job.c")]
    for t in threads:
        t.start()
    go.wait(timeout=WAIT)
    sub = bus.subscribe("job.*", seen.append, durable="w")
    bad: list[str] = []
    while any(t.is_alive() for t in threads):  # sample the figures during the catch-up
        s = sub.statistics()
        if not balanced(s):
            bad.append(describe(s))
    for t in threads:
        t.join(WAIT)
    bus.flush(timeout=WAIT)
    stats = sub.statistics()
    assert not bad, bad[:3]
    assert balanced(stats), describe(stats)

    seqs = [e.sequence for e in seen]
    assert len(seqs) == len(set(seqs)), "duplicates"
    assert seqs == sorted(seqs), "out of order"
    stored = {e.sequence for e in bus.query(EventQuery(event_types=["job.*"]))}
    expected = {s for s in stored if s > max(first)}
    assert set(seqs) == expected
    for kind in ("job.b", "job.c"):
        ns = [e.data["n"] for e in seen if e.event_type == kind]
        assert ns == list(range(600))
    assert stats.queued == 0
    assert stats.in_flight == 0


def test_durable_with_retention_trimmed_unread_events(
    journal_bus: Callable[..., EventBus],
) -> None:
    """max_events deletes events the durable subscription never read: it resumes at the
    oldest kept event, in order, without error, and its figures add up."""
    bus = journal_bus(max_events=10)
    seen: list[int] = []
    bus.subscribe("job.*", lambda e: seen.append(e.data["n"]), durable="w")
    publish_n(bus, "job.run", 0, 5)
    bus.flush(timeout=WAIT)
    bus.close(timeout=WAIT)
    assert seen == list(range(5))

    bus = journal_bus(max_events=10)
    publish_n(bus, "job.run", 5, 40)
    bus.close(timeout=WAIT)

    bus = journal_bus(max_events=10)  # retention runs at open: keeps the newest 10
    kept = [e.data["n"] for e in bus.query(EventQuery(event_types=["job.*"]))]
    assert kept == list(range(30, 40))
    resumed: list[int] = []
    sub = bus.subscribe("job.*", lambda e: resumed.append(e.data["n"]), durable="w")
    publish_n(bus, "job.run", 40, 43)
    bus.flush(timeout=WAIT)
    assert resumed == list(range(30, 43))
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    assert stats.delivered == 13
    assert stats.in_flight == 0


# -- retry backoff interrupted -----------------------------------------------------------


@pytest.fixture
def long_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every retry waits the longest possible backoff (30 s): a wait the test interrupts."""
    monkeypatch.setattr(handling, "backoff_delay", lambda base, retry, *a, **k: 30.0)


# A batch parked for a retry when its subscriber stops: counted delivered as far as it
# got, the rest discarded (before, it stayed in flight for ever).
def test_unsubscribe_during_backoff_wait_leaves_nothing_in_flight(
    mem_bus: EventBus, long_backoff: None
) -> None:
    """docs/architecture.md: 'a finished subscription shows no event in flight'."""
    calls: list[int] = []

    def failing(event: Event) -> None:
        calls.append(event.data["n"])
        raise ValueError("boom")

    sub = mem_bus.subscribe("job.*", failing, retries=3, retry_backoff=1.0)
    for i in range(3):
        mem_bus.publish("job.run", {"n": i})
    assert wait_for(lambda: sub.statistics().errors >= 1)
    sub.unsubscribe()
    assert wait_for(lambda: finished(sub)), describe(sub.statistics())
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    assert calls == [0], "no further attempt after unsubscribe"
    assert (stats.delivered, stats.dropped, stats.dead_letters) == (0, 3, 0), describe(stats)


def test_close_during_backoff_wait_durable_resumes_at_failed_event(
    journal_bus: Callable[..., EventBus], long_backoff: None
) -> None:
    """close(timeout) gives up on the 30-s retry wait; the durable checkpoint covers only
    the handled events, so the next session gets the failed event again (at least once)."""
    bus = journal_bus()
    ok: list[int] = []
    gate = threading.Event()

    def handler(event: Event) -> None:
        if event.data["n"] == 2:
            raise ValueError("not yet")
        ok.append(event.data["n"])

    bus.subscribe("job.*", handler, durable="w", retries=2, retry_backoff=1.0)
    publish_n(bus, "job.run", 0, 2)
    bus.flush(timeout=WAIT)
    publish_n(bus, "job.run", 2, 5)
    sub = bus.subscriptions()[0]
    assert wait_for(lambda: sub.statistics().errors >= 1)
    unfinished = bus.close(timeout=1.0)
    assert [s.id for s in unfinished] == [sub.id]
    assert ok == [0, 1]
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    gate.set()

    bus = journal_bus()
    again: list[int] = []
    bus.subscribe("job.*", lambda e: again.append(e.data["n"]), durable="w")
    bus.flush(timeout=WAIT)
    assert again == [2, 3, 4]


def test_flush_waits_for_retry_and_dead_letter_records_attempts_and_last_error(
    journal_bus: Callable[..., EventBus],
) -> None:
    bus = journal_bus()
    attempts: list[int] = []

    def failing(event: Event) -> None:
        attempts.append(1)
        raise ValueError(f"try {len(attempts)}")

    sub = bus.subscribe("job.*", failing, retries=2, retry_backoff=0.001)
    bus.publish("job.run", {"n": 0}).get(timeout=WAIT)
    bus.flush(timeout=WAIT)
    assert len(attempts) == 3
    stats = sub.statistics()
    assert (stats.errors, stats.dead_letters, stats.delivered) == (3, 1, 0), describe(stats)
    assert balanced(stats), describe(stats)
    assert stats.in_flight == 0, describe(stats)
    bus.close(timeout=WAIT)

    bus = journal_bus()
    letters = bus.dead_letters()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.attempts == 3
    assert letter.error_type == "ValueError"
    assert "try 3" in letter.error
    assert letter.event.data == {"n": 0}
    assert letter.subscription_id == sub.id


# -- timeouts with synchronous handlers ---------------------------------------------------


def test_shared_pool_timeout_flush_waits_for_stuck_call_then_counts_it(
    mem_bus: EventBus, releases: list[threading.Event]
) -> None:
    release = threading.Event()
    releases.append(release)
    started = threading.Event()
    seen: list[int] = []

    def handler(event: Event) -> None:
        if event.data["n"] == 0:
            started.set()
            release.wait(WAIT * 3)
        seen.append(event.data["n"])

    sub = mem_bus.subscribe("job.*", handler, timeout=0.2)
    publish_n(mem_bus, "job.run", 0, 3)
    assert started.wait(WAIT)
    assert wait_for(lambda: sub.statistics().timeouts == 1)
    with pytest.raises(FutureTimeoutError):
        mem_bus.flush(timeout=0.3)  # the shared pool waits for the stuck call
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    assert stats.delivered == 0, describe(stats)
    assert stats.in_flight + stats.queued == 3, describe(stats)
    release.set()
    mem_bus.flush(timeout=WAIT)
    stats = sub.statistics()
    assert seen == [0, 1, 2]
    assert (stats.delivered, stats.errors, stats.timeouts) == (3, 0, 1), describe(stats)
    assert balanced(stats)
    assert stats.in_flight == 0


def test_dedicated_thread_timeout_moves_on_and_flush_returns(
    mem_bus: EventBus, releases: list[threading.Event]
) -> None:
    release = threading.Event()
    releases.append(release)
    late_done = threading.Event()
    seen: list[int] = []

    def handler(event: Event) -> None:
        if event.data["n"] == 0:
            release.wait(WAIT * 3)
            late_done.set()
            raise RuntimeError("late failure: ignored")
        seen.append(event.data["n"])

    sub = mem_bus.subscribe("job.*", handler, timeout=0.2, dedicated_thread=True, retries=2)
    publish_n(mem_bus, "job.run", 0, 4)
    mem_bus.flush(timeout=WAIT)  # the stuck call is left behind: flush does not wait for it
    assert seen == [1, 2, 3]
    stats = sub.statistics()
    assert (stats.delivered, stats.timeouts, stats.errors) == (4, 1, 0), describe(stats)
    assert balanced(stats), describe(stats)
    assert stats.in_flight == 0, describe(stats)

    release.set()
    assert late_done.wait(WAIT)
    mem_bus.publish("job.run", {"n": 9}).get(timeout=WAIT)
    mem_bus.flush(timeout=WAIT)
    stats = sub.statistics()
    assert seen == [1, 2, 3, 9]
    # What the late call raised is ignored: no retry, no error, no dead letter.
    assert (stats.delivered, stats.errors, stats.dead_letters) == (5, 0, 0), describe(stats)
    assert mem_bus.dead_letters() == []


def test_dedicated_thread_timeout_durable_checkpoint_moves_past_left_call(
    journal_bus: Callable[..., EventBus], releases: list[threading.Event]
) -> None:
    """The left-behind event counts as handled: the checkpoint moves past it, and its late
    return (after the restart) does not pull the checkpoint back."""
    release = threading.Event()
    releases.append(release)
    bus = journal_bus()
    seen: list[int] = []

    def handler(event: Event) -> None:
        if event.data["n"] == 1:
            release.wait(WAIT * 3)
            return
        seen.append(event.data["n"])

    bus.subscribe("job.*", handler, durable="w", timeout=0.2, dedicated_thread=True)
    publish_n(bus, "job.run", 0, 4)
    bus.flush(timeout=WAIT)
    assert seen == [0, 2, 3]
    bus.close(timeout=WAIT)
    release.set()

    bus = journal_bus()
    publish_n(bus, "job.run", 4, 6)
    again: list[int] = []
    bus.subscribe("job.*", lambda e: again.append(e.data["n"]), durable="w")
    bus.flush(timeout=WAIT)
    assert again == [4, 5]


# -- timeouts with async handlers ------------------------------------------------------------


def test_async_handler_that_swallows_cancellation_is_waited_for(
    mem_bus: EventBus, releases: list[threading.Event]
) -> None:
    release = threading.Event()
    releases.append(release)
    swallowed = threading.Event()
    done: list[int] = []

    async def handler(event: Event) -> None:
        if event.data["n"] == 0:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                swallowed.set()
            # goes on running, without blocking its loop
            await asyncio.get_running_loop().run_in_executor(None, release.wait, WAIT * 3)
        done.append(event.data["n"])

    sub = mem_bus.subscribe("job.*", handler, timeout=0.2)
    publish_n(mem_bus, "job.run", 0, 2)
    assert swallowed.wait(WAIT)
    with pytest.raises(FutureTimeoutError):
        mem_bus.flush(timeout=0.3)
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    assert stats.delivered == 0
    release.set()
    mem_bus.flush(timeout=WAIT)
    stats = sub.statistics()
    assert done == [0, 1]
    assert (stats.delivered, stats.errors, stats.timeouts) == (2, 0, 1), describe(stats)
    assert balanced(stats)
    assert stats.in_flight == 0


def test_async_timeout_dead_letter_records_attempts_and_timeout_error(
    journal_bus: Callable[..., EventBus],
) -> None:
    bus = journal_bus()
    calls: list[int] = []

    async def handler(event: Event) -> None:
        calls.append(1)
        await asyncio.Event().wait()  # never set: each attempt is cancelled at its timeout

    sub = bus.subscribe("job.*", handler, timeout=0.1, retries=1, retry_backoff=0)
    bus.publish("job.run", {"n": 0}).get(timeout=WAIT)
    bus.flush(timeout=WAIT)
    stats = sub.statistics()
    assert len(calls) == 2
    assert (stats.errors, stats.timeouts, stats.dead_letters) == (2, 2, 1), describe(stats)
    assert balanced(stats)
    assert stats.in_flight == 0
    letters = bus.dead_letters()
    assert [(d.attempts, d.error_type) for d in letters] == [(2, "TimeoutError")]
    assert "timeout of 0.1 s" in letters[0].error


# -- statistics add up throughout ------------------------------------------------------------


def test_statistics_balance_at_every_sample_under_drops_retries_and_expiry(
    mem_bus: EventBus, releases: list[threading.Event]
) -> None:
    gate = threading.Event()
    releases.append(gate)
    stop = threading.Event()
    bad: list[str] = []
    calls = {"n": 0}

    def handler(event: Event) -> None:
        calls["n"] += 1
        if event.data["n"] == 0:
            gate.wait(WAIT * 3)
        if event.data["n"] % 5 == 1:
            raise ValueError("odd one")

    sub = mem_bus.subscribe(
        "job.*", handler, capacity=8, overflow="drop_oldest", retries=1, retry_backoff=0.001
    )

    def sampler() -> None:
        while not stop.is_set():
            s = sub.statistics()
            if not balanced(s):
                bad.append(describe(s))

    t = threading.Thread(target=sampler)
    t.start()
    try:
        for i in range(200):
            mem_bus.publish("job.run", {"n": i}, ttl=0.000001 if i % 7 == 3 else None)
        gate.set()
        mem_bus.flush(timeout=WAIT)
    finally:
        stop.set()
        t.join(WAIT)
    final = sub.statistics()
    assert not bad, bad[:3]
    assert balanced(final), describe(final)
    assert final.in_flight == 0, describe(final)
    assert final.queued == 0, describe(final)
    assert final.accepted == 200
    sub.unsubscribe()
    assert wait_for(lambda: not sub.active)
    assert balanced(sub.statistics())


def test_catch_up_history_retry_keeps_order_while_live_events_arrive(
    journal_bus: Callable[..., EventBus],
) -> None:
    bus = journal_bus()
    publish_n(bus, "job.run", 0, 600)
    failed: set[int] = set()
    seen: list[int] = []

    def handler(event: Event) -> None:
        n = event.data["n"]
        if n % 100 == 50 and n not in failed:
            failed.add(n)
            raise ValueError("first attempt fails")
        seen.append(n)

    sub = bus.subscribe("job.*", handler, from_sequence=1, retries=1, retry_backoff=0.001)
    publish_n(bus, "job.run", 600, 900)
    bus.flush(timeout=WAIT)
    assert seen == list(range(900))
    stats = sub.statistics()
    assert (stats.delivered, stats.errors, stats.dead_letters) == (900, 9, 0), describe(stats)
    assert balanced(stats), describe(stats)
    assert stats.in_flight == 0, describe(stats)


# -- subscriptions ending mid-batch -------------------------------------------------------------


# The same, reached through close(timeout).
def test_close_during_backoff_wait_leaves_nothing_in_flight(
    journal_bus: Callable[..., EventBus], long_backoff: None
) -> None:
    """close(timeout) gives up on a subscription parked for a retry: its events are discarded
    (architecture.md: 'a finished subscription shows no event in flight')."""
    bus = journal_bus()

    def failing(event: Event) -> None:
        raise ValueError("boom")

    sub = bus.subscribe("job.*", failing, retries=2, retry_backoff=1.0)
    publish_n(bus, "job.run", 0, 3)
    assert wait_for(lambda: sub.statistics().errors >= 1)
    unfinished = bus.close(timeout=0.5)
    assert [s.id for s in unfinished] == [sub.id]
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    assert stats.queued == 0, describe(stats)
    assert stats.in_flight == 0, describe(stats)


# A history page cut by unsubscribe: its rest is discarded like a live batch's.
def test_unsubscribe_during_history_batch_leaves_nothing_in_flight(
    journal_bus: Callable[..., EventBus], releases: list[threading.Event]
) -> None:
    """A catch-up subscription cut while its handler holds a history page: the rest of the
    page is not handled, and must not stay 'in flight' forever."""
    release = threading.Event()
    releases.append(release)
    started = threading.Event()
    bus = journal_bus()
    publish_n(bus, "job.run", 0, 50)
    seen: list[int] = []

    def handler(event: Event) -> None:
        if event.data["n"] == 0:
            started.set()
            release.wait(WAIT * 3)
        seen.append(event.data["n"])

    sub = bus.subscribe("job.*", handler, from_sequence=1)
    assert started.wait(WAIT)
    sub.unsubscribe()
    release.set()
    bus.publish("job.run", {"n": 99}).get(timeout=WAIT)
    bus.flush(timeout=WAIT)
    assert wait_for(lambda: finished(sub)), describe(sub.statistics())
    assert seen == [0], "nothing more is handled after unsubscribe"
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    assert (stats.delivered, stats.dropped) == (1, 49), describe(stats)


def test_new_durable_closed_during_first_batch_redelivers_it(
    journal_bus: Callable[..., EventBus], releases: list[threading.Event]
) -> None:
    """A new live durable subscription whose first call is stuck when close() gives up:
    after reopening it resumes at that event (at least once), not live."""
    release = threading.Event()
    releases.append(release)
    started = threading.Event()
    bus = journal_bus()

    def handler(event: Event) -> None:
        started.set()
        release.wait(WAIT * 3)

    bus.subscribe("job.*", handler, durable="w", dedicated_thread=True)
    publish_n(bus, "job.run", 0, 3)
    assert started.wait(WAIT)
    bus.close(timeout=0.5)
    release.set()

    bus = journal_bus()
    again: list[int] = []
    bus.subscribe("job.*", lambda e: again.append(e.data["n"]), durable="w")
    bus.flush(timeout=WAIT)
    assert again == [0, 1, 2]


# An async handler makes no attempt after unsubscribe() returned (before, it kept
# retrying and dead-lettered the event).
def test_async_unsubscribe_during_backoff_no_further_attempt(
    mem_bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An async handler's retry wait is cut by unsubscribe: no attempt after it returned."""
    unsubscribed = threading.Event()

    def gated_delay(base: float, retry: int, *a: Any, **k: Any) -> float:
        unsubscribed.wait(WAIT)  # the failed attempt's retry is decided after unsubscribe
        return 0.01

    monkeypatch.setattr(handling, "backoff_delay", gated_delay)
    calls: list[int] = []
    failed_once = threading.Event()

    async def handler(event: Event) -> None:
        calls.append(event.data["n"])
        failed_once.set()
        raise ValueError("boom")

    sub = mem_bus.subscribe("job.*", handler, retries=3, retry_backoff=1.0)
    mem_bus.publish("job.run", {"n": 0}).get(timeout=WAIT)
    assert failed_once.wait(WAIT)
    sub.unsubscribe()
    unsubscribed.set()
    assert wait_for(lambda: finished(sub)), describe(sub.statistics())
    assert calls == [0], f"attempts after unsubscribe: {calls}"
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    assert (stats.dead_letters, stats.dropped) == (0, 1), describe(stats)


def test_dedicated_thread_leaves_at_most_16_calls_then_waits(
    mem_bus: EventBus, releases: list[threading.Event]
) -> None:
    release = threading.Event()
    releases.append(release)
    seen: list[int] = []

    def handler(event: Event) -> None:
        n = event.data["n"]
        if n < 17:
            release.wait(WAIT * 3)
        seen.append(n)

    sub = mem_bus.subscribe("job.*", handler, timeout=0.05, dedicated_thread=True)
    publish_n(mem_bus, "job.run", 0, 19)
    assert wait_for(lambda: sub.statistics().timeouts >= 17)
    with pytest.raises(FutureTimeoutError):
        mem_bus.flush(timeout=0.3)  # the 17th call is waited for
    stats = sub.statistics()
    assert balanced(stats), describe(stats)
    # The 19 events are one batch: left-behind calls count as delivered when it ends.
    assert stats.delivered + stats.in_flight == 19, describe(stats)
    release.set()
    mem_bus.flush(timeout=WAIT)
    stats = sub.statistics()
    assert (stats.delivered, stats.timeouts, stats.errors) == (19, 17, 0), describe(stats)
    assert balanced(stats)
    assert stats.in_flight == 0
    assert wait_for(lambda: len(seen) == 19)
    assert sorted(seen) == list(range(19))


# An async batch waiting for its retry when close() gives up stops waiting and is
# discarded (before, it stayed in flight until the wait ended, then retried).
def test_close_during_async_backoff_figures_match_the_journal(
    journal_bus: Callable[..., EventBus], long_backoff: None
) -> None:
    """close(timeout) gives up on an async handler waiting 30 s for its retry: what the
    subscription's figures say became of its events must match what the journal holds."""
    bus = journal_bus()

    async def failing(event: Event) -> None:
        raise ValueError("boom")

    sub = bus.subscribe("job.*", failing, retries=2, retry_backoff=1.0)
    publish_n(bus, "job.run", 0, 3)
    assert wait_for(lambda: sub.statistics().errors >= 1)
    bus.close(timeout=0.5)
    assert wait_for(lambda: finished(sub)), describe(sub.statistics())
    stats = sub.statistics()
    assert balanced(stats), describe(stats)

    bus = journal_bus()
    letters = bus.dead_letters()
    assert len(letters) == stats.dead_letters, (describe(stats), letters)


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_a_durable_subscription_that_would_drop_is_refused(tmp_path: Path, overflow: str) -> None:
    with EventBus(EventConfig(persistence_path=tmp_path / "j")) as bus:
        with pytest.raises(ValueError, match="cannot drop events"):
            bus.subscribe("job.*", lambda e: None, durable="w", overflow=overflow)
        assert bus.subscriptions() == []


def test_a_full_durable_subscription_holds_publishers_back_and_skips_nothing(
    tmp_path: Path,
) -> None:
    # docs/persistence.md: at least once, none skipped.  Regression: with the
    # bus's default overflow (drop_oldest) its mailbox dropped events and its
    # checkpoint moved past them, so no restart delivered them.
    path = tmp_path / "j"
    gate, entered = threading.Event(), threading.Event()
    handled: list[int] = []

    def slow(event: Event) -> None:
        entered.set()
        assert gate.wait(WAIT)
        handled.append(event.data)

    published: list[int] = []
    with EventBus(EventConfig(persistence_path=path, block_timeout=0.2)) as bus:
        bus.subscribe("job.*", slow, durable="w", capacity=2)
        bus.publish("job.run", 0).get(timeout=WAIT)
        published.append(0)
        assert entered.wait(WAIT)
        refused = 0
        for i in range(1, 8):
            try:
                bus.publish("job.run", i).get(timeout=WAIT)
            except BackpressureError:
                refused += 1  # never published: nothing to skip
            else:
                published.append(i)
        assert refused > 0
        gate.set()
        bus.flush(WAIT)
    with EventBus(EventConfig(persistence_path=path)) as bus:
        bus.subscribe("job.*", lambda e: handled.append(e.data), durable="w")
        bus.flush(WAIT)
    assert sorted(set(handled)) == published
