"""One thread that calls functions at deadlines: handler deadlines and retry wake-ups.

A ``Timers`` is shared by every subscription of a bus.  Its thread starts on
first use and sleeps on a condition until the earliest deadline, so an idle
bus costs nothing.  Callbacks run on that thread, one after another: they
must be short and must not block (a subscriber's callback wakes its actor or
flags a call; the work happens on the actor's own turn).  A callback that
raises is logged, never fatal.

Deadlines are ``time.monotonic()`` values; a callback never runs before its
deadline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Timer", "Timers"]

logger = logging.getLogger("actors.timers")

_LONGEST = 3600.0  # seconds: the longest single wait (a lock cannot wait past TIMEOUT_MAX)
_SWEEP_AT = 64  # cancelled entries past which the heap is rebuilt, once they are half of it


class Timer:
    """``call_at``'s handle: a heap entry whose ``fn`` is None once it ran or was cancelled."""

    __slots__ = ("deadline", "fn", "serial")

    def __init__(self, deadline: float, serial: int, fn: Callable[[], None] | None) -> None:
        self.deadline = deadline
        self.serial = serial  # 0: never queued
        self.fn = fn

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.serial) < (other.deadline, other.serial)


class Timers:
    """Run callbacks at monotonic deadlines on one lazily started daemon thread."""

    def __init__(self, name: str = "actors-timers") -> None:
        self.name = name
        self._heap: list[Timer] = []
        self._cancelled = 0  # entries of the heap whose callback was cancelled
        self._cond = threading.Condition(threading.Lock())
        self._serial = itertools.count(1)  # 0: never queued
        self._thread: threading.Thread | None = None
        self._alive = True

    def call_at(self, deadline: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn`` on the timer thread once ``time.monotonic() >= deadline``.

        Never blocks.  After ``shutdown`` the call is ignored.  Returns a
        handle for ``cancel``.
        """
        entry = Timer(deadline, 0, fn)
        with self._cond:
            if not self._alive:
                return entry
            entry.serial = next(self._serial)
            first = not self._heap or deadline < self._heap[0].deadline
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            elif first:
                self._cond.notify()
        return entry

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn`` on the timer thread after ``delay`` seconds; return its handle."""
        return self.call_at(time.monotonic() + delay, fn)

    def cancel(self, timer: Timer) -> None:
        """Forget ``timer``'s callback (and whatever it holds) if it has not run.  Idempotent.

        The entry stays in the heap, empty, until its deadline or until the
        empty entries are half of the heap (it is rebuilt then), as asyncio's
        loop does with its cancelled timer handles.
        """
        with self._cond:
            if timer.fn is None:
                return
            timer.fn = None
            if not self._alive or timer.serial == 0:  # dropped at shutdown, or never queued
                return
            self._cancelled += 1
            heap = self._heap
            if self._cancelled > _SWEEP_AT and 2 * self._cancelled > len(heap):
                heap[:] = [e for e in heap if e.fn is not None]
                heapq.heapify(heap)
                self._cancelled = 0

    def pending(self) -> int:
        """Return how many callbacks wait for their deadline (cancelled ones not counted)."""
        with self._cond:
            return len(self._heap) - self._cancelled

    def shutdown(self, timeout: float = 0.0) -> None:
        """Drop every pending callback and let the thread end.  Idempotent.

        Waits up to ``timeout`` for the thread to end (a callback running
        now finishes first).
        """
        with self._cond:
            self._alive = False
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:  # the timer thread: it must never die, whatever is asked of it
        heap = self._heap
        cond = self._cond
        monotonic = time.monotonic
        while True:
            with cond:
                while True:
                    if not self._alive:
                        return
                    if heap:
                        wait = heap[0].deadline - monotonic()
                        if wait <= 0:
                            entry = heapq.heappop(heap)
                            fn = entry.fn
                            if fn is None:  # cancelled
                                self._cancelled -= 1
                                continue
                            entry.fn = None  # run: a later cancel has nothing to do
                            break
                        cond.wait(min(wait, _LONGEST))  # a far deadline: wake, look again
                    else:
                        cond.wait()
            try:
                fn()
            except Exception:
                logger.exception("timer callback %r failed", fn)
