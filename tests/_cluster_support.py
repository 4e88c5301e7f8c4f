"""Helpers of the tests that run node buses in one process and speak to them by hand.

Collectors that signal on a count or on a value, the node of a bus and its
endpoints, ipc endpoints in a test's folder, and a hand-made peer (raw pyzmq
sockets: an XPUB a node's SUB can follow, a DEALER to its ROUTER).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from actors import Event, EventBus
from actors._cluster.node import Node
from actors._cluster.wire import HELLO, Request, encode_request

WAIT = 20.0
"""Upper bound for every wait in these tests: reaching it means the test failed."""


class Collector:
    """A handler that records events and signals when ``n`` arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.events: list[Event] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
            if len(self.events) >= self.n:
                self.done.set()

    def wait(self) -> list[Event]:
        assert self.done.wait(WAIT), f"got {len(self.events)} of {self.n} events"
        return self.events


class Until:
    """A handler that records events and signals once one with ``data == until`` arrived."""

    def __init__(self, until: Any) -> None:
        self.until = until
        self.events: list[Event] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
        if event.data == self.until:
            self.done.set()

    def wait(self) -> list[Event]:
        assert self.done.wait(WAIT), f"{self.until!r} never arrived: {self.data}"
        with self._lock:
            return list(self.events)

    @property
    def data(self) -> list[Any]:
        with self._lock:
            return [e.data for e in self.events]


def node(bus: EventBus) -> Node:
    """Return the node of a bus started with ``node=``."""
    assert bus.node is not None
    return bus.node


def request_endpoint(bus: EventBus) -> str:
    """Return the endpoint a bus's node takes requests on (what peers list)."""
    found = node(bus).endpoints["request"]
    assert found is not None
    return found


def ipc(tmp_path: Path, name: str) -> str:
    """Return an ipc endpoint named ``name`` in the test's folder."""
    return f"ipc://{tmp_path}/{name}.sock"


@contextlib.contextmanager
def fake_sockets(
    tmp_path: Path, a: EventBus
) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A hand-made peer of ``a``: an XPUB on ipc ``fake`` and a DEALER to a's request port."""
    ctx = zmq.Context()
    try:
        fake_pub = ctx.socket(zmq.XPUB)
        fake_pub.bind(ipc(tmp_path, "fake"))
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(request_endpoint(a))
        yield fake_pub, dealer
    finally:
        ctx.destroy(0)


def say_hello(tmp_path: Path, fake_pub: zmq.Socket[bytes], dealer: zmq.Socket[bytes]) -> None:
    """Send a hello that points a's SUB at the fake publisher; return once a subscribed there."""
    hello = Request(HELLO, "", "fake", "h", {"kind": "node", "pub": ipc(tmp_path, "fake")})
    dealer.send_multipart(encode_request(hello))
    assert dealer.poll(int(WAIT * 1000))
    dealer.recv_multipart()  # the welcome
    assert fake_pub.poll(int(WAIT * 1000))
    while fake_pub.poll(0):
        fake_pub.recv()


@contextlib.contextmanager
def fake_peer(tmp_path: Path, a: EventBus) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """``fake_sockets``, welcomed by ``a`` and followed by its SUB before it is handed over."""
    with fake_sockets(tmp_path, a) as (fake_pub, dealer):
        say_hello(tmp_path, fake_pub, dealer)
        yield fake_pub, dealer


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 free now, below the kernel's ephemeral range.

    A test that must bind a port it chose (to bind it again after a close)
    takes one no outgoing connection of another test can be given meanwhile:
    a port from the ephemeral range (what binding port 0 returns) was taken
    once, between this check and the node's bind, by a connection of the
    other test worker.
    """
    for _ in range(1000):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
