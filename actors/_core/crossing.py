"""Handlers that wait for another bus: a ``close`` or ``flush`` of bus B from a handler of bus A.

Such a call waits for B's handlers (``docs/architecture.md``, "Inside").  If
a handler of B waits, in its turn, for A (directly or through other buses),
neither wait could end: so each waiting handler is noted here, by the bus it
runs in and the bus it waits for, and a wait that would close a circle is
told so instead of being made (``close`` then acts as from inside, ``flush``
raises).  The check and the note are one step under a lock: of two handlers
that begin such waits at once, the second sees the first.

A ``close`` of B waits for every handler of B; a ``flush`` only for the
events published before it: a handler of B whose event came later closes no
circle with it (the time each event was published tells).  Only a handler
running now counts: a thread or task it began (which inherits its context),
or a call its ``timeout`` left behind, waits as any outside caller does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from actors._core.handling import Batch, HandlerRuns, current_event, current_run

__all__ = ["awaited", "live_run", "waiting_for"]

_lock = threading.Lock()
# The bus (its router) a handler runs in -> (the bus it waits for, and for a
# flush the ``perf_counter`` time it began: it waits for what was published
# before), counted.
_waits: dict[object, Counter[tuple[object, float | None]]] = {}


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
        return any(target is bus for edges in _waits.values() for bus, _ in edges)


def _published_at(batch: Batch) -> float | None:
    """Return when the event the caller handles was published (None if not found)."""
    event = current_event.get()
    return next((at for e, at in batch if e is event), None)


def _reaches(start: object, goal: object, published: float | None) -> bool:
    """Return whether a handler of ``start`` waits, through any buses, for ``goal``'s handler.

    That handler's event was published at ``published``: a flush of ``goal``
    begun before it does not wait for it (None: counted as waited for).
    """
    seen = {start}
    todo = [start]
    while todo:
        for bus, since in _waits.get(todo.pop(), ()):
            if bus is goal:
                if since is None or published is None or published < since:
                    return True
            elif bus not in seen:
                seen.add(bus)
                todo.append(bus)
    return False


@contextmanager
def waiting_for(target: object, *, flush: bool = False) -> Iterator[bool]:
    """Note that the caller, if a handler of another bus, waits for ``target`` (a router).

    Yields True, noting nothing, where that wait would close a circle: a
    handler of ``target`` already waits for the caller's handler; a
    ``flush`` raises ``RuntimeError`` then instead.  Outside a handler, and
    in a handler of ``target`` itself, yields False.
    """
    run = live_run()
    caller = None if run is None else run[0].ports.router
    if run is None or caller is target:
        yield False
        return
    edge = (target, time.perf_counter() if flush else None)
    with _lock:
        circle = _reaches(target, caller, _published_at(run[1]))
        if not circle:
            _waits.setdefault(caller, Counter())[edge] += 1
    if circle and flush:
        msg = "flush() would wait for itself: a handler of that bus waits for this handler"
        raise RuntimeError(msg)
    try:
        yield circle
    finally:
        if not circle:
            with _lock:
                edges = _waits[caller]
                edges[edge] -= 1
                if not edges[edge]:
                    del edges[edge]
                if not edges:
                    del _waits[caller]
