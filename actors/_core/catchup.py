"""Catch-up (and durable) subscriptions: history first, then live.

As EventStoreDB's catch-up subscriptions do, a ``CatchUp`` reads stored
events page by page until it reaches the journal's head, only then joins the
router (which tells it the first live sequence), reads the gap that opened
meanwhile, and goes live, skipping live events it already handled.  While it
joins, the mailbox is unbounded so the switch loses nothing; it gets its
capacity back once live.

A flush waits for a catch-up still reading history only until it has
handled the events published before the flush (``mark``): one whose handler
is no faster than the publishers may never reach the head while they go on,
and a flush that waited for that would not end.

Every method runs on the subscriber's own thread: journal answers and the
router's "joined" arrive as messages (``HistoryRead``, ``Joined``) in the
subscriber's mailbox, so no other thread touches this state or the mailbox's
capacity, and no dispatcher thread waits on the journal.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from actors._core.messages import FlushMark, GetRouterFigures, HistoryRead, Joined, RouterFigures
from actors._core.routes import Route, accepts
from actors._model.config import OverflowStrategy
from actors._model.topics import Pattern
from actors._runtime.future import BusFuture

if TYPE_CHECKING:
    from actors._core.ports import Inbox
    from actors._model.event import Event
    from actors._runtime.mailbox import EventMailbox

__all__ = ["CatchUp", "durable_overflow", "mark_history", "once"]

logger = logging.getLogger("actors.subscriber")

Reader = Callable[[int, int, BusFuture[list["Event"]], bool], None]
"""``read(position, limit, answer, indexed)``: by the type index, or by sequence if not."""
Joiner = Callable[[Route, Callable[[int], None]], None]
Retrier = Callable[[float, Callable[[], None]], object]
"""``retry(delay, fn)``: call ``fn`` (which only sends messages) on another thread later."""

RETRY_FIRST = 0.05
"""The first wait before a failed history read is asked again (seconds); doubles each time."""
RETRY_MAX = 5.0
"""The longest wait between two attempts at a failing history read (seconds)."""


def once(fn: Callable[[], object]) -> Callable[..., None]:
    """Return a callable that calls ``fn`` the first time it is called, from any thread."""
    lock = threading.Lock()
    called = False

    def call(*_: object) -> None:
        nonlocal called
        with lock:
            if called:
                return
            called = True
        fn()

    return call


class _Mark:
    """A flush waiting for the events before ``sequence`` (see ``CatchUp.mark``)."""

    __slots__ = ("after", "done", "read", "sequence")

    def __init__(self, sequence: int, after: int, done: Callable[[], None]) -> None:
        self.sequence = sequence
        self.after = after  # reads asked before the mark: their answers prove nothing
        self.done = done
        self.read = False  # every event before ``sequence`` is in a page read


class CatchUp:
    """A catch-up subscription's state (see the module docstring)."""

    PAGE = 512

    def __init__(
        self,
        *,
        route: Route,
        inbox: Inbox,
        start: int | None,
        durable: str | None,
        read: Reader,
        join: Joiner,
        save: Callable[[str, int], None],
        retry: Retrier,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.route = route
        self.position = max(start or 1, 1)  # next sequence to deliver
        self.durable = durable
        self._mailbox: EventMailbox = route.mailbox
        self._inbox = inbox
        self._read = read
        self._join = join
        self._save = save
        self._retry = retry
        self._release = release  # retention may delete what is published from now on
        # The type index serves the reads until one fails; then the journal is
        # read by sequence (the records themselves), filtered here.
        self._indexed = True
        self.failed_reads = 0  # in a row: the wait before the next attempt grows with it
        self.live = False
        self.waiting = False
        # Done once every history page is handled; flush waits for it.
        self.caught_up: BusFuture[None] = BusFuture()
        self.live_start: int | None = None
        self._pages: deque[list[tuple[Event, float]]] = deque()
        self._asked = 0  # reads asked so far; answered in the order they were asked
        self._answered = 0
        self._marks: list[_Mark] = []
        self._capacity = self._mailbox.capacity
        self._matches = Pattern.parse(route.pattern).matches
        if start is None:
            # A new durable subscription with no starting point starts live.
            self.live = True
            self.caught_up.set(None)

    def take_page(self) -> list[tuple[Event, float]] | None:
        """Return what arrived (already filtered) since the last call, if anything."""
        if not self._pages:
            return None
        page: list[tuple[Event, float]] = []
        while self._pages:
            page.extend(self._pages.popleft())
        return page

    def request(self) -> None:
        """Ask for the next page of history."""
        self.waiting = True
        self._ask()

    def _ask(self) -> None:
        self._asked += 1
        self._read(self.position, self.PAGE, self._answer(), self._indexed)

    def mark(self, sequence: int, done: Callable[[], None]) -> None:
        """Call ``done`` once every event before ``sequence`` is handled (or once caught up).

        ``sequence`` is the router's next sequence, taken after the flush
        began; a read asked after this call reaches the journal after the
        records of those events (it goes through the router).  So the first
        such read whose page ends at or past ``sequence - 1``, or falls
        short of a page (the journal's head), has every one of them in what
        was read; once those pages are handled (``passed``), ``done``.
        """
        if self.caught_up.done():
            done()
            return
        self._marks.append(_Mark(sequence, self._asked, done))

    def passed(self) -> None:
        """Call the marks whose events are all handled (every page read is; no batch runs)."""
        if self._pages or not self._marks:
            return
        waiting = [m for m in self._marks if not m.read]
        for mark in self._marks:
            if mark.read:
                mark.done()
        self._marks = waiting

    def _read_through(self, last: int, full: bool) -> None:
        """Note the marks an answered read covers (``last``: its page's last sequence)."""
        for mark in self._marks:
            if mark.after < self._answered and (not full or last >= mark.sequence - 1):
                mark.read = True

    def _answer(self) -> BusFuture[list[Event]]:
        inbox = self._inbox
        future: BusFuture[list[Event]] = BusFuture()
        future.add_done_callback(lambda done: inbox.put(HistoryRead(done)))
        return future

    def on_read(self, future: BusFuture[list[Event]]) -> None:
        """Take a page the journal read; join the router once history is exhausted."""
        self._answered += 1
        exc = future.exception()
        if exc is not None:
            self._read_failed(exc)
            return  # still waiting: the same page is asked for again
        self.failed_reads = 0
        events = future.get()
        full = len(events) >= self.PAGE
        if self._marks:
            self._read_through((events[-1].sequence or 0) if events else 0, full)
        live_start = self.live_start
        if live_start is not None:
            events = [e for e in events if (e.sequence or 0) < live_start]
            full = full and len(events) >= self.PAGE
        if events:
            last = events[-1].sequence or 0
            matches = self._matches
            route = self.route
            page = [(e, 0.0) for e in events if matches(e.event_type) and accepts(route, e)]
            self.position = last + 1
            if page:
                self._pages.append(page)
        if not full:
            if live_start is None:
                # History exhausted: join live delivery, then read the gap.
                # Unbounded meanwhile, so the switch drops nothing.
                self._mailbox.capacity = sys.maxsize
                inbox = self._inbox
                self._join(self.route, lambda start: inbox.put(Joined(start)))
                return  # still waiting: for Joined, then the gap
            self._go_live()
        self.waiting = False

    def on_joined(self, live_start: int) -> None:
        """The router added the route: read the gap up to ``live_start``.

        The read is queued through the router after every record of the
        events before ``live_start``, so the journal holds them all.
        """
        self.live_start = live_start
        self._ask()

    def _read_failed(self, exc: BaseException) -> None:
        """A history read failed: ask again, never take it for the end of history.

        A failure is no page: taken for a short one it would end the history
        (go live past events never read, and let a durable checkpoint move
        past them for good).  The first failure switches to reading by
        sequence (a damaged type index does not stop the catch-up); after
        that the same page is asked for again, waiting ``RETRY_FIRST`` s,
        doubling up to ``RETRY_MAX``, for as long as it fails: the
        subscription stalls where it is (``flush`` waits for it) and logs
        each failure at ERROR.
        """
        self.failed_reads += 1
        if self._indexed:
            self._indexed = False
            logger.error(
                "catch-up read of %s at sequence %d failed: %r; reading the journal by "
                "sequence from there, without the type index",
                self.route.id,
                self.position,
                exc,
            )
            self._ask()
            return
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self.failed_reads - 1, 10))
        logger.error(
            "catch-up read of %s at sequence %d failed (%d in a row): %r; "
            "asking again in %.2f s, no event is skipped",
            self.route.id,
            self.position,
            self.failed_reads,
            exc,
            delay,
        )
        # The timer's thread only sends the read: what it needs is taken here.
        self._asked += 1  # asked now, as far as a mark made meanwhile can tell
        read, position, answer = self._read, self.position, self._answer
        self._retry(delay, lambda: read(position, self.PAGE, answer(), False))

    def _go_live(self) -> None:
        self.live = True
        self._release()
        self._mailbox.capacity = self._capacity
        if self.live_start is not None:
            self.position = max(self.position, self.live_start)

    def settle(self) -> bool:
        """Mark the subscription caught up if it is live with no history left; return it."""
        if self.live and not self._pages:
            self.caught_up.set(None)
            marks, self._marks = self._marks, []
            for mark in marks:
                mark.done()
            return True
        return False

    def handled(self, sequence: int) -> None:
        """Record progress after a batch (saves the durable checkpoint)."""
        if sequence >= self.position:
            self.position = sequence + 1
        if self.durable is not None:
            self._save(self.durable, sequence)


def durable_overflow(given: object, strategy: OverflowStrategy) -> OverflowStrategy:
    """The overflow of a durable subscription: ``BLOCK`` unless given, and never a drop.

    A dropped event is one its checkpoint would move past: the restart would
    not deliver it, though the journal holds it (docs/persistence.md).
    """
    if given is None:
        return OverflowStrategy.BLOCK
    if strategy in (OverflowStrategy.DROP_OLDEST, OverflowStrategy.DROP_NEWEST):
        raise ValueError(
            f"a durable subscription cannot drop events (overflow={strategy.value!r}): its "
            "checkpoint would move past them; use 'block' (the default) or 'reject'"
        )
    return strategy


def mark_history(
    pending: Sequence[tuple[Inbox, BusFuture[None]]], router: Inbox, count_down: Callable[[], None]
) -> None:
    """Count down once for each catch-up of ``pending`` (its inbox, its ``caught_up``).

    Each counts once it has handled the events published before this call
    (``CatchUp.mark``, with the router's next sequence), or once caught up,
    whichever comes first.  A router that stopped answers with the figures
    it stopped with: nothing is published after them.
    """
    if not pending:
        return
    dones: list[Callable[[], None]] = []
    for _, caught_up in pending:
        done = once(count_down)
        caught_up.add_done_callback(done)

        def marked_done(
            done: Callable[..., None] = done, caught_up: BusFuture[None] = caught_up
        ) -> None:
            # Counted by its mark: nothing of this flush stays on ``caught_up``,
            # which may be far off (a catch-up chasing publishers).
            caught_up.remove_done_callback(done)
            done()

        dones.append(marked_done)

    def marked(answer: BusFuture[RouterFigures]) -> None:
        if answer.exception() is not None:
            for done in dones:
                done()
            return
        sequence = answer.get().next_sequence
        for (inbox, _), done in zip(pending, dones, strict=True):
            inbox.put(FlushMark(sequence, done))

    figures: BusFuture[RouterFigures] = BusFuture()
    figures.add_done_callback(marked)
    router.put(GetRouterFigures(figures))
