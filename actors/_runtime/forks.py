"""Buses a forked child inherits: closed to it at once, never torn down there.

After ``os.fork()`` (``multiprocessing``'s default start method on Linux)
the child has the parent's buses without their threads: a call would wait
for actors that do not exist.  So each live bus is marked closed in the
child (its calls raise ``BusClosedError`` saying so, and ``close`` returns
at once).  A child opens buses of its own.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["Forkable", "track"]


class Forkable(Protocol):
    def _forked(self, parent: int) -> None: ...


_LIVE: weakref.WeakSet[Forkable] = weakref.WeakSet()


def track(bus: Forkable) -> None:
    """Mark ``bus`` closed in any child this process forks from now on."""
    _LIVE.add(bus)


def _in_child() -> None:
    parent = os.getppid()
    for bus in list(_LIVE):
        bus._forked(parent)  # noqa: SLF001 - the bus's own hook
    _LIVE.clear()


os.register_at_fork(after_in_child=_in_child)
