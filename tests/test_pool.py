"""The dispatcher's thread pool: a blocked turn gets a stand-in thread, extras retire."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors import DispatchedActor, Dispatcher
from tests._support import WAIT, wait_for


class Blocker(DispatchedActor):
    """Blocks inside every message until ``release`` is set; counts its messages."""

    def __init__(
        self, dispatcher: Dispatcher, release: threading.Event, entered: threading.Event
    ) -> None:
        super().__init__(dispatcher=dispatcher)
        self.entered = entered
        self.release = release
        self.handled = 0

    def on_receive(self, message: Any) -> Any:
        if message == "block":
            self.entered.set()
            assert self.release.wait(WAIT), "the test never released the actor"
        self.handled += 1
        return threading.current_thread().name


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a thread blocked behind a failed test
    # The tests shut their pools down, not their actors: nothing would ever run their
    # stop, so they leave pykka's registry here (later tests count what it holds).
    for ref in pykka.ActorRegistry.get_by_class(Blocker):
        pykka.ActorRegistry.unregister(ref)


def elastic(threads: int = 1, max_threads: int = 4) -> Dispatcher:
    return Dispatcher(
        threads, max_threads=max_threads, blocking_threshold=0.02, keepalive=0.05, name="elastic"
    )


def test_a_blocked_turn_gets_a_stand_in_thread(release: threading.Event) -> None:
    d = elastic()
    try:
        entered = threading.Event()
        ref = Blocker.start(d, release, entered)
        other = Blocker.start(d, release, threading.Event())
        ref.tell("block")
        assert entered.wait(WAIT)
        # One thread, held by the blocked actor: only a new thread can answer.
        assert other.ask("hello", timeout=WAIT).startswith("elastic-")
        assert d.threads == 2
        blocked = d.blocked()
        assert len(blocked) == 1
        release.set()
        assert ref.ask("after", timeout=WAIT)
        assert wait_for(lambda: not d.blocked())
        assert wait_for(lambda: d.threads == 1), "the extra thread did not retire"
    finally:
        release.set()
        d.shutdown(WAIT)


def test_threads_never_exceed_max_threads(release: threading.Event) -> None:
    d = elastic(threads=1, max_threads=3)
    try:
        entered = [threading.Event() for _ in range(3)]
        refs = [Blocker.start(d, release, e) for e in entered]
        for ref in refs:
            ref.tell("block")
        # The second and third block on the threads added for them.
        assert all(e.wait(WAIT) for e in entered)
        assert wait_for(lambda: len(d.blocked()) == 3)
        assert d.threads == 3
        late = Blocker.start(d, release, threading.Event())
        fut = late.ask("queued", block=False)
        # Every thread is inside a blocked turn and none may be added.
        assert not fut.done()
        assert d.threads == 3
        release.set()
        assert fut.get(timeout=WAIT)
    finally:
        release.set()
        d.shutdown(WAIT)


def test_without_a_threshold_the_pool_stays_fixed(release: threading.Event) -> None:
    d = Dispatcher(1, name="fixed")
    try:
        entered = threading.Event()
        ref = Blocker.start(d, release, entered)
        ref.tell("block")
        assert entered.wait(WAIT)
        assert d.blocked() == {}
        assert d.threads == 1
    finally:
        release.set()
        d.shutdown(WAIT)


def test_shutdown_abandons_a_blocked_thread_at_the_deadline(release: threading.Event) -> None:
    d = elastic()
    entered = threading.Event()
    ref = Blocker.start(d, release, entered)
    ref.tell("block")
    assert entered.wait(WAIT)
    # The blocked thread cannot end: shutdown reports it instead of waiting.
    assert d.shutdown(0.05) is False
    release.set()


def test_dispatcher_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        Dispatcher(0)
    with pytest.raises(ValueError, match="max_threads"):
        Dispatcher(2, max_threads=1)
    with pytest.raises(ValueError, match="blocking_threshold"):
        Dispatcher(1, blocking_threshold=0)


class StuckTurn:
    """A runnable whose turns block until ``release``; records the threads it ran on."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.entered = threading.Event()
        self.threads: list[str] = []

    def actor_turn(self, throughput: int) -> None:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the turn"


class QuickTurn:
    def __init__(self) -> None:
        self.ran = threading.Event()
        self.thread = ""

    def actor_turn(self, throughput: int) -> None:
        self.thread = threading.current_thread().name
        self.ran.set()


def test_hand_off_leaves_a_stuck_thread_behind_and_starts_another(
    release: threading.Event,
) -> None:
    d = Dispatcher(1, name="solo")
    try:
        stuck = StuckTurn(release)
        d.schedule(stuck)
        assert stuck.entered.wait(WAIT)
        assert not d.hand_off(QuickTurn(), limit=4)  # not in a turn: refused
        assert d.hand_off(stuck, limit=1)
        assert d.threads == 1  # the stand-in; the stuck one is left behind
        assert d.left_behind == 1
        quick = QuickTurn()
        d.schedule(quick)
        assert quick.ran.wait(WAIT)
        assert quick.thread != stuck.threads[0]
        other = StuckTurn(release)
        d.schedule(other)
        assert other.entered.wait(WAIT)
        assert not d.hand_off(other, limit=1)  # one is already left behind
        release.set()
        assert wait_for(lambda: d.left_behind == 0)  # the left thread exits after its turn
        assert d.threads == 1
    finally:
        release.set()
        d.shutdown(WAIT)


class Turn:
    """A runnable that records the thread each of its turns ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.ran = threading.Semaphore(0)

    def actor_turn(self, throughput: int) -> None:
        self.threads.append(threading.current_thread().name)
        self.ran.release()


def test_a_spare_dispatcher_runs_on_an_idle_pool_thread(release: threading.Event) -> None:
    from actors._runtime.pool import SpareDispatcher  # noqa: PLC0415

    pool = Dispatcher(2, name="pool", blocking_threshold=0.05)
    spare = Dispatcher(1, name="spare")
    both = SpareDispatcher(pool, spare)
    try:
        assert wait_for(pool.has_idle_thread)
        turn = Turn()
        both.schedule(turn)
        assert turn.ran.acquire(timeout=WAIT)
        assert turn.threads[-1].startswith("pool-")
    finally:
        pool.shutdown(WAIT)
        spare.shutdown(WAIT)


def test_a_spare_dispatcher_moves_off_a_pool_whose_threads_are_taken(
    release: threading.Event,
) -> None:
    from actors._runtime.pool import SpareDispatcher  # noqa: PLC0415

    pool = Dispatcher(1, name="pool", max_threads=1, blocking_threshold=0.05)
    spare = Dispatcher(1, name="spare")
    both = SpareDispatcher(pool, spare)
    entered = threading.Event()
    blocker = Blocker(pool, release, entered)
    blocker.actor_start()
    try:
        blocker.actor_ref.tell("block")
        assert entered.wait(WAIT)
        # The pool's one thread is taken (and cannot grow): every turn goes
        # to the spare thread, none waits behind the blocked handler.
        turn = Turn()
        for _ in range(20):
            both.schedule(turn)
            assert turn.ran.acquire(timeout=WAIT)
        assert set(turn.threads) == {turn.threads[0]}
        assert turn.threads[0].startswith("spare-")
        release.set()
        pool.shutdown(WAIT)
        # A pool that was shut down is never used again.
        both.schedule(turn)
        assert turn.ran.acquire(timeout=WAIT)
        assert turn.threads[-1].startswith("spare-")
    finally:
        release.set()
        pool.shutdown(WAIT)
        spare.shutdown(WAIT)


class CountingDispatcher(Dispatcher):
    """Counts the watchdog's scans."""

    scans = 0

    def _scan(self, threshold: float) -> int:
        self.scans += 1
        return super()._scan(threshold)


class DoneTurn:
    """A runnable whose every turn sets ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def actor_turn(self, throughput: int) -> None:
        self.done.set()


def test_the_watchdog_does_not_wake_at_every_short_turn() -> None:
    # Short turns one after another (a request/reply loop) cost one scan per
    # half-threshold, not one wake-up of the watchdog per turn.
    d = CountingDispatcher(1, blocking_threshold=20.0, name="paced")
    try:
        started = time.monotonic()
        for _ in range(200):
            turn = DoneTurn()
            d.schedule(turn)
            assert turn.done.wait(WAIT)
        elapsed = time.monotonic() - started
        assert d.scans <= 2 + elapsed / 10.0
    finally:
        d.shutdown(WAIT)


def test_the_rescue_scan_survives_turns_queued_while_it_reads_the_table() -> None:
    """Regression: the watchdog's scan of the turns waiting on the pool (``_rescue``) copied
    the table item by item; a garbage collection in the middle (which can run code and let
    another thread queue a turn) changed its size, and the watchdog thread died."""
    import gc  # noqa: PLC0415

    from actors._runtime.pool import SpareDispatcher  # noqa: PLC0415

    pool = Dispatcher(1, name="pool", blocking_threshold=60.0)  # no turn waits that long
    spare = Dispatcher(1, name="spare")
    both = SpareDispatcher(pool, spare)
    waiting = both._waiting  # noqa: SLF001 - the table the watchdog scans
    now = time.monotonic()
    for _ in range(5000):  # more item pairs than the interpreter keeps ready to reuse
        waiting[Turn()] = now  # type: ignore[index]

    def queue_one(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            waiting[Turn()] = time.monotonic()  # type: ignore[index]

    threshold = gc.get_threshold()
    gc.callbacks.append(queue_one)
    gc.set_threshold(1)  # a collection at (nearly) every allocation
    try:
        both._rescue()  # noqa: SLF001 - what the watchdog runs after each scan
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(queue_one)
        pool.shutdown(WAIT)
        spare.shutdown(WAIT)
    assert len(waiting) > 5000  # turns were queued during the scan, and none was moved
