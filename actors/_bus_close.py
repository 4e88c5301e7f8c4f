"""How a bus closes: at once to new calls, then its actors stop on a thread of their own.

``close()`` refuses every call from its first line, flushes (unless called
from inside a handler, whose thread the flush may need), fails the callers
still waiting for replies, then stops the actors (``_core/stopping.py``) on
a thread of its own and waits for that thread.  So an interrupt (a Ctrl-C
landing while ``close`` waits) stops only the waiting: the stop goes on, and
the next ``close()`` waits for it again, or begins it if the interrupt came
before it did.  A ``close`` whose stop ran to its end makes every later one
return at once; so does a ``close`` under way on another thread.  A close
from inside a handler begins the stop and returns; the next ``close`` from
outside waits for it.  Inside means in a handler of this bus (or on one of
its threads): a handler of another bus closes it as any outside caller does.
A handler's own close does not count the event it is handling as given up
(``_core/stopping.py``).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Self

import pykka

from actors._core.crossing import waiting_for
from actors._core.handling import running_here
from actors._core.messages import Closing, Flush
from actors._core.stopping import RELEASE_WAIT, stop_actors
from actors._core.wiring import Core
from actors._errors import BusClosedError
from actors._model import checks
from actors._model.metrics import SubscriptionStatistics
from actors._runtime.future import BusFuture
from actors._runtime.shutdown import Deadline

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors._cluster.bridge import Bridge
    from actors._core.publishing import Publisher
    from actors._core.request_client import RequestClient
    from actors._journal.actor import JournalActor
    from actors._runtime.dispatcher import Dispatcher
    from actors._runtime.pool import SpareDispatcher

__all__ = ["CLOSE_GRACE", "Closable"]

logger = logging.getLogger("actors.bus")

# Seconds ``close(timeout)`` may take beyond ``timeout``: the bus's own
# actors (router, correlation, journal, bridge) get this long to stop after
# the handlers' deadline.  They run no user code, so they take milliseconds.
CLOSE_GRACE = 0.5

Stop = tuple[tuple[SubscriptionStatistics, ...], threading.Event, list[BaseException]]


class Closable:
    """``close`` and what answers around it, for ``EventBus`` (see the module docstring)."""

    _core: Core
    _publisher: Publisher
    _requests: RequestClient
    _dispatcher: Dispatcher
    _system: SpareDispatcher
    _bridge: Bridge | None
    _journal: JournalActor | None
    _settle_node: Callable[[], None] | None

    def _init_close(self) -> None:
        self._closed = False  # every call is refused from the first line of ``close``
        self._closing = threading.Event()  # set with ``_closed``: a replay under way ends
        self._closed_why = "the bus is closed"
        self._forked_from: int | None = None  # the parent's pid, in a forked child
        self._close_lock = threading.Lock()
        self._close_running = False  # a ``close`` call is under way
        self._close_finished = False  # a ``close`` saw the stop through
        self._stop: Stop | None = None  # begun: what it gave up on, and when it ended

    def _flush(self, timeout: float | None) -> None:
        raise NotImplementedError

    def close(self, timeout: float | None = None) -> tuple[SubscriptionStatistics, ...]:
        """Drain, flush and stop every actor, within ``timeout`` seconds.  Idempotent.

        Events published before ``close`` are handled first (unless called
        from inside a handler of this bus, where it cannot wait; the event
        that handler is handling is not reported as given up).  With a ``timeout`` it
        returns after at most ``timeout`` plus ``CLOSE_GRACE`` seconds (the
        bus's own actors get the grace to stop), whatever the handlers do: a
        handler still running then is abandoned on its daemon thread, and the
        events its subscription had not finished are discarded.  A journal
        still closing its files then, or a node its sockets, is waited for,
        up to 10 s more, so they are free as soon as ``close`` returns.  Logs each
        subscription it gave up on at WARNING and returns their statistics
        as they were when it gave up (empty when everything was handled).
        Afterwards calls raise ``BusClosedError``.  A ``close`` interrupted
        while it waited (a Ctrl-C) is seen through by the next; a stop that a
        ``close`` from inside a handler began is waited for within this
        ``timeout`` (and its grace, and the 10 s for files), then ``()``.
        A step of the stop that fails (a journal that cannot close its files)
        stops none of the others; its error is logged, and raised (once) by
        the ``close`` that waits for the stop.
        """
        return self._close_asked(timeout, timeout)

    def _close_asked(
        self, timeout: float | None, asked: float | None
    ) -> tuple[SubscriptionStatistics, ...]:
        """``close(timeout)`` for a caller that was asked for ``asked`` (its warnings say so).

        ``aclose(asked)`` flushes first, then closes within the time left.
        """
        checks.check_timeout("timeout", timeout)
        claimed = False
        try:
            with self._close_lock:
                if self._close_running or self._close_finished:
                    return ()
                first = not self._closed
                self._closed = True
                self._closing.set()
                # ``claimed`` first: an interrupt between the two leaves nothing set.
                claimed = self._close_running = True
            return self._close(timeout, asked, first=first)
        finally:
            if claimed:
                with self._close_lock:
                    self._close_running = False

    def _close(
        self, timeout: float | None, asked: float | None, *, first: bool
    ) -> tuple[SubscriptionStatistics, ...]:
        # A handler of another bus waits for this one, unless a handler of
        # this one waits for that bus: then neither could end (``crossing``).
        with waiting_for(self._core.router) as wait:
            return self._close_waiting(timeout, asked, first=first, circle=wait.circle)

    def _fail_waiting_handlers(self) -> None:
        """Fail the requests of this bus's handlers once no reply can come to them any more.

        A closing bus takes no new events, so once its reply routes handled
        what was routed before ``Closing`` (a ``Flush`` of those alone), a
        request still waiting gets no reply.  One made by a handler of this
        bus is failed then: the close's flush waits for that handler, which
        would wait for its reply (for ever, without a timeout).  Other
        callers are failed after the flush, as before: a peer's reply may
        still come in meanwhile.
        """
        requester = self._requests.requester

        def fail(_: BusFuture[None]) -> None:
            error = BusClosedError("the bus was closed: no reply can come")
            requester.table.end_inside(error)

        drained: BusFuture[None] = BusFuture()
        drained.add_done_callback(fail)
        self._core.inbox.put(Flush(drained, None, requester.route_ids()))

    def _close_waiting(
        self, timeout: float | None, asked: float | None, *, first: bool, circle: bool
    ) -> tuple[SubscriptionStatistics, ...]:
        if first:
            # From here every publish is refused: one that got past the closed
            # check before it is refused by the router (``Closing`` comes before
            # the flush), or failed by ``settle_closed`` once the actors stopped.
            self._publisher.closed = True
            self._core.inbox.put(Closing())
            self._fail_waiting_handlers()
        deadline = Deadline(timeout)
        # A handler of this bus (a dedicated thread's and an ``async`` one's
        # included), or one of its threads; a handler of another bus is outside
        # unless this bus's handlers wait for it (``circle``).
        inside = (
            circle
            or running_here(self._core.router) is not None
            or self._dispatcher.on_dispatcher_thread()
            or self._system.on_dispatcher_thread()
        )
        stop = self._stop
        if stop is None:
            if not inside:
                try:
                    self._flush(deadline.remaining())
                except pykka.Timeout:
                    logger.warning("close(): flush timed out after %ss; stopping anyway", asked)
                except BusClosedError:  # its actors were stopped from outside (stop_all)
                    logger.warning("close(): the bus's actors were stopped before close")
            # Callers still waiting for replies: none will come.
            self._requests.requester.table.fail_all(BusClosedError("the bus was closed"))
            ended, failed = threading.Event(), list[BaseException]()
            given_up = self._stop_actors(deadline, wait=False, ended=ended, failed=failed)
            stop = self._stop = (given_up, ended, failed)
        if inside:  # the caller's own thread may be needed: the next close waits
            self._stop = ((), stop[1], stop[2])  # what was given up on is told once
            return stop[0]
        # An interrupt here leaves the stop going on.  One an earlier close
        # began keeps that close's deadline: this one waits within its own
        # (and the time a journal or a node gets to release its files).
        releases = self._journal is not None or self._bridge is not None
        bound = None if timeout is None else timeout + CLOSE_GRACE + releases * RELEASE_WAIT
        if not stop[1].wait(bound):
            logger.warning(
                "close(): the stop an earlier close began is still under way after %.1f s; "
                "the next close waits for it again",
                bound,
            )
            return ()
        # The router settles them when it stops; this covers one that did not.
        self._publisher.settle_closed()
        self._close_finished = True
        self._stop = ((), stop[1], [])
        if stop[2]:
            raise stop[2][0]  # as if it had run on this thread
        return stop[0]

    def _stop_actors(
        self,
        deadline: Deadline,
        grace: float = CLOSE_GRACE,
        *,
        wait: bool = True,
        ended: threading.Event | None = None,
        failed: list[BaseException] | None = None,
    ) -> tuple[SubscriptionStatistics, ...]:
        return stop_actors(
            self._core,
            system=self._system,
            deadline=deadline,
            grace=grace,
            wait=wait,
            bridge_close=self._bridge.close if self._bridge is not None else None,
            journal=self._journal,
            journal_closed=self._journal.wait_closed if self._journal is not None else None,
            settle=self._settle_node,
            ended=ended,
            failed=failed,
        )

    def _forked(self, parent: int) -> None:
        """In a forked child: closed to it (``_runtime/forks.py``); nothing of it runs here."""
        self._closed = self._close_finished = self._publisher.closed = True
        self._closing.set()
        self._forked_from = parent
        self._closed_why = f"the bus belongs to process {parent}: a forked child opens its own"

    @property
    def closed(self) -> bool:
        """Return whether ``close`` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError(self._closed_why)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
