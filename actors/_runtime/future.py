"""A light pykka future for the publish path.

pykka's ``ThreadingFuture`` builds a ``threading.Condition`` per future (about
a microsecond); a publish needs a future that costs almost nothing unless
somebody actually waits on it.  ``BusFuture`` keeps its result in plain slots
and creates a ``threading.Event`` only when a caller blocks in ``get``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import pykka
from pykka._future import _Unset

from actors._errors import FutureTimeoutError

logger = logging.getLogger("actors.future")

__all__ = ["BusFuture", "FutureTimeoutError", "Latch", "wrap_future"]

T = TypeVar("T")

# Guards creation of waiter events and callback lists.  Uncontended on the
# hot path: ``set`` takes it once, briefly.
_LOCK = threading.Lock()


class BusFuture(pykka.Future[T], Generic[T]):
    """A write-once result, readable with ``get(timeout=...)`` from any thread.

    ``get`` blocks until the value is set (or the timeout passes, raising
    ``FutureTimeoutError``), then returns it or raises the stored exception.
    ``add_done_callback`` runs a function once the future is done (at once if
    it already is), in the thread that completes it.
    """

    __slots__ = ("_callbacks", "_done", "_exc", "_value", "_waiter")

    # pykka.Future.__init__ only sets these two; class-level defaults save a
    # call per publish (a future costs ~0.15 us instead of ~0.65 us).
    _get_hook = None
    _get_hook_result: Any = _Unset()

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._waiter: threading.Event | None = None
        self._callbacks: list[Callable[[BusFuture[T]], None]] | None = None

    @classmethod
    def completed(cls, value: T) -> BusFuture[T]:
        """Return a future that already holds ``value``."""
        fut: BusFuture[T] = cls()
        fut._value = value
        fut._done = True
        return fut

    @classmethod
    def failed(cls, exc: BaseException) -> BusFuture[T]:
        """Return a future that already holds ``exc``."""
        fut: BusFuture[T] = cls()
        fut._exc = exc
        fut._done = True
        return fut

    def done(self) -> bool:
        """Return whether a value or an exception has been set."""
        return self._done

    def get(self, timeout: float | None = None) -> T:
        """Return the value, waiting up to ``timeout`` seconds (forever if None).

        ``timeout`` may be given positionally, as ``concurrent.futures`` allows.
        Raises the stored exception if one was set, or ``FutureTimeoutError``.
        """
        if not self._done:
            if self._get_hook is not None:
                return cast("T", super().get(timeout=timeout))
            with _LOCK:
                if self._waiter is None:
                    self._waiter = threading.Event()
                waiter = self._waiter
            if not self._done and not waiter.wait(timeout):
                raise FutureTimeoutError(f"{timeout} seconds")
        if self._exc is not None:
            raise self._exc
        return cast("T", self._value)

    def exception(self) -> BaseException | None:
        """Return the stored exception of a done future, or None."""
        return self._exc

    def set(self, value: T | None = None) -> None:
        """Store ``value`` and wake every waiter."""
        self._complete(value, None)

    def set_exception(
        self,
        exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
        | BaseException
        | None = None,
    ) -> None:
        """Store an exception (an instance, an ``exc_info`` triple, or the current one)."""
        if exc_info is None:
            exc_info = sys.exc_info()
        exc = exc_info if isinstance(exc_info, BaseException) else exc_info[1]
        if exc is None:
            exc = RuntimeError("future failed without an exception")
        self._complete(None, exc)

    def add_done_callback(self, fn: Callable[[BusFuture[T]], None]) -> None:
        """Call ``fn(self)`` when the future is done (immediately if it is)."""
        with _LOCK:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                fn = None  # type: ignore[assignment]
        if fn is not None:
            # Done already: the caller's own thread runs it, and only an
            # ``Exception`` is caught, as concurrent.futures does; Ctrl-C
            # there is the caller's to receive.
            try:
                fn(self)
            except Exception:
                logger.exception("a done callback of a bus future failed")
        elif self._done:
            # Completed while we appended: whoever takes the list runs it.
            self._run_callbacks()

    def remove_done_callback(self, fn: Callable[[BusFuture[T]], None]) -> None:
        """Forget ``fn`` if it is still to run (its caller stopped waiting for this future)."""
        with _LOCK:
            callbacks = self._callbacks
            if callbacks is not None and not self._done and fn in callbacks:
                callbacks.remove(fn)

    def _complete(self, value: Any, exc: BaseException | None) -> None:
        # Lock-free on the hot path.  The GIL orders these writes: a waiter
        # creates its Event and then re-checks ``_done``, we set ``_done`` and
        # then look for a waiter, so one of us always sees the other.
        if self._done:
            return
        self._value = value
        self._exc = exc
        self._done = True
        waiter = self._waiter
        if waiter is not None:
            waiter.set()
        if self._callbacks is not None:
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        with _LOCK:
            callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for fn in callbacks:
                self._call(fn)

    def _call(self, fn: Callable[[BusFuture[T]], None]) -> None:
        # A callback that raises is logged, and neither the other callbacks
        # nor whoever completed the future (the router, the journal: one of
        # the bus's own threads) pay for it.  Whatever it raises: as for a
        # handler, a ``SystemExit`` or ``KeyboardInterrupt`` on a bus thread
        # is not the process being asked to stop, and letting it out would
        # end the router's turn and strand every later publish.
        try:
            fn(self)
        except BaseException:
            logger.exception("a done callback of a bus future failed")


def wrap_future(future: BusFuture[T]) -> asyncio.Future[T]:
    """Return an asyncio future of the running loop that mirrors ``future``.

    Awaiting it never blocks the loop: the completing thread hands the result
    over with ``call_soon_threadsafe``.  Must be called from a running loop.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def transfer(done: BusFuture[T]) -> None:
        if result.done():
            return
        exc = done.exception()
        if exc is not None:
            result.set_exception(exc)
        else:
            result.set_result(done.get())

    def on_done(done: BusFuture[T]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(transfer, done)

    future.add_done_callback(on_done)
    return result


class Latch:
    """Call ``done`` after ``count_down`` was called ``n`` times (from any threads)."""

    __slots__ = ("_done", "_lock", "_n")

    def __init__(self, n: int, done: Callable[[], None]) -> None:
        self._n = n
        self._done = done
        self._lock = threading.Lock()
        if n == 0:
            done()

    def count_down(self) -> None:
        with self._lock:
            self._n -= 1
            fire = self._n == 0
        if fire:
            self._done()
