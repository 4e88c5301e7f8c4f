"""The publisher's side of the core: prepare an event, admit it, send it to the router.

Runs on the caller's thread.  ``Publisher`` applies, in order: the rate limit,
the ``BLOCK`` admission (``actors._core.backpressure``), and the router's
bounded mailbox.  The refusals it counts (``rejected``, ``rate_limited``) are
the publisher side's own counters, kept under one lock because any thread may
publish; the router counts its own rejections (``REJECT``) separately.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from actors._core.backpressure import BlockGuard, Piece, Withdrawn, withdrawal
from actors._core.messages import Publish, PublishBatch
from actors._core.ratelimit import TokenBucket
from actors._core.subscriber import current_event
from actors._errors import (
    BackpressureError,
    BusClosedError,
    InvalidEventError,
    RateLimitedError,
)
from actors._model.event import FIELD_NAMES, Event, with_fields
from actors._model.topics import is_reserved
from actors._runtime.dispatcher import FifoMailbox, waits_here
from actors._runtime.future import BusFuture
from actors._runtime.pool import Scheduler

__all__ = ["ROUTER_CAPACITY", "Publisher", "check_not_reserved", "prepare_event"]

ROUTER_CAPACITY = 1024
"""Messages the router's mailbox holds before ``publish`` waits for room.

A deeper queue absorbs nothing a router that routes in microseconds needs,
and costs collector time: every event waiting in it outlives collections
and is promoted, and enough promotions start a full collection of the
whole process (``docs/performance.md``, "Fewer full collections").
"""

_now = time.perf_counter

# Fields a caller may pass to publish() alongside the type and data.
_EVENT_FIELDS = frozenset(FIELD_NAMES) - {"event_type", "data", "sequence", "origin"}


def prepare_event(event_or_type: Event | str, data: Any, fields: dict[str, Any]) -> Event:
    """Build (or take) the event to publish; inherit causation inside a handler.

    Raises ``TypeError`` for an Event given with data or fields, or an unknown
    field; ``InvalidEventError`` for a reserved (``$``) type.
    """
    cause = current_event.get()
    if isinstance(event_or_type, Event):
        if data is not None or fields:
            raise TypeError("pass either an Event or a type with data and fields, not both")
        event = event_or_type  # its origin and sequence are this bus's (the router stamps)
        if cause is not None and (event.causation_id is None or event.correlation_id is None):
            changes: dict[str, Any] = {}
            # The handled event published again (forwarded, re-driven) is not
            # its own cause: it keeps none rather than naming itself.
            if event.causation_id is None and event.id != cause.id:
                changes["causation_id"] = cause.id
            if event.correlation_id is None and cause.correlation_id is not None:
                changes["correlation_id"] = cause.correlation_id
            event = with_fields(event, **changes)
    else:
        unknown = fields.keys() - _EVENT_FIELDS
        if unknown:
            raise TypeError(f"unknown Event field(s): {', '.join(sorted(unknown))}")
        if cause is not None:  # given explicitly, even as None (a new root), it stays
            if "causation_id" not in fields:
                fields["causation_id"] = cause.id
            if "correlation_id" not in fields and cause.correlation_id is not None:
                fields["correlation_id"] = cause.correlation_id
        event = Event(event_type=event_or_type, data=data, **fields)
    check_not_reserved(event)
    return event


def check_not_reserved(event: Event) -> None:
    """Raise ``InvalidEventError`` if ``event`` has a type reserved for the bus (``$``)."""
    if is_reserved(event.event_type):
        raise InvalidEventError(
            f"event type {event.event_type!r} is reserved for the bus ('$' types)"
        )


class _Paced(threading.Event):
    """Set once the router routed a paced publish (which then waits for the bridge's take)."""


class Publisher:
    """Admit events and send them to the router (see the module docstring)."""

    def __init__(
        self,
        *,
        router: FifoMailbox,
        guard: BlockGuard,
        block_timeout: float,
        bucket: TokenBucket | None,
        dispatcher: Scheduler,
    ) -> None:
        self._router = router
        self._guard = guard
        self._timeout = block_timeout
        self._bucket = bucket
        self._dispatcher = dispatcher
        self._lock = threading.Lock()
        self._rejected = 0
        self._rate_limited = 0
        # Set by the bus's close before it tells the router (``Closing``):
        # a publish that got past the bus's closed check sent its message
        # anyway, and may have sent it after the router stopped.  Its futures
        # are kept until ``settle_closed``, which fails those still pending.
        self.closed = False
        self._settled = False
        self._stranded: list[BusFuture[Event]] = []
        # The ``routed`` events publishers wait on: set by ``settle_closed``,
        # since a message sent after the router's last turn is never routed.
        self._routing: set[threading.Event] = set()

    def counts(self) -> tuple[int, int]:
        """Return (rejected, rate_limited) as refused on the publisher side."""
        with self._lock:
            return self._rejected, self._rate_limited

    def may_wait(self) -> bool:
        """Return whether a publish could block now (BLOCK subscriptions, or a full router)."""
        router = self._router
        cap = router.capacity
        guard = self._guard
        return bool(guard.blocking) or guard.may_hold() or (cap is not None and len(router) >= cap)

    def publish(self, event: Event, *, owned: bool) -> BusFuture[Event]:
        """Send one event; return its future (``RateLimitedError``, ``BackpressureError``)."""
        if self._bucket is not None:
            self._take_tokens(1)
        guard = self._guard
        future: BusFuture[Event] = BusFuture()
        # No BLOCK subscription and no hold (the common case), or a node's
        # pacing hold whose allowance covers the event: the steps of _admit
        # and _send inline, a few calls fewer per event.
        if guard.blocking or (guard.holds and not guard.lets_through(event)):
            try:
                routed = self._admit((event,), self._timeout)
            except (BackpressureError, Withdrawn):
                self._give_back(1)
                raise
            self._send(Publish(event, future, _now(), False, owned, routed), routed, self._timeout)
        elif not self._router.put_blocking(
            Publish(event, future, _now(), False, owned), self._timeout
        ):
            self._refuse((event,), self._timeout)
        if self.closed:
            self._strand((future,))
        return future

    def publish_within(self, event: Event, *, owned: bool, wait: float) -> BusFuture[Event]:
        """``publish``, waiting for room at most ``wait`` s (below ``block_timeout``).

        For a request, whose own deadline bounds the whole call.  The steps of
        ``publish`` with another timeout: kept apart so that ``publish``, the
        hot path, reads ``block_timeout`` and takes no argument more.
        """
        timeout = min(self._timeout, wait)
        if self._bucket is not None:
            self._take_tokens(1)
        guard = self._guard
        future: BusFuture[Event] = BusFuture()
        if guard.blocking or (guard.holds and not guard.lets_through(event)):
            try:
                routed = self._admit((event,), timeout)
            except (BackpressureError, Withdrawn):
                self._give_back(1)
                raise
            self._send(Publish(event, future, _now(), False, owned, routed), routed, timeout)
        elif not self._router.put_blocking(Publish(event, future, _now(), False, owned), timeout):
            self._refuse((event,), timeout)
        if self.closed:
            self._strand((future,))
        return future

    def publish_batch(self, events: Sequence[Event]) -> list[BusFuture[Event]]:
        """Send ``events`` as one message (admitted as a whole); return their futures.

        With ``BLOCK`` subscriptions, in pieces that fit their mailboxes
        (``_publish_in_pieces``).
        """
        self._take_tokens(len(events))
        timeout = self._timeout
        if self._guard.blocking and len(events) > 1:
            return self._publish_in_pieces(events, timeout)
        try:
            routed = self._admit(events, timeout)
        except (BackpressureError, Withdrawn):
            self._give_back(len(events))
            raise
        futures: list[BusFuture[Event]] = [BusFuture() for _ in events]
        self._send(
            PublishBatch(events, futures, time.perf_counter(), False, routed), routed, timeout
        )
        if self.closed:
            self._strand(futures)
        return futures

    def _publish_in_pieces(self, events: Sequence[Event], timeout: float) -> list[BusFuture[Event]]:
        """Send ``events`` piece by piece, each admitted when the BLOCK mailboxes have room for it.

        So a batch larger than a ``BLOCK`` subscription's room never lands in
        its mailbox at once: each piece is cut on the room left once the one
        before was routed.  If the first piece cannot be admitted, raise
        (nothing was published); if a later one cannot, its events and the
        rest fail their futures with that error, and those before it are
        published.  Either way a refusal counts every event not published in
        ``rejected``.
        """
        futures: list[BusFuture[Event]] = [BusFuture() for _ in events]
        start = 0
        pieces = self._guard.pieces(events)
        withdrawn = withdrawal.get()
        try:
            for end, reserved in pieces:
                piece = events[start:end]
                try:
                    if start and self.closed:  # the rest would never be routed
                        raise BusClosedError("the bus was closed while the batch went in pieces")
                    if start and withdrawn is not None and withdrawn.is_set():
                        # Its await was cancelled: the rest is withdrawn, so
                        # nothing of it follows the caller's next publish.
                        raise Withdrawn("the publish was cancelled between pieces")
                    routed = self._admit(piece, timeout, reserved)
                except (BackpressureError, Withdrawn, BusClosedError) as exc:
                    self._give_back(end - start)  # counted in ``rejected`` if refused
                    self._stop(futures, start, end, exc)
                    break
                try:
                    self._send(
                        PublishBatch(piece, futures[start:end], time.perf_counter(), False, routed),
                        routed,
                        timeout,
                    )
                except BackpressureError as exc:  # the router's mailbox: the piece is counted
                    self._stop(futures, start, end, exc)
                    break
                self._guard.release(reserved)  # routed: its room is taken, no longer reserved
                start = end
        finally:
            pieces.close()  # the room its last piece reserved goes back
        if self.closed:
            self._strand(futures)
        return futures

    def _stop(
        self, futures: list[BusFuture[Event]], start: int, end: int, exc: BaseException
    ) -> None:
        """End a batch whose piece ``start:end`` was not admitted (its tokens and count done).

        The events after the piece give their tokens back too, and are counted
        as rejected when the piece was.  Raise ``exc`` if nothing was published
        (``start == 0``); else fail the futures from ``start`` on with it.
        """
        self._give_back(len(futures) - end)
        if isinstance(exc, BackpressureError):
            with self._lock:
                self._rejected += len(futures) - end
        if start == 0:
            raise exc
        for future in futures[start:]:
            future.set_exception(exc)

    def _strand(self, futures: Sequence[BusFuture[Event]]) -> None:
        """Keep futures sent while the bus closes; fail them at once if it has closed."""
        with self._lock:
            if not self._settled:
                self._stranded.extend(futures)
                return
        _fail_closed(futures)

    def settle_closed(self) -> None:
        """Fail every future sent during ``close`` that nothing resolved (the actors stopped)."""
        with self._lock:
            self._settled = True
            stranded, self._stranded = self._stranded, []
            routing, self._routing = self._routing, set()
        for routed in routing:
            routed.set()  # never routed now: its publisher stops waiting
        _fail_closed(stranded)

    def inject(self, events: Sequence[Event]) -> None:
        """Route events a peer already accepted: never blocks, never refused.

        The events are the bridge's own (decoded for this bus, held by no one
        else): the router stamps them in place.
        """
        self._router.put(
            PublishBatch(
                events, [None] * len(events), time.perf_counter(), internal=True, owned=True
            )
        )

    # -- steps ------------------------------------------------------------------

    def _give_back(self, n: int) -> None:
        """Return the rate limit's tokens of ``n`` events refused before they were sent."""
        if self._bucket is not None:
            self._bucket.give_back(n)

    def _take_tokens(self, n: int) -> None:
        bucket = self._bucket
        if bucket is not None and not bucket.try_take(n):
            with self._lock:
                self._rate_limited += n
            if n > bucket.burst:  # no wait would let it pass: say so, not "try later"
                raise RateLimitedError(
                    f"a batch of {n} events exceeds the rate limit's burst of "
                    f"{bucket.burst:g}: it can never pass; publish it in batches of at most that"
                )
            raise RateLimitedError(f"rate limit of {bucket.rate:g} events/s exceeded")

    def _admit(
        self, events: Sequence[Event], timeout: float, piece: Piece | None = None
    ) -> threading.Event | None:
        """Wait while a full BLOCK subscription (or a node's hold) wants one of ``events``.

        Also while earlier batch pieces reserved the room they need
        (``BlockGuard.wait_unreserved``; ``piece``: what ``events`` reserved
        if they are a batch piece).

        Returns an event for the router to set once it routed them when a
        BLOCK pattern matches (so the next publish sees the mailbox full), or
        a node's hold paces them (its allowance is spent: ``_send`` then also
        waits until the node's bridge took them, so nothing piles up uncounted
        behind its send queue), else None.  On a thread the router may need
        (``Scheduler.on_system_thread``) it does not wait for the routing; a
        handler on the pool does, as the router never needs a busy pool thread.
        """
        guard = self._guard
        if not guard.blocking and not guard.holds:
            return None
        if guard.reservations and guard.blocking:  # batch pieces on their way
            route = guard.wait_unreserved(events, piece, timeout)
            if route is not None:
                with self._lock:
                    self._rejected += len(events)
                raise BackpressureError(
                    f"subscription {route.id} ({route.pattern!r}) stayed reserved for "
                    f"other publishers' batches for {timeout}s; event not published"
                )
        if guard.full or guard.holds:
            gate = guard.wait_for_room(list(events), timeout)
            if gate is not None:
                with self._lock:
                    self._rejected += len(events)
                raise BackpressureError(gate.refusal(timeout))
            if self.closed:  # room came while the bus closes: too late to publish
                raise BusClosedError("the bus was closed while the publish waited for room")
            withdrawn = withdrawal.get()
            if withdrawn is not None and withdrawn.is_set():  # cancelled as the room came
                raise Withdrawn("the publish was cancelled while it waited for room")
        paced = guard.paces(events)  # counted even when it cannot wait (below)
        dispatcher = self._dispatcher
        # Nor on the journal's thread (``never_waiting``): the router may wait for it.
        here = waits_here()
        if paced and here and not dispatcher.on_dispatcher_thread():
            return _Paced()  # a node's send queue fills: one publish in the router
        # A handler waits for the routing too, unless its thread may be the
        # one the router needs: else its publishes would run ahead of the
        # router, and a full BLOCK mailbox would be seen full too late.
        if (
            guard.blocking
            and here
            and not dispatcher.on_system_thread()
            and any(guard.routes_wanted(e.event_type) for e in events)
        ):
            return threading.Event()
        return None

    def _refuse(self, events: Sequence[Event], timeout: float) -> None:
        """Count ``events`` refused (the router's mailbox stayed full) and raise.

        They are taken off the node's allowance again: not on their way after all.
        """
        if self._guard.holds:
            self._guard.refund(events)
        self._give_back(len(events))
        with self._lock:
            self._rejected += len(events)
        raise BackpressureError(f"publish blocked for {timeout}s: the router's mailbox stayed full")

    def _send(
        self, message: Publish | PublishBatch, routed: threading.Event | None, timeout: float
    ) -> None:
        if routed is not None:
            with self._lock:
                if self._settled:
                    routed.set()  # the router has stopped: nothing will route it
                else:
                    self._routing.add(routed)
        try:
            if not self._router.put_blocking(message, timeout):
                self._refuse(_events_of(message), timeout)
            if routed is not None:
                routed.wait(timeout)
                if type(routed) is _Paced and not self.closed:
                    self._guard.wait_drained(_events_of(message), timeout)
        finally:
            if routed is not None:
                with self._lock:
                    self._routing.discard(routed)


def _fail_closed(futures: Sequence[BusFuture[Event]]) -> None:
    error = BusClosedError("the bus was closed before the event was published")
    for future in futures:
        future.set_exception(error)  # a no-op for a future already resolved


def _events_of(message: Publish | PublishBatch) -> Sequence[Event]:
    return (message.event,) if isinstance(message, Publish) else message.events
