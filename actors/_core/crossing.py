"""Handlers that wait for another bus: a ``close`` or ``flush`` of bus B from a handler of bus A.

Such a call waits for B's handlers (``docs/architecture.md``, "Inside").  If
a handler of B waits, in its turn, for A (directly or through other buses),
neither wait could end: so each waiting handler is noted here, by the bus it
runs in and the bus it waits for, and a wait that would close a circle is
told so instead of being made (``close`` then acts as from inside, ``flush``
raises).  The check and the note are one step under a lock: of two handlers
that begin such waits at once, the second sees the first.

A ``close`` of B waits for every handler of B; a ``flush`` only for the
events B's router routed before its ``Flush``: a handler of B whose event
came later closes no circle with it (the sequence each event was given
tells, against the router's next sequence when it took the ``Flush``).  Only a handler
running now counts: a thread or task it began (which inherits its context),
or a call its ``timeout`` left behind, waits as any outside caller does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from actors._core.handling import Batch, HandlerRuns, current_event, current_run

__all__ = ["Wait", "awaited", "live_run", "waiting_for"]

_lock = threading.Lock()


class Wait:
    """A handler of ``caller`` (its batch's first sequence ``first``) waiting for ``target``.

    ``below``: a flush waits only for what ``target``'s router routed before
    its ``Flush``, the sequences below ``below`` (``routed``); None (a
    close, or a ``Flush`` not taken yet): for every handler of ``target``,
    whose events were all routed before any ``Flush`` still to come.
    """

    __slots__ = ("below", "caller", "circle", "first", "target")

    def __init__(self, caller: object, target: object, first: int | None) -> None:
        self.caller = caller
        self.target = target
        self.first = first
        self.below: int | None = None
        self.circle = False  # the wait would close a circle: not made

    def routed(self, below: int) -> None:
        """The router took the flush's ``Flush`` before sequence ``below`` (its thread)."""
        self.below = below

    def covers(self, first: int | None) -> bool:
        """Return whether this wait waits for a handler of a batch that begins at ``first``."""
        below = self.below
        return below is None or first is None or first < below


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


def awaited(target: object) -> bool:
    """Return whether a handler of another bus waits for ``target`` (a router) now."""
    with _lock:
        return any(w.target is target for waits in _waits.values() for w in waits)


def _first_sequence(batch: Batch) -> int | None:
    """Return the caller's batch's first sequence, as a flush sees it (None: unknown).

    A flush's barrier passes a synchronous batch only at its end, so the
    batch's earliest event counts.
    """
    if current_event.get() is None:
        return None
    return min((e.sequence for e, _ in batch if e.sequence is not None), default=None)


def _reaches(wait: Wait) -> bool:
    """Return whether a chain of waits leads from ``wait.target`` back to ``wait``'s handler.

    Each wait in the chain must wait for the handler that makes the next
    one (a flush does not wait for a handler of an event routed after
    it), the last one for ``wait``'s own handler.
    """
    todo = list(_waits.get(wait.target, ()))
    seen = {id(w) for w in todo}
    while todo:
        step = todo.pop()
        if step.target is wait.caller and step.covers(wait.first):
            return True
        for after in _waits.get(step.target, ()):
            if id(after) not in seen and step.covers(after.first):
                seen.add(id(after))
                todo.append(after)
    return False


@contextmanager
def waiting_for(target: object, *, flush: bool = False) -> Iterator[Wait]:
    """Note that the caller, if a handler of another bus, waits for ``target`` (a router).

    Yields the ``Wait`` (a flush has the router call its ``routed`` as it
    takes the ``Flush``); outside a handler, and in a handler of ``target`` itself, one
    that is not noted (nothing can wait for it).  Where the wait would close
    a circle (a handler of ``target`` already waits, maybe through other
    buses, for the caller's handler) it is not noted and its ``circle`` is
    True; a ``flush`` raises ``RuntimeError`` then instead.
    """
    run = live_run()
    caller = None if run is None else run[0].ports.router
    if run is None or caller is target:
        yield Wait(caller, target, None)
        return
    wait = Wait(caller, target, _first_sequence(run[1]))
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
