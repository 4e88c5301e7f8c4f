"""The stream sockets of a node: one per followed peer, what each subscribes, what they cost.

The nodes are real buses on ipc:// endpoints; hand-made greetings come
from raw pyzmq DEALERs.  Waits are on conditions (``Node.wait``, events,
``poll``), never on sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from actors import EventBus
from actors._cluster.wire import HELLO, Request, encode_request
from tests._cluster_support import WAIT, Collector, ipc, node, request_endpoint

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}


def on_io_thread(bus: EventBus, fn: Callable[[Any], Any]) -> Any:
    """Return ``fn(bridge)`` run on the bridge's I/O thread (the state it alone writes)."""
    box: list[Any] = []
    ran = threading.Event()
    bridge = node(bus)._bridge  # noqa: SLF001 - the bridge's own sockets are under test

    def run() -> None:
        box.append(fn(bridge))
        ran.set()

    node(bus).call_soon(run)
    assert ran.wait(WAIT)
    return box[0]


def stream_sockets(bus: EventBus) -> int:
    return int(on_io_thread(bus, lambda bridge: len(bridge._streams)))  # noqa: SLF001


def hello_flood(tmp_path: Path, bus: EventBus, count: int) -> None:
    """Greet ``bus`` under ``count`` names, each with a stream endpoint no one binds."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(request_endpoint(bus))
        for n in range(count):
            body = {"kind": "node", "pub": ipc(tmp_path, f"nowhere{n}")}
            dealer.send_multipart(encode_request(Request(HELLO, "", f"flood{n}", "h", body)))
            assert dealer.poll(int(WAIT * 1000)), f"no welcome for greeting {n}"
            dealer.recv_multipart()
    finally:
        ctx.destroy(0)


# -- what unknown names can cost ------------------------------------------------------------


def test_a_hello_flood_past_the_socket_limit_leaves_old_and_new_peers_followed(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"), peers=(ipc(tmp_path, "d"),), **FAST)
    got = Collector(5)
    a.subscribe("job.*", got)
    a.flush()
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),), **FAST)
    assert node(b).wait_for_peers(["a"], WAIT)
    b.publish("job.run", "b-before").get(timeout=WAIT)
    hello_flood(tmp_path, a, 1100)  # more names than a ZeroMQ context has sockets
    assert stream_sockets(a) <= 600
    # A peer that greets a after the flood is followed once there is room;
    # a peer a greets itself (configured) is followed at once.
    c = nodes("c", listen=ipc(tmp_path, "c"), peers=(request_endpoint(a),), **FAST)
    d = nodes("d", listen=ipc(tmp_path, "d"), **FAST)
    assert node(c).wait_for_peers(["a"], WAIT)
    assert node(a).wait(lambda s: {"c", "d"} <= set(s.synced_peers), WAIT)
    b.publish("job.run", "b-after").get(timeout=WAIT)
    c.publish("job.run", "c").get(timeout=WAIT)
    d.publish("job.run", "d").get(timeout=WAIT)
    b.publish("job.run", "b-end").get(timeout=WAIT)
    data = [(e.origin, e.data) for e in got.wait()]
    assert sorted(data) == [
        ("b", "b-after"),
        ("b", "b-before"),
        ("b", "b-end"),
        ("c", "c"),
        ("d", "d"),
    ]
    assert node(a).statistics().frames_dropped == 0
    # The sockets of streams never heard on are closed: the flood leaves none.
    assert node(a).wait(lambda _: stream_sockets(a) == 3, WAIT)
