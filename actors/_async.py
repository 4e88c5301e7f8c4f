"""``AsyncEventBus``: the same bus, with coroutines that never block the loop.

Every coroutine shares the core of ``EventBus``: it sends the same message to
the router and awaits the ``BusFuture`` it gets back through ``wrap_future``
(a done-callback that hands the result to the loop with
``call_soon_threadsafe``).  pykka's own ``Future.__await__`` blocks the loop,
so it is never used.  Only work that blocks a thread runs in the loop's
default executor: a publish that may wait for room (a ``BLOCK`` subscription
exists, or the router's mailbox is full), stopping the actors in ``aclose``,
and the remote part of ``get_correlated`` on a node.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from actors._bus import EventBus
from actors._core.messages import CorrelatedEvents
from actors._core.requests import reply_result, timeout_error
from actors._core.subscriber import DeadLetter, Handler, Subscription, current_event
from actors._core.wiring import merge_events
from actors._errors import BusClosedError, FutureTimeoutError
from actors._model import checks
from actors._model.config import EventConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import FilterLike
from actors._model.metrics import BusMetrics
from actors._model.query import EventQuery
from actors._model.trace import Trace
from actors._runtime.future import BusFuture, wrap_future

__all__ = ["AsyncEventBus", "EventStream", "wrap_future"]

T = TypeVar("T")


async def _await(future: BusFuture[T], timeout: float | None) -> T:
    """Await ``future`` on the running loop; ``FutureTimeoutError`` after ``timeout``."""
    try:
        return await asyncio.wait_for(wrap_future(future), timeout)
    except TimeoutError:
        raise FutureTimeoutError(f"{timeout} seconds") from None


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

        If the publish may wait (``BLOCK`` subscriptions exist, or the
        router's mailbox is full), it waits in an executor thread, never on
        the loop.
        """
        bus = self.sync
        if bus.closed:
            raise BusClosedError("the bus is closed")
        if bus.core.publisher.may_wait():
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
        timeout: float | None = None,
        retry_backoff: float | None = None,
        retries: int | None = None,
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
            timeout=timeout,
            retry_backoff=retry_backoff,
            retries=retries,
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

    async def get_correlated(
        self, correlation_id: uuid.UUID, *, timeout: float | None = 30.0
    ) -> list[Event]:
        """Return the events of ``correlation_id`` in sequence order (see ``EventBus``)."""
        checks.check_correlated(correlation_id, timeout)
        bus = self.sync
        if bus.closed:
            raise BusClosedError("the bus is closed")
        if bus.node is not None:  # the peers are asked by blocking calls
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, lambda: bus.get_correlated(correlation_id, timeout=timeout)
            )
        core = bus.core
        answer: CorrelatedEvents = await _await(core.correlated(correlation_id), timeout)
        events = answer.events
        if answer.complete or core.journal is None:
            return list(events)
        stored = await _await(core.read_journal(EventQuery(correlation_id=correlation_id)), timeout)
        return merge_events(stored, events)

    async def trace(self, correlation_id: uuid.UUID) -> Trace:
        """Return the causal trace of ``correlation_id``."""
        checks.check_correlated(correlation_id)
        return Trace(correlation_id, await self.get_correlated(correlation_id))

    async def query(self, query: EventQuery, *, timeout: float | None = 30.0) -> list[Event]:
        """Query the journal (see ``PersistentEventBus.query``)."""
        checks.check_query(query, None, timeout)
        if self.sync.closed:
            raise BusClosedError("the bus is closed")
        return await _await(self.sync.core.read_journal(query), timeout)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything published so far is handled and recorded."""
        checks.check_timeout("timeout", timeout)
        if self.sync.closed:
            raise BusClosedError("the bus is closed")
        await _await(self.sync.core.start_flush(), timeout)

    async def aclose(self, timeout: float | None = None) -> None:
        """Drain, flush and stop the bus (the async twin of ``close``).

        The flush is awaited on the loop; stopping the actors (which joins
        their threads) runs in the executor, where ``close`` finds nothing
        left to flush.
        """
        checks.check_timeout("timeout", timeout)
        bus = self.sync
        if current_event.get() is not None:
            bus.close(timeout)  # inside a handler: stops without waiting
            return
        if not bus.closed:
            try:
                await self.flush(timeout)
            except FutureTimeoutError:
                pass  # close() warns and stops anyway
            except BusClosedError:
                return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, bus.close, timeout)

    # -- requests and replies (see EventBus.request; the core: _core/requests.py) ---------

    async def respond(
        self, pattern: str, fn: Callable[[Event], Any], **options: Any
    ) -> Subscription:
        """Subscribe a responder (see ``EventBus.respond``); ``async def`` runs on this loop."""
        return self.sync.respond(pattern, fn, **options)

    async def request(
        self,
        event_type: str,
        data: Any = None,
        *,
        timeout: float | None = 5.0,
        node: str | None = None,
        **fields: Any,
    ) -> Event:
        """Publish a request and await its first reply (see ``EventBus.request``).

        Waits on the loop (no thread per request); raises ``RequestTimeoutError``
        and ``RemoteHandlerError`` as the synchronous form does.
        """
        event, replies = await self._ask(event_type, data, fields, 1, timeout, node)
        if not replies:
            raise timeout_error(event, timeout)
        return reply_result(replies[0])

    async def request_all(
        self,
        event_type: str,
        data: Any = None,
        *,
        timeout: float = 5.0,
        max_replies: int | None = None,
        node: str | None = None,
        **fields: Any,
    ) -> list[Event]:
        """Publish a request; gather the replies (see ``EventBus.request_all``)."""
        return (await self._ask(event_type, data, fields, max_replies, timeout, node))[1]

    async def _ask(  # noqa: PLR0917 - the two public forms' arguments
        self,
        event_type: str,
        data: Any,
        fields: dict[str, Any],
        max_replies: int | None,
        timeout: float | None,
        node: str | None,
    ) -> tuple[Event, list[Event]]:
        bus = self.sync
        loop = asyncio.get_running_loop()
        started = loop.time()
        client = bus.request_client
        requester = client.requester
        event, new_route = client.prepare(event_type, data, fields)
        if new_route:  # a node's first request of this type: blocks once, off the loop
            await loop.run_in_executor(
                None, client.sync_reply_route, event.event_type, timeout, node
            )
        publish = client.publisher(node)
        if node is not None:  # publish_remote blocks until the node answered
            pending = await loop.run_in_executor(None, requester.send, event, publish, max_replies)
        else:
            pending = requester.send(event, publish, max_replies)
        table = requester.table
        try:
            async with asyncio.timeout_at(None if timeout is None else started + timeout):
                return event, await wrap_future(pending.future)
        except TimeoutError:
            late = table.close(pending.request_id)
            if late is None and pending.future.done():
                return event, pending.future.get()
            return event, late or []
        finally:
            table.close(pending.request_id)

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
