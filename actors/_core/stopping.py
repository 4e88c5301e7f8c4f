"""Stop a bus's actors within one deadline, and say what was abandoned.

Subscribers first, waited for until the deadline, so the batches under way
(a handler's own close returns before its batch ends) record their progress
through the router; then the router and correlation; then an ``async`` batch
still on its loop gets the grace (it records its progress to the journal
straight); the journal last, so the router's final records reach it (the
journal closes its storage).  Handlers get until the deadline; the bus's own
actors run no user code, so they get a short grace beyond it.  A thread stuck
in a handler is never joined past the deadline: it is a daemon thread,
abandoned, and its subscription is reported.
A handler that closes its own bus is the caller: the event it is handling is
not reported as given up, only what is queued behind it (``_behind_caller``).
A caller that cannot wait (``close`` inside a handler, whose own thread may be
needed) leaves the stopping to a thread of its own, which waits as ``close``
would: the router always stops, so its stop listeners and the flushes still
waiting hear of it, and only then do the dispatchers go.  An ``async``
batch given up on while it waited to retry (or between two events) ends at
once; it is waited for within the grace, so its figures are final when
``close`` returns.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from actors._core.crossing import live_run
from actors._core.handling import running_here
from actors._core.subscriber import SubscriberActor, current_event
from actors._core.wiring import Core
from actors._model.metrics import SubscriptionStatistics
from actors._runtime.dispatcher import DispatchedActor
from actors._runtime.pool import Scheduler
from actors._runtime.shutdown import Deadline, send_stop, wait_stopped

__all__ = ["stop_actors"]

logger = logging.getLogger("actors.bus")


RELEASE_WAIT = 10.0
"""How long past the grace ``close`` waits for the node's sockets and the journal's files
to be released (seconds): a bus opened again on them right after ``close`` finds them free."""


def stop_actors(
    core: Core,
    *,
    system: Scheduler,
    deadline: Deadline,
    grace: float,
    wait: bool,
    bridge_close: Callable[[float | None], None] | None,
    journal: DispatchedActor | None,
    journal_closed: Callable[[float | None], bool] | None = None,
    settle: Callable[[], None] | None = None,
    ended: threading.Event | None = None,
    failed: list[BaseException] | None = None,
) -> tuple[SubscriptionStatistics, ...]:
    """Stop every actor of ``core`` (and the journal); return the subscriptions given up on.

    ``journal_closed(timeout)`` waits for the journal's files to be closed;
    ``settle()`` runs once the actors stopped (it fails what waits for them);
    ``ended`` is set once everything is done, however the stop went, with
    what it raised in ``failed`` (else raised on the stopping thread).
    """
    subs = core.take_subscribers()
    caller = running_here(core.router)  # a handler of this bus closing it
    unfinished = [
        stats
        for stats in (
            a.statistics() if caller is None or caller[0] is not a else _behind_caller(a)
            for a in subs
        )
        if stats.queued or stats.in_flight
    ]
    retrying = {a.sub_id for a in subs if a.waiting_to_retry()}  # for close's warnings
    # Nothing more is handled once close gives up; async batches that were
    # waiting to retry end at once, and are waited for (their figures).
    ending = [run for run in (actor.abandon() for actor in subs) if run is not None]
    stop = functools.partial(
        _stop_then,
        ended,
        failed,
        core,
        subs,
        (unfinished, retrying),
        ending,
        system,
        deadline,
        grace,
        bridge_close,
        journal,
        journal_closed,
        settle,
    )
    if wait:
        stop()
    else:
        # Stopping without waiting would race the dispatchers' shutdown: an
        # actor scheduled after it (the router, busy with ``Closing``) never
        # runs its stop.  A thread of its own waits instead of the caller.
        threading.Thread(target=stop, name="bus-close", daemon=True).start()
    return tuple(unfinished)


def _behind_caller(actor: SubscriberActor) -> SubscriptionStatistics:
    """Return the figures of the subscription whose handler is calling ``close``.

    The event it is handling is the caller's, not given up on: it is left
    out (one fewer ``accepted`` and ``in_flight``).  The events its batch
    handled before it, which a batch counts at its end, are counted
    delivered; ``in_flight`` keeps only the rest of the batch, after it.
    So ``queued + in_flight`` is what ``close`` gives up on.
    """
    stats = actor.statistics()
    run = live_run()
    if run is None or run[0] is not actor:
        return stats  # a call left behind, or a task or thread its handler began
    batch = run[1]
    event = current_event.get()
    at = next((i for i, (e, _) in enumerate(batch) if e is event), None)
    if at is None or not stats.in_flight:  # not handling one of this batch's events
        return stats
    rest = min(len(batch) - at - 1, stats.in_flight - 1)
    return dataclasses.replace(
        stats,
        accepted=stats.accepted - 1,
        in_flight=rest,
        delivered=stats.delivered + stats.in_flight - 1 - rest,
    )


def _stop_then(
    ended: threading.Event | None, failed: list[BaseException] | None, *args: Any
) -> None:
    try:
        _stop(*args)
    except BaseException as exc:
        if failed is None:
            raise
        # Told here (nobody may wait for it: a handler's close), and raised
        # again by the close that waits for it.
        logger.exception("close(): stopping the bus failed")
        failed.append(exc)
    finally:
        if ended is not None:
            ended.set()


def _stop(  # noqa: PLR0917 - stop_actors' arguments, passed on
    core: Core,
    subs: list[SubscriberActor],
    given_up: tuple[list[SubscriptionStatistics], set[str]],
    ending: list[Future[None]],
    system: Scheduler,
    deadline: Deadline,
    grace: float,
    bridge_close: Callable[[float | None], None] | None,
    journal: DispatchedActor | None,
    journal_closed: Callable[[float | None], bool] | None,
    settle: Callable[[], None] | None,
) -> None:
    own_deadline = deadline.extended(grace)
    # Sockets (a bound address) and the journal's files are released before
    # ``close`` returns, the deadline past or not: see ``RELEASE_WAIT``.
    release = own_deadline.extended(RELEASE_WAIT)
    # A step that fails (a journal that cannot close its files) stops none
    # of the others: the first error is raised once every step ran.
    errors: list[BaseException] = []
    if bridge_close is not None:
        _step(errors, bridge_close, release.remaining())
    told = send_stop(a.actor_ref for a in subs)
    if ending:
        concurrent.futures.wait(ending, own_deadline.remaining())
    # The subscriptions first: a batch that ends now (a handler that closed
    # its bus returns after it) records its progress, a durable one's
    # checkpoint, through the router and the journal, which must still run.
    running = {ref.actor_urn for ref in wait_stopped(told, deadline)}
    late = wait_stopped(send_stop(core.refs()), own_deadline)
    if core.router.actor_ref in late:
        # Given up on (a filter holds it): it may never stop, so what its stop
        # would end ends now (each listener ends things once, whoever calls it):
        # awaited flushes and queries raise BusClosedError, stranded publishes fail.
        for listener in list(core.router.stop_listeners):
            _step(errors, listener)
    # An ``async`` batch goes on on its loop after its actor stopped: what it
    # awaits may be what the router's stop ends (a stream), and the loop may
    # be the one a ``close`` blocks, so it gets the grace at most, after the
    # router; what it records then goes to the journal straight.
    batches = [run for run in (a.async_batch() for a in subs) if run is not None]
    if batches:
        left = own_deadline.remaining()
        concurrent.futures.wait(batches, grace if left is None else min(grace, left))
    if journal is not None:
        own = send_stop([journal.actor_ref])
        late += wait_stopped(own, own_deadline)
        journal.actor_dispatcher.shutdown(own_deadline.remaining())
        if journal_closed is not None and not _step(errors, journal_closed, release.remaining()):
            logger.warning(
                "close(): the journal did not close its files within %.0f s of the "
                "deadline; it goes on closing on its own thread",
                RELEASE_WAIT,
            )
    for ref in late:
        logger.warning("close(): %s did not stop in time; abandoned", ref)
    for actor in subs:
        if actor.actor_dispatcher is not core.dispatcher:
            actor.actor_dispatcher.shutdown(deadline.remaining())
    retired = [pool.join(deadline.remaining()) for pool in core.take_retired()]
    unfinished, retrying = given_up
    urns = {a.sub_id: a.actor_urn for a in subs}
    # Subscriptions whose handler runs (one waiting to retry is not running it).
    handling = running - {urns[sub_id] for sub_id in retrying}
    shut = core.dispatcher.shutdown(deadline.remaining()) and all(retired)
    if not shut and not handling:
        # A thread may still be ending the turn that stopped its actor: a
        # moment more (only here: a stuck handler close knows of is not waited for).
        shut = core.dispatcher.join(TURN_ENDING) and all(retired)
    if not shut and not handling:
        # No subscription close waited for is still running: a handler of
        # one removed before (``unsubscribe`` cannot stop a running call).
        logger.warning(
            "close(): a handler of a subscription unsubscribed before close was "
            "still running at the deadline; abandoned on its thread"
        )
    system.shutdown(own_deadline.remaining())
    left = own_deadline.remaining()
    core.stop_loop(grace if left is None else min(grace, left))
    if settle is not None:
        settle()
    for stats in unfinished:
        still = urns[stats.id] in handling
        logger.warning(
            "close(): gave up on subscription %s (%r) with %d event(s) unhandled "
            "(%d queued, %d in flight)%s",
            stats.id,
            stats.pattern,
            stats.queued + stats.in_flight,
            stats.queued,
            stats.in_flight,
            RETRY_GIVEN_UP
            if stats.id in retrying
            else _fate(still=still, in_flight=stats.in_flight),
        )
    if errors:
        raise errors[0]


def _step(errors: list[BaseException], step: Callable[..., Any], *args: Any) -> Any:
    """Run ``step``; keep what it raises in ``errors`` (the stop goes on) and return True."""
    try:
        return step(*args)
    except BaseException as exc:
        errors.append(exc)
        return True


TURN_ENDING = 0.05
"""How long past the deadline a dispatcher thread gets to end the turn that stopped its actor."""

RETRY_GIVEN_UP = "; a failed event was waiting out its retry_backoff: it is not retried"
"""What close says of a subscription given up on while it waited to retry (no handler runs)."""


def _fate(*, still: bool, in_flight: int) -> str:
    """Say what became of a subscription that had not stopped by the deadline."""
    if not still:
        return ""
    if in_flight:
        return "; its handler is still running and is abandoned"
    return "; it never got a thread to run on (every dispatcher thread was busy)"
