"""The ZeroMQ bridge: join a bus to other nodes (or a ``Broker``).  See ``docs/cluster.md``.

One I/O thread owns every socket (zmq sockets are not thread-safe):

- an XPUB bound at the derived publish endpoint: frames of local events go out
  here; peers' SUB subscriptions (the literal prefixes of their patterns)
  arrive here, so only events a peer can match are sent;
- a SUB connected to each peer's XPUB (or a broker's): remote frames arrive;
- a ROUTER bound at ``NodeConfig.listen`` and one DEALER per configured peer:
  the request channel (hello/welcome, recovery, remote queries).

The bridge sees its bus only through ``LocalNode`` (``ports.py``).  The
router hands records to ``mailbox``, whose wake-up is a pipe the I/O thread
polls.  Blocking work (journal reads to answer a peer) runs on a small worker
pool, whose answers go back to the I/O thread through the same wake-up.
Figures are snapshots the I/O thread builds when asked (``statistics``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import zmq

from actors._cluster.bridge_io import ANSWER_TOO_LARGE, page_key, query_to_json
from actors._cluster.endpoints import Link, bind, derive_endpoint, last_endpoint
from actors._cluster.io_base import LinkState
from actors._cluster.limits import cap_inbound
from actors._cluster.ports import LocalNode
from actors._cluster.recovery_io import RecoveryIO
from actors._cluster.request_io import RequestIO
from actors._cluster.security import Curve, close_context, generate_keypair
from actors._cluster.stream_io import StreamIO, WakeMailbox
from actors._cluster.wire import CORRELATED, METRICS, PUBLISH, QUERY
from actors._codec.events import encode_batch
from actors._core.messages import Barrier
from actors._core.router_reads import ask_wait
from actors._errors import (
    BridgeError,
    FutureTimeoutError,
    NoAnswerError,
    NotConnectedError,
    PeerRefusedError,
)
from actors._model.config import NodeConfig
from actors._model.event import Event
from actors._model.metrics import BridgeStatistics, BusMetrics
from actors._model.metrics_json import metrics_from_answer
from actors._model.query import EventQuery
from actors._runtime.dispatcher import FifoMailbox
from actors._runtime.shutdown import Deadline

__all__ = ["Bridge", "BridgeView", "generate_keypair"]

logger = logging.getLogger("actors.bridge")


@dataclass(frozen=True, slots=True)
class BridgeView:
    """A snapshot of the bridge, built on its I/O thread: figures, links and refusals."""

    statistics: BridgeStatistics
    links: tuple[LinkState, ...] = ()
    refusals: tuple[str, ...] = ()
    built: int = 0  # how many views the I/O thread built before this one (a later one is newer)

    def reasons(self) -> list[str]:
        """Each refusal once: links' refusals, then the rest not already said by one of them.

        A node that refused this node for the refusal this node sent it (a
        service that echoes what it gets) gives one reason, not two.
        """
        said = [link.refused for link in self.links if link.refused]
        rest = [r for r in self.refusals if not any(s.endswith(f": {r}") for s in said)]
        return list(dict.fromkeys([*said, *rest]))


class Bridge(StreamIO, RecoveryIO, RequestIO):
    """Join the bus behind ``local`` to the nodes of ``node`` (see the module docstring).

    Raises ``BridgeError`` if a socket cannot be set up (address in use, a
    missing peer key); everything set up so far is closed first, so a failed
    start leaves no thread and no socket behind.  Nothing here blocks the
    router: records queue in ``mailbox``.
    """

    def __init__(self, local: LocalNode, node: NodeConfig) -> None:
        super().__init__(local, node)
        self.mailbox = WakeMailbox(self._wake)
        self._last = BridgeView(BridgeStatistics())
        self._stats_seen = self._last  # the newest view ``statistics`` got (given when overdue)
        self._views_built = 0
        self._generation = 0
        self._views_read = 0  # views built for ``view()`` so far (``_run``'s quiet turns)
        self._cond = threading.Condition()
        self._patterns_lock = threading.Lock()
        self._patterns_next: list[str] | None = None  # the latest local patterns, not yet taken
        try:
            self._setup(node)
        except (zmq.ZMQError, ValueError, TypeError) as exc:
            self._close_now()
            raise BridgeError(f"node {self.name}: cannot set up the bridge: {exc}") from exc
        except BaseException:
            self._close_now()
            raise
        self._thread = threading.Thread(target=self._run, name=f"bridge-{self.name}", daemon=True)
        self._thread.start()

    @property
    def recorder(self) -> FifoMailbox:
        """The mailbox the router records into."""
        return self.mailbox

    # -- setup --------------------------------------------------------------------

    def _setup(self, node: NodeConfig) -> None:
        self._curve = Curve(self._ctx, node.curve_public_key, node.curve_secret_key, self._allow)
        self._xpub = self._ctx.socket(zmq.XPUB)
        self._xpub.linger = 0
        self._xpub.sndhwm = node.send_hwm
        cap_inbound(self._xpub, node.max_frame_bytes)  # subscriptions (docs/cluster.md)
        # Not XPUB_VERBOSE: the XPUB reports a topic's first subscribe and the
        # unsubscribe that leaves no connection holding it.
        self._curve.server(self._xpub)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.linger = 0
        # A send to a closed connection's identity fails (EHOSTUNREACH) instead
        # of vanishing: that is how a gone route is told (``RequestIO._send``).
        self._router.router_mandatory = True
        cap_inbound(self._router, node.max_frame_bytes)
        self._curve.server(self._router)
        if node.listen is not None:
            bind(self._router, node.listen)
            self.endpoint = last_endpoint(self._router)
            bind(self._xpub, derive_endpoint(node.listen, 1, ".pub"))
            self._pub_endpoint = last_endpoint(self._xpub)
        self._sub = self._stream_socket()
        for endpoint in node.peers:
            key = node.peer_public_keys.get(endpoint)
            if node.curve_secret_key is not None and key is None:
                raise ValueError(f"no public key for peer {endpoint} (peer_public_keys)")
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            cap_inbound(sock, node.max_frame_bytes)
            if key is not None:
                self._curve.client(sock, key)
            sock.connect(endpoint)
            self._links.append(Link(endpoint, sock, key))

    def _allow(self, key: bytes) -> bool:
        """ZAP: accept a CURVE client whose public key is authorised (authenticator thread)."""
        node = self._node
        allowed = key in node.authorized_keys or key == node.curve_public_key
        if not allowed:
            self._call_soon(self._count_refused)
        return allowed

    def _count_refused(self) -> None:
        self._stats.auth_refused += 1

    # -- called from other threads ----------------------------------------------

    def on_local_patterns(self, patterns: list[str]) -> None:
        """Subscribe at every peer to what ``patterns`` can match (router thread; never blocks).

        Changes faster than the I/O thread takes them are coalesced: it takes
        the latest list once (10,000 subscribes in a row are one update, not
        10,000 of 10,000 patterns each).
        """
        with self._patterns_lock:
            queued = self._patterns_next is not None
            self._patterns_next = list(patterns)
        if not queued:
            self._call_soon(self._take_patterns)

    def _take_patterns(self) -> None:
        with self._patterns_lock:
            patterns, self._patterns_next = self._patterns_next, None
        if patterns is not None:
            self._set_patterns(patterns)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread, between two turns (diagnostics and tests)."""
        self._call_soon(fn)

    @property
    def publish_endpoint(self) -> str | None:
        """Return the resolved endpoint of the event stream (the XPUB), or None."""
        return self._pub_endpoint

    def remote_correlated(self, correlation_id: uuid.UUID, timeout: float | None) -> list[Event]:
        """Return the events of ``correlation_id`` held by every live peer.

        Blocks until each answered or ``timeout`` passed; a peer that does not
        answer in time is skipped (and logged).  A peer whose share is larger
        than one answer holds is read in pages (``_in_pages``), from its memory
        and journal; one that cannot send it so raises ``PeerRefusedError``
        (its share is never left out unsaid).
        """
        deadline = Deadline(timeout)
        names = self.view().statistics.peers_alive
        body = {"correlation_id": str(correlation_id)}
        out: list[Event] = []
        for name, first in self._ask_many(names, CORRELATED, self._sized(body), timeout).items():
            result = first
            if _too_large(first):

                def page(want: int, last: Event | None) -> dict[str, Any]:
                    return {**body, "limit": want, **({"after": page_key(last)} if last else {})}

                try:
                    result = self._in_pages(name, CORRELATED, page, deadline)
                except (NoAnswerError, NotConnectedError) as exc:
                    result = exc  # as any peer gone or silent: skipped, and said
                except BridgeError as exc:  # a page of one event still too large
                    raise PeerRefusedError(
                        f"node {name!r} could not send its share of workflow {correlation_id} "
                        "in answers that fit (an event larger than a frame: give the nodes "
                        f"a larger max_frame_bytes; or a node too old to page): {exc}"
                    ) from exc
            if isinstance(result, BridgeError):
                logger.warning("node %s did not answer get_correlated: %s", name, result)
            else:
                out.extend(result)
        return out

    def remote_query(self, node_name: str, query: EventQuery, timeout: float | None) -> list[Event]:
        """Run ``query`` on the journal of ``node_name``.

        An ascending query whose answer is larger than a frame is asked again
        in pages that fit (``_in_pages``, after each page's last sequence).
        Raises ``NotConnectedError``, ``NoAnswerError`` or ``PeerRefusedError``.
        """
        deadline = Deadline(timeout)
        body = self._sized(query_to_json(query))
        result = self._ask_many([node_name], QUERY, body, timeout)[node_name]
        if _too_large(result) and not query.descending:

            def page(want: int, last: Event | None) -> dict[str, Any]:
                after = query.after_sequence if last is None else last.sequence
                return query_to_json(replace(query, after_sequence=after, limit=want))

            return self._in_pages(node_name, QUERY, page, deadline, query.limit)
        if isinstance(result, BridgeError):
            raise result
        return result

    def _in_pages(
        self,
        name: str,
        kind: int,
        page: Callable[[int, Event | None], dict[str, Any]],
        deadline: Deadline,
        total: int | None = None,
    ) -> list[Event]:
        """Ask ``name`` for an answer too large for a frame a page at a time.

        ``page(want, last)`` is the request for ``want`` events after ``last``
        (None: from the start); a page refused as too large is asked again
        half as large, down to one event.  Ends at a short page, or ``total``.
        """
        out: list[Event] = []
        size = max(1, min(total or QUERY_PAGE, QUERY_PAGE) // 2)
        while total is None or len(out) < total:
            want = size if total is None else min(size, total - len(out))
            body = self._sized(page(want, out[-1] if out else None))
            result = self._ask_many([name], kind, body, deadline.remaining())[name]
            if _too_large(result) and want > 1:
                size = max(1, want // 2)
                continue
            if isinstance(result, BridgeError):
                raise result
            out.extend(result)
            if len(result) < want or result[-1].sequence is None:
                break
        return out

    def _sized(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with this node's frame limit (a broker's on the way is applied when sent)."""
        return {**body, "max_bytes": self._max}

    def remote_publish(
        self, node_name: str, events: Sequence[Event], timeout: float | None
    ) -> list[Event]:
        """Have ``node_name`` publish ``events`` on its bus; return them as published there.

        Blocks until that node acknowledged (its publish futures resolved).
        Idempotent by event id, so retrying after a timeout publishes nothing
        twice.  Raises ``PeerRefusedError`` (with the node's reason),
        ``NoAnswerError`` or ``NotConnectedError``.
        """
        payload = encode_batch(list(events))
        result = self._ask_many([node_name], PUBLISH, {}, timeout, payload)[node_name]
        if isinstance(result, BridgeError):
            raise result
        return result

    def remote_metrics(
        self, node_name: str, timeout: float | None
    ) -> tuple[BusMetrics, dict[str, float]]:
        """Return the figures of ``node_name`` and, per peer, seconds since it heard from it.

        Raises ``NotConnectedError``, ``NoAnswerError`` or ``PeerRefusedError``.
        """
        result = self._ask_many([node_name], METRICS, {}, timeout)[node_name]
        if isinstance(result, BridgeError):
            raise result
        return metrics_from_answer(result)

    def view(self) -> BridgeView:
        """Return a snapshot built on the I/O thread (the last one once it stopped)."""
        return self._ask_io(self._read_view, self._final_view)

    def _read_view(self) -> BridgeView:
        self._views_read += 1
        return self._build_view()

    def _final_view(self, wait: float = 10.0) -> BridgeView:
        thread = self._thread
        if thread is not None and threading.current_thread() is not thread:
            thread.join(wait)
        return self._last

    def statistics(self) -> BridgeStatistics:
        """Return a snapshot of the bridge's counters (asked of the I/O thread).

        An I/O thread that does not answer within 10 s, or 0.25 s on an
        event loop's thread (``from_loop``: ``AsyncEventBus.metrics``), gets
        the last figures it gave: stale, but the loop is not held.
        """
        wait = ask_wait()  # a closing bridge's last view is waited for no longer either
        try:
            view = self._ask_io(self._read_view, lambda: self._final_view(wait), wait)
        except TimeoutError:
            return self._stats_seen.statistics
        with self._cond:  # readers on several threads: the newest view stays, never an older
            if view.built >= self._stats_seen.built:
                self._stats_seen = view
            return self._stats_seen.statistics

    def wait(self, predicate: Callable[[BridgeStatistics], bool], timeout: float | None) -> bool:
        """Block until ``predicate(statistics())`` holds; return False after ``timeout``."""
        return self.wait_view(lambda view: predicate(view.statistics), timeout)

    def wait_view(self, predicate: Callable[[BridgeView], bool], timeout: float | None) -> bool:
        """Block until ``predicate(view())`` holds; return False after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                generation = self._generation
            if predicate(self.view()):
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self._thread is None or not self._thread.is_alive():
                return False
            with self._cond:
                self._cond.wait_for(
                    lambda g=generation: self._generation != g,  # type: ignore[misc]
                    0.5 if remaining is None else min(remaining, 0.5),
                )

    def wait_synced(self, names: Sequence[str], timeout: float | None = 30.0) -> bool:
        """Block until every node in ``names`` acknowledged the current subscriptions.

        Flushes the bus first, so subscriptions made before the call count.
        On a persistent bus it returns only once the watermarks of those
        nodes are journaled too: a crash of this node after the call never
        makes its restart take them for new origins (whose past it would
        not fetch).  Raises ``PeerRefusedError`` while they are not all
        synced and a peer was refused (or refused this node): a duplicate
        name never syncs.  Return False after ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._local.flush(timeout)
        except FutureTimeoutError:
            return False  # the router did not get through what came before in time
        wanted = set(names)

        def ready(view: BridgeView) -> bool:
            if wanted <= set(view.statistics.synced_peers):
                return True
            if view.refusals:
                raise PeerRefusedError("; ".join(view.reasons()))
            return False

        if not self.wait_view(ready, None if deadline is None else deadline - time.monotonic()):
            return False
        return self._watermarks_written(deadline)

    def _watermarks_written(self, deadline: float | None) -> bool:
        """Wait until the journal wrote what was routed so far (the watermarks saved with it).

        The view that showed the peers synced was built on the I/O thread
        after the step that saved their watermarks, so the barrier sent
        here reaches the journal after them.  True at once without a journal.
        """
        journal = self._local.journal
        if journal is None:
            return True
        written = threading.Event()
        journal.after_written(written.set)
        while not written.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self._thread is None or not self._thread.is_alive():
                return False  # closed meanwhile: the journal may never answer
            written.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def linked_nodes(self, timeout: float | None) -> list[str]:
        """Wait until every configured peer answered HELLO; return the node names among them.

        Brokers are not nodes and are left out.  Returns what is known after
        ``timeout``; raises ``PeerRefusedError`` if a peer refused us or was
        refused for good (a duplicate name, also one that connected to us).
        """

        def answered(view: BridgeView) -> bool:
            reasons = view.reasons()
            if reasons:
                raise PeerRefusedError("; ".join(reasons))
            return all(link.welcomed for link in view.links)

        self.wait_view(answered, timeout)
        return [
            link.name
            for link in self.view().links
            if link.welcomed and link.name and not link.broker
        ]

    def close(self, timeout: float | None) -> None:
        """Stop the I/O thread and close every socket (waits up to ``timeout``)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None and threading.current_thread() is not thread:
            thread.join(timeout if timeout is not None else 10.0)
            if thread.is_alive():
                logger.warning(
                    "bridge %s: the I/O thread did not end in time; its sockets close when it does",
                    self.name,
                )

    # -- I/O thread ---------------------------------------------------------------

    def _build_view(self) -> BridgeView:
        inbound = self._in
        alive = tuple(sorted(p.name for p in self._peers.values() if p.alive))
        # A peer without ``listen`` that dials this node alone (no broker carries
        # its events) has nothing to sync: waiting for it (``wait_for_peers``, a
        # request's reply route) would only run out the time.
        bare = {p.name for p in self._peers.values() if p.streamless and p.stream is None}
        synced = tuple(n for n in alive if n in bare or inbound.synced_with([n]))
        stats = BridgeStatistics(
            **asdict(self._stats),
            gaps=inbound.gaps,
            gaps_recovered=inbound.recovered,
            gaps_unrecovered=inbound.unrecovered,
            gaps_open=inbound.gaps_open(),
            duplicates=inbound.duplicates,
            peers_alive=alive,
            synced_peers=synced,
            send_queued=self._flow.queued,
            send_queue_peak=self._flow.peak,
            requests_waiting=len(self._asks),
            credit_receivers=tuple(sorted(self._flow.receivers)),
            lagging_peers=tuple(self._flow.lagging()),
        )
        self._views_built += 1
        return BridgeView(stats, self._link_states(), tuple(self._refusals), self._views_built)

    def _run(self) -> None:
        poller = self._poller
        poller.register(self._rfd, zmq.POLLIN)
        for sock in (self._xpub, self._sub, self._router):
            poller.register(sock, zmq.POLLIN)
        for link in self._links:
            poller.register(link.sock, zmq.POLLIN)
        hb_interval = self._node.heartbeat_interval
        next_tick = 0.0
        step = self._step
        try:
            while not self._stopping:
                wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
                ready = dict(poller.poll(wait_ms))
                # What the turn began with, to tell a quiet turn (below).
                ran, read, mail = self._calls_run, self._views_read, self.mailbox.events_in
                had_mail = self.mailbox.has_mail()
                if self._rfd in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._rfd, 4096)
                step(self._run_calls)
                step(self._drain_mailbox)
                if self._xpub in ready:
                    step(self._on_xpub)
                if self._sub in ready:
                    step(self._on_sub, self._sub)
                for name, sock in list(self._streams.items()):
                    if sock in ready and self._streams.get(name) is sock:
                        step(self._on_sub, sock, name)
                if self._router in ready:
                    step(self._on_router)
                for link in self._links:
                    if link.sock in ready:
                        step(self._on_link, link)
                now = time.monotonic()
                ticked = now >= next_tick
                if ticked:
                    next_tick = now + hb_interval
                    step(self._heartbeat, now)
                    step(self._hello_links, now)
                # A turn that only built views for ``view()`` changed nothing a
                # ``wait_view`` waits for: counting it would wake the waiter,
                # whose next ``view()`` makes another such turn, for ever (a
                # busy loop spending a core while a peer is awaited).
                quiet = (
                    not ticked
                    and not had_mail
                    and mail == self.mailbox.events_in
                    and self._calls_run - ran == self._views_read - read
                    and all(item == self._rfd for item in ready)
                )
                if not quiet:
                    with self._cond:
                        self._generation += 1
                        self._cond.notify_all()
        except Exception:
            logger.exception("bridge %s: the I/O thread failed", self.name)
        finally:
            self._last = self._build_view()
            self._teardown()

    def _step(self, fn: Callable[..., None], *args: object) -> None:
        """Run one step of the I/O loop; an unexpected error is logged and counted, not fatal.

        Each handler drops a message it cannot use (``docs/wire.md``); this
        is the last line: whatever one step raises, the loop goes on, so the
        node keeps sending and receiving.
        """
        try:
            fn(*args)
        except Exception:
            self._handler_failed(f"the work of {getattr(fn, '__name__', 'a step')}")

    def _teardown(self) -> None:
        """Answer everyone waiting, let the last frames leave, close everything (I/O thread)."""
        for rid, (callback, _) in list(self._waiting.items()):
            self._waiting.pop(rid, None)
            callback(None)
        with contextlib.suppress(Exception):
            self._drain_mailbox()
        self._run_calls()
        # A clean close: the journal, stopped after the bridge, writes what it holds.
        held, self._unwritten = self._unwritten, []
        with contextlib.suppress(Exception):
            self._send_items(held)
            self._flush_queue()
        # Give frames already queued (the last flush) a moment to leave.
        self._xpub.close(1000)
        self._close_now()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _close_now(self) -> None:
        """Close every socket at once and release the pipe and the workers (never hangs)."""
        for item in [*self._unwritten, *self.mailbox.take(1 << 30)]:
            if type(item) is Barrier:
                item.callback()
        self._unwritten = []
        close_context(self._ctx, self._curve)
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._close_pipe()


QUERY_PAGE = 1000
"""Events asked for at most per page when an answer was too large for a frame."""


def _too_large(result: object) -> bool:
    """Return whether ``result`` is a node's refusal of an answer larger than a frame."""
    return isinstance(result, PeerRefusedError) and ANSWER_TOO_LARGE in str(result)
