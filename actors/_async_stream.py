"""``EventStream``: an async iterator over a live subscription (``AsyncEventBus.stream``)."""

from __future__ import annotations

import asyncio
import time
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

__all__ = ["EventStream"]


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
        on_close: Callable[[EventStream], None] | None = None,
    ) -> None:
        checks.check_stream(filter, capacity, overflow, from_sequence)
        cap = capacity if capacity is not None else bus.config.buffer_size
        strategy = OverflowStrategy(overflow) if overflow is not None else bus.config.overflow
        self._capacity = cap
        self._unread: deque[Event] = deque()
        # None: the reader paces the subscription (its put waits for room).
        self._drop: OverflowStrategy | None = (
            strategy
            if from_sequence is None
            and strategy in {OverflowStrategy.DROP_OLDEST, OverflowStrategy.DROP_NEWEST}
            else None
        )
        self._readable = asyncio.Event()  # set while a reader need not wait
        self._room = asyncio.Event()  # set while a put need not wait
        self._ending = False  # the bus is closing: puts stop waiting for room
        self._closed = False  # nothing more comes in
        self._on_close = on_close
        self._dropped = 0  # events ``_put`` dropped for want of room (DROP_* only)
        self._expired = 0  # events whose ttl passed while unread: skipped by ``__anext__``
        self.subscription = bus.subscribe(
            pattern,
            self._put,
            filter=filter,
            capacity=cap,
            overflow=overflow,
            from_sequence=from_sequence,
        )

    async def _put(self, event: Event) -> None:
        unread = self._unread
        while len(unread) >= self._capacity and not (self._closed or self._ending):
            if self._drop is OverflowStrategy.DROP_NEWEST:
                self._dropped += 1
                return
            if self._drop is OverflowStrategy.DROP_OLDEST:
                unread.popleft()
                self._dropped += 1
                break
            self._room.clear()
            await self._room.wait()
        if self._closed:
            self._dropped += 1  # closed while it waited for room: lost, and said so
            return
        unread.append(event)
        self._readable.set()

    @property
    def dropped(self) -> int:
        """Events this stream lost: those it dropped, and those its mailbox dropped.

        A full stream drops by its overflow; while its loop is too busy to
        take events, its subscription's mailbox (of the same capacity) may
        drop some first (those count in the subscription's statistics too).
        """
        return self._dropped + self.subscription.statistics().dropped

    @property
    def expired(self) -> int:
        """Events whose ``ttl`` passed while they waited unread here: never yielded.

        (Those that expired before the stream took them count in its
        subscription's ``expired``, as for any subscription.)
        """
        return self._expired

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        unread = self._unread
        while True:
            while not unread:
                if self._closed:
                    raise StopAsyncIteration
                self._readable.clear()
                await self._readable.wait()
            event = unread.popleft()
            self._room.set()
            if event.ttl is not None and expired_unix(event, time.time()):
                self._expired += 1  # expired unread: an expired event is not delivered
                continue
            return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends once what is queued has been read."""
        self._finish()
        self.subscription.unsubscribe()

    def _end(self) -> None:
        """The bus is closing: deliver what was published without waiting for the reader."""
        self._ending = True
        self._room.set()

    def _finish(self) -> None:
        """Take nothing more; the reader gets what is unread, then the iteration stops."""
        if self._closed:
            return
        self._closed = True
        self._room.set()
        self._readable.set()
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
