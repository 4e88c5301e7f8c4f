"""Full mailboxes under pressure: every overflow strategy keeps its promises.

A full mailbox either refuses with ``BackpressureError`` (``REJECT``, or
``BLOCK`` once ``block_timeout`` ran out) or drops as documented
(``DROP_OLDEST``, ``DROP_NEWEST``), and counts it.  Nothing else is lost:
other subscriptions get every published event, and what one subscription
is handed comes in publish order.  A slow subscriber holds up publishers
only through ``BLOCK``, and a publisher held that way is always let go:
with room, with ``BackpressureError``, or with ``BusClosedError``.

Handlers are held on ``threading.Event``s or semaphores bounded by ``WAIT``;
nothing sleeps and no assertion is on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BackpressureError,
    BusClosedError,
    BusFuture,
    Event,
    EventBus,
    EventConfig,
    OverflowStrategy,
    SubscriptionStatistics,
)
from tests._support import WAIT, Collector, Gate, finished, in_background, wait_for

DROPPING = [OverflowStrategy.DROP_OLDEST, OverflowStrategy.DROP_NEWEST]


@pytest.fixture
def buses() -> Iterator[list[EventBus]]:
    """Buses a test opens; closed at the end whatever happened."""
    opened: list[EventBus] = []
    yield opened
    for bus in opened:
        with contextlib.suppress(Exception):
            bus.close(timeout=WAIT)


@pytest.fixture
def gates() -> Iterator[list[threading.Event]]:
    """Events that hold handlers; all set at the end so no handler stays parked."""
    held: list[threading.Event] = []
    yield held
    for gate in held:
        gate.set()


def _bus(buses: list[EventBus], **config: Any) -> EventBus:
    bus = EventBus(EventConfig(**config))
    buses.append(bus)
    return bus


def _gate(gates: list[threading.Event]) -> Gate:
    gate = Gate()
    gates.append(gate.release)
    return gate


def _balanced(stats: SubscriptionStatistics) -> bool:
    return stats.accepted == (
        stats.delivered
        + stats.expired
        + stats.dead_letters
        + stats.dropped
        + stats.queued
        + stats.in_flight
    )


def _at_rest(stats: SubscriptionStatistics) -> bool:
    return stats.queued == 0 and stats.in_flight == 0


def _inside(thread: threading.Thread, function: str) -> bool:
    """Return whether ``thread`` is running ``function`` (anywhere on its stack) now."""
    frame = sys._current_frames().get(thread.ident or -1)  # noqa: SLF001 - CPython's own
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def _outcome(call: Callable[[], BusFuture[Event]]) -> Event | BaseException:
    """Publish and wait: the published event, or the error raised or set in the future."""
    try:
        return call().get(timeout=WAIT)
    except (BackpressureError, BusClosedError) as exc:
        return exc


class Stepper:
    """A handler that handles one event per permit the test gives, and says so."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.cond = threading.Condition()
        self.data: list[Any] = []
        self.entered = threading.Event()
        self.stopped = False
        self.max_queued = 0
        self.stats: Callable[[], SubscriptionStatistics] | None = None

    def __call__(self, event: Event) -> None:
        self.entered.set()
        if self.stats is not None:
            queued = self.stats().queued
            self.max_queued = max(self.max_queued, queued)
        if not self.stopped and not self.permits.acquire(timeout=WAIT):
            raise AssertionError("the test never gave a permit")
        with self.cond:
            self.data.append(event.data)
            self.cond.notify_all()

    def step(self, stop: Callable[[], bool] | None = None) -> bool:
        """Let one event through; return whether it was handled (or ``stop()`` held) in time."""
        with self.cond:
            before = len(self.data)
            self.permits.release()
            if stop is None:
                return self.cond.wait_for(lambda: len(self.data) > before, WAIT)
        return wait_for(lambda: len(self.data) > before or stop())

    def open(self) -> None:
        self.stopped = True
        self.permits.release(10_000)


# --------------------------------------------------------------------------- dropping and REJECT


@pytest.mark.parametrize("overflow", [*DROPPING, OverflowStrategy.REJECT])
def test_capacity_one_keeps_the_documented_event_counts_it_and_others_get_all(
    buses: list[EventBus], gates: list[threading.Event], overflow: OverflowStrategy
) -> None:
    """Capacity 1 behind a parked handler: the documented survivor, counted, the rest intact."""
    bus = _bus(buses, threads=2)
    slow = _gate(gates)
    fast = Collector()
    sub = bus.subscribe("x.*", slow, capacity=1, overflow=overflow, dedicated_thread=True)
    other = bus.subscribe("x.*", fast)
    bus.publish("x.e", 0).get(timeout=WAIT)
    assert slow.entered.wait(WAIT)
    outcomes = [_outcome(lambda i=i: bus.publish("x.e", i)) for i in range(1, 21)]
    slow.release.set()
    bus.flush(WAIT)
    published = [o.data for o in outcomes if isinstance(o, Event)]
    refused = [o for o in outcomes if not isinstance(o, Event)]
    if overflow is OverflowStrategy.REJECT:
        assert published == [1]
        assert all(isinstance(o, BackpressureError) for o in refused)
        assert len(refused) == 19
        assert bus.metrics().rejected == 19
        assert slow.data == [0, 1]
        expected_dropped = 0
    else:
        assert published == list(range(1, 21))
        assert slow.data == ([0, 20] if overflow is OverflowStrategy.DROP_OLDEST else [0, 1])
        assert bus.metrics().rejected == 0
        expected_dropped = 19
    assert fast.data == [0, *published]  # every published event, in order
    stats = sub.statistics()
    assert stats.dropped == expected_dropped
    assert stats.delivered == 2
    assert _balanced(stats)
    assert other.statistics().dropped == 0
    assert bus.metrics().dropped == expected_dropped


@pytest.mark.parametrize("overflow", DROPPING)
def test_publish_many_far_larger_than_the_capacity_drops_the_documented_end(
    buses: list[EventBus], gates: list[threading.Event], overflow: OverflowStrategy
) -> None:
    """A batch of 1,000 into a parked capacity-3 mailbox keeps exactly its newest or oldest 3."""
    bus = _bus(buses)
    slow = _gate(gates)
    fast = Collector()
    sub = bus.subscribe("x.*", slow, capacity=3, overflow=overflow, dedicated_thread=True)
    bus.subscribe("x.*", fast)
    bus.publish("x.e", -1).get(timeout=WAIT)
    assert slow.entered.wait(WAIT)
    futures = bus.publish_many([Event(event_type="x.e", data=i) for i in range(1000)])
    assert [f.get(timeout=WAIT).data for f in futures] == list(range(1000))
    slow.release.set()
    bus.flush(WAIT)
    kept = [997, 998, 999] if overflow is OverflowStrategy.DROP_OLDEST else [0, 1, 2]
    assert slow.data == [-1, *kept]
    assert fast.data == [-1, *range(1000)]
    stats = sub.statistics()
    assert (stats.accepted, stats.delivered, stats.dropped) == (1001, 4, 997)
    assert _balanced(stats)


@pytest.mark.parametrize("overflow", DROPPING)
def test_a_live_dropping_subscriber_hands_over_a_subsequence_in_publish_order(
    buses: list[EventBus], overflow: OverflowStrategy
) -> None:
    """Eight publisher threads against a capacity-1 dropping mailbox whose handler steps.

    Whatever is dropped, each publisher's events reach the handler in the
    order published, a fast subscription gets all of them, and the figures
    add up to what was published.
    """
    bus = _bus(buses, threads=2)
    stepper = Stepper()
    sub = bus.subscribe("x.*", stepper, capacity=1, overflow=overflow, dedicated_thread=True)
    fast = Collector()
    bus.subscribe("x.*", fast)
    threads_n, per_thread = 8, 60
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def publish(k: int) -> None:
        try:
            barrier.wait(WAIT)
            for i in range(per_thread):
                if i % 3 == 2:
                    bus.publish_many([Event(event_type="x.e", data=[k, i])])
                else:
                    bus.publish("x.e", [k, i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(k,), daemon=True) for k in range(threads_n)]
    for t in threads:
        t.start()
    # Let the handler through a few events at a time while the flood goes on.
    while any(t.is_alive() for t in threads):
        assert stepper.step(lambda: not any(t.is_alive() for t in threads))
    for t in threads:
        t.join(WAIT)
    assert not errors
    stepper.open()
    bus.flush(WAIT)
    total = threads_n * per_thread
    for k in range(threads_n):
        seen = [i for kk, i in stepper.data if kk == k]
        assert seen == sorted(seen), k
        assert len(set(seen)) == len(seen), k
        assert [i for kk, i in fast.data if kk == k] == list(range(per_thread)), k
    stats = sub.statistics()
    assert stats.accepted == total
    assert stats.delivered == len(stepper.data)
    assert stats.dropped == total - len(stepper.data)
    assert (stats.queued, stats.in_flight) == (0, 0)
    assert _balanced(stats)


def test_reject_batch_larger_than_capacity_one_publishes_a_prefix_only(
    buses: list[EventBus], gates: list[threading.Event]
) -> None:
    """A REJECT batch over capacity: the fitting prefix is published, the rest go nowhere."""
    bus = _bus(buses)
    slow = _gate(gates)
    fast = Collector()
    sub = bus.subscribe("x.*", slow, capacity=1, overflow=OverflowStrategy.REJECT)
    bus.subscribe("x.*", fast)
    bus.publish("x.e", -1).get(timeout=WAIT)
    assert slow.entered.wait(WAIT)
    futures = bus.publish_many([Event(event_type="x.e", data=i) for i in range(50)])
    outcomes = [_outcome(lambda f=f: f) for f in futures]
    assert isinstance(outcomes[0], Event)
    assert all(isinstance(o, BackpressureError) for o in outcomes[1:])
    slow.release.set()
    bus.flush(WAIT)
    assert slow.data == [-1, 0]
    assert fast.data == [-1, 0]
    assert bus.metrics().rejected == 49
    stats = sub.statistics()
    assert (stats.accepted, stats.dropped) == (2, 0)
    assert _balanced(stats)


# --------------------------------------------------------------------------- BLOCK


def test_eight_publishers_against_a_stepped_block_subscriber_lose_nothing(
    buses: list[EventBus],
) -> None:
    """Eight threads into a capacity-2 BLOCK mailbox released one event at a time.

    Every event arrives, each publisher's in its own order; nothing is
    rejected or dropped; the mailbox never holds more than capacity plus one
    per publisher; an unrelated subscription keeps flowing meanwhile.
    """
    bus = _bus(buses, threads=2, block_timeout=WAIT * 3)
    stepper = Stepper()
    sub = bus.subscribe(
        "x.*", stepper, capacity=2, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
    )
    stepper.stats = sub.statistics
    other = Collector()
    bus.subscribe("y.*", other)
    threads_n, per_thread = 8, 15
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    published: dict[int, list[int]] = {}

    def publish(k: int) -> None:
        try:
            barrier.wait(WAIT)
            seqs = []
            for i in range(per_thread):
                if i % 4 == 3:
                    (f,) = bus.publish_many([Event(event_type="x.e", data=[k, i])])
                else:
                    f = bus.publish("x.e", [k, i])
                seqs.append(f.get(timeout=WAIT).sequence or 0)
            published[k] = seqs
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(k,), daemon=True) for k in range(threads_n)]
    for t in threads:
        t.start()
    total = threads_n * per_thread
    # Publishers are held: unrelated events still go straight through.
    assert wait_for(lambda: any(_inside(t, "wait_for_room") for t in threads))
    assert [bus.publish("y.e", j).get(timeout=WAIT).data for j in range(50)] == list(range(50))
    for _ in range(total):
        assert stepper.step(), f"stuck after {len(stepper.data)} of {total}"
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    bus.flush(WAIT)
    assert other.data == list(range(50))
    for k in range(threads_n):
        assert [i for kk, i in stepper.data if kk == k] == list(range(per_thread)), k
        assert published[k] == sorted(published[k])
    assert stepper.max_queued <= 2 + threads_n
    stats = sub.statistics()
    assert (stats.accepted, stats.delivered, stats.dropped) == (total, total, 0)
    assert _balanced(stats)
    assert bus.metrics().rejected == 0


def test_block_batch_larger_than_capacity_one_goes_in_pieces_in_order(
    buses: list[EventBus],
) -> None:
    """A batch of 40 into a capacity-1 BLOCK mailbox: all in order, never more than 1 queued."""
    bus = _bus(buses, threads=2, block_timeout=WAIT * 3)
    stepper = Stepper()
    sub = bus.subscribe(
        "x.*", stepper, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
    )
    stepper.stats = sub.statistics
    fast = Collector()
    bus.subscribe("x.*", fast)
    thread, outcome = in_background(
        lambda: bus.publish_many([Event(event_type="x.e", data=i) for i in range(40)])
    )
    for _ in range(40):
        assert stepper.step(), f"stuck after {stepper.data}"
    futures = finished(thread, outcome)
    assert [f.get(timeout=WAIT).data for f in futures] == list(range(40))
    bus.flush(WAIT)
    assert stepper.data == list(range(40))
    assert fast.data == list(range(40))
    assert stepper.max_queued <= 1
    stats = sub.statistics()
    assert (stats.accepted, stats.delivered, stats.dropped) == (40, 40, 0)
    assert bus.metrics().rejected == 0


def _retrying(bus: EventBus, k: int, until: type) -> Callable[[], list[Any]]:
    """A publisher that publishes again after each ``BackpressureError`` until ``until``."""

    def run() -> list[Any]:
        outcomes: list[Any] = []
        for i in range(100_000):
            outcome = _outcome(lambda i=i: bus.publish("x.e", [k, i]))
            outcomes.append(outcome)
            if not isinstance(outcome, BackpressureError):
                break
        return outcomes

    return run


def _held_full(
    buses: list[EventBus], gates: list[threading.Event], timeout: float
) -> tuple[EventBus, Gate, Collector, Any]:
    bus = _bus(buses, threads=2, block_timeout=timeout)
    slow = _gate(gates)
    fast = Collector()
    sub = bus.subscribe("x.*", slow, capacity=1, overflow=OverflowStrategy.BLOCK)
    bus.subscribe("x.*", fast)
    bus.publish("x.e", [-1, -1]).get(timeout=WAIT)
    assert slow.entered.wait(WAIT)
    bus.publish("x.e", [-1, 0]).get(timeout=WAIT)  # full now
    return bus, slow, fast, sub


@pytest.mark.parametrize("timeout", [0.01, 0.03, 0.1])
def test_block_timeouts_running_out_while_unsubscribe_runs_end_every_publisher(
    buses: list[EventBus], gates: list[threading.Event], timeout: float
) -> None:
    """Publishers cycling through timeouts as the full subscription goes.

    Each is refused (counted) until the unsubscribe lets its next publish
    through; a refused event reaches no one, a published one every other
    subscription, in each publisher's order.
    """
    bus, slow, fast, sub = _held_full(buses, gates, timeout)
    runs = [in_background(_retrying(bus, k, Event)) for k in range(8)]
    assert wait_for(lambda: bus.metrics().rejected >= 16)  # every one of them cycling
    sub.unsubscribe()
    results: list[list[Any]] = [finished(t, o) for t, o in runs]
    refused = 0
    for outcomes in results:
        assert all(isinstance(o, BackpressureError) for o in outcomes[:-1]), outcomes
        assert isinstance(outcomes[-1], Event), outcomes[-1]
        refused += len(outcomes) - 1
    assert bus.metrics().rejected == refused
    bus.flush(WAIT)
    expected = sorted([[-1, -1], [-1, 0], *(outcomes[-1].data for outcomes in results)])
    assert sorted(fast.data) == expected  # nothing refused went anywhere
    slow.release.set()
    # The event the parked handler runs is handled; [-1, 0], still queued, is discarded.
    assert wait_for(lambda: len(slow.data) == 1 and _at_rest(sub.statistics()))
    assert slow.data == [[-1, -1]]
    stats = sub.statistics()
    assert _balanced(stats)
    assert stats.accepted == 2
    assert stats.dropped >= 1
    assert bus.publish("x.e", "after").get(timeout=WAIT).data == "after"


@pytest.mark.parametrize("timeout", [0.01, 0.03, 0.1])
def test_block_timeouts_running_out_while_close_runs_end_every_publisher(
    buses: list[EventBus], gates: list[threading.Event], timeout: float
) -> None:
    """Publishers cycling through timeouts as ``close`` begins: refused, then told closed.

    None hangs; only the timeouts count as rejected (a close is not a refusal).
    """
    bus, slow, fast, _ = _held_full(buses, gates, timeout)
    runs = [in_background(_retrying(bus, k, BusClosedError)) for k in range(8)]
    assert wait_for(lambda: bus.metrics().rejected >= 16)
    closer, closed = in_background(lambda: bus.close(timeout=WAIT))
    results: list[list[Any]] = [finished(t, o) for t, o in runs]
    slow.release.set()
    assert finished(closer, closed) == ()
    refused = 0
    for outcomes in results:
        assert all(isinstance(o, BackpressureError) for o in outcomes[:-1]), outcomes
        assert isinstance(outcomes[-1], (Event, BusClosedError)), outcomes[-1]
        refused += len(outcomes) - 1
    assert bus.metrics().rejected == refused
    ok = [o[-1].data for o in results if isinstance(o[-1], Event)]
    assert sorted(fast.data) == sorted([[-1, -1], [-1, 0], *ok])
    assert sorted(slow.data) == sorted([[-1, -1], [-1, 0], *ok])
    with pytest.raises(BusClosedError):
        bus.publish("x.e", "after")


def test_flush_while_publishers_wait_for_room_completes_once_room_comes(
    buses: list[EventBus],
) -> None:
    """``flush`` beside held publishers neither hangs nor lets them in out of order."""
    bus = _bus(buses, threads=2, block_timeout=WAIT * 3)
    stepper = Stepper()
    sub = bus.subscribe(
        "x.*", stepper, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
    )
    bus.publish("x.e", [-1, 0]).get(timeout=WAIT)
    assert stepper.entered.wait(WAIT)
    bus.publish("x.e", [-1, 1]).get(timeout=WAIT)  # full now
    publishers = [
        in_background(
            lambda k=k: [bus.publish("x.e", [k, i]).get(timeout=WAIT).data for i in range(5)]
        )
        for k in range(4)
    ]
    assert wait_for(lambda: all(_inside(t, "wait_for_room") for t, _ in publishers))
    flusher, flushed = in_background(lambda: bus.flush(WAIT * 2))
    # Room one event at a time: the flush needs the two before it, then ends.
    for _ in range(22):
        assert stepper.step(), f"stuck after {stepper.data}"
    assert finished(flusher, flushed) is None
    results = [finished(t, o) for t, o in publishers]
    for k, data in enumerate(results):
        assert data == [[k, i] for i in range(5)]
    stepper.open()
    bus.flush(WAIT)
    assert stepper.data[:2] == [[-1, 0], [-1, 1]]
    for k in range(4):
        assert [i for kk, i in stepper.data if kk == k] == list(range(5))
    stats = sub.statistics()
    assert (stats.accepted, stats.delivered, stats.dropped) == (22, 22, 0)
    assert bus.metrics().rejected == 0


def test_a_mixed_storm_adds_up_at_rest(buses: list[EventBus], gates: list[threading.Event]) -> None:
    """Every strategy at capacity 1 under eight threads; the figures add up exactly at rest."""
    bus = _bus(buses, threads=2, block_timeout=0.05)
    slow = _gate(gates)
    subs = {
        "block": bus.subscribe("s.*", slow, capacity=1, overflow=OverflowStrategy.BLOCK),
        "oldest": bus.subscribe("s.*", lambda e: None, capacity=1, overflow="drop_oldest"),
        "newest": bus.subscribe("s.*", lambda e: None, capacity=1, overflow="drop_newest"),
        "reject": bus.subscribe("t.*", lambda e: None, capacity=1, overflow="reject"),
    }
    everything = Collector()
    bus.subscribe("**", everything)
    lock = threading.Lock()
    refused = [0]
    accepted: list[Any] = []
    barrier = threading.Barrier(8)

    def storm(k: int) -> None:
        barrier.wait(WAIT)
        futures: list[BusFuture[Event]] = []
        for i in range(40):
            kind = ("s.e", "t.e")[i % 2]
            try:
                if i % 5 == 4:
                    futures.extend(
                        bus.publish_many([Event(event_type=kind, data=[k, i, j]) for j in range(3)])
                    )
                else:
                    futures.append(bus.publish(kind, [k, i, 0]))
            except BackpressureError:
                with lock:
                    refused[0] += 3 if i % 5 == 4 else 1
        for f in futures:
            outcome = _outcome(lambda f=f: f)
            with lock:
                if isinstance(outcome, Event):
                    accepted.append(outcome.data)
                else:
                    assert isinstance(outcome, BackpressureError), outcome
                    refused[0] += 1

    runs = [in_background(lambda k=k: storm(k)) for k in range(8)]
    # Hold the BLOCK subscriber for part of the storm, then let it go.
    assert slow.entered.wait(WAIT)
    for t, o in runs:
        assert finished(t, o) is None
    slow.release.set()
    bus.flush(WAIT)
    metrics = bus.metrics()
    assert metrics.rejected == refused[0]
    assert sorted(map(tuple, everything.data)) == sorted(map(tuple, accepted))
    for name, sub in subs.items():
        stats = sub.statistics()
        assert _balanced(stats), (name, stats)
        assert (stats.queued, stats.in_flight) == (0, 0), (name, stats)
    assert subs["block"].statistics().dropped == 0
    assert metrics.dropped == sum(s.dropped for s in metrics.per_subscription)
    subs["oldest"].unsubscribe()
    assert _balanced(subs["oldest"].statistics())


# --------------------------------------------------------------------------- asyncio


def test_cancelled_async_publishers_held_by_block_publish_nothing_and_free_their_threads(
    gates: list[threading.Event],
) -> None:
    """Forty async publishes waiting for room, cancelled: none published, none counted.

    More than the default executor has threads, so a wait that outlived its
    cancelled await would starve the publishes after it.
    """
    slow = _gate(gates)

    async def main() -> tuple[list[Any], int, list[Any]]:
        abus = AsyncEventBus(EventConfig(block_timeout=WAIT * 3))
        try:
            sub = await abus.subscribe("x.*", slow, capacity=1, overflow="block")
            await abus.publish("x.e", -1)
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, slow.entered.wait, WAIT)
            await abus.publish("x.e", 0)  # full now
            tasks = [asyncio.ensure_future(abus.publish("x.e", 100 + i)) for i in range(40)]
            # Each is either still on the loop or waiting on an executor thread.
            await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            slow.release.set()
            after = [(await abus.publish("x.e", i)).data for i in range(1, 6)]
            await abus.flush(WAIT)
            stats = sub.statistics()
            assert _balanced(stats)
            return results, abus.sync.metrics().rejected, after
        finally:
            await abus.aclose(WAIT)

    results, rejected, after = asyncio.run(main())
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert rejected == 0
    assert after == [1, 2, 3, 4, 5]
    assert slow.data == [-1, 0, 1, 2, 3, 4, 5]


def test_a_cancelled_async_batch_over_capacity_publishes_only_the_admitted_prefix(
    gates: list[threading.Event],
) -> None:
    """An async batch of 10 into a capacity-2 BLOCK mailbox, cancelled while its second piece waits.

    The first piece (what fitted) is published, in order; the rest is
    withdrawn: delivered nowhere and not counted as rejected.
    """
    slow = _gate(gates)
    fast = Collector()

    async def main() -> tuple[list[Any], int, SubscriptionStatistics]:
        abus = AsyncEventBus(EventConfig(block_timeout=WAIT * 3))
        try:
            sub = await abus.subscribe("x.*", slow, capacity=2, overflow="block")
            await abus.subscribe("x.*", fast)
            await abus.publish("x.e", -1)
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, slow.entered.wait, WAIT)
            batch = [Event(event_type="x.e", data=i) for i in range(10)]
            task = asyncio.ensure_future(abus.publish_many(batch))
            admitted = await loop.run_in_executor(
                None, wait_for, lambda: sub.statistics().accepted == 3
            )
            assert admitted
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
            assert isinstance(results[0], asyncio.CancelledError), results
            slow.release.set()
            assert (await abus.publish("x.e", "after")).data == "after"
            await abus.flush(WAIT)
            return list(slow.data), abus.sync.metrics().rejected, sub.statistics()
        finally:
            await abus.aclose(WAIT)

    handled, rejected, stats = asyncio.run(main())
    assert handled == [-1, 0, 1, "after"]
    assert fast.data == [-1, 0, 1, "after"]
    assert rejected == 0
    assert (stats.accepted, stats.delivered, stats.dropped) == (4, 4, 0)
