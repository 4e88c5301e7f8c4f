"""The facade: ``EventBus`` wires the actors together and is what users hold.

::

    publish() ──Publish──▶ RouterActor ──offer──▶ SubscriberActor mailboxes ──▶ handlers
                               │
                               └──Record──▶ CorrelationActor, JournalActor, bridge

Handlers run on the bus's handler ``Dispatcher`` (``EventConfig.threads``
threads, growing past a blocked one up to ``max_threads``) unless a
subscription asks for a dedicated thread; the router and the correlation
actor run on a system thread no handler can take; the journal and the bridge
have threads of their own.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from actors._core.publishing import prepare_event
from actors._core.request_client import RequestClient
from actors._core.requests import Responder, reply_result, timeout_error
from actors._core.subscriber import DeadLetter, Handler, Subscription, current_event
from actors._core.wiring import Core, HandlerWrapper, JournalFigures, merge_events, start_actor
from actors._errors import BusClosedError, EventBusError, JournalError
from actors._journal.actor import JournalActor
from actors._journal.deadletters import dead_letter_query, letter_from_event
from actors._journal.factory import open_journal
from actors._journal.records import Storage
from actors._model import checks
from actors._model.config import EventConfig, NodeConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import FilterLike
from actors._model.metrics import BusMetrics, SubscriptionStatistics, to_prometheus
from actors._model.query import EventQuery
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

# Seconds ``close(timeout)`` may take beyond ``timeout``: the bus's own
# actors (router, correlation, journal, bridge) get this long to stop after
# the handlers' deadline.  They run no user code, so they take milliseconds.
CLOSE_GRACE = 0.5


class EventBus:
    """An in-process event bus of actors.  Use it as a context manager.

    ``publish`` never waits for handlers; it blocks only while a full
    ``BLOCK`` subscription wants its event (or the router's mailbox is full),
    up to ``EventConfig.block_timeout``.  Calls after ``close`` raise
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
        cfg = self.config
        self._closed = False
        self._close_lock = threading.Lock()

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
        self._journal: JournalActor | None = None
        if self._storage is not None:
            # Its own thread: a write (and its fsync) never holds a thread
            # that handlers need.
            self._journal = JournalActor(
                storage=self._storage,
                dispatcher=Dispatcher(1, name="journal"),
                sync=cfg.durability == "sync",
                retention_days=cfg.retention_days,
                max_events=cfg.max_events,
            )
            start_actor(self._journal)
        self._core = Core(
            cfg,
            name=name,
            dispatcher=self._dispatcher,
            system=self._system,
            first_sequence=first_sequence,
            journal=self._journal.actor_inbox if self._journal is not None else None,
        )
        #: Applied in order to each callable handler at subscribe time, as
        #: ``wrap(handler, subscription_id, pattern) -> handler``; a wrapper
        #: keeps an ``async def`` handler ``async def``.  ``actors.otel`` uses it.
        self.handler_wrappers: list[HandlerWrapper] = self._core.handler_wrappers
        self._router = self._core.router
        self._router_mailbox = self._core.inbox
        self._bridge: Bridge | None = None
        self._size_check: Callable[[Event], None] | None = None
        self.node: Node | None = None
        if node is not None:
            self._start_node(node)
        self._requests = RequestClient(
            subscribe=lambda p, h, w: self.subscribe(p, h, filter=w),
            prepare=self._prepare,
            publish=self.publish,
            publish_remote=self.publish_remote,
            router=self._router_mailbox,
            bridge=lambda: self._bridge,
        )

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

    @property
    def core(self) -> Core:
        """Return the bus's core (router, subscribers): for ``AsyncEventBus`` and tools.

        Not a stable API: its methods return ``BusFuture``s instead of waiting.
        """
        return self._core

    def wait_for_peers(self, names: Sequence[str], timeout: float | None = 30.0) -> bool:
        """Same as ``bus.node.wait_for_peers`` (``EventBusError`` on a bus that is not a node)."""
        checks.check_names(names, timeout)
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
        checks.check_remote(node, timeout)
        return self._require_node().publish_remote(
            node, event_or_type, data, timeout=timeout, **fields
        )

    @property
    def endpoints(self) -> dict[str, str | None]:
        """Same as ``bus.node.endpoints``; empty on a bus that is not a node."""
        return {} if self.node is None else self.node.endpoints

    def linked_nodes(self, timeout: float | None = 30.0) -> list[str]:
        """Same as ``bus.node.linked_nodes`` (``EventBusError`` on a bus that is not a node)."""
        checks.check_timeout("timeout", timeout)
        return self._require_node().linked_nodes(timeout)

    def _inject(self, events: Sequence[Event]) -> None:
        """Route events that arrived from a peer, in order, as one message.

        Never blocks and is never rejected: their origin already accepted them.
        """
        self._core.publisher.inject(events)

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
        and ``BackpressureError`` when a full ``BLOCK`` subscription that wants
        the event has no room within ``block_timeout`` (the event is then not
        published).  The future fails with ``BackpressureError`` when a
        ``REJECT`` subscription is full.
        """
        if self._closed:
            raise BusClosedError("the bus is closed")
        self._check_writable()
        event = self._prepare(event_or_type, data, fields)
        return self._core.publisher.publish(event, owned=event is not event_or_type)

    def publish_many(self, events: Iterable[Event]) -> list[BusFuture[Event]]:
        """Publish a batch of events in order, as one message to the router.

        Return one future per event.  Validation, rate limiting, the ``BLOCK``
        wait and the closed check apply to the whole batch before anything is
        published.
        """
        events = checks.check_events(events)
        if self._closed:
            raise BusClosedError("the bus is closed")
        self._check_writable()
        prepared = [self._prepare(e, None, {}) for e in events]
        if not prepared:
            return []
        return self._core.publisher.publish_batch(prepared)

    def publish_correlated(
        self, event_type: str, data: Any, correlation_id: uuid.UUID, **fields: Any
    ) -> BusFuture[Event]:
        """Publish ``event_type`` with ``data`` as part of the workflow ``correlation_id``."""
        checks.check_correlated(correlation_id)
        return self.publish(event_type, data, correlation_id=correlation_id, **fields)

    def _prepare(self, event_or_type: Event | str, data: Any, fields: dict[str, Any]) -> Event:
        event = prepare_event(event_or_type, data, fields)
        if self._size_check is not None:  # a node: an event too large to cross fails here
            self._size_check(event)
        return event

    def _check_writable(self) -> None:
        if self._storage is not None and self._storage.read_only:
            raise JournalError(
                "this bus opened its journal read-only (EventConfig(read_only=True)): "
                "publishing is refused"
            )

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
        return self._core.subscribe(
            pattern,
            handler,
            filter=filter,
            capacity=capacity,
            overflow=overflow,
            from_sequence=from_sequence,
            durable=durable,
            dedicated_thread=dedicated_thread,
        )

    def subscriptions(self) -> list[Subscription]:
        """Return the live subscriptions."""
        return self._core.subscriptions()

    # -- dead letters ---------------------------------------------------------------------

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
            return self._core.dead_letters()[:limit]
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
        checks.check_correlated(correlation_id, timeout)
        self._check_open()
        events, complete = self._core.correlated(correlation_id).get(timeout)
        result = list(events)
        if not complete and self._journal is not None:
            stored = self.query(EventQuery(correlation_id=correlation_id), timeout=timeout)
            result = merge_events(stored, result)
        if self._bridge is not None:
            result = merge_events(result, self._bridge.remote_correlated(correlation_id, timeout))
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
        return self._core.read_journal(query).get(timeout)

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
        self._core.flush(timeout)

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
        checks.check_timeout("timeout", timeout)
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
        # Callers still waiting for replies: none will come.
        self._requests.requester.table.fail_all(BusClosedError("the bus was closed"))
        if inside:  # the caller's own thread may be needed: wait for nothing
            return self._stop_actors(Deadline(0), grace=0.0, wait=False)
        return self._stop_actors(deadline)

    def _stop_actors(
        self, deadline: Deadline, grace: float = CLOSE_GRACE, *, wait: bool = True
    ) -> tuple[SubscriptionStatistics, ...]:
        subs = self._core.take_subscribers()
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
        own = send_stop(self._core.refs())
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
        self._core.stop_loop()
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

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self) -> BusMetrics:
        """Return a snapshot of the bus's figures (the actors are asked for theirs)."""
        snapshot = self._core.metrics(
            self._journal_figures(),
            self._bridge.statistics() if self._bridge is not None else None,
        )
        return replace(
            snapshot,
            blocked_handlers=sum(1 for s in snapshot.per_subscription if s.blocked),
            handler_threads=self._dispatcher.threads,
            journal_lost_events=self._journal_lost,
        )

    def _journal_figures(self) -> JournalFigures:
        journal = self._journal
        if journal is None:
            return JournalFigures()
        written, latency, size = journal.figures()
        corrupt = journal.corrupt + journal.storage.corrupt_records
        return JournalFigures(written, latency, size, corrupt)

    def prometheus(self) -> str:
        """Return the metrics in the Prometheus text exposition format."""
        return to_prometheus(self.metrics())

    # -- requests and replies (the logic: actors/_core/requests.py) -------------------------

    @property
    def request_client(self) -> RequestClient:
        """Return the bus's requesting side (for ``AsyncEventBus``; not a stable API)."""
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
        responder = Responder(fn, self.publish, self._requests.requester.table, source=source)
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
        self._check_open()
        event, pending, left = self._requests.send(event_type, data, fields, 1, timeout, node)
        replies = self._requests.requester.wait(pending, left)
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
        self._check_open()
        _, pending, left = self._requests.send(event_type, data, fields, max_replies, timeout, node)
        return self._requests.requester.wait(pending, left)

    def pending_requests(self) -> int:
        """Return how many requests wait for replies now (bounded; see ``docs/requests.md``)."""
        return len(self._requests.requester.table)

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
        self._check_open()
        return self._require_node().remote_metrics(node, timeout)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name or ''} {state}>"


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
        checks.check_bus(config, name, node)
        if config is None or config.persistence_path is None:
            raise ValueError("PersistentEventBus needs EventConfig(persistence_path=...)")
        super().__init__(config, name=name, node=node)
