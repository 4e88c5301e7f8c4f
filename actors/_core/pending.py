"""The pending-reply table: the callers of a bus still waiting for replies.

``PendingTable`` maps request ids to the ``Pending`` entries of callers
still waiting.  Written by requesting threads (open, close) and by whoever
delivers a reply (offer); one lock guards it.  Bounded by ``limit``; an
entry leaves when its last reply arrived, its caller gave up, or (a caller
that never came back, its loop closed by hand) a sweep found it past its
timeout.  The caller waits on a ``ReplyFuture``.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from actors._errors import BackpressureError, FutureTimeoutError, InvalidEventError
from actors._model.event import Event
from actors._runtime.future import BusFuture

__all__ = ["DEFAULT_LIMIT", "SWEEP_EVERY", "SWEEP_GRACE", "Pending", "PendingTable", "ReplyFuture"]

DEFAULT_LIMIT = 65_536  # requests waiting at once, per bus
SWEEP_GRACE = 1.0
"""How long past its timeout an entry whose caller never came back is kept (seconds).

A caller gone with its loop (closed by hand with the request awaited) never
closes its entry; the table ends it as a timeout would, at its next sweep
(``SWEEP_EVERY`` opens, a full table, or a read of its size)."""
SWEEP_EVERY = 256

# -- the table --------------------------------------------------------------

T = TypeVar("T")


class ReplyFuture(BusFuture[T]):
    """A ``BusFuture`` whose waiter is a lock taken when the future is made.

    ``get`` blocks on that lock and completing releases it: no
    ``threading.Event`` is built per wait, and the completing thread (the
    router's, on the hot path) only releases a lock.  Completed at most once
    by design (whoever removes the table entry completes it); a second
    completion is ignored, as by ``BusFuture``.
    """

    __slots__ = ("_gate",)

    def __init__(self) -> None:
        super().__init__()
        gate = threading.Lock()
        gate.acquire()
        self._gate = gate

    def get(self, timeout: float | None = None) -> T:
        """Return the value, waiting up to ``timeout`` seconds (see ``BusFuture.get``)."""
        if not self._done:
            gate = self._gate
            if not gate.acquire(True, -1 if timeout is None else max(0.0, timeout)):
                raise FutureTimeoutError(f"{timeout} seconds")
            gate.release()  # open for any other reader
        return super().get()

    def _complete(self, value: Any, exc: BaseException | None) -> None:
        if self._done:
            return
        super()._complete(value, exc)
        self._gate.release()


@dataclass(slots=True, eq=False)
class Pending:
    """One caller waiting for replies to ``request_id``.

    ``future`` resolves with the replies once ``max_replies`` arrived (never,
    when ``max_replies`` is None: the caller's timeout ends the wait).
    ``gathers``: the caller is a ``request_all``, which a refused reply does
    not fail (whatever its ``max_replies``), where a ``request`` fails at once.
    ``inside``: the caller is a handler of the bus (``fail_inside``).
    """

    request_id: uuid.UUID
    max_replies: int | None
    gathers: bool = False
    future: ReplyFuture[list[Event]] = field(default_factory=ReplyFuture)
    replies: list[Event] = field(default_factory=list)
    expires: float | None = None  # ``time.monotonic()`` past which a sweep ends it
    inside: bool = False
    answers: tuple[str, ...] | None = None  # the types of its replies (None: any)


class PendingTable:
    """Request id -> ``Pending``; bounded, thread-safe, no thread of its own."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._entries: dict[uuid.UUID, Pending] = {}
        self._lock = threading.Lock()
        # Replies a local responder hands over itself (see ``expect``).
        self._direct: set[uuid.UUID] = set()
        self._opened = 0

    def __len__(self) -> int:
        self.sweep()
        return len(self._entries)

    def sweep(self) -> int:
        """End the entries past their ``expires`` as their timeout would; return how many."""
        now = time.monotonic()
        with self._lock:
            gone = [e for e in self._entries.values() if e.expires is not None and e.expires < now]
            for entry in gone:
                del self._entries[entry.request_id]
        for entry in gone:  # its caller, if it ever looks, gets the replies so far
            entry.future.set(list(entry.replies))
        return len(gone)

    def open(
        self,
        request_id: uuid.UUID,
        max_replies: int | None = 1,
        *,
        gathers: bool = False,
        timeout: float | None = None,
        inside: bool = False,
        answers: tuple[str, ...] | None = None,
    ) -> Pending:
        """Add an entry for ``request_id``; raise ``BackpressureError`` when the table is full.

        ``InvalidEventError`` if a request with that id is already waiting.

        With a ``timeout``, a sweep ends the entry ``SWEEP_GRACE`` s after
        it, should its caller never close it.  ``answers``: the event types
        its replies have; an event of another type caused by the request (a
        responder's own domain event) is not one of them.
        """
        if max_replies is not None and max_replies < 1:
            raise ValueError("max_replies must be at least 1 (or None)")
        entry = Pending(request_id, max_replies, gathers, inside=inside, answers=answers)
        if timeout is not None:
            entry.expires = time.monotonic() + timeout + SWEEP_GRACE
        self._opened += 1
        if self._opened % SWEEP_EVERY == 0 or len(self._entries) >= self.limit:
            self.sweep()
        with self._lock:
            if len(self._entries) >= self.limit:
                raise BackpressureError(
                    f"{self.limit} requests are already waiting for replies on this bus"
                )
            if request_id in self._entries:
                raise InvalidEventError(
                    f"request {request_id} is already waiting: a request's id must be unique "
                    "among waiting requests (leave id unset to get a fresh one)"
                )
            self._entries[request_id] = entry
        return entry

    def wanted(self, event: Event) -> bool:
        """Return whether ``event`` answers a waiting request (the reply route's filter).

        Not a reply a local responder hands over itself: the route would only
        add a hop for it.
        """
        entry = self._entries.get(event.causation_id)  # type: ignore[arg-type]
        return entry is not None and _answers(entry, event) and event.id not in self._direct

    def waiting(self, request_id: uuid.UUID) -> bool:
        """Return whether a caller waits for replies to ``request_id``."""
        return request_id in self._entries

    def expect(self, reply_id: uuid.UUID) -> None:
        """Mark ``reply_id`` as handed over directly: the reply route's filter skips it.

        Call before the reply is published; ``delivered`` (or ``unexpect``)
        removes the mark.
        """
        self._direct.add(reply_id)

    def unexpect(self, reply_id: uuid.UUID) -> None:
        """Remove the mark of ``expect`` (the reply was not published)."""
        self._direct.discard(reply_id)

    def delivered(
        self, reply_id: uuid.UUID, request_id: uuid.UUID, published: BusFuture[Event]
    ) -> None:
        """Offer the sequenced reply once ``published`` resolved (a done callback).

        Runs on the thread that completes the publish (the router's, or the
        journal's with ``sync`` durability), so the caller gets the very
        event the router sequenced, journaled and traced.  A reply the bus
        refused (a full ``REJECT`` subscription, a journal error) fails a
        caller waiting for one reply with that error at once; one gathering
        replies (``request_all``) goes on waiting for the others.
        """
        exc = published.exception()
        if exc is None:
            self.offer(published.get())
        else:
            self.refuse(request_id, exc)
        self._direct.discard(reply_id)

    def refuse(self, request_id: uuid.UUID, exc: BaseException, *, gathering: bool = False) -> None:
        """Fail the caller of ``request_id`` with ``exc``: the bus refused its reply.

        A caller gathering replies (``request_all``) goes on waiting for the
        others, unless ``gathering`` (no other reply can come: the bus closed).
        """
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is not None and (gathering or not entry.gathers):
                del self._entries[request_id]
            else:
                entry = None
        if entry is not None:
            entry.future.set_exception(exc)

    def offer(self, reply: Event) -> bool:
        """Give ``reply`` to the request it answers; return whether anyone was waiting.

        A reply already taken (the same event id) is ignored: the responder's
        direct hand-over and the reply subscription may both offer it.
        """
        cause = reply.causation_id
        if cause is None:
            return False
        with self._lock:
            entry = self._entries.get(cause)
            if entry is None or not _answers(entry, reply):
                return False
            if entry.replies and any(r.id == reply.id for r in entry.replies):
                return False
            entry.replies.append(reply)
            full = entry.max_replies is not None and len(entry.replies) >= entry.max_replies
            if full:
                del self._entries[cause]
        if full:
            entry.future.set(entry.replies)
        return True

    def fail_all(self, exc: BaseException) -> int:
        """Fail every waiting caller with ``exc`` (the bus closed); return how many."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.future.set_exception(exc)
        return len(entries)

    def end_inside(self, exc: BaseException) -> int:
        """End the waits of the bus's own handlers (no reply can come); return how many.

        A gathering caller (``request_all``) gets the replies it has, as its
        timeout would end it; one with none, and a ``request``, fail with ``exc``.
        """
        with self._lock:
            entries = [e for e in self._entries.values() if e.inside]
            for entry in entries:
                del self._entries[entry.request_id]
        for entry in entries:
            if entry.gathers and entry.replies:
                entry.future.set(list(entry.replies))
            else:
                entry.future.set_exception(exc)
        return len(entries)

    def close(self, entry: Pending) -> list[Event] | None:
        """Remove ``entry`` (its caller stops waiting); return its replies, None if it was gone.

        Only that entry: once it was taken (its reply came), a later request
        with the same id may have opened its own, which stays.
        """
        with self._lock:
            if self._entries.get(entry.request_id) is not entry:
                return None
            del self._entries[entry.request_id]
        return list(entry.replies)


def _answers(entry: Pending, event: Event) -> bool:
    """Return whether ``event`` is of a type that answers ``entry``'s request."""
    return entry.answers is None or event.event_type in entry.answers
