"""The facade: ``EventBus`` wires the actors together and is what users hold.

::

    publish() ──Publish──▶ RouterActor ──offer──▶ SubscriberActor mailboxes ──▶ handlers
                               │
                               └──Record──▶ CorrelationActor, JournalActor, bridge

Handlers run on the bus's handler ``Dispatcher`` (``EventConfig.threads``
threads, more while handlers block, up to ``max_threads``) unless a
subscription asks for a dedicated thread.  The router and the correlation
actor run on a system dispatcher of their own, the journal and the bridge on
threads of their own: no handler can take their threads.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka
from pykka import ActorRegistry

from actors._core.correlator import CorrelationActor
from actors._core.messages import (
    Barrier,
    Flush,
    Forward,
    GetCorrelated,
    LoadCheckpoint,
    Publish,
    PublishBatch,
    ReadJournal,
    Route,
    SaveCheckpoint,
    Subscribe,
    Unsubscribe,
)
from actors._core.ratelimit import TokenBucket
from actors._core.requests import (
    Pending,
    Requester,
    Responder,
    check_request_type,
    publish_through,
    reply_result,
    timeout_error,
)
from actors._core.router import RouterActor
from actors._core.subscriber import (
    CatchUp,
    DeadLetter,
    Handler,
    SubscriberActor,
    Subscription,
    current_event,
)
from actors._errors import (
    BackpressureError,
    BusClosedError,
    EventBusError,
    FutureTimeoutError,
    InvalidEventError,
    JournalError,
    RateLimitedError,
)
from actors._journal.actor import JournalActor
from actors._journal.deadletters import dead_letter_query, letter_from_event
from actors._journal.factory import open_journal
from actors._journal.records import Storage
from actors._model.config import EventConfig, NodeConfig, OverflowStrategy
from actors._model.event import _FIELD_NAMES, Event
from actors._model.filter import FilterLike, as_predicate
from actors._model.metrics import (
    BusMetrics,
    LatencyWindow,
    SubscriptionStatistics,
    to_prometheus,
)
from actors._model.query import EventQuery
from actors._model.topics import Pattern, is_reserved
from actors._model.trace import Trace
from actors._runtime.dispatcher import Dispatcher
from actors._runtime.future import BusFuture
from actors._runtime.shutdown import Deadline, send_stop, wait_stopped

__all__ = ["EventBus", "PersistentEventBus"]

logger = logging.getLogger("actors.bus")

if TYPE_CHECKING:
    from actors._cluster.bridge import Bridge
    from actors._cluster.node import Node
    from actors._metrics_http import MetricsServer

_sub_ids = itertools.count(1)

# Seconds ``close(timeout)`` may take beyond ``timeout``: the bus's own
# actors (router, correlation, journal, bridge) get this long to stop after
# the handlers' deadline.  They run no user code, so they take milliseconds.
CLOSE_GRACE = 0.5
HandlerWrapper = Callable[[Callable[[Event], Any], str, str], Callable[[Event], Any]]

# Fields a caller may pass to publish() alongside the type and data.
_EVENT_FIELDS = frozenset(_FIELD_NAMES) - {"event_type", "data", "sequence", "origin"}


class EventBus:
    """An in-process event bus of actors.  Use it as a context manager.

    ``publish`` never waits for handlers; it blocks only while the router's
    mailbox is full (a ``BLOCK`` subscription is behind), up to
    ``EventConfig.block_timeout``.  Calls after ``close`` raise
    ``BusClosedError``.
    """

    def __init__(
        self,
        config: EventConfig | None = None,
        *,
        name: str | None = None,
        node: NodeConfig | None = None,
    ) -> None:
        self.config = config or EventConfig()
        if node is not None:
            name = node.name
        self.name = name
        cfg = self.config
        self._closed = False
        self._close_lock = threading.Lock()
        self._latency = LatencyWindow()
        self._bucket = TokenBucket(cfg.rate_limit, cfg.burst) if cfg.rate_limit else None
        self._rate_limited = 0
        self._dead: deque[DeadLetter] = deque(maxlen=cfg.dead_letter_limit)
        self._dead_count = 0
        self._subs: dict[str, SubscriberActor] = {}
        self._subs_lock = threading.Lock()
        self._removed = [0, 0, 0, 0, 0]  # delivered, dropped, errors, expired, dead
        self._loop_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Applied in order to each callable handler at subscribe time, as
        #: ``wrap(handler, subscription_id, pattern) -> handler``; a wrapper
        #: keeps an ``async def`` handler ``async def``.  ``actors.otel`` uses it.
        self.handler_wrappers: list[HandlerWrapper] = []

        # Open the journal before starting anything, so a locked or broken
        # journal fails the constructor with nothing left running.
        opened = open_journal(cfg)
        self._storage: Storage | None = opened.storage if opened is not None else None
        self._journal_lost = opened.recovery.lost if opened is not None else 0
        first_sequence = opened.first_sequence if opened is not None else 1
        tag = f"bus-{name or format(id(self), 'x')}"
        # User handlers: a thread stuck in one past blocking_threshold gets a
        # stand-in, so blocking handlers stall only their own subscriptions.
        self._dispatcher = Dispatcher(
            cfg.threads,
            name=tag,
            max_threads=cfg.max_threads,
            blocking_threshold=cfg.blocking_threshold,
        )
        # The bus's own actors: no handler ever runs on this thread.
        self._system = Dispatcher(1, name=f"{tag}-system")
        self._correlation = _start(
            CorrelationActor(
                dispatcher=self._system,
                max_traces=cfg.max_traces,
                max_events_per_trace=cfg.max_events_per_trace,
                trace_ttl=cfg.trace_ttl,
            )
        )
        self._journal: JournalActor | None = None
        if self._storage is not None:
            # Its own thread: a write (and its fsync) never holds a thread
            # that handlers need.
            self._journal = _start(
                JournalActor(
                    storage=self._storage,
                    dispatcher=Dispatcher(1, name="journal"),
                    sync=cfg.durability == "sync",
                    retention_days=cfg.retention_days,
                    max_events=cfg.max_events,
                )
            )
        self._router = _start(
            RouterActor(
                dispatcher=self._system,
                capacity=max(cfg.buffer_size, 1024),
                origin=name,
                first_sequence=first_sequence,
                recorders=[self._correlation.actor_inbox],
                durable_recorder=self._journal.actor_inbox if self._journal else None,
                correlation=self._correlation.actor_inbox,
            )
        )
        self._router_mailbox = self._router.actor_inbox
        self._bridge: Bridge | None = None
        self._size_check: Callable[[Event], None] | None = None
        self.node: Node | None = None
        if node is not None:
            self._start_node(node)

    def _start_node(self, config: NodeConfig) -> None:
        # zmq is imported only when a bus is a node.
        from actors._cluster.bridge import Bridge  # noqa: PLC0415
        from actors._cluster.limits import EventSizeCheck  # noqa: PLC0415
        from actors._cluster.node import Node, NodeWiring, RouterJournal  # noqa: PLC0415

        journal = self._journal
        wiring = NodeWiring(
            name=config.name,
            first_sequence=self._router.next_sequence,
            router=self._router_mailbox,
            journal=RouterJournal(self._router_mailbox, journal.actor_inbox) if journal else None,
            inject=self._inject,
            flush=self.flush,
            publish=self.publish,
            metrics=self.metrics,
        )
        try:
            self._bridge = Bridge(wiring, config)
        except BaseException:
            self._stop_actors(Deadline(10))
            raise
        self._size_check = EventSizeCheck(config.max_frame_bytes)
        self.node = Node(self._bridge, config, self._prepare, self._check_open)
        self._router.add_recorder(self._bridge.recorder)
        self._router.route_listeners.append(self._bridge.on_local_patterns)

    def _require_node(self) -> Node:
        if self.node is None:
            raise EventBusError("this bus is not connected to other nodes (no NodeConfig)")
        return self.node

    def wait_for_peers(self, names: Sequence[str], timeout: float | None = 30.0) -> bool:
        """Same as ``bus.node.wait_for_peers`` (``EventBusError`` on a bus that is not a node)."""
        return self._require_node().wait_for_peers(names, timeout)

    def publish_remote(
        self,
        node: str,
        event_or_type: Event | str,
        data: Any = None,
        *,
        timeout: float | None = 30.0,
        **fields: Any,
    ) -> Event:
        """Same as ``bus.node.publish_remote`` (``EventBusError`` on a bus that is not a node)."""
        return self._require_node().publish_remote(
            node, event_or_type, data, timeout=timeout, **fields
        )

    @property
    def endpoints(self) -> dict[str, str | None]:
        """Same as ``bus.node.endpoints``; empty on a bus that is not a node."""
        return {} if self.node is None else self.node.endpoints

    def linked_nodes(self, timeout: float | None = 30.0) -> list[str]:
        """Same as ``bus.node.linked_nodes`` (``EventBusError`` on a bus that is not a node)."""
        return self._require_node().linked_nodes(timeout)

    def _inject(self, events: Sequence[Event]) -> None:
        """Route events that arrived from a peer, in order, as one message.

        Never blocks and is never rejected: their origin already accepted them.
        """
        self._router_mailbox.put(
            PublishBatch(events, [None] * len(events), time.perf_counter(), internal=True)
        )

    # -- publishing ------------------------------------------------------------------

    def publish(
        self, event_or_type: Event | str, data: Any = None, **fields: Any
    ) -> BusFuture[Event]:
        """Publish an event; return a future of the published (sequenced) event.

        Takes an ``Event``, or an event type plus ``data`` and any other
        ``Event`` fields.  Inside a handler, the new event inherits the handled
        event's correlation id and takes its id as causation id, unless given.
        Does not wait for handlers.  Raises ``InvalidEventError`` (bad or
        reserved type, non-JSON data), ``RateLimitedError``, ``BusClosedError``,
        and ``BackpressureError`` when the router's mailbox stays full for
        ``block_timeout``.  The future fails with ``BackpressureError`` when a
        ``REJECT`` subscription is full.
        """
        if self._closed:
            raise BusClosedError("the bus is closed")
        self._check_writable()
        event = self._prepare(event_or_type, data, fields)
        if self._bucket is not None and not self._bucket.try_take():
            self._rate_limited += 1
            raise RateLimitedError(f"rate limit of {self._bucket.rate:g} events/s exceeded")
        future: BusFuture[Event] = BusFuture()
        owned = event is not event_or_type
        if not self._router_mailbox.put_blocking(
            Publish(event, future, time.perf_counter(), False, owned), self.config.block_timeout
        ):
            self._router.rejected += 1
            raise BackpressureError(
                f"publish blocked for {self.config.block_timeout}s: a BLOCK subscription is full"
            )
        return future

    def publish_many(self, events: Iterable[Event]) -> list[BusFuture[Event]]:
        """Publish a batch of events in order, as one message to the router.

        Return one future per event.  Validation, rate limiting and the closed
        check apply to the whole batch before anything is published.
        """
        if self._closed:
            raise BusClosedError("the bus is closed")
        self._check_writable()
        prepared = [self._prepare(e, None, {}) for e in events]
        if not prepared:
            return []
        if self._bucket is not None and not self._bucket.try_take(len(prepared)):
            self._rate_limited += len(prepared)
            raise RateLimitedError(f"rate limit of {self._bucket.rate:g} events/s exceeded")
        futures: list[BusFuture[Event]] = [BusFuture() for _ in prepared]
        if not self._router_mailbox.put_blocking(
            PublishBatch(prepared, futures, time.perf_counter()), self.config.block_timeout
        ):
            self._router.rejected += len(prepared)
            raise BackpressureError(
                f"publish blocked for {self.config.block_timeout}s: a BLOCK subscription is full"
            )
        return futures

    def publish_correlated(
        self, event_type: str, data: Any, correlation_id: uuid.UUID, **fields: Any
    ) -> BusFuture[Event]:
        """Publish ``event_type`` with ``data`` as part of the workflow ``correlation_id``."""
        return self.publish(event_type, data, correlation_id=correlation_id, **fields)

    def _check_writable(self) -> None:
        if self._storage is not None and self._storage.read_only:
            raise JournalError(
                "this bus opened its journal read-only (EventConfig(read_only=True)): "
                "publishing is refused"
            )

    def _prepare(self, event_or_type: Event | str, data: Any, fields: dict[str, Any]) -> Event:
        cause = current_event.get()
        if isinstance(event_or_type, Event):
            if data is not None or fields:
                raise TypeError("pass either an Event or a type with data and fields, not both")
            event = event_or_type
            if cause is not None and (event.causation_id is None or event.correlation_id is None):
                changes: dict[str, Any] = {}
                if event.causation_id is None:
                    changes["causation_id"] = cause.id
                if event.correlation_id is None and cause.correlation_id is not None:
                    changes["correlation_id"] = cause.correlation_id
                event = event._with(**changes)
        else:
            unknown = fields.keys() - _EVENT_FIELDS
            if unknown:
                raise TypeError(f"unknown Event field(s): {', '.join(sorted(unknown))}")
            if cause is not None:
                if fields.get("causation_id") is None:
                    fields["causation_id"] = cause.id
                if fields.get("correlation_id") is None and cause.correlation_id is not None:
                    fields["correlation_id"] = cause.correlation_id
            event = Event(event_type=event_or_type, data=data, **fields)
        if is_reserved(event.event_type):
            raise InvalidEventError(
                f"event type {event.event_type!r} is reserved for the bus ('$' types)"
            )
        if self._size_check is not None:
            self._size_check(event)
        return event

    def _publish_internal(self, event: Event) -> None:
        """Publish a ``$bus`` event: never blocks, never rejected, never rate limited."""
        if not self._closed or self._router.actor_ref.is_alive():
            self._router_mailbox.put(Publish(event, None, time.perf_counter(), internal=True))

    # -- subscribing -------------------------------------------------------------------

    def subscribe(
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
        """Subscribe ``handler`` to the event types ``pattern`` matches.

        Every matching event published after this returns reaches the handler,
        in publish order.  ``handler`` is a callable taking an ``Event`` (a
        plain function, run on the dispatcher; or ``async def``, run on the
        event loop it was subscribed from) or a ``pykka.ActorRef`` (events
        arrive as messages).  ``capacity`` and ``overflow`` default to the
        config's ``buffer_size`` and ``overflow``.  ``dedicated_thread=True``
        gives the subscription a thread of its own, for handlers that block
        on I/O.  Never blocks.  Raises ``InvalidPatternError``, ``TypeError``
        for a bad handler, ``BusClosedError``.
        """
        if self._closed:
            raise BusClosedError("the bus is closed")
        Pattern.parse(pattern)
        if from_sequence is not None or durable is not None:
            return self._subscribe_from_journal(
                pattern,
                handler,
                filter=filter,
                capacity=capacity,
                overflow=overflow,
                from_sequence=from_sequence,
                durable=durable,
                dedicated_thread=dedicated_thread,
            )
        actor = self._start_subscriber(
            pattern,
            handler,
            capacity=capacity,
            overflow=overflow,
            dedicated_thread=dedicated_thread,
        )
        self._router_mailbox.put(Subscribe(self._route_for(actor, filter)))
        return Subscription(self, actor)

    def _subscribe_from_journal(
        self,
        pattern: str,
        handler: Handler,
        *,
        filter: FilterLike | None,
        capacity: int | None,
        overflow: OverflowStrategy | str | None,
        from_sequence: int | None,
        durable: str | None,
        dedicated_thread: bool,
    ) -> Subscription:
        journal = self._require_journal()
        start = from_sequence
        if durable is not None:
            checkpoint = self._load_checkpoint(journal, f"sub:{durable}")
            if checkpoint is not None:
                start = checkpoint + 1
        actor = self._start_subscriber(
            pattern,
            handler,
            capacity=capacity,
            overflow=overflow,
            dedicated_thread=dedicated_thread,
        )
        route = self._route_for(actor, filter)
        inbox = journal.actor_inbox
        router = self._router_mailbox

        def read(position: int, limit: int, future: BusFuture[Any]) -> None:
            query = EventQuery(event_types=[pattern], after_sequence=position - 1, limit=limit)
            router.put(Forward(inbox, ReadJournal(query, future)))

        def join(route: Route, joined: Callable[[int], None]) -> None:
            router.put(Subscribe(route, on_subscribed=joined))

        def save(name: str, sequence: int) -> None:
            inbox.put(SaveCheckpoint(f"sub:{name}", sequence))

        catchup = CatchUp(
            actor,
            start=max(start or 1, 1),
            route=route,
            durable=durable,
            read=read,
            join=join,
            save=save,
        )
        if start is None:
            # A new durable subscription with no starting point starts live.
            catchup.live = True
            catchup.caught_up.set()
            actor.catchup = catchup
            router.put(Subscribe(route))
        else:
            actor.catchup = catchup
            actor.actor_inbox.wake()
        return Subscription(self, actor)

    def _load_checkpoint(self, journal: JournalActor, name: str) -> int | None:
        future: BusFuture[int | None] = BusFuture()
        self._router_mailbox.put(Forward(journal.actor_inbox, LoadCheckpoint(name, future)))
        result: int | None = future.get(timeout=30.0)
        return result

    def _start_subscriber(
        self,
        pattern: str,
        handler: Handler,
        *,
        capacity: int | None,
        overflow: OverflowStrategy | str | None,
        dedicated_thread: bool,
    ) -> SubscriberActor:
        if not (callable(handler) or isinstance(handler, pykka.ActorRef)):
            raise TypeError(f"handler must be callable or a pykka.ActorRef, not {handler!r}")
        cap = self.config.buffer_size if capacity is None else capacity
        if cap < 1:
            raise ValueError("capacity must be at least 1")
        strategy = self.config.overflow if overflow is None else OverflowStrategy(overflow)
        loop = None
        if not isinstance(handler, pykka.ActorRef) and (
            inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(getattr(handler, "__call__", None))  # noqa: B004
        ):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = self._background_loop()
        sub_id = f"sub-{next(_sub_ids)}"
        if not isinstance(handler, pykka.ActorRef):
            for wrap in self.handler_wrappers:  # e.g. actors.otel: a span per handled event
                handler = wrap(handler, sub_id, pattern)
        dispatcher = (
            Dispatcher(
                1, name=f"{sub_id}-thread", blocking_threshold=self.config.blocking_threshold
            )
            if dedicated_thread
            else self._dispatcher
        )
        actor = SubscriberActor(
            bus=self,
            sub_id=sub_id,
            pattern=pattern,
            handler=handler,
            capacity=cap,
            overflow=strategy,
            retries=self.config.handler_retries,
            dispatcher=dispatcher,
            loop=loop,
        )
        _start(actor)
        with self._subs_lock:
            self._subs[sub_id] = actor
        return actor

    @staticmethod
    def _route_for(actor: SubscriberActor, flt: FilterLike | None) -> Route:
        strategy = actor.actor_inbox.overflow
        return Route(
            id=actor.sub_id,
            pattern=actor.pattern,
            mailbox=actor.actor_inbox,
            predicate=as_predicate(flt),
            strict=strategy in (OverflowStrategy.REJECT, OverflowStrategy.BLOCK),
        )

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._subs_lock:
            actor = self._subs.pop(subscription.id, None)
        if actor is None:
            return
        # The router removes the route first, then stops the actor: no flush
        # barrier can land on a stopped mailbox.
        # (Never a blocking stop: the router's thread must never wait for a
        # subscriber, whose handler may block.)
        self._router_mailbox.put(
            Unsubscribe(subscription.id, then=lambda: actor.actor_ref.stop(block=False))
        )
        stats = actor.statistics()
        self._removed[0] += stats.delivered
        self._removed[1] += stats.dropped
        self._removed[2] += stats.errors
        self._removed[3] += stats.expired
        self._removed[4] += stats.dead_letters

    def subscriptions(self) -> list[Subscription]:
        """Return the live subscriptions."""
        with self._subs_lock:
            return [Subscription(self, a) for a in self._subs.values()]

    # -- dead letters ---------------------------------------------------------------------

    def _dead_letter(self, letter: DeadLetter) -> None:
        event = letter.event
        announcement = Event(
            event_type="$bus.deadletter",
            data={
                "subscription": letter.subscription_id,
                "pattern": letter.pattern,
                "event": event.to_dict(),
                "error_type": letter.error_type,
                "error": letter.error,
                "attempts": letter.attempts,
            },
            correlation_id=event.correlation_id,
            causation_id=event.id,
            source="bus",
        )
        self._dead_count += 1
        self._dead.append(replace(letter, letter=announcement))
        self._publish_internal(announcement)

    def dead_letters(
        self, *, limit: int | None = None, after: int | None = None
    ) -> list[DeadLetter]:
        """Return dead letters, oldest first: from the journal where persistent.

        ``limit`` caps how many; ``after`` (a persistent bus only) starts
        after that journal sequence: pass the last letter's
        ``letter.sequence`` to read the next page.  Without ``limit`` the
        journal is still read page by page.  A bus without a journal keeps
        the most recent ``dead_letter_limit`` letters.
        """
        query = dead_letter_query(limit=limit, after=after)
        if self._journal is None:
            if after is not None:
                raise ValueError("after (a journal sequence) needs a persistent bus")
            return list(self._dead)[:limit]
        events = self.query(query) if limit is not None else self._iter_query(query, 1000)
        return [d for d in map(letter_from_event, events) if d is not None]

    # -- queries ---------------------------------------------------------------------------

    def get_correlated(
        self, correlation_id: uuid.UUID, *, timeout: float | None = 30.0
    ) -> list[Event]:
        """Return every event of ``correlation_id`` in sequence order.

        Sees every event published before the call: from memory for live
        traces, from the journal (where persistent) for old or evicted ones.
        Blocks until answered (``FutureTimeoutError`` after ``timeout``).
        Raises ``TypeError`` if ``correlation_id`` is not a ``uuid.UUID``.
        """
        self._check_open()
        if not isinstance(correlation_id, uuid.UUID):
            raise TypeError(
                f"correlation_id must be a uuid.UUID, not {type(correlation_id).__name__}"
            )
        future: BusFuture[Any] = BusFuture()
        self._router_mailbox.put(GetCorrelated(correlation_id, future))
        events, complete = future.get(timeout=timeout)
        result = list(events or [])
        if not complete and self._journal is not None:
            stored = self.query(EventQuery(correlation_id=correlation_id), timeout=timeout)
            result = _merge(stored, result)
        if self._bridge is not None:
            result = _merge(result, self._bridge.remote_correlated(correlation_id, timeout))
        return result

    def query(
        self, query: EventQuery, *, node: str | None = None, timeout: float | None = 30.0
    ) -> list[Event]:
        """Return the stored events ``query`` selects (sees every earlier publish).

        Cost grows with the result, not the journal.  ``node`` sends the
        query to that connected peer instead.  Raises ``EventBusError`` on a
        bus without a journal, ``JournalError`` if the read fails,
        ``BridgeError`` if the peer cannot answer, ``FutureTimeoutError``
        after ``timeout``.
        """
        self._check_open()
        if node is not None and node != self.name:
            if self._bridge is None:
                raise EventBusError("this bus is not connected to other nodes")
            return self._bridge.remote_query(node, query, timeout)
        journal = self._require_journal()
        future: BusFuture[list[Event]] = BusFuture()
        self._router_mailbox.put(Forward(journal.actor_inbox, ReadJournal(query, future)))
        result: list[Event] = future.get(timeout=timeout)
        return result

    def replay(
        self,
        query: EventQuery,
        handler: Callable[[Event], Any],
        *,
        speed: float | None = None,
        page_size: int = 1000,
    ) -> int:
        """Re-deliver stored events to ``handler`` in order, in the calling thread.

        Replayed events go to ``handler`` only: not to live subscribers, and
        they are not journaled again.  ``speed=1.0`` keeps the original
        spacing (2.0 twice as fast); None delivers as fast as possible.  An
        exception from ``handler`` stops the replay and propagates.  Returns
        the number of events replayed.
        """
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        count = 0
        started: float | None = None
        first_ts: float | None = None
        for event in self._iter_query(query, page_size):
            if speed is not None:
                ts = event.timestamp.timestamp()
                if started is None or first_ts is None:
                    started, first_ts = time.monotonic(), ts
                else:
                    delay = started + (ts - first_ts) / speed - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            token = current_event.set(event)
            try:
                handler(event)
            finally:
                current_event.reset(token)
            count += 1
        return count

    def _iter_query(self, query: EventQuery, page_size: int) -> Iterator[Event]:
        """Yield a query's events page by page (bounded memory for big replays)."""
        if query.descending or query.limit is not None:
            yield from self.query(query)
            return
        after = query.after_sequence
        while True:
            page = self.query(replace(query, after_sequence=after, limit=page_size))
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].sequence

    def _require_journal(self) -> JournalActor:
        if self._journal is None:
            raise EventBusError(
                "this bus has no journal: use PersistentEventBus or "
                "EventConfig(persistence_path=...)"
            )
        return self._journal

    def trace(self, correlation_id: uuid.UUID, *, timeout: float | None = 30.0) -> Trace:
        """Return the causal ``Trace`` of ``correlation_id`` (see ``get_correlated``)."""
        return Trace(correlation_id, self.get_correlated(correlation_id, timeout=timeout))

    # -- flow ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event published so far is handled (or dropped) and recorded.

        Raises ``FutureTimeoutError`` after ``timeout`` seconds,
        ``BusClosedError`` after ``close``, and ``RuntimeError`` when called
        from inside a handler (it would wait for itself).
        """
        self._check_open()
        self._flush(timeout)

    def _flush(self, timeout: float | None) -> None:
        if current_event.get() is not None:
            raise RuntimeError("flush() cannot be called from inside a handler")
        deadline = None if timeout is None else time.monotonic() + timeout
        # A catch-up subscription is not a route until it has read history;
        # the events published before this call reach it through the journal.
        with self._subs_lock:
            catching_up = [
                a.catchup
                for a in self._subs.values()
                if a.catchup and not a.catchup.caught_up.is_set()
            ]
        for catchup in catching_up:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not catchup.caught_up.wait(remaining):
                raise FutureTimeoutError(f"{timeout} seconds (a catch-up subscription is behind)")
        future: BusFuture[None] = BusFuture()
        self._router_mailbox.put(Flush(future))
        future.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float | None = None) -> tuple[SubscriptionStatistics, ...]:
        """Drain, flush and stop every actor, within ``timeout`` seconds.  Idempotent.

        Events published before ``close`` are handled first (unless called
        from inside a handler, where it cannot wait).  With a ``timeout`` it
        returns after at most ``timeout`` plus ``CLOSE_GRACE`` seconds (the
        bus's own actors get the grace to stop), whatever the handlers do: a
        handler still running then is abandoned on its daemon thread, and the
        events its subscription had not finished are discarded.  Logs each
        subscription it gave up on at WARNING and returns their statistics
        as they were when it gave up (empty when everything was handled).
        Afterwards calls raise ``BusClosedError``.
        """
        with self._close_lock:
            if self._closed:
                return ()
            self._closed = True
        deadline = Deadline(timeout)
        inside = (
            current_event.get() is not None
            or self._dispatcher.on_dispatcher_thread()
            or self._system.on_dispatcher_thread()
        )
        if not inside:
            try:
                self._flush(deadline.remaining())
            except pykka.Timeout:
                logger.warning("close(): flush timed out after %ss; stopping anyway", timeout)
        if self._requests is not None:  # callers still waiting for replies: none will come
            self._requests.table.fail_all(BusClosedError("the bus was closed"))
        if inside:  # the caller's own thread may be needed: wait for nothing
            return self._stop_actors(Deadline(0), grace=0.0, wait=False)
        return self._stop_actors(deadline)

    def _stop_actors(
        self, deadline: Deadline, grace: float = CLOSE_GRACE, *, wait: bool = True
    ) -> tuple[SubscriptionStatistics, ...]:
        with self._subs_lock:
            subs = list(self._subs.values())
            self._subs.clear()
        unfinished = [
            stats for stats in (a.statistics() for a in subs) if stats.queued or stats.in_flight
        ]
        for actor in subs:
            actor.abandoned = True  # nothing more is handled once close gives up
        system = deadline.extended(grace)
        # Subscribers, router and correlation first; the journal last, so the
        # router's final records reach it.  The journal closes its storage.
        # The bus's own actors run no user code: they get the grace to stop.
        if self._bridge is not None:
            self._bridge.close(system.remaining())
        told = send_stop(a.actor_ref for a in subs)
        own = send_stop([self._router.actor_ref, self._correlation.actor_ref])
        late = wait_stopped(own, system) if wait else []
        if self._journal is not None:
            own = send_stop([self._journal.actor_ref])
            late += wait_stopped(own, system) if wait else []
            self._journal.actor_dispatcher.shutdown(system.remaining())
        for ref in late:
            logger.warning("close(): %s did not stop in time; abandoned", ref)
        running = {ref.actor_urn for ref in (wait_stopped(told, deadline) if wait else [])}
        for actor in subs:
            if actor.actor_dispatcher is not self._dispatcher:
                actor.actor_dispatcher.shutdown(deadline.remaining())
        self._dispatcher.shutdown(deadline.remaining())
        self._system.shutdown(system.remaining())
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        urns = {a.sub_id: a.actor_urn for a in subs}
        for stats in unfinished:
            still = urns[stats.id] in running
            logger.warning(
                "close(): gave up on subscription %s (%r) with %d event(s) unhandled "
                "(%d queued, %d in flight)%s",
                stats.id,
                stats.pattern,
                stats.queued + stats.in_flight,
                stats.queued,
                stats.in_flight,
                "; its handler is still running and is abandoned" if still else "",
            )
        return tuple(unfinished)

    @property
    def closed(self) -> bool:
        """Return whether ``close`` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError("the bus is closed")

    def __enter__(self) -> EventBus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- async handlers from sync code ------------------------------------------------------

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._subs_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                self._loop_thread = threading.Thread(target=run, name="bus-async", daemon=True)
                self._loop_thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self) -> BusMetrics:
        """Return a snapshot of the bus's figures (never blocks on the actors)."""
        with self._subs_lock:
            stats = tuple(a.statistics() for a in self._subs.values())
        removed = self._removed
        p50, p90, p99, pmax = self._latency.percentiles()
        router = self._router
        journal = self._journal_figures()
        return BusMetrics(
            published=router.published,
            delivered=removed[0] + sum(s.delivered for s in stats),
            dropped=removed[1] + sum(s.dropped for s in stats),
            rejected=router.rejected,
            expired=removed[3] + sum(s.expired for s in stats),
            handler_errors=removed[2] + sum(s.errors for s in stats),
            dead_letters=self._dead_count,
            subscriptions=len(stats),
            events_per_second=router.meter.current(),
            peak_events_per_second=max(router.meter.peak(), router.meter.current()),
            latency_p50=p50,
            latency_p90=p90,
            latency_p99=p99,
            latency_max=pmax,
            per_subscription=stats,
            journal_written=journal[0],
            journal_write_latency=journal[1],
            journal_size_bytes=journal[2],
            rate_limited=self._rate_limited,
            journal_corrupt_records=(
                self._journal.corrupt + self._journal.storage.corrupt_records
                if self._journal is not None
                else 0
            ),
            bridge=self._bridge.statistics() if self._bridge is not None else None,
            blocked_handlers=sum(1 for s in stats if s.blocked),
            handler_threads=self._dispatcher.threads,
            journal_lost_events=self._journal_lost,
        )

    def _journal_figures(self) -> tuple[int, float | None, int]:
        return self._journal.figures() if self._journal is not None else (0, None, 0)

    def prometheus(self) -> str:
        """Return the metrics in the Prometheus text exposition format."""
        return to_prometheus(self.metrics())

    # -- requests and replies (the logic: actors/_core/requests.py) -------------------------

    _requests: Requester | None = None

    def _requester(self) -> Requester:
        if self._requests is None:
            with self._subs_lock:
                if self._requests is None:
                    self._requests = Requester(lambda p, h, w: self.subscribe(p, h, filter=w))
        return self._requests

    def respond(
        self,
        pattern: str,
        fn: Callable[[Event], Any],
        *,
        source: str | None = None,
        **subscribe_options: Any,
    ) -> Subscription:
        """Subscribe ``fn`` as a responder: its return value becomes the reply event.

        The reply is ``<request type>.reply`` (``.error`` with the exception's
        type and message if ``fn`` raises; no retry, no dead letter), caused by
        the request, in its correlation, targeted at its source, with
        ``source``.  ``async def`` works as for handlers.  Takes the options of
        ``subscribe``.  See ``docs/requests.md``.
        """
        responder = Responder(fn, self.publish, self._requester().table, source=source)
        return self.subscribe(pattern, responder.handler, **subscribe_options)

    def request(
        self,
        event_type: str,
        data: Any = None,
        *,
        timeout: float | None = 5.0,
        node: str | None = None,
        **fields: Any,
    ) -> Event:
        """Publish a request and return the first reply event.

        Blocks up to ``timeout`` seconds, then raises ``RequestTimeoutError``;
        an error reply raises ``RemoteHandlerError``.  ``node`` has that
        connected node publish the request (``publish_remote``).  Also raises
        what ``publish`` raises, and ``BackpressureError`` when too many
        requests wait at once.
        """
        requester, event, pending, left = self._send_request(
            event_type, data, fields, 1, timeout, node
        )
        replies = requester.wait(pending, left)
        if not replies:
            raise timeout_error(event, timeout)
        return reply_result(replies[0])

    def request_all(
        self,
        event_type: str,
        data: Any = None,
        *,
        timeout: float = 5.0,
        max_replies: int | None = None,
        node: str | None = None,
        **fields: Any,
    ) -> list[Event]:
        """Publish a request; return every reply (``.error`` ones too) within ``timeout``.

        Returns as soon as ``max_replies`` arrived, else after ``timeout``
        (never raises ``RequestTimeoutError``: no reply is an empty list).
        """
        requester, _, pending, left = self._send_request(
            event_type, data, fields, max_replies, timeout, node
        )
        return requester.wait(pending, left)

    def pending_requests(self) -> int:
        """Return how many requests wait for replies now (bounded; see ``docs/requests.md``)."""
        return len(self._requester().table)

    def _send_request(  # noqa: PLR0917 - the two public forms' arguments
        self,
        event_type: str,
        data: Any,
        fields: dict[str, Any],
        max_replies: int | None,
        timeout: float | None,
        node: str | None,
    ) -> tuple[Requester, Event, Pending, float | None]:
        """Prepare, route and publish a request; return it with the time left to wait."""
        started = time.monotonic()
        requester, event, new_route = self._prepare_request(event_type, data, fields)
        if new_route:
            self._sync_reply_route(event.event_type, timeout, node)
        pending = requester.send(event, self._request_publisher(node), max_replies)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return requester, event, pending, left

    def _prepare_request(
        self, event_type: str, data: Any, fields: dict[str, Any]
    ) -> tuple[Requester, Event, bool]:
        self._check_open()
        check_request_type(event_type)
        event = self._prepare(event_type, data, fields)
        requester = self._requester()
        new = requester.route(event.event_type)
        if new and self._bridge is None:
            requester.synced(event.event_type)  # no peers: nothing to wait for
        return requester, event, new and self._bridge is not None

    def _sync_reply_route(
        self, event_type: str, timeout: float | None, node: str | None = None
    ) -> None:
        # A new reply route must reach the peers (and ``node``, which will
        # publish the request) before the request does, or a fast reply could
        # be published before they forward it.  No flush (a handler may ask):
        # a barrier through the router, then the bridge, which applies its new
        # prefixes before it takes mail; then the peers' acknowledgements.
        bridge = self._bridge
        if bridge is None:
            return
        names = set(bridge.statistics().peers_alive) | ({node} if node else set())
        if not names:
            return  # (no peer yet: the next request of this type tries again)
        applied: BusFuture[None] = BusFuture()
        self._router_mailbox.put(
            Barrier(lambda: bridge.mailbox.put(Barrier(lambda: applied.set(None))))
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            applied.get(timeout=timeout)
        except FutureTimeoutError:
            logger.warning("reply route not applied within %ss", timeout)
            return
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if bridge.wait(lambda s: names <= set(s.synced_peers), left):
            self._requester().synced(event_type)
        else:
            logger.warning("reply route not acknowledged by %s within %ss", sorted(names), timeout)

    def _request_publisher(self, node: str | None) -> Callable[[Event], BusFuture[Event]]:
        if node is None:
            return self.publish
        return functools.partial(publish_through, self.publish_remote, node)

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` (Prometheus text) and ``/healthz`` on ``host:port``; see
        ``actors._metrics_http``.  Returns the running server (``.port``, ``.url``,
        ``.close()``); closing the bus does not stop it.  ``OSError`` if the port is taken.
        """
        from actors._metrics_http import MetricsServer  # noqa: PLC0415 - http.server on demand

        return MetricsServer(self, port, host)

    def remote_metrics(
        self, node: str, *, timeout: float | None = 10.0
    ) -> tuple[BusMetrics, dict[str, float]]:
        """Ask the connected node ``node`` for its figures (``llmspell-events top``).

        Returns its ``BusMetrics`` and, per peer it knows, the seconds since it
        last heard from it.  Raises ``EventBusError`` on a bus that is not a
        node, ``BridgeError`` if the node does not answer within ``timeout``.
        """
        if self._bridge is None:
            raise EventBusError("this bus is not connected to other nodes (no NodeConfig)")
        self._check_open()
        return self._bridge.remote_metrics(node, timeout)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name or ''} {state}>"


def _start(actor: Any) -> Any:
    """Register and start an actor built directly (keeps the object, as start() would not)."""
    ActorRegistry.register(actor.actor_ref)
    actor._start_actor_loop()
    return actor


def _merge(stored: Sequence[Event], live: Sequence[Event]) -> list[Event]:
    """Union of journal and memory events by id, in sequence order."""
    seen: dict[uuid.UUID, Event] = {e.id: e for e in stored}
    for e in live:
        seen.setdefault(e.id, e)
    return sorted(seen.values(), key=lambda e: (e.sequence or 0, e.timestamp))


class PersistentEventBus(EventBus):
    """An ``EventBus`` whose events persist to a RocksDB journal.

    Requires ``EventConfig.persistence_path``.  Raises ``JournalLockedError``
    when a process (this one or another) holds the journal,
    ``JournalNotFoundError`` when ``read_only`` and the folder holds no
    journal, ``JournalDamagedError`` when acknowledged events are missing and
    ``recover`` is ``"refuse"``, ``JournalError`` when it cannot be opened.
    """

    def __init__(
        self, config: EventConfig, *, name: str | None = None, node: NodeConfig | None = None
    ) -> None:
        if config is None or config.persistence_path is None:
            raise ValueError("PersistentEventBus needs EventConfig(persistence_path=...)")
        super().__init__(config, name=name, node=node)
