"""The ZeroMQ bridge: join this bus to other nodes (or a ``Broker``).  See ``docs/cluster.md``.

One I/O thread owns every socket (zmq sockets are not thread-safe):

- an XPUB bound at the derived publish endpoint: frames of local events go out
  here; peers' SUB subscriptions (the literal prefixes of their patterns)
  arrive here, so only events a peer can match are sent;
- a SUB connected to each peer's XPUB (or a broker's): remote frames arrive;
- a ROUTER bound at ``NodeConfig.listen`` and one DEALER per configured peer:
  the request channel (hello/welcome, recovery, remote queries).

The router hands records to ``mailbox``, whose wake-up is a pipe the I/O
thread polls.  Blocking work (journal reads to answer a peer) runs on a small
worker pool, whose answers go back to the I/O thread through the same wake-up.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth.thread

from actors._cluster.bridge_io import (
    Link,
    Peer,
    PublishLedger,
    derive_endpoint,
    query_from_json,
    query_to_json,
    reachable,
    serve_correlated,
    serve_query,
    serve_recover,
    take_statistics,
)
from actors._cluster.streams import Inbound, Outbound
from actors._cluster.wire import (
    CORRELATED,
    ERROR,
    EVENTS,
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    HELLO,
    METRICS,
    PUBLISH,
    QUERY,
    RECOVER,
    SYNC,
    WELCOME,
    ControlFrame,
    FrameError,
    Request,
    decode_events,
    decode_request,
    decode_stream,
    encode_control,
    encode_request,
    parse_sync_topic,
    sync_topic,
)
from actors._codec.events import encode_batch
from actors._core.messages import Barrier, Forward, LoadCheckpoint, Record, SaveCheckpoint
from actors._errors import BridgeError
from actors._model.event import Event
from actors._model.metrics import BridgeStatistics, BusMetrics, Counters
from actors._model.metrics_json import metrics_answer, metrics_from_answer
from actors._model.query import EventQuery
from actors._runtime.dispatcher import FifoMailbox
from actors._runtime.future import BusFuture

if TYPE_CHECKING:
    from actors._bus import EventBus
    from actors._model.config import NodeConfig

__all__ = ["Bridge", "generate_keypair"]

_RECOVER_ATTEMPTS = 4  # tries of one recovery request, each 2 x heartbeat_timeout long

logger = logging.getLogger("actors.bridge")

_RECV_BURST = 512


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new CURVE key pair ``(public, secret)``, each 40 bytes of Z85 text."""
    public, secret = zmq.curve_keypair()
    return public, secret


class _WakeMailbox(FifoMailbox):
    """A ``FifoMailbox`` whose "schedule" writes a byte to the I/O thread's wake-up pipe."""

    __slots__ = ("_wake",)

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def _schedule(self) -> None:
        self._wake()


class Bridge:
    """Join ``bus`` to the nodes of ``node`` (see the module docstring).

    Raises ``BridgeError`` if a socket cannot be set up (bad endpoint,
    address in use, bad keys).  Nothing here blocks the router: records
    queue in ``mailbox`` (unbounded; the XPUB's high-water mark drops frames
    for a slow peer, which then recovers them).
    """

    def __init__(self, bus: EventBus, node: NodeConfig) -> None:
        self._bus = bus
        self._node = node
        self.name = node.name
        self._epoch = random.getrandbits(63)
        self._persistent = bus._journal is not None
        self._base = bus._router.next_sequence
        self._max = node.max_frame_bytes
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self.mailbox = _WakeMailbox(self._wake)
        self._calls: deque[Callable[[], None]] = deque()
        self._out = Outbound(self.name, self._epoch, node.batch_size, node.recovery_ring)
        self._in = Inbound(self.name, max(node.recovery_ring, 10_000))
        self._stats = Counters()
        self._cond = threading.Condition()
        self._stopping = False
        self._round = 0
        self._peers: dict[str, Peer] = {}
        self._links: list[Link] = []
        self._sub_prefixes: set[bytes] = set()
        self._sub_endpoints: dict[str, str] = {}  # peer name -> endpoint our SUB connected to
        self._waiting: dict[str, tuple[Callable[[Request | None], None], float]] = {}
        self._saved: dict[str, int] = {}
        self._workers = ThreadPoolExecutor(2, thread_name_prefix=f"bridge-{self.name}")
        self._ledger = PublishLedger()
        self._ctx = zmq.Context()
        self._auth: zmq.auth.thread.ThreadAuthenticator | None = None
        self._pub_endpoint: str | None = None
        self.endpoint: str | None = None  # the resolved ``listen`` (ephemeral ports filled in)
        try:
            self._setup(node)
        except (zmq.ZMQError, ValueError, TypeError) as exc:
            self._teardown(0)
            raise BridgeError(f"node {self.name}: cannot set up the bridge: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name=f"bridge-{self.name}", daemon=True)
        self._thread.start()

    # -- setup --------------------------------------------------------------------

    def _secure(self, sock: zmq.Socket[bytes], server_key: bytes | None = None) -> None:
        node = self._node
        if node.curve_secret_key is None:
            return
        sock.curve_publickey = node.curve_public_key
        sock.curve_secretkey = node.curve_secret_key
        if server_key is None:
            sock.curve_server = True
        else:
            sock.curve_serverkey = server_key

    def _setup(self, node: NodeConfig) -> None:
        if node.curve_secret_key is not None:
            if node.curve_public_key is None:
                raise ValueError("curve_secret_key needs curve_public_key")
            self._auth = zmq.auth.thread.ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve_callback("*", credentials_provider=self)
        self._xpub = self._ctx.socket(zmq.XPUB)
        self._xpub.linger = 0
        self._xpub.sndhwm = node.send_hwm
        self._secure(self._xpub)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.linger = 0
        self._router.router_mandatory = False
        self._secure(self._router)
        if node.listen is not None:
            self._router.bind(node.listen)
            self.endpoint = _last_endpoint(self._router)
            self._xpub.bind(derive_endpoint(node.listen, 1, ".pub"))
            self._pub_endpoint = _last_endpoint(self._xpub)
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.rcvhwm = node.receive_hwm
        self._sub.subscribe(HEARTBEAT_TOPIC)
        self._sub.subscribe(sync_topic(self.name, self._round))
        for endpoint in node.peers:
            self._add_link(endpoint)

    def _add_link(self, endpoint: str) -> None:
        key = self._node.peer_public_keys.get(endpoint)
        if self._node.curve_secret_key is not None and key is None:
            raise ValueError(f"no public key for peer {endpoint} (peer_public_keys)")
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        self._secure(sock, key)
        sock.connect(endpoint)
        self._links.append(Link(endpoint, sock, key))

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: accept a CURVE client whose public key is authorised (authenticator thread)."""
        allowed = key in self._node.authorized_keys or key == self._node.curve_public_key
        if not allowed:
            self._stats.auth_refused += 1
            self._notify()
        return allowed

    # -- called from other threads ----------------------------------------------

    def _wake(self) -> None:
        # A full pipe means a wake-up is pending anyway; a closed one, that we stopped.
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"x")

    def _call_soon(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        self._wake()

    def on_local_patterns(self, patterns: list[str]) -> None:
        """Subscribe at every peer to what ``patterns`` can match (router thread; never blocks)."""
        snapshot = list(patterns)
        self._call_soon(lambda: self._set_patterns(snapshot))

    def remote_correlated(self, correlation_id: uuid.UUID, timeout: float | None) -> list[Event]:
        """Return the events of ``correlation_id`` held by every live peer.

        Blocks until each answered or ``timeout`` passed; a peer that does not
        answer in time is skipped (and logged).
        """
        names = [p.name for p in self._peers.values() if p.alive]
        body = {"correlation_id": str(correlation_id)}
        results = self._ask_many(names, CORRELATED, body, timeout)
        out: list[Event] = []
        for name, result in results.items():
            if isinstance(result, BaseException):
                logger.warning("node %s did not answer get_correlated: %s", name, result)
            else:
                out.extend(result)
        return out

    def remote_query(self, node_name: str, query: EventQuery, timeout: float | None) -> list[Event]:
        """Run ``query`` on the journal of ``node_name``; raise ``BridgeError`` if it cannot."""
        result = self._ask_many([node_name], QUERY, query_to_json(query), timeout)[node_name]
        if isinstance(result, BaseException):
            raise result
        return result

    def remote_metrics(
        self, node_name: str, timeout: float | None
    ) -> tuple[BusMetrics, dict[str, float]]:
        """Return the figures of ``node_name`` and, per peer, seconds since it heard from it.

        Raises ``BridgeError`` if it cannot.
        """
        result = self._ask_many([node_name], METRICS, {}, timeout)[node_name]
        if isinstance(result, BaseException):
            raise result
        return metrics_from_answer(result)

    @property
    def publish_endpoint(self) -> str | None:
        """Return the resolved endpoint of the event stream (the XPUB), or None."""
        return self._pub_endpoint

    def linked_nodes(self, timeout: float | None) -> list[str]:
        """Wait until every configured peer answered HELLO; return the node names among them.

        Brokers are not nodes and are left out.  Returns what is known after
        ``timeout``.
        """

        def welcomed(_stats: BridgeStatistics) -> bool:
            return all(link.welcomed for link in self._links)

        self.wait(welcomed, timeout)
        return [
            link.name for link in self._links if link.welcomed and link.name and not link.broker
        ]

    def remote_publish(
        self, node_name: str, events: Sequence[Event], timeout: float | None
    ) -> list[Event]:
        """Have ``node_name`` publish ``events`` on its bus; return them as published there.

        Blocks until that node acknowledged (its publish futures resolved).
        Idempotent by event id, so retrying after a timeout publishes nothing
        twice.  Raises ``BridgeError`` if the node refuses or does not answer.
        """
        payload = encode_batch(list(events))
        result = self._ask_many([node_name], PUBLISH, {}, timeout, payload)[node_name]
        if isinstance(result, BaseException):
            raise result
        return result

    def _ask_many(
        self,
        names: Sequence[str],
        kind: int,
        body: dict[str, Any],
        timeout: float | None,
        payload: bytes | None = None,
    ) -> dict[str, list[Event] | BaseException]:
        deadline = time.monotonic() + (30.0 if timeout is None else timeout)
        futures: dict[str, BusFuture[list[Event]]] = {}
        for name in names:
            future: BusFuture[list[Event]] = BusFuture()
            futures[name] = future
            self._call_soon(
                functools.partial(self._ask, name, kind, body, future, deadline, payload)
            )
        out: dict[str, list[Event] | BaseException] = {}
        for name, future in futures.items():
            try:
                out[name] = future.get(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
            except Exception as exc:
                err = exc if isinstance(exc, BridgeError) else BridgeError(f"{name}: {exc}")
                out[name] = err
        return out

    def statistics(self) -> BridgeStatistics:
        """Return a snapshot of the bridge's counters (never blocks)."""
        return take_statistics(self, self._stats)

    figures = statistics

    def wait(self, predicate: Callable[[BridgeStatistics], bool], timeout: float | None) -> bool:
        """Block until ``predicate(statistics())`` holds; return False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.statistics()), timeout)

    def wait_synced(self, names: Sequence[str], timeout: float | None = 30.0) -> bool:
        """Block until every node in ``names`` acknowledged the current subscriptions.

        Flushes the bus first, so subscriptions made before the call count.
        From then on, every event those nodes publish that a local pattern
        matches arrives here.  Return False after ``timeout``.
        """
        self._bus.flush(timeout)
        wanted = set(names)
        return self.wait(lambda s: wanted <= set(s.synced_peers), timeout)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout: float | None) -> None:
        """Stop the I/O thread and close every socket (waits up to ``timeout``)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout if timeout is not None else 10.0)

    # -- I/O thread ---------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._rfd, zmq.POLLIN)
        for sock in (self._xpub, self._sub, self._router):
            poller.register(sock, zmq.POLLIN)
        registered = 0
        hb_interval = self._node.heartbeat_interval
        next_tick = 0.0
        try:
            while not self._stopping:
                while registered < len(self._links):
                    poller.register(self._links[registered].sock, zmq.POLLIN)
                    registered += 1
                wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
                ready = dict(poller.poll(wait_ms))
                if self._rfd in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._rfd, 4096)
                while self._calls:
                    self._calls.popleft()()
                self._drain_mailbox()
                if self._xpub in ready:
                    self._on_xpub()
                if self._sub in ready:
                    self._on_sub()
                if self._router in ready:
                    self._on_router()
                for link in self._links:
                    if link.sock in ready:
                        self._on_link(link)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + hb_interval
                    self._tick(now)
                self._notify()
        except Exception:
            logger.exception("bridge %s: the I/O thread failed", self.name)
        finally:
            self._teardown(1000)

    def _teardown(self, linger_ms: int) -> None:
        for rid, (callback, _) in list(self._waiting.items()):
            self._waiting.pop(rid, None)
            callback(None)
        for item in self.mailbox.take(1 << 30):
            if type(item) is Barrier:
                item.callback()
        xpub = getattr(self, "_xpub", None)
        if xpub is not None:
            # Give frames already queued (the last flush) a moment to leave.
            xpub.close(linger_ms)
        socks = [getattr(self, n, None) for n in ("_sub", "_router")]
        for sock in [*socks, *(link.sock for link in self._links)]:
            if sock is not None:
                sock.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        self._workers.shutdown(wait=False, cancel_futures=True)
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _drain_mailbox(self) -> None:
        mailbox = self.mailbox
        if not mailbox._sched.locked():
            return
        while True:
            items = mailbox.take(1024)
            events: list[Event] = []
            for item in items:
                if type(item) is Record:
                    events.extend(item.events)
                elif type(item) is Barrier:
                    self._send_frames(events)
                    events = []
                    item.callback()
            self._send_frames(events)
            if not mailbox.has_mail():
                break
        mailbox.finish_turn()

    def _send_frames(self, events: list[Event]) -> None:
        if not events:
            return
        for parts in self._out.frames(events):
            try:
                self._xpub.send_multipart(parts, zmq.NOBLOCK)
            except zmq.Again:
                self._stats.frames_unsent += 1
                continue
            self._stats.frames_sent += 1

    # -- the stream -----------------------------------------------------------------

    def _on_xpub(self) -> None:
        for _ in range(_RECV_BURST):
            try:
                message = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not message:
                continue
            subscribe, topic = message[0] == 1, message[1:]
            sync = parse_sync_topic(topic)
            if sync is not None:
                if subscribe:
                    body = {
                        "node": self.name,
                        "epoch": self._epoch,
                        "base": self._base,
                        "head": self._out.head,
                        "for": sync[0],
                        "round": sync[1],
                    }
                    self._xpub.send_multipart(encode_control(topic, SYNC, body))
            elif topic.startswith(HEARTBEAT_TOPIC[:1]):
                continue
            elif subscribe:
                self._out.add_prefix(topic)
            else:
                self._out.remove_prefix(topic)

    def _on_sub(self) -> None:
        now = time.monotonic()
        delivered: list[Event] = []
        for _ in range(_RECV_BURST):
            try:
                parts = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                frame = decode_stream(parts, self._max)
            except FrameError as exc:
                self._stats.frames_dropped += 1
                logger.debug("bridge %s: dropped a frame: %s", self.name, exc)
                continue
            if isinstance(frame, ControlFrame):
                delivered.extend(self._on_control(frame, now))
                continue
            if frame.origin == self.name:
                continue
            self._stats.frames_received += 1
            self._stats.events_received += len(frame.events)
            self._seen(frame.origin, now)
            delivered.extend(
                self._in.on_data(
                    frame.origin,
                    epoch=frame.epoch,
                    first=frame.first,
                    last=frame.last,
                    chains=frame.chains,
                    events=frame.events,
                    now=now,
                )
            )
        self._deliver(delivered)

    def _on_control(self, frame: ControlFrame, now: float) -> list[Event]:
        body = frame.body
        try:
            origin = str(body["node"])
            epoch, base, head = int(body["epoch"]), int(body["base"]), int(body["head"])
            if origin == self.name:
                return []
            if frame.kind == SYNC:
                if body.get("for") != self.name or int(body["round"]) != self._round:
                    return []
                self._seen(origin, now)
                return self._in.on_sync(origin, epoch, base, head, now)
            assert frame.kind == HEARTBEAT
            chains = {str(p).encode(): int(s) for p, s in body.get("chains", [])}
        except (KeyError, TypeError, ValueError) as exc:
            self._stats.frames_dropped += 1
            logger.debug("bridge %s: bad control frame: %s", self.name, exc)
            return []
        self._seen(origin, now)
        return self._in.on_heartbeat(
            origin, epoch=epoch, base=base, head=head, chains=chains, now=now
        )

    def _seen(self, name: str, now: float) -> None:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = Peer(name)
            if self._persistent and name not in self._in.origins:
                self._in.start_loading(name, now)
                self._workers.submit(self._load_watermark, name)
        if not peer.alive:
            logger.info("bridge %s: node %s is alive", self.name, name)
        peer.alive = True
        peer.last_seen = now

    def _load_watermark(self, name: str) -> None:
        journal = self._bus._journal
        value: int | None = None
        if journal is not None:
            future: BusFuture[int | None] = BusFuture()
            message = Forward(journal.actor_inbox, LoadCheckpoint(f"bridge:{name}", future))
            self._bus._router_mailbox.put(message)
            try:
                value = future.get(timeout=30.0)
            except Exception:
                logger.exception("bridge %s: cannot read the watermark of %s", self.name, name)
        self._call_soon(lambda: self._deliver(self._in.loaded(name, value, time.monotonic())))

    def _deliver(self, events: list[Event]) -> None:
        inbound = self._in
        for request in inbound.requests:
            self._send_recover(request)
        inbound.requests.clear()
        if events:
            self._bus._inject(events)
            self._stats.events_delivered += len(events)
        journal = self._bus._journal
        if journal is None:
            return
        for name, mark in inbound.watermarks().items():
            if self._saved.get(name) != mark:
                self._saved[name] = mark
                checkpoint = SaveCheckpoint(f"bridge:{name}", mark)
                self._bus._router_mailbox.put(Forward(journal.actor_inbox, checkpoint))

    def _set_patterns(self, patterns: list[str]) -> None:
        now = time.monotonic()
        added, removed = self._in.set_patterns(patterns, now)
        for prefix in added:
            self._sub.subscribe(prefix)
        for prefix in removed:
            self._sub.unsubscribe(prefix)
        if added or removed:
            # A new round: every publisher answers once it applied the prefixes above.
            self._sub.unsubscribe(sync_topic(self.name, self._round))
            self._round += 1
            self._sub.subscribe(sync_topic(self.name, self._round))
        self._deliver([])

    # -- the request channel ----------------------------------------------------------

    def _on_router(self) -> None:
        for _ in range(_RECV_BURST):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            identity = frames[0].bytes
            try:
                address = frames[1].get("Peer-Address")
            except zmq.ZMQError:
                address = None
            host = address if isinstance(address, str) else None
            self._on_request([f.bytes for f in frames[1:]], (self._router, identity), host)

    def _on_link(self, link: Link) -> None:
        for _ in range(_RECV_BURST):
            try:
                parts = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_request(parts, (link.sock, None), None, link)

    def _on_request(
        self,
        parts: list[bytes],
        route: tuple[zmq.Socket[bytes], bytes | None],
        host: str | None,
        link: Link | None = None,
    ) -> None:
        try:
            message = decode_request(parts, self._max)
        except FrameError as exc:
            self._stats.frames_dropped += 1
            logger.debug("bridge %s: dropped a request: %s", self.name, exc)
            return
        now = time.monotonic()
        kind, body = message.kind, message.body
        if message.sender and message.sender != self.name and kind in (HELLO, WELCOME):
            if body.get("kind") != "broker":
                self._seen(message.sender, now)
                self._peers[message.sender].route = route
            via = host or (link.host() if link is not None else None)
            key = link.key if link is not None else _key(body.get("key"))
            self._connect_stream(message.sender, body, via, key, link)
        if kind == HELLO:
            self._send(route, self._hello_request(WELCOME, message.sender, message.rid))
        elif kind == WELCOME:
            if link is not None:
                link.welcomed = True
                link.name = message.sender
                link.broker = body.get("kind") == "broker"
                self._notify()
        elif kind in (RECOVER, QUERY, CORRELATED, PUBLISH, METRICS):
            self._workers.submit(self._serve, message, route)
        elif kind in (EVENTS, ERROR):
            waiting = self._waiting.pop(message.rid, None)
            if waiting is not None:
                waiting[0](message)

    def _connect_stream(
        self,
        name: str,
        body: dict[str, Any],
        via: str | None,
        key: bytes | None,
        link: Link | None,
    ) -> None:
        if body.get("kind") == "broker":
            xpub, xsub = body.get("xpub"), body.get("xsub")
            if link is None or not isinstance(xpub, str) or not isinstance(xsub, str):
                return
            if link.broker_streams is None:
                link.broker_streams = (reachable(xpub, via), reachable(xsub, via))
                self._connect(self._sub, link.broker_streams[0], key)
                self._connect(self._xpub, link.broker_streams[1], key)
            return
        pub = body.get("pub")
        if not isinstance(pub, str):
            return
        endpoint = reachable(pub, via)
        old = self._sub_endpoints.get(name)
        if old == endpoint:
            return
        if old is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sub.disconnect(old)
        self._sub_endpoints[name] = endpoint
        self._connect(self._sub, endpoint, key)

    def _connect(self, sock: zmq.Socket[bytes], endpoint: str, key: bytes | None) -> None:
        try:
            if self._node.curve_secret_key is not None:
                if key is None:
                    logger.warning("bridge %s: no key for %s; not connecting", self.name, endpoint)
                    return
                # Options are copied per connection: a socket bound as a CURVE
                # server can still connect as a client.
                sock.curve_server = False
                sock.curve_publickey = self._node.curve_public_key
                sock.curve_secretkey = self._node.curve_secret_key
                sock.curve_serverkey = key
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            logger.warning("bridge %s: cannot connect to %s: %s", self.name, endpoint, exc)

    def _hello_request(self, kind: int, to: str, rid: str) -> Request:
        body: dict[str, Any] = {"kind": "node", "pub": self._pub_endpoint}
        body.update(epoch=self._epoch, base=self._base)
        if self._node.curve_public_key is not None:
            body["key"] = self._node.curve_public_key.decode()
        return Request(kind, to, self.name, rid, body)

    def _send(self, route: tuple[zmq.Socket[bytes], bytes | None], message: Request) -> None:
        sock, identity = route
        parts = encode_request(message)
        try:
            if identity is not None:
                sock.send_multipart([identity, *parts], zmq.NOBLOCK)
            else:
                sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("bridge %s: request not sent: %s", self.name, exc)

    def _route_to(self, name: str) -> tuple[zmq.Socket[bytes], bytes | None] | None:
        peer = self._peers.get(name)
        if peer is not None and peer.route is not None:
            route: tuple[zmq.Socket[bytes], bytes | None] = peer.route
            return route
        for link in self._links:
            if link.broker and link.welcomed:
                return (link.sock, None)
        return None

    def _ask(  # noqa: PLR0917 - one call site, through functools.partial
        self,
        name: str,
        kind: int,
        body: dict[str, Any],
        future: BusFuture[list[Event]],
        deadline: float,
        payload: bytes | None = None,
    ) -> None:
        route = self._route_to(name)
        if route is None:
            future.set_exception(BridgeError(f"node {name!r} is not connected"))
            return
        rid = uuid.uuid4().hex

        def done(reply: Request | None) -> None:
            if reply is None:
                future.set_exception(BridgeError(f"node {name!r} did not answer in time"))
            elif reply.kind == ERROR:
                future.set_exception(BridgeError(f"node {name!r}: {reply.body.get('error')}"))
            else:
                try:
                    future.set(decode_events(reply.payload))
                except FrameError as exc:
                    future.set_exception(exc)

        self._waiting[rid] = (done, deadline)
        self._send(route, Request(kind, name, self.name, rid, body, payload))

    def _send_recover(self, request: Any, attempt: int = 1) -> None:
        route = self._route_to(request.origin)
        rid = request.rid
        if route is None:
            self._deliver(self._in.on_recovery_failed(rid))
            return

        def done(reply: Request | None) -> None:
            now = time.monotonic()
            if reply is None or reply.kind == ERROR:
                # A slow answer (a loaded origin) is not a lost range: ask
                # again while the origin is alive, and give up only then.
                if attempt < _RECOVER_ATTEMPTS and self._alive(request.origin):
                    self._stats.recovery_retries += 1
                    self._send_recover(request, attempt + 1)
                    return
                self._deliver(self._in.on_recovery_failed(rid))
                return
            try:
                events = decode_events(reply.payload)
                body = reply.body
                complete, scanned = bool(body["complete"]), int(body["scanned"])
                lost = bool(body.get("lost", False))
            except (FrameError, KeyError, TypeError, ValueError):
                self._stats.frames_dropped += 1
                self._deliver(self._in.on_recovery_failed(rid))
                return
            self._stats.events_recovered += len(events)
            self._deliver(self._in.on_recovered(rid, events, complete, scanned, lost))
            del now

        self._waiting[rid] = (done, time.monotonic() + 2 * self._node.heartbeat_timeout)
        body = {"after": request.after, "upto": request.upto, "prefixes": list(request.prefixes)}
        self._send(route, Request(RECOVER, request.origin, self.name, rid, body))

    def _serve(self, message: Request, route: tuple[zmq.Socket[bytes], bytes | None]) -> None:
        """Answer a peer's request (worker thread: may block on the journal)."""
        reply_body: dict[str, Any] = {}
        try:
            if message.kind == RECOVER:
                events, reply_body = serve_recover(self._bus, self._out, message.body)
            elif message.kind == QUERY:
                events = serve_query(self._bus, query_from_json(message.body))
            elif message.kind == PUBLISH:
                events = self._ledger.publish(self._bus, decode_events(message.payload))
            elif message.kind == METRICS:  # figures travel as one carrier event
                now = time.monotonic()
                heard = {p.name: now - p.last_seen for p in list(self._peers.values())}
                events = [metrics_answer(self._bus.metrics(), heard)]
            else:
                events = serve_correlated(self._bus, uuid.UUID(str(message.body["correlation_id"])))
            payload = encode_batch(events)
            if len(payload) > self._max:
                raise BridgeError(f"the answer is larger than {self._max} bytes")
            reply = Request(EVENTS, message.sender, self.name, message.rid, reply_body, payload)
        except Exception as exc:
            reply = Request(ERROR, message.sender, self.name, message.rid, {"error": str(exc)})
        self._call_soon(lambda: self._send(route, reply))

    # -- timers -------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        body = {
            "node": self.name,
            "epoch": self._epoch,
            "base": self._base,
            "head": self._out.head,
            "chains": self._out.chains(),
        }
        self._xpub.send_multipart(encode_control(HEARTBEAT_TOPIC, HEARTBEAT, body))
        timeout = self._node.heartbeat_timeout
        for peer in self._peers.values():
            if peer.alive and now - peer.last_seen > timeout:
                peer.alive = False
                logger.warning("bridge %s: node %s is not responding", self.name, peer.name)
        for link in self._links:
            dead = link.name is not None and not self._alive(link.name) and not link.broker
            if (not link.welcomed or dead) and now - link.hello_at > timeout:
                link.hello_at = now
                self._send((link.sock, None), self._hello_request(HELLO, "", "hello"))
        for rid, (callback, deadline) in list(self._waiting.items()):
            if now > deadline:
                del self._waiting[rid]
                callback(None)
        self._deliver(self._in.expire_syncs(now, timeout))

    def _alive(self, name: str) -> bool:
        peer = self._peers.get(name)
        return peer is not None and peer.alive


def _last_endpoint(sock: zmq.Socket[bytes]) -> str:
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)


def _key(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) and len(value) == 40 else None
