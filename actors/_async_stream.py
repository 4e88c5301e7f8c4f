"""``EventStream``: an async iterator over a live subscription (``AsyncEventBus.stream``).

The subscription feeds an ``Inbox`` (the unread events and the flags the
reader and the handler wait on), which is all it refers to: a stream its
reader dropped without ``aclose`` (``break`` out of ``async for``) is
collected, and its finalizer unsubscribes it on its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from actors._model import checks
from actors._model.config import OverflowStrategy
from actors._model.event import Event, expired_unix
from actors._model.filter import FilterLike

if TYPE_CHECKING:
    from actors._bus import EventBus
    from actors._core.subscriber import Subscription

__all__ = ["EventStream", "Inbox"]


class Inbox:
    """What a stream's subscription feeds and its reader takes (no reference to the stream)."""

    def __init__(self, capacity: int, drop: OverflowStrategy | None) -> None:
        self.capacity = capacity
        self.unread: deque[Event] = deque()
        # None: the reader paces the subscription (its put waits for room).
        self.drop = drop
        self.readable = asyncio.Event()  # set while a reader need not wait
        self.room = asyncio.Event()  # set while a put need not wait
        self.ending = False  # the bus is closing: puts stop waiting for room
        self.closed = False  # nothing more comes in
        self.dropped = 0  # events ``put`` dropped for want of room (DROP_* only)
        self.expired = 0  # events whose ttl passed while unread: skipped by the reader

    async def put(self, event: Event) -> None:
        """The subscription's handler: keep ``event`` for the reader, by the overflow."""
        unread = self.unread
        while len(unread) >= self.capacity and not (self.closed or self.ending):
            if self.drop is OverflowStrategy.DROP_NEWEST:
                self.dropped += 1
                return
            if self.drop is OverflowStrategy.DROP_OLDEST:
                unread.popleft()
                self.dropped += 1
                break
            self.room.clear()
            await self.room.wait()
        if self.closed:
            self.dropped += 1  # closed while it waited for room: lost, and said so
            return
        unread.append(event)
        self.readable.set()

    def end(self) -> None:
        """The bus is closing: deliver what was published without waiting for the reader."""
        self.ending = True
        self.room.set()

    def finish(self) -> bool:
        """Take nothing more; return False if it was already finished."""
        if self.closed:
            return False
        self.closed = True
        for event in (self.room, self.readable):
            with contextlib.suppress(RuntimeError):  # set; waking a closed loop's waiter fails
                event.set()
        return True


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    """Return whether ``loop`` is the one running in this thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _abandoned(
    loop: asyncio.AbstractEventLoop,
    inbox: Inbox,
    subscription: Subscription,
    on_close: Callable[[Inbox], None] | None,
) -> None:
    """A stream was collected unclosed: unsubscribe it on its loop (any thread, any time).

    Run by the collector wherever it runs, maybe under a lock of the bus:
    the work is handed to the stream's loop.  A closed loop runs nothing
    more of the stream, and the bus's close ends its subscription.
    """
    if inbox.closed:
        return
    try:
        loop.call_soon_threadsafe(_drop, inbox, subscription, on_close)
    except RuntimeError:  # its loop is closed: on a thread of its own, else each event
        # it matched would go to a handler that cannot run (a dead letter)
        threading.Thread(target=_drop, args=(inbox, subscription, on_close), daemon=True).start()


def _drop(
    inbox: Inbox, subscription: Subscription, on_close: Callable[[Inbox], None] | None
) -> None:
    if inbox.finish() and on_close is not None:
        on_close(inbox)
    subscription.unsubscribe()


class EventStream(AsyncIterator[Event]):
    """An async iterator over a live subscription; ``aclose`` unsubscribes.

    The stream keeps up to ``capacity`` unread events for its reader.  With
    ``DROP_OLDEST`` or ``DROP_NEWEST`` (and no ``from_sequence``) a full
    stream drops at once, the oldest unread or the incoming event, so a
    reader that stops reading never holds up the bus (``flush``, ``close``).
    With ``BLOCK`` or ``REJECT``, or a ``from_sequence`` history, the reader
    sets the pace: events past the unread ones wait in the subscription's
    mailbox, where its ``overflow`` applies as for any subscription, until
    the reader takes some or the stream ends.  The bus's close ends the
    stream however it is closed (``AsyncEventBus.aclose``, ``sync.close()``).
    A stream dropped unclosed (``break`` out of ``async for``, the last
    reference gone) is unsubscribed on its loop once collected.
    """

    def __init__(
        self,
        bus: EventBus,
        pattern: str,
        *,
        filter: FilterLike | None,
        capacity: int | None,
        overflow: OverflowStrategy | str | None,
        from_sequence: int | None,
        on_close: Callable[[Inbox], None] | None = None,
    ) -> None:
        checks.check_stream(filter, capacity, overflow, from_sequence)
        cap = capacity if capacity is not None else bus.config.buffer_size
        strategy = OverflowStrategy(overflow) if overflow is not None else bus.config.overflow
        self._inbox = inbox = Inbox(
            cap,
            strategy
            if from_sequence is None
            and strategy in {OverflowStrategy.DROP_OLDEST, OverflowStrategy.DROP_NEWEST}
            else None,
        )
        self._on_close = on_close
        self._loop: asyncio.AbstractEventLoop | None = None  # the reader's, once known
        self.subscription = bus.subscribe(
            pattern,
            inbox.put,
            filter=filter,
            capacity=cap,
            overflow=overflow,
            from_sequence=from_sequence,
        )
        with contextlib.suppress(RuntimeError):  # no running loop: no async handler either
            loop = self._loop = asyncio.get_running_loop()
            finalizer = weakref.finalize(self, _abandoned, loop, inbox, self.subscription, on_close)
            finalizer.atexit = False  # at exit the bus's close (or nothing) ends it

    @property
    def inbox(self) -> Inbox:
        """What the subscription feeds (the bus's close ends it through this)."""
        return self._inbox

    @property
    def dropped(self) -> int:
        """Events this stream lost: those it dropped, and those its mailbox dropped.

        A full stream drops by its overflow; while its loop is too busy to
        take events, its subscription's mailbox (of the same capacity) may
        drop some first (those count in the subscription's statistics too).
        """
        return self._inbox.dropped + self.subscription.statistics().dropped

    @property
    def expired(self) -> int:
        """Events whose ``ttl`` passed while they waited unread here: never yielded.

        (Those that expired before the stream took them count in its
        subscription's ``expired``, as for any subscription.)
        """
        return self._inbox.expired

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        inbox = self._inbox
        unread = inbox.unread
        while True:
            while not unread:
                if inbox.closed:
                    raise StopAsyncIteration
                inbox.readable.clear()
                await inbox.readable.wait()
            event = unread.popleft()
            inbox.room.set()
            if event.ttl is not None and expired_unix(event, time.time()):
                inbox.expired += 1  # expired unread: an expired event is not delivered
                continue
            return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends once what is queued has been read."""
        self._finish()
        self.subscription.unsubscribe()

    def _finish(self) -> None:
        """Take nothing more; the reader gets what is unread, then the iteration stops.

        On the stream's own loop: its events wake only a reader of that loop
        (an ``aclose`` from another loop or thread hands the finish over).
        """
        loop = self._loop
        if loop is not None and not _running(loop):
            try:
                loop.call_soon_threadsafe(self._finish_here)
                return
            except RuntimeError:  # its loop is closed: a reader waiting there never wakes
                pass
        self._finish_here()

    def _finish_here(self) -> None:
        if self._inbox.finish() and self._on_close is not None:
            self._on_close(self._inbox)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
