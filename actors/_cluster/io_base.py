"""The state every part of the bridge's I/O thread shares, and the hand-off to that thread.

``Bridge`` is built from ``StreamIO`` (the event stream) and ``RequestIO``
(the request channel) over this base.  Everything here except ``_call_soon``,
``_wake`` and ``_ask_io`` runs on the I/O thread only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import zmq

from actors._cluster.bridge_io import PublishLedger
from actors._cluster.checkpoints import (
    POSITION,
    epoch_name,
    left_items,
    load_journaled,
    numbering_name,
    watermark_name,
)
from actors._cluster.endpoints import Link, Peer
from actors._cluster.outbound import Outbound
from actors._cluster.ports import LocalNode
from actors._cluster.security import Curve
from actors._cluster.streams import Inbound, RecoverRequest
from actors._cluster.wire import Request
from actors._model.config import NodeConfig
from actors._model.event import Event
from actors._model.metrics import Counters
from actors._runtime.future import BusFuture

__all__ = ["BridgeBase", "LinkState", "Route"]

logger = logging.getLogger("actors.bridge")

T = TypeVar("T")
Route = tuple[zmq.Socket[bytes], bytes | None]
"""Where a request goes: a socket, and a ROUTER identity (None for a DEALER)."""


GONE_AFTER = 4
"""Heartbeat timeouts a peer is silent before a new origin's held frames are delivered."""


@dataclass(frozen=True, slots=True)
class LinkState:
    """A configured peer endpoint as last seen by the I/O thread."""

    endpoint: str
    name: str | None
    welcomed: bool
    broker: bool
    refused: str | None


class BridgeBase:
    """Shared state of the I/O thread (see the module docstring)."""

    _xpub: zmq.Socket[bytes]
    _sub: zmq.Socket[bytes]  # the streams of brokers
    _router: zmq.Socket[bytes]

    def __init__(self, local: LocalNode, node: NodeConfig) -> None:
        self._local = local
        self._node = node
        self.name = node.name
        self._epoch = random.getrandbits(63)
        self._persistent = local.journal is not None
        self._base = local.first_sequence
        # What numbers this node's sequences: its journal's, or this run alone.
        self._numbering = local.numbering if local.numbering is not None else self._epoch
        self._max = node.max_frame_bytes
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        # A wake-up and the closing of the pipe never overlap: once closed, its
        # descriptor numbers go to the next file or socket the process opens.
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._calls: deque[Callable[[], None]] = deque()
        self._calls_run = 0  # calls run on the I/O thread so far (``Bridge._run``'s quiet turns)
        # Without a journal the ring answers recovery (with one, the journal
        # does: no ring).  It fills as events join the send queue: it keeps
        # room for the queue (``send_queue`` and what publishers had on the
        # way, ``docs/cluster.md``) besides the last ``recovery_ring`` events sent.
        ring = 0 if self._persistent else node.recovery_ring + 2 * node.send_queue
        self._out = Outbound(self.name, self._epoch, node.batch_size, ring, node.max_frame_bytes)
        # Everything below ``base`` is in the journal (a restarted persistent
        # node): announce it as the head from the start, so a receiver that
        # followed the last incarnation fetches what it sent too late or never.
        self._out.head = self._base - 1
        self._in = Inbound(self.name, max(node.recovery_ring, 10_000))
        self._in.window = node.credit_window  # a recovery obeys the credit window too
        self._stats = Counters()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._round = 0
        self._peers: dict[str, Peer] = {}
        self._links: list[Link] = []
        self._refusals: list[str] = []
        self._waiting: dict[str, tuple[Callable[[Request | None], None], float]] = {}
        # Requests of peers being answered (sender, rid): an ask again while its
        # answer is still being read is not read twice (its answer serves both).
        self._serving: set[tuple[str, str]] = set()
        # This node's asks waiting for an answer, by rid (``RequestIO._resend_asks``).
        self._asks: dict[str, Request] = {}
        self._resent: set[str] = set()  # of those, the ones sent again (``_resend_asks``)
        self._saved: dict[str, int] = {}
        # The epoch, numbering and numberings left saved of each origin.
        self._saved_epochs: dict[str, tuple[int, int | None, tuple[tuple[int, int], ...]]] = {}
        self._saved_position = -1
        self._preload: Future[dict[str, list[int]]] | None = None
        self._preload_covered = False  # every origin of the preload settled (``_covered``)
        # Per origin of the preload: (epoch, the first head heard from it in this run).
        self._cover_heads: dict[str, tuple[int | None, int]] = {}
        # Records routed but not yet known to be journaled, and how many of
        # them the journal was asked about (``StreamIO._ask_written``).
        self._unwritten: list[object] = []
        self._asked = 0
        # Recovery requests waiting for their origin to be heard again (``recovery_io``).
        self._parked: dict[str, tuple[RecoverRequest, int]] = {}
        # Recovery requests sent and not answered yet, with their try.
        self._recovering: dict[str, tuple[RecoverRequest, int]] = {}
        self._workers = ThreadPoolExecutor(2, thread_name_prefix=f"bridge-{self.name}")
        self._ledger = PublishLedger()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # The SUB of each peer whose stream is followed directly (``StreamIO``);
        # of those opened for unasked greetings, when each one's peer was not
        # yet heard on it; and the streams waiting for room to open.
        self._streams: dict[str, zmq.Socket[bytes]] = {}
        self._unconfirmed: dict[str, tuple[float, str, bytes | None]] = {}  # opened, where, key
        self._unasked: set[str] = set()
        self._requeued: set[str] = set()  # closed unheard once: the next time, forgotten
        self._stream_queue: dict[str, tuple[str, bytes | None, bool]] = {}
        self._poller = zmq.Poller()
        self._curve: Curve | None = None
        self._pub_endpoint: str | None = None
        self.endpoint: str | None = None  # the resolved ``listen`` (ephemeral ports filled in)

    # -- any thread ---------------------------------------------------------------------

    def _wake(self) -> None:
        # A full pipe means a wake-up is pending anyway.  Never after the pipe
        # was closed: the byte would go to whatever reuses the descriptor (a
        # socket, a journal file).
        with self._pipe_lock:
            if self._pipe_open:
                with contextlib.suppress(OSError):
                    os.write(self._wfd, b"x")

    def _close_pipe(self) -> None:
        with self._pipe_lock:
            if self._pipe_open:
                self._pipe_open = False
                for fd in (self._rfd, self._wfd):
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        self._wake()

    def _on_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _ask_io(self, fn: Callable[[], T], fallback: Callable[[], T], timeout: float = 10.0) -> T:
        """Return ``fn()`` run on the I/O thread (``fallback()`` once it stopped)."""
        if self._on_io_thread():
            return fn()
        thread = self._thread
        if thread is None or not thread.is_alive() or self._stopping:
            return fallback()
        future: BusFuture[T] = BusFuture()

        def run() -> None:
            try:
                future.set(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._call_soon(run)
        try:
            result: T = future.get(timeout=timeout)
        except TimeoutError:
            if not thread.is_alive():
                return fallback()
            raise
        return result

    def _run_calls(self) -> None:
        while self._calls:
            self._calls_run += 1
            self._calls.popleft()()

    # -- I/O thread -----------------------------------------------------------------------

    def _alive(self, name: str) -> bool:
        peer = self._peers.get(name)
        return peer is not None and peer.alive

    def _not_gone(self, name: str) -> bool:
        """Return whether ``name`` is alive or was heard within ``GONE_AFTER`` heartbeat timeouts.

        Dead past that is gone, not stalled: ``Inbound.expire_syncs`` then
        delivers what a new origin left held (a live peer stalled a little
        longer than ``heartbeat_timeout`` before its first heartbeat would
        otherwise have its frames released early, and its late sync reply
        would count a gap and fetch what it was about to send).
        """
        peer = self._peers.get(name)
        if peer is None or peer.alive:
            return peer is not None
        silent = time.monotonic() - max(peer.last_seen, peer.last_heard)
        return silent <= GONE_AFTER * self._node.heartbeat_timeout

    def _broker_lags(
        self, name: str, rid: str, done: Callable[[Request | None], None], deadline: float
    ) -> bool:
        """Whether a broker's error for an ask sent again to ``name`` is to be asked past.

        The ask was sent again because ``name`` came back (a new incarnation,
        a new connection), and the broker answered that it has no connection
        of it: it has not heard the new one's greeting yet (the greeting and
        the stream this node heard it on are separate connections).  While
        ``name`` is alive the ask is sent again a heartbeat interval later,
        up to its deadline; anything else fails it with the broker's error.
        """
        peer = self._peers.get(name)
        now = time.monotonic()
        if rid not in self._resent or peer is None or not peer.alive or now >= deadline:
            return False
        self._waiting[rid] = (done, deadline)

        def again(_expired: Request | None) -> None:
            message, route = self._asks.get(rid), self._route_to(name)
            if message is not None and rid in self._waiting and route is not None:
                self._stats.requests_resent += 1
                self._send(route, message)

        later = min(deadline, now + self._node.heartbeat_interval)
        self._waiting[f"{rid}#again"] = (again, later)
        return True

    def _deliver(self, events: list[Event]) -> None:
        """Route ``events`` locally, send queued recovery requests, save moved watermarks."""
        inbound = self._in
        for request in inbound.requests:
            self._send_recover(request)
        inbound.requests.clear()
        if inbound.losses:  # from any step: an answer, a failure, an origin's restart
            self._announce_losses()
        if events:
            self._local.inject(events)
            self._stats.events_delivered += len(events)
        journal = self._local.journal
        if journal is None:
            return
        # All in one write (``checkpoints.py``): a watermark is never on disk
        # without the epoch and numbering it counts in.
        items: list[tuple[str, int]] = []
        marks = inbound.watermarks()
        for name, mark in marks.items():
            if self._saved.get(name) != mark:
                self._saved[name] = mark
                items.append((watermark_name(name), mark))
            st = inbound.origins[name]
            if st.epoch is None:
                continue
            saved = self._saved_epochs.get(name)
            state = (st.epoch, st.numbering, tuple(st.left.items()))
            if saved != state:
                self._saved_epochs[name] = state
                items.append((epoch_name(name), st.epoch))
                if st.numbering is not None:
                    items.append((numbering_name(name), st.numbering))
                if state[2] != (saved[2] if saved is not None else ()):
                    items.extend(left_items(name, st.left))
        # With the watermarks: every event received later gets a higher local
        # sequence (``checkpoints.py``).
        if self._saved_position != self._out.head and self._covered():
            self._saved_position = self._out.head
            items.append((POSITION, self._saved_position))
        if items:
            journal.save_checkpoints(items)

    def _covered(self) -> bool:
        """Return whether the received events journaled past the saved position are covered.

        The position may move past them only once the watermark of each of
        their origins has: that origin's sync and recovery are done and its
        watermark reached the first head it announced in this run (its events
        fetched again were dropped as duplicates, and the watermark went past
        them).  Moved earlier (a node killed before the watermark
        that covered them was written comes back with its journal's end as
        the position's next value), a crash would leave them below the
        position and above the watermark: the next start would not know
        them, fetch them again and journal them twice.  An origin that does
        not come back keeps the position where it is.
        """
        if self._preload_covered:
            return True
        preload = self._journaled()
        if not preload.done():
            return False
        try:
            origins = preload.result()
        except Exception:  # unreadable: the position stays (the next start reads again)
            return False
        for name in origins:
            st = self._in.origins.get(name)
            if st is None or st.watermark is None or st.blocked() or st.head is None:
                return False
            # Its events journaled before the restart are at most the head it
            # announces now (the same numbering: the same epoch, or a persistent
            # origin's next one).  Nothing waiting is not enough: right after
            # the watermark loaded, before the sync was asked for, nothing
            # waits yet; a recovery given up (RECOVER_ATTEMPTS) ends with the
            # watermark still below them.
            heard = self._cover_heads.get(name)
            if heard is None or heard[0] != st.epoch:
                heard = self._cover_heads[name] = (st.epoch, st.head)
            if st.watermark < heard[1]:
                return False
        self._preload_covered = True
        return True

    def _debug(self, what: str, origin: str, *values: object) -> None:
        """Log a step of ``origin``'s state machine at DEBUG, with its state after the step."""
        if logger.isEnabledFor(logging.DEBUG):
            st = self._in.origins.get(origin)
            state: object = None
            if st is not None:
                state = (st.epoch, st.watermark, st.head, st.loading, st.awaiting_sync)
                state = (*state, st.restarted, len(st.held), len(st.pending))
            logger.debug(
                "bridge %s: %s of %s: %s; (epoch, watermark, head, loading, awaiting sync, "
                "restarted, held, pending) before: %s",
                *(self.name, what, origin, values, state),
            )

    def _journaled(self) -> Future[dict[str, list[int]]]:
        """Start (once) reading the received events journaled after the saved position."""
        if self._preload is None:
            journal = self._local.journal
            assert journal is not None
            self._preload = self._workers.submit(load_journaled, journal, self._in.dedupe, 30.0)
        return self._preload

    # Implemented by the halves (``RequestIO``, ``StreamIO``); declared here for each other.
    def _send_recover(self, request: RecoverRequest, attempt: int = 1) -> None:
        raise NotImplementedError

    def _connect_stream(
        self, name: str, endpoint: str, key: bytes | None, *, asked: bool = False
    ) -> None:
        raise NotImplementedError

    def _connect(self, sock: zmq.Socket[bytes], endpoint: str, key: bytes | None) -> bool:
        raise NotImplementedError

    def _stream_socket(self) -> zmq.Socket[bytes]:
        raise NotImplementedError

    def _open_stream(self, name: str, endpoint: str, key: bytes | None, *, asked: bool) -> bool:
        raise NotImplementedError

    def _close_stream(self, name: str) -> None:
        raise NotImplementedError

    def _subscribe_all(self, topic: bytes, *, subscribe: bool = True) -> None:
        raise NotImplementedError

    def _route_to(self, name: str) -> Route | None:
        raise NotImplementedError

    def _route_max(self, route: Route) -> int:
        raise NotImplementedError

    def _announce_losses(self) -> None:
        raise NotImplementedError

    def _send(self, route: Route, message: Request) -> None:
        raise NotImplementedError

    def _unanswered(self, name: str) -> None:
        raise NotImplementedError

    def _resend_asks(self, name: str) -> None:
        raise NotImplementedError

    def _unpark(self) -> None:
        raise NotImplementedError

    def _seen(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _on_credit(self, message: Request) -> None:
        raise NotImplementedError

    def _arrived(self, count: int) -> None:
        raise NotImplementedError

    def _epoch_heard(self, name: str, epoch: int) -> None:
        raise NotImplementedError

    def _recovery_restarted(self, name: str) -> None:
        raise NotImplementedError

    def _late_answer(self, reply: Request) -> None:
        raise NotImplementedError

    def _handler_failed(self, what: str) -> None:
        """Count (``frames_dropped``) and log a message whose handling raised; carry on.

        Messages are checked as they are decoded (``wire``), so this is a
        defect, never a peer's doing: the I/O thread must outlive it.
        """
        self._stats.frames_dropped += 1
        logger.exception("bridge %s: dropped %s: handling it failed", self.name, what)

    def _own_through_broker(self, prefix: bytes) -> bool:
        """Return whether ``prefix`` is one this node follows, with a broker among its links.

        A broker's proxy passes every subscription up to every publisher, this
        node's own included: no receiver grants credit for such a prefix.
        """
        return prefix in self._in.prefixes and any(link.broker for link in self._links)

    def _link_states(self) -> tuple[LinkState, ...]:
        return tuple(
            LinkState(link.endpoint, link.name, link.welcomed, link.broker, link.refused)
            for link in self._links
        )

    def _refuse(self, reason: str, *, fatal: bool = True) -> None:
        """Count and log a refused peer; a ``fatal`` one also fails ``wait_for_peers``.

        Fatal: a duplicate name, or a peer refusing this node.  An impostor
        (a name bound to another key) is only counted and logged: the node
        it pretends to be may be a fine peer.
        """
        self._stats.hellos_refused += 1
        if reason in self._refusals:
            return
        logger.warning("bridge %s: refused a peer: %s", self.name, reason)
        if fatal:
            self._refusals.append(reason)
