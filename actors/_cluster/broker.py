"""``Broker``: the hub of a hub-and-spoke deployment (``docs/cluster.md``).

Three sockets, one endpoint to configure:

- a ROUTER at ``listen``: nodes list it in ``NodeConfig.peers`` and say hello;
  the broker answers with the two stream endpoints below, and routes every
  other request to the node it names (recovery and remote queries work
  through the broker);
- an XSUB beside it (``derive_endpoint(listen, 2, ".in")``) that nodes'
  XPUBs connect to, and an XPUB (``derive_endpoint(listen, 1, ".pub")``) that
  nodes' SUBs connect to, joined by ``zmq.proxy_steerable``: events flow one
  way, subscriptions the other, so a node still receives only what its
  patterns can match.

With a CURVE key pair, every socket is a CURVE server and only
``authorized_keys`` may connect.  ``peer_names`` (node name -> public key)
binds names to keys as a node's does: a message or a stream frame under a
bound name is relayed only if it came over a connection authenticated with
that name's key, and only such a connection becomes the name's route; a
route is never re-pointed to another key while its node is heard (within
``route_timeout``).  Nodes therefore take what the broker relays under the
name it carries (``docs/cluster.md``, "Node identity").

A name not heard for ``FORGET_AFTER`` route timeouts (5 minutes by
default; nodes greet a broker every ``heartbeat_timeout``) is forgotten, so
short-lived nodes (one per CLI command) do not grow the broker for ever.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn

import zmq

from actors._cluster.endpoints import bind, derive_endpoint, last_endpoint, reachable
from actors._cluster.limits import cap_inbound
from actors._cluster.security import Curve, check_key_pair, close_context
from actors._cluster.wire import (
    ANSWER_TOO_LARGE,
    ANSWERED,
    CONTROL,
    DATA_HEADER,
    ERROR,
    HELLO,
    WELCOME,
    FrameError,
    Request,
    RequestTooLargeError,
    decode_request,
    encode_request,
    fits_name,
)
from actors._errors import BridgeError
from actors._model.config import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_NODE_NAME_BYTES,
    MIN_FRAME_BYTES,
    check_endpoint,
    check_key,
)
from actors._model.guards import MAX_FRAME_BYTES

__all__ = ["Broker", "main"]

logger = logging.getLogger("actors.broker")

FORGET_AFTER = 10
"""Route timeouts after which the route of a name not heard is forgotten."""


def _check_settings(
    keys: tuple[bytes | None, bytes | None],
    authorized_keys: Sequence[bytes],
    peer_names: Mapping[str, bytes] | None,
    max_frame_bytes: int,
    route_timeout: float,
) -> None:
    """Raise ``TypeError``/``ValueError`` for a broker setting that cannot work."""
    for key, half in zip(keys, ("public", "secret"), strict=True):
        if key is not None:
            check_key(key, f"curve_{half}_key")
    check_key_pair(*keys)
    for key in authorized_keys:
        check_key(key, "each of authorized_keys")
    for name, key in (peer_names or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"peer_names keys are node names (str), not {name!r}")
        check_key(key, f"peer_names[{name!r}]")
    if keys[0] is None and (authorized_keys or peer_names):
        # Without CURVE the broker would run plain and accept anyone, the
        # keys the user gave silently ignored (as ``NodeConfig`` refuses).
        raise ValueError(
            "authorized_keys and peer_names need CURVE: give the broker "
            "curve_public_key and curve_secret_key too"
        )
    if isinstance(max_frame_bytes, bool) or not isinstance(max_frame_bytes, int):
        raise TypeError(f"max_frame_bytes must be an int, not {max_frame_bytes!r}")
    if max_frame_bytes < MIN_FRAME_BYTES:
        raise ValueError(
            f"max_frame_bytes must be at least {MIN_FRAME_BYTES}, not {max_frame_bytes}"
        )
    if max_frame_bytes > MAX_FRAME_BYTES:
        raise ValueError(f"max_frame_bytes must be <= {MAX_FRAME_BYTES:,}")
    if isinstance(route_timeout, bool) or not isinstance(route_timeout, int | float):
        raise TypeError(f"route_timeout must be a number of seconds, not {route_timeout!r}")
    if not math.isfinite(route_timeout) or route_timeout <= 0:
        raise ValueError(f"route_timeout must be finite and above 0, not {route_timeout!r}")


@dataclass(slots=True)
class _Route:
    """Where the broker sends requests for one node name."""

    identity: bytes  # the ROUTER identity of the connection
    key: bytes | None  # the CURVE key it authenticated with (None without CURVE)
    heard: float  # when a message under the name last came over it


class Broker:
    """Run the proxy and the request router on two threads until ``close``.

    Raises ``BridgeError`` if a socket cannot be bound.  Use it as a context
    manager.  ``endpoint`` is the resolved ROUTER endpoint to give nodes.
    """

    def __init__(
        self,
        listen: str,
        *,
        name: str = "broker",
        curve_public_key: bytes | None = None,
        curve_secret_key: bytes | None = None,
        authorized_keys: Sequence[bytes] = (),
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        peer_names: Mapping[str, bytes] | None = None,
        route_timeout: float = 30.0,
    ) -> None:
        check_endpoint(listen, "broker listen", bind=True)
        if not name or not fits_name(name):
            raise ValueError(f"broker name must be 1 to {MAX_NODE_NAME_BYTES} bytes in UTF-8")
        _check_settings(
            (curve_public_key, curve_secret_key),
            authorized_keys,
            peer_names,
            max_frame_bytes,
            route_timeout,
        )
        self._lock = threading.Lock()
        self.name = name
        self._max = max_frame_bytes
        self._authorized = frozenset(authorized_keys)
        self._peer_names = dict(peer_names or {})
        self._route_timeout = route_timeout
        self._names: dict[str, _Route] = {}
        self._refused = 0
        self._impostors = 0
        self._dropped = 0
        self._oversized = 0
        self._forgotten = 0
        self.routed = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._curve: Curve | None = None
        self._closed = False
        try:
            self._curve = Curve(self._ctx, curve_public_key, curve_secret_key, self._allow)
            self._router = self._socket(zmq.ROUTER)
            # A send to a closed connection fails (EHOSTUNREACH) instead of
            # vanishing, so a request to it is answered (``_relay``).
            self._router.router_mandatory = True
            bind(self._router, listen)
            self._xpub = self._socket(zmq.XPUB)
            bind(self._xpub, derive_endpoint(listen, 1, ".pub"))
            self._xsub = self._socket(zmq.XSUB)
            bind(self._xsub, derive_endpoint(listen, 2, ".in"))
            self._control = self._ctx.socket(zmq.PAIR)
            self._control.bind(f"inproc://broker-control-{id(self):x}")
            self._stop = self._ctx.socket(zmq.PAIR)
            self._stop.connect(f"inproc://broker-control-{id(self):x}")
            self._router_stop = self._ctx.socket(zmq.PAIR)
            self._router_stop.bind(f"inproc://broker-router-{id(self):x}")
            self._router_wake = self._ctx.socket(zmq.PAIR)
            self._router_wake.connect(f"inproc://broker-router-{id(self):x}")
        except (zmq.ZMQError, ValueError) as exc:
            close_context(self._ctx, self._curve)
            raise BridgeError(f"broker: cannot bind {listen}: {exc}") from exc
        self.endpoint: str = last_endpoint(self._router)
        self.publish_endpoint: str = last_endpoint(self._xsub)
        self.subscribe_endpoint: str = last_endpoint(self._xpub)
        self._threads = [
            threading.Thread(target=self._proxy, name=f"{name}-proxy", daemon=True),
            threading.Thread(target=self._route, name=f"{name}-router", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(kind)
        sock.linger = 0
        cap_inbound(sock, self._max)
        assert self._curve is not None
        self._curve.server(sock)
        return sock

    def _allow(self, key: bytes) -> bool:
        """ZAP: accept only authorised CURVE clients (authenticator thread)."""
        allowed = key in self._authorized
        if not allowed:
            with self._lock:
                self._refused += 1
        return allowed

    @property
    def refused(self) -> int:
        """How many CURVE clients were refused."""
        with self._lock:
            return self._refused

    @property
    def impostors(self) -> int:
        """How many messages and stream frames were dropped for a name held by another key."""
        with self._lock:
            return self._impostors

    @property
    def dropped(self) -> int:
        """How many malformed requests (and, with ``peer_names``, stream frames) were dropped."""
        with self._lock:
            return self._dropped

    @property
    def oversized(self) -> int:
        """How many requests and answers over ``max_frame_bytes`` were dropped (and refused)."""
        with self._lock:
            return self._oversized

    @property
    def forgotten(self) -> int:
        """How many node names were forgotten, not heard for ``FORGET_AFTER`` route timeouts."""
        with self._lock:
            return self._forgotten

    @property
    def names(self) -> list[str]:
        """The node names the broker routes requests to now, sorted."""
        with self._lock:
            return sorted(self._names)

    def _drop(self, what: str, exc: object) -> None:
        with self._lock:
            self._dropped += 1
        logger.debug("broker: dropped %s: %s", what, exc)

    def _too_large(self, identity: bytes, key: bytes | None, exc: RequestTooLargeError) -> None:
        """A message over ``max_frame_bytes``: counted, logged, and whoever waits for it told.

        A request's asker is its sender; an answer's (too large for this
        broker, though the answering node's limit let it go) is its ``to``.
        One under a name its connection may not hold is an impostor's: dropped
        as such, no refusal sent for it.
        """
        if exc.sender and not self._learn(exc.sender, identity, key):
            self._impostor("a message over max_frame_bytes", exc.sender)
            return
        with self._lock:
            self._dropped += 1
            self._oversized += 1
        logger.warning("broker: dropped a message from %r to %r: %s", exc.sender, exc.to, exc)
        if exc.kind in ANSWERED:
            asker, to, text = identity, exc.sender, f"{exc}: the broker's max_frame_bytes"
        else:
            route = self._names.get(exc.to)
            if route is None:
                return
            limit = f"{exc.max_bytes} bytes (the broker's max_frame_bytes)"
            asker, to, text = route.identity, exc.to, f"{ANSWER_TOO_LARGE} {limit}"
        body = {"error": text, "too_large": True}
        self._reply(asker, Request(ERROR, to, self.name, exc.rid, body))

    def _impostor(self, what: str, name: str) -> None:
        with self._lock:
            self._impostors += 1
        logger.warning("broker: dropped %s under %r from another key", what, name)

    def _curve_key(self, frame: zmq.Frame) -> bytes | None:
        """Return the CURVE key ``frame`` arrived with (ZAP User-Id), None without CURVE."""
        if self._curve is None or not self._curve.enabled:
            return None
        try:
            value = frame.get("User-Id")
        except zmq.ZMQError:
            return None
        return value.encode() if isinstance(value, str) and value else None

    def _proxy(self) -> None:
        try:
            if self._peer_names:
                self._checked_proxy()
            else:
                zmq.proxy_steerable(self._xsub, self._xpub, None, self._control)
        except zmq.ZMQError as exc:
            if not self._closed:
                logger.exception("broker proxy stopped: %s", exc)

    def _checked_proxy(self) -> None:
        """Forward like ``zmq.proxy``, dropping stream frames of a bound name from another key."""
        poller = zmq.Poller()
        for sock in (self._xsub, self._xpub, self._control):
            poller.register(sock, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._control in ready:
                return
            if self._xpub in ready:  # subscriptions, upstream as they came
                while True:
                    try:
                        self._xsub.send_multipart(self._xpub.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            if self._xsub in ready:
                while True:
                    try:
                        frames = self._xsub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        holds = self._stream_origin_holds(frames)
                    except Exception:  # one frame never stops the broker: drop it
                        logger.exception("broker: dropped a stream frame it could not check")
                        holds = False
                    if holds:
                        self._xpub.send_multipart(frames, copy=False)

    def _stream_origin_holds(self, frames: list[zmq.Frame]) -> bool:
        """Return whether a stream frame's origin is unbound or bound to the key it came with.

        A frame whose origin cannot be read is dropped (a receiver would drop it too).
        """
        origin = None
        if len(frames) == 3:
            origin = _stream_origin(frames[0].bytes, frames[1].bytes, frames[2].bytes)
        if origin is None:
            self._drop("a stream frame", "its origin cannot be read")
            return False
        bound = self._peer_names.get(origin)
        if bound is None:
            return True
        if self._curve_key(frames[1]) == bound:
            return True
        self._impostor("a stream frame", origin)
        return False

    def _route(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._router_stop, zmq.POLLIN)
        swept = time.monotonic()
        while True:
            ready = dict(poller.poll(max(1, int(self._route_timeout * 1000))))
            if self._router_stop in ready:
                return
            while True:
                try:
                    frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_request(frames)
            if time.monotonic() - swept >= self._route_timeout:
                swept = time.monotonic()
                self._forget(swept - FORGET_AFTER * self._route_timeout)

    def _forget(self, before: float) -> None:
        """Forget the routes of names last heard before ``before`` (router thread)."""
        silent = [name for name, route in self._names.items() if route.heard < before]
        if not silent:
            return
        with self._lock:
            for name in silent:
                del self._names[name]
            self._forgotten += len(silent)
        logger.debug("broker: forgot %d node name(s) not heard", len(silent))

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            self._drop("a request", "no frame after the identity")
            return
        identity = frames[0].bytes
        key = self._curve_key(frames[1])
        parts = [f.bytes for f in frames[1:]]
        try:
            message = decode_request(parts, self._max)
        except RequestTooLargeError as exc:
            self._too_large(identity, key, exc)
            return
        except FrameError as exc:
            self._drop("a request", exc)
            return
        if message.sender and not self._learn(message.sender, identity, key):
            self._impostor("a request", message.sender)
            if message.kind == HELLO:
                reason = f"the broker binds {message.sender!r} to another key"
                body = {"error": reason, "refused": True}
                refusal = Request(ERROR, message.sender, self.name, message.rid, body)
                self._reply(identity, refusal)
            return
        if not message.to:
            if message.kind == HELLO:
                # Endpoints are advertised as bound; nodes resolve a wildcard host.
                body = {
                    "kind": "broker",
                    "xpub": reachable(self.subscribe_endpoint, None),
                    "xsub": reachable(self.publish_endpoint, None),
                    "max_frame_bytes": self._max,  # answers through us are asked within it
                }
                reply = Request(WELCOME, message.sender, self.name, message.rid, body)
                self._reply(identity, reply)
            return
        route = self._names.get(message.to)
        target = route.identity if route is not None else None
        if target is None:
            error = Request(
                ERROR,
                message.sender,
                self.name,
                message.rid,
                {"error": f"unknown node {message.to}"},
            )
            self._reply(identity, error)
            return
        self.routed += 1
        self._relay(identity, target, message, parts)

    def _relay(self, identity: bytes, target: bytes, message: Request, parts: list[bytes]) -> None:
        """Pass ``parts`` to ``target``; a request to a closed connection is answered ERROR."""
        try:
            self._router.send_multipart([target, *parts], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("broker: cannot route to %s: %s", message.to, exc)
            if exc.errno != zmq.EHOSTUNREACH:
                return
            if message.kind in ANSWERED:
                body = {"error": f"node {message.to}'s connection to the broker closed"}
                self._reply(identity, Request(ERROR, message.sender, self.name, message.rid, body))

    def _reply(self, identity: bytes, reply: Request) -> None:
        """Answer the connection ``identity`` (dropped if it closed or its queue is full)."""
        try:
            self._router.send_multipart([identity, *encode_request(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("broker: cannot answer %s: %s", reply.to, exc)

    def _learn(self, sender: str, identity: bytes, key: bytes | None) -> bool:
        """Take ``identity`` as ``sender``'s route if its key may hold the name; return whether.

        A name ``peer_names`` binds is held only by its key.  Under CURVE, an
        unbound name is held by the key that used it last while that is heard
        within ``route_timeout``: another key takes it only once it went silent.
        Without CURVE (no keys) the last connection that used a name holds it.
        """
        now = time.monotonic()
        bound = self._peer_names.get(sender)
        route = self._names.get(sender)
        if bound is not None and key != bound:
            return False
        if (
            bound is None
            and key is not None
            and route is not None
            and route.key != key
            and now - route.heard < self._route_timeout
        ):
            return False
        with self._lock:  # ``names`` reads it from other threads
            self._names[sender] = _Route(identity, key, now)
        return True

    def close(self) -> None:
        """Stop both threads and close the sockets (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.send(b"TERMINATE")
        self._router_wake.send(b"")
        for thread in self._threads:
            thread.join(10.0)
        for sock in (self._router, self._xpub, self._xsub, self._control, self._stop):
            sock.close(0)
        self._router_stop.close(0)
        self._router_wake.close(0)
        close_context(self._ctx, self._curve)

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def parse_peer_names(
    items: Iterable[str],
    load_key: Callable[[str], bytes | None],
    refuse: Callable[[str], NoReturn],
) -> dict[str, bytes]:
    """Return ``{NAME: key}`` from ``--peer-name NAME=KEY`` values, split at the first ``=``.

    The one parser of ``main`` and of the command line (``actors.cli``).
    ``load_key`` turns KEY into the key, None if it is not one (it may raise
    an error of its own); ``refuse(item)`` reports an item without ``=``,
    with an empty NAME, or whose KEY is not a key, and raises: each command
    line words its own usage error.
    """
    names: dict[str, bytes] = {}
    for item in items:
        name, sep, key = item.partition("=")
        loaded = load_key(key) if sep and name else None
        if loaded is None:
            refuse(item)
        names[name] = loaded
    return names


def _literal_key(key: str) -> bytes | None:
    """Return a key given as its 40 characters (``main`` reads no key files)."""
    return key.encode() if len(key) == 40 else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run a broker until interrupted: ``llmspell-events broker tcp://0.0.0.0:5800``."""
    parser = argparse.ArgumentParser(prog="llmspell-events broker")
    parser.add_argument("listen", help="the ROUTER endpoint nodes list as a peer")
    parser.add_argument("--public-key", help="Z85 CURVE public key")
    parser.add_argument("--secret-key", help="Z85 CURVE secret key")
    parser.add_argument(
        "--authorize", action="append", default=[], help="Z85 public key of a node (repeatable)"
    )
    parser.add_argument(
        "--peer-name",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="bind a node name to its Z85 public key (repeatable)",
    )
    args = parser.parse_args(argv)

    def refuse(item: str) -> NoReturn:
        parser.error(f"--peer-name takes NAME=KEY with a 40-character Z85 key: {item!r}")

    names = parse_peer_names(args.peer_name, _literal_key, refuse)
    try:
        broker = Broker(
            args.listen,
            curve_public_key=args.public_key.encode() if args.public_key else None,
            curve_secret_key=args.secret_key.encode() if args.secret_key else None,
            authorized_keys=[k.encode() for k in args.authorize],
            peer_names=names,
        )
    except ValueError as exc:  # a setting that cannot work: a usage error, as for the others
        parser.error(str(exc))
    print(f"broker at {broker.endpoint}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 0


def _stream_origin(topic: bytes, header: bytes, payload: bytes) -> str | None:
    """Return the origin a stream frame claims (data header, or a control body's ``node``)."""
    try:
        if topic.startswith(CONTROL):
            body = json.loads(payload)
            node = body.get("node") if isinstance(body, dict) else None
            return node if isinstance(node, str) else None
        fields = DATA_HEADER.unpack_from(header)
        size = DATA_HEADER.size
        return header[size : size + fields[6]].decode()
    except (ValueError, UnicodeDecodeError, RecursionError, struct.error):
        return None
