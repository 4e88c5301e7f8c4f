"""What ``AsyncEventBus`` holds open on a bus, ended once the bus's router stops.

A bus has one ``Holds`` (``holds_of``), shared by every ``AsyncEventBus``
made over it: its open streams and the futures its coroutines await.  The
router calls ``Holds.stopped`` once, on its thread, when it has stopped,
however the bus closed; every entry is then ended on its own loop.  One
``Holds`` per bus keeps the router's ``stop_listeners`` at one entry however
many times the bus is wrapped, and lets ``aclose`` reach every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from actors._core.router import RouterActor
from actors._errors import BusClosedError

__all__ = ["Holds", "fail_closed", "holds_of"]

K = TypeVar("K")


def fail_closed(waiting: asyncio.Future[Any]) -> None:
    """Fail ``waiting`` with ``BusClosedError`` unless it is done (on its loop)."""
    if not waiting.done():
        waiting.set_exception(BusClosedError("the bus was closed"))


class Holds:
    """What the async side holds open on one bus: its streams and awaited futures.

    Each entry is added and discarded on its own loop, with what ends it
    there.  The router calls ``stopped`` once, on its thread, when it has
    stopped (the bus closed, whichever way); every entry is then ended on
    its loop (``call_soon_threadsafe``), and one added later at once.  One
    lock guards the entries and the flag: the loops and the router's
    thread both reach them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[object, tuple[asyncio.AbstractEventLoop, Callable[[], object]]] = {}
        self._stopped = False
        self._done = threading.Event()  # set once the router has stopped
        self.closing = False  # an ``aclose`` began: streams opened now start ended

    def add(self, key: object, end: Callable[[], object]) -> None:
        """Hold ``key`` until discarded; ``end`` is called on this loop if the bus stops first."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._stopped:
                self._entries[key] = (loop, end)
                return
        end()

    def wait_stopped(self, timeout: float | None) -> bool:
        """Block until the router has stopped (another thread's close), or ``timeout``."""
        return self._done.wait(timeout)

    def discard(self, key: object) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def held(self, kind: type[K]) -> list[tuple[asyncio.AbstractEventLoop, K]]:
        """Return the entries of type ``kind``, each with its loop."""
        with self._lock:
            return [(loop, k) for k, (loop, _) in self._entries.items() if isinstance(k, kind)]

    def stopped(self) -> None:
        """End every entry on its own loop (the router's thread, once it has stopped)."""
        with self._lock:
            self._stopped = True
            entries, self._entries = list(self._entries.values()), {}
        self._done.set()
        for loop, end in entries:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits there
                loop.call_soon_threadsafe(end)


_HOLDS: weakref.WeakKeyDictionary[RouterActor, Holds] = weakref.WeakKeyDictionary()
_HOLDS_LOCK = threading.Lock()  # an AsyncEventBus may be made on any thread


def holds_of(router: RouterActor) -> Holds:
    """Return the ``Holds`` of the bus ``router`` serves; it is told when the router stops."""
    with _HOLDS_LOCK:
        holds = _HOLDS.get(router)
        if holds is not None:
            return holds
        holds = _HOLDS[router] = Holds()
        router.stop_listeners.append(holds.stopped)
    # The router sets actor_stopped before it calls its listeners: if it did
    # so before the append, it may have missed this one.
    if router.actor_stopped.is_set():
        holds.stopped()
    return holds
