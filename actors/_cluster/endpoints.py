"""Endpoints and the peers behind them: plain data, no sockets (but a probe).

Endpoints are checked when ``NodeConfig`` is built (``check_endpoint``);
here they are derived (the stream socket beside ``listen``) and resolved
(a wildcard host seen from a peer).
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass
from typing import Any

import zmq

__all__ = ["Link", "Peer", "bind", "derive_endpoint", "last_endpoint", "reachable"]

_TCP = re.compile(r"^tcp://(?P<host>.*):(?P<port>\*|[0-9]+)$")
_ANY_HOST = {"0.0.0.0", "*", "::", "[::]"}  # noqa: S104 - recognised, never bound here


def derive_endpoint(listen: str, offset: int, suffix: str) -> str:
    """Return the endpoint of a second socket beside ``listen``.

    ``tcp://h:5701`` gives ``tcp://h:5702`` (port + ``offset``), ``tcp://h:*``
    (or ``:0``) stays ephemeral, ``ipc://`` and ``inproc://`` names get ``suffix``.
    Raise ``ValueError`` for another transport or a port past 65535.
    """
    match = _TCP.match(listen)
    if match is not None:
        port = match["port"]
        # "*" and "0" both ask for an ephemeral port: the second socket too.
        new_port = "*" if port in ("*", "0") else str(int(port) + offset)
        if new_port != "*" and int(new_port) > 65535:
            raise ValueError(f"{listen!r}: no port {new_port} for the socket beside it")
        return f"tcp://{match['host']}:{new_port}"
    if listen.startswith(("ipc://", "inproc://")):
        return listen + suffix
    raise ValueError(f"unsupported endpoint {listen!r} (tcp://, ipc:// or inproc://)")


def bind(sock: zmq.Socket[bytes], endpoint: str) -> None:
    """``sock.bind(endpoint)``, refusing an ``ipc://`` path a live socket listens on.

    ZeroMQ removes the file at an ipc path and binds anew, whoever listens
    there: a node or broker started twice on one path would take it from
    the first in silence (peers linked already staying with that one).  A
    path nothing answers on (a file left by a process that died) is taken
    over.  Raises ``zmq.ZMQError`` (``EADDRINUSE``), as a TCP port in use does.
    """
    path = endpoint.removeprefix("ipc://")
    if path != endpoint and not path.startswith("@"):  # not the abstract namespace
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            pass  # nothing listens there
        else:
            raise zmq.ZMQError(errno.EADDRINUSE)
        finally:
            probe.close()
    sock.bind(endpoint)


def reachable(advertised: str, via: str | None) -> str:
    """Return ``advertised`` with a wildcard host replaced by ``via`` (a host or an endpoint)."""
    match = _TCP.match(advertised)
    if match is None or match["host"] not in _ANY_HOST or not via:
        return advertised
    host_match = _TCP.match(via)
    host = host_match["host"] if host_match is not None else via
    return f"tcp://{host}:{match['port']}"


def last_endpoint(sock: zmq.Socket[bytes]) -> str:
    """Return the endpoint ``sock`` bound last (ephemeral ports filled in)."""
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class Peer:
    """A node this one heard from (I/O thread only)."""

    name: str
    alive: bool = False
    last_seen: float = 0.0  # on its stream or in a greeting: what ``alive`` is
    last_heard: float = 0.0  # anything from it, its credit and requests too (``_forget_gone``)
    route: Any = None  # (socket, identity or None) to send it requests directly
    stream: str | None = None  # the endpoint our SUB connected to for its events
    streamless: bool = False  # no stream, and dials only this node: nothing of it to sync
    candidate: Any = None  # a newer route from a HELLO, tried when ``route`` stops answering
    route_lost: bool = False  # ``route``'s connection closed with no candidate: take the next
    candidate_stream: tuple[str, bytes | None] | None = None  # adopted once it is declared dead
    probed_at: float = float("-inf")  # an ask last sent again on ``route`` while it was dead


@dataclass(slots=True)
class Link:
    """A DEALER connected to a configured peer endpoint (a node or a broker)."""

    endpoint: str
    sock: Any
    key: bytes | None
    name: str | None = None
    welcomed: bool = False
    broker: bool = False
    refused: str | None = None  # why the peer (or we) refused the link
    hello_at: float = float("-inf")
    broker_streams: tuple[str, str] | None = None
    max_frame_bytes: int | None = None  # a broker's, told in its WELCOME: answers through it

    def host(self) -> str | None:
        """Return the host of a tcp endpoint, else None."""
        match = _TCP.match(self.endpoint)
        return match["host"] if match is not None else None
