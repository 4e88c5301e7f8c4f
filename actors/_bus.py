"""The facade: ``EventBus`` wires the actors together and is what users hold.

::

    publish() ──Publish──▶ RouterActor ──offer──▶ SubscriberActor mailboxes ──▶ handlers
                               │
                               └──Record──▶ CorrelationActor, JournalActor, bridge

Every actor runs on the bus's own ``Dispatcher`` (``EventConfig.threads``
threads) unless a subscription asks for a dedicated thread.
"""

from __future__ import annotations

import asyncio
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
    RateLimitedError,
)
from actors._journal.actor import JournalActor, enforce_retention, first_free_sequence
from actors._journal.storage import RocksStorage, Storage
from actors._model import checks
from actors._model.config import EventConfig, NodeConfig, OverflowStrategy
from actors._model.event import _FIELD_NAMES, Event
from actors._model.filter import FilterLike, as_predicate
from actors._model.metrics import BusMetrics, LatencyWindow, to_prometheus
from actors._model.query import EventQuery
from actors._model.topics import Pattern, is_reserved
from actors._model.trace import Trace
from actors._runtime.dispatcher import Dispatcher
from actors._runtime.future import BusFuture

__all__ = ["EventBus", "PersistentEventBus"]

logger = logging.getLogger("actors.bus")

if TYPE_CHECKING:
    from actors._cluster.bridge import Bridge

_sub_ids = itertools.count(1)

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
        checks.check_bus(config, name, node)
        self.config = config or EventConfig()
        if node is not None:
            name = node.name
        self.name = name
        self.node = node
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

        # Open the journal before starting anything, so a locked or broken
        # journal fails the constructor with nothing left running.
        self._storage: Storage | None = None
        first_sequence = 1
        if cfg.persistence_path is not None:
            self._storage = RocksStorage(cfg.persistence_path)
            try:
                enforce_retention(self._storage, cfg.retention_days, cfg.max_events)
                first_sequence = first_free_sequence(self._storage)
            except BaseException:
                self._storage.close()
                raise
        self._dispatcher = Dispatcher(cfg.threads, name=f"bus-{name or format(id(self), 'x')}")
        self._correlation = _start(
            CorrelationActor(
                dispatcher=self._dispatcher,
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
                dispatcher=self._dispatcher,
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
        if node is not None:
            from actors._cluster.bridge import Bridge  # noqa: PLC0415 - zmq is imported only when needed

            try:
                self._bridge = Bridge(self, node)
            except BaseException:
                self._stop_actors(wait=True, timeout=10)
                raise
            self._router.add_recorder(self._bridge.mailbox)
            self._router.route_listeners.append(self._bridge.on_local_patterns)

    def wait_for_peers(self, names: Sequence[str], timeout: float | None = 30.0) -> bool:
        """Block until the nodes ``names`` acknowledged this node's subscriptions.

        From then on every event they publish that a local pattern matches
        arrives here.  Flushes the bus first.  Returns False after
        ``timeout``; raises ``EventBusError`` on a bus that is not a node.
        """
        checks.check_names(names, timeout)
        if self._bridge is None:
            raise EventBusError("this bus is not connected to other nodes (no NodeConfig)")
        return self._bridge.wait_synced(names, timeout)

    def publish_remote(
        self,
        node: str,
        event_or_type: Event | str,
        data: Any = None,
        *,
        timeout: float | None = 30.0,
        **fields: Any,
    ) -> Event:
        """Have the connected node ``node`` publish an event on its own bus.

        The event takes that node's origin and sequence, as if published
        there.  Blocks until the node acknowledged it (journaled, where that
        node is persistent) and returns it as published.  Retrying after a
        timeout is safe: the node publishes an event id once.  Raises
        ``EventBusError`` on a bus that is not a node, ``BridgeError`` if the
        node refuses (with its reason) or does not answer.
        """
        checks.check_remote(node, timeout)
        if self._bridge is None:
            raise EventBusError("this bus is not connected to other nodes (no NodeConfig)")
        self._check_open()
        event = self._prepare(event_or_type, data, fields)
        return self._bridge.remote_publish(node, [event], timeout)[0]

    @property
    def endpoints(self) -> dict[str, str | None]:
        """Return this node's resolved endpoints: ``request`` (its ``listen``) and ``publish``.

        Ephemeral ports (``tcp://127.0.0.1:*``) are filled in.  Empty on a bus
        that is not a node.
        """
        if self._bridge is None:
            return {}
        return {"request": self._bridge.endpoint, "publish": self._bridge.publish_endpoint}

    def linked_nodes(self, timeout: float | None = 30.0) -> list[str]:
        """Return the names of the nodes among ``NodeConfig.peers``, once they answered.

        Blocks until every configured peer answered (or ``timeout``).
        """
        checks.check_timeout("timeout", timeout)
        if self._bridge is None:
            raise EventBusError("this bus is not connected to other nodes (no NodeConfig)")
        return self._bridge.linked_nodes(timeout)

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
        events = checks.check_events(events)
        if self._closed:
            raise BusClosedError("the bus is closed")
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
        checks.check_correlated(correlation_id)
        return self.publish(event_type, data, correlation_id=correlation_id, **fields)

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
        checks.check_subscribe(
            pattern, handler, filter, capacity, overflow, from_sequence, durable, dedicated_thread
        )
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
        dispatcher = (
            Dispatcher(1, name=f"{sub_id}-thread") if dedicated_thread else self._dispatcher
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
        # (Never a blocking stop: the router runs on a dispatcher thread that
        # the subscriber may need in order to stop.)
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

    def dead_letters(self) -> list[DeadLetter]:
        """Return the dead letters: from the journal where persistent, else the recent ones kept."""
        if self._journal is None:
            return list(self._dead)
        letters = []
        for letter in self.query(EventQuery(event_types=["$bus.deadletter"])):
            data = letter.data
            if not isinstance(data, dict):
                continue
            try:
                raw = data["event"]
                if not isinstance(raw, dict):
                    raise TypeError("not a dict")
                original = Event.from_dict(raw)
                attempts = data.get("attempts", 0)
                attempts = attempts if isinstance(attempts, int) else 0
            except (KeyError, TypeError, InvalidEventError):
                logger.warning("dead letter %s has an unreadable payload", letter.id)
                continue
            letters.append(
                DeadLetter(
                    subscription_id=str(data.get("subscription")),
                    pattern=str(data.get("pattern")),
                    event=original,
                    error_type=str(data.get("error_type")),
                    error=str(data.get("error")),
                    attempts=attempts,
                    letter=letter,
                )
            )
        return letters

    # -- queries ---------------------------------------------------------------------------

    def get_correlated(
        self, correlation_id: uuid.UUID, *, timeout: float | None = 30.0
    ) -> list[Event]:
        """Return every event of ``correlation_id`` in sequence order.

        Sees every event published before the call: from memory for live
        traces, from the journal (where persistent) for old or evicted ones.
        Blocks until answered (``FutureTimeoutError`` after ``timeout``).
        """
        checks.check_correlated(correlation_id, timeout)
        self._check_open()
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
        checks.check_query(query, node, timeout)
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
        checks.check_replay(query, handler, speed, page_size)
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
        checks.check_correlated(correlation_id, timeout)
        return Trace(correlation_id, self.get_correlated(correlation_id, timeout=timeout))

    # -- flow ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event published so far is handled (or dropped) and recorded.

        Raises ``FutureTimeoutError`` after ``timeout`` seconds,
        ``BusClosedError`` after ``close``, and ``RuntimeError`` when called
        from inside a handler (it would wait for itself).
        """
        checks.check_timeout("timeout", timeout)
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

    def close(self, timeout: float | None = None) -> None:
        """Drain, flush and stop every actor.  Idempotent.

        Events published before ``close`` are handled first (unless called
        from inside a handler, where it cannot wait).  Afterwards calls raise
        ``BusClosedError``.
        """
        checks.check_timeout("timeout", timeout)
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        inside = current_event.get() is not None or self._dispatcher.on_dispatcher_thread()
        if not inside:
            try:
                self._flush(timeout)
            except pykka.Timeout:
                logger.warning("close(): flush timed out after %ss; stopping anyway", timeout)
        self._stop_actors(wait=not inside, timeout=timeout)

    def _stop_actors(self, *, wait: bool, timeout: float | None) -> None:
        with self._subs_lock:
            subs = list(self._subs.values())
            self._subs.clear()
        # Subscribers, router and correlation first; the journal last, so the
        # router's final records reach it.  The journal closes its storage.
        if self._bridge is not None:
            self._bridge.close(timeout if wait else 0)
        first = [a.actor_ref for a in subs] + [self._router.actor_ref, self._correlation.actor_ref]
        self._stop_refs(first, wait, timeout)
        if self._journal is not None:
            self._stop_refs([self._journal.actor_ref], wait, timeout)
            self._journal.actor_dispatcher.shutdown(timeout if wait else 0)
        for actor in subs:
            if actor.actor_dispatcher is not self._dispatcher:
                actor.actor_dispatcher.shutdown(timeout if wait else 0)
        self._dispatcher.shutdown(timeout if wait else 0)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    @staticmethod
    def _stop_refs(refs: list[pykka.ActorRef[Any]], wait: bool, timeout: float | None) -> None:
        futures = [ref.stop(block=False) for ref in refs if ref.is_alive()]
        if wait:
            for fut in futures:
                try:
                    fut.get(timeout=timeout)
                except pykka.Timeout:
                    logger.warning("an actor did not stop within %ss", timeout)

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
        )

    def _journal_figures(self) -> tuple[int, float | None, int]:
        return self._journal.figures() if self._journal is not None else (0, None, 0)

    def prometheus(self) -> str:
        """Return the metrics in the Prometheus text exposition format."""
        return to_prometheus(self.metrics())

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
    when another process holds the journal, ``JournalError`` when it cannot
    be opened.
    """

    def __init__(
        self, config: EventConfig, *, name: str | None = None, node: NodeConfig | None = None
    ) -> None:
        checks.check_bus(config, name, node)
        if config is None or config.persistence_path is None:
            raise ValueError("PersistentEventBus needs EventConfig(persistence_path=...)")
        super().__init__(config, name=name, node=node)
