"""Liveness and identity of peers against a second connection, a second path and a broker.

``docs/cluster.md``, "Node identity": what arrives on a connection kept
aside keeps nothing alive; the answer of a dialled node heard through a
broker adds its own stream at once; a node restarted on a new connection is
followed on its new stream; a broker answers a request for a closed
connection at once and never blocks.  Nodes are real buses (in this process
or ``tests/_node_child.py``), impostors raw pyzmq sockets; waits are on
conditions.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import Broker, EventBus
from actors._cluster.security import generate_keypair
from actors._cluster.wire import (
    CREDIT,
    ERROR,
    HELLO,
    QUERY,
    WELCOME,
    Request,
    decode_request,
    encode_request,
)
from tests._cluster_support import WAIT, Until, ipc, node, request_endpoint
from tests._support import pause, reaped, wait_for
from tests.test_cluster import start
from tests.test_cluster_fault_edges import BrokerChild
from tests.test_cluster_identity import FakePeer
from tests.test_cluster_routes import heartbeats, route_state
from tests.test_new_epoch_order import two_paths
from tests.test_origin_restart_loops import check_receivers

pytestmark = pytest.mark.slow

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}
GRANT = {"epoch": 0, "acked": 0, "window": 1000, "prefixes": [], "drop": False}


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def peer_streams(bus: EventBus, name: str) -> dict[str, Any]:
    """The stream ``bus`` follows for ``name`` and the one it keeps aside (its I/O thread)."""
    box: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        peer = node(bus)._bridge._peers.get(name)  # noqa: SLF001 - the state under attack
        box.append(
            {}
            if peer is None
            else {"alive": peer.alive, "stream": peer.stream, "aside": peer.candidate_stream}
        )
        done.set()

    node(bus).call_soon(read)
    assert done.wait(WAIT)
    return box[0]


class Crediting:
    """Send CREDIT under ``name`` on ``fake``'s DEALER until ``stop`` (one thread owns it)."""

    def __init__(self, fake: FakePeer, to: str, name: str) -> None:
        self.fake, self.to, self.name = fake, to, name
        self.stop = threading.Event()
        self.sent = 0
        self.received: list[Request] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):  # pacing: about one credit a heartbeat_interval
            self.fake.request(CREDIT, self.to, self.name, "credit", GRANT)
            self.sent += 1
            while self.fake.dealer.poll(0):
                self.received.append(decode_request(self.fake.dealer.recv_multipart(), 1 << 24))

    def close(self) -> list[str]:
        """Stop; return the kinds of what the node sent this connection (answers aside)."""
        self.stop.set()
        self.thread.join(WAIT)
        return [str(r.kind) for r in self.received if r.kind not in (WELCOME, ERROR)]


# -- (a) an impostor crediting on its own connection --------------------------------------


def test_credit_on_a_connection_kept_aside_neither_keeps_a_stalled_peer_alive_nor_hides_it(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # b has no listen: a hears it only by what it sends (its credit).  An
    # impostor greets a as b, then credits a as b on its own connection all
    # along.  While b is heard, nothing moves; once b stalls past
    # heartbeat_timeout, a declares it dead whatever the impostor sends; once
    # b runs again, a's requests still reach b and nothing reaches the impostor.
    # A heartbeat_timeout long enough that a loaded machine does not declare b dead
    # while it runs: only its stall below should.
    timing = {"heartbeat_interval": 0.1, "heartbeat_timeout": 2.0}
    a = nodes("a", listen=ipc(tmp_path, "a"), **timing)
    b = nodes("b", peers=(request_endpoint(a),), **timing)
    assert node(a).wait(lambda s: "b" in s.peers_alive, WAIT)
    assert node(a).publish_remote("b", "job.run", "first", timeout=WAIT).origin == "b"
    fake = FakePeer("b", ipc(tmp_path, "fake"), request_endpoint(a))
    crediting: Crediting | None = None
    try:
        assert decode_request(fake.hello(), 1 << 24).kind == WELCOME
        crediting = Crediting(fake, "a", "b")
        heartbeats(a, 50)  # 2.5 heartbeat_timeouts: b and the impostor both credit a
        assert "b" in node(a).statistics().peers_alive
        assert peer_streams(a, "b")["stream"] is None, peer_streams(a, "b")
        gate = threading.Event()

        def stall() -> None:
            gate.wait(WAIT)

        node(b).call_soon(stall)  # b stalls; its connection stays open
        try:
            dead = node(a).wait(lambda s: "b" not in s.peers_alive, WAIT)
            assert dead, f"the impostor's credit kept b alive: {route_state(a, 'b')}"
        finally:
            gate.set()
        # Declared dead, b is followed on the stream kept aside as well, and lives by
        # it from then on (docs/cluster.md): it counts as alive again once it greets
        # a again, which its own link does only if b declared a dead in its stall.
        # Whatever a counts it, a's requests still go to b's own connection.
        answer = node(a).publish_remote("b", "job.run", "again", timeout=WAIT)
        diverted = crediting.close()
        assert (answer.origin, diverted) == ("b", []), (
            f"b ran again: answered by {answer.origin}, sent to the impostor {diverted}; "
            f"{peer_streams(a, 'b')}, {route_state(a, 'b')}"
        )
    finally:
        if crediting is not None:
            crediting.close()
        fake.close()


# -- (a) CURVE: the answer of a dialled endpoint under a bound name from another key -------


def test_a_welcome_under_a_bound_name_from_another_key_is_refused_while_the_name_is_heard(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # a is heard by b through a CURVE broker; b also dials an endpoint whose
    # server key is evil's, which answers b's greeting as a.  peer_names binds
    # a to its key: the answer is refused, and b follows no stream from it.
    keys = {n: generate_keypair() for n in ("broker", "a", "b", "evil")}
    names = {n: keys[n][0] for n in ("a", "b")}
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        router, xpub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.XPUB)
        for sock in (router, xpub):
            sock.linger = 0
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = keys["evil"]
        fake, fake_pub = ipc(tmp_path, "fake"), ipc(tmp_path, "fake-pub")
        router.bind(fake)
        xpub.bind(fake_pub)
        with Broker(
            ipc(tmp_path, "broker"),
            curve_public_key=keys["broker"][0],
            curve_secret_key=keys["broker"][1],
            authorized_keys=[keys["a"][0], keys["b"][0]],
            peer_names=names,
        ) as broker:

            def curve(name: str, peers: dict[str, bytes]) -> dict[str, Any]:
                return {
                    "peers": tuple(peers),
                    "curve_public_key": keys[name][0],
                    "curve_secret_key": keys[name][1],
                    "peer_public_keys": peers,
                    "peer_names": names,
                    **FAST,
                }

            a = nodes("a", **curve("a", {broker.endpoint: keys["broker"][0]}))
            b = nodes(
                "b",
                **curve("b", {broker.endpoint: keys["broker"][0], fake: keys["evil"][0]}),
            )
            got = Until("after")
            b.subscribe("job.*", got)
            assert router.poll(int(WAIT * 1000)), "b never greeted the endpoint it dials"
            identity, *parts = router.recv_multipart()
            hello = decode_request(parts, 1 << 24)
            assert node(b).wait(lambda s: "a" in s.peers_alive, WAIT), "a not heard through it"
            body = {"kind": "node", "pub": fake_pub, "epoch": 1, "base": 1}
            body["key"] = keys["evil"][0].decode()
            welcome = Request(WELCOME, "b", "a", hello.rid, body)
            router.send_multipart([identity, *encode_request(welcome)])
            refused = node(b).wait(lambda s: s.hellos_refused >= 1, WAIT)
            streams = peer_streams(b, "a")
            a.publish("job.run", "after").get(timeout=WAIT)
            data = got.wait()
            assert (refused, streams["stream"], streams["aside"], streams["alive"]) == (
                True,
                None,
                None,
                True,
            ), f"a WELCOME as a from evil's key: refused {refused}; b's view of a {streams}"
            assert [e.data for e in data] == ["after"]
            assert [e.origin for e in data] == ["a"]
    finally:
        ctx.destroy(0)


# -- (b) a node restarted on a new connection, heard by what it sends ------------------------


# Regression: b never followed p's new stream.  b's credit found p's old connection closed
# (route lost), so p's new greeting took the route at once, while its stream was put aside
# until p was declared dead; p's credit on that route kept p alive, so that never came.
# Seen as: b's view of p {'alive': True, 'stream': None, 'aside': ('ipc://.../p2.sock.pub',
# None)}, no event of p at b.
def test_a_peer_restarted_after_its_old_connection_was_seen_closed_is_followed_on_its_stream(
    tmp_path: Path, nodes: Callable[..., EventBus], cluster: list[Any]
) -> None:
    # p dials b without listen (b hears it by its credit), is killed, and b's
    # next credit to it finds its connection closed.  p comes back, still within
    # heartbeat_timeout, on a new connection and with a stream: b must follow
    # that stream (at the latest once the p it knew is declared dead).
    beats = {"heartbeat_interval": 0.05, "heartbeat_timeout": 2.0}
    b = nodes("b", listen=ipc(tmp_path, "b"), **beats)
    got = Until(None)
    b.subscribe("job.*", got)
    config = {"name": "p", "peers": [request_endpoint(b)], "node": beats}
    first = start(cluster, **config)
    first.ask("peers b", "peers")
    assert node(b).wait(lambda s: "p" in s.peers_alive, WAIT)
    first.kill()
    lost = wait_for(lambda: "alive=True route=False" in route_state(b, "p"), WAIT)
    assert lost, f"b never saw p's connection closed: {route_state(b, 'p')}"
    second = start(cluster, **config, listen=ipc(tmp_path, "p2"))
    second.ask("peers b", "peers")
    box = {"n": 0}

    def arrived() -> bool:
        box["n"] += 1
        second.ask(f"publish job.run {box['n']} {box['n'] + 1} acked", "acked")
        return any(e.origin == "p" for e in got.events)

    followed = wait_for(arrived, 4 * beats["heartbeat_timeout"] + 4)
    assert followed, (
        f"p's new stream never followed by b: {peer_streams(b, 'p')}, {route_state(b, 'p')}, "
        f"b's live peers {node(b).statistics().peers_alive}"
    )
    second.close()


# -- (b) two paths: a dialled node also heard through a broker that stops, dies, restarts ----


def test_a_dialled_node_heard_through_a_broker_stopped_killed_and_restarted_mid_run(
    cluster: list[Any], tmp_path: Path
) -> None:
    _, a, b, d, hub = two_paths(cluster, tmp_path)
    endpoint = f"ipc://{tmp_path}/hub.sock"
    acknowledged: set[int] = set()

    def run(lo: int, hi: int, middle: Callable[[], None]) -> None:
        a.send(f"publish job.run {lo} {hi}")
        wait_for(lambda: any(x >= lo for o, _, x in list(b.got) if o == "a"), WAIT)
        middle()
        a.expect("published")
        acknowledged.update(range(lo, hi))

    run(0, 3_000, lambda: pause(hub.proc))  # stopped
    run(10_000, 13_000, lambda: os.kill(hub.proc.pid, signal.SIGCONT))
    run(20_000, 23_000, hub.kill)  # killed
    run(30_000, 31_000, lambda: None)  # no broker at all

    def restart() -> None:
        cluster.append(BrokerChild(tmp_path / "broker_child.py", endpoint))

    run(40_000, 43_000, restart)  # restarted at the same endpoint
    a.ask("publish job.run 900000 900100", "published")
    acknowledged.update(range(900_000, 900_100))
    check_receivers(b, d, acknowledged, 900_100)
    for n in (b, d, a):
        n.close()


# -- (c) the broker never blocks nor dies -------------------------------------------------


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, **options: int) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    for option, value in options.items():
        setattr(sock, option, value)
    sock.connect(endpoint)
    return sock


def _greet(sock: zmq.Socket[bytes], name: str) -> None:
    sock.send_multipart(encode_request(Request(HELLO, "", name, "hello", {"kind": "node"})))
    assert sock.poll(int(WAIT * 1000)), f"the broker never answered {name}'s greeting"
    assert decode_request(sock.recv_multipart(), 1 << 24).kind == WELCOME


def _ask(sock: zmq.Socket[bytes], to: str, sender: str, rid: str) -> None:
    body = {"event_types": ["job.run"]}
    sock.send_multipart(encode_request(Request(QUERY, to, sender, rid, body, b"x" * 512)))


def _send_all(sock: zmq.Socket[bytes], messages: list[Request]) -> None:
    """Send ``messages`` as fast as the broker reads them (a stalled broker fails the wait)."""
    for message in messages:
        assert sock.poll(int(WAIT * 1000), zmq.POLLOUT), "the broker stopped reading"
        sock.send_multipart(encode_request(message), zmq.NOBLOCK)


def _answers(sock: zmq.Socket[bytes], count: int) -> list[Request]:
    got: list[Request] = []
    while len(got) < count and sock.poll(int(WAIT * 1000)):
        got.append(decode_request(sock.recv_multipart(), 1 << 24))
    return got


def _refused_for(sock: zmq.Socket[bytes], to: str, sender: str) -> bool:
    """Ask ``to`` through the broker until an answer is ERROR (its connection seen closed)."""
    probes = itertools.count()

    def refused() -> bool:
        _ask(sock, to, sender, f"probe-{to}-{next(probes)}")
        return bool(sock.poll(200)) and decode_request(sock.recv_multipart(), 1 << 24).kind == ERROR

    return wait_for(refused, WAIT)


def test_a_broker_answers_and_serves_through_closed_connections_and_full_pipes(
    tmp_path: Path,
) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = Broker(ipc(tmp_path, "broker"))
    try:
        ep = broker.endpoint
        # t joined, then its connection closed: requests to it are answered ERROR at once.
        t = _dealer(ctx, ep)
        _greet(t, "t")
        t.close(0)
        r = _dealer(ctx, ep)
        assert _refused_for(r, "t", "r"), "no ERROR for a node whose connection closed"
        while r.poll(0):
            r.recv_multipart()  # late answers to the probes
        for batch in range(6):
            rids = {f"{batch}-{i}" for i in range(500)}
            for rid in sorted(rids):
                _ask(r, "t", "r", rid)
            answers = _answers(r, len(rids))
            assert {a.rid for a in answers} == rids, f"batch {batch}: {len(answers)} answers"
            assert {a.kind for a in answers} == {ERROR}
        # f joined and never reads: its pipe fills.  w floods f and closed t, never reading.
        f = _dealer(ctx, ep, rcvhwm=4)
        _greet(f, "f")
        w = _dealer(ctx, ep, rcvhwm=4, sndhwm=100_000)
        body = {"event_types": ["job.run"]}
        flood = [
            Request(QUERY, "f" if i % 2 else "t", "w", f"w-{i}", body, b"x" * 512)
            for i in range(10_000)
        ]
        _send_all(w, flood)
        # e answers what comes to it; q asks e, and asks for r after r's connection closed.
        e, q = _dealer(ctx, ep), _dealer(ctx, ep)
        _greet(e, "e")
        _greet(q, "q")
        r.close(0)
        _ask(q, "e", "q", "to-e")
        assert e.poll(int(WAIT * 1000)), "the broker stalled: e's request never came"
        asked = decode_request(e.recv_multipart(), 1 << 24)
        e.send_multipart(encode_request(Request(ERROR, "q", "e", asked.rid, {"error": "none"})))
        replies = _answers(q, 1)
        assert [(x.rid, x.sender) for x in replies] == [("to-e", "e")]
        # A reply to the closed r is dropped; a request to it is answered ERROR.
        e.send_multipart(encode_request(Request(ERROR, "r", "e", "late", {"error": "late"})))
        assert _refused_for(e, "r", "e"), "no ERROR for a requester whose connection closed"
        late = _dealer(ctx, ep)
        _greet(late, "late")  # still serving after it all
    finally:
        broker.close()
        ctx.destroy(0)
    threads = broker._threads  # noqa: SLF001 - that close stopped them
    assert not any(thread.is_alive() for thread in threads)
