"""Handlers that wait for another bus: a ``close`` or ``flush`` of bus B from a handler of bus A.

Such a call waits for B's handlers (``docs/architecture.md``, "Inside").  If
a handler of B waits, in its turn, for A (directly or through other buses),
neither wait could end: so each waiting handler is noted here, by the bus it
runs in and the bus it waits for, and a wait that would close a circle is
told so instead of being made (``close`` then acts as from inside, ``flush``
raises).  The check and the note are one step under a lock: of two handlers
that begin such waits at once, the second sees the first.

A ``close`` of B waits for every handler of B; a ``flush`` only for the
subscriptions its ``Flush`` put a barrier in, each until it has handled
the events routed before it: a handler of B whose subscription's barrier
passed (or that had none) closes no circle with it.  Only a handler
running now counts: a thread or task it began (which inherits its context),
or a call its ``timeout`` left behind, waits as any outside caller does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from actors._core.handling import Batch, HandlerRuns, current_run

__all__ = ["Wait", "awaited", "handler_of", "live_run", "waiting_for"]

_lock = threading.Lock()


class Wait:
    """A handler of ``caller`` (``runs``, its subscription) waiting for ``target``.

    A ``flush`` waits only for the subscriptions of ``target`` its ``Flush``
    put a barrier in, each until that barrier passes: ``pending`` once the
    router took the ``Flush`` (``taken``, then ``passed``); before that, for
    each subscription not cancelled (the ``Flush`` will find its route).  A
    ``close`` waits for every handler of ``target``.
    """

    __slots__ = ("caller", "circle", "flush", "on", "pending", "runs", "target")

    def __init__(
        self, caller: object, target: object, runs: HandlerRuns | None, flush: bool
    ) -> None:
        self.caller = caller
        self.target = target
        self.runs = runs
        self.on = None if runs is None else runs.running_on  # the handler's run, while it lasts
        self.flush = flush
        self.pending: set[object] | None = None
        self.circle = False  # the wait would close a circle: not made

    def taken(self, mailboxes: list[object]) -> Callable[[object], None]:
        """The router took the ``Flush`` with barriers in ``mailboxes`` (its thread).

        Returns what to call with each mailbox as its barrier passes.
        """
        self.pending = set(mailboxes)
        return self.pending.discard

    def watching(self) -> Callable[[list[object]], Callable[[object], None]] | None:
        """Return ``taken`` for a noted wait (a handler's), None for any other caller's flush."""
        return self.taken if self.runs is not None else None

    def live(self) -> bool:
        """Return whether the handler still runs the call that waits.

        A call its ``timeout`` left behind is no longer the subscription's:
        its bus waits for it no more (it waits as any outside caller does).
        """
        return self.runs is None or self.runs.running_on is self.on

    def covers(self, runs: HandlerRuns | None) -> bool:
        """Return whether this wait waits for the handler ``runs`` (its subscription).

        A flush does not wait for a subscription whose barrier passed, or
        that had none: made after the ``Flush`` (a catch-up replaying old
        events included), or cancelled before it (its handler maybe still
        running).
        """
        if not self.flush or runs is None:
            return True
        pending = self.pending
        if pending is None:  # its route goes before the Flush comes (not so for a close's)
            return not runs.cancelled
        return runs.actor_inbox in pending


# The bus (its router) a handler runs in -> the waits of its handlers.
_waits: dict[object, list[Wait]] = {}


def _task() -> object:
    """Return the task running on this thread's loop (None without one)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def live_run() -> tuple[HandlerRuns, Batch] | None:
    """Return the subscriber and batch of the handler the caller runs in, if running now.

    Not for a thread or task the handler began (it inherits ``current_run``),
    nor for a call left behind by its ``timeout`` (its subscription moved on).
    """
    run = current_run.get()
    if run is None:
        return None
    on = run[0].running_on
    if on is None or on[0] is not run[1] or on[1] not in (threading.get_ident(), _task()):
        return None
    return run


def handler_of(router: object) -> bool:
    """Return whether the caller is a handler of the bus whose router is ``router``, running now.

    Not a thread or task such a handler began (see ``live_run``).
    """
    run = live_run()
    return run is not None and run[0].ports.router is router


def awaited(target: object) -> bool:
    """Return whether a handler of another bus waits for ``target`` (a router) now."""
    with _lock:
        return any(w.target is target for waits in _waits.values() for w in waits)


def _reaches(wait: Wait) -> bool:
    """Return whether a chain of waits leads from ``wait.target`` back to ``wait``'s handler.

    Each wait in the chain, ``wait`` first, must wait for the handler that
    makes the next one (``covers``: a flush only for the subscriptions its
    barriers are still to pass in), the last one for ``wait``'s own
    handler; a wait whose call was left behind (``live``) is no link.
    """
    todo = [w for w in _waits.get(wait.target, ()) if w.live() and wait.covers(w.runs)]
    seen = {id(w) for w in todo}
    while todo:
        step = todo.pop()
        if step.target is wait.caller and step.covers(wait.runs):
            return True
        for after in _waits.get(step.target, ()):
            if id(after) not in seen and after.live() and step.covers(after.runs):
                seen.add(id(after))
                todo.append(after)
    return False


@contextmanager
def waiting_for(target: object, *, flush: bool = False) -> Iterator[Wait]:
    """Note that the caller, if a handler of another bus, waits for ``target`` (a router).

    Yields the ``Wait`` (a flush has the router call its ``taken`` as it
    takes the ``Flush``); outside a handler, and in a handler of ``target`` itself, one
    that is not noted (nothing can wait for it).  Where the wait would close
    a circle (a handler of ``target`` already waits, maybe through other
    buses, for the caller's handler) it is not noted and its ``circle`` is
    True; a ``flush`` raises ``RuntimeError`` then instead.
    """
    run = live_run()
    caller = None if run is None else run[0].ports.router
    if run is None or caller is target:
        yield Wait(caller, target, None, flush)
        return
    wait = Wait(caller, target, run[0], flush)
    with _lock:
        wait.circle = _reaches(wait)
        if not wait.circle:
            _waits.setdefault(caller, []).append(wait)
    if wait.circle and flush:
        msg = "flush() would wait for itself: a handler of that bus waits for this handler"
        raise RuntimeError(msg)
    try:
        yield wait
    finally:
        if not wait.circle:
            with _lock:
                waits = _waits[caller]
                waits.remove(wait)
                if not waits:
                    del _waits[caller]
