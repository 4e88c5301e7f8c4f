"""Running the blocking parts of ``AsyncEventBus`` off the loop.

A publish that may wait for room, and the other calls that may block, run
on the bus's off-loop threads (``OFF_LOOP_THREADS`` at most, made as they
are needed and shared by every bus of the process), not in the loop's
default executor: that one has a few threads (six on two cores), which a
few publishes waiting out a full ``BLOCK`` subscription held, so a request
to an idle responder, or the application's own ``run_in_executor``, waited
behind them.  Closing runs on a thread of its own, so publishes waiting
there never hold up ``aclose``.  Each runs in a copy of the caller's
context, so a publish made from a handler keeps its causation.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from actors._core.backpressure import Withdrawn, withdrawal
from actors._model.event import Event
from actors._runtime.future import BusFuture, wrap_future

__all__ = ["in_background", "off_loop", "on_own_thread", "publish_off_loop", "withdrawable"]

T = TypeVar("T")
Publish = Callable[[Event], BusFuture[Event]]

OFF_LOOP_THREADS = 256
"""Off-loop calls (waiting publishes, mostly) running at once; more wait for a thread."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _off_loop_pool() -> ThreadPoolExecutor:
    """Return the process's off-loop threads (made on first use; again in a forked child)."""
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(OFF_LOOP_THREADS, thread_name_prefix="bus-offloop")
            pool = _pool
    return pool


def _forget_pool() -> None:
    """In a forked child: the parent's threads are not there; the next use makes new ones."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the off-loop threads, in a copy of the caller's context.

    The copy carries ``current_event`` (and any other context variable) to
    the thread, so a publish made there inherits causation and correlation
    as it would on the loop.
    """
    run = contextvars.copy_context().run
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_off_loop_pool(), functools.partial(run, fn, *args, **kwargs))


async def withdrawable(fn: Callable[..., T], *args: Any) -> T:
    """``off_loop(fn, *args)`` for a publish: cancelling the await withdraws it.

    A publish that is still waiting for room (a full ``BLOCK`` subscription,
    a peer out of credit) when the await is cancelled gives up within
    ``WITHDRAW_POLL`` seconds and is not published; one already on its way
    to the router is published all the same.
    """
    withdrawn = threading.Event()

    def job() -> T:
        if withdrawn.is_set():  # cancelled before the executor ran it
            raise Withdrawn("the publish was cancelled before it started")
        withdrawal.set(withdrawn)  # in the copy of the context this job runs in
        return fn(*args)

    try:
        return await off_loop(job)
    except asyncio.CancelledError:
        withdrawn.set()
        raise


def publish_off_loop(
    publish: Callable[[Event], BusFuture[Event]], withdrawn: threading.Event
) -> Publish:
    """Return a ``publish`` that returns at once and publishes on the off-loop threads.

    The returned future carries the outcome: the published event, or what
    ``publish`` raised (``BackpressureError`` after ``block_timeout``, ...).
    Setting ``withdrawn`` withdraws a publish still waiting for room (it
    ends within ``WITHDRAW_POLL`` with ``Withdrawn``, not published), so a
    caller that stopped waiting leaves no executor thread behind.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    context.run(withdrawal.set, withdrawn)
    run = context.run

    def start(event: Event) -> BusFuture[Event]:
        outcome: BusFuture[Event] = BusFuture()

        def job() -> None:
            try:
                if withdrawn.is_set():  # the caller stopped waiting before it started
                    raise Withdrawn("the request ended before its publish started")
                future = run(publish, event)
            except BaseException as exc:
                outcome.set_exception(exc)
                return
            future.add_done_callback(_pass_on(outcome))

        loop.run_in_executor(_off_loop_pool(), job)
        return outcome

    return start


def _pass_on(outcome: BusFuture[T]) -> Callable[[BusFuture[T]], None]:
    def transfer(done: BusFuture[T]) -> None:
        exc = done.exception()
        if exc is None:
            outcome.set(done.get())
        else:
            outcome.set_exception(exc)

    return transfer


async def on_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on a thread of its own and await its outcome.

    For closing: the off-loop threads may all be publishes waiting for room
    (each up to ``block_timeout``), and a close queued behind them would
    miss its deadline, or never run.  The thread is not a daemon, as
    an executor's is not: the interpreter's exit waits for a close under
    way.  A caller that stops awaiting (cancelled) leaves it running to its
    end; one that gets the outcome also finds the thread ended (joined: it
    has nothing left to do once it handed the outcome over).
    """
    done: BusFuture[T] = BusFuture()

    def job() -> None:
        try:
            done.set(fn(*args))
        except StopIteration:  # an asyncio future refuses it: the caller would hang
            done.set_exception(RuntimeError(f"{fn!r} raised StopIteration"))
        except BaseException as exc:  # handed to the caller on the loop
            done.set_exception(exc)

    outcome = wrap_future(done)
    thread = in_background(job)
    try:
        return await outcome
    finally:
        if not outcome.cancelled():
            thread.join()


def in_background(fn: Callable[..., object], *args: Any) -> threading.Thread:
    """Start ``fn(*args)`` on a thread of its own (``on_own_thread``), in a copy of the context."""
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(fn, *args), name="bus-aclose", daemon=False
    )
    thread.start()
    return thread
