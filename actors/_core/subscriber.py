"""Subscriber actors and the ``Subscription`` handle users hold.

Each subscription is one ``SubscriberActor``: a bounded ``EventMailbox`` plus
the user's handler.  On its turn it takes a batch of events and runs the
handler for each, in order, on the dispatcher thread (no extra hop).  An
``async def`` handler runs on the event loop it was subscribed from; the actor
hands a whole batch to the loop and takes the next batch only when it is
done, so order holds and the handler never runs twice at once.  A
``pykka.ActorRef`` handler gets each event as a ``tell``.

A handler that raises is retried (``HandlerPolicy.retries`` times, after a
backoff, without holding the thread: see ``actors._core.handling``); then the
event becomes a dead letter, sent to the router as ``DeadLettered``.  A
handler may have a timeout.  Nothing a handler does stops the subscription.
The actor reaches nothing but its ``SubscriberPorts`` (see
``actors._core.ports``) and the bus's ``Timers``: never the bus.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from actors._core.catchup import CatchUp
from actors._core.handling import Batch, HandlerRuns, current_event
from actors._core.messages import DeadLetter, FlushMark, HistoryRead, Joined, Relieved
from actors._core.policies import LOOP_WATCH, AsyncRun, CallWatch, HandlerPolicy, SyncRun
from actors._model.config import OverflowStrategy
from actors._model.metrics import SubscriptionStatistics
from actors._runtime.dispatcher import DispatchedActor, Dispatcher
from actors._runtime.mailbox import EventMailbox

if TYPE_CHECKING:
    from actors._core.ports import SubscriberPorts, Unsubscriber
    from actors._model.event import Event
    from actors._runtime.timers import Timers

__all__ = [
    "CatchUp",
    "DeadLetter",
    "Handler",
    "SubscriberActor",
    "Subscription",
    "current_event",
    "is_async_handler",
]

logger = logging.getLogger("actors.subscriber")

Handler = Callable[["Event"], Any] | pykka.ActorRef[Any]


def is_async_handler(handler: Handler) -> bool:
    """Return whether ``handler`` is an ``async def`` function or async callable object."""
    if isinstance(handler, pykka.ActorRef):
        return False
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    )


class SubscriberActor(HandlerRuns, DispatchedActor):
    """Run one subscription's handler over its mailbox (see the module docstring)."""

    # Slots for this class's own state: with pykka's and the dispatcher's
    # attributes the instance dict would pass the 30 keys that CPython shares
    # between instances, and an unshared dict costs about 1.5 KB.
    __slots__ = (
        "_async",
        "_async_handler",
        "_call",
        "_capacity",
        "_inflight",
        "_loop",
        "_loop_watched",
        "_overflow",
        "_retry_wake",
        "_run",
        "_timers",
        "_watch",
        "abandoned",
        "cancelled",
        "catchup",
        "dead",
        "delivered",
        "detached",
        "errors",
        "expired",
        "pattern",
        "policy",
        "ports",
        "replayed",
        "skipped",
        "sub_id",
        "timeouts",
    )

    actor_inbox: EventMailbox

    def __init__(
        self,
        *,
        ports: SubscriberPorts,
        pattern: str,
        handler: Handler,
        capacity: int,
        overflow: OverflowStrategy,
        policy: HandlerPolicy,
        timers: Timers,
        dispatcher: Dispatcher,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self._capacity = capacity
        self._overflow = overflow
        super().__init__(dispatcher=dispatcher)
        self.ports = ports
        self.sub_id = ports.sub_id
        self.pattern = pattern
        self.policy = policy
        self.delivered = 0
        self.errors = 0
        self.expired = 0
        self.dead = 0
        self.timeouts = 0  # one writer: the timer thread (sync) or the handler's loop (async)
        self._timers = timers
        self._run: SyncRun | None = None  # a synchronous batch stopped midway (handling.py)
        self.running_on: tuple[Batch, object] | None = None  # the batch running, and where
        self.replayed = 0  # stored events a catch-up took (accounting only)
        self.skipped = 0  # live events a catch-up had already read (accounting only)
        # Set once by close() when it gives up on this subscription, or by
        # unsubscribe: the handler's thread then stops at the next event
        # instead of running the rest of its batch.
        self.abandoned = False
        # Set last when it stopped (``_on_stopped``): its figures are final then,
        # not when pykka marks it stopped, which comes before its teardown.
        self.final = False
        # Set by the facade when ``unsubscribe`` returns: ``active`` is False
        # from then on.  A flag (one writer, read anywhere), not an Event: no
        # one waits for it, and an Event costs about 1 KB per subscription.
        self.detached = False
        self.cancelled = False  # unsubscribed (its route goes first), not given up on at close
        self._inflight = False
        self._async: AsyncRun | None = None  # the batch on the loop while ``_inflight``
        self._loop_watched = False  # a timer checks that the loop did not close under it
        self._loop = loop
        self._retry_wake: asyncio.Future[None] | None = None  # an async batch waiting to retry
        self.catchup: CatchUp | None = None
        self._call: Callable[[Event], Any]
        self._async_handler: Callable[[Event], Coroutine[Any, Any, Any]] | None = None
        if isinstance(handler, pykka.ActorRef):
            self._call = handler.tell
        elif is_async_handler(handler):
            if loop is None:
                raise ValueError("an async handler needs an event loop")
            self._async_handler = handler
            self._call = handler
        else:
            self._call = handler
        self._watch: CallWatch | None = self._watch_calls(timers)

    def _create_actor_inbox(self) -> EventMailbox:  # type: ignore[override]
        return EventMailbox(self._capacity, self._overflow)

    def _on_message(self, message: Any) -> None:
        catchup = self.catchup
        if type(message) is HistoryRead and catchup is not None:
            catchup.on_read(message.future)
        elif type(message) is Joined and catchup is not None:
            catchup.on_joined(message.live_start)
        elif type(message) is FlushMark and catchup is not None:
            catchup.mark(message.sequence, message.done)
        else:
            super()._on_message(message)

    # -- the turn ---------------------------------------------------------------

    def _busy(self) -> bool:
        # An async batch on its loop, or a sync batch waiting (a retry's delay).
        return self._inflight or self._run is not None

    def waiting_to_retry(self) -> bool:
        """Whether a failed event waits out its ``retry_backoff`` now (any thread: a glance)."""
        run = self._run
        return (run is not None and run.retry_at is not None) or self._retry_wake is not None

    def _drain(self, throughput: int) -> None:
        if self._inflight and self._async_still_out():
            return
        if self._run is not None and not self._resume():
            return
        catchup = self.catchup
        if catchup is not None and not catchup.caught_up.done():
            page = catchup.take_page()
            if page is not None:
                self.replayed += len(page)
                self._deliver(page, history=True)
            if not self._busy():
                catchup.passed()  # a flush waiting for the pages handled here
            if not catchup.live:
                if not catchup.waiting and not self._busy():
                    catchup.request()
                return
            if self._busy() or not catchup.settle():
                return  # a history batch is still running (async) or waiting (a retry)
            # Live, and every history page handled: the live lane is all there is.
        mailbox = self.actor_inbox
        if self.detached:  # unsubscribed: what is still queued is discarded, never handled
            mailbox.clear_events()
            return
        batch, relieved = mailbox.take_events(throughput)
        if relieved:
            self.ports.router.put(
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
            if not batch:  # nothing left to deliver: the barriers are looked at here
                mailbox.check_barriers()
        self._deliver(batch, history=False)

    def _async_still_out(self) -> bool:
        """Whether the batch on the loop is still out; settle it if its loop closed."""
        state, loop = self._async, self._loop
        if state is None or loop is None or not loop.is_closed():
            return True
        if not state.done:
            self._orphaned(state)  # its loop closed with it unfinished: nothing will run it
            return False
        if state.future is None or state.future.done():
            return True  # ended, and the news is on its way (_async_done)
        # It ended in the loop's last iteration: the callback passing that on
        # was scheduled on the loop and never ran.
        self._async = None
        self._inflight = False
        self.actor_inbox.check_barriers()
        return False

    def _deliver(self, batch: Batch, *, history: bool) -> None:
        if not batch:
            return
        if self._async_handler is not None:
            self._inflight = True
            assert self._loop is not None
            state = AsyncRun(batch, history)
            run = state.run = self._run_async(state)
            self._async = state
            try:
                fut = asyncio.run_coroutine_threadsafe(run, self._loop)
            except RuntimeError:  # the loop is closed: nothing can run these
                run.close()  # never started: closed, so it is not reported as never awaited
                self._inflight = False
                self._async = None
                self._give_up(batch, RuntimeError("the handler's event loop is closed"), history)
                return
            state.future = fut
            fut.add_done_callback(self._async_done)
            if not self._loop_watched:
                self._loop_watched = True
                self._timers.call_later(LOOP_WATCH, self._watch_loop)
            return
        self._run_sync(batch, history)

    def _batch_done(self, batch: Batch) -> None:
        catchup = self.catchup
        if catchup is not None and batch:  # empty: stopped before its first event
            catchup.handled(batch[-1][0].sequence or 0)
        self.actor_inbox.check_barriers()

    def _async_done(self, fut: Future[None]) -> None:
        # Cancelled when its loop closed under it (_run_async gave the rest up).
        error = None if fut.cancelled() else fut.exception()
        if error is not None and not isinstance(error, asyncio.CancelledError):
            logger.error("async batch of %s failed", self.sub_id, exc_info=error)
        self._inflight = False
        self.actor_inbox.check_barriers()
        self.actor_inbox.wake()

    def _watch_loop(self) -> None:
        """On the timer thread: wake the actor if its batch's loop closed, else look again later.

        One timer per subscription at most, and only while a batch is on the loop.  An
        actor already stopped (unsubscribed before the loop closed) has it settled here.
        """
        if not self._inflight:
            self._loop_watched = False
            if not self._inflight:
                return
            # A batch went out as this looked, and saw the flag still set: keep watching.
        loop = self._loop
        if loop is not None and loop.is_closed():
            if self.final:  # the actor stopped: no turn of its settles the batch; this does
                self._loop_watched = False
                self._async_still_out()
                return
            self.actor_inbox.wake()  # its next turn settles it; looked at again, should it stop
        self._timers.call_later(LOOP_WATCH, self._watch_loop)

    def _orphaned(self, state: AsyncRun) -> None:
        """Give up a batch whose loop closed before it finished (run nowhere again).

        ``asyncio.run`` cancels its tasks before it closes the loop, and a
        cancelled batch gives itself up; this is for the others: one handed
        to a loop that closed before running it, or started after those
        cancellations, or on a loop closed by hand.  What it finished is
        kept (a durable checkpoint moves past it); the rest become dead
        letters (dropped, if the subscription was given up on first), the
        event waiting for its retry with its own attempts and last error.
        """
        state.done = True
        if not state.started and state.run is not None:
            state.run.close()  # never started: closed, so it is not reported as never awaited
        batch, pos = state.batch, state.pos
        logger.warning(
            "the event loop of %s (%r) closed before its handler finished a batch: "
            "%d event(s) given up as %s",
            self.sub_id,
            self.pattern,
            len(batch) - pos,
            "dropped (the subscription had ended)" if self.abandoned else "dead letters",
        )
        self._inflight = False
        self._async = None
        closed = RuntimeError("the handler's event loop closed first")
        if state.waiting is not None:  # its event at ``pos`` failed and waited for a retry
            self._cut_waiting(state, pos, *state.waiting, closed)
            return
        self._batch_done(batch[:pos])
        self._give_up(batch[pos:], closed, state.history, tried=state.in_handler)

    def _on_turn_end(self) -> bool:
        catchup = self.catchup
        return self._busy() or (catchup is not None and catchup.waiting)

    def _give_up(self, batch: Batch, exc: BaseException, history: bool, tried: int = 0) -> None:
        """Give up ``batch`` (its loop ended under it): dead letters, or dropped once abandoned.

        A subscription already given up on (``abandon``: unsubscribed, or a
        close that stopped waiting) makes no dead letter: its events count
        as dropped, like the rest of a batch it stopped.  The first event's
        handler was ``tried`` times (its call in hand, cut off), the others never.
        """
        mailbox = self.actor_inbox
        if self.abandoned:
            mailbox.discarded += len(batch)
        else:
            for event, _ in batch:
                self.errors += 1
                self._dead_letter(event, exc, tried)
                tried = 0
        if not history:
            mailbox.finished_by_owner += len(batch)
        mailbox.check_barriers()

    # -- stopping -----------------------------------------------------------------

    def _on_stopped(self) -> None:
        try:
            # Pending timers would hold this actor until their deadlines (up to
            # the handler's ``timeout`` or retry backoff) after it is gone.
            if self._watch is not None:
                self._watch.close()
            run = self._run
            if run is not None:  # a synchronous batch parked for a retry: it never resumes
                self._run = None
                if run.timer is not None:
                    self._timers.cancel(run.timer)
                self._drop_run(run)
            if self._inflight:  # an async batch whose loop closed under it: settled now or never
                self._async_still_out()
            self.actor_inbox.refuse_all()  # first: what comes after the clearing is dropped
            self.actor_inbox.clear_events()
            self.actor_inbox.release_barriers()
        finally:
            self.final = True  # last: whoever sees it sees every figure above

    def _drop_run(self, run: SyncRun) -> None:
        """Account for a stopped batch that will not go on: handled so far, the rest discarded.

        A durable checkpoint moves past the events handled (the router still
        runs: subscribers stop before it), so a restart resumes at the one
        that waited for its retry.
        """
        pos, delivered = run.pos, run.delivered
        left = run.call
        if left is not None and left.left_behind:  # the handler has that event
            pos += 1
            delivered += 1
        self.delivered += delivered
        self.actor_inbox.discarded += len(run.batch) - pos
        if not run.history:
            self.actor_inbox.finished_by_owner += len(run.batch)
        catchup = self.catchup
        if catchup is not None and pos > 0:  # progress: past the events handled, no further
            catchup.handled(run.batch[pos - 1][0].sequence or 0)

    def async_batch(self) -> Future[None] | None:
        """Return the run of the ``async`` batch under way (None if none): done once it ended."""
        state = self._async
        run = None if state is None else state.future
        return None if run is None or run.done() else run

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
        dropped = mailbox.dropped + mailbox.discarded  # discarded: cleared at unsubscribe
        accepted = mailbox.accepted + replayed - skipped
        since = self.actor_dispatcher.blocked_since(self)
        return SubscriptionStatistics(
            id=self.sub_id,
            pattern=self.pattern,
            delivered=delivered,
            dropped=dropped,
            errors=self.errors,
            queued=queued,
            timeouts=self.timeouts,
            capacity=self._capacity,
            expired=expired,
            dead_letters=dead,
            in_flight=max(0, accepted - dropped - queued - delivered - expired - dead),
            accepted=accepted,
            blocked=since is not None,
            blocked_seconds=0.0 if since is None else max(0.0, time.monotonic() - since),
        )


class Subscription:
    """A live subscription: ``id``, ``pattern``, ``unsubscribe()``, ``statistics()``.

    Use it as a context manager to unsubscribe on exit.  It holds its
    subscriber and an ``Unsubscriber`` port, never the bus.
    """

    __slots__ = ("_actor", "_unsubscribe", "id", "pattern")

    def __init__(self, actor: SubscriberActor, unsubscribe: Unsubscriber) -> None:
        self._actor = actor
        self._unsubscribe = unsubscribe
        self.id = actor.sub_id
        self.pattern = actor.pattern

    def unsubscribe(self) -> None:
        """Stop delivery; queued events are discarded.  Idempotent; never blocks long."""
        self._unsubscribe(self.id)

    def statistics(self) -> SubscriptionStatistics:
        """Return ``delivered``, ``dropped``, ``errors``, ``queued`` and ``capacity``."""
        return self._actor.statistics()

    @property
    def active(self) -> bool:
        """Return whether the subscription still receives events (False once unsubscribed)."""
        return not self._actor.detached and self._actor.actor_ref.is_alive()

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
