"""The router actor: sequence every event, resolve patterns, forward.

The router owns the subscription table (a segment trie with a resolved-type
cache) and the bus's one sequence.  Publishers put ``Publish`` messages in its
mailbox; on its turn it takes a batch, and for each event:

1. resolves the subscriptions whose pattern matches (one dict lookup when cached)
   and applies their filters;
2. checks the ``REJECT`` mailboxes for room: a full one fails the publish with
   ``BackpressureError`` (the event goes nowhere and takes no sequence);
3. assigns the next sequence, offers the event to each mailbox, and collects
   it for the recorders (journal, correlation actor, bridge), which receive one
   ``Record`` per turn.  A ``BLOCK`` mailbox that is now full is marked full in
   the ``BlockGuard``, where publishers look before sending (see
   ``actors._core.backpressure``): the router itself never waits for one.  It
   parks only while the journal lags (``actors._runtime.backlog``).

Subscriptions, flushes and queries travel through the same FIFO mailbox, so
they are ordered with the publishes around them.  The router also keeps the
dead letters of a bus without journal (``DeadLettered``) and answers for its
counters (``GetRouterFigures``): each of them has this one writer.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence, Set
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from actors._codec.events import restamp_in_place, restamp_wire
from actors._core.backpressure import BlockGuard
from actors._core.messages import (
    Barrier,
    Closing,
    CorrelatedEvents,
    DeadLetter,
    DeadLettered,
    Flush,
    FlushTaken,
    Forward,
    GetCorrelated,
    GetDeadLetters,
    GetRouterFigures,
    Publish,
    PublishBatch,
    Record,
    Relieved,
    RoomFreed,
    RouterFigures,
    Subscribe,
    Unsubscribe,
)
from actors._core.routes import Route, accepts
from actors._core.watermarks import claim_relief, relief_sent, start_of
from actors._errors import BackpressureError, BusClosedError
from actors._model.config import OverflowStrategy
from actors._model.event import (
    Event,
    stamp_in_place,
    stamped,
)
from actors._model.metrics import RateMeter
from actors._model.topics import Pattern, TopicTrie
from actors._runtime.backlog import Backlog
from actors._runtime.dispatcher import DispatchedActor, FifoMailbox
from actors._runtime.future import Latch
from actors._runtime.mailbox import STARTED
from actors._runtime.pool import Scheduler

if TYPE_CHECKING:
    from actors._runtime.future import BusFuture

__all__ = ["RouterActor"]

logger = logging.getLogger("actors.router")

_PLAN_CACHE_LIMIT = 100_000

# Once batches brought this many events since the last offer, the lanes are
# offered what is pending (after every 256 events of a batch at most): a lane's
# pending list holds at most 256 single publishes plus 511 events of batches.
_OFFER_EVERY = 256

_DEAD_LETTER = "$bus.deadletter"  # the journal reads them by this type (DEAD_LETTER_TYPE)

# A plan: the routes of one event type, whether any has a filter, whether any
# is REJECT (checked before), whether any is BLOCK (marked full after).
_Plan = tuple[tuple[Route, ...], bool, bool, bool]


def _barrier_passed(
    passed: Callable[[Any], None], mailbox: Any, count_down: Callable[[], None]
) -> None:
    passed(mailbox)
    count_down()


class RouterActor(DispatchedActor):
    """Sequence, route and record events (see the module docstring)."""

    def __init__(
        self,
        *,
        dispatcher: Scheduler,
        capacity: int,
        origin: str | None,
        first_sequence: int = 1,
        recorders: list[FifoMailbox] | None = None,
        durable_recorder: FifoMailbox | None = None,
        correlation: FifoMailbox | None = None,
        guard: BlockGuard | None = None,
        dead_letter_limit: int = 10_000,
        journal_backlog: Backlog | None = None,
    ) -> None:
        super().__init__(dispatcher=dispatcher)
        self.actor_inbox.capacity = capacity
        self.origin = origin
        self.next_sequence = first_sequence
        self.guard = guard if guard is not None else BlockGuard()
        self._trie: TopicTrie[Route] = TopicTrie()
        self._routes: dict[str, tuple[Route, Pattern]] = {}
        self._pattern_counts: Counter[str] = Counter()  # the distinct patterns of ``_routes``
        self._plans: dict[str, _Plan] = {}
        # Recorders get every accepted event; the durable one (the journal) also
        # the publish futures to resolve, and it parks this actor when it lags.
        self._recorders = list(recorders or [])
        self._durable = durable_recorder
        self._backlog = journal_backlog
        self._correlation = correlation
        self._batch: list[Event] = []
        # Lanes with events routed this turn but not offered yet (each mailbox's
        # ``pending``), and the publish futures to resolve once they are (see
        # ``_offer_pending``); ``_resolved`` fills only while ``_touched`` does.
        self._touched: list[Route] = []
        self._resolved: list[tuple[Callable[[Any], None], Any]] = []  # (future.set, event)
        self._unoffered = 0  # events of batches routed since the last offer
        self._batch_futures: list[BusFuture[Event] | None] = []
        self._published = 0
        self._rejected = 0
        self._meter = RateMeter()
        self._dead: deque[DeadLetter] = deque(maxlen=dead_letter_limit)
        self._dead_count = 0
        self._final: tuple[RouterFigures, list[DeadLetter]] | None = None
        self.final_ready = threading.Event()  # set once ``final`` is
        self.end_lock, self.ended = threading.RLock(), False  # ``ended`` set under it: ``put``
        self._flushes: list[BusFuture[None]] = []  # not done yet: failed if the router stops
        self._closing = False  # set by Closing: later publishes are refused
        # Told the local patterns after every change, on the router's thread
        # (the bridge forwards them to peers as subscriptions).
        self.route_listeners: list[Callable[[list[str]], None]] = []
        self.stop_listeners: list[Callable[[], None]] = []  # called once it has stopped

    # -- wiring (before the actor runs) ----------------------------------------

    def add_recorder(self, mailbox: FifoMailbox) -> None:
        """Forward every accepted event to ``mailbox`` (before the actor runs)."""
        self._recorders.append(mailbox)

    # -- message handling -----------------------------------------------------

    def _on_message(self, message: Any) -> None:
        if type(message) is Publish:
            if self._closing and not message.internal:
                self._refuse_closed((message.future,), message.routed)
                return
            self._route(
                message.event, message.future, message.published_at, message.internal, message.owned
            )
            if message.routed is not None:
                self._routed(message.routed)
        elif type(message) is PublishBatch:
            if self._closing and not message.internal:
                self._refuse_closed(message.futures, message.routed)
                return
            route = self._route
            events = message.events
            futures = message.futures
            at, internal, owned = message.published_at, message.internal, message.owned
            n = len(events)
            for first in range(0, n, _OFFER_EVERY):
                last = min(n, first + _OFFER_EVERY)
                for i in range(first, last):
                    route(events[i], futures[i], at, internal, owned)
                self._unoffered += last - first
                if self._unoffered >= _OFFER_EVERY:
                    self._offer_pending()  # each lane's pending list stays short
            if message.routed is not None:
                self._routed(message.routed)
        else:
            if self._touched:
                self._offer_pending()  # whatever comes next sees every event before it delivered
            self._on_control(message)

    def _on_control(self, message: Any) -> None:
        """Handle a message that is not a publish (the lanes have had their events)."""
        if type(message) is Subscribe:
            self._subscribe(message)
        elif type(message) is Unsubscribe:
            self._unsubscribe(message.id)
            if message.then is not None:
                message.then()
        elif type(message) is RoomFreed:
            self.guard.clear(message.gate)
        elif type(message) is Flush:
            self._flush(message.future, message.taken, message.only)
        elif type(message) is Closing:
            self._closing = True
            self.guard.close()
        elif type(message) is Forward:
            self._send_records()
            message.target.put(message.message)
        elif type(message) is GetCorrelated:
            self._send_records()
            if self._correlation is None:
                message.future.set(CorrelatedEvents([], False))
            else:
                self._correlation.put(message)
        elif type(message) is Relieved:
            entry = self._routes.get(message.id)
            if entry is not None:
                self._backpressure_relieved(entry[0])  # unless a start announced it first
            else:  # unsubscribed meanwhile: announced as it was sent
                self._emit("$bus.backpressure.relieved", relief_sent(message))
        elif type(message) is DeadLettered:
            self._dead_lettered(message.letter)
        elif type(message) is GetDeadLetters:
            message.future.set(list(self._dead))
        elif type(message) is GetRouterFigures:
            message.future.set(self._figures())
        elif type(message) is Barrier:
            self._send_records()
            message.callback()
        else:
            super()._on_message(message)

    def _route(
        self,
        event: Event,
        future: BusFuture[Event] | None,
        published_at: float,
        internal: bool = False,
        owned: bool = False,
    ) -> None:
        """Route one event.

        ``internal`` events (the bus's own, and events from peers, which their
        origin already accepted) skip the REJECT check: a full REJECT mailbox
        drops its oldest event for them instead.
        """
        plan = self._plans.get(event.event_type)
        if plan is None:
            plan = self._plan(event.event_type)
        targets, filtered, rejecting, blocking = plan
        if targets:
            if filtered:
                targets = tuple(r for r in targets if r.predicate is None or accepts(r, event))
            if rejecting and not internal:
                for route in targets:
                    if (
                        route.mailbox.overflow is OverflowStrategy.REJECT
                        and not route.mailbox.has_room()
                    ):
                        self._rejected += 1
                        if future is not None:
                            error = BackpressureError(
                                f"subscription {route.id} ({route.pattern!r}) is full "
                                f"({route.mailbox.capacity} queued); event rejected"
                            )
                            if self._touched:  # in the order published, behind the offer
                                self._resolved.append((future.set_exception, error))
                            else:
                                future.set_exception(error)
                        return
        seq = self.next_sequence
        self.next_sequence = seq + 1
        # A local publish is this node's event, whatever origin and sequence it
        # carried; an event from another node (internal) keeps its origin and
        # the bytes that arrived, for the journal.
        if internal and event.origin is not None:
            if owned:  # decoded by the bus and seen by no one yet: stamp in place
                stamped_event = event
                restamp_in_place(event, seq)
            else:
                stamped_event = stamped(event, seq, event.origin)
                restamp_wire(event, stamped_event)
        elif owned:  # built by the bus and seen by no one yet: stamp in place
            stamped_event = event
            stamp_in_place(event, seq, self.origin)
        else:
            stamped_event = stamped(event, seq, self.origin)
        started = None
        if targets:
            item = (stamped_event, published_at)
            for route in targets:
                mailbox = route.mailbox
                if route.strict:  # REJECT or BLOCK: room counts event by event
                    if mailbox.offer(item) & STARTED:
                        started = [route] if started is None else [*started, route]
                else:  # offered with the rest of the turn's (_offer_pending)
                    pending = mailbox.pending
                    if not pending:
                        self._touched.append(route)
                    pending.append(item)
            if blocking:
                for route in targets:
                    if route.blocks and not route.mailbox.has_room():
                        self._mark_full(route)
        self._published += 1
        self._batch.append(stamped_event)
        if self._durable is not None:
            self._batch_futures.append(future)
        elif future is not None:
            if self._touched:  # after the offer, in sequence order (``_offer_pending``)
                self._resolved.append((future.set, stamped_event))
            else:
                future.set(stamped_event)
        if started is not None:
            # After this event is recorded: the journal takes sequences in order.
            for route in started:
                self._backpressure_started(route)

    def _backpressure_relieved(self, route: Route) -> None:
        relief = claim_relief(route)
        if relief is not None:
            self._emit("$bus.backpressure.relieved", relief)

    def _backpressure_started(self, route: Route) -> None:
        relief = claim_relief(route, route.mailbox.start_reliefs)  # one before it goes first
        if relief is not None:
            self._emit("$bus.backpressure.relieved", relief)
        self._emit("$bus.backpressure.started", start_of(route))

    def _plan(self, event_type: str) -> _Plan:
        """Resolve ``event_type`` once: its routes, and which checks they need.

        Cached per type (one dict lookup per event afterwards); the cache is
        cleared on every subscribe and unsubscribe, and when it grows large.
        """
        targets = self._trie.match(event_type)
        plan = (
            targets,
            any(r.predicate is not None for r in targets),
            any(r.mailbox.overflow is OverflowStrategy.REJECT for r in targets),
            any(r.blocks for r in targets),
        )
        if len(self._plans) >= _PLAN_CACHE_LIMIT:
            self._plans.clear()
        self._plans[event_type] = plan
        return plan

    def _emit(self, event_type: str, data: dict[str, Any], **fields: Any) -> Event:
        """Publish a ``$bus`` event from inside the router (never blocks, never rejected)."""
        event = Event(event_type=event_type, data=data, source="bus", **fields)
        self._route(event, None, time.perf_counter(), internal=True, owned=True)
        return event

    # -- BLOCK: mark full, never wait -------------------------------------------

    def _mark_full(self, route: Route) -> None:
        gate = self.guard.mark_full(route)
        if gate is None:
            return  # already marked
        inbox = self.actor_inbox

        def freed() -> None:  # on the subscriber's thread
            gate.room.set()
            inbox.put(RoomFreed(gate))

        if not route.mailbox.wait_for_room(freed):
            self.guard.clear(gate)  # room appeared meanwhile

    # -- dead letters ---------------------------------------------------------

    def _dead_lettered(self, letter: DeadLetter) -> None:
        event = letter.event
        if event.event_type == _DEAD_LETTER:  # announcing this would feed a loop
            self._dead_count += 1
            self._dead.append(letter)  # kept in memory; its subscriber logged it
            return
        announcement = self._emit(
            _DEAD_LETTER,
            {
                "subscription": letter.subscription_id,
                "pattern": letter.pattern,
                "event": event.to_dict(),
                "error_type": letter.error_type,
                "error": letter.error,
                "attempts": letter.attempts,
            },
            correlation_id=event.correlation_id,
            causation_id=event.id,
        )
        self._dead_count += 1
        self._dead.append(replace(letter, letter=announcement))

    # -- subscriptions --------------------------------------------------------

    def _subscribe(self, message: Subscribe) -> None:
        if message.cancelled is not None and message.cancelled():
            return  # ended before it joined: a route now would never be removed
        route = message.route
        pattern = Pattern.parse(route.pattern)
        self._routes[route.id] = (route, pattern)
        self._pattern_counts[route.pattern] += 1
        self._trie.add(pattern, route)
        self._plans.clear()
        if message.on_subscribed is not None:  # where live delivery starts; what it says to
            then = message.on_subscribed(self.next_sequence)  # forward goes before later mail
            if then is not None:
                self._on_control(then)  # a Forward, as any other
        self._routes_changed()

    def _unsubscribe(self, sub_id: str) -> None:
        entry = self._routes.pop(sub_id, None)
        if entry is None:
            return
        route, pattern = entry
        counts = self._pattern_counts
        counts[route.pattern] -= 1
        if not counts[route.pattern]:
            del counts[route.pattern]
        self._trie.remove(pattern, route)
        self._plans.clear()
        self.guard.clear_route(sub_id)
        self._routes_changed()

    def _routes_changed(self) -> None:
        if not self.route_listeners:
            return
        # Kept up to date by subscribe/unsubscribe: a copy per change, no walk of every route.
        patterns = list(self._pattern_counts)
        for listener in self.route_listeners:
            try:
                listener(patterns)
            except Exception:
                logger.exception("route listener failed")

    # -- flush ----------------------------------------------------------------

    def _flush(
        self, future: BusFuture[None], taken: FlushTaken | None = None, only: Set[str] | None = None
    ) -> None:
        self._send_records()
        mailboxes = [r.mailbox for r, _ in self._routes.values() if only is None or r.id in only]
        recorders = list(self._recorders)
        if self._durable is not None:
            recorders.append(self._durable)
        latch = Latch(len(mailboxes) + len(recorders), lambda: future.set(None))
        self._flushes = [f for f in self._flushes if not f.done()]
        self._flushes.append(future)
        passed = None if taken is None else taken(mailboxes)  # before any barrier can pass
        for mailbox in mailboxes:
            if passed is None:
                mailbox.add_barrier(latch.count_down)
            else:
                mailbox.add_barrier(partial(_barrier_passed, passed, mailbox, latch.count_down))
        for recorder in recorders:
            recorder.put(Barrier(latch.count_down))

    def _routed(self, routed: threading.Event) -> None:
        """Tell a waiting publisher its events are routed, and recorded already.

        The records go out first (not at the end of the turn): a publisher
        paced by a node's bridge then finds the bridge's mailbox marked
        undrained by its own events, never drained from before them.
        """
        self._send_records()
        routed.set()

    # -- per turn -------------------------------------------------------------

    def _offer_pending(self) -> None:
        """Offer each lane the events routed to it since the last call, in one go.

        Then resolve the publish futures waiting for them, so a resolved
        publish always has its event in every mailbox it was routed to.  A
        lane that crosses its high-water mark announces it after the events
        that made it (the announcement may itself be routed: hence the loop).
        """
        self._unoffered = 0
        touched = self._touched
        while touched:  # a lane is taken off only as it is offered (the order of lanes is free)
            route = touched.pop()
            mailbox = route.mailbox
            items = mailbox.pending
            mailbox.pending = []
            if mailbox.offer_many(items) & STARTED:
                self._backpressure_started(route)  # may route to lanes: appended to ``touched``
        resolved = self._resolved
        if resolved:
            self._resolved = []
            for complete, outcome in resolved:
                complete(outcome)

    def _send_records(self) -> None:
        self._offer_pending()
        if not self._batch:
            return
        events = self._batch
        self._batch = []
        self._meter.add(len(events))
        record = Record(events)
        for recorder in self._recorders:
            recorder.put(record)
        if self._durable is not None:
            futures = self._batch_futures
            self._batch_futures = []
            self._durable.put(Record(events, futures))
            if self._backlog is not None:
                self._backlog.add(len(events), self._park, self._unpark)

    def _on_turn_end(self) -> bool:
        self._send_records()
        return False

    def _on_stopped(self) -> None:
        # Published once, for whoever asks after the router stopped (readers
        # that find it stopped wait for ``final_ready``).
        self._final = (self._figures(), list(self._dead))
        self.final_ready.set()
        self._send_records()
        self.guard.release_all()
        # A flush still waiting (close gave up on a handler that never returned)
        # would wait for ever: it is refused.
        flushes, self._flushes = self._flushes, []
        for future in flushes:
            future.set_exception(BusClosedError("the bus was closed before the flush finished"))
        for listener in self.stop_listeners:
            listener()
        # What came while it stopped, before a listener sent it elsewhere (a
        # subscriber's last checkpoint goes straight to the journal after).
        with self.end_lock:
            self.ended = True
            for message in self.actor_inbox.take(sys.maxsize):
                self._on_dropped_at_stop(message)

    def put(self, message: object, /) -> None:  # a subscriber's ``Inbox``
        """Queue ``message``; once the router ended, handle it here and now."""
        with self.end_lock:
            if not self.ended:
                self.actor_inbox.put(message)
                return
            self._on_dropped_at_stop(message)

    def _on_dropped_at_stop(self, message: Any) -> None:
        # Nobody may wait for ever on a message the stopped router never handles.
        if type(message) is Forward:  # to the journal or the correlation actor, which stop after
            self._send_records()  # the records of what it covers go first, as in a turn
            message.target.put(message.message)
        elif type(message) is GetRouterFigures:
            message.future.set(self._figures())
        elif type(message) is GetDeadLetters:
            message.future.set(list(self._dead))
        elif type(message) is Publish:
            self._refuse_closed((message.future,), message.routed)
        elif type(message) is PublishBatch:
            self._refuse_closed(message.futures, message.routed)
        elif type(message) is Flush or type(message) is GetCorrelated:
            message.future.set_exception(BusClosedError("the bus was closed"))
        elif type(message) is DeadLettered:  # decided by a handler close gave up on
            self._dead_count += 1  # counted and kept, as its subscription counts it; not announced
            self._dead.append(message.letter)
            self._final = (self._figures(), list(self._dead))

    @staticmethod
    def _refuse_closed(
        futures: Sequence[BusFuture[Event] | None], routed: threading.Event | None
    ) -> None:
        """Fail the futures of a publish that came after ``close`` began: not published."""
        error = BusClosedError("the bus was closed before the event was published")
        for future in futures:
            if future is not None:
                future.set_exception(error)
        if routed is not None:
            routed.set()

    # -- figures ----------------------------------------------------------------

    def _figures(self) -> RouterFigures:
        meter = self._meter
        current = meter.current()
        return RouterFigures(
            published=self._published,
            rejected=self._rejected,
            dead_letters=self._dead_count,
            events_per_second=current,
            peak_events_per_second=max(meter.peak(), current),
            next_sequence=self.next_sequence,
        )

    @property
    def final(self) -> tuple[RouterFigures, list[DeadLetter]] | None:
        """Return the figures and dead letters the router had when it stopped (None before)."""
        return self._final
