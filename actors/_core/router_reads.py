"""Read the router's counters and dead letters from any thread, during and after ``close``.

The router answers while it runs; once stopped it publishes its final
figures (``RouterActor.final``).  Between the two (stopped, not yet
published) and while it is too busy to answer, the last answer seen is
given: stale, never lower than an earlier one, never zeros.
"""

from __future__ import annotations

import threading

from actors._core.messages import DeadLetter, GetDeadLetters, GetRouterFigures, RouterFigures
from actors._core.router import RouterActor
from actors._errors import FutureTimeoutError
from actors._runtime.future import BusFuture

__all__ = ["RouterReads"]

ASK_TIMEOUT = 10.0
"""How long ``metrics()`` and ``dead_letters()`` wait for the router's answer (seconds)."""


class RouterReads:
    """The router's figures and dead letters, as ``metrics()`` and ``dead_letters()`` read them."""

    def __init__(self, router: RouterActor) -> None:
        self._router = router
        self._seen = RouterFigures(0, 0, 0, 0.0, 0.0)  # the router's last answer
        self._dead_seen: list[DeadLetter] = []  # and its last list of dead letters
        self._lock = threading.Lock()

    def figures(self) -> RouterFigures:
        """Ask the router for its counters (its final ones once it stopped)."""
        router = self._router
        if router.actor_ref.is_alive():
            future: BusFuture[RouterFigures] = BusFuture()
            router.actor_inbox.put(GetRouterFigures(future))
            try:
                return self._saw(future.get(ASK_TIMEOUT))
            except FutureTimeoutError:
                pass
        final = router.final
        return self._saw(final[0]) if final is not None else self._seen

    def _saw(self, figures: RouterFigures) -> RouterFigures:
        """Keep ``figures`` unless a reader on another thread saw later ones; return the later."""
        with self._lock:
            if figures.published >= self._seen.published:
                self._seen = figures
            return self._seen

    def dead_letters(self) -> list[DeadLetter]:
        """Ask the router for the dead letters it keeps (oldest first)."""
        router = self._router
        if router.actor_ref.is_alive():
            future: BusFuture[list[DeadLetter]] = BusFuture()
            router.actor_inbox.put(GetDeadLetters(future))
            try:
                letters = future.get(ASK_TIMEOUT)
            except FutureTimeoutError:
                pass
            else:
                self._dead_seen = letters
                return list(letters)
        final = router.final
        return list(final[1] if final is not None else self._dead_seen)
