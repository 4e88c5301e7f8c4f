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

__all__ = ["Timers"]

logger = logging.getLogger("actors.timers")

_LONGEST = 3600.0  # seconds: the longest single wait (a lock cannot wait past TIMEOUT_MAX)


class Timers:
    """Run callbacks at monotonic deadlines on one lazily started daemon thread."""

    def __init__(self, name: str = "actors-timers") -> None:
        self.name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition(threading.Lock())
        self._serial = itertools.count()
        self._thread: threading.Thread | None = None
        self._alive = True

    def call_at(self, deadline: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the timer thread once ``time.monotonic() >= deadline``.

        Never blocks.  After ``shutdown`` the call is ignored.
        """
        with self._cond:
            if not self._alive:
                return
            first = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._serial), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            elif first:
                self._cond.notify()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the timer thread after ``delay`` seconds."""
        self.call_at(time.monotonic() + delay, fn)

    def pending(self) -> int:
        """Return how many callbacks wait for their deadline."""
        return len(self._heap)

    def shutdown(self) -> None:
        """Drop every pending callback and let the thread end.  Idempotent."""
        with self._cond:
            self._alive = False
            self._heap.clear()
            self._cond.notify()

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
                        wait = heap[0][0] - monotonic()
                        if wait <= 0:
                            _, _, fn = heapq.heappop(heap)
                            break
                        cond.wait(min(wait, _LONGEST))  # a far deadline: wake, look again
                    else:
                        cond.wait()
            try:
                fn()
            except Exception:
                logger.exception("timer callback %r failed", fn)
