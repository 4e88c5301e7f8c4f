"""A token bucket for the bus's optional publish rate limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allow ``rate`` events a second on average and bursts of up to ``burst``.

    ``try_take`` never blocks: it returns False when the bucket is empty.
    """

    def __init__(
        self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def try_take(self, n: int = 1) -> bool:
        """Take ``n`` tokens if there are that many; return whether it did."""
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if tokens >= n:
                self._tokens = tokens - n
                return True
            self._tokens = tokens
            return False

    def give_back(self, n: int) -> None:
        """Return ``n`` tokens taken for events that were not published after all."""
        with self._lock:
            self._tokens = min(self.burst, self._tokens + n)
