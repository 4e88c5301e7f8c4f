"""Recovery requests of the bridge (I/O thread): ask an origin for a missed range until answered.

``Inbound`` decides what is missing; this sends its ``RecoverRequest``s over
the request channel and hands the answers back.  Rules (``docs/cluster.md``,
"Recovery"):

- an origin that is dead (not heard for ``heartbeat_timeout``: paused, cut
  off, restarting) or that no route reaches still holds the range (in its
  journal, or in its ring if it only paused), so a request for it is
  *parked*, never given up: it is asked again once the origin is heard;
- a request with no answer while its origin is heard is asked again
  (``recovery_retries``), each try ``2 x heartbeat_timeout`` long, then
  ``LONGEST_TRY`` times that, and never given up: a heard origin is busy
  (a big page, a loaded host), and a persistent one still holds the range
  (after ``RECOVER_ATTEMPTS`` tries it is logged at WARNING, once);
- an ``ERROR`` answer from a broker (it restarted and does not know the
  origin yet) means no route reaches the origin: the request is parked too;
- an ``ERROR`` answer from the origin (it cannot read its journal now) is
  asked again after ``heartbeat_timeout``;
- a range is given up (``gaps_unrecovered``) only after ``RECOVER_ATTEMPTS``
  ``ERROR`` answers (the origin's, or this node's own for an answer too
  large to take), counted apart from the tries, or when the origin answers
  that it no longer holds it;
- a range given up is announced: logged at WARNING and published on this
  bus as ``$bus.peer.lost`` (``LOST``), so no loss is silent.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from actors._cluster.bridge_io import broker_error
from actors._cluster.io_base import BridgeBase
from actors._cluster.streams import RecoverRequest
from actors._cluster.wire import (
    ERROR,
    RECOVER,
    FrameError,
    Request,
    bool_field,
    decode_events,
    uint_field,
)
from actors._model.event import Event, JsonValue

__all__ = ["LOST", "RECOVER_ATTEMPTS", "RecoveryIO"]

logger = logging.getLogger("actors.bridge")

RECOVER_ATTEMPTS = 4
"""``ERROR`` answers of its origin that give a recovery request up (unanswered tries never do)."""
LONGEST_TRY = 2
"""Tries after the first wait this many times as long (the first: ``2 x heartbeat_timeout``)."""

LOST = "$bus.peer.lost"
"""Published by a receiver for events of an origin it can no longer fetch (``docs/cluster.md``)."""


class RecoveryIO(BridgeBase):
    """The recovery half of the request channel (see the module docstring)."""

    def _send_recover(self, request: RecoverRequest, attempt: int = 1) -> None:
        if not self._in.is_pending(request.rid):
            return  # ended meanwhile (the origin restarted with a new numbering)
        route = self._route_to(request.origin)
        if route is None or not self._alive(request.origin):
            self._parked[request.rid] = (request, attempt)
            return
        rid = request.rid
        self._recovering[rid] = (request, attempt)
        self._debug(
            "recovery request (after, upto, try)",
            request.origin,
            request.after,
            request.upto,
            attempt,
        )

        def done(reply: Request | None) -> None:
            self._recovering.pop(rid, None)  # (a restart pops it and this callback both)
            self._answered(request, attempt, reply)

        span = 2 * self._node.heartbeat_timeout * (1 if attempt == 1 else LONGEST_TRY)
        self._waiting[rid] = (done, time.monotonic() + span)
        body: dict[str, object] = {
            "after": request.after,
            "upto": request.upto,
            "prefixes": list(request.prefixes),
        }
        if request.limit:
            body["limit"] = request.limit  # the room this node has for the answer
        body["max_bytes"] = self._route_max(route)  # the largest answer that reaches this node
        self._send(route, Request(RECOVER, request.origin, self.name, request.rid, body))

    def _answered(self, request: RecoverRequest, attempt: int, reply: Request | None) -> None:
        """Take the answer to a try of ``request`` (None: the try ran out of time)."""
        rid = request.rid
        if reply is not None and broker_error(reply, request.origin):
            # A broker that does not know the origin (yet): no route
            # reaches it, and it still holds the range. Parked, not a try.
            self._parked[rid] = (request, attempt)
            return
        if reply is None or reply.kind == ERROR:
            self._retry(request, attempt, None if reply is None else reply.body.get("error", "?"))
            return
        try:
            events = decode_events(reply.payload)
            body = reply.body
            complete, scanned = bool_field(body, "complete"), uint_field(body, "scanned")
            lost = bool_field(body, "lost", False)
        except FrameError:
            self._stats.frames_dropped += 1
            self._deliver(self._in.on_recovery_failed(rid, "the origin's answer was malformed"))
            return
        self._stats.events_recovered += len(events)
        self._debug(
            "recovery answer (events, complete, scanned, lost)",
            request.origin,
            len(events),
            complete,
            scanned,
            lost,
        )
        self._deliver(self._in.on_recovered(rid, events, complete, scanned, lost))
        self._arrived(len(events))  # a flush says when they are handled (room for more)

    def _announce_losses(self) -> None:
        """Log each range lost for good at WARNING and publish ``$bus.peer.lost`` for it.

        Called by ``_deliver``, through which every step of ``Inbound`` passes
        its result: a range given up, an answer saying lost, an origin that
        restarted with a new numbering (which ended its ranges in a heartbeat).
        """
        losses, self._in.losses = self._in.losses, []
        for loss in losses:
            logger.warning(
                "bridge %s: lost events of %s between its sequences %d and %d (%s)",
                self.name,
                *loss,
            )
            data: dict[str, JsonValue] = {"node": self.name, "origin": loss.origin}
            data.update(first=loss.first, last=loss.last, reason=loss.why)
            self._local.inject([Event(event_type=LOST, data=data, source="bus")])

    def _late_answer(self, reply: Request) -> None:
        """Take an answer that came after its try ran out, while the request is parked.

        A try whose origin was silent when it ran out is parked, not
        counted; the origin (stalled, not gone) often answers just after,
        with its heartbeats.  Dropped, that answer was asked for again at the
        next tick, whose answer came as late, for as long as the stalls
        lasted: the receiver never synced.
        """
        parked = self._parked.get(reply.rid)
        if parked is None or reply.sender != parked[0].origin:
            return
        del self._parked[reply.rid]
        if self._in.is_pending(reply.rid):
            self._answered(*parked, reply)

    def _retry(self, request: RecoverRequest, attempt: int, error: object) -> None:
        """Ask ``request`` again after a try ran out (``error`` None) or an ``ERROR`` answer."""
        answered = error is not None
        if not answered:
            self._unanswered(request.origin)
            if not self._alive(request.origin):
                self._parked[request.rid] = (request, attempt)
                return
        if answered:
            request = dataclasses.replace(request, errors=request.errors + 1)
            if request.errors >= RECOVER_ATTEMPTS:
                why = f"{request.errors} error answers, the last: {error}"
                self._deliver(self._in.on_recovery_failed(request.rid, why))
                return
        self._stats.recovery_retries += 1
        if not answered:
            if attempt == RECOVER_ATTEMPTS:  # heard, so busy: asked again, never given up
                logger.warning(
                    "bridge %s: %s, heard, has not answered %d tries to recover %d..%d; "
                    "asking again (its later events wait)",
                    *(self.name, request.origin, attempt, request.after + 1, request.upto),
                )
            self._send_recover(request, attempt + 1)
            return

        # An error comes back at once: ask again a heartbeat_timeout later
        # (through ``_waiting``, whose expired entries are called with None).
        def again(_reply: Request | None) -> None:
            self._send_recover(request, attempt + 1)

        later = time.monotonic() + self._node.heartbeat_timeout
        self._waiting[f"{request.rid}#again"] = (again, later)

    def _recovery_restarted(self, name: str) -> None:
        """``name`` restarted: ask its new incarnation what the last one did not answer.

        That try is not counted: the incarnation it went to is gone, which
        says nothing of whether the range is still held (an origin in a
        crash loop, restarting faster than ``heartbeat_timeout``, used to
        have its ranges given up after four restarts).
        """
        for rid, (request, attempt) in list(self._recovering.items()):
            if request.origin == name:
                del self._recovering[rid]
                self._waiting.pop(rid, None)
                self._send_recover(request, attempt)

    def _unpark(self) -> None:
        """Ask again the parked requests whose origin is heard again (each heartbeat tick)."""
        if not self._parked:
            return
        for rid, (request, attempt) in list(self._parked.items()):
            if not self._in.is_pending(rid):
                del self._parked[rid]
            elif self._alive(request.origin) and self._route_to(request.origin) is not None:
                del self._parked[rid]
                self._send_recover(request, attempt)
