"""Node identity on the wire: names bound to CURVE keys, range checks, routes, credit.

Every peer that misbehaves here is a raw pyzmq socket sending hand-made
frames; the nodes are real buses on ipc:// endpoints.  Waits are on
conditions (``Node.wait``, ``poll``), never on sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import Event, EventBus
from actors._cluster.node import Node
from actors._cluster.wire import (
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    HELLO,
    SYNC,
    Request,
    encode_control,
    encode_data,
    encode_request,
    parse_sync_topic,
)

WAIT = 20.0


class Collector:
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
    assert bus.node is not None
    return bus.node


def request_endpoint(bus: EventBus) -> str:
    found = node(bus).endpoints["request"]
    assert found is not None
    return found


def ipc(tmp_path: Path, name: str) -> str:
    return f"ipc://{tmp_path}/{name}.sock"


Keys = tuple[bytes, bytes]


class FakePeer:
    """A peer made of raw sockets: an XPUB it publishes on, a DEALER to one node's ROUTER.

    With ``keys`` both are CURVE (the XPUB a server with those keys, the
    DEALER a client of ``server_key``).
    """

    def __init__(
        self,
        name: str,
        pub: str,
        target: str,
        keys: Keys | None = None,
        server_key: bytes | None = None,
    ) -> None:
        self.name = name
        self.pub_endpoint = pub
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.linger = 0
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.keys = keys
        if keys is not None:
            self.xpub.curve_server = True
            self.xpub.curve_publickey, self.xpub.curve_secretkey = keys
            self.dealer.curve_publickey, self.dealer.curve_secretkey = keys
            assert server_key is not None
            self.dealer.curve_serverkey = server_key
        self.xpub.bind(pub)
        self.dealer.connect(target)

    def request(self, kind: int, to: str, sender: str, rid: str, body: dict[str, Any]) -> None:
        self.dealer.send_multipart(encode_request(Request(kind, to, sender, rid, body)))

    def hello(self) -> list[bytes]:
        """Greet the node under this peer's name; return its answer's frames."""
        body: dict[str, Any] = {"kind": "node", "pub": self.pub_endpoint, "epoch": 1, "base": 1}
        if self.keys is not None:
            body["key"] = self.keys[0].decode()
        self.request(HELLO, "", self.name, "hello", body)
        assert self.dealer.poll(int(WAIT * 1000))
        return self.dealer.recv_multipart()

    def answer_sync(self, origin: str, epoch: int, head: int) -> None:
        """Wait for the node's sync topic on the XPUB; answer it as ``origin``."""
        while True:
            assert self.xpub.poll(int(WAIT * 1000)), "the node never subscribed"
            message = self.xpub.recv()
            sync = parse_sync_topic(message[1:])
            if message[:1] == b"\x01" and sync is not None:
                body = {"node": origin, "epoch": epoch, "base": 1, "head": head}
                body.update({"for": sync[0], "round": sync[1]})
                self.xpub.send_multipart(encode_control(message[1:], SYNC, body))
                return

    def heartbeat(self, origin: str, epoch: int, head: int, chains: list[Any]) -> None:
        body = {"node": origin, "epoch": epoch, "base": 1, "head": head, "chains": chains}
        self.xpub.send_multipart(encode_control(HEARTBEAT_TOPIC, HEARTBEAT, body))

    def data(self, topic: bytes, origin: str, epoch: int, events: list[Event]) -> None:
        self.xpub.send_multipart(encode_data(topic, origin, epoch, [], events))

    def close(self) -> None:
        self.ctx.destroy(0)


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakePeer]]:
    made: list[FakePeer] = []

    def make(*args: Any, **kwargs: Any) -> FakePeer:
        fake = FakePeer(*args, **kwargs)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()


def event(data: Any, sequence: int, origin: str, event_type: str = "job.run") -> Event:
    return Event(event_type=event_type, data=data, sequence=sequence, origin=origin)


# -- sequences: the bound is the announced head ------------------------------------------


def test_frames_cannot_ratchet_the_range_check_past_the_announced_head(
    tmp_path: Path, nodes: Callable[..., EventBus], fakes: Callable[..., FakePeer]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    got = Collector("end")
    a.subscribe("job.*", got)
    a.flush()
    fake = fakes("fake", ipc(tmp_path, "fake"), request_endpoint(a))
    fake.hello()
    fake.answer_sync("fake", epoch=1, head=1)
    fake.heartbeat("fake", epoch=1, head=1, chains=[])
    step = (1 << 30) - 10
    for n in range(1, 6):  # each just inside the bound past the one before
        fake.data(b"job.", "fake", 1, [event(f"jump{n}", 1 + n * step, "fake")])
    fake.data(b"job.", "fake", 1, [event("end", 2 + 5 * step, "fake")])  # past the bound too
    fake.heartbeat("fake", epoch=1, head=2, chains=[])
    fake.data(b"job.", "fake", 1, [event("end", 3, "fake")])
    assert [e.data for e in got.wait()] == ["jump1", "end"]
    assert node(a).statistics().sequences_rejected == 5
