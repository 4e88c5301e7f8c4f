"""Read the router's counters and dead letters from any thread, during and after ``close``.

The router answers while it runs; once stopped it publishes its final
figures (``RouterActor.final``), which a reader that finds it stopped waits
for.  A router too busy to answer within ``ASK_TIMEOUT`` gets the last
answer seen: stale, and no counter ever lower than in an earlier answer.
Until it answers that overdue ask (of either kind), later readers of its
figures or dead letters get the last answer at once, and no further ask
piles up in its inbox: a scrape of ``/metrics`` every few seconds, or an
operator's ``dead_letters()`` in a loop, waits once, not each time.

On an event loop's thread (``AsyncEventBus.metrics`` and ``dead_letters``,
inside ``from_loop``) the ask is waited for at most ``LOOP_ASK_TIMEOUT``: the
loop is not held for long behind a backlog of publishes or a router held by
a filter.  The ask stays in the router's order (behind what was sent
before it: a dead letter a flushed handler reported is counted), and one
given up on holds back later readers on loops only: a thread's reader
still waits its ``ASK_TIMEOUT`` for fresh figures.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

from actors._core.messages import DeadLetter, GetDeadLetters, GetRouterFigures, RouterFigures
from actors._core.router import RouterActor
from actors._errors import FutureTimeoutError
from actors._runtime.future import BusFuture

__all__ = ["RouterReads", "ask_wait", "from_loop"]

ASK_TIMEOUT = 10.0
"""How long ``metrics()`` and ``dead_letters()`` wait for the router's answer (seconds)."""

LOOP_ASK_TIMEOUT = 0.25
"""The same, asked on an event loop's thread (``from_loop``)."""

_on_loop = contextvars.ContextVar("router_ask_on_loop", default=False)


@contextlib.contextmanager
def from_loop() -> Iterator[None]:
    """Wait at most ``LOOP_ASK_TIMEOUT`` for the router in this block (an event loop's thread)."""
    token = _on_loop.set(True)
    try:
        yield
    finally:
        _on_loop.reset(token)


def ask_wait() -> float:
    """How long this reader waits for an actor's or a thread's answer (router, bridge)."""
    return LOOP_ASK_TIMEOUT if _on_loop.get() else ASK_TIMEOUT


class RouterReads:
    """The router's figures and dead letters, as ``metrics()`` and ``dead_letters()`` read them."""

    def __init__(self, router: RouterActor) -> None:
        self._router = router
        self._seen = RouterFigures(0, 0, 0, 0.0, 0.0)  # the router's last answer
        self._dead_seen: list[DeadLetter] = []  # and its last list of dead letters
        self._lock = threading.Lock()
        self._overdue: BusFuture[Any] | None = None  # the last ask a reader gave up on
        self._loop_overdue: BusFuture[Any] | None = None  # ... a reader on a loop (from_loop)

    def figures(self) -> RouterFigures:
        """Ask the router for its counters (its final ones once it stopped).

        Each reader asks for itself, after what it published (its answer
        counts it), except while an ask a reader gave up on is unanswered.
        """
        router = self._router
        if router.actor_ref.is_alive():
            if self._held():
                return self._saw(None)  # the router is still held: the last answer, at once
            future: BusFuture[RouterFigures] = BusFuture()
            router.actor_inbox.put(GetRouterFigures(future))
            try:
                return self._saw(future.get(ask_wait()))
            except FutureTimeoutError:
                if router.actor_ref.is_alive():
                    self._gave_up(future)
                    return self._saw(None)
        final = self._final()
        return self._saw(final[0] if final is not None else None)

    def _held(self) -> bool:
        """Return whether an ask a reader gave up on is still unanswered.

        One given up on by a reader on a loop (after its short wait) holds back
        only readers on loops: a thread's reader waits for fresh figures.
        """
        with self._lock:
            asks = (self._overdue, self._loop_overdue) if _on_loop.get() else (self._overdue,)
            return any(ask is not None and not ask.done() for ask in asks)

    def _gave_up(self, future: BusFuture[Any]) -> None:
        with self._lock:
            if _on_loop.get():
                self._loop_overdue = future
            else:
                self._overdue = future

    def _final(self) -> tuple[RouterFigures, list[DeadLetter]] | None:
        """The router's final figures; it stopped, so they are being set: wait for them."""
        router = self._router
        router.final_ready.wait(ASK_TIMEOUT)
        return router.final

    def _saw(self, figures: RouterFigures | None) -> RouterFigures:
        """Fold ``figures`` into the last ones seen; return them.

        Readers on several threads store their answers in any order: each
        counter keeps the highest value seen, so none ever goes back.
        """
        with self._lock:
            seen = self._seen
            if figures is not None:
                seen = self._seen = RouterFigures(
                    max(seen.published, figures.published),
                    max(seen.rejected, figures.rejected),
                    max(seen.dead_letters, figures.dead_letters),
                    figures.events_per_second,
                    max(seen.peak_events_per_second, figures.peak_events_per_second),
                )
            return seen

    def dead_letters(self) -> list[DeadLetter]:
        """Ask the router for the dead letters it keeps (oldest first)."""
        router = self._router
        if router.actor_ref.is_alive():
            if self._held():
                return self._saw_letters(None)  # as ``figures``: the last list, at once
            future: BusFuture[list[DeadLetter]] = BusFuture()
            router.actor_inbox.put(GetDeadLetters(future))
            try:
                return self._saw_letters(future.get(ask_wait()))
            except FutureTimeoutError:
                if router.actor_ref.is_alive():
                    self._gave_up(future)
                    return self._saw_letters(None)
        final = self._final()
        return self._saw_letters(final[1] if final is not None else None)

    def _saw_letters(self, letters: list[DeadLetter] | None) -> list[DeadLetter]:
        """Keep ``letters`` unless a reader stored a later list; return a copy of the later."""
        with self._lock:
            if letters is not None and _last(letters) >= _last(self._dead_seen):
                self._dead_seen = letters
            return list(self._dead_seen)


def _last(letters: list[DeadLetter]) -> int:
    """The sequence of the last letter's announcement (how late the list is)."""
    if not letters:
        return 0
    letter = letters[-1].letter
    return (letter.sequence or 0) if letter is not None else 0
