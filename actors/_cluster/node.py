"""``Node``: the public handle of a bus joined to others (``bus.node``), and its wiring.

``NodeWiring`` is what the facade hands the bridge (``ports.LocalNode``):
the router's mailbox, the journal's, and a few of the bus's own callables.
The bridge never holds the bus.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from actors._cluster.bridge import Bridge
from actors._cluster.limits import EventSizeCheck
from actors._cluster.ports import JournalPort
from actors._core.backpressure import BlockGuard, Hold
from actors._core.messages import (
    Barrier,
    Flush,
    Forward,
    GetCorrelated,
    LoadCheckpoint,
    ReadJournal,
    SaveCheckpoints,
)
from actors._core.router import RouterActor
from actors._errors import BusClosedError
from actors._model.config import NodeConfig
from actors._model.event import Event
from actors._model.guards import check_timeout
from actors._model.metrics import BridgeStatistics, BusMetrics
from actors._model.query import EventQuery
from actors._runtime.dispatcher import FifoMailbox
from actors._runtime.future import BusFuture

__all__ = ["Node", "NodeWiring", "RouterJournal", "Waits", "start_node"]

T = TypeVar("T")


class Waits:
    """The answers the bridge's threads wait for from the bus's actors, failed once they stopped.

    A message put into the router or the journal after they stopped (the
    bus closed meanwhile) is never handled, and the dispatcher that would
    run it is gone: its waiter (a worker thread reading a watermark, say)
    would wait its whole timeout, and hold the interpreter's exit that long.
    ``close`` (called once the actors stopped) fails every such wait with
    ``BusClosedError``, and each one begun after it at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[BusFuture[Any]] = set()
        self._closed = False

    def get(self, future: BusFuture[T], timeout: float | None) -> T:
        """Wait for ``future`` (its message already sent); raise ``BusClosedError`` once closed."""
        with self._lock:
            if self._closed:
                future.set_exception(BusClosedError("the bus was closed"))
            else:
                self._futures.add(future)
        try:
            return future.get(timeout=timeout)
        finally:
            with self._lock:
                self._futures.discard(future)

    def close(self) -> None:
        """Fail every wait, now and later (the actors that would answer have stopped)."""
        with self._lock:
            self._closed = True
            futures, self._futures = self._futures, set()
        for future in futures:
            future.set_exception(BusClosedError("the bus was closed before it answered"))


class RouterJournal:
    """``JournalPort`` over the router: every message goes after what was routed before it."""

    def __init__(self, router: FifoMailbox, journal: FifoMailbox, waits: Waits) -> None:
        self._router = router
        self._journal = journal
        self._waits = waits

    def read(self, query: EventQuery, timeout: float | None) -> list[Event]:
        """Return what ``query`` selects (blocks)."""
        future: BusFuture[list[Event]] = BusFuture()
        self._router.put(Forward(self._journal, ReadJournal(query, future)))
        return self._waits.get(future, timeout)

    def load_checkpoint(self, name: str, timeout: float | None) -> int | None:
        """Return the checkpoint ``name`` (blocks)."""
        future: BusFuture[int | None] = BusFuture()
        self._router.put(Forward(self._journal, LoadCheckpoint(name, future)))
        return self._waits.get(future, timeout)

    def save_checkpoints(self, items: Sequence[tuple[str, int]]) -> None:
        """Save ``items`` in one write once everything routed before is journaled (never blocks)."""
        self._router.put(Forward(self._journal, SaveCheckpoints(tuple(items))))

    def after_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything routed before is written (never blocks)."""
        self._router.put(Forward(self._journal, Barrier(callback)))


@dataclass(frozen=True, slots=True)
class NodeWiring:
    """The bus as its bridge sees it (satisfies ``ports.LocalNode``)."""

    name: str
    first_sequence: int
    numbering: int | None
    router: FifoMailbox
    journal: JournalPort | None
    inject: Callable[[Sequence[Event]], None]
    flush: Callable[[float | None], None]
    publish: Callable[[Event], BusFuture[Event]]
    metrics: Callable[[], BusMetrics]
    guard: BlockGuard
    waits: Waits = field(default_factory=Waits)

    def after_handled(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything routed so far is handled and recorded (a flush)."""
        future: BusFuture[None] = BusFuture()
        future.add_done_callback(lambda _: callback())
        self.router.put(Flush(future))

    def hold_publishers(self, holds: tuple[Hold, ...]) -> None:
        """Make publishers wait on ``holds`` (the bridge's I/O thread: their one writer)."""
        self.guard.set_holds(holds)

    def local_correlated(self, correlation_id: uuid.UUID, timeout: float | None) -> list[Event]:
        """Return the local events of ``correlation_id`` (memory, then journal; never peers)."""
        future: BusFuture[Any] = BusFuture()
        self.router.put(GetCorrelated(correlation_id, future))
        answer = self.waits.get(future, timeout)
        events, complete = answer if answer is not None else ([], False)
        found: dict[uuid.UUID, Event] = {e.id: e for e in events or []}
        if not complete and self.journal is not None:
            for event in self.journal.read(EventQuery(correlation_id=correlation_id), timeout):
                found.setdefault(event.id, event)
        return sorted(found.values(), key=lambda e: (e.sequence or 0, e.timestamp))


class Node:
    """A bus's life as a node: peers, remote publishing, endpoints and the bridge's figures.

    Get it as ``bus.node`` (None on a bus built without a ``NodeConfig``).
    ``EventBus.wait_for_peers``, ``publish_remote``, ``endpoints`` and
    ``linked_nodes`` call the methods of the same names here.
    """

    def __init__(
        self,
        bridge: Bridge,
        config: NodeConfig,
        prepare: Callable[[Event | str, Any, dict[str, Any]], Event],
        check_open: Callable[[], None],
    ) -> None:
        self._bridge = bridge
        self._prepare = prepare
        self._check_open = check_open
        self.config = config

    @property
    def name(self) -> str:
        """The node's name (its events' origin)."""
        return self.config.name

    def wait_for_peers(self, names: Sequence[str], timeout: float | None = 30.0) -> bool:
        """Block until the nodes ``names`` acknowledged this node's subscriptions.

        From then on every event they publish that a local pattern matches
        arrives here.  Flushes the bus first.  On a persistent bus it
        returns once the watermarks of those nodes are journaled too, so a
        restart after a crash fetches what they published meanwhile
        (docs/cluster.md, "Restarts of a receiving node").  Returns False after
        ``timeout``; raises ``PeerRefusedError`` naming the fault if a peer
        was refused (a duplicate name, a name bound to another key) or
        refused this node.
        """
        if isinstance(names, str):
            raise TypeError("names must be a sequence of node names, not one str")
        if self.name in names:
            raise ValueError(f"a node does not wait for itself: {self.name!r} is this node")
        return self._bridge.wait_synced(list(names), timeout)

    def publish_remote(
        self,
        node: str,
        event_or_type: Event | str,
        data: Any = None,
        *,
        timeout: float | None = 30.0,
        **fields: Any,
    ) -> Event:
        """Have the connected node ``node`` publish an event on its own bus.

        The event takes that node's origin and sequence, as if published
        there.  Blocks until the node acknowledged it (journaled, where that
        node is persistent) and returns it as published.  Retrying after a
        timeout is safe: the node publishes an event id once (also across its
        restart, when it keeps a journal; see docs/wire.md, PUBLISH).  Raises
        ``NotConnectedError`` (no link to it), ``NoAnswerError`` (no answer in
        ``timeout``), ``PeerRefusedError`` (it refused, with its reason) and
        ``EventTooLargeError`` (over the size limit).
        """
        if not isinstance(node, str) or not node:
            raise TypeError(f"node must be a node name (str), not {node!r}")
        self._check_open()
        event = self._prepare(event_or_type, data, fields)
        # Sized as ``node`` will stamp it (its name is the origin), not as this node would.
        EventSizeCheck(self.config.max_frame_bytes, node)(event)
        return self._bridge.remote_publish(node, [event], timeout)[0]

    @property
    def endpoints(self) -> dict[str, str | None]:
        """Return the resolved endpoints: ``request`` (its ``listen``) and ``publish``."""
        return {"request": self._bridge.endpoint, "publish": self._bridge.publish_endpoint}

    def remote_metrics(
        self, node: str, timeout: float | None = 10.0
    ) -> tuple[BusMetrics, dict[str, float]]:
        """Ask the connected node ``node`` for its figures and, per peer, seconds since heard.

        Raises ``NotConnectedError``, ``NoAnswerError`` or ``PeerRefusedError``.
        """
        return self._bridge.remote_metrics(node, timeout)

    def linked_nodes(self, timeout: float | None = 30.0) -> list[str]:
        """Return the names of the nodes among ``NodeConfig.peers``, once they answered.

        Blocks until every configured peer answered (or ``timeout``); raises
        ``PeerRefusedError`` if one refused this node.
        """
        return self._bridge.linked_nodes(timeout)

    def statistics(self) -> BridgeStatistics:
        """Return a snapshot of the bridge's figures (asked of its I/O thread)."""
        return self._bridge.statistics()

    def wait(self, predicate: Callable[[BridgeStatistics], bool], timeout: float | None) -> bool:
        """Block until ``predicate(statistics())`` holds; return False after ``timeout``."""
        check_timeout("timeout", timeout)
        return self._bridge.wait(predicate, timeout)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the bridge's I/O thread between two turns (diagnostics, tests)."""
        self._bridge.call_soon(fn)

    def __repr__(self) -> str:
        return f"<Node {self.config.name} {self.endpoints}>"


def start_node(
    config: NodeConfig,
    *,
    router: RouterActor,
    journal: FifoMailbox | None,
    numbering: int | None,
    inject: Callable[[Sequence[Event]], None],
    flush: Callable[[float | None], None],
    publish: Callable[[Event], BusFuture[Event]],
    metrics: Callable[[], BusMetrics],
    prepare: Callable[[Event | str, Any, dict[str, Any]], Event],
    check_open: Callable[[], None],
) -> tuple[Bridge, Node, EventSizeCheck, Callable[[], None]]:
    """Start the bridge of a bus; return it, the bus's ``Node`` handle, its size check and a settle.

    Call the settle once the router and the journal stopped (``Waits.close``).

    The bridge records what the router routes and learns the local patterns
    from it.  Raises what ``Bridge`` raises (nothing is left running then).
    """
    inbox = router.actor_inbox
    waits = Waits()
    wiring = NodeWiring(
        name=config.name,
        first_sequence=router.next_sequence,
        numbering=numbering if journal is not None else None,
        router=inbox,
        journal=RouterJournal(inbox, journal, waits) if journal is not None else None,
        inject=inject,
        flush=flush,
        publish=publish,
        metrics=metrics,
        guard=router.guard,
        waits=waits,
    )
    bridge = Bridge(wiring, config)
    try:
        router.add_recorder(bridge.recorder)
        router.route_listeners.append(bridge.on_local_patterns)
        check = EventSizeCheck(config.max_frame_bytes, config.name)
        return bridge, Node(bridge, config, prepare, check_open), check, waits.close
    except BaseException:  # a Ctrl-C too: its sockets and threads are not left behind
        bridge.close(10.0)  # as close waits for a bridge's sockets (RELEASE_WAIT)
        raise
