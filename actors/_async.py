"""``AsyncEventBus``: the same bus, with coroutines that never block the loop.

Every coroutine shares the core of ``EventBus``: it sends the same message to
the router and turns the ``BusFuture`` it gets back into an asyncio future
(through ``add_done_callback`` and ``call_soon_threadsafe``).  pykka's own
``Future.__await__`` blocks the loop, so it is never used.  Work that can
block a thread (a ``BLOCK`` publish waiting for room, ``close``) runs in the
loop's default executor.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, TypeVar

from actors._bus import EventBus
from actors._core.subscriber import DeadLetter, Handler, Subscription
from actors._errors import BusClosedError
from actors._model import checks
from actors._model.config import EventConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import FilterLike
from actors._model.metrics import BusMetrics
from actors._model.query import EventQuery
from actors._model.trace import Trace
from actors._runtime.future import BusFuture

__all__ = ["AsyncEventBus", "EventStream"]

T = TypeVar("T")


def wrap_future(future: BusFuture[T]) -> asyncio.Future[T]:
    """Return an asyncio future of the running loop that mirrors ``future``."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def transfer(done: BusFuture[T]) -> None:
        if result.done():
            return
        exc = done.exception()
        if exc is not None:
            result.set_exception(exc)
        else:
            result.set_result(done.get())

    def on_done(done: BusFuture[T]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(transfer, done)

    future.add_done_callback(on_done)
    return result


class AsyncEventBus:
    """The asyncio face of ``EventBus``: ``await bus.publish(...)`` and friends.

    Use ``async with AsyncEventBus() as bus:``.  ``async def`` handlers run on
    the loop they were subscribed from.  ``sync`` gives the underlying
    ``EventBus`` (for code that needs both).
    """

    def __init__(self, config: EventConfig | None = None, *, bus: EventBus | None = None) -> None:
        checks.check_async_bus(config, bus, EventBus)
        self.sync = bus if bus is not None else EventBus(config)

    @property
    def config(self) -> EventConfig:
        """Return the bus's settings."""
        return self.sync.config

    async def publish(self, event_or_type: Event | str, data: Any = None, **fields: Any) -> Event:
        """Publish and return the sequenced event (see ``EventBus.publish``).

        If the router's mailbox is full (a ``BLOCK`` subscription is behind),
        waits for room in an executor thread, never on the loop.
        """
        bus = self.sync
        if bus._closed:
            raise BusClosedError("the bus is closed")
        mailbox = bus._router_mailbox
        if mailbox.capacity is not None and len(mailbox) >= mailbox.capacity:
            loop = asyncio.get_running_loop()
            future = await loop.run_in_executor(
                None, lambda: bus.publish(event_or_type, data, **fields)
            )
        else:
            future = bus.publish(event_or_type, data, **fields)
        return await wrap_future(future)

    async def publish_many(self, events: Iterable[Event]) -> list[Event]:
        """Publish a batch; return the sequenced events (see ``EventBus.publish_many``)."""
        futures = self.sync.publish_many(events)
        return list(await asyncio.gather(*(wrap_future(f) for f in futures)))

    async def publish_correlated(
        self, event_type: str, data: Any, correlation_id: uuid.UUID, **fields: Any
    ) -> Event:
        """Publish as part of the workflow ``correlation_id``."""
        checks.check_correlated(correlation_id)
        return await self.publish(event_type, data, correlation_id=correlation_id, **fields)

    async def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        filter: FilterLike | None = None,
        capacity: int | None = None,
        overflow: OverflowStrategy | str | None = None,
        from_sequence: int | None = None,
        durable: str | None = None,
        dedicated_thread: bool = False,
    ) -> Subscription:
        """Subscribe (see ``EventBus.subscribe``); ``async def`` handlers run on this loop."""
        return self.sync.subscribe(
            pattern,
            handler,
            filter=filter,
            capacity=capacity,
            overflow=overflow,
            from_sequence=from_sequence,
            durable=durable,
            dedicated_thread=dedicated_thread,
        )

    def stream(
        self,
        pattern: str,
        *,
        filter: FilterLike | None = None,
        capacity: int | None = None,
        overflow: OverflowStrategy | str | None = None,
        from_sequence: int | None = None,
    ) -> EventStream:
        """Subscribe now and return an async iterator of matching events.

        ``async for event in bus.stream("user.*")``: the subscription exists
        when ``stream`` returns, so nothing published afterwards is missed.
        Closing the iterator (``aclose`` or leaving ``async with``)
        unsubscribes.  Must be called with a running event loop.
        """
        checks.check_stream(filter, capacity, overflow, from_sequence)
        return EventStream(
            self.sync,
            pattern,
            filter=filter,
            capacity=capacity,
            overflow=overflow,
            from_sequence=from_sequence,
        )

    async def get_correlated(self, correlation_id: uuid.UUID) -> list[Event]:
        """Return the events of ``correlation_id`` in sequence order."""
        checks.check_correlated(correlation_id)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.sync.get_correlated, correlation_id)

    async def trace(self, correlation_id: uuid.UUID) -> Trace:
        """Return the causal trace of ``correlation_id``."""
        checks.check_correlated(correlation_id)
        return Trace(correlation_id, await self.get_correlated(correlation_id))

    async def query(self, query: EventQuery) -> list[Event]:
        """Query the journal (see ``PersistentEventBus.query``)."""
        checks.check_query(query)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.sync.query, query)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything published so far is handled and recorded."""
        checks.check_timeout("timeout", timeout)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.sync.flush, timeout)

    async def aclose(self, timeout: float | None = None) -> None:
        """Drain, flush and stop the bus (the async twin of ``close``)."""
        checks.check_timeout("timeout", timeout)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.sync.close, timeout)

    def metrics(self) -> BusMetrics:
        """Return a metrics snapshot (cheap, never blocks)."""
        return self.sync.metrics()

    def dead_letters(self) -> list[DeadLetter]:
        """Return the dead letters (from the journal where persistent: may read it)."""
        return self.sync.dead_letters()

    async def __aenter__(self) -> AsyncEventBus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class EventStream(AsyncIterator[Event]):
    """An async iterator over a live subscription; ``aclose`` unsubscribes."""

    def __init__(
        self,
        bus: EventBus,
        pattern: str,
        *,
        filter: FilterLike | None,
        capacity: int | None,
        overflow: OverflowStrategy | str | None,
        from_sequence: int | None,
    ) -> None:
        checks.check_stream(filter, capacity, overflow, from_sequence)
        cap = capacity if capacity is not None else bus.config.buffer_size
        # The queue is bounded by one mailbox's worth; beyond it the handler
        # awaits, and the subscription's own overflow strategy takes over.
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(cap)
        self._closed = False
        self.subscription = bus.subscribe(
            pattern,
            self._put,
            filter=filter,
            capacity=cap,
            overflow=overflow,
            from_sequence=from_sequence,
        )

    async def _put(self, event: Event) -> None:
        await self._queue.put(event)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:  # aclose() woke a reader waiting on an empty queue
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends once what is queued has been read."""
        self._closed = True
        self.subscription.unsubscribe()
        if self._queue.empty():
            self._queue.put_nowait(None)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
