"""The router actor: sequence every event, resolve patterns, forward.

The router owns the subscription table (a segment trie with a resolved-type
cache) and the bus's one sequence.  Publishers put ``Publish`` messages in its
mailbox; on its turn it takes a batch, and for each event:

1. resolves the subscriptions whose pattern matches (one dict lookup when cached)
   and applies their filters;
2. checks the strict mailboxes (``REJECT``, ``BLOCK``) for room: a full
   ``REJECT`` mailbox fails the publish with ``BackpressureError`` (the event
   goes nowhere and takes no sequence); a full ``BLOCK`` mailbox parks the
   router until that subscriber drains, which fills the router's own bounded
   mailbox and so blocks publishers;
3. assigns the next sequence, offers the event to each mailbox, and collects
   it for the recorders (journal, correlation actor, bridge), which receive one
   ``Record`` per turn.

Subscriptions, flushes and queries travel through the same FIFO mailbox, so
they are ordered with the publishes around them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actors._core.messages import (
    Barrier,
    Flush,
    Forward,
    GetCorrelated,
    Publish,
    PublishBatch,
    Record,
    Relieved,
    Route,
    Subscribe,
    Unsubscribe,
)
from actors._errors import BackpressureError
from actors._model.config import OverflowStrategy
from actors._model.event import Event, _set_origin, _set_sequence
from actors._model.metrics import RateMeter
from actors._model.topics import Pattern, TopicTrie
from actors._runtime.dispatcher import DispatchedActor, Dispatcher, FifoMailbox
from actors._runtime.mailbox import STARTED

if TYPE_CHECKING:
    from actors._runtime.future import BusFuture

__all__ = ["RouterActor"]

logger = logging.getLogger("actors.router")

_PLAN_CACHE_LIMIT = 100_000


class _Latch:
    """Call ``done`` after ``count_down`` was called ``n`` times (from any threads)."""

    __slots__ = ("_done", "_lock", "_n")

    def __init__(self, n: int, done: Callable[[], None]) -> None:
        self._n = n
        self._done = done
        self._lock = threading.Lock()
        if n == 0:
            done()

    def count_down(self) -> None:
        with self._lock:
            self._n -= 1
            fire = self._n == 0
        if fire:
            self._done()


class RouterActor(DispatchedActor):
    """Sequence, route and record events (see the module docstring)."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        capacity: int,
        origin: str | None,
        first_sequence: int = 1,
        recorders: list[FifoMailbox] | None = None,
        durable_recorder: FifoMailbox | None = None,
        correlation: FifoMailbox | None = None,
    ) -> None:
        super().__init__(dispatcher=dispatcher)
        self.actor_inbox.capacity = capacity
        self.origin = origin
        self.next_sequence = first_sequence
        self._trie: TopicTrie[Route] = TopicTrie()
        self._routes: dict[str, tuple[Route, Pattern]] = {}
        self._plans: dict[str, tuple[tuple[Route, ...], bool, bool]] = {}
        # Recorders get every accepted event; the durable one (a journal with
        # sync durability) also gets the publish futures to resolve.
        self._recorders = list(recorders or [])
        self._durable = durable_recorder
        self._correlation = correlation
        self._batch: list[Event] = []
        self._batch_futures: list[BusFuture[Event] | None] = []
        self._blocked_on: Route | None = None
        self.published = 0
        self.rejected = 0
        self.meter = RateMeter()
        self.removed_totals = [0, 0]  # dropped, delivered of unsubscribed routes
        # Told the local patterns after every change (the bridge forwards them
        # to peers as subscriptions).  Called on the router's thread.
        self.route_listeners: list[Callable[[list[str]], None]] = []

    # -- wiring -------------------------------------------------------------

    def add_recorder(self, mailbox: FifoMailbox) -> None:
        """Forward every accepted event to ``mailbox`` (before the actor runs)."""
        self._recorders.append(mailbox)

    def routes(self) -> list[Route]:
        """Return the current routes (read from any thread; a snapshot)."""
        return [r for r, _ in list(self._routes.values())]

    # -- message handling -----------------------------------------------------

    def _on_message(self, message: Any) -> None:
        if type(message) is Publish:
            if not self._route(
                message.event, message.future, message.published_at, message.internal, message.owned
            ):
                self._park_on_blocked(message)
        elif type(message) is PublishBatch:
            self._route_batch(message)
        elif type(message) is Subscribe:
            self._subscribe(message)
        elif type(message) is Unsubscribe:
            self._unsubscribe(message.id)
            if message.then is not None:
                message.then()
        elif type(message) is Flush:
            self._flush(message.future)
        elif type(message) is Forward:
            self._send_records()
            message.target.put(message.message)
        elif type(message) is GetCorrelated:
            self._send_records()
            if self._correlation is None:
                message.future.set(None)
            else:
                self._correlation.put(message)
        elif type(message) is Relieved:
            self._emit(
                "$bus.backpressure.relieved",
                {
                    "subscription": message.id,
                    "pattern": message.pattern,
                    "queued": message.queued,
                    "capacity": message.capacity,
                },
            )
        elif type(message) is Barrier:
            self._send_records()
            message.callback()
        else:
            super()._on_message(message)

    def _route_batch(self, message: PublishBatch) -> None:
        futures = message.futures
        events = message.events
        published_at = message.published_at
        internal = message.internal
        route = self._route
        for i, event in enumerate(events):
            if not route(event, futures[i], published_at, internal):
                # Blocked on a full BLOCK mailbox: the rest waits, as one batch.
                self._park_on_blocked(PublishBatch(events[i:], futures[i:], published_at))
                return

    def _route(
        self,
        event: Event,
        future: BusFuture[Event] | None,
        published_at: float,
        internal: bool = False,
        owned: bool = False,
    ) -> bool:
        """Route one event; return False if the router parked on a full BLOCK mailbox.

        ``internal`` events (the bus's own, and events from peers, which their
        origin already accepted) skip the REJECT/BLOCK check: a full strict
        mailbox drops its oldest event for them instead.
        """
        plan = self._plans.get(event.event_type)
        if plan is None:
            plan = self._plan(event.event_type)
        targets, filtered, strict = plan
        if targets:
            if filtered:
                targets = tuple(r for r in targets if r.predicate is None or _passes(r, event))
            if strict and not internal:
                for route in targets:
                    if route.strict and not route.mailbox.has_room():
                        if route.mailbox.overflow is OverflowStrategy.REJECT:
                            self.rejected += 1
                            if future is not None:
                                future.set_exception(
                                    BackpressureError(
                                        f"subscription {route.id} ({route.pattern!r}) is full "
                                        f"({route.mailbox.capacity} queued); event rejected"
                                    )
                                )
                            return True
                        self._blocked_on = route
                        return False
        seq = self.next_sequence
        self.next_sequence = seq + 1
        if owned:
            # Built by the bus and seen by no one yet: stamp in place.
            stamped = event
            _set_sequence(event, seq)
            if event.origin is None:
                _set_origin(event, self.origin)
        else:
            stamped = event._stamped(seq, event.origin or self.origin)
        started = None
        if targets:
            item = (stamped, published_at)
            for route in targets:
                if route.mailbox.offer(item) & STARTED:
                    started = [route] if started is None else [*started, route]
        self.published += 1
        self._batch.append(stamped)
        if self._durable is not None:
            self._batch_futures.append(future)
        elif future is not None:
            future.set(stamped)
        if started is not None:
            # After this event is recorded: the journal takes sequences in order.
            for route in started:
                self._emit(
                    "$bus.backpressure.started",
                    {
                        "subscription": route.id,
                        "pattern": route.pattern,
                        "queued": route.mailbox.queued,
                        "capacity": route.mailbox.capacity,
                    },
                )
        return True

    def _plan(self, event_type: str) -> tuple[tuple[Route, ...], bool, bool]:
        """Resolve ``event_type`` once: its routes, whether any filters, whether any is strict.

        Cached per type (one dict lookup per event afterwards); the cache is
        cleared on every subscribe and unsubscribe, and when it grows large.
        """
        targets = self._trie.match(event_type)
        plan = (
            targets,
            any(r.predicate is not None for r in targets),
            any(r.strict for r in targets),
        )
        if len(self._plans) >= _PLAN_CACHE_LIMIT:
            self._plans.clear()
        self._plans[event_type] = plan
        return plan

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Publish a ``$bus`` event from inside the router (never blocks, never rejected)."""
        event = Event(event_type=event_type, data=data, source="bus")
        self._route(event, None, time.perf_counter(), internal=True, owned=True)

    # -- BLOCK: park until the full mailbox drains ----------------------------

    def _park_on_blocked(self, message: Publish | PublishBatch) -> None:
        """Park until the mailbox in ``_blocked_on`` has room; ``message`` is retried first."""
        route = self._blocked_on
        assert route is not None
        self._park(requeue=message)
        if not route.mailbox.wait_for_room(self._unblock):
            # Room appeared meanwhile: retry at once (the message is requeued).
            self._blocked_on = None
            self._actor_parked = False

    def _unblock(self) -> None:
        self._blocked_on = None
        self._unpark()

    # -- subscriptions --------------------------------------------------------

    def _subscribe(self, message: Subscribe) -> None:
        route = message.route
        pattern = Pattern.parse(route.pattern)
        self._routes[route.id] = (route, pattern)
        self._trie.add(pattern, route)
        self._plans.clear()
        if message.on_subscribed is not None:
            # Tells a catch-up subscription where live delivery starts.
            message.on_subscribed(self.next_sequence)
        self._routes_changed()

    def _unsubscribe(self, sub_id: str) -> None:
        entry = self._routes.pop(sub_id, None)
        if entry is None:
            return
        route, pattern = entry
        self._trie.remove(pattern, route)
        self._plans.clear()
        if self._blocked_on is route:
            self._unblock()
        self._routes_changed()

    def _routes_changed(self) -> None:
        if not self.route_listeners:
            return
        patterns = sorted({r.pattern for r, _ in self._routes.values()})
        for listener in self.route_listeners:
            try:
                listener(patterns)
            except Exception:
                logger.exception("route listener failed")

    # -- flush ----------------------------------------------------------------

    def _flush(self, future: BusFuture[None]) -> None:
        self._send_records()
        mailboxes = [r.mailbox for r, _ in self._routes.values()]
        recorders = list(self._recorders)
        if self._durable is not None:
            recorders.append(self._durable)
        latch = _Latch(len(mailboxes) + len(recorders), lambda: future.set(None))
        for mailbox in mailboxes:
            mailbox.add_barrier(latch.count_down)
        for recorder in recorders:
            recorder.put(Barrier(latch.count_down))

    # -- per turn -------------------------------------------------------------

    def _send_records(self) -> None:
        if not self._batch:
            return
        events = self._batch
        self._batch = []
        self.meter.add(len(events))
        record = Record(events)
        for recorder in self._recorders:
            recorder.put(record)
        if self._durable is not None:
            futures = self._batch_futures
            self._batch_futures = []
            self._durable.put(Record(events, futures))

    def _on_turn_end(self) -> bool:
        self._send_records()
        return False

    def _on_stopped(self) -> None:
        self._send_records()


def _passes(route: Route, event: Event) -> bool:
    try:
        return bool(route.predicate(event))  # type: ignore[misc]
    except Exception:
        logger.exception("filter of subscription %s raised; event not delivered", route.id)
        return False
