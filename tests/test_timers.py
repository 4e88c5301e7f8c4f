"""The timer thread: callbacks at monotonic deadlines, in deadline order, never early."""

from __future__ import annotations

import threading
import time

from actors._runtime.timers import Timers
from tests._support import WAIT


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
