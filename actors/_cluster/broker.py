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
``authorized_keys`` may connect.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Sequence
from types import TracebackType

import zmq

from actors._cluster.endpoints import derive_endpoint, last_endpoint, reachable
from actors._cluster.security import Curve, close_context
from actors._cluster.wire import (
    ERROR,
    HELLO,
    WELCOME,
    FrameError,
    Request,
    decode_request,
    encode_request,
)
from actors._errors import BridgeError
from actors._model.config import check_endpoint

__all__ = ["Broker", "main"]

logger = logging.getLogger("actors.broker")


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
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        check_endpoint(listen, "broker listen", bind=True)
        self._lock = threading.Lock()
        self.name = name
        self._max = max_frame_bytes
        self._authorized = frozenset(authorized_keys)
        self._names: dict[str, bytes] = {}
        self._refused = 0
        self.routed = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._curve: Curve | None = None
        self._closed = False
        try:
            self._curve = Curve(self._ctx, curve_public_key, curve_secret_key, self._allow)
            self._router = self._socket(zmq.ROUTER)
            self._router.bind(listen)
            self._xpub = self._socket(zmq.XPUB)
            self._xpub.bind(derive_endpoint(listen, 1, ".pub"))
            self._xsub = self._socket(zmq.XSUB)
            self._xsub.bind(derive_endpoint(listen, 2, ".in"))
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

    def _proxy(self) -> None:
        try:
            zmq.proxy_steerable(self._xsub, self._xpub, None, self._control)
        except zmq.ZMQError as exc:
            if not self._closed:
                logger.exception("broker proxy stopped: %s", exc)

    def _route(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._router_stop, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._router_stop in ready:
                return
            while True:
                try:
                    frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_request(frames)

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return
        identity = frames[0].bytes
        parts = [f.bytes for f in frames[1:]]
        try:
            message = decode_request(parts, self._max)
        except FrameError as exc:
            logger.debug("broker: dropped a request: %s", exc)
            return
        if message.sender:
            self._names[message.sender] = identity
        if not message.to:
            if message.kind == HELLO:
                # Endpoints are advertised as bound; nodes resolve a wildcard host.
                body = {
                    "kind": "broker",
                    "xpub": reachable(self.subscribe_endpoint, None),
                    "xsub": reachable(self.publish_endpoint, None),
                }
                reply = Request(WELCOME, message.sender, self.name, message.rid, body)
                self._router.send_multipart([identity, *encode_request(reply)])
            return
        target = self._names.get(message.to)
        if target is None:
            error = Request(
                ERROR,
                message.sender,
                self.name,
                message.rid,
                {"error": f"unknown node {message.to}"},
            )
            self._router.send_multipart([identity, *encode_request(error)])
            return
        self.routed += 1
        try:
            self._router.send_multipart([target, *parts], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.debug("broker: cannot route to %s: %s", message.to, exc)

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run a broker until interrupted: ``llmspell-events broker tcp://0.0.0.0:5800``."""
    parser = argparse.ArgumentParser(prog="llmspell-events broker")
    parser.add_argument("listen", help="the ROUTER endpoint nodes list as a peer")
    parser.add_argument("--public-key", help="Z85 CURVE public key")
    parser.add_argument("--secret-key", help="Z85 CURVE secret key")
    parser.add_argument(
        "--authorize", action="append", default=[], help="Z85 public key of a node (repeatable)"
    )
    args = parser.parse_args(argv)
    broker = Broker(
        args.listen,
        curve_public_key=args.public_key.encode() if args.public_key else None,
        curve_secret_key=args.secret_key.encode() if args.secret_key else None,
        authorized_keys=[k.encode() for k in args.authorize],
    )
    print(f"broker at {broker.endpoint}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 0
