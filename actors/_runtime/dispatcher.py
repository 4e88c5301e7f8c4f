"""Dispatchers: many actors, few threads (Akka's model, on pykka's backend seam).

An actor here is its mailbox plus its behaviour.  When a mailbox goes from
empty to non-empty it *schedules* its actor on a dispatcher: a small pool of
threads sharing one run queue.  A dispatcher thread takes an actor, lets it
process up to ``throughput`` messages in one go (draining its mailbox in a
batch, with no waiting), and puts it back at the end of the run queue if mail
is left.  An actor is on at most one thread at a time, so its state needs no
lock and one handler never runs twice at once.

``DispatchedActor`` plugs into pykka through the seam pykka offers to new
actor backends (``_create_actor_inbox``, ``_start_actor_loop``,
``_create_future``); ``tests/test_dispatcher.py`` guards the private parts it
relies on, and ``pyproject.toml`` pins pykka's range.  Anything pykka can do
with a ``ThreadingActor`` (``tell``, ``ask``, proxies, ``stop``) works here.

The thread pool itself lives in ``actors._runtime.pool``: given a
``blocking_threshold`` it notices a thread stuck in one turn and adds a
thread, so an actor whose handler blocks on I/O holds only its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar

import pykka
from pykka import ActorDeadError, ActorRegistry, messages
from pykka._envelope import Envelope

from actors._runtime.future import BusFuture
from actors._runtime.pool import Dispatcher, Scheduler

__all__ = [
    "DispatchedActor",
    "Dispatcher",
    "FifoMailbox",
    "TurnHandedOff",
    "default_dispatcher",
    "never_waiting",
    "waits_here",
]

logger = logging.getLogger("actors.dispatcher")


class TurnHandedOff(Exception):  # noqa: N818 - a signal, not an error
    """Raised by ``_drain`` on a thread whose turn was handed off (``Dispatcher.hand_off``).

    The actor runs on another thread by then: the turn ends at once and
    touches nothing (not even the schedule claim, which the new turn owns).
    """


_default: Dispatcher | None = None
_condition_lock = threading.Lock()  # makes a mailbox's Condition once
_default_lock = threading.Lock()


class _Here(threading.local):
    never_wait = False  # set while this thread is one that makes room (``never_waiting``)


_here = _Here()


@contextlib.contextmanager
def never_waiting() -> Iterator[None]:
    """Within the block, a ``put_blocking`` on this thread never waits: it goes past capacity.

    For code run by a thread whose progress is what makes room: the journal's,
    resolving publish futures whose done-callbacks may publish.  Waiting there
    for the router, which waits for the journal, would be a cycle that only
    ``block_timeout`` breaks.
    """
    before = _here.never_wait
    _here.never_wait = True
    try:
        yield
    finally:
        _here.never_wait = before


def waits_here() -> bool:
    """Return whether this thread may wait on the router (not inside ``never_waiting``)."""
    return not _here.never_wait


def default_dispatcher() -> Dispatcher:
    """Return the process-wide shared dispatcher (two threads), creating it once."""
    global _default
    with _default_lock:
        if _default is None or not _default.alive:
            _default = Dispatcher(2, name="actors-default")
        return _default


class FifoMailbox:
    """An unbounded FIFO mailbox that schedules its actor when mail arrives.

    It satisfies pykka's inbox protocol (``put``, ``get``, ``empty``) for
    envelopes, and takes internal messages through ``put`` as they are.
    ``capacity`` (if set) makes ``put_blocking`` wait for room.

    The hot path takes no lock: ``deque.append``/``popleft`` are atomic, and
    "scheduled" is a non-blocking ``Lock.acquire(False)`` used as an atomic
    test-and-set (Akka's mailbox protocol).  A producer appends, then tries
    to claim the schedule; the actor, at the end of a turn, releases the
    claim, then looks for mail again and re-claims if there is some.  Either
    side sees the other's write, so no message is stranded, and no thread
    ever waits for a lock held by a thread that lost the GIL.
    """

    __slots__ = ("_actor", "_items", "_not_full", "_sched", "_waiting", "_woken", "capacity")

    def __init__(self, capacity: int | None = None) -> None:
        self._items: deque[Any] = deque()
        self._sched = threading.Lock()
        self._woken = False  # a wake() arrived while a turn held the claim
        # Made on the first wait for room (only a bounded inbox with a
        # blocking producer ever waits): a Condition costs about 1 KB.
        self._not_full: threading.Condition | None = None
        self._waiting = 0
        self._actor: DispatchedActor | None = None
        self.capacity = capacity

    def bind(self, actor: DispatchedActor) -> None:
        """Attach the actor that this mailbox schedules."""
        self._actor = actor

    def put(self, item: Any, /) -> None:
        """Append ``item`` and schedule the actor if it was idle.  Never blocks."""
        self._items.append(item)
        if self._sched.acquire(False):
            self._schedule()

    def put_blocking(self, item: Any, timeout: float | None) -> bool:
        """Append ``item``, waiting up to ``timeout`` for room; return False on timeout.

        Under concurrent producers the bound is approximate (each checks, then
        appends); it exists for backpressure, not as an exact limit.
        """
        cap = self.capacity
        if (
            cap is not None
            and len(self._items) >= cap
            and waits_here()
            and not self._wait_for_room(cap, timeout)
        ):
            return False
        self._items.append(item)
        if self._sched.acquire(False):
            self._schedule()
        return True

    def _wait_for_room(self, cap: int, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        not_full = self._not_full
        if not_full is None:
            with _condition_lock:
                if self._not_full is None:
                    self._not_full = threading.Condition(threading.Lock())
                not_full = self._not_full
        with not_full:
            self._waiting += 1
            try:
                while len(self._items) >= cap:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    # Short slices: the taker notifies without the lock, so a
                    # wake-up can be missed; the slice bounds that to 50 ms.
                    not_full.wait(0.05 if remaining is None else min(remaining, 0.05))
                return True
            finally:
                self._waiting -= 1

    def put_front(self, items: list[Any]) -> None:
        """Return ``items`` to the head of the queue, in order (the actor re-reads them)."""
        self._items.extendleft(reversed(items))

    def take(self, limit: int) -> list[Any]:
        """Remove and return up to ``limit`` items from the head (owner only)."""
        items = self._items
        popleft = items.popleft
        batch: list[Any] = []
        append = batch.append
        try:
            for _ in range(min(limit, len(items))):
                append(popleft())
        except IndexError:  # pragma: no cover - only the owner takes
            pass
        not_full = self._not_full
        if self._waiting and not_full is not None:
            with not_full:
                not_full.notify_all()
        return batch

    def has_mail(self) -> bool:
        """Return whether anything is queued."""
        return bool(self._items)

    def finish_turn(self, *, park: bool = False, hard: bool = False) -> None:
        """End a turn: release the schedule claim; re-claim if mail is left.

        ``park`` (the actor waits for something, e.g. a journal answer) stops
        a re-claim for queued *events* only: a message that arrived during the
        turn, which ``put`` could not schedule because the turn held the claim,
        always re-claims (it may be the very answer the actor parked for).
        ``hard`` (parked by ``_park``, or torn down) stops that too.  A
        ``wake`` that came while the turn ran re-claims in every case: the
        turn may have decided to park before the wake-up's reason arrived.
        """
        self._sched.release()
        again = self._woken or (not hard and (bool(self._items) or (not park and self.has_mail())))
        if again and self._sched.acquire(False):
            self._woken = False
            self._schedule()

    def wake(self) -> None:
        """Schedule a turn of the actor, now or right after its current one."""
        self._woken = True
        if self._sched.acquire(False):
            self._woken = False
            self._schedule()

    def __len__(self) -> int:
        return len(self._items)

    # pykka's inbox protocol, used by pykka for envelopes only.
    def get(self) -> Any:
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def _schedule(self) -> None:
        actor = self._actor
        if actor is not None:
            actor.actor_dispatcher.schedule(actor)


class DispatchedActor(pykka.Actor):
    """A pykka actor whose messages are handled on a ``Dispatcher``.

    Subclasses handle pykka envelopes as usual (``on_receive``, proxies, ``ask``)
    and may put internal messages straight into ``actor_inbox``; those reach
    ``_on_message``.  ``_on_turn_end`` runs after each batch.
    """

    actor_inbox: FifoMailbox
    dispatcher_for_class: ClassVar[Dispatcher | None] = None

    def __init__(self, *, dispatcher: Scheduler | None = None) -> None:
        self.actor_dispatcher: Scheduler = (
            dispatcher or type(self).dispatcher_for_class or default_dispatcher()
        )
        super().__init__()
        self.actor_inbox.bind(self)
        self._actor_started = False
        self._actor_torn_down = False
        self._actor_parked = False
        self._actor_requeue: Any = None

    @staticmethod
    def _create_actor_inbox() -> FifoMailbox:
        return FifoMailbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return BusFuture()

    def _start_actor_loop(self) -> None:
        self.actor_inbox.wake()

    def actor_start(self) -> None:
        """Register and start this actor, built directly (``start()`` would build another).

        pykka's ``Actor.start`` for an object already made: the wiring builds its
        actors itself to keep hold of them.
        """
        ActorRegistry.register(self.actor_ref)
        self._start_actor_loop()

    def actor_turn(self, throughput: int) -> None:
        """Handle up to ``throughput`` messages; called by one dispatcher thread."""
        if not self._actor_started:
            self._actor_started = True
            self._actor_loop_setup()
        inbox = self.actor_inbox
        stopped = self.actor_stopped.is_set
        if self._actor_parked and not stopped():  # a put scheduled it: it stays parked
            inbox.finish_turn(park=True, hard=True)
            return
        if not stopped():
            batch = inbox.take(throughput)
            for i, item in enumerate(batch):
                if type(item) is Envelope:
                    self._handle_envelope(item)
                else:
                    self._handle_message(item)
                if self._actor_parked or self._actor_requeue is not None or stopped():
                    rest = batch[i + 1 :]
                    if self._actor_requeue is not None:
                        rest.insert(0, self._actor_requeue)
                        self._actor_requeue = None
                    inbox.put_front(rest)
                    break
            if not stopped() and not self._actor_parked:
                try:
                    self._drain(throughput)
                except TurnHandedOff:
                    return  # another thread has the actor (and its claim) now
                except BaseException:
                    # A bug in a lane must not strand the actor: log, carry on.
                    logger.exception("%s failed while draining", self)
            if not stopped():
                try:
                    park = self._on_turn_end() or self._actor_parked
                except Exception:
                    logger.exception("%s failed at the end of its turn", self)
                    park = self._actor_parked
                inbox.finish_turn(park=park, hard=self._actor_parked)
                return
        self._teardown()

    def _park(self, requeue: Any = None) -> None:
        """Stop taking messages after the current one until ``_unpark`` (from any thread).

        Turns that mail schedules meanwhile take nothing.

        ``requeue`` goes back to the head of the mailbox, before the rest of
        the batch, so it is handled first when the actor resumes.
        """
        self._actor_parked = True
        self._actor_requeue = requeue

    def _unpark(self) -> None:
        """Resume taking messages and schedule a turn."""
        self._actor_parked = False
        self.actor_inbox.wake()

    def _drain(self, throughput: int) -> None:
        """Handle a subclass's own lane (a subscriber's events) after control messages."""

    def _on_turn_end(self) -> bool:
        """Run after a batch; return True to park (stay idle until ``wake``)."""
        return False

    def _on_message(self, message: Any) -> None:
        """Handle an internal (non-envelope) message."""
        logger.warning("unexpected message %r in %s", message, self)

    def _handle_message(self, message: Any) -> None:
        try:
            self._on_message(message)
        except Exception:
            logger.exception("%s failed on %r", self, message)

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        # Mirrors pykka.Actor._actor_loop_running for a single envelope.
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            logger.debug("%r in %s; stopping all actors", sys.exc_info()[1], self)
            self._stop()
            ActorRegistry.stop_all()

    def _teardown(self) -> None:
        # Fail every waiting ask, as pykka's own teardown does.
        for item in self.actor_inbox.take(sys.maxsize):
            if type(item) is Envelope and item.reply_to is not None:
                if isinstance(item.message, messages._ActorStop):  # noqa: SLF001 - pykka's stop message, as its teardown
                    item.reply_to.set(None)
                else:
                    item.reply_to.set_exception(
                        (
                            ActorDeadError,
                            ActorDeadError(f"{self.actor_ref} stopped before handling the message"),
                            None,
                        )
                    )
            else:
                self._on_dropped_at_stop(item)
        self.actor_inbox.finish_turn(park=True, hard=True)
        if not self._actor_torn_down:
            self._actor_torn_down = True
            self._on_stopped()

    def _on_dropped_at_stop(self, message: Any) -> None:
        """Handle an internal message still queued when the actor stopped."""

    def _on_stopped(self) -> None:
        """Run once after the actor stopped and its mailbox was emptied."""
