"""How far a slower actor lags the actor that feeds it; the feeder parks past a limit.

The router sends the journal one ``Record`` per turn and goes on.  Without a
bound, a journal slower than the publishers falls behind for as long as a
flood lasts: every event waiting for it is memory, and, having outlived
collections, part of the collector's walk.  The feeder counts what it sends
(``sent``), the taker what it is done with (``done``); past ``limit`` the
feeder parks (its own mailbox then fills, and ``publish`` waits for room up
to ``block_timeout``) until the taker is back under half the limit, or stops.

``sent`` is written by the feeder's thread only, ``done`` and ``closed`` by
the taker's only; each reads the other's as it is.  A resumption may come
twice (both sides saw the taker caught up): resuming is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["JOURNAL_BACKLOG", "Backlog"]

JOURNAL_BACKLOG = 16_384
"""Events the router may have sent the journal that it has not written yet."""


class Backlog:
    """The count of events sent to a taker and not yet done with (module docstring)."""

    __slots__ = ("_resume", "closed", "done", "limit", "sent")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0
        self.done = 0
        self.closed = False
        self._resume: Callable[[], None] | None = None

    def lag(self) -> int:
        """Return how many events sent are not yet done with."""
        return self.sent - self.done

    def add(self, count: int, park: Callable[[], None], resume: Callable[[], None]) -> None:
        """Count ``count`` events sent; past the limit, ``park`` now and ``resume`` under half.

        Called by the feeder, on its thread.  It parks before it arms the
        resumption, then looks again: a taker that caught up in between
        found nothing armed, so the feeder resumes itself.
        """
        self.sent += count
        if self.closed or self.sent - self.done <= self.limit:
            return
        park()
        self._resume = resume
        if self.closed or self.sent - self.done <= self.limit // 2:
            self._resume = None
            resume()

    def taken(self, count: int) -> None:
        """Count ``count`` events done with (written or failed); resume a parked feeder."""
        self.done += count
        resume = self._resume
        if resume is not None and self.sent - self.done <= self.limit // 2:
            self._resume = None
            resume()

    def close(self) -> None:
        """The taker stopped: nothing holds the feeder back any more."""
        self.closed = True
        resume, self._resume = self._resume, None
        if resume is not None:
            resume()
