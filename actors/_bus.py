"""The facade: ``EventBus`` wires the actors together and is what users hold.

::

    publish() ──Publish──▶ RouterActor ──offer──▶ SubscriberActor mailboxes ──▶ handlers
                               │
                               └──Record──▶ CorrelationActor, JournalActor, bridge

Every actor runs on the bus's own ``Dispatcher`` (``EventConfig.threads``
threads) unless a subscription asks for a dedicated thread.
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
from actors._core.subscriber import DeadLetter, Handler, Subscription, current_event
from actors._core.wiring import Core, JournalFigures, merge_events, start_actor
from actors._errors import BusClosedError, EventBusError, InvalidEventError
from actors._journal.actor import JournalActor, enforce_retention, first_free_sequence
from actors._journal.storage import RocksStorage, Storage
from actors._model.config import EventConfig, NodeConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import FilterLike
from actors._model.metrics import BusMetrics, to_prometheus
from actors._model.query import EventQuery
from actors._model.trace import Trace
from actors._runtime.dispatcher import Dispatcher
from actors._runtime.future import BusFuture

__all__ = ["EventBus", "PersistentEventBus"]

logger = logging.getLogger("actors.bus")

if TYPE_CHECKING:
    from actors._cluster.bridge import Bridge


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
        self.config = config or EventConfig()
        if node is not None:
            name = node.name
        self.name = name
        self.node = node
        cfg = self.config
        self._closed = False
        self._close_lock = threading.Lock()

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
            first_sequence=first_sequence,
            journal=self._journal.actor_inbox if self._journal is not None else None,
        )
        self._router = self._core.router
        self._router_mailbox = self._core.inbox
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

    @property
    def core(self) -> Core:
        """Return the bus's core (router, subscribers): for ``AsyncEventBus`` and tools.

        Not a stable API: its methods return ``BusFuture``s instead of waiting.
        """
        return self._core

    def wait_for_peers(self, names: Sequence[str], timeout: float | None = 30.0) -> bool:
        """Block until the nodes ``names`` acknowledged this node's subscriptions.

        From then on every event they publish that a local pattern matches
        arrives here.  Flushes the bus first.  Returns False after
        ``timeout``; raises ``EventBusError`` on a bus that is not a node.
        """
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
        if self._bridge is None:
            raise EventBusError("this bus is not connected to other nodes (no NodeConfig)")
        self._check_open()
        event = prepare_event(event_or_type, data, fields)
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
        if self._bridge is None:
            raise EventBusError("this bus is not connected to other nodes (no NodeConfig)")
        return self._bridge.linked_nodes(timeout)

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
        event = prepare_event(event_or_type, data, fields)
        return self._core.publisher.publish(event, owned=event is not event_or_type)

    def publish_many(self, events: Iterable[Event]) -> list[BusFuture[Event]]:
        """Publish a batch of events in order, as one message to the router.

        Return one future per event.  Validation, rate limiting, the ``BLOCK``
        wait and the closed check apply to the whole batch before anything is
        published.
        """
        if self._closed:
            raise BusClosedError("the bus is closed")
        prepared = [prepare_event(e, None, {}) for e in events]
        if not prepared:
            return []
        return self._core.publisher.publish_batch(prepared)

    def publish_correlated(
        self, event_type: str, data: Any, correlation_id: uuid.UUID, **fields: Any
    ) -> BusFuture[Event]:
        """Publish ``event_type`` with ``data`` as part of the workflow ``correlation_id``."""
        return self.publish(event_type, data, correlation_id=correlation_id, **fields)

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

    def dead_letters(self) -> list[DeadLetter]:
        """Return the dead letters: from the journal where persistent, else the recent ones kept."""
        if self._journal is None:
            return self._core.dead_letters()
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
        self._core.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Drain, flush and stop every actor.  Idempotent.

        Events published before ``close`` are handled first (unless called
        from inside a handler, where it cannot wait).  Afterwards calls raise
        ``BusClosedError``.
        """
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
        subs = self._core.take_subscribers()
        # Subscribers, router and correlation first; the journal last, so the
        # router's final records reach it.  The journal closes its storage.
        if self._bridge is not None:
            self._bridge.close(timeout if wait else 0)
        first = [a.actor_ref for a in subs] + self._core.refs()
        self._stop_refs(first, wait, timeout)
        if self._journal is not None:
            self._stop_refs([self._journal.actor_ref], wait, timeout)
            self._journal.actor_dispatcher.shutdown(timeout if wait else 0)
        for actor in subs:
            if actor.actor_dispatcher is not self._dispatcher:
                actor.actor_dispatcher.shutdown(timeout if wait else 0)
        self._dispatcher.shutdown(timeout if wait else 0)
        self._core.stop_loop()

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

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self) -> BusMetrics:
        """Return a snapshot of the bus's figures (the actors are asked for theirs)."""
        return self._core.metrics(
            self._journal_figures(),
            self._bridge.statistics() if self._bridge is not None else None,
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

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name or ''} {state}>"


class PersistentEventBus(EventBus):
    """An ``EventBus`` whose events persist to a RocksDB journal.

    Requires ``EventConfig.persistence_path``.  Raises ``JournalLockedError``
    when another process holds the journal, ``JournalError`` when it cannot
    be opened.
    """

    def __init__(
        self, config: EventConfig, *, name: str | None = None, node: NodeConfig | None = None
    ) -> None:
        if config is None or config.persistence_path is None:
            raise ValueError("PersistentEventBus needs EventConfig(persistence_path=...)")
        super().__init__(config, name=name, node=node)
