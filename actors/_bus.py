"""The facade: ``EventBus`` wires the actors together and is what users hold.

::

    publish() ──Publish──▶ RouterActor ──offer──▶ SubscriberActor mailboxes ──▶ handlers
                               │
                               └──Record──▶ CorrelationActor, JournalActor, bridge

Handlers run on the bus's handler ``Dispatcher`` (``EventConfig.threads``
threads, growing past a blocked one up to ``max_threads``) unless a
subscription asks for a dedicated thread; the router and the correlation
actor run on an idle handler thread when there is one, else on a system
thread no handler can take (``SpareDispatcher``); the journal and the bridge
have threads of their own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from actors._bus_close import Closable
from actors._bus_requests import RequestReply
from actors._bus_start import STOP_WAIT, start_runtime
from actors._core.crossing import handler_of
from actors._core.publishing import prepare_event
from actors._core.replay import HEAD, head_of, iter_query
from actors._core.replay import replay as replay_events
from actors._core.request_client import RequestClient
from actors._core.subscriber import DeadLetter, Handler, Subscription
from actors._core.wiring import Core, HandlerWrapper, JournalFigures
from actors._errors import BusClosedError, EventBusError, JournalError
from actors._journal.actor import JournalActor
from actors._journal.deadletters import dead_letter_query, letter_from_event
from actors._journal.factory import open_journal
from actors._journal.records import Storage
from actors._model import checks
from actors._model.config import EventConfig, NodeConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import FilterLike
from actors._model.metrics import BusMetrics, to_prometheus
from actors._model.query import EventQuery
from actors._model.trace import Trace, first_copies, merge_events
from actors._runtime import forks
from actors._runtime.future import BusFuture
from actors._runtime.shutdown import Deadline

__all__ = ["EventBus", "PersistentEventBus"]

logger = logging.getLogger("actors.bus")

if TYPE_CHECKING:
    from actors._cluster.bridge import Bridge
    from actors._cluster.node import Node
    from actors._metrics_http import MetricsServer


class EventBus(Closable, RequestReply):
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
        self._init_close()

        # Open the journal before starting anything, so a locked or broken
        # journal fails the constructor with nothing left running.
        opened = open_journal(cfg)
        try:
            self._start(cfg, name, node, opened)
        except BaseException:  # a Ctrl-C too: nothing is left running, the journal free
            runtime = self.__dict__.get("_runtime")
            if runtime is None:  # ``start_runtime`` undid its own part, if it began
                if opened is not None:
                    opened.storage.close()  # idempotent
            else:  # as ``start_runtime`` does: a bus that failed to start leaves nothing running
                self._dispatcher, self._system = runtime.dispatcher, runtime.system
                self._journal, self._core = runtime.journal, runtime.core
                self._closed = self._close_finished = True
                self._stop_actors(Deadline(STOP_WAIT))
            raise

    def _start(
        self, cfg: EventConfig, name: str | None, node: NodeConfig | None, opened: Any
    ) -> None:
        self._storage: Storage | None = opened.storage if opened is not None else None
        # Fixed at open: publishing checks this one flag, not the storage.
        self._read_only = self._storage is not None and self._storage.read_only
        self._journal_lost = opened.recovery.lost if opened is not None else 0
        first_sequence = opened.first_sequence if opened is not None else 1
        self._bridge: Bridge | None = None
        self._settle_node: Callable[[], None] | None = None
        self._runtime = runtime = start_runtime(
            cfg, self._storage, name, f"bus-{name or format(id(self), 'x')}", first_sequence
        )
        self._dispatcher, self._system = runtime.dispatcher, runtime.system
        self._journal: JournalActor | None = runtime.journal
        self._core = runtime.core
        #: Applied in order to each callable handler at subscribe time, as
        #: ``wrap(handler, subscription_id, pattern) -> handler``; a wrapper
        #: keeps an ``async def`` handler ``async def``.  ``actors.otel`` uses it.
        self.handler_wrappers: list[HandlerWrapper] = self._core.handler_wrappers
        self._router = self._core.router
        self._router_mailbox = self._core.inbox
        self._publisher = self._core.publisher
        forks.track(self)
        self._size_check: Callable[[Event], None] | None = None
        self.node: Node | None = None
        if node is not None:
            self._start_node(node)
        self._requests = RequestClient(
            subscribe=self.subscribe,
            prepare=self._prepare,
            publish=self._publish_built,
            publish_remote=self.publish_remote,
            router=self._router_mailbox,
            bridge=lambda: self._bridge,
            inside=lambda: handler_of(self._core.router),
        )

    def _start_node(self, config: NodeConfig) -> None:
        from actors._cluster.node import start_node  # noqa: PLC0415 - zmq only on a node

        self._bridge, self.node, self._size_check, self._settle_node = start_node(
            config,
            router=self._router,
            journal=self._journal.actor_inbox if self._journal is not None else None,
            numbering=self._storage.numbering if self._storage is not None else None,
            inject=self._inject,
            flush=self.flush,
            publish=self.publish,
            metrics=self.metrics,
            prepare=prepare_event,  # the node checks the size as its target stamps the event
            check_open=self._check_open,
        )

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
            raise BusClosedError(self._closed_why)
        if self._read_only:
            self._refuse_write()
        event = prepare_event(event_or_type, data, fields)
        if self._size_check is not None:  # as _prepare does, one call fewer per event
            self._size_check(event)
        return self._publisher.publish(event, owned=event is not event_or_type)

    def publish_many(self, events: Iterable[Event]) -> list[BusFuture[Event]]:
        """Publish a batch of events in order, as one message to the router.

        Return one future per event.  Validation, rate limiting and the
        closed check apply to the whole batch before anything is published.
        A batch that fits the room of the ``BLOCK`` mailboxes that want its
        events is admitted whole; a larger one goes in pieces, each waiting
        for room (``docs/architecture.md``): if the first piece is refused
        this raises ``BackpressureError`` and nothing is published, if a later
        one is, its futures and the rest fail with it.
        """
        events = checks.check_events(events)
        if self._closed:
            raise BusClosedError(self._closed_why)
        if self._read_only:
            self._refuse_write()
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

    @staticmethod
    def _refuse_write() -> None:
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
        timeout: float | None = None,
        retry_backoff: float | None = None,
        retries: int | None = None,
    ) -> Subscription:
        """Subscribe ``handler`` to the event types ``pattern`` matches.

        Every matching event published after this returns reaches the handler,
        in publish order.  ``handler`` is a callable taking an ``Event`` (a
        plain function, run on the dispatcher; or ``async def``, run on the
        event loop it was subscribed from) or a ``pykka.ActorRef`` (events
        arrive as messages).  ``capacity`` and ``overflow`` default to the
        config's ``buffer_size`` and ``overflow``.  ``dedicated_thread=True``
        gives the subscription a thread of its own, for handlers that block
        on I/O.  Handler policies (docs/architecture.md): ``timeout`` seconds
        per call (reported; an async call is cancelled), ``retries`` (default
        ``handler_retries``) after a ``retry_backoff`` (default 0.1 s,
        doubling, full jitter).  Never blocks, except that a ``durable``
        subscription waits for the journal to load its checkpoint (one
        router turn and one read; docs/persistence.md).  Raises ``InvalidPatternError``,
        ``TypeError``/``ValueError`` naming a bad argument, ``BusClosedError``.
        """
        checks.check_subscribe(
            pattern, handler, filter, capacity, overflow, from_sequence, durable, dedicated_thread
        )
        checks.check_policy(timeout, retry_backoff, retries)
        if self._closed:
            raise BusClosedError(self._closed_why)
        if durable is not None and self._read_only:  # its checkpoint could never be saved
            raise JournalError(
                "this bus opened its journal read-only (EventConfig(read_only=True)): "
                "a durable subscription is refused (use from_sequence)"
            )
        return self._core.subscribe(
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
        result = first_copies(events)  # an id published twice: one event, as merged
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
        exception from ``handler`` stops the replay and propagates; once
        ``close`` begins, the replay raises ``BusClosedError`` before its next
        event (or at once, while it waits for the spacing).  Returns the
        number of events replayed.
        """
        checks.check_replay(query, handler, speed, page_size)
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        head = None if query.descending or query.limit is not None else head_of(self.query(HEAD))
        return replay_events(
            self._iter_query(query, page_size, head), handler, speed, self._closing
        )

    def _iter_query(
        self, query: EventQuery, page_size: int, ceiling: int | None = None
    ) -> Iterator[Event]:
        return iter_query(self.query, query, page_size, ceiling)

    def trace(self, correlation_id: uuid.UUID, *, timeout: float | None = 30.0) -> Trace:
        """Return the causal ``Trace`` of ``correlation_id`` (see ``get_correlated``)."""
        checks.check_correlated(correlation_id, timeout)
        return Trace(correlation_id, self.get_correlated(correlation_id, timeout=timeout))

    # -- flow ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event published so far is handled (or dropped) and recorded.

        Raises ``FutureTimeoutError`` after ``timeout`` seconds,
        ``BusClosedError`` after ``close``, and ``RuntimeError`` when called
        from inside a handler of this bus or a subscription's filter (it
        would wait for itself).
        """
        checks.check_timeout("timeout", timeout)
        self._check_open()
        self._flush(timeout)

    def _flush(self, timeout: float | None) -> None:
        self._core.flush(timeout)

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self) -> BusMetrics:
        """Return a snapshot of the bus's figures (the actors are asked for theirs)."""
        if self._forked_from is not None:  # its actors are in the parent: none would answer
            raise BusClosedError(self._closed_why)
        snapshot = self._core.metrics(
            JournalFigures(*self._journal.figures()) if self._journal is not None else None,
            self._bridge.statistics() if self._bridge is not None else None,
        )
        return replace(
            snapshot,
            blocked_handlers=sum(1 for s in snapshot.per_subscription if s.blocked),
            handler_threads=self._dispatcher.threads,
            journal_lost_events=self._journal_lost,
        )

    def prometheus(self) -> str:
        """Return the metrics in the Prometheus text exposition format."""
        return to_prometheus(self.metrics())

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` (Prometheus text) and ``/healthz`` on ``host:port``; see
        ``actors._metrics_http``.  Returns the running server (``.port``, ``.url``,
        ``.close()``); closing the bus does not stop it.  ``OSError`` if the port is taken.
        """
        from actors._metrics_http import MetricsServer  # noqa: PLC0415 - http.server on demand

        self._check_open()  # one started before ``close`` goes on (``/healthz`` says closed)
        return MetricsServer(self, port, host)

    def remote_metrics(
        self, node: str, *, timeout: float | None = 10.0
    ) -> tuple[BusMetrics, dict[str, float]]:
        """Ask the connected node ``node`` for its figures (``llmspell-events top``).

        Returns its ``BusMetrics`` and, per peer it knows, the seconds since it
        last heard from it.  Raises ``EventBusError`` on a bus that is not a
        node, ``BridgeError`` if the node does not answer within ``timeout``.
        """
        checks.check_remote(node, timeout)
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
