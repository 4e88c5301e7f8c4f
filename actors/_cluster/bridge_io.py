"""The answers a node gives its peers, and queries as JSON: no sockets, only ports.

The answers (``serve_*``) run on the bridge's worker threads and may block on
the journal through ``JournalPort``; they never see the bus.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from actors._cluster.outbound import Outbound
from actors._cluster.ports import LocalNode
from actors._cluster.wire import (
    ANSWER_TOO_LARGE,
    ERROR,
    Request,
    bool_field,
    decode_events,
    text_field,
    texts_field,
    uint_field,
)
from actors._codec.events import chunk_of
from actors._errors import (
    BridgeError,
    BusClosedError,
    FrameError,
    NoAnswerError,
    NotConnectedError,
    PeerRefusedError,
)
from actors._model.event import Event
from actors._model.query import EventQuery
from actors._runtime.future import BusFuture

__all__ = [
    "ANSWER_TOO_LARGE",
    "ASK_GRACE",
    "RECOVER_LIMIT",
    "PublishLedger",
    "Piece",
    "answer_limit",
    "answers",
    "broker_error",
    "correlated_page",
    "page_key",
    "fit_answer",
    "fit_asker",
    "query_from_json",
    "query_to_json",
    "run_then_set",
    "serve_recover",
    "settle",
]

RECOVER_LIMIT = 5000
"""At most this many events per recovery answer; the asker continues from there."""
RECOVER_SCAN = 50_000
"""At most this many journal records read per recovery answer (matching or not): one
request cannot hold a worker for a read of the whole journal; the asker continues."""

_WAIT = 30.0


# -- queries as JSON --------------------------------------------------------------------


def query_to_json(query: EventQuery) -> dict[str, Any]:
    """Return ``query`` as a JSON object (see docs/wire.md)."""
    start, end = query.time_range or (None, None)
    return {
        "event_types": list(query.event_types) if query.event_types is not None else None,
        "time_range": None
        if query.time_range is None
        else [start.isoformat() if start else None, end.isoformat() if end else None],
        "correlation_id": str(query.correlation_id) if query.correlation_id else None,
        "source": query.source,
        "after_sequence": query.after_sequence,
        "limit": query.limit,
        "descending": query.descending,
    }


def query_from_json(body: dict[str, Any]) -> EventQuery:
    """Return the ``EventQuery`` a JSON object describes.

    Each field is read by type (no coercion: ``"false"`` is not a boolean, ``"10"``
    not a limit); raise ``FrameError`` (a ``ValueError``) for any that is invalid.
    """
    if type(body) is not dict:
        raise FrameError(f"a query is a JSON object, not {type(body).__name__}")
    time_range = body.get("time_range")
    if time_range is not None and (
        type(time_range) is not list
        or len(time_range) != 2
        or not all(t is None or type(t) is str for t in time_range)
    ):
        raise FrameError(
            f"field 'time_range' is not [start or null, end or null]: {time_range!r:.40}"
        )
    cid = text_field(body, "correlation_id", "")
    given = {key for key, value in body.items() if value is not None}
    try:
        return EventQuery(
            event_types=texts_field(body, "event_types") if "event_types" in given else None,
            time_range=None
            if time_range is None
            else (_instant(time_range[0]), _instant(time_range[1])),
            correlation_id=uuid.UUID(cid) if cid else None,
            source=text_field(body, "source") if "source" in given else None,
            after_sequence=uint_field(body, "after_sequence")
            if "after_sequence" in given
            else None,
            limit=uint_field(body, "limit") if "limit" in given else None,
            descending=bool_field(body, "descending", False),
        )
    except (TypeError, ValueError) as error:
        if isinstance(error, FrameError):
            raise
        raise FrameError(f"invalid query: {error}") from error


def _instant(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


# -- answers (worker threads) -------------------------------------------------------------


Piece = tuple[int, bytes]
"""One event of a recovery answer: its origin sequence and its chunk (framed bytes)."""


def serve_recover(
    local: LocalNode, out: Outbound, body: dict[str, Any]
) -> tuple[list[Piece], dict[str, Any]]:
    """Return this node's own events in ``(after, upto]`` under ``prefixes``, and the reply body.

    At most ``limit`` events (the asker's room; ``RECOVER_LIMIT`` at most and
    when it gives none): the asker continues after the last one.

    Reads the journal where persistent (blocks on it), else the recovery ring
    (then call it on the I/O thread).  Each event comes as its chunk, ready
    for the answer's payload.
    """
    after, upto = int(body["after"]), int(body["upto"])
    prefixes = tuple(str(p) for p in body["prefixes"])
    limit = min(RECOVER_LIMIT, max(1, int(body.get("limit") or RECOVER_LIMIT)))
    journal = local.journal
    if journal is None:
        entries, complete, lost = out.from_ring(after, upto, prefixes, limit)
        scanned = entries[-1][0] if not complete and entries else upto
        return [(seq, chunk) for seq, _, chunk in entries], {
            "complete": complete,
            "scanned": scanned,
            "lost": lost,
        }
    name = local.name
    found: list[Piece] = []
    position = after
    read = 0
    while position < upto:
        if read >= RECOVER_SCAN:  # the asker goes on after ``position``
            return found, {"complete": False, "scanned": position, "lost": False}
        page = journal.read(EventQuery(after_sequence=position, limit=1000), _WAIT)
        read += len(page)
        if not page:
            break
        for event in page:
            seq = event.sequence or 0
            if seq > upto:
                position = upto
                break
            position = seq
            if event.origin == name and event.event_type.startswith(prefixes):
                found.append((seq, chunk_of(event)))
                if len(found) >= limit:
                    return found, {"complete": False, "scanned": seq, "lost": False}
    return found, {"complete": True, "scanned": upto, "lost": False}


def fit_answer(
    pieces: list[Piece], body: dict[str, Any], budget: int
) -> tuple[list[Piece], dict[str, Any]]:
    """Cut a recovery answer to ``budget`` bytes; the asker continues after what is kept."""
    size = 0
    for keep, (_, chunk) in enumerate(pieces):
        size += len(chunk)
        if size > budget:
            kept = pieces[: max(keep, 1)]
            # A part the origin no longer holds comes before what it sends: in this page.
            lost = bool(body.get("lost"))
            return kept, {"complete": False, "scanned": kept[-1][0], "lost": lost}
    return pieces, body


class PublishLedger:
    """Publish events on a peer's behalf, once per event id (idempotent retries).

    Remembers the last ``size`` ids it published and what they became.
    Thread-safe: the bridge's workers share one.  A request for an id whose
    publish is still under way (a retry that overtook the first try) waits
    for that publish and answers with its outcome: it never publishes again.
    On a persistent node the memory starts, at the first request, with the
    last ``size`` events of the journal: a retry that reaches a node restarted
    after the first try (killed before its answer left) gets the event as
    stored, never a second copy.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._done: OrderedDict[uuid.UUID, Event] = OrderedDict()
        self._running: dict[uuid.UUID, Future[Event]] = {}
        self._lock = threading.Lock()
        self._seeded = False
        self._seed_lock = threading.Lock()  # the first requests wait for one reading

    def _seed(self, local: LocalNode, timeout: float) -> None:
        """Remember the journal's last ``size`` events (once; a bus without one: nothing)."""
        with self._seed_lock:
            if self._seeded:
                return
            journal = local.journal
            if journal is not None:
                newest = journal.read(EventQuery(limit=self._size, descending=True), timeout)
                with self._lock:
                    for event in reversed(newest):  # oldest first: forgotten first
                        self._done.setdefault(event.id, event)
                    while len(self._done) > self._size:
                        self._done.popitem(last=False)
            self._seeded = True

    def publish(self, local: LocalNode, events: list[Event], timeout: float = _WAIT) -> list[Event]:
        """Publish ``events`` on the local bus in order; return them as published (sequenced).

        They become this node's events: any origin or sequence they carry is
        replaced (``publish`` gives them).  Blocks until every publish future
        resolved.  Raises what ``publish`` raises (``InvalidEventError``,
        ``BackpressureError``, ...), also to a request that waited for the
        same id's publish; ``TimeoutError`` if that one is not over in ``timeout``.
        """
        if not self._seeded:
            self._seed(local, timeout)
        out: list[Event] = []
        for event in events:
            with self._lock:
                known = self._done.get(event.id)
                running = self._running.get(event.id) if known is None else None
                mine = known is None and running is None
                if mine:
                    running = self._running[event.id] = Future()
            if known is not None:
                out.append(known)
                continue
            assert running is not None
            if not mine:
                out.append(running.result(timeout))
                continue
            try:
                known = local.publish(event).get(timeout=timeout)
            except BaseException as exc:
                with self._lock:
                    del self._running[event.id]
                running.set_exception(exc)
                raise
            with self._lock:
                del self._running[event.id]
                self._done[event.id] = known
                while len(self._done) > self._size:
                    self._done.popitem(last=False)
            running.set_result(known)
            out.append(known)
        return out


def broker_error(reply: Request, name: str) -> bool:
    """Whether ``reply`` is a broker's ``ERROR`` saying no connection of ``name`` is there.

    A broker's refusal of a message over its frame limit (``too_large``) is
    not one: that is final, whatever the connections.
    """
    return reply.kind == ERROR and reply.sender != name and not reply.body.get("too_large")


def settle(
    future: BusFuture[list[Event]], name: str, reply: Request | None, stopping: bool
) -> None:
    """Resolve an ask of node ``name`` with ``reply`` (None: no answer in time)."""
    if reply is None and stopping:
        future.set_exception(BusClosedError(f"the bus closed before {name!r} answered"))
    elif reply is None:
        future.set_exception(NoAnswerError(f"node {name!r} did not answer in time"))
    elif broker_error(reply, name):  # no node of that name is connected at the broker
        error = reply.body.get("error")
        future.set_exception(NotConnectedError(f"node {name!r} is not connected: {error}"))
    elif reply.kind == ERROR:  # the node's refusal, or a broker's of a message too large
        by = "" if reply.sender == name else f" (broker {reply.sender!r})"
        error = reply.body.get("error")
        future.set_exception(PeerRefusedError(f"node {name!r} refused{by}: {error}"))
    else:
        try:
            future.set(decode_events(reply.payload))
        except FrameError as exc:
            future.set_exception(exc)


def answer_limit(own: int, body: dict[str, Any]) -> int:
    """The frame limit of an answer: this node's, or the asker's ``max_bytes`` if smaller.

    An answer over the asker's limit would be dropped on arrival, and the
    asker would wait out its timeout: refused here, the asker reads it in
    pages (``Bridge.remote_query``, ``remote_correlated``).
    """
    asked = body.get("max_bytes")
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        return min(own, asked)
    return own


def page_key(event: Event) -> list[Any]:
    """Where ``event`` stands in a workflow's pages: sequence, timestamp, id (a total order)."""
    return [event.sequence or 0, event.timestamp.isoformat(), str(event.id)]


def correlated_page(local: Any, body: dict[str, Any]) -> list[Event]:
    """The events of a workflow this node holds (memory and journal), past ``after`` (a
    ``page_key``), at most ``limit`` of them: the pages of a share too large for one answer.

    A key, not an offset: events the memory's window drops, or that come in, between
    two pages move no event held when asked past the next page's start.
    """
    events = local.local_correlated(uuid.UUID(str(body["correlation_id"])), 30.0)
    events = sorted(events, key=page_key)
    after, limit = body.get("after"), body.get("limit")
    if type(after) is list and len(after) == 3:
        events = [e for e in events if page_key(e) > after]
    if type(limit) is int and limit > 0:
        events = events[:limit]
    return events


def fit_asker(
    pieces: list[Piece], reply: dict[str, Any], own: int, body: dict[str, Any]
) -> tuple[list[Piece], dict[str, Any]]:
    """Cut a recovery answer to the smaller of this node's and the asker's frame limit.

    ``max_bytes`` in the request is the asker's ``max_frame_bytes`` (absent
    from nodes that predate it: this node's own limit holds).  An event that
    alone is over the asker's limit can never reach it: the answer skips it
    (``lost``) and the asker continues after it.
    """
    limit = answer_limit(own, body)
    budget = limit - 4096
    pieces, reply = fit_answer(pieces, reply, budget)
    if len(pieces) == 1 and len(pieces[0][1]) > budget and limit < own:
        return [], {"complete": False, "scanned": pieces[0][0], "lost": True}
    return pieces, reply


ASK_GRACE = 0.5
"""How long a caller whose deadline passed waits for the I/O thread to look at its ask."""


def run_then_set(fn: Callable[[], Any], done: threading.Event) -> None:
    """Run ``fn``, then set ``done`` (whatever ``fn`` raised)."""
    try:
        fn()
    finally:
        done.set()


def answers(
    futures: dict[str, tuple[BusFuture[list[Event]], threading.Event]], deadline: float
) -> dict[str, list[Event] | BridgeError]:
    """Wait for each node's answer until ``deadline`` (the caller's, exactly).

    The I/O thread expires a sent ask on its next tick, after the deadline
    (that bookkeeping needs no one waiting).  Only an ask it has not looked
    at yet (``asked`` unset) is given the moment that takes: an unknown node
    fails there at once, with ``NotConnectedError``, not ``NoAnswerError``.
    """
    out: dict[str, list[Event] | BridgeError] = {}
    for name, (future, asked) in futures.items():
        try:
            try:
                out[name] = future.get(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if not (asked.wait(ASK_GRACE) and future.done()):  # at once once asked
                    raise
                out[name] = future.get(timeout=0)
        except BridgeError as exc:
            out[name] = exc
        except TimeoutError:
            out[name] = NoAnswerError(f"node {name!r} did not answer in time")
    return out
