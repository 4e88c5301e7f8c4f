"""The request channel of the bridge (I/O thread): HELLO/WELCOME, recovery, queries, publish.

A node's ROUTER answers peers that connect to it; one DEALER per configured
peer (``Link``) asks.  Identity rules (``docs/cluster.md``, "Node identity"):
a node refuses a peer with its own name, a name bound to another CURVE key
(``NodeConfig.peer_names``), drops any other message under a bound name from
another key (a broker checks what it relays), and never lets a HELLO re-point
a peer it hears from (its stream endpoint stays until it is declared dead, its
route until then or until its connection closes).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import zmq

from actors._cluster.bridge_io import (
    ANSWER_TOO_LARGE,
    Piece,
    answer_limit,
    answers,
    broker_error,
    correlated_page,
    fit_asker,
    query_from_json,
    run_then_set,
    serve_recover,
    settle,
)
from actors._cluster.endpoints import Link, Peer, reachable
from actors._cluster.io_base import BridgeBase, Route
from actors._cluster.stream_io import RECV_BURST
from actors._cluster.wire import (
    ANSWERED,
    CREDIT,
    ERROR,
    EVENTS,
    HELLO,
    METRICS,
    PUBLISH,
    QUERY,
    RECOVER,
    WELCOME,
    FrameError,
    Request,
    RequestTooLargeError,
    decode_events,
    decode_request,
    encode_request,
    fits_name,
)
from actors._codec.events import encode_batch
from actors._errors import (
    BridgeError,
    EventTooLargeError,
    NotConnectedError,
)
from actors._model.config import MIN_FRAME_BYTES
from actors._model.event import Event
from actors._model.metrics_json import metrics_answer
from actors._runtime.future import BusFuture

__all__ = ["RequestIO"]

logger = logging.getLogger("actors.bridge")

_HELLO_RID = "hello"


class RequestIO(BridgeBase):
    """The request half of the bridge (see the module docstring)."""

    # -- receiving ------------------------------------------------------------------------

    def _on_router(self) -> None:
        for _ in range(RECV_BURST):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            identity = frames[0].bytes
            address = _property(frames[1], "Peer-Address")
            key = _property(frames[1], "User-Id") if self._node.curve_secret_key else None
            parts = [f.bytes for f in frames[1:]]
            try:
                self._on_request(
                    parts, (self._router, identity), address, key.encode() if key else None
                )
            except Exception:  # one message's fault: count it, log it, serve the next
                self._handler_failed("a request")

    def _on_link(self, link: Link) -> None:
        for _ in range(RECV_BURST):
            try:
                parts = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_request(parts, (link.sock, None), None, link.key, link)
            except Exception:  # one message's fault: count it, log it, serve the next
                self._handler_failed("a reply")

    def _on_request(
        self,
        parts: list[bytes],
        route: Route,
        host: str | None,
        key: bytes | None,
        link: Link | None = None,
    ) -> None:
        try:
            message = decode_request(parts, self._max)
        except RequestTooLargeError as exc:
            self._stats.frames_too_large += 1
            self._stats.frames_dropped += 1
            logger.warning("bridge %s: dropped a request from %r: %s", self.name, exc.sender, exc)
            body = {"error": f"{exc}: node {self.name}'s max_frame_bytes"}
            if exc.kind in ANSWERED:  # its asker would wait its whole timeout: tell it why
                self._send(route, Request(ERROR, exc.sender, self.name, exc.rid, body))
            elif exc.rid in self._waiting:  # an answer that can never reach this node: an error
                done, _ = self._waiting.pop(exc.rid)
                done(Request(ERROR, self.name, exc.sender, exc.rid, body))
            return
        except FrameError as exc:
            self._stats.frames_dropped += 1
            logger.debug("bridge %s: dropped a request: %s", self.name, exc)
            return
        kind, body = message.kind, message.body
        if kind in (HELLO, WELCOME) and message.sender:
            refusal = self._identity_fault(message.sender, body, key, link)
            if refusal is not None:
                self._refuse(refusal, fatal=message.sender == self.name)
                if link is not None:
                    link.refused = refusal
                if kind == HELLO:
                    reply = {"error": refusal, "refused": True}
                    self._send(route, Request(ERROR, message.sender, self.name, message.rid, reply))
                return
            self._greeted(message, route, host or (link.host() if link else None), key, link)
        elif self._impostor(message.sender, key, link):
            self._stats.frames_dropped += 1
            logger.warning(
                "bridge %s: dropped a message (kind %d) from %r without the key peer_names binds",
                self.name,
                kind,
                message.sender,
            )
            return
        self._heard_from(message.sender, route, link)
        if kind == HELLO:
            self._send(route, self._hello_request(WELCOME, message.sender, message.rid))
        elif kind == CREDIT:
            self._on_credit(message)
        elif kind in ANSWERED and (asked := (message.sender, message.rid)) not in self._serving:
            self._serving.add(asked)
            self._workers.submit(self._serve, message, route)
        elif kind == ERROR and link is not None and message.rid == _HELLO_RID:
            reason = str(body.get("error", "refused"))
            link.refused = f"{link.endpoint} refused this node: {reason}"
            self._refuse(link.refused)
        elif kind in (EVENTS, ERROR):
            waiting = self._waiting.pop(message.rid, None)
            if waiting is not None:
                waiting[0](message)
            else:
                self._late_answer(message)  # a recovery try that ran out, parked since

    def _heard_from(self, sender: str, route: Route, link: Link | None) -> None:
        """``sender`` spoke (its credit, a request): it lives, if heard on no stream.

        A node without ``listen`` has no stream to be heard on.  Forgotten while
        paused, it may come back without greeting this node again: its route is
        learnt from what it sends, so requests to it reach it again.  What comes
        on a connection kept aside (``candidate``) is not the known peer speaking.
        """
        peer = self._peers.get(sender)
        if peer is None:
            if link is not None or not sender or sender == self.name:
                return
            peer = self._peers[sender] = Peer(sender, route=route)
        if link is None and peer.candidate is not None and route == peer.candidate:
            return
        now = peer.last_heard = time.monotonic()
        if not peer.alive and peer.stream is None and peer.route is not None:
            self._seen(sender, now)  # a node without listen lives by what it sends

    def _identity_fault(
        self, sender: str, body: dict[str, Any], key: bytes | None, link: Link | None
    ) -> str | None:
        """Return why a HELLO/WELCOME from ``sender`` is refused, or None.

        A broker answers over this node's own link to it; a greeting that
        merely says it comes from a broker is held to ``peer_names`` as any.
        A broker is not a node: its name (``"broker"`` unless given) may be
        this node's own.
        """
        broker = link is not None and body.get("kind") == "broker"
        if sender == self.name and not broker:
            return f"a peer has this node's name {sender!r} (node names must be unique)"
        bound = self._node.peer_names.get(sender)
        if bound is not None and not broker and key != bound:
            return f"a peer calls itself {sender!r} without the key peer_names binds to it"
        return None

    def _impostor(self, sender: str, key: bytes | None, link: Link | None) -> bool:
        """Return whether a message under ``sender`` came without the key bound to that name.

        A broker checks the key of every sender it relays for (``broker.py``):
        what comes over a link to a broker is taken under the name it carries.
        """
        bound = self._node.peer_names.get(sender)
        if bound is None or key == bound:
            return False
        return link is None or not link.broker

    def _greeted(
        self, message: Request, route: Route, via: str | None, key: bytes | None, link: Link | None
    ) -> None:
        sender, body = message.sender, message.body
        if message.kind == WELCOME and link is not None:
            link.welcomed = True
            link.name = sender
            link.broker = body.get("kind") == "broker"
            limit = body.get("max_frame_bytes")  # answers through a broker fit its frames too
            if link.broker and type(limit) is int and limit >= MIN_FRAME_BYTES:
                link.max_frame_bytes = limit
        if body.get("kind") == "broker":
            self._connect_broker(body, via, key, link)
            return
        peer = self._peers.get(sender)
        pub = body.get("pub")
        stream = reachable(pub, via) if isinstance(pub, str) else None
        stream_key = key or _key(body)
        if peer is None or not peer.alive:
            # Unknown, or declared dead: the peer takes the route it greets on (a
            # restarted node's request socket is a new connection).
            self._seen(sender, time.monotonic())
            peer = self._peers[sender]
            peer.streamless = pub is None and body.get("dials") == 1
            moved = peer.route != route
            peer.route, peer.candidate, peer.route_lost = route, None, False
            if moved:
                self._resend_asks(sender)
            if stream is not None:
                self._connect_stream(sender, stream, stream_key, asked=link is not None)
            return
        # Never re-point a peer we hear from (on its stream, through a broker, or
        # by what it sends): a HELLO is not authenticated (without CURVE).  A new
        # route is kept as a fallback, used only once the known one is gone (its
        # connection closed: ``_send``); a new stream once the peer is declared
        # dead (``_heartbeat``).
        peer.streamless = pub is None and body.get("dials") == 1 and peer.stream is None
        if link is None and peer.route_lost:
            peer.route, peer.route_lost = route, False  # the known one is gone
            self._resend_asks(sender)
        elif link is None and peer.route != route:
            self._keep_candidate(peer, route)
        if stream is None or stream == peer.stream:
            return
        if peer.stream is None and (link is not None or route == peer.route):
            # No stream of it is followed directly (it is heard by what it sends,
            # or through a broker), and it greets on a connection that is its
            # own: this node's link to an endpoint it dials, or the connection
            # its requests take (a restarted one's, once the old one closed).
            # Its stream is a second path, not a re-pointing.  Put aside, it
            # would wait for the peer to be declared dead, which what the peer
            # sends on that connection (its credit) never lets come.
            peer.candidate_stream = None
            self._connect_stream(sender, stream, stream_key, asked=link is not None)
            return
        peer.candidate_stream = (stream, stream_key)
        logger.warning(
            "bridge %s: a node greets as %r from %s while %r is alive at %s: a restart "
            "elsewhere, or a second node with that name (names must be unique); it is "
            "followed only once the one known now is declared dead",
            self.name,
            sender,
            pub,
            sender,
            peer.stream,
        )

    def _keep_candidate(self, peer: Peer, route: Route) -> None:
        """Keep ``route`` aside for ``peer``, taken once its known route is gone."""
        peer.candidate = route
        # Most often the peer restarted: its old connection is closed by the
        # time its new one greets.  The asks waiting on the old route are sent
        # on it again, which tells (EHOSTUNREACH, ``_route_gone``) and moves
        # them to the new route; a peer still there just answers them again.
        self._resend_asks(peer.name)

    def _resend_asks(self, name: str) -> None:
        """Send again the asks to ``name`` still waiting, on its route now (I/O thread).

        An ask sent on a route that went away (the peer restarted on a new
        connection) is lost with it; every asked kind is safe to ask twice
        (reads, and PUBLISH, which a node takes once per event id), and the
        first answer to an ask is the one taken.
        """
        route = self._route_to(name)
        if route is None:
            return
        for message in [m for m in self._asks.values() if m.to == name]:
            if message.rid in self._asks:  # not answered by a send just made
                self._stats.requests_resent += 1
                self._resent.add(message.rid)
                self._send(route, message)
                route = self._route_to(name)
                if route is None:
                    return

    def _connect_broker(
        self, body: dict[str, Any], via: str | None, key: bytes | None, link: Link | None
    ) -> None:
        xpub, xsub = body.get("xpub"), body.get("xsub")
        if link is None or not isinstance(xpub, str) or not isinstance(xsub, str):
            return
        if link.broker_streams is None:
            link.broker_streams = (reachable(xpub, via), reachable(xsub, via))
            self._connect(self._sub, link.broker_streams[0], key)
            self._connect(self._xpub, link.broker_streams[1], key)

    def _connect_stream(
        self, name: str, endpoint: str, key: bytes | None, *, asked: bool = False
    ) -> None:
        """Follow the stream of the peer ``name`` on a SUB of its own (``stream_io``)."""
        if self._peers[name].stream == endpoint:
            return
        self._close_stream(name)
        bound = self._node.peer_names.get(name)
        self._open_stream(name, endpoint, key, asked=asked or (bound is not None and key == bound))

    def _connect(self, sock: zmq.Socket[bytes], endpoint: str, key: bytes | None) -> bool:
        """Connect ``sock`` (with ``key`` under CURVE); return whether it connected."""
        curve = self._curve
        try:
            if curve is not None and curve.enabled:
                if key is None:
                    logger.warning("bridge %s: no key for %s; not connecting", self.name, endpoint)
                    return False
                curve.client(sock, key)
            sock.connect(endpoint)
        except (zmq.ZMQError, ValueError) as exc:  # an endpoint a peer advertised: may be garbage
            logger.warning("bridge %s: cannot connect to %s: %s", self.name, endpoint, exc)
            return False
        return True

    # -- sending --------------------------------------------------------------------------

    def _hello_request(self, kind: int, to: str, rid: str) -> Request:
        body: dict[str, Any] = {"kind": "node", "pub": self._pub_endpoint}
        if self._pub_endpoint is None:  # how many it dials: one, and no broker carries its events
            body["dials"] = len(self._node.peers)
        body.update(epoch=self._epoch, base=self._base)
        if self._node.curve_public_key is not None:
            body["key"] = self._node.curve_public_key.decode()
        return Request(kind, to, self.name, rid, body)

    def _send(self, route: Route, message: Request) -> None:
        sock, identity = route
        parts = encode_request(message)
        try:
            if identity is not None:
                sock.send_multipart([identity, *parts], zmq.NOBLOCK)
            else:
                sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if identity is not None and exc.errno == zmq.EHOSTUNREACH:
                self._route_gone(route, message)
                return
            logger.debug("bridge %s: request not sent: %s", self.name, exc)

    def _route_gone(self, route: Route, message: Request) -> None:
        """The connection behind ``route`` closed: its peer's fallback route (if any) takes over."""
        for peer in list(self._peers.values()):
            if peer.route == route:
                peer.route, peer.candidate = peer.candidate, None
                peer.route_lost = peer.route is None  # its next greeting's route is taken
                if peer.route is None:
                    if not peer.alive:
                        self._fail_asks(peer.name)
                    continue  # the asks to a live one wait for that greeting (``_greeted``)
                if peer.name == message.to and message.rid not in self._asks:
                    self._send(peer.route, message)
                self._resend_asks(peer.name)

    def _fail_asks(self, name: str) -> None:
        """End the asks waiting for ``name``, whose connection closed and which is not heard."""
        for rid, message in list(self._asks.items()):
            waiting = self._waiting.pop(rid, None) if message.to == name else None
            if waiting is not None:
                error = "its connection closed and it is not responding"
                waiting[0](Request(ERROR, self.name, self.name, rid, {"error": error}))

    def _route_max(self, route: Route) -> int:
        """The largest answer that reaches this node on ``route``: ours, or its broker's."""
        for link in self._links:
            if link.sock is route[0] and link.max_frame_bytes is not None:
                return min(self._max, link.max_frame_bytes)
        return self._max

    def _route_to(self, name: str) -> Route | None:
        for link in self._links:
            if link.name == name and link.welcomed and not link.refused:
                return (link.sock, None)
        peer = self._peers.get(name)
        if peer is not None and peer.route is not None:
            route: Route = peer.route
            return route
        for link in self._links:
            if link.broker and link.welcomed:
                return (link.sock, None)
        return None

    def _unanswered(self, name: str) -> None:
        """``name`` did not answer on its route: fall back to a newer one only if it is dead.

        A peer still heard is busy or lost one message, not replaced: a slow
        answer never hands its route to whoever sent a HELLO under its name.
        """
        peer = self._peers.get(name)
        if peer is not None and not peer.alive and peer.candidate is not None:
            peer.route, peer.candidate = peer.candidate, None
            self._resend_asks(name)

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
        peer = self._peers.get(name)
        restarting = peer is not None and peer.alive and peer.route_lost
        if (route is None and not restarting) or not fits_name(name):  # none can have that name
            future.set_exception(NotConnectedError(f"node {name!r} is not connected"))
            return
        rid = uuid.uuid4().hex

        def done(reply: Request | None) -> None:
            lags = reply is not None and broker_error(reply, name)
            if lags and self._broker_lags(name, rid, done, deadline):
                return
            self._asks.pop(rid, None)
            self._resent.discard(rid)
            if reply is None and not self._stopping:
                self._unanswered(name)
            settle(future, name, reply, self._stopping)

        self._waiting[rid] = (done, deadline)
        if route is not None and "max_bytes" in body:  # through a broker: within its frames too
            body = {**body, "max_bytes": min(body["max_bytes"], self._route_max(route))}
        message = self._asks[rid] = Request(kind, name, self.name, rid, body, payload)
        if route is not None:  # else its connection closed: sent on its next (``_greeted``)
            self._send(route, message)

    def _ask_many(
        self,
        names: Sequence[str],
        kind: int,
        body: dict[str, Any],
        timeout: float | None,
        payload: bytes | None = None,
    ) -> dict[str, list[Event] | BridgeError]:
        """Ask every node of ``names`` (any thread but the I/O thread); wait for each answer."""
        deadline = time.monotonic() + (30.0 if timeout is None else timeout)
        futures: dict[str, tuple[BusFuture[list[Event]], threading.Event]] = {}
        for name in names:
            future: BusFuture[list[Event]] = BusFuture()
            asked = threading.Event()
            futures[name] = (future, asked)
            ask = functools.partial(self._ask, name, kind, body, future, deadline, payload)
            self._call_soon(functools.partial(run_then_set, ask, asked))
        return answers(futures, deadline)

    def _serve(self, message: Request, route: Route) -> None:
        """Answer a peer's request (worker thread: may block on the journal)."""
        local = self._local
        reply_body: dict[str, Any] = {}
        try:
            payload: bytes | None = None
            if message.kind == RECOVER:
                body = message.body
                if local.journal is None:
                    # The ring belongs to the I/O thread: read it there.
                    pieces, reply_body = self._ask_io(
                        lambda: serve_recover(local, self._out, body), _stopped
                    )
                else:
                    pieces, reply_body = serve_recover(local, self._out, body)
                pieces, reply_body = fit_asker(pieces, reply_body, self._max, body)
                payload = b"".join([chunk for _, chunk in pieces])
            elif message.kind == QUERY:
                journal = local.journal
                if journal is None:
                    raise BridgeError(f"node {self.name} keeps no journal")
                events = journal.read(query_from_json(message.body), 30.0)
            elif message.kind == PUBLISH:
                events = self._ledger.publish(local, decode_events(message.payload))
            elif message.kind == METRICS:  # figures travel as one carrier event
                heard = self._ask_io(self._heard, _no_peers)
                events = [metrics_answer(local.metrics(), heard)]
            else:
                events = correlated_page(local, message.body)
            if payload is None:
                payload = encode_batch(events)
            if len(payload) > (limit := answer_limit(self._max, message.body)) - 4096:
                raise EventTooLargeError(f"{ANSWER_TOO_LARGE} {limit} bytes")
            reply = Request(EVENTS, message.sender, self.name, message.rid, reply_body, payload)
        except Exception as exc:
            reply = Request(ERROR, message.sender, self.name, message.rid, {"error": str(exc)})

        def send() -> None:
            self._serving.discard((message.sender, message.rid))
            self._send(route, reply)

        self._call_soon(send)

    def _heard(self) -> dict[str, float]:
        """Return, per peer, the seconds since it was last heard (I/O thread)."""
        now = time.monotonic()
        return {p.name: now - p.last_seen for p in self._peers.values()}

    # -- timers ---------------------------------------------------------------------------

    def _hello_links(self, now: float) -> None:
        timeout = self._node.heartbeat_timeout
        for link in self._links:
            if link.refused:
                continue
            dead = link.name is not None and not self._alive(link.name) and not link.broker
            # A broker is greeted again every heartbeat_timeout: one that
            # restarted knows no node's name until it hears from it, and
            # routes no request to it (recovery through it would fail).
            if (not link.welcomed or dead or link.broker) and now - link.hello_at > timeout:
                link.hello_at = now
                self._send((link.sock, None), self._hello_request(HELLO, "", _HELLO_RID))
        for rid, (callback, deadline) in list(self._waiting.items()):
            if now > deadline:
                del self._waiting[rid]
                callback(None)
        self._check_dead_routes(now, timeout)
        self._unpark()

    def _check_dead_routes(self, now: float, timeout: float) -> None:
        """End the asks waiting for a node declared dead once its connection is seen closed.

        Nothing else is sent on a dead node's route, so every
        ``heartbeat_timeout`` the oldest ask is sent on it again: that send
        tells a closed connection (EHOSTUNREACH, ``_route_gone``), and a node
        that was only paused answers it (asks are safe to receive twice).
        """
        if not self._asks:
            return
        oldest: dict[str, Request] = {}
        for message in self._asks.values():
            oldest.setdefault(message.to, message)
        for name, message in oldest.items():
            peer = self._peers.get(name)
            if peer is None or peer.alive:
                continue
            route = self._route_to(name)
            if route is None:
                self._fail_asks(name)  # declared dead while its asks waited for it
            elif route[1] is not None and now - peer.probed_at > timeout:
                peer.probed_at = now
                self._send(route, message)


def _no_peers() -> dict[str, float]:
    return {}


def _stopped() -> tuple[list[Piece], dict[str, Any]]:
    raise BridgeError("the node is closing")


def _property(frame: zmq.Frame, name: str) -> str | None:
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) and value else None


def _key(body: dict[str, Any]) -> bytes | None:
    value = body.get("key")
    return value.encode() if isinstance(value, str) and len(value) == 40 else None
