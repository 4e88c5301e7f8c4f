"""The timer thread: callbacks at monotonic deadlines, in deadline order, never early."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from actors._runtime.timers import Timer, Timers
from tests._support import WAIT, wait_for


def test_callbacks_run_in_deadline_order_and_never_early() -> None:
    timers = Timers(name="test-timers")
    try:
        done = threading.Event()
        fired: list[tuple[str, float, float]] = []
        now = time.monotonic()

        def at(name: str, deadline: float, last: bool = False) -> None:
            def fire() -> None:
                fired.append((name, deadline, time.monotonic()))
                if last:
                    done.set()

            timers.call_at(deadline, fire)

        # The thread runs one callback at a time: while the gate's callback runs, nothing
        # else fires, so every deadline is queued before any is due.
        gate = threading.Event()
        timers.call_at(now - 2.0, lambda: gate.wait(WAIT) and None)
        at("third", now + 0.03, last=True)
        at("first", now - 1.0)
        at("second", now + 0.01)
        gate.set()
        assert done.wait(WAIT)
        assert [name for name, _, _ in fired] == ["first", "second", "third"]
        assert all(ran >= deadline for _, deadline, ran in fired)
        assert timers.pending() == 0
    finally:
        timers.shutdown()


def test_a_failing_callback_does_not_stop_the_thread() -> None:
    timers = Timers(name="test-timers")
    try:
        done = threading.Event()

        def boom() -> None:
            raise RuntimeError("callback fails on purpose")

        timers.call_later(0.0, boom)
        timers.call_later(0.0, done.set)
        assert done.wait(WAIT)
    finally:
        timers.shutdown()


def test_after_shutdown_nothing_runs() -> None:
    timers = Timers(name="test-timers")
    ran = threading.Event()
    timers.call_later(3600.0, ran.set)
    assert timers.pending() == 1
    timers.shutdown()
    assert timers.pending() == 0
    timers.call_later(0.0, ran.set)
    assert timers.pending() == 0
    assert not ran.is_set()


def test_a_cancelled_callback_never_runs_and_lets_go_of_what_it_held() -> None:
    timers = Timers(name="test-timers")
    try:
        ran: list[str] = []
        done = threading.Event()

        class Holder:
            def fire(self) -> None:
                ran.append("cancelled")

        holder = Holder()
        held = weakref.ref(holder)
        now = time.monotonic()
        timer = timers.call_at(now + 0.01, holder.fire)

        def kept() -> None:
            ran.append("kept")
            done.set()

        timers.call_at(now + 0.02, kept)
        assert timers.pending() == 2
        timers.cancel(timer)
        timers.cancel(timer)  # idempotent
        assert timers.pending() == 1
        del holder
        gc.collect()
        assert held() is None  # the heap entry no longer holds the callback
        assert done.wait(WAIT)
        assert ran == ["kept"]
        assert timers.pending() == 0
        timers.cancel(timer)  # after its deadline passed: nothing to do
        assert timers.pending() == 0
    finally:
        timers.shutdown()


def test_cancelled_far_deadlines_do_not_pile_up_in_the_heap() -> None:
    """Cancelled entries are swept once they are half the heap (as asyncio's loop does)."""
    timers = Timers(name="test-timers")
    try:
        far = time.monotonic() + 3600.0
        for _ in range(10_000):
            timers.cancel(timers.call_at(far, lambda: None))
        assert timers.pending() == 0
        gc.collect()
        waiting = sum(isinstance(o, Timer) for o in gc.get_objects())
        assert waiting <= 200  # swept: not 10,000 entries waiting an hour
        ran = threading.Event()
        timers.call_later(0.0, ran.set)
        assert ran.wait(WAIT)  # the thread still runs what is due
    finally:
        timers.shutdown()


def test_a_callback_that_ran_is_not_cancelled_again() -> None:
    timers = Timers(name="test-timers")
    try:
        done = threading.Event()
        timer = timers.call_later(0.0, done.set)
        assert done.wait(WAIT)
        assert wait_for(lambda: timers.pending() == 0)
        timers.cancel(timer)  # it ran: the count of cancelled entries must not move
        other = threading.Event()
        timers.call_later(0.0, other.set)
        assert other.wait(WAIT)
        assert timers.pending() == 0
    finally:
        timers.shutdown()
