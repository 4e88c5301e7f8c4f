"""Build the core's actor graph and run subscriptions, flushes and metrics on it.

``Core`` holds the router, the correlation actor and the subscribers of one
bus, all on the bus's dispatcher; the facade (``EventBus``) holds a ``Core``
and adds the journal, the bridge and the public signatures.  The journal is
given to the core as two inboxes (records, reads), never as an object.

Which object may hold which (the rest are handles or ports):

- the facade holds the ``Core``, the journal actor and the bridge;
- the ``Core`` holds the router, the correlation actor, every subscriber
  actor, the ``Publisher`` and the ``BlockGuard``;
- the router holds every ``Route`` (so every subscriber mailbox), the
  recorders' inboxes (correlation, journal, bridge) and the guard;
- a subscriber holds only its ``SubscriberPorts`` (the router's inbox, the latency
  window, its id) and, for catch-up, callables that send messages;
- a ``Subscription`` holds its subscriber and an ``Unsubscriber`` port.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import pykka

from actors._core.background import BackgroundLoop, subscribing_loop
from actors._core.backpressure import BlockGuard
from actors._core.catchup import CatchUp, durable_overflow, mark_history
from actors._core.correlator import CorrelationActor
from actors._core.crossing import waiting_for
from actors._core.handling import running_here
from actors._core.messages import (
    CorrelatedEvents,
    DeadLetter,
    Flush,
    FlushTaken,
    Forward,
    GetCorrelated,
    KeepFrom,
    LoadCheckpoint,
    ReadJournal,
    Release,
    RouterFigures,
    SaveCheckpoint,
    Subscribe,
    Unsubscribe,
)
from actors._core.policies import DEFAULT_RETRY_BACKOFF, HandlerPolicy
from actors._core.ports import SubscriberPorts
from actors._core.publishing import ROUTER_CAPACITY, Publisher
from actors._core.ratelimit import TokenBucket
from actors._core.router import RouterActor
from actors._core.router_reads import RouterReads
from actors._core.routes import Route, in_filter
from actors._core.subscriber import (
    Handler,
    SubscriberActor,
    Subscription,
    is_async_handler,
)
from actors._errors import BusClosedError, EventBusError
from actors._model.checks import check_policy
from actors._model.config import EventConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import FilterLike, as_predicate
from actors._model.metrics import (
    BridgeStatistics,
    BusMetrics,
    LatencyWindow,
    SubscriptionStatistics,
)
from actors._model.query import EventQuery
from actors._model.topics import Pattern
from actors._runtime.backlog import Backlog
from actors._runtime.dispatcher import DispatchedActor, Dispatcher, FifoMailbox
from actors._runtime.future import BusFuture, Latch
from actors._runtime.pool import Scheduler
from actors._runtime.timers import Timers

__all__ = ["Core", "HandlerWrapper", "JournalFigures", "start_actor"]

_sub_ids = itertools.count(1)

# wrap(handler, subscription_id, pattern) -> handler; see ``EventBus.handler_wrappers``.
HandlerWrapper = Callable[[Callable[[Event], Any], str, str], Callable[[Event], Any]]


class JournalFigures(NamedTuple):
    """What the facade reports of its journal in ``metrics()``."""

    written: int = 0
    write_latency: float | None = None
    size_bytes: int = 0
    corrupt_records: int = 0


def start_actor(actor: DispatchedActor) -> None:
    """Register and start an actor built directly (keeps the object, as start() would not)."""
    actor.actor_start()


def checkpoint_key(name: str) -> str:
    """The journal key of durable subscription ``name``'s checkpoint."""
    return f"sub:{name}"


class Core:
    """The router, correlation and subscriber actors of one bus (see the module docstring)."""

    def __init__(
        self,
        config: EventConfig,
        *,
        name: str | None,
        dispatcher: Dispatcher,
        system: Scheduler | None = None,
        first_sequence: int = 1,
        journal: FifoMailbox | None = None,
        journal_backlog: Backlog | None = None,
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        # The router and correlation actor: on ``system`` when given, a thread
        # that no handler can take (see docs/architecture.md).
        system = system or dispatcher
        self.handler_wrappers: list[HandlerWrapper] = []
        self.journal = journal
        self.latency = LatencyWindow()
        self.guard = BlockGuard()
        self._subs: dict[str, SubscriberActor] = {}
        self._lock = threading.Lock()  # guards _subs, _removed, _loop and _owners
        # The subscription each durable name's checkpoint belongs to now (a token per
        # subscribe): only the latest saves it, so an earlier one cannot move it back.
        self._owners: dict[str, object] = {}
        # Set (under the lock) once the router stopped: a subscriber that
        # stops after it sends its last checkpoint to the journal itself.
        self._routerless = False
        self._closing = False  # ``take_subscribers`` ran: no subscription is added any more
        self._removed = [0, 0, 0, 0, 0]  # delivered, dropped, errors, expired, timeouts
        # Subscribers unsubscribed (or taken at close) and perhaps still
        # finishing: their figures are added to ``_removed`` once they stopped.
        self._ended: list[SubscriberActor] = []
        self._retired: list[Dispatcher] = []  # of unsubscribed dedicated subscriptions
        # Handler deadlines and retry wake-ups of every subscription (a thread from first use).
        self.timers = Timers(name=f"bus-{name or 'local'}-timers")
        self._loop = BackgroundLoop()  # for async handlers subscribed off any loop
        self.correlation = CorrelationActor(
            dispatcher=system,
            max_traces=config.max_traces,
            max_events_per_trace=config.max_events_per_trace,
            trace_ttl=config.trace_ttl,
            earlier=first_sequence > 1,  # a reopened journal: traces may go on from it
        )
        start_actor(self.correlation)
        self.router = RouterActor(
            dispatcher=system,
            capacity=ROUTER_CAPACITY,
            origin=name,
            first_sequence=first_sequence,
            recorders=[self.correlation.actor_inbox],
            durable_recorder=journal,
            correlation=self.correlation.actor_inbox,
            guard=self.guard,
            dead_letter_limit=config.dead_letter_limit,
            journal_backlog=journal_backlog,
        )
        start_actor(self.router)
        self._router_reads = RouterReads(self.router)
        self.inbox = self.router.actor_inbox
        bucket = TokenBucket(config.rate_limit, config.burst) if config.rate_limit else None
        self.publisher = Publisher(
            router=self.inbox,
            guard=self.guard,
            block_timeout=config.block_timeout,
            bucket=bucket,
            dispatcher=system,
        )
        # What was sent during close and never routed fails once the router stopped.
        self.router.stop_listeners.append(self.publisher.settle_closed)
        self.router.stop_listeners.append(self._router_stopped)

    def _router_stopped(self) -> None:
        with self._lock:
            self._routerless = True

    # -- subscriptions ------------------------------------------------------------

    def subscribe(
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
        timeout: float | None = None,
        retry_backoff: float | None = None,
        retries: int | None = None,
    ) -> Subscription:
        """Validate every argument, then start a subscriber and route to it.

        Nothing changes before every argument passed, so a refused call
        leaves no trace in ``subscriptions()`` or the metrics.
        """
        pattern = Pattern.parse(pattern).text  # a plain str, also for a str subclass
        if not (callable(handler) or isinstance(handler, pykka.ActorRef)):
            raise TypeError(f"handler must be callable or a pykka.ActorRef, not {handler!r}")
        predicate = as_predicate(filter)
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int)):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        cap = self.config.buffer_size if capacity is None else capacity
        if cap < 1:
            raise ValueError(f"capacity must be at least 1, not {cap}")
        strategy = self.config.overflow if overflow is None else OverflowStrategy(overflow)
        if from_sequence is not None and (
            isinstance(from_sequence, bool) or not isinstance(from_sequence, int)
        ):
            raise TypeError(f"from_sequence must be an int, not {type(from_sequence).__name__}")
        if durable is not None and (not isinstance(durable, str) or not durable):
            raise TypeError(f"durable must be a non-empty str, not {durable!r}")
        if durable is not None:  # its checkpoint would pass what it dropped: never drop
            strategy = durable_overflow(overflow, strategy)
        if not isinstance(dedicated_thread, bool):
            raise TypeError("dedicated_thread must be a bool")
        check_policy(timeout, retry_backoff, retries)
        policy = HandlerPolicy(
            retries=self.config.handler_retries if retries is None else retries,
            retry_backoff=DEFAULT_RETRY_BACKOFF if retry_backoff is None else float(retry_backoff),
            timeout=None if timeout is None else float(timeout),
            move_on=dedicated_thread,
        )
        catch_up = from_sequence is not None or durable is not None
        start = from_sequence
        owner = object()
        if catch_up:
            journal = self.require_journal()
            if durable is not None:
                checkpoint = self._take_checkpoint(journal, durable, owner)
                if checkpoint is not None:
                    start = checkpoint + 1
        loop = None
        if is_async_handler(handler):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = subscribing_loop.get() or self._loop.get()
        # Every argument is valid: from here on, state changes.
        sub_id, threshold = f"sub-{next(_sub_ids)}", self.config.blocking_threshold
        if not isinstance(handler, pykka.ActorRef):
            for wrap in self.handler_wrappers:  # e.g. actors.otel: a span per handled event
                handler = wrap(handler, sub_id, pattern)
        actor = SubscriberActor(
            ports=SubscriberPorts(sub_id=sub_id, router=self.router, latency=self.latency),
            pattern=pattern,
            handler=handler,
            capacity=cap,
            overflow=strategy,
            policy=policy,
            timers=self.timers,
            dispatcher=(
                Dispatcher(1, name=f"{sub_id}-thread", blocking_threshold=threshold, solo=True)
                if dedicated_thread
                else self.dispatcher
            ),
            loop=loop,
        )
        route = Route(
            id=sub_id,
            pattern=pattern,
            mailbox=actor.actor_inbox,
            predicate=predicate,
            strict=strategy in (OverflowStrategy.REJECT, OverflowStrategy.BLOCK),
        )
        if strategy is OverflowStrategy.BLOCK:
            self.guard.add(route)
        if catch_up:
            actor.catchup = self._catch_up(route, actor, start, durable, owner)
        # Decided before the actor starts: a catch-up may go live on its own
        # thread before this call returns (it then joined the router itself).
        live = actor.catchup is None or actor.catchup.live
        if not live:
            # Retention keeps what is published from now on until it is live:
            # it reads those events from the journal until then.
            self.inbox.put(Forward(self.require_journal(), KeepFrom(sub_id)))
        with self._lock:
            # Added and started at once: ``close`` stops it with the others, or
            # it never starts (stopped later, it could find the pool gone and
            # stay registered for good).
            closing = self._closing
            if not closing:
                self._subs[sub_id] = actor
                start_actor(actor)
        if closing:  # close took the subscribers to stop before this one was added
            self.guard.discard(sub_id)
            if actor.actor_dispatcher is not self.dispatcher:
                actor.actor_dispatcher.shutdown(0)
            raise BusClosedError("the bus is closed")
        if live:
            if actor.catchup is not None and actor.catchup.durable is not None:
                # A new durable subscription starts live: its starting point is
                # saved at once, so a restart before its first batch is handled
                # resumes there instead of starting live again.
                saver = self._start_saver(actor.catchup.durable)
                self.inbox.put(Subscribe(route, on_subscribed=saver))
            else:
                self.inbox.put(Subscribe(route))
        else:
            actor.actor_inbox.wake()
        return Subscription(actor, self.unsubscribe)

    def _start_saver(self, name: str) -> Callable[[int], Forward]:
        """Return what saves a new live durable name's starting point, sent by the router.

        The router sends it as it adds the route (after the records of what
        came before): before any later subscription of the name loads the
        checkpoint, which it would miss if the save queued behind that load.
        """
        journal = self.require_journal()

        def started(first: int) -> Forward:
            return Forward(journal, SaveCheckpoint(checkpoint_key(name), first - 1))

        return started

    def _catch_up(
        self,
        route: Route,
        actor: SubscriberActor,
        start: int | None,
        durable: str | None,
        owner: object,
    ) -> CatchUp:
        journal = self.require_journal()
        router = self.inbox
        pattern = route.pattern

        def read(position: int, limit: int, future: BusFuture[list[Event]], indexed: bool) -> None:
            types = [pattern] if indexed else None  # not indexed: every event, filtered there
            query = EventQuery(event_types=types, after_sequence=position - 1, limit=limit)
            router.put(Forward(journal, ReadJournal(query, future)))

        def join(route: Route, joined: Callable[[int], None]) -> None:
            # ``detached`` is set before the ``Unsubscribe`` is sent: a join the
            # router takes after it is dropped, one before it is undone by it.
            router.put(Subscribe(route, on_subscribed=joined, cancelled=lambda: actor.detached))

        def save(name: str, sequence: int) -> None:
            # Through the router: the checkpoint reaches the journal after the
            # records of the events it covers (the router sends them at the
            # end of its turn, after it handed the events to this subscription).
            # Under the lock: a save either reaches the router before a later
            # subscription of the name loads the checkpoint, or not at all.
            with self._lock:
                if self._owners.get(name) is not owner:
                    return
                if self._routerless:  # it sent every record when it stopped
                    journal.put(SaveCheckpoint(checkpoint_key(name), sequence))
                else:
                    router.put(Forward(journal, SaveCheckpoint(checkpoint_key(name), sequence)))

        def release() -> None:
            with self._lock:
                if not self._routerless:  # else the journal is stopping too
                    router.put(Forward(journal, Release(route.id)))

        return CatchUp(
            route=route,
            inbox=actor.actor_inbox,
            start=start,
            durable=durable,
            read=read,
            join=join,
            save=save,
            release=release,
            retry=self.timers.call_later,
        )

    def _take_checkpoint(self, journal: FifoMailbox, name: str, owner: object) -> int | None:
        """Make ``owner`` the one subscription that saves ``name``'s checkpoint; return it.

        Taken before the load, under the lock, so that what an earlier
        subscription of the name saved either is in what loads or is never
        saved.  If the load fails, the name goes back to its previous owner.
        """
        future: BusFuture[int | None] = BusFuture()
        with self._lock:
            if self._closing:  # the router stops: the load would never be answered
                raise BusClosedError("the bus is closed")
            previous = self._owners.get(name)
            self._owners[name] = owner
            self.inbox.put(Forward(journal, LoadCheckpoint(checkpoint_key(name), future)))
        try:
            return future.get(timeout=30.0)
        except BaseException:
            with self._lock:
                if self._owners.get(name) is owner:
                    if previous is None:
                        del self._owners[name]
                    else:
                        self._owners[name] = previous
            raise

    def unsubscribe(self, sub_id: str) -> None:
        """Remove ``sub_id`` (the ``Unsubscriber`` port of its ``Subscription``)."""
        with self._lock:
            actor = self._subs.pop(sub_id, None)
            if actor is None:
                return
            actor.detached = actor.cancelled = True
            actor.abandon()  # nothing more is handled, the batch in hand included
            if actor.catchup is not None:
                actor.catchup.caught_up.set(None)  # a flush waiting for it stops waiting
            self._ended.append(actor)
            self._fold_ended()
            self.guard.discard(sub_id)
            if actor.catchup is not None:  # retention's floor goes (again, if it went live)
                self.inbox.put(Forward(self.require_journal(), Release(sub_id)))
            # The router removes the route first, then stops the actor: no flush
            # barrier can land on a stopped mailbox.  (Never a blocking stop: the
            # router runs on a dispatcher thread the subscriber may need to stop.)
            # Sent under the lock: before ``close`` stops the router, which then
            # handles it first (sent later, nothing would ever stop this actor).
            self.inbox.put(Unsubscribe(sub_id, then=lambda: self._stop_subscriber(actor)))

    def _stop_subscriber(self, actor: SubscriberActor) -> None:
        """Stop ``actor`` without waiting; a dedicated thread ends after its last turn."""
        actor.actor_ref.stop(block=False)
        own = actor.actor_dispatcher
        if own is not self.dispatcher and isinstance(own, Dispatcher):
            own.shutdown(0)
            with self._lock:  # ``close`` waits for its last call (``take_retired``)
                self._retired = [d for d in self._retired if not d.join(0)] + [own]

    def take_retired(self) -> list[Dispatcher]:
        """Remove and return the dedicated threads' pools of unsubscribed subscriptions."""
        with self._lock:
            retired, self._retired = self._retired, []
        return retired

    def subscriptions(self) -> list[Subscription]:
        """Return the live subscriptions."""
        with self._lock:
            return [Subscription(a, self.unsubscribe) for a in self._subs.values()]

    def take_subscribers(self) -> list[SubscriberActor]:
        """Remove and return every subscriber (the bus is closing)."""
        with self._lock:
            self._closing = True  # a subscribe from now on is refused
            subs = list(self._subs.values())
            self._subs.clear()
            self._ended.extend(subs)
        for actor in subs:
            actor.detached = True
            if actor.catchup is not None:
                actor.catchup.caught_up.set(None)
        return subs

    def require_journal(self) -> FifoMailbox:
        """Return the journal's inbox, or raise ``EventBusError`` on a bus without one."""
        if self.journal is None:
            use = "use PersistentEventBus or EventConfig(persistence_path=...)"
            raise EventBusError(f"this bus has no journal: {use}")
        return self.journal

    # -- flush ----------------------------------------------------------------------

    def flush(self, timeout: float | None) -> None:
        """Wait until every event published so far is handled (or dropped) and recorded."""
        with waiting_for(self.router, flush=True) as wait:  # from a handler of another bus
            self.start_flush(wait.watching()).get(timeout)

    def start_flush(self, taken: FlushTaken | None = None) -> BusFuture[None]:
        """Start a flush; the future is done once everything published so far is handled.

        A catch-up subscription is not a route until it has read history (the
        events published before the call reach it through the journal), so
        the router's ``Flush`` (with ``taken``) is sent once every catch-up
        has handled those events, or caught up (``mark_history``); one the close
        took first fails it (``BusClosedError``).  ``RuntimeError`` in a handler or filter.
        """
        if running_here(self.router) is not None or in_filter():  # would wait for itself
            where = "a subscription's filter" if in_filter() else "a handler"
            raise RuntimeError(f"flush() cannot be called from inside {where}")
        with self._lock:
            pending = [
                (a.actor_inbox, a.catchup.caught_up)
                for a in self._subs.values()
                if a.catchup is not None and not a.catchup.caught_up.done()
            ]
        future: BusFuture[None] = BusFuture()

        def send() -> None:
            if self._closing:
                future.set_exception(BusClosedError("the bus closed before the flush ended"))
            else:
                self.inbox.put(Flush(future, taken))

        mark_history(pending, self.inbox, Latch(len(pending), send).count_down)
        return future

    def correlated(self, correlation_id: uuid.UUID) -> BusFuture[CorrelatedEvents]:
        """Ask for the events of ``correlation_id`` held in memory (sees every earlier publish)."""
        future: BusFuture[CorrelatedEvents] = BusFuture()
        self.inbox.put(GetCorrelated(correlation_id, future))
        return future

    def read_journal(self, query: EventQuery) -> BusFuture[list[Event]]:
        """Ask the journal for the events ``query`` selects (sees every earlier publish)."""
        future: BusFuture[list[Event]] = BusFuture()
        self.inbox.put(Forward(self.require_journal(), ReadJournal(query, future)))
        return future

    # -- figures --------------------------------------------------------------------

    def router_figures(self) -> RouterFigures:
        """Return the router's counters (see ``RouterReads.figures``)."""
        return self._router_reads.figures()

    def dead_letters(self) -> list[DeadLetter]:
        """Return the dead letters the router keeps, oldest first (see ``RouterReads``)."""
        return self._router_reads.dead_letters()

    def metrics(
        self, journal: JournalFigures | None = None, bridge: BridgeStatistics | None = None
    ) -> BusMetrics:
        """Return a ``BusMetrics`` snapshot; ``journal`` and ``bridge`` come from the facade."""
        journal = journal or JournalFigures()
        router = self.router_figures()
        rejected, rate_limited = self.publisher.counts()
        with self._lock:
            stats = tuple(a.statistics() for a in self._subs.values())
            every = stats + self._fold_ended()
            removed = list(self._removed)
        p50, p90, p99, pmax = self.latency.percentiles()
        traces = self.correlation.figures()
        return BusMetrics(
            published=router.published,
            delivered=removed[0] + sum(s.delivered for s in every),
            dropped=removed[1] + sum(s.dropped for s in every),
            rejected=router.rejected + rejected,
            expired=removed[3] + sum(s.expired for s in every),
            handler_errors=removed[2] + sum(s.errors for s in every),
            handler_timeouts=removed[4] + sum(s.timeouts for s in every),
            dead_letters=router.dead_letters,
            subscriptions=len(stats),
            events_per_second=router.events_per_second,
            peak_events_per_second=router.peak_events_per_second,
            latency_p50=p50,
            latency_p90=p90,
            latency_p99=p99,
            latency_max=pmax,
            per_subscription=stats,
            journal_written=journal.written,
            journal_write_latency=journal.write_latency,
            journal_size_bytes=journal.size_bytes,
            rate_limited=rate_limited,
            journal_corrupt_records=journal.corrupt_records,
            bridge=bridge,
            traces=traces.traces,
            traces_evicted=traces.evicted_traces,
            traces_truncated=traces.truncated_traces,
        )

    def _fold_ended(self) -> tuple[SubscriptionStatistics, ...]:
        """Add the figures of ended subscribers that stopped to ``_removed`` (under ``_lock``);
        return those of the ones still finishing (a batch, their queue's discards)."""
        finishing: list[SubscriberActor] = []
        figures: list[SubscriptionStatistics] = []
        removed = self._removed
        for actor in self._ended:
            final = actor.final  # first: once its teardown ran, its figures are final
            stats = actor.statistics()
            if not final:
                finishing.append(actor)
                figures.append(stats)
                continue
            ended = (stats.delivered, stats.dropped, stats.errors, stats.expired, stats.timeouts)
            for i, n in enumerate(ended):
                removed[i] += n
        self._ended = finishing
        return tuple(figures)

    # -- async handlers from sync code ----------------------------------------------

    def stop_loop(self, timeout: float) -> None:
        """Stop the async handlers' loop, if made, and the timers; wait ``timeout`` for each."""
        self._loop.stop(timeout)
        self.timers.shutdown(timeout)  # pending retries and deadlines are dropped with the handlers

    def refs(self) -> list[pykka.ActorRef[Any]]:
        """Return the router's and the correlation actor's refs (stopped after subscribers)."""
        return [self.router.actor_ref, self.correlation.actor_ref]
