"""Subscriber actors and the ``Subscription`` handle users hold.

Each subscription is one ``SubscriberActor``: a bounded ``EventMailbox`` plus
the user's handler.  On its turn it takes a batch of events and runs the
handler for each, in order, on the dispatcher thread (no extra hop).  An
``async def`` handler runs on the event loop it was subscribed from; the actor
hands a whole batch to the loop and takes the next batch only when it is
done, so order holds and the handler never runs twice at once.  A
``pykka.ActorRef`` handler gets each event as a ``tell``.

A handler that raises is retried ``handler_retries`` times; then the event
becomes a dead letter.  Nothing a handler does stops the subscription.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from actors._core.messages import Relieved
from actors._model.config import OverflowStrategy
from actors._model.metrics import SubscriptionStatistics
from actors._model.topics import Pattern
from actors._runtime.dispatcher import DispatchedActor, Dispatcher
from actors._runtime.future import BusFuture
from actors._runtime.mailbox import EventMailbox

if TYPE_CHECKING:
    from actors._bus import EventBus
    from actors._model.event import Event

__all__ = [
    "CatchUp",
    "DeadLetter",
    "Handler",
    "SubscriberActor",
    "Subscription",
    "current_event",
]

logger = logging.getLogger("actors.subscriber")

Handler = Callable[["Event"], Any] | pykka.ActorRef[Any]

# The event whose handler is running: publishes made inside a handler inherit
# its correlation id and take its id as their causation id.
current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "actors_current_event", default=None
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a subscription gave up on, with the error of its last attempt."""

    subscription_id: str
    pattern: str
    event: Event
    error_type: str
    error: str
    attempts: int
    letter: Event | None = None  # the ``$bus.deadletter`` event that announced it


class SubscriberActor(DispatchedActor):
    """Run one subscription's handler over its mailbox (see the module docstring)."""

    actor_inbox: EventMailbox

    def __init__(
        self,
        *,
        bus: EventBus,
        sub_id: str,
        pattern: str,
        handler: Handler,
        capacity: int,
        overflow: OverflowStrategy,
        retries: int,
        dispatcher: Dispatcher,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self._capacity = capacity
        self._overflow = overflow
        super().__init__(dispatcher=dispatcher)
        self.bus = bus
        self.sub_id = sub_id
        self.pattern = pattern
        self.retries = retries
        self.delivered = 0
        self.errors = 0
        self.expired = 0
        self.dead = 0
        self.replayed = 0  # stored events a catch-up took (accounting only)
        self.skipped = 0  # live events a catch-up had already read (accounting only)
        # Set once by close() when it gives up on this subscription: the
        # handler's thread then stops at the next event instead of running
        # the rest of its batch after the bus is gone.
        self.abandoned = False
        self._inflight = False
        self._loop = loop
        self.catchup: CatchUp | None = None
        self._call: Callable[[Event], Any]
        self._async_handler: Callable[[Event], Coroutine[Any, Any, Any]] | None = None
        if isinstance(handler, pykka.ActorRef):
            self._call = handler.tell
        elif inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        ):
            if loop is None:
                raise ValueError("an async handler needs an event loop")
            self._async_handler = handler
            self._call = handler
        else:
            self._call = handler

    def _create_actor_inbox(self) -> EventMailbox:  # type: ignore[override]
        return EventMailbox(self._capacity, self._overflow)

    # -- the turn ---------------------------------------------------------------

    def _drain(self, throughput: int) -> None:
        if self._inflight:
            return
        catchup = self.catchup
        if catchup is not None:
            page = catchup.take_page()
            if page is not None:
                self.replayed += len(page)
                self._deliver(page, history=True)
            if not catchup.live:
                if not catchup.waiting and not self._inflight:
                    catchup.request()
                return
            if page is not None:
                # The live lane waits for the next turn; ask for one, or a
                # quiet bus would never mark this subscription caught up.
                self.actor_inbox.wake()
                return
            catchup.caught_up.set()  # history handled; the live lane is all there is
        mailbox = self.actor_inbox
        batch, relieved = mailbox.take_events(throughput)
        if relieved:
            self.bus._router_mailbox.put(
                Relieved(self.sub_id, self.pattern, mailbox.queued, self._capacity)
            )
        if not batch:
            mailbox.check_barriers()
            return
        if catchup is not None and (batch[0][0].sequence or 0) < catchup.position:
            # The first live events may overlap the history just read.
            skipped = [b for b in batch if (b[0].sequence or 0) < catchup.position]
            self.skipped += len(skipped)
            mailbox.finished_by_owner += len(skipped)
            batch = batch[len(skipped) :]
        self._deliver(batch, history=False)

    def _deliver(self, batch: list[tuple[Event, float]], *, history: bool) -> None:
        if not batch:
            return
        if self._async_handler is not None:
            self._inflight = True
            assert self._loop is not None
            try:
                fut = asyncio.run_coroutine_threadsafe(self._run_async(batch, history), self._loop)
            except RuntimeError:  # the loop is closed: nothing can run these
                self._inflight = False
                self._give_up(batch, RuntimeError("the handler's event loop is closed"), history)
                return
            fut.add_done_callback(self._async_done)
            return
        self._run_sync(batch, history)

    def _batch_done(self, batch: list[tuple[Event, float]]) -> None:
        catchup = self.catchup
        if catchup is not None:
            catchup.handled(batch[-1][0].sequence)  # type: ignore[arg-type]
        self.actor_inbox.check_barriers()

    def _run_sync(self, batch: list[tuple[Event, float]], history: bool = False) -> None:
        call = self._call
        samples = self.bus._latency.samples
        perf = time.perf_counter
        now_wall = time.time()
        set_current = current_event.set
        reset_current = current_event.reset
        delivered = 0
        for event, published_at in batch:
            if self.abandoned:
                break
            if event.ttl is not None and event._expired_unix(now_wall):
                self.expired += 1
                continue
            if not history:
                samples.append(perf() - published_at)
            token = set_current(event)
            try:
                call(event)
                delivered += 1
            except Exception as exc:
                self._failed(event, exc, call)
            finally:
                reset_current(token)
        # Counters once per batch: flush barriers are checked per batch anyway.
        self.delivered += delivered
        if not history:
            self.actor_inbox.finished_by_owner += len(batch)
        self._batch_done(batch)

    def _failed(self, event: Event, exc: Exception, call: Callable[[Event], Any]) -> None:
        self.errors += 1
        attempts = 1
        while attempts <= self.retries:
            attempts += 1
            try:
                call(event)
            except Exception as again:
                self.errors += 1
                exc = again
            else:
                self.delivered += 1
                return
        self._dead_letter(event, exc, attempts)

    async def _run_async(self, batch: list[tuple[Event, float]], history: bool) -> None:
        handler = self._async_handler
        assert handler is not None
        samples = self.bus._latency.samples
        mailbox = self.actor_inbox
        now_wall = time.time()
        count = 0 if history else 1
        for event, published_at in batch:
            if self.abandoned:
                break
            if event.ttl is not None and event._expired_unix(now_wall):
                self.expired += 1
                mailbox.finished_by_owner += count
                continue
            if count:
                samples.append(time.perf_counter() - published_at)
            token = current_event.set(event)
            try:
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        await handler(event)
                    except Exception as exc:
                        self.errors += 1
                        if attempts > self.retries:
                            self._dead_letter(event, exc, attempts)
                            break
                    else:
                        self.delivered += 1
                        break
            finally:
                current_event.reset(token)
            mailbox.finished_by_owner += count
        self._batch_done(batch)

    def _async_done(self, fut: Any) -> None:
        if fut.exception() is not None:  # pragma: no cover - _run_async catches everything
            logger.error("async batch of %s failed", self.sub_id, exc_info=fut.exception())
        self._inflight = False
        self.actor_inbox.check_barriers()
        self.actor_inbox.wake()

    def _on_turn_end(self) -> bool:
        catchup = self.catchup
        return self._inflight or (catchup is not None and catchup.waiting)

    def _give_up(self, batch: list[tuple[Event, float]], exc: Exception, history: bool) -> None:
        for event, _ in batch:
            self.errors += 1
            self._dead_letter(event, exc, 0)
            if not history:
                self.actor_inbox.finished_by_owner += 1
        self.actor_inbox.check_barriers()

    def _dead_letter(self, event: Event, exc: BaseException, attempts: int) -> None:
        self.dead += 1
        logger.warning(
            "handler of %s (%r) failed on %s after %d attempt(s): %r",
            self.sub_id,
            self.pattern,
            event.event_type,
            attempts,
            exc,
        )
        self.bus._dead_letter(
            DeadLetter(
                subscription_id=self.sub_id,
                pattern=self.pattern,
                event=event,
                error_type=type(exc).__name__,
                error="".join(traceback.format_exception_only(exc)).strip(),
                attempts=attempts,
            )
        )

    # -- stopping -----------------------------------------------------------------

    def _on_stopped(self) -> None:
        self.actor_inbox.clear_events()
        self.actor_inbox.release_barriers()

    def statistics(self) -> SubscriptionStatistics:
        """Return a snapshot of this subscription's figures (see ``SubscriptionStatistics``).

        Read downstream first (outcomes, then the mailbox, then what the
        router accepted), so an event moving meanwhile is seen in flight,
        never twice; ``in_flight`` is what is left.
        """
        delivered, expired, dead = self.delivered, self.expired, self.dead
        replayed, skipped = self.replayed, self.skipped
        mailbox = self.actor_inbox
        queued = mailbox.queued
        dropped = mailbox.dropped
        accepted = mailbox.accepted + replayed - skipped
        since = self.actor_dispatcher.blocked_since(self)
        return SubscriptionStatistics(
            id=self.sub_id,
            pattern=self.pattern,
            delivered=delivered,
            dropped=dropped,
            errors=self.errors,
            queued=queued,
            capacity=self._capacity,
            expired=expired,
            dead_letters=dead,
            in_flight=max(0, accepted - dropped - queued - delivered - expired - dead),
            accepted=accepted,
            blocked=since is not None,
            blocked_seconds=0.0 if since is None else max(0.0, time.monotonic() - since),
        )


class CatchUp:
    """A catch-up (and durable) subscription's state: history first, then live.

    As EventStoreDB's catch-up subscriptions do, it reads stored events page
    by page until it reaches the journal's head, only then joins the router
    (which tells it the first live sequence), reads the gap that opened
    meanwhile, and goes live, skipping live events it already handled.  While
    it joins, the mailbox is unbounded so the switch loses nothing; it gets
    its capacity back once live.  Pages arrive through futures, so no
    dispatcher thread waits on the journal.
    """

    PAGE = 512

    def __init__(
        self,
        actor: SubscriberActor,
        *,
        start: int,
        route: Any,
        durable: str | None,
        read: Callable[[int, int, BusFuture[Any]], None],
        join: Callable[[Any, Callable[[int], None]], None],
        save: Callable[[str, int], None],
    ) -> None:
        self.actor = actor
        self.position = start  # next sequence to deliver
        self.route = route
        self.durable = durable
        self._read = read
        self._join = join
        self._save = save
        self.live = False
        self.waiting = False
        self.caught_up = threading.Event()  # set once history is handled (flush waits)
        self.live_start: int | None = None
        self._pages: deque[list[tuple[Event, float]]] = deque()
        self._capacity = actor.actor_inbox.capacity
        self._matches = Pattern.parse(route.pattern).matches

    def take_page(self) -> list[tuple[Event, float]] | None:
        """Return what arrived (already filtered) since the last call, if anything."""
        if not self._pages:
            return None
        page: list[tuple[Event, float]] = []
        while self._pages:
            page.extend(self._pages.popleft())
        return page

    def request(self) -> None:
        """Ask for the next page, or join the router when history is exhausted."""
        self.waiting = True
        future: BusFuture[Any] = BusFuture()
        future.add_done_callback(self._arrived)
        self._read(self.position, self.PAGE, future)

    def _arrived(self, future: BusFuture[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            logger.error("catch-up read of %s failed: %r", self.actor.sub_id, exc)
            events: list[Event] = []
        else:
            events = future.get()
        full = len(events) >= self.PAGE
        if self.live_start is not None:
            events = [e for e in events if e.sequence < self.live_start]  # type: ignore[operator]
            full = full and len(events) >= self.PAGE
        if events:
            last = events[-1].sequence
            predicate = self.route.predicate
            pattern_ok = self._matches
            page = [
                (e, 0.0)
                for e in events
                if pattern_ok(e.event_type) and (predicate is None or _safe(predicate, e))
            ]
            self.position = last + 1  # type: ignore[operator]
            if page:
                # Appended, never replaced: the gap read can answer before
                # the actor took the last history page.
                self._pages.append(page)
        if not full:
            if self.live_start is None:
                # History exhausted: join live delivery, then read the gap.
                self.actor.actor_inbox.capacity = sys.maxsize
                self._join(self.route, self._joined)
                self.actor.actor_inbox.wake()  # deliver the last page meanwhile
                return
            self._go_live()
        self.waiting = False
        self.actor.actor_inbox.wake()

    def _joined(self, live_start: int) -> None:
        # Runs in the router's turn: the gap read it triggers is queued after
        # every record of the events before ``live_start``.
        self.live_start = live_start
        future: BusFuture[Any] = BusFuture()
        future.add_done_callback(self._arrived)
        self._read(self.position, self.PAGE, future)

    def _go_live(self) -> None:
        self.live = True
        self.actor.actor_inbox.capacity = self._capacity
        if self.live_start is not None:
            self.position = max(self.position, self.live_start)

    def handled(self, sequence: int) -> None:
        """Record progress after a batch (saves the durable checkpoint)."""
        if sequence >= self.position:
            self.position = sequence + 1
        if self.durable is not None:
            self._save(self.durable, sequence)


def _safe(predicate: Callable[[Event], bool], event: Event) -> bool:
    try:
        return bool(predicate(event))
    except Exception:
        logger.exception("filter raised; event skipped")
        return False


class Subscription:
    """A live subscription: ``id``, ``pattern``, ``unsubscribe()``, ``statistics()``.

    Use it as a context manager to unsubscribe on exit.
    """

    __slots__ = ("_actor", "_bus", "id", "pattern")

    def __init__(self, bus: EventBus, actor: SubscriberActor) -> None:
        self._bus = bus
        self._actor = actor
        self.id = actor.sub_id
        self.pattern = actor.pattern

    def unsubscribe(self) -> None:
        """Stop delivery; queued events are discarded.  Idempotent; never blocks long."""
        self._bus._unsubscribe(self)

    def statistics(self) -> SubscriptionStatistics:
        """Return ``delivered``, ``dropped``, ``errors``, ``queued`` and ``capacity``."""
        return self._actor.statistics()

    @property
    def active(self) -> bool:
        """Return whether the subscription still receives events."""
        return self._actor.actor_ref.is_alive()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return f"Subscription(id={self.id!r}, pattern={self.pattern!r})"
