"""How a subscriber runs its handler over a batch: attempts, retries, timeouts.

``HandlerRuns`` is the part of ``SubscriberActor`` that calls the handler
(a mixin: the same object, its own state).  Synchronous batches run on the
dispatcher thread; a failed attempt is retried after ``backoff_delay``
without holding the thread: the batch stops where it is (a ``SyncRun``), the
actor parks, and the bus's ``Timers`` thread wakes it when the retry is due,
so the events behind wait and order holds.  ``async def`` handlers run a
whole batch on their loop, where a timeout cancels the call and a retry
waits with ``asyncio.sleep``.  See ``docs/architecture.md`` ("Handler policies").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from actors._core.async_calls import AsyncCalls, current_timeout
from actors._core.messages import DeadLetter, DeadLettered
from actors._core.policies import (
    MAX_LEFT_BEHIND,
    AsyncRun,
    Call,
    CallWatch,
    HandlerPolicy,
    SyncRun,
    backoff_delay,
    exception_text,
)
from actors._errors import BusClosedError
from actors._model.event import expired_unix
from actors._runtime.dispatcher import TurnHandedOff

if TYPE_CHECKING:
    from concurrent.futures import Future

    from actors._core.ports import SubscriberPorts
    from actors._model.event import Event
    from actors._runtime.dispatcher import Dispatcher
    from actors._runtime.mailbox import EventMailbox
    from actors._runtime.pool import Scheduler
    from actors._runtime.timers import Timers

__all__ = [
    "Batch",
    "HandlerRuns",
    "current_event",
    "current_run",
    "current_timeout",
    "running_here",
    "wake_future",
]

logger = logging.getLogger("actors.subscriber")

Batch = list[tuple["Event", float]]

# The event whose handler is running: publishes made inside a handler inherit
# its correlation id and take its id as their causation id.
current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "actors_current_event", default=None
)

# The subscriber whose handler is running, and the batch it runs: set once per
# batch.  ``current_event`` is set by a handler of any bus; this says which bus
# the handler belongs to, so a ``close`` or ``flush`` of another bus made in it
# is an outside call (``running_here``), and where the event calling ``close``
# is in its batch (``_core/stopping.py``).
current_run: contextvars.ContextVar[tuple[HandlerRuns, Batch] | None] = contextvars.ContextVar(
    "actors_current_run", default=None
)


def running_here(router: object) -> tuple[HandlerRuns, Batch] | None:
    """Return the subscriber whose handler the caller runs in, and its batch.

    Only for a handler of the bus whose router is ``router``: None outside a handler,
    and in a handler of another bus (waiting for a bus there does not wait for it).
    """
    run = current_run.get()
    if run is None or run[0].ports.router is not router:
        return None
    return run


def wake_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _loop_gone(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Return whether ``loop`` closed: a coroutine closed then is being discarded."""
    return loop is None or loop.is_closed()


def _cancelling() -> bool:
    """Return whether the running task itself is being cancelled."""
    return (task := asyncio.current_task()) is not None and task.cancelling() > 0


class HandlerRuns(AsyncCalls):
    """Run the handler over batches under the subscription's ``HandlerPolicy``."""

    # Provided by SubscriberActor (its __init__ sets them).
    actor_inbox: EventMailbox
    actor_dispatcher: Scheduler
    ports: SubscriberPorts
    sub_id: str
    pattern: str
    policy: HandlerPolicy
    abandoned: bool
    cancelled: bool  # unsubscribed: its route is gone before any later Flush
    delivered: int
    errors: int
    expired: int
    dead: int
    timeouts: int
    _call: Callable[[Event], Any]
    _async_handler: Callable[[Event], Coroutine[Any, Any, Any]] | None
    _run: SyncRun | None
    running_on: tuple[Batch, object] | None  # the batch running, and its thread or task
    _watch: CallWatch | None
    _timers: Timers
    _loop: asyncio.AbstractEventLoop | None
    _retry_wake: asyncio.Future[None] | None
    _async: AsyncRun | None

    def _batch_done(self, batch: Batch) -> None:
        raise NotImplementedError

    def _give_up(self, batch: Batch, exc: BaseException, history: bool, tried: int = 0) -> None:
        raise NotImplementedError

    def _watch_calls(self, timers: Timers) -> CallWatch | None:
        """Return the watch of synchronous calls (None without a timeout, or for async)."""
        policy = self.policy
        if policy.timeout is None or self._async_handler is not None:
            return None
        hand_off: Callable[[], bool] | None = None
        if policy.move_on:
            hand_off = functools.partial(
                cast("Dispatcher", self.actor_dispatcher).hand_off, self, MAX_LEFT_BEHIND
            )
        return CallWatch(policy.timeout, timers, self._call_timed_out, hand_off)

    # -- synchronous handlers ------------------------------------------------------

    def _run_sync(self, batch: Batch, history: bool = False) -> None:
        if self._watch is not None:
            self._run = SyncRun(batch, history)
            self._resume_sync()
            return
        # The hot path: no watch, no waiting retry (those go on in _resume_sync).
        call = self._call
        samples = self.ports.latency.samples
        perf = time.perf_counter
        set_current = current_event.set
        reset_current = current_event.reset
        delivered = 0
        stop = None
        # One reset per batch: each event's set replaces the one before.
        token = set_current(None)
        running = current_run.set((self, batch))
        self.running_on = mine = (batch, threading.get_ident())
        try:
            for i, (event, published_at) in enumerate(batch):
                if self.abandoned:
                    stop = i  # given up on at close, or unsubscribed: the rest is not handled
                    break
                if event.ttl is not None and expired_unix(event, time.time()):
                    self.expired += 1
                    continue
                if not history:
                    samples.append(perf() - published_at)
                set_current(event)
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        call(event)
                    except BaseException as exc:  # see _failed
                        delay = self._failed(event, exc, attempts)
                        if delay is not None and self.abandoned:
                            stop = i  # no retry once given up on: this event and the rest go
                        elif delay == 0.0:
                            continue
                        elif delay is not None:  # park; the timer resumes at this event
                            self.delivered += delivered
                            self._wait_retry(
                                SyncRun(batch, history, pos=i, attempts=attempts), delay
                            )
                            return
                    else:
                        delivered += 1
                    break
                if stop is not None:
                    break
        finally:
            self._not_running(mine)
            current_run.reset(running)
            reset_current(token)
        self._end_sync(batch, history, delivered, stop)

    def _not_running(self, mine: tuple[Batch, object]) -> None:
        self.running_on = None if self.running_on is mine else self.running_on  # a later one's

    def _end_sync(
        self, batch: Batch, history: bool, delivered: int, stop: int | None = None
    ) -> None:
        # Counters once per batch: flush barriers are checked per batch anyway.
        self.delivered += delivered
        if not history:
            self.actor_inbox.finished_by_owner += len(batch)
        self._batch_done(self._handled_part(batch, history, stop))

    def _handled_part(self, batch: Batch, history: bool, stop: int | None) -> Batch:
        """Return the part of ``batch`` before ``stop`` (a durable checkpoint covers only it).

        The rest counts as discarded, live or not (``history``: the callers' symmetry).
        """
        if stop is None:
            return batch
        # History events count as accepted too (``replayed``): both kinds go.
        self.actor_inbox.discarded += len(batch) - stop
        return batch[:stop]

    def _wait_retry(self, run: SyncRun, delay: float) -> None:
        run.retry_at = time.monotonic() + delay
        self._run = run
        run.timer = self._timers.call_at(run.retry_at, self.actor_inbox.wake)

    def _resume(self) -> bool:
        """Go on with a stopped synchronous batch; return True once it is finished."""
        run = self._run
        assert run is not None
        if run.retry_at is not None:
            if time.monotonic() < run.retry_at:
                return False  # woken early (new mail): the timer wakes it again
            run.retry_at = None
        self._resume_sync()
        return self._run is None

    def _resume_sync(self) -> None:
        """Run ``self._run`` from where it stopped, watching each call when there is a watch."""
        run = self._run
        assert run is not None
        running = current_run.set((self, run.batch))
        self.running_on = mine = (run.batch, threading.get_ident())
        try:
            self._resume_steps(run)
        finally:
            self._not_running(mine)
            current_run.reset(running)

    def _resume_steps(self, run: SyncRun) -> None:
        batch = run.batch
        left = run.call
        if left is not None and left.left_behind:
            # The call timed out and was left running on its old thread: the
            # handler has the event; the bus no longer waits for it.  Counted
            # now, not at the batch's end: the batch may never end (every call
            # left behind), and the figures must show the event handed over.
            run.call = None
            self.delivered += 1
            run.pos += 1
            run.attempts = 0
        call_fn = self._call
        watch = self._watch
        samples = self.ports.latency.samples
        stop = None
        while run.pos < len(batch):
            if self.abandoned:
                stop = run.pos
                break
            event, published_at = batch[run.pos]
            if event.ttl is not None and expired_unix(event, time.time()):
                # Before the first attempt, or a retry that waited: not tried again.
                self.expired += 1
                run.pos += 1
                run.attempts = 0
                continue
            if run.attempts == 0 and not run.history:
                samples.append(time.perf_counter() - published_at)
            token = current_event.set(event)
            try:
                while True:
                    run.attempts += 1
                    call = None if watch is None else watch.start(event)
                    run.call = call
                    error: BaseException | None = None
                    try:
                        call_fn(event)
                    except BaseException as exc:  # see _failed
                        error = exc
                    if call is not None and watch is not None and not watch.finish(call):
                        raise TurnHandedOff  # left behind: another thread runs the actor now
                    run.call = None
                    if error is None:
                        run.delivered += 1
                        break
                    delay = self._failed(event, error, run.attempts)
                    if delay is None:
                        break
                    if self.abandoned:
                        stop = run.pos  # no retry once given up on
                        break
                    if delay > 0:
                        self._wait_retry(run, delay)
                        return
            finally:
                current_event.reset(token)
            if stop is not None:
                break
            run.pos += 1
            run.attempts = 0
        self._run = None
        self._end_sync(batch, run.history, run.delivered, stop)

    def _call_timed_out(self, call: Call) -> None:
        """Count and report a late synchronous call (on the timer thread, its only writer)."""
        if call.left_behind:  # no longer its run: it waits as any outside caller (``crossing``)
            self.running_on = None
        self.timeouts += 1  # before the new turn can run: whoever sees it run sees the count
        if call.left_behind:
            # The old thread keeps the schedule claim; the new turn owns it now.
            self.actor_dispatcher.schedule(self)  # type: ignore[arg-type]
        logger.warning(
            "handler of %s (%r) has run on %s for longer than its timeout of %s s; %s",
            self.sub_id,
            self.pattern,
            call.event.event_type,
            self.policy.timeout,
            "the subscription moves on and will ignore what the call returns"
            if call.left_behind
            else "a synchronous call cannot be interrupted: the subscription waits for it",
        )

    # -- async handlers --------------------------------------------------------------

    async def _run_async(self, state: AsyncRun) -> None:
        state.started = True
        try:
            await self._handle_async(state)
        finally:
            state.done = True
            self.running_on = None

    async def _handle_async(self, state: AsyncRun) -> None:
        batch, history = state.batch, state.history
        handler = self._async_handler
        assert handler is not None
        samples = self.ports.latency.samples
        mailbox = self.actor_inbox
        count = 0 if history else 1
        # Once per batch, and never reset: the batch runs in a task, whose context is its own.
        current_run.set((self, batch))
        self.running_on = (batch, asyncio.current_task())  # ended by _run_async
        stop = None
        for i, (event, published_at) in enumerate(batch):
            if self.abandoned:
                stop = i
                mailbox.finished_by_owner += count * (len(batch) - i)
                break
            if event.ttl is not None and expired_unix(event, time.time()):
                self.expired += 1
                mailbox.finished_by_owner += count
                state.pos = i + 1
                continue
            if count:
                samples.append(time.perf_counter() - published_at)
            token = current_event.set(event)
            try:
                attempts = 0
                while True:
                    attempts += 1
                    state.in_handler = attempts
                    try:
                        await self._await_handler(handler, event)
                    except BaseException as exc:  # see _failed
                        state.in_handler = 0
                        if isinstance(exc, GeneratorExit) and _loop_gone(self._loop):
                            raise  # closed: its task went with its loop (given up elsewhere)
                        if isinstance(exc, asyncio.CancelledError) and _cancelling():
                            # This batch itself is cancelled (its loop closes).
                            self._batch_done(batch[:i])
                            self._give_up(batch[i:], exc, history, tried=attempts)
                            raise
                        delay = self._failed(event, exc, attempts)  # the handler's own
                        if delay is not None:
                            state.waiting = (exc, attempts)  # for a loop closed meanwhile
                            try:
                                again = await self._before_retry(delay)
                            except asyncio.CancelledError as cancelled:  # the batch, as it waited
                                self._cut_waiting(state, i, exc, attempts, cancelled)
                                raise
                            state.waiting = None
                            if again and event.ttl is not None and expired_unix(event, time.time()):
                                self.expired += 1  # expired while it waited: not tried again
                                break
                            if again:
                                continue
                            stop = i
                    else:
                        state.in_handler = 0
                        self.delivered += 1
                    break
            finally:
                # Closed from another context (its loop closing): nothing to undo.
                with contextlib.suppress(ValueError):
                    current_event.reset(token)
            if stop is not None:  # given up on while it waited to retry: the rest goes
                mailbox.finished_by_owner += count * (len(batch) - i)
                break
            mailbox.finished_by_owner += count
            state.pos = i + 1
        self._batch_done(self._handled_part(batch, history, stop))

    def _cut_waiting(
        self,
        state: AsyncRun,
        i: int,
        error: BaseException,
        attempts: int,
        cancelled: BaseException,
    ) -> None:
        """Give up an async batch cancelled (or its loop closed) while event ``i`` waited to retry.

        That event is a dead letter with its own last error (its failed attempt is counted),
        the rest with ``cancelled``; all are dropped if the subscription was given up on first.
        """
        batch, history = state.batch, state.history
        self._batch_done(batch[:i])
        if self.abandoned:
            self._give_up(batch[i:], cancelled, history)
            return
        self._dead_letter(batch[i][0], error, attempts)
        if not history:
            self.actor_inbox.finished_by_owner += 1
        self._give_up(batch[i + 1 :], cancelled, history)

    async def _before_retry(self, delay: float) -> bool:
        """Wait ``delay`` s before a retry; return False if the subscription was given up on.

        The wait ends early when it is (``abandon``): an unsubscribed or
        closed subscription does not keep its events for a retry that will
        not come.
        """
        if delay > 0 and not self.abandoned:
            loop = asyncio.get_running_loop()
            wake: asyncio.Future[None] = loop.create_future()
            self._retry_wake = wake
            timer = loop.call_later(delay, wake_future, wake)
            try:
                if not self.abandoned:  # abandon() sees the future, or this sees the flag
                    await wake
            finally:
                timer.cancel()
                self._retry_wake = None
        return not self.abandoned

    def abandon(self) -> Future[None] | None:
        """Handle nothing more, the batch in hand included (any thread: unsubscribe, close).

        A synchronous batch stops at its next event or retry; an ``async``
        batch waiting to retry stops waiting at once.  An ``async`` batch
        not inside its handler ends at once, so this returns its run: done
        once the batch has counted what it gave up (``close`` waits for it,
        so the figures are final when it returns).  A handler still running
        is left to finish on its own (None).
        """
        self.abandoned = True
        wake = self._retry_wake
        loop = self._loop
        if wake is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nothing waits
                loop.call_soon_threadsafe(wake_future, wake)
        state = self._async
        if state is None or state.done or state.in_handler:
            return None
        run = state.future
        return None if run is None or run.done() else run

    # -- failures ---------------------------------------------------------------------

    def _failed(self, event: Event, exc: BaseException, attempts: int) -> float | None:
        """Count a failed attempt; return the wait before the next, or None (no more).

        None: a dead letter, or the event's ``ttl`` has passed (counted
        expired: an expired event is neither retried nor a dead letter).

        Once the subscription is given up on (``abandon``: unsubscribed, or a
        close that stopped waiting) a failure is neither retried nor a dead
        letter: this returns 0.0, and the caller, which checks ``abandoned``
        (a flag that never goes back) before any retry, drops the event with
        the rest of its batch.

        Whatever a handler raises is its failure, ``BaseException``s included:
        a ``SystemExit`` or ``KeyboardInterrupt`` raised on a bus thread is
        not the process being asked to stop (signals reach the main thread),
        and a ``CancelledError`` that escapes an ``async def`` handler is
        the cancellation of something it awaited, not of the bus.  Letting
        any of them out would strand the subscription and its flushes.
        """
        self.errors += 1
        if self.abandoned:
            return 0.0
        if event.ttl is not None and expired_unix(event, time.time()):
            self.expired += 1  # its time is up: neither retried nor a dead letter
            return None
        policy = self.policy
        if attempts <= policy.retries and not isinstance(exc, BusClosedError):
            # A closed bus stays closed: no attempt would go otherwise.
            return backoff_delay(policy.retry_backoff, attempts)
        self._dead_letter(event, exc, attempts)
        return None

    def _dead_letter(self, event: Event, exc: BaseException, attempts: int) -> None:
        self.dead += 1
        tries = f"after {attempts} attempt(s)" if attempts else "before any attempt"
        logger.warning(
            "handler of %s (%r) failed on %s %s: %r",
            self.sub_id,
            self.pattern,
            event.event_type,
            tries,
            exc,
        )
        self.ports.router.put(
            DeadLettered(
                DeadLetter(
                    subscription_id=self.sub_id,
                    pattern=self.pattern,
                    event=event,
                    error_type=type(exc).__name__,
                    error=exception_text(exc),
                    attempts=attempts,
                )
            )
        )
