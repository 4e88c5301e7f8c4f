"""Handler policies: a timeout and a retry backoff per subscription.

``subscribe(..., timeout=, retry_backoff=, retries=)`` (and ``respond``)
build one ``HandlerPolicy``; ``docs/architecture.md`` ("Handler policies")
says what a user sees.  Here are the parts that need no actor:

- ``backoff_delay``: the wait before a retry, exponential with full jitter.
- ``CallWatch``: watches a synchronous handler's calls against the timeout
  from the bus's ``Timers`` thread.  A call cannot be interrupted, so a late
  one is reported; on a dedicated thread the watch also hands the actor to a
  new thread (``Dispatcher.hand_off``) so the subscription moves on.
- ``SyncRun``: where a synchronous batch stopped (a retry waiting for its
  timer, a call left behind), so the next turn goes on from there and the
  subscription keeps its order.

Who writes what: a ``Call``'s ``timed_out``/``left_behind`` and the watch's
``_call``/``_armed`` change under the watch's lock only (the handler's thread
starts and finishes calls, the timer thread fires); a ``SyncRun`` belongs to
whichever thread runs the actor's turn.
"""

from __future__ import annotations

import contextvars
import random
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future

    from actors._model.event import Event
    from actors._runtime.timers import Timer, Timers

__all__ = [
    "LOOP_WATCH",
    "AsyncRun",
    "DEFAULT_RETRY_BACKOFF",
    "MAX_BACKOFF",
    "MAX_LEFT_BEHIND",
    "Call",
    "CallWatch",
    "HandlerPolicy",
    "SyncRun",
    "backoff_delay",
    "exception_text",
    "handler_timeout_error",
    "settle_current_call",
]

DEFAULT_RETRY_BACKOFF = 0.1  # seconds: the first retry waits up to this
MAX_BACKOFF = 30.0  # no retry waits longer
# Calls a dedicated-thread subscription may leave running past their timeout;
# beyond that it waits for the current call (each holds a thread).
MAX_LEFT_BEHIND = 16

Batch = list[tuple["Event", float]]


@dataclass(frozen=True, slots=True)
class HandlerPolicy:
    """How a subscription runs its handler: retries, their backoff, a timeout.

    ``retries`` extra attempts after a failure (then a dead letter); before
    retry ``n`` (1 for the first) the subscription waits ``backoff_delay(
    retry_backoff, n)`` (0 retries at once); ``timeout`` seconds per call
    (None: no limit); ``move_on``: a synchronous call past its timeout is left
    running and the subscription goes on (a dedicated thread).
    """

    retries: int = 0
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    timeout: float | None = None
    move_on: bool = False


def backoff_delay(
    base: float, retry: int, rng: random.Random | None = None, cap: float = MAX_BACKOFF
) -> float:
    """Return the wait before retry number ``retry`` (1 for the first): full jitter.

    Drawn uniformly from ``[0, min(cap, base * 2 ** (retry - 1))]`` (AWS's
    "full jitter": retries of many failing events spread out instead of
    coming back together).  ``0`` when ``base`` is 0 (retry at once).
    """
    if base <= 0:
        return 0.0
    bound = min(cap, base * 2.0 ** min(max(retry - 1, 0), 64))
    return (rng or random).uniform(0.0, bound)


def handler_timeout_error(timeout: float) -> TimeoutError:
    """Return the error a dead letter records for a call cancelled at its timeout."""
    return TimeoutError(f"handler ran longer than its timeout of {timeout} s")


class Call:
    """One synchronous handler call being watched."""

    __slots__ = ("deadline", "event", "left_behind", "timed_out")

    def __init__(self, event: Event, deadline: float) -> None:
        self.event = event
        self.deadline = deadline
        self.timed_out = False
        self.left_behind = False


current_call: contextvars.ContextVar[tuple[CallWatch, Call] | None] = contextvars.ContextVar(
    "actors_current_call", default=None
)
"""The watched synchronous call running on this thread (set by ``CallWatch.start``)."""


def settle_current_call() -> float | None:
    """Settle the watched call running here as it returns: its timeout if it timed out.

    For a wrapper of the handler (``actors.otel``), which learns this before
    the subscriber does: the call is settled now, so the watch's timer can
    no longer find it late afterwards, and the answer agrees with what
    ``timeouts`` counts.  None: not timed out, or no watched call here.
    """
    watched = current_call.get()
    if watched is None:
        return None
    watch, call = watched
    return watch.timeout if watch.settle(call) else None


class CallWatch:
    """Report synchronous calls that outlive ``timeout``; leave them behind if allowed.

    At most one timer is pending per watch, whatever the call rate: a call
    arms one only when none is pending, and a timer that finds a newer call
    re-arms for that call's deadline.  When a call is late, ``hand_off``
    (None: never) is asked, under the lock, to move the actor to a new
    thread; then ``on_timeout`` runs on the timer thread with the call.
    """

    def __init__(
        self,
        timeout: float,
        timers: Timers,
        on_timeout: Callable[[Call], None],
        hand_off: Callable[[], bool] | None = None,
    ) -> None:
        self.timeout = timeout
        self._timers = timers
        self._on_timeout = on_timeout
        self._hand_off = hand_off
        self._lock = threading.Lock()
        self._call: Call | None = None
        self._armed = False
        self._closed = False
        self._timer: Timer | None = None

    def start(self, event: Event) -> Call:
        """Record that a call for ``event`` starts now (the handler's thread)."""
        call = Call(event, time.monotonic() + self.timeout)
        with self._lock:
            self._call = call
            arm = not self._armed and not self._closed
            self._armed = True
            if arm:
                self._timer = self._timers.call_at(call.deadline, self._fire)
        current_call.set((self, call))
        return call

    def close(self) -> None:
        """Stop watching (the subscription stopped): the pending timer lets the actor go."""
        with self._lock:
            self._closed = True
            self._call = None
            timer, self._timer = self._timer, None
        if timer is not None:
            self._timers.cancel(timer)

    def finish(self, call: Call) -> bool:
        """Record that ``call`` returned; False if it was left behind (touch nothing then)."""
        current_call.set(None)
        self.settle(call)  # after it no timer looks at ``call``: ``left_behind`` is final
        return not call.left_behind

    def settle(self, call: Call) -> bool:
        """Record that ``call`` returned (``finish`` then only tells); True if it timed out."""
        with self._lock:
            if self._call is call:
                self._call = None
            return call.timed_out

    def _fire(self) -> None:
        with self._lock:
            call = self._call
            if call is None or call.timed_out:
                self._armed = False  # the next call arms again
                return
            if time.monotonic() < call.deadline:
                rearm = call.deadline
            else:
                rearm = None
                call.timed_out = True
                if self._hand_off is not None and self._hand_off():
                    call.left_behind = True
                    self._call = None
                self._armed = False
        if rearm is not None:
            with self._lock:
                if not self._closed:
                    self._timer = self._timers.call_at(rearm, self._fire)
            return
        self._on_timeout(call)


@dataclass(slots=True, eq=False)
class SyncRun:
    """A synchronous batch that stopped before its end, and where.

    ``pos`` is the event being handled, ``attempts`` its attempts so far,
    ``delivered`` the batch's deliveries not yet counted, ``retry_at`` when
    the waiting retry is due (monotonic; None: not waiting), ``call`` the
    watched call of the event at ``pos`` while it runs.
    """

    batch: Batch
    history: bool
    pos: int = 0
    attempts: int = 0
    delivered: int = 0
    retry_at: float | None = None
    call: Call | None = None
    timer: Timer | None = None  # the wake-up at ``retry_at``


LOOP_WATCH = 1.0
"""How often (seconds) a subscription with a batch on an event loop checks that
the loop has not closed under it (``AsyncRun``)."""


@dataclass(slots=True, eq=False)
class AsyncRun:
    """A batch handed to an ``async def`` handler's event loop, and how far it got.

    ``pos`` counts the events finished; ``started`` and ``done`` are set by
    the coroutine (``run``) on the loop.  A loop closed with the batch
    unfinished runs nothing more: the subscriber then gives up the rest.
    """

    batch: Batch
    history: bool
    pos: int = 0
    started: bool = False
    done: bool = False
    in_handler: int = 0  # the attempt inside the handler's call (0: between events, or waiting)
    waiting: tuple[BaseException, int] | None = None  # the last error and attempts, while it waits
    run: Coroutine[Any, Any, None] | None = None
    future: Future[None] | None = None  # ``run`` on the loop: done once it has ended


def exception_text(exc: BaseException) -> str:
    """Return ``exc`` as the last line of its traceback (``Type: message``); never raises.

    A handler may raise what ``traceback`` cannot format (a ``SyntaxError``
    whose ``text`` is bytes, a ``__str__`` or ``__notes__`` that raises): its
    dead letter then says so, and the subscription goes on.  A lone surrogate
    in the text comes out as an escape (``\\udcff``).
    """
    try:
        text = "".join(traceback.format_exception_only(exc)).strip()
    except BaseException:  # whatever formatting it raises: this runs on a bus thread
        text = f"{type(exc).__name__} (its message could not be formatted)"
    # A lone surrogate (a file name decoded with ``surrogateescape``) as an escape:
    # UTF-8 cannot carry it, and the dead letter would not be journaled.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
