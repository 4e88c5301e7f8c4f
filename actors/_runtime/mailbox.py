"""A subscription's bounded mailbox and its overflow strategies.

A subscriber actor has two lanes: the control lane it inherits from
``FifoMailbox`` (pykka envelopes: ``ask``, ``stop``) and a bounded event lane
that only the router fills.  The event lane holds at most ``capacity``
entries; what happens when it is full is the subscription's
``OverflowStrategy``.  Every drop is counted.

Counting makes ``flush`` exact without markers in the queue.  The lane is
FIFO, and events leave its front in the order they went in, taken by the
owner or dropped by the router (``DROP_OLDEST``); an event dropped as it
arrives never goes in.  So a flush barrier notes how many events had gone
in (``enqueued``) and passes once as many left the front (``taken`` plus
``popped``) and every event the owner took is finished: exactly the events
routed before it, whatever is dropped after it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from actors._model.config import OverflowStrategy
from actors._runtime.dispatcher import FifoMailbox

__all__ = ["EventMailbox", "OverflowStrategy"]

# Backpressure hysteresis: crossing 80% starts it, falling under 20% relieves it.
HIGH_WATER = 0.8
LOW_WATER = 0.2

STARTED = 1
DROPPED = 2


class EventMailbox(FifoMailbox):
    """Bounded event lane plus the control lane of ``FifoMailbox``.

    ``offer`` is called by the router only; ``take_events`` by the owning
    subscriber only; neither blocks nor takes a lock (see ``FifoMailbox``).
    Each counter has one writer: ``accepted``, ``enqueued``, ``popped`` and
    ``dropped`` the router, ``taken`` and ``finished_by_owner`` the subscriber.
    """

    __slots__ = (
        "_barrier_lock",
        "_barriers",
        "_events",
        "_high",
        "_room_waiter",
        "accepted",
        "discarded",
        "dropped",
        "enqueued",
        "finished_by_owner",
        "overflow",
        "pending",
        "popped",
        "relief_queued",
        "reliefs",
        "reliefs_announced",
        "start_queued",
        "start_reliefs",
        "taken",
    )

    capacity: int

    def __init__(self, capacity: int, overflow: OverflowStrategy) -> None:
        super().__init__(capacity)
        self.overflow = overflow
        self._events: deque[Any] = deque()
        self._high = False
        self._room_waiter: Callable[[], None] | None = None
        self._barriers: list[tuple[int, Callable[[], None]]] = []
        self._barrier_lock = threading.Lock()
        self.accepted = 0  # routed here, kept or dropped
        self.dropped = 0
        self.enqueued = 0  # went into the lane (router only)
        self.popped = 0  # dropped from the lane's front, DROP_OLDEST (router only)
        self.taken = 0  # taken from the lane's front by the owner (owner only)
        self.discarded = 0  # queued events cleared at unsubscribe or close (owner only)
        self.finished_by_owner = 0
        # The router's own list: events routed here during its turn, offered
        # together by ``offer_many`` at the end of it (router only).
        self.pending: list[Any] = []
        # Backpressure relieved: counted by the owner as it happens (with what
        # was queued then), announced by the router, which reads them first
        # whenever it announces a new start, so the two never swap.
        self.reliefs = 0  # owner only
        self.relief_queued = 0  # owner only
        self.reliefs_announced = 0  # router only
        self.start_reliefs = 0  # router only: the reliefs counted before the last start
        self.start_queued = 0  # router only: what the last start found queued

    def refuse_all(self) -> None:
        """Drop (and count) every event offered from now on: the owner stopped for good.

        Set by the owner before it clears its lane, so what the router routes
        to it later (a close that gave up on it) is not left queued for ever.
        Only the overflow rule changes: the router's offer stays as it is.
        """
        self._high = True  # no high-water announcement for a lane that is gone
        self.overflow = OverflowStrategy.DROP_NEWEST
        self.capacity = 0

    @property
    def queued(self) -> int:
        """Return the number of events waiting in the lane."""
        return len(self._events)

    def has_room(self) -> bool:
        """Return whether one more event fits without overflow."""
        return len(self._events) < self.capacity

    def wait_for_room(self, wake: Callable[[], None]) -> bool:
        """Register ``wake`` to be called once room frees up; False if there is room now."""
        self._room_waiter = wake
        if len(self._events) < self.capacity:
            self._room_waiter = None
            return False
        return True

    def offer(self, item: Any) -> int:
        """Queue ``item`` under the overflow strategy; return STARTED/DROPPED flags.

        For ``REJECT`` the router checks ``has_room`` first, so here a full
        lane means ``DROP_OLDEST`` or ``DROP_NEWEST`` (or a bus event, which
        is never refused and displaces the oldest).  A ``BLOCK`` lane never
        drops: publishers wait before the router offers (see
        ``actors._core.backpressure``), so it holds at most a few events over
        ``capacity``.
        """
        flags = 0
        events = self._events
        self.accepted += 1
        n = len(events)
        if n >= self.capacity and self.overflow is not OverflowStrategy.BLOCK:
            if self.overflow is OverflowStrategy.DROP_NEWEST:
                self.dropped += 1
                return DROPPED
            try:
                events.popleft()
                self.popped += 1
                self.dropped += 1
                flags = DROPPED
            except IndexError:  # the owner emptied it meanwhile
                pass
        events.append(item)
        self.enqueued += 1
        if not self._high and n + 1 >= HIGH_WATER * self.capacity:
            self._start(n + 1)
            flags |= STARTED
        if self._sched.acquire(False):
            self._schedule()
        return flags

    def _start(self, queued: int) -> None:
        # The reliefs before this start are read before the flag goes up: the
        # owner counts one only while it sees the flag up, so none counted
        # after this start can be among them.
        self.start_reliefs = self.reliefs
        self.start_queued = queued
        self._high = True

    def offer_many(self, items: list[Any]) -> int:
        """Queue ``items`` in order, as ``offer`` would one by one; return the flags.

        For ``DROP_OLDEST`` and ``DROP_NEWEST`` lanes only (the router offers
        to ``REJECT`` and ``BLOCK`` lanes one by one, checking room first).
        One call and one wake-up for a router turn's worth of events.  The
        overflow rule is ``offer``'s for ``k`` events (``offer`` is its
        one-event case, kept apart because a one-item list costs twice as
        much per event; ``tests/test_mailbox.py`` holds the two together).
        """
        flags = 0
        events = self._events
        k = len(items)
        self.accepted += k
        # Offers one by one keep a lane already over its capacity (a catch-up
        # lane just gone live) at the length it has: one out for each one in.
        limit = max(len(events), self.capacity)
        over = len(events) + k - limit
        if over > 0:
            if self.overflow is OverflowStrategy.DROP_NEWEST:
                kept = max(0, k - over)
                dropped = k - kept
                items = items[:kept]
            else:
                # The newest ``limit`` of them at most, and as many of the
                # queued ones out as they need room.
                dropped = max(0, k - limit)
                items = items[dropped:]
                room = limit - len(items)
                popleft = events.popleft
                popped = 0
                while len(events) > room:
                    try:
                        popleft()
                    except IndexError:  # the owner emptied it meanwhile
                        break
                    popped += 1
                self.popped += popped
                dropped += popped
            self.dropped += dropped
            if dropped:
                flags = DROPPED
        events.extend(items)
        self.enqueued += len(items)
        if not self._high and len(events) >= HIGH_WATER * self.capacity:
            self._start(len(events))
            flags |= STARTED
        if self._sched.acquire(False):
            self._schedule()
        return flags

    def take_events(self, limit: int) -> tuple[list[Any], bool]:
        """Remove up to ``limit`` events; also return whether backpressure was relieved."""
        events = self._events
        popleft = events.popleft
        batch: list[Any] = []
        append = batch.append
        count = min(limit, len(events))
        # Counted before they leave (see ``_passed``), given back if fewer did.
        self.taken += count
        try:
            for _ in range(count):
                append(popleft())
        except IndexError:  # the router dropped the oldest ones meanwhile (DROP_OLDEST)
            self.taken -= count - len(batch)
        relieved = False
        if self._high and len(events) < LOW_WATER * self.capacity:
            self.relief_queued = len(events)
            self.reliefs += 1  # before the flag: a start the router sees next finds it
            self._high = False
            relieved = True
        if batch and self._room_waiter is not None and len(events) < self.capacity:
            waiter, self._room_waiter = self._room_waiter, None
            if waiter is not None:
                waiter()
        return batch, relieved

    def clear_events(self) -> int:
        """Discard every queued event (at unsubscribe); return how many."""
        n = 0
        events = self._events
        while events:
            self.taken += 1  # counted before it leaves (see ``_passed``)
            try:
                events.popleft()
            except IndexError:  # the router dropped the last ones meanwhile (DROP_OLDEST)
                self.taken -= 1
                break
            n += 1
        self.finished_by_owner += n
        self.discarded += n
        waiter, self._room_waiter = self._room_waiter, None
        if waiter is not None:
            waiter()
        self.check_barriers()
        return n

    def has_mail(self) -> bool:
        return bool(self._items) or bool(self._events)

    # -- flush barriers ---------------------------------------------------

    def finished(self) -> int:
        """Return how many accepted events are done with (handled, expired or dropped)."""
        return self.finished_by_owner + self.dropped

    def add_barrier(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every event routed here so far is finished (router only).

        The barrier marks its place in the lane: the events that went in
        before it.  Drops made after it (of events routed after it) do not
        count towards it, as they would if it waited for a number of
        finished events.
        """
        with self._barrier_lock:
            self._barriers.append((self.enqueued, callback))
        # The owner may have finished just before the append; look once more.
        self.check_barriers()

    def _passed(self) -> int:
        """Return how many of the events that went in are done with, counted from the front.

        Called on any thread.  The order of the reads makes the answer safe
        whoever writes meanwhile: the owner counts what it takes in ``taken``
        before the events leave the lane (and gives back what the router
        dropped first), and finishes what it took in order.  So once
        ``finished_by_owner`` (read last) reaches ``taken`` (read before
        it), the owner holds no event it has not finished, and each pop
        counted in ``popped`` (read first) came after what the owner had
        taken: the first ``taken + popped`` events to leave the front are
        done.  Counting ``taken`` after the events left would let a check
        between the two count later pops for earlier events still in the
        owner's hands.  Returns -1 while the owner has taken (or is taking)
        events it has not finished.
        """
        popped = self.popped
        taken = self.taken
        if self.finished_by_owner < taken:
            return -1
        return taken + popped

    def check_barriers(self) -> None:
        """Fire the barriers that are now satisfied (each exactly once)."""
        if not self._barriers:
            return
        with self._barrier_lock:
            done = self._passed()
            ready = [cb for target, cb in self._barriers if target <= done]
            if ready:
                self._barriers = [(t, cb) for t, cb in self._barriers if t > done]
        for cb in ready:
            cb()

    def release_barriers(self) -> None:
        """Fire every barrier (the subscription is gone, nothing more will finish)."""
        with self._barrier_lock:
            ready = [cb for _, cb in self._barriers]
            self._barriers = []
        for cb in ready:
            cb()
