"""The stream sockets of a node: one per followed peer, what each subscribes, what they cost.

The nodes are real buses on ipc:// endpoints; hand-made greetings come
from raw pyzmq DEALERs.  Waits are on conditions (``Node.wait``, events,
``poll``), never on sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import EventBus, EventQuery
from actors._cluster.stream_io import MAX_UNCONFIRMED_STREAMS
from actors._cluster.wire import (
    HEARTBEAT_TOPIC,
    HELLO,
    WELCOME,
    Request,
    decode_request,
    encode_request,
)
from tests._cluster_support import WAIT, Collector, ipc, node, request_endpoint
from tests._support import reaped
from tests.test_cluster import Node
from tests.test_cluster_identity import FakePeer, event

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


def a_heartbeats(bus: EventBus) -> Iterator[None]:
    """Yield at each heartbeat ``bus`` publishes (a clock the test can wait on)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.subscribe(HEARTBEAT_TOPIC)
        sub.connect(bus.endpoints["publish"])
        while True:
            assert sub.poll(int(WAIT * 1000)), "no heartbeat"
            sub.recv_multipart()
            yield
    finally:
        ctx.destroy(0)


def streams_waiting(bus: EventBus) -> int:
    return int(on_io_thread(bus, lambda bridge: len(bridge._stream_queue)))  # noqa: SLF001


def hello_flood(tmp_path: Path, bus: EventBus, count: int, *, closing: bool = False) -> None:
    """Greet ``bus`` under ``count`` names, each with a stream endpoint no one binds.

    ``closing``: ``bus`` closes meanwhile, so the greetings stop at the first unanswered.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(request_endpoint(bus))
        for n in range(count):
            body = {"kind": "node", "pub": ipc(tmp_path, f"nowhere{n}")}
            dealer.send_multipart(encode_request(Request(HELLO, "", f"flood{n}", "h", body)))
            if closing and not dealer.poll(1000):
                return
            # Its WELCOME, not the CREDIT the node may grant the new name: only
            # then has the node taken this greeting, so the flood is over for
            # it when this returns (a later greeting never overtakes it).
            while True:
                if not dealer.poll(int(WAIT * 1000)):
                    # A closing bus may have answered with CREDIT and then closed.
                    assert closing, f"no welcome for greeting {n}"
                    return
                if decode_request(dealer.recv_multipart(), 1 << 24).kind == WELCOME:
                    break
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
    # c waits behind up to 256 queued names, 64 each heartbeat_timeout: give a
    # loaded machine room.
    assert node(a).wait(lambda s: {"c", "d"} <= set(s.synced_peers), 4 * WAIT)
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
    # Once nothing waits for room, the flood leaves at most the sockets of
    # the names last opened and never heard on (closed only when needed).
    assert node(a).wait(lambda _: streams_waiting(a) == 0, WAIT)
    assert stream_sockets(a) <= 3 + MAX_UNCONFIRMED_STREAMS


def test_a_peer_silent_past_heartbeat_timeout_keeps_its_stream_while_nothing_waits(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"), **FAST)
    got = Collector(1)
    a.subscribe("job.*", got)
    a.flush()
    fake = FakePeer("slow", ipc(tmp_path, "slow"), request_endpoint(a))
    try:
        silent_then_speaking(a, fake, got)
    finally:
        fake.close()


def silent_then_speaking(a: EventBus, fake: FakePeer, got: Collector) -> None:
    fake.hello()
    # Not a word on its stream until a has declared it dead: a paused peer.
    assert node(a).wait(lambda s: "slow" in s.peers_alive, WAIT)
    assert node(a).wait(lambda s: "slow" not in s.peers_alive, WAIT)
    # Twice ``heartbeat_timeout`` more, counted in a's own heartbeats: past any expiry.
    beats = a_heartbeats(a)
    for _ in range(1 + int(2 * FAST["heartbeat_timeout"] / FAST["heartbeat_interval"])):
        next(beats)
    beats.close()
    fake.answer_sync("slow", epoch=1, head=1)
    fake.heartbeat("slow", epoch=1, head=1, chains=[])
    fake.data(b"job.", "slow", 1, [event("late", 1, "slow")])
    assert [(e.origin, e.data) for e in got.wait()] == [("slow", "late")]
    assert stream_sockets(a) == 1


@pytest.mark.parametrize("persistent", [False, True], ids=["plain", "journal"])
def test_a_client_gone_for_long_is_forgotten_and_a_publisher_is_not(
    tmp_path: Path, nodes: Callable[..., EventBus], persistent: bool
) -> None:
    beats = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.2}
    a = nodes("a", listen=ipc(tmp_path, "a"), persistent=persistent, **beats)
    got = Collector(1)
    a.subscribe("job.*", got)
    a.flush()
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),), **beats)
    client = nodes("client", peers=(request_endpoint(a),), **beats)  # no listen: no stream
    assert node(b).wait_for_peers(["a"], WAIT)
    assert node(client).wait_for_peers(["a"], WAIT)
    b.publish("job.run", "from b").get(timeout=WAIT)
    assert [e.data for e in got.wait()] == ["from b"]
    client.close(timeout=WAIT)
    b.close(timeout=WAIT)

    def known(bus: EventBus) -> set[str]:
        return set(on_io_thread(bus, lambda bridge: set(bridge._peers)))  # noqa: SLF001

    assert node(a).wait(lambda _: "client" not in known(a), WAIT)
    assert "b" in known(a)  # followed, and its events were received: kept for its return


# -- what every stream socket subscribes ------------------------------------------------------


def test_every_stream_socket_old_and_new_carries_the_current_prefixes_and_round(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    job = a.subscribe("job.*", lambda _: None)
    a.flush()
    peers = {n: nodes(n, listen=ipc(tmp_path, n), peers=(request_endpoint(a),)) for n in "bcd"}
    assert node(a).wait_for_peers(list(peers), WAIT)
    # New prefixes and a removed one while three streams are followed, then a
    # fourth peer: each socket must hold x. and y. only, and the current round.
    got = Collector(4 * 2)
    a.subscribe("x.*", got)
    a.subscribe("y.*", got)
    job.unsubscribe()
    peers["e"] = nodes("e", listen=ipc(tmp_path, "e"), peers=(request_endpoint(a),))
    assert node(a).wait_for_peers(list(peers), WAIT)
    before = node(a).statistics().events_received
    for name, bus in peers.items():
        for event_type in ("job.run", "x.run", "y.run"):
            bus.publish(event_type, name).get(timeout=WAIT)
        bus.flush(WAIT)
    data = sorted((e.origin, e.event_type) for e in got.wait())
    assert data == sorted((n, t) for n in peers for t in ("x.run", "y.run"))
    assert node(a).statistics().events_received - before == 8


# -- a peer restarted again and again -------------------------------------------------------


@pytest.fixture
def children() -> Iterator[list[Node]]:
    yield from reaped()


@pytest.mark.slow
def test_a_publisher_killed_and_restarted_in_place_and_elsewhere_loses_nothing(
    tmp_path: Path, nodes: Callable[..., EventBus], children: list[Node]
) -> None:
    # Each incarnation may come before or after a declared the last one dead.
    beats = FAST
    a = nodes("a", listen=ipc(tmp_path, "a"), **beats)
    got = Collector(250)
    a.subscribe("job.*", got)
    a.flush()
    config = {"name": "p", "peers": [request_endpoint(a)], "path": str(tmp_path / "p")}
    for n, place in enumerate(["p1", "p1", "p2", "p2", "p3"]):
        p = Node(**config, listen=ipc(tmp_path, place), node=beats)
        children.append(p)
        if n == 0:  # what a is owed starts once its subscription reached p
            assert node(a).wait_for_peers(["p"], WAIT)
        p.ask(f"publish job.run {n * 50} {n * 50 + 50} acked", "acked")
        if n < 4:
            p.kill()  # acknowledged: journaled, perhaps never sent
    assert [e.data for e in got.wait()] == list(range(250))  # each once, in order
    assert node(a).statistics().frames_dropped == 0
    assert node(a).wait(lambda _: stream_sockets(a) == 1, WAIT)
    p.close()


@pytest.mark.slow
def test_a_peer_declared_dead_then_restarted_is_asked_over_its_new_connection(
    tmp_path: Path, nodes: Callable[..., EventBus], children: list[Node]
) -> None:
    # Requests to a peer (recovery, queries, publish_remote) go over the
    # connection it greeted on; a restarted node greets on a new one.  Once
    # its old incarnation was declared dead, the new greeting must take over,
    # or every request (a recovery of what the old one acknowledged) is lost.
    a = nodes("a", listen=ipc(tmp_path, "a"), **FAST)
    config = {"name": "p", "peers": [request_endpoint(a)], "path": str(tmp_path / "p")}
    p = Node(**config, listen=ipc(tmp_path, "p"), node=FAST)
    children.append(p)
    assert node(a).wait_for_peers(["p"], WAIT)
    p.ask("publish job.run 0 3 acked", "acked")
    p.kill()
    assert node(a).wait(lambda s: "p" not in s.peers_alive, WAIT)
    p = Node(**config, listen=ipc(tmp_path, "p"), node=FAST)
    children.append(p)
    assert node(a).wait(lambda s: "p" in s.peers_alive, WAIT)
    found = a.query(EventQuery(event_types=("job.*",)), node="p", timeout=WAIT)
    assert [e.data for e in found] == [0, 1, 2]
    p.close()


@pytest.mark.slow
def test_a_node_without_a_stream_restarted_before_declared_dead_is_asked_over_its_new_connection(
    tmp_path: Path, nodes: Callable[..., EventBus], children: list[Node]
) -> None:
    # A node without listen is heard only on its request connection; restarted
    # within heartbeat_timeout, its old route is kept (a greeting is not
    # authenticated) and the new one taken once the old connection is gone.
    slow = {"heartbeat_interval": 0.05, "heartbeat_timeout": 60.0}
    a = nodes("a", listen=ipc(tmp_path, "a"), **slow)
    config = {"name": "c", "peers": [request_endpoint(a)], "pattern": "job.*", "node": slow}
    c = Node(**config)
    children.append(c)
    c.ask("peers a", "peers")
    c.kill()
    c = Node(**config)
    children.append(c)
    c.ask("peers a", "peers")  # a welcomed the new incarnation: it knows its route
    a.publish_remote("c", "job.run", 7, timeout=WAIT)
    assert c.wait_got(1) == [("c", "job.run", 7)]  # published on c
    c.close()


# -- closing ----------------------------------------------------------------------------------


def test_a_node_closes_while_streams_open_and_peers_come_and_go(
    tmp_path: Path, nodes: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"), **FAST)
    a.subscribe("job.*", lambda _: None)
    flooding = threading.Thread(
        target=hello_flood, args=(tmp_path, a, 100_000), kwargs={"closing": True}, daemon=True
    )
    peers = [nodes(n, listen=ipc(tmp_path, n), peers=(request_endpoint(a),)) for n in "bc"]
    assert node(peers[0]).wait_for_peers(["a"], WAIT)
    flooding.start()
    peers[1].close(timeout=WAIT)  # a peer leaves, another comes, as a closes
    nodes("b", listen=ipc(tmp_path, "b2"), peers=(request_endpoint(a),))
    a.close(timeout=WAIT)
    thread = node(a)._bridge._thread  # noqa: SLF001 - the I/O thread must have ended
    assert thread is not None
    thread.join(WAIT)
    assert not thread.is_alive()
    assert not [r for r in caplog.records if r.exc_info is not None]
    flooding.join(2 * WAIT)  # the flood ends at its first unanswered greeting
    assert not flooding.is_alive()
