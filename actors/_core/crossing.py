"""Handlers that wait for another bus: a ``close`` or ``flush`` of bus B from a handler of bus A.

Such a call waits for B's handlers (``docs/architecture.md``, "Inside").  If
a handler of B waits, in its turn, for A (directly or through other buses),
neither wait could end: so each waiting handler is noted here, by the bus it
runs in and the bus it waits for, and a wait that would close a circle is
told so instead of being made (``close`` then acts as from inside, ``flush``
raises).  The check and the note are one step under a lock: of two handlers
that begin such waits at once, the second sees the first.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from actors._core.handling import current_run

__all__ = ["awaited", "waiting_for"]

_lock = threading.Lock()
# The bus (its router) a handler runs in -> the buses its handlers wait for, counted.
_waits: dict[object, Counter[object]] = {}


def awaited(target: object) -> bool:
    """Return whether a handler of another bus waits for ``target`` (a router) now."""
    with _lock:
        return any(target in awaited for awaited in _waits.values())


def _reaches(start: object, goal: object) -> bool:
    """Return whether a handler of ``start`` waits, through any number of buses, for ``goal``."""
    seen = {start}
    todo = [start]
    while todo:
        for awaited in _waits.get(todo.pop(), ()):
            if awaited is goal:
                return True
            if awaited not in seen:
                seen.add(awaited)
                todo.append(awaited)
    return False


@contextmanager
def waiting_for(target: object, *, refuse: str = "") -> Iterator[bool]:
    """Note that the caller, if a handler of another bus, waits for ``target`` (a router).

    Yields True, noting nothing, where that wait would close a circle: a
    handler of ``target`` already waits for the caller's bus; with
    ``refuse`` (the call's name) raises ``RuntimeError`` then instead.
    Outside a handler, and in a handler of ``target`` itself, yields False.
    """
    run = current_run.get()
    caller = None if run is None else run[0].ports.router
    if caller is None or caller is target:
        yield False
        return
    with _lock:
        circle = _reaches(target, caller)
        if not circle:
            _waits.setdefault(caller, Counter())[target] += 1
    if circle and refuse:
        msg = f"{refuse} would wait for itself: a handler of that bus waits for this handler's bus"
        raise RuntimeError(msg)
    try:
        yield circle
    finally:
        if not circle:
            with _lock:
                awaited = _waits[caller]
                awaited[target] -= 1
                if not awaited[target]:
                    del awaited[target]
                if not awaited:
                    del _waits[caller]
