"""A message part far over ``max_frame_bytes`` never reaches a node or a broker.

ZeroMQ reads a whole message before the application sees it, so without a
cap one forged length prefix makes a node buffer as much as the sender
likes.  Every socket that takes messages from the network has ZeroMQ drop
the connection of a part over twice ``max_frame_bytes`` or 64 MiB, whichever
is larger (``docs/cluster.md``, "Size limit"); below that the node still
reads the frame, drops it and counts it (or answers a request with why).
Real sockets, observed from the sender's side: its connection is dropped
(a monitor event), nothing else is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from actors import Broker, EventBus
from actors._cluster.limits import inbound_cap
from actors._cluster.wire import CREDIT, HEARTBEAT_TOPIC, VERSION
from actors._model.config import MIN_FRAME_BYTES
from tests._cluster_support import ipc, request_endpoint
from tests._support import WAIT
from tests.test_cluster_identity import FakePeer
from tests.test_wire_attacks import (
    Ctx,
    dropped,
    honest_flow,
    mesh,
    metrics_answered,
    raw,
)

CAP = inbound_cap(MIN_FRAME_BYTES)  # 64 MiB: twice MIN_FRAME_BYTES is less


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    made: Ctx = zmq.Context()
    yield made
    made.destroy(0)


def watched(context: Ctx, kind: int, endpoint: str) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A raw socket connected to ``endpoint``, and a monitor of its connection's events."""
    sock = context.socket(kind)
    sock.linger = 0
    sock.sndhwm = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    sock.connect(endpoint)
    return sock, monitor


def next_event(monitor: zmq.Socket[bytes]) -> int:
    assert monitor.poll(int(WAIT * 1000)), "no connection event"
    return int(recv_monitor_message(monitor)["event"])


def credit(size: int) -> list[bytes]:
    """A CREDIT request to ``a`` whose last part is ``size`` bytes."""
    return [bytes((VERSION, CREDIT)), b"a", b"evil", b"r", b"x" * size]


def test_a_node_drops_the_connection_of_a_part_over_its_cap_and_serves_on(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    a, _, log = mesh(tmp_path, nodes, max_frame_bytes=MIN_FRAME_BYTES)
    dealer, monitor = watched(ctx, zmq.DEALER, request_endpoint(a))
    assert next_event(monitor) == zmq.EVENT_CONNECTED
    metrics_answered(dealer, "warm")
    before = dropped(a)
    # Over the frame limit, under the cap: read, dropped, counted; the connection stays.
    dealer.send_multipart(credit(MIN_FRAME_BYTES + 1))
    metrics_answered(dealer, "under the cap")
    assert dropped(a) == before + 1
    assert monitor.poll(0) == 0, "a part under the cap cost its connection"
    # Over the cap: ZeroMQ drops the connection before a reads it whole.
    dealer.send_multipart(credit(CAP + 1))
    assert next_event(monitor) == zmq.EVENT_DISCONNECTED
    assert dropped(a) == before + 1  # it never reached a
    honest_flow(a, log, "after")
    fresh = raw(ctx, zmq.DEALER, request_endpoint(a))
    metrics_answered(fresh, "another client")


def test_a_node_drops_a_publisher_that_sends_a_part_over_its_cap(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    """The same on the stream: a node's SUB drops a publisher's connection for such a part."""
    a, _, log = mesh(tmp_path, nodes, max_frame_bytes=MIN_FRAME_BYTES)
    rogue = FakePeer("rogue", ipc(tmp_path, "rogue-pub"), request_endpoint(a))
    try:
        monitor = rogue.xpub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        rogue.hello()  # a follows the rogue's stream: its SUB connects to the XPUB
        assert next_event(monitor) == zmq.EVENT_ACCEPTED
        assert rogue.xpub.poll(int(WAIT * 1000)), "a never subscribed"
        rogue.xpub.recv()  # a subscription of a's: what is sent now reaches it
        rogue.xpub.send_multipart([HEARTBEAT_TOPIC, b"x" * (CAP + 1)])
        assert next_event(monitor) == zmq.EVENT_DISCONNECTED
        honest_flow(a, log, "after")
    finally:
        rogue.ctx.destroy(0)


def test_a_broker_drops_the_connection_of_a_part_over_its_cap(tmp_path: Path, ctx: Ctx) -> None:
    with Broker(ipc(tmp_path, "hub"), max_frame_bytes=MIN_FRAME_BYTES) as broker:
        dealer, monitor = watched(ctx, zmq.DEALER, broker.endpoint)
        assert next_event(monitor) == zmq.EVENT_CONNECTED
        dealer.send_multipart(credit(CAP + 1))
        assert next_event(monitor) == zmq.EVENT_DISCONNECTED
        assert broker.dropped == 0  # it never reached the broker
