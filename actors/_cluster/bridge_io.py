"""Helpers of the bridge that need no sockets: endpoints, peers, statistics, answers.

The answers (``serve_*``) run on the bridge's worker threads and may block on
the journal; everything else is plain data.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from actors._core.messages import GetCorrelated
from actors._model.event import Event
from actors._model.metrics import BridgeStatistics, Counters
from actors._model.query import EventQuery
from actors._runtime.future import BusFuture

if TYPE_CHECKING:
    from actors._bus import EventBus
    from actors._cluster.bridge import Bridge
    from actors._cluster.streams import Outbound

__all__ = [
    "take_statistics",
    "Link",
    "Peer",
    "derive_endpoint",
    "query_from_json",
    "query_to_json",
    "reachable",
    "serve_correlated",
    "serve_query",
    "serve_recover",
]

RECOVER_LIMIT = 5000
"""At most this many events per recovery answer; the asker continues from there."""

_TCP = re.compile(r"^tcp://(?P<host>.*):(?P<port>\*|\d+)$")
_ANY_HOST = {"0.0.0.0", "*", "::", "[::]"}  # noqa: S104 - recognised, never bound here


def derive_endpoint(listen: str, offset: int, suffix: str) -> str:
    """Return the endpoint of a second socket beside ``listen``.

    ``tcp://h:5701`` gives ``tcp://h:5702`` (port + ``offset``), ``tcp://h:*``
    (or ``:0``) stays ephemeral, ``ipc://`` and ``inproc://`` names get ``suffix``.
    Raise ``ValueError`` for another transport.
    """
    match = _TCP.match(listen)
    if match is not None:
        port = match["port"]
        # "*" and "0" both ask for an ephemeral port: the second socket too.
        new_port = "*" if port in ("*", "0") else str(int(port) + offset)
        return f"tcp://{match['host']}:{new_port}"
    if listen.startswith(("ipc://", "inproc://")):
        return listen + suffix
    raise ValueError(f"unsupported endpoint {listen!r} (tcp://, ipc:// or inproc://)")


def reachable(advertised: str, via: str | None) -> str:
    """Return ``advertised`` with a wildcard host replaced by ``via`` (a host or an endpoint)."""
    match = _TCP.match(advertised)
    if match is None or match["host"] not in _ANY_HOST or not via:
        return advertised
    host_match = _TCP.match(via)
    host = host_match["host"] if host_match is not None else via
    return f"tcp://{host}:{match['port']}"


@dataclass(slots=True)
class Peer:
    """A node this one heard from."""

    name: str
    alive: bool = False
    last_seen: float = 0.0
    route: Any = None  # (socket, identity or None) to send it requests directly


@dataclass(slots=True)
class Link:
    """A DEALER connected to a configured peer endpoint (a node or a broker)."""

    endpoint: str
    sock: Any
    key: bytes | None
    name: str | None = None
    welcomed: bool = False
    broker: bool = False
    hello_at: float = float("-inf")
    broker_streams: tuple[str, str] | None = None

    def host(self) -> str | None:
        """Return the host of a tcp endpoint, else None."""
        match = _TCP.match(self.endpoint)
        return match["host"] if match is not None else None


def take_statistics(bridge: Bridge, counters: Counters) -> BridgeStatistics:
    """Return a snapshot of ``bridge`` (any thread; figures may be a turn stale)."""
    inbound = bridge._in
    alive = tuple(sorted(p.name for p in list(bridge._peers.values()) if p.alive))
    synced = tuple(n for n in alive if inbound.synced_with([n]))
    return BridgeStatistics(
        **asdict(counters),
        gaps=inbound.gaps,
        gaps_recovered=inbound.recovered,
        gaps_unrecovered=inbound.unrecovered,
        duplicates=inbound.duplicates,
        peers_alive=alive,
        synced_peers=synced,
    )


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
    """Return the ``EventQuery`` a JSON object describes; raise ``ValueError`` if invalid."""
    time_range = body.get("time_range")
    cid = body.get("correlation_id")
    return EventQuery(
        event_types=body.get("event_types"),
        time_range=None
        if time_range is None
        else tuple(datetime.fromisoformat(t) if t else None for t in time_range),  # type: ignore[arg-type]
        correlation_id=uuid.UUID(cid) if cid else None,
        source=body.get("source"),
        after_sequence=body.get("after_sequence"),
        limit=body.get("limit"),
        descending=bool(body.get("descending", False)),
    )


# -- answers (worker threads) -------------------------------------------------------------


def serve_recover(
    bus: EventBus, out: Outbound, body: dict[str, Any]
) -> tuple[list[Event], dict[str, Any]]:
    """Return this node's own events in ``(after, upto]`` under ``prefixes``, and the reply body.

    Reads the journal where persistent (blocks on it), else the recovery ring.
    """
    after, upto = int(body["after"]), int(body["upto"])
    prefixes = [str(p) for p in body["prefixes"]]
    if bus._journal is None:
        events, complete, lost = out.from_ring(after, upto, prefixes, RECOVER_LIMIT)
        scanned = events[-1].sequence or upto if not complete and events else upto
        return events, {"complete": complete, "scanned": scanned, "lost": lost}
    raw = [p.encode() for p in prefixes]
    name = bus.name
    found: list[Event] = []
    position = after
    while position < upto:
        page = bus.query(EventQuery(after_sequence=position, limit=1000), timeout=30.0)
        if not page:
            break
        for event in page:
            seq = event.sequence or 0
            if seq > upto:
                position = upto
                break
            position = seq
            if event.origin == name and any(event.event_type.encode().startswith(p) for p in raw):
                found.append(event)
        if len(found) >= RECOVER_LIMIT:
            return found, {"complete": False, "scanned": position, "lost": False}
    return found, {"complete": True, "scanned": upto, "lost": False}


class PublishLedger:
    """Publish events on a peer's behalf, once per event id (idempotent retries).

    Remembers the last ``size`` ids it published and what they became.
    Thread-safe: the bridge's workers share one.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._done: OrderedDict[uuid.UUID, Event] = OrderedDict()
        self._lock = threading.Lock()

    def publish(self, bus: EventBus, events: list[Event], timeout: float = 30.0) -> list[Event]:
        """Publish ``events`` on ``bus`` in order; return them as published (sequenced).

        Blocks until every publish future resolved.  Raises what ``publish``
        raises (``InvalidEventError``, ``BackpressureError``, ...).
        """
        out: list[Event] = []
        for event in events:
            with self._lock:
                known = self._done.get(event.id)
            if known is None:
                known = bus.publish(event).get(timeout=timeout)
                with self._lock:
                    self._done[event.id] = known
                    while len(self._done) > self._size:
                        self._done.popitem(last=False)
            out.append(known)
        return out


def serve_query(bus: EventBus, query: EventQuery) -> list[Event]:
    """Run ``query`` on the local journal (blocks on it)."""
    return bus.query(query, timeout=30.0)


def serve_correlated(bus: EventBus, correlation_id: uuid.UUID) -> list[Event]:
    """Return the local events of ``correlation_id`` (memory, then journal): never asks peers."""
    future: BusFuture[Any] = BusFuture()
    bus._router_mailbox.put(GetCorrelated(correlation_id, future))
    answer = future.get(timeout=30.0)
    events, complete = answer if answer is not None else ([], False)
    found: dict[uuid.UUID, Event] = {e.id: e for e in events or []}
    if not complete and bus._journal is not None:
        for event in bus.query(EventQuery(correlation_id=correlation_id), timeout=30.0):
            found.setdefault(event.id, event)
    return sorted(found.values(), key=lambda e: (e.sequence or 0, e.timestamp))
