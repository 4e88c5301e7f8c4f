"""``AsyncEventBus``: the same bus, with coroutines that never block the loop.

Every coroutine shares the core of ``EventBus``: it sends the same message to
the router and awaits the ``BusFuture`` it gets back through ``wrap_future``
(a done-callback that hands the result to the loop with
``call_soon_threadsafe``).  pykka's own ``Future.__await__`` blocks the loop,
so it is never used.  Only work that blocks a thread runs in the loop's
default executor, always in a copy of the caller's context (so a publish
made from a handler keeps its causation): a publish, ``publish_many`` or a
request's publish that may wait for room (a ``BLOCK`` subscription exists,
or the router's mailbox is full), a request published through ``node``,
and the remote part of ``get_correlated`` on a node.  Stopping the actors
in ``aclose`` runs on a thread of its own, never behind publishes waiting
in the executor (``actors._async_offloop``).

However the bus closes (``aclose``, or ``sync.close()`` from synchronous
code), its open streams end and the coroutines still awaiting it raise
``BusClosedError``: the router tells their ``Holds`` (``_async_holds``) once it has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from actors._async_holds import fail_closed, holds_of
from actors._async_offloop import (
    in_background,
    off_loop,
    on_own_thread,
    publish_off_loop,
    withdrawable,
)
from actors._async_stream import EventStream, Inbox
from actors._bus import EventBus
from actors._core.background import subscribing_loop
from actors._core.crossing import waiting_for
from actors._core.handling import running_here, wake_future
from actors._core.messages import CorrelatedEvents
from actors._core.replay import CLOSED, replay_async
from actors._core.requests import reply_result, timeout_error
from actors._core.router_reads import from_loop
from actors._core.subscriber import DeadLetter, Handler, Subscription
from actors._errors import BusClosedError, FutureTimeoutError, RequestTimeoutError
from actors._model import checks
from actors._model.config import EventConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import FilterLike
from actors._model.metrics import BusMetrics, SubscriptionStatistics
from actors._model.query import EventQuery
from actors._model.trace import Trace, first_copies, merge_events
from actors._runtime.future import BusFuture, wrap_future

if TYPE_CHECKING:
    from actors._metrics_http import MetricsServer

__all__ = ["AsyncEventBus", "EventStream", "wrap_future"]

T = TypeVar("T")
Publish = Callable[[Event], BusFuture[Event]]


class AsyncEventBus:
    """The asyncio face of ``EventBus``: ``await bus.publish(...)`` and friends.

    Use ``async with AsyncEventBus() as bus:``.  ``async def`` handlers run on
    the loop they were subscribed from.  ``sync`` gives the underlying
    ``EventBus`` (for code that needs both); closing it ends this bus's
    streams and waits as ``aclose`` does (see ``aclose``).
    """

    def __init__(self, config: EventConfig | None = None, *, bus: EventBus | None = None) -> None:
        checks.check_async_bus(config, bus, EventBus)
        self.sync = bus if bus is not None else EventBus(config)
        # Open streams and awaited futures, ended once the router has stopped.
        self._holds = holds_of(self.sync.core.router)
        self._closers = 0  # acloses under way (from any loop)
        self._closers_lock = threading.Lock()

    @property
    def config(self) -> EventConfig:
        """Return the bus's settings."""
        return self.sync.config

    async def publish(self, event_or_type: Event | str, data: Any = None, **fields: Any) -> Event:
        """Publish and return the sequenced event (see ``EventBus.publish``).

        If the publish may wait (``BLOCK`` subscriptions exist, or the
        router's mailbox is full), it waits in an executor thread, never on
        the loop.  Cancelled while it waits for room in a full ``BLOCK``
        subscription (or for a peer's credit), the publish is withdrawn: not
        published, not counted as rejected.  Once admitted it is published
        even if the await is cancelled (as a ``put`` on an asyncio queue).
        """
        bus = self.sync
        if bus.closed:
            raise BusClosedError("the bus is closed")
        if bus.core.publisher.may_wait():
            future = await withdrawable(
                functools.partial(bus.publish, event_or_type, data, **fields)
            )
        else:
            future = bus.publish(event_or_type, data, **fields)
        return await wrap_future(future)

    async def publish_many(self, events: Iterable[Event]) -> list[Event]:
        """Publish a batch; return the sequenced events (see ``EventBus.publish_many``).

        Waits for room as ``publish`` does: in an executor thread, never on
        the loop.
        """
        batch = checks.check_events(events)
        bus = self.sync
        if bus.closed:
            raise BusClosedError("the bus is closed")
        if bus.core.publisher.may_wait():
            futures = await withdrawable(bus.publish_many, batch)
        else:
            futures = bus.publish_many(batch)
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
        """Subscribe (see ``EventBus.subscribe``); ``async def`` handlers run on this loop.

        A ``durable`` subscription waits for the journal to load its
        checkpoint: that wait runs off the loop.
        """
        subscribe = functools.partial(
            self.sync.subscribe,
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
        if durable is None:
            return subscribe()
        # Cancelled while it runs off the loop, the subscription it makes
        # must not live on unseen (a second one under the name would then
        # get every event twice): whoever comes second unsubscribes it.
        lock = threading.Lock()
        made: list[Subscription] = []
        abandoned = False

        def subscribe_unless_abandoned() -> Subscription:
            sub = subscribe()
            with lock:
                if not abandoned:
                    made.append(sub)
                    return sub
            sub.unsubscribe()
            return sub

        token = subscribing_loop.set(asyncio.get_running_loop())
        try:  # off_loop runs it in a copy of this context, which holds the loop
            return await off_loop(subscribe_unless_abandoned)
        except asyncio.CancelledError:
            with lock:
                abandoned = True
            for sub in made:
                sub.unsubscribe()
            raise
        finally:
            subscribing_loop.reset(token)

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
        unsubscribes; closing the bus (``aclose``, or ``sync.close()`` from
        any thread) ends it too.  ``capacity`` unread events are kept; see
        ``EventStream`` for what ``overflow`` does beyond them.  Raises
        ``RuntimeError`` without a running event loop, ``BusClosedError``
        after close.
        """
        checks.check_stream(filter, capacity, overflow, from_sequence)
        asyncio.get_running_loop()  # the stream's events are handed over on it
        stream = EventStream(
            self.sync,
            pattern,
            filter=filter,
            capacity=capacity,
            overflow=overflow,
            from_sequence=from_sequence,
            on_close=self._holds.discard,
        )
        # The inbox, not the stream, is held: a stream its reader dropped is collected.
        self._holds.add(stream.inbox, stream.inbox.finish)
        if self._holds.closing:
            # After ``aclose`` told the open streams to stop waiting for their
            # readers (below): this one must not hold up the close either.
            stream.inbox.end()
        return stream

    async def get_correlated(
        self, correlation_id: uuid.UUID, *, timeout: float | None = 30.0
    ) -> list[Event]:
        """Return the events of ``correlation_id`` in sequence order (see ``EventBus``)."""
        checks.check_correlated(correlation_id, timeout)
        bus = self.sync
        if bus.closed:
            raise BusClosedError("the bus is closed")
        if bus.node is not None:  # the peers are asked by blocking calls
            return await off_loop(bus.get_correlated, correlation_id, timeout=timeout)
        core = bus.core
        answer: CorrelatedEvents = await self._await(core.correlated(correlation_id), timeout)
        events = answer.events
        if answer.complete or core.journal is None:
            return first_copies(events)
        query = EventQuery(correlation_id=correlation_id)
        stored = await self._await(core.read_journal(query), timeout)
        return merge_events(stored, events)

    async def trace(self, correlation_id: uuid.UUID, *, timeout: float | None = 30.0) -> Trace:
        """Return the causal trace of ``correlation_id`` (see ``get_correlated``)."""
        checks.check_correlated(correlation_id, timeout)
        return Trace(correlation_id, await self.get_correlated(correlation_id, timeout=timeout))

    async def query(
        self, query: EventQuery, *, node: str | None = None, timeout: float | None = 30.0
    ) -> list[Event]:
        """Query the journal, or the connected node ``node``'s (see ``EventBus.query``)."""
        checks.check_query(query, node, timeout)
        if self.sync.closed:
            raise BusClosedError("the bus is closed")
        if node is not None and node != self.sync.name:  # the bridge's call waits: off the loop
            return await off_loop(self.sync.query, query, node=node, timeout=timeout)
        return await self._await(self.sync.core.read_journal(query), timeout)

    async def replay(
        self,
        query: EventQuery,
        handler: Callable[[Event], Any],
        *,
        speed: float | None = None,
        page_size: int = 1000,
    ) -> int:
        """Re-deliver stored events to ``handler`` in order, on this loop (see ``EventBus.replay``).

        Pages are read without blocking the loop and the spacing of ``speed``
        is waited on the loop; an ``async def`` handler is awaited, a plain
        one called here.  ``BusClosedError`` once the bus closes (as
        ``EventBus.replay``; a wait for the spacing ends when the bus has
        stopped).  Returns the number of events replayed.
        """
        checks.check_replay(query, handler, speed, page_size)
        closing = self.sync._closing  # noqa: SLF001 - the facade's own bus
        return await replay_async(
            self.query, query, handler, speed, page_size, closing=closing, pause=self._pause
        )

    async def _pause(self, delay: float) -> None:
        """``asyncio.sleep(delay)``, or ``BusClosedError`` once the bus stops or closes.

        Its stop ends the wait at once; its close is looked at every
        ``_CLOSED_POLL`` seconds (a close that gave up on a held router
        never stops it).
        """
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay, wake_future, waiting)
        self._holds.add(waiting, functools.partial(fail_closed, waiting))
        closing = self.sync._closing  # noqa: SLF001 - the facade's own bus
        try:
            while not waiting.done():
                if closing.is_set():
                    raise BusClosedError(CLOSED)
                await asyncio.wait({waiting}, timeout=_CLOSED_POLL)
            waiting.result()  # the stop's BusClosedError, if it ended the wait
        finally:
            timer.cancel()
            self._holds.discard(waiting)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything published so far is handled and recorded.

        Raises ``FutureTimeoutError`` after ``timeout``, ``BusClosedError`` if
        the bus is closed, or closes (``sync.close()`` gave up) before the
        flush is done.
        """
        checks.check_timeout("timeout", timeout)
        if self.sync.closed:
            raise BusClosedError("the bus is closed")
        with waiting_for(self.sync.core.router, flush=True) as wait:  # from another bus's handler
            await self._await(self.sync.core.start_flush(wait.watching()), timeout)

    async def _await(self, future: BusFuture[T], timeout: float | None) -> T:
        """Await ``future`` on the loop: ``BusClosedError`` if the bus stops before it is done.

        ``FutureTimeoutError`` after ``timeout``.
        """
        waiting = wrap_future(future)
        self._holds.add(waiting, functools.partial(fail_closed, waiting))
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            raise FutureTimeoutError(f"{timeout} seconds") from None
        finally:
            self._holds.discard(waiting)

    async def aclose(self, timeout: float | None = None) -> tuple[SubscriptionStatistics, ...]:
        """Drain, flush and stop the bus (the async twin of ``close``); end every stream.

        Returns what ``close`` returns: the statistics of the subscriptions it
        gave up on (empty when everything was handled, or another close did).

        The flush is awaited on the loop; stopping the actors (which joins
        their threads) runs on a thread of its own (not the executor, which
        publishes waiting for room may fill), where ``close`` finds nothing
        left to flush.  Each open stream first stops waiting for its reader
        (so the flush never waits on one), receives what was published before
        ``aclose``, and then ends: its iterator stops once what it holds has
        been read.  ``sync.close()`` ends the streams the same way, except
        that its flush waits for a reader that sets the pace (see
        ``EventStream``); either way, a coroutine still awaiting a flush, a
        query or a request of the bus raises ``BusClosedError``.

        Cancelled (a ``wait_for`` around it, or ``asyncio.run`` shutting
        down), ``aclose`` still closes the bus, as trio's ``aclose`` does,
        but without waiting any more: as ``close(timeout)`` past its
        deadline, it stops at once (on a thread the interpreter's exit
        waits for), and ``CancelledError`` goes on to the caller; unless
        another ``aclose`` is under way, which then closes the bus on its
        own deadline.  A bus is never left half-closed.  Cancelled once its
        own close began (the flush it awaits on the loop ended), that close
        goes on to its deadline: without a ``timeout``, behind a handler
        that never returns, the interpreter's exit waits for it for ever.
        """
        checks.check_timeout("timeout", timeout)
        with self._closers_lock:
            self._closers += 1
        try:
            return await self._aclose(timeout)
        except asyncio.CancelledError:
            with self._closers_lock:
                alone = self._closers == 1
            # Another aclose still under way drains and stops the bus on its
            # own deadline: cutting it short would give up what it waits for.
            if alone and not self.sync.closed:
                in_background(self.sync.close, 0.0)
            raise
        finally:
            with self._closers_lock:
                self._closers -= 1

    async def _aclose(self, timeout: float | None) -> tuple[SubscriptionStatistics, ...]:
        here = asyncio.get_running_loop()
        self._holds.closing = True  # before the streams are listed (``stream``)
        streams = self._holds.held(Inbox)
        for loop, inbox in streams:
            if loop is here:
                inbox.end()
            else:
                with contextlib.suppress(RuntimeError):  # its loop is closed
                    loop.call_soon_threadsafe(inbox.end)
        try:
            return await self._close(self.sync, timeout)
        finally:
            # Those of other loops end there once the router has stopped.
            for loop, inbox in streams:
                if loop is here:
                    inbox.finish()

    async def _close(
        self, bus: EventBus, timeout: float | None
    ) -> tuple[SubscriptionStatistics, ...]:
        # A handler of another bus waits, unless this bus's handlers wait for it.
        with waiting_for(bus.core.router) as wait:
            if wait.circle or running_here(bus.core.router) is not None:
                return bus.close(timeout)  # as inside a handler of the bus: stops without waiting
            return await self._close_waiting(bus, timeout)

    async def _close_waiting(
        self, bus: EventBus, timeout: float | None
    ) -> tuple[SubscriptionStatistics, ...]:
        started = time.monotonic()
        if not bus.closed:
            try:
                await self.flush(timeout)
            except FutureTimeoutError:
                pass  # close() warns and stops anyway
            except BusClosedError:
                pass  # another close began meanwhile: wait for it below
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        if bus.closed:
            # Another close is under way (or done): this one returns once the
            # bus has stopped, so every stream got what was published first.
            # One interrupted (a Ctrl-C in ``close``) is seen through here; in
            # a forked child nothing of the bus runs, so nothing is waited for.
            given_up = await on_own_thread(bus.close, left)
            if bus._forked_from is None:  # noqa: SLF001 - the bus's own state
                left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
                await on_own_thread(self._holds.wait_stopped, left)
            return given_up
        # One deadline for the flush and the close (its warning says ``timeout``).
        return await on_own_thread(bus._close_asked, left, timeout)  # noqa: SLF001

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
        and ``RemoteHandlerError`` as the synchronous form does.  ``timeout``
        covers the whole call: a publish that must wait for room waits in an
        executor thread, and ``RequestTimeoutError`` is raised if no reply came
        within ``timeout``, however long the room took.
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
        try:
            asked = await self._ask(
                event_type, data, fields, max_replies, timeout, node, gathers=True
            )
        except RequestTimeoutError:
            return []  # its time ran out waiting for room: no reply (it was not published)
        return asked[1]

    async def _ask(  # noqa: PLR0917 - the two public forms' arguments
        self,
        event_type: str,
        data: Any,
        fields: dict[str, Any],
        max_replies: int | None,
        timeout: float | None,
        node: str | None,
        *,
        gathers: bool = False,
    ) -> tuple[Event, list[Event]]:
        checks.check_request(timeout, max_replies, node)
        bus = self.sync
        if bus.closed:
            raise BusClosedError("the bus is closed")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        started = time.monotonic()
        client = bus.request_client
        requester = client.requester
        event, new_route = client.prepare(event_type, data, fields, node)
        if new_route:  # a node's first request of this type: blocks once, off the loop
            await off_loop(client.sync_reply_route, event.event_type, timeout, node)
        # Through a node, bounded by the deadline (else it holds an executor thread 30 s).
        publish = client.publisher(node, None if timeout is None else started + timeout, timeout)
        # A node's publish_remote blocks until the node answered; a local
        # publish may wait for room.  Either then runs in an executor thread,
        # after the entry is in the table, and its outcome reaches the entry's
        # future: the deadline below bounds the whole call.
        withdrawn = threading.Event()  # set once this call ends, however it ends
        if node is not None or bus.core.publisher.may_wait():
            publish = publish_off_loop(publish, withdrawn)
        pending = requester.send(
            event, publish, max_replies, gathers=gathers, timeout=timeout, inside=client.inside()
        )
        table = requester.table
        try:
            async with asyncio.timeout_at(deadline):
                return event, await wrap_future(pending.future)
        except TimeoutError:
            late = table.close(pending)
            if late is None:  # taken just as the time ran out: its taker completes it now
                return event, await wrap_future(pending.future)
            return event, late
        finally:
            table.close(pending)
            withdrawn.set()  # a publish still waiting for room gives up: no one waits for it

    def metrics(self) -> BusMetrics:
        """Return a metrics snapshot (``EventBus.metrics``), holding the loop at most briefly.

        The router is waited for at most ``LOOP_ASK_TIMEOUT`` (0.25 s); past
        that its last figures are given, stale, as ``EventBus.metrics`` gives
        them past its 10 s (``actors._core.router_reads``).
        """
        with from_loop():
            return self.sync.metrics()

    def dead_letters(
        self, *, limit: int | None = None, after: int | None = None
    ) -> list[DeadLetter]:
        """Return the dead letters (see ``EventBus.dead_letters``: read from the journal
        where persistent, a short read on the calling thread; the router's list, asked
        as ``metrics`` asks it, otherwise)."""
        with from_loop():
            return self.sync.dead_letters(limit=limit, after=after)

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` and ``/healthz`` (see ``EventBus.serve_metrics``; its own thread)."""
        return self.sync.serve_metrics(port, host)

    async def __aenter__(self) -> AsyncEventBus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


_CLOSED_POLL = 0.1
"""Seconds between an async replay's looks at whether its bus closed, while it waits."""
