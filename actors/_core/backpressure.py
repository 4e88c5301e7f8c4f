"""``BLOCK`` on the publisher's thread: wait for room before the router sees the event.

The router never parks.  When it fills a ``BLOCK`` mailbox it keeps queueing
there (nothing accepted is lost, order holds) and marks the subscription
*full*: a ``Gate`` (the route, its pattern, a ``room`` event) joins the
guard's copy-on-write tuple.  ``publish`` checks its event against that tuple
on the caller's thread: an event a full subscription wants waits for
``room`` up to ``block_timeout``, then fails with ``BackpressureError``;
every other event goes straight on, so unrelated subscriptions keep flowing.

So that the router marks a mailbox full before the same publisher sends the
next event, a publish of an event that a ``BLOCK`` pattern matches waits until
the router has routed it (``Publish.routed``).  A mailbox can therefore hold
``capacity`` plus at most one event per concurrent publisher.

A node's bridge holds publishers the same way when a peer is out of credit
and its send queue is full (``docs/cluster.md``, "Flow control"): it puts a
``Hold`` (the event types it holds, a ``room`` event) in ``holds``, and
``publish`` waits on it exactly as on a full subscription.  While any peer
subscribes, it keeps a *pacing* hold there (``room`` already set) with an
``Allowance``: publishers count the events the hold wants as they send them,
the bridge counts them out as they leave its send queue.  A publish that
finds the allowance spent waits until the router has routed it and the
bridge took it from its mailbox (``drained``), so that however the threads
are scheduled at most one publish per publishing thread (two, if one slips
past the bridge's check) is on its way to the queue, not counted, when the
hold goes up.

Who writes what: ``blocking`` is written by the facade under the guard's lock
(subscribe, unsubscribe, any caller thread); ``full`` by the router only;
an ``Allowance`` under its own lock (publishers add, the bridge takes away);
``holds`` by the bridge's I/O thread only (``set_holds``); ``room`` is set by
whoever frees room (the subscriber taking events, the router unsubscribing or
stopping, the bridge once its queue drained).  Readers take the tuple
reference as it is.
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from actors._core.routes import Route, accepts
from actors._model.topics import Pattern

if TYPE_CHECKING:
    from actors._model.event import Event

__all__ = [
    "WITHDRAW_POLL",
    "Allowance",
    "BlockGuard",
    "Gate",
    "Hold",
    "Piece",
    "Withdrawn",
    "withdrawal",
]

# Set, in the context of one publish, by the async facade: the publish waits
# for room on an executor thread while its caller awaits it, and a cancelled
# await sets the event.  The wait for room then ends within WITHDRAW_POLL
# seconds and the publish is withdrawn (``Withdrawn``): not sent, not counted.
withdrawal: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "actors_withdrawal", default=None
)
WITHDRAW_POLL = 0.05


class Withdrawn(Exception):  # noqa: N818 - an outcome, not a fault
    """A publish given up while it waited for room: its await was cancelled."""


@dataclass(frozen=True, slots=True)
class Piece:
    """A batch piece's reservation: its ``ticket`` (the order pieces reserved in) and room."""

    ticket: int
    taking: dict[str, int]  # route id -> events of the piece it will queue


@dataclass(frozen=True, slots=True)
class Gate:
    """A full ``BLOCK`` subscription; ``room`` is set once its mailbox has room again."""

    route: Route
    matches: Callable[[str], bool]
    room: threading.Event = field(default_factory=threading.Event)

    def wants(self, event: Event) -> bool:
        """Return whether ``event`` would be queued for this subscription."""
        return self.matches(event.event_type) and accepts(self.route, event)

    def refusal(self, timeout: float) -> str:
        """Return the message of the ``BackpressureError`` after waiting ``timeout``."""
        route = self.route
        return (
            f"subscription {route.id} ({route.pattern!r}) stayed full "
            f"({route.mailbox.capacity} queued) for {timeout}s; event not published"
        )


class Allowance:
    """The events publishers may have on their way to a node's send queue without pacing.

    ``in_flight`` counts the events sent toward the queue and not yet out of
    it (sent to the peers, dropped for a lagging one): publishers add theirs
    (``spend``), the bridge's I/O thread takes away what left (``release``).
    """

    __slots__ = ("_lock", "in_flight", "limit")

    def __init__(self, limit: int, in_flight: int = 0) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self.in_flight = in_flight

    def spend(self, count: int, *, always: bool = True) -> bool:
        """Count ``count`` events sent; return whether they fitted (else the publish paces).

        With ``always=False`` they are counted only if they fit.
        """
        with self._lock:
            fits = self.in_flight + count <= self.limit
            if fits or always:
                self.in_flight += count
        return fits

    def release(self, count: int) -> None:
        """Count ``count`` events out of the queue (the bridge's I/O thread)."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - count)

    @property
    def spent(self) -> bool:
        """Return whether the next publish it covers would pace."""
        return self.in_flight >= self.limit


@dataclass(frozen=True, slots=True)
class Hold:
    """Publishers of events whose type starts with one of ``prefixes`` wait for ``room``.

    Set by a node's bridge while its send queue is full (a peer out of credit);
    with ``room`` set, it paces the publishes its ``allowance`` does not cover.
    """

    reason: str
    prefixes: frozenset[str]
    room: threading.Event = field(default_factory=threading.Event)
    drained: threading.Event | None = None
    """Set while the bridge took everything routed to it (a publisher waits for it)."""
    allowance: Allowance | None = None
    """What may go unpaced (None: every publish it wants paces)."""
    starts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(self.prefixes))

    def wants(self, event: Event) -> bool:
        """Return whether ``event`` would join the held queue."""
        return event.event_type.startswith(self.starts)

    def wanted(self, events: Sequence[Event]) -> int:
        """Return how many of ``events`` would join the held queue."""
        starts = self.starts
        return sum(1 for e in events if e.event_type.startswith(starts))

    def refusal(self, timeout: float) -> str:
        """Return the message of the ``BackpressureError`` after waiting ``timeout``."""
        return f"{self.reason} for {timeout}s; event not published"


class BlockGuard:
    """The ``BLOCK`` subscriptions of one bus and which of them are full."""

    __slots__ = (
        "_gates",
        "_lock",
        "_reserved",
        "_routes",
        "_tickets",
        "_unreserved",
        "blocking",
        "closing",
        "full",
        "holds",
        "reservations",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Room taken by batch pieces on their way to the router (route id ->
        # events), under the lock: two publishers never count the same room.
        # ``reservations`` holds each piece's share by ticket, in the order
        # they were made (see ``wait_unreserved``; publishers read it without
        # the lock to skip the wait when it is empty); ``_reserved`` their sum.
        self._reserved: dict[str, int] = {}
        self.reservations: dict[int, dict[str, int]] = {}
        self._tickets = itertools.count()
        self._unreserved = threading.Condition(self._lock)  # notified as room goes back
        self.blocking: tuple[tuple[str, Callable[[str], bool]], ...] = ()
        self._routes: tuple[Route, ...] = ()  # the BLOCK routes, as ``blocking``
        self.full: tuple[Gate, ...] = ()
        self.holds: tuple[Hold, ...] = ()
        self._gates: dict[str, Gate] = {}  # router only
        self.closing = False  # set once by the router: no publish waits for room any more

    # -- the facade (any caller thread, under the lock) -------------------------

    def add(self, route: Route) -> None:
        """Count ``route`` among the BLOCK subscriptions (before the router hears of it)."""
        matches = Pattern.parse(route.pattern).matches
        with self._lock:
            self.blocking = (*self.blocking, (route.id, matches))
            self._routes = (*self._routes, route)

    def discard(self, sub_id: str) -> None:
        """Forget the BLOCK subscription ``sub_id`` (no-op for others)."""
        with self._lock:
            self.blocking = tuple(b for b in self.blocking if b[0] != sub_id)
            self._routes = tuple(r for r in self._routes if r.id != sub_id)

    def pieces(self, events: Sequence[Event]) -> Generator[tuple[int, Piece], None, None]:
        """Yield where to cut ``events`` so that each piece fits the BLOCK mailboxes' room.

        The ends of the pieces, in order (the last is ``len(events)``), each
        with its ``Piece`` (the room it reserved, for ``wait_unreserved``),
        computed when it is asked for, on the room then: so the caller asks
        for the next piece once the previous one was routed.  A piece is cut
        only before an event that would overflow once it holds one that takes
        room: so a piece holds at least one such event, which waits for room
        when admitted if there is none, and a batch that fits stays whole.
        Room is each mailbox's capacity less what it holds and less what
        other batches' pieces on their way to the router will take (a piece's
        share is reserved until it was routed (``release``), the next piece
        is asked for, or the generator is closed: close it when a batch stops
        early). So concurrent batches
        share the room instead of each taking all of it, and a mailbox holds
        ``capacity`` plus at most one event per publisher (a piece whose
        room is reserved by earlier pieces waits for them: ``wait_unreserved``).
        Filters are run (once per event), so an event a subscription filters
        out takes none of its room.
        """
        routes = self._routes
        matchers = _matchers(routes)
        wanted = [[r for r, m in matchers if m(e.event_type) and accepts(r, e)] for e in events]
        start, n = 0, len(events)
        taking: dict[str, int] = {}
        piece = Piece(-1, taking)
        try:
            while start < n:
                with self._lock:
                    self._unreserve(piece)
                    reserved = self._reserved
                    room = {
                        r.id: r.mailbox.capacity - r.mailbox.queued - reserved.get(r.id, 0)
                        for r in routes
                    }
                    end = start
                    taken = False  # the piece holds an event that takes room
                    while end < n:
                        takers = wanted[end]
                        if taken and any(room[r.id] <= 0 for r in takers):
                            break
                        for r in takers:
                            room[r.id] -= 1
                            taking[r.id] = taking.get(r.id, 0) + 1
                            taken = True
                        end += 1
                    for route_id, count in taking.items():
                        reserved[route_id] = reserved.get(route_id, 0) + count
                    if taking:
                        piece = Piece(next(self._tickets), taking)
                        self.reservations[piece.ticket] = taking
                yield end, piece
                start = end
        finally:
            with self._lock:
                self._unreserve(piece)

    def release(self, piece: Piece) -> None:
        """Give back the room ``piece`` reserved: it was routed (its events count as queued)."""
        with self._lock:
            self._unreserve(piece)

    def _unreserve(self, piece: Piece) -> None:
        """Give back the room ``piece`` reserved (under the lock) and empty it."""
        taking = piece.taking
        if not taking:
            return
        reserved = self._reserved
        for route_id, count in taking.items():
            left = reserved.get(route_id, 0) - count
            if left > 0:
                reserved[route_id] = left
            else:
                reserved.pop(route_id, None)
        self.reservations.pop(piece.ticket, None)
        taking.clear()
        self._unreserved.notify_all()

    def wait_unreserved(
        self, events: Sequence[Event], piece: Piece | None, timeout: float | None
    ) -> Route | None:
        """Wait while earlier pieces reserved the room ``events`` need in a BLOCK mailbox.

        ``piece`` is the batch piece ``events`` are (None for a single
        publish, which reserves nothing and waits for every piece).  A piece
        waits only for pieces reserved before it, so two batches never wait
        for each other.  Once those are routed the mailbox's own fullness
        takes over (``wait_for_room``).  Return the route whose room stayed
        reserved after ``timeout``, else None.
        """
        if not self.reservations:  # read without the lock: no batch on its way
            return None
        need = piece.taking if piece is not None else self._wanted(events)
        if not need:
            return None
        ticket = piece.ticket if piece is not None else None
        deadline = None if timeout is None else time.monotonic() + timeout
        withdrawn = withdrawal.get()
        with self._lock:
            while not self.closing:
                route = self._reserved_before(ticket, need)
                if route is None:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return route
                if withdrawn is not None:
                    if withdrawn.is_set():
                        raise Withdrawn("the publish was cancelled while it waited for room")
                    remaining = min(remaining or WITHDRAW_POLL, WITHDRAW_POLL)
                self._unreserved.wait(remaining)
        return None

    def _wanted(self, events: Sequence[Event]) -> dict[str, int]:
        """Count, per BLOCK route, the events of ``events`` it would queue (filters run)."""
        counts: dict[str, int] = {}
        for route, matches in _matchers(self._routes):
            k = sum(1 for e in events if matches(e.event_type) and accepts(route, e))
            if k:
                counts[route.id] = k
        return counts

    def _reserved_before(self, ticket: int | None, need: Mapping[str, int]) -> Route | None:
        """Return a route whose room, less what pieces before ``ticket`` reserved, is short."""
        earlier: dict[str, int] = {}
        for t, taking in self.reservations.items():
            if ticket is not None and t >= ticket:
                continue
            for route_id, count in taking.items():
                if route_id in need:
                    earlier[route_id] = earlier.get(route_id, 0) + count
        for route in self._routes:
            before = earlier.get(route.id, 0)
            if before and route.mailbox.capacity - route.mailbox.queued - before < need[route.id]:
                return route
        return None

    # -- the publisher's thread ---------------------------------------------------

    def routes_wanted(self, event_type: str) -> bool:
        """Return whether a BLOCK pattern matches ``event_type`` (filters not run)."""
        return any(matches(event_type) for _, matches in self.blocking)

    def lets_through(self, event: Event) -> bool:
        """Return whether the one pacing hold lets ``event`` go now (counted if it wants it).

        The quick check of a single publish: False (nothing counted) sends it
        through the full one (``wait_for_room``, then ``paces``).
        """
        holds = self.holds
        if len(holds) != 1 or self.full:
            return False
        hold = holds[0]
        allowance = hold.allowance
        if allowance is None or not hold.room.is_set():
            return False
        return not hold.wants(event) or allowance.spend(1, always=False)

    def paces(self, events: Sequence[Event]) -> bool:
        """Count ``events`` on the allowance of each hold that wants some of them.

        Return whether one of those holds paces them (its allowance did not
        cover them, or it has none).
        """
        paced = False
        for hold in self.holds:
            count = hold.wanted(events)
            if count:
                allowance = hold.allowance
                if allowance is None or not allowance.spend(count):
                    paced = True
        return paced

    def refund(self, events: Sequence[Event]) -> None:
        """Take ``events`` off the allowances again (their publish was refused)."""
        for hold in self.holds:
            count = hold.wanted(events)
            if count and hold.allowance is not None:
                hold.allowance.release(count)

    def may_hold(self) -> bool:
        """Return whether a hold would stop or pace a publish it wants now."""
        return any(
            not h.room.is_set() or h.allowance is None or h.allowance.spent for h in self.holds
        )

    def wait_drained(self, events: Sequence[Event], timeout: float | None) -> bool:
        """Wait (up to ``timeout``) until the bridge of a hold wanting ``events`` took its mail.

        Return False if it had not when ``timeout`` ran out.
        """
        for hold in self.holds:
            drained = hold.drained
            if drained is not None and any(hold.wants(e) for e in events):
                return drained.wait(timeout)
        return True

    def wait_for_room(self, events: list[Event], timeout: float | None) -> Gate | Hold | None:
        """Wait while a full subscription (or a hold) wants one of ``events``.

        Return the gate or hold that timed out, or None once there is room or
        the bus closes (``closing``: the caller checks which).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        withdrawn = withdrawal.get()
        while True:
            if self.closing:  # the bus closes: the caller refuses the publish at once
                return None
            waits: tuple[Gate | Hold, ...] = (*self.full, *self.holds)
            gate = next((g for g in waits if not g.room.is_set() and _wants(g, events)), None)
            if gate is None:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return gate
            if withdrawn is None:
                if not gate.room.wait(remaining):
                    return gate
                continue
            if withdrawn.is_set():
                raise Withdrawn("the publish was cancelled while it waited for room")
            gate.room.wait(WITHDRAW_POLL if remaining is None else min(remaining, WITHDRAW_POLL))

    # -- a node's bridge (its I/O thread only) ----------------------------------------

    def set_holds(self, holds: tuple[Hold, ...]) -> None:
        """Replace the holds (the bridge's I/O thread: their one writer)."""
        self.holds = holds

    # -- the router ---------------------------------------------------------------

    def mark_full(self, route: Route) -> Gate | None:
        """Mark ``route`` full; return its new gate, or None if it is already marked."""
        current = self._gates.get(route.id)
        if current is not None and not current.room.is_set():
            return None
        gate = Gate(route, Pattern.parse(route.pattern).matches)
        self._gates[route.id] = gate
        self.full = tuple(self._gates.values())
        return gate

    def clear(self, gate: Gate) -> None:
        """Set ``gate``'s room and drop it if it is still the current one for its route."""
        gate.room.set()
        if self._gates.get(gate.route.id) is gate:
            del self._gates[gate.route.id]
            self.full = tuple(self._gates.values())

    def clear_route(self, sub_id: str) -> None:
        """Release whoever waits on ``sub_id`` (it was unsubscribed)."""
        gate = self._gates.get(sub_id)
        if gate is not None:
            self.clear(gate)

    def release_all(self) -> None:
        """Release every waiting publisher (the router stopped)."""
        for gate in list(self._gates.values()):
            self.clear(gate)

    def close(self) -> None:
        """Release every waiting publisher and let none wait again (the bus closes).

        They find the bus closed and raise ``BusClosedError``: room that
        comes during the close's flush is for what was published before it.
        """
        self.closing = True
        self.release_all()
        with self._lock:
            self._unreserved.notify_all()


def _matchers(routes: Sequence[Route]) -> list[tuple[Route, Callable[[str], bool]]]:
    """Each of ``routes`` with its pattern's matcher (filters are the caller's)."""
    return [(r, Pattern.parse(r.pattern).matches) for r in routes]


def _wants(gate: Gate | Hold, events: list[Event]) -> bool:
    return any(gate.wants(e) for e in events)
