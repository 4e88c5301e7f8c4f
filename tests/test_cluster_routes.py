"""The node-identity and routing rules of the bridge against impostors (docs/cluster.md).

The nodes are real buses on ipc:// endpoints (or child processes); every
impostor is a raw pyzmq DEALER.  Waits are on conditions (``Node.wait``,
``poll``, heartbeats counted on a SUB), never on sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import Broker, EventBus, EventQuery, NoAnswerError, NotConnectedError
from actors._cluster.security import generate_keypair
from actors._cluster.wire import (
    CREDIT,
    ERROR,
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    HELLO,
    WELCOME,
    Request,
    decode_request,
    encode_control,
    encode_request,
)
from tests._cluster_support import WAIT, Until, ipc, node, request_endpoint
from tests._support import reaped, wait_for
from tests.test_cluster import Node
from tests.test_cluster_identity import FakePeer, event

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}
ANSWER = 5.0
"""Bound on a request that should be answered at once (reaching it is the failure)."""


class Impostor:
    """A raw DEALER (no CURVE unless ``keys``) that greets a node under someone else's name."""

    def __init__(
        self, target: str, keys: tuple[bytes, bytes] | None = None, server: bytes | None = None
    ) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        if keys is not None:
            self.dealer.curve_publickey, self.dealer.curve_secretkey = keys
            assert server is not None
            self.dealer.curve_serverkey = server
        self.dealer.connect(target)

    def hello(self, name: str, body: dict[str, Any]) -> Request:
        """Greet as ``name``; return the node's answer (WELCOME or ERROR)."""
        self.dealer.send_multipart(encode_request(Request(HELLO, "", name, "hello", body)))
        assert self.dealer.poll(int(WAIT * 1000)), "no answer to the greeting"
        return decode_request(self.dealer.recv_multipart(), 1 << 24)

    def received(self) -> list[Request]:
        """What the node sent this DEALER since (without waiting)."""
        got = []
        while self.dealer.poll(0):
            got.append(decode_request(self.dealer.recv_multipart(), 1 << 24))
        return got

    def close(self) -> None:
        self.ctx.destroy(0)


@pytest.fixture
def impostors() -> Iterator[Callable[..., Impostor]]:
    made: list[Impostor] = []

    def make(*args: Any, **kwargs: Any) -> Impostor:
        impostor = Impostor(*args, **kwargs)
        made.append(impostor)
        return impostor

    yield make
    for impostor in made:
        impostor.close()


@pytest.fixture
def children() -> Iterator[list[Node]]:
    yield from reaped()


def heartbeats(bus: EventBus, count: int) -> None:
    """Return once ``bus`` published ``count`` heartbeats (a clock the test can wait on)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    endpoint = bus.endpoints["publish"]
    assert endpoint is not None
    try:
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.subscribe(HEARTBEAT_TOPIC)
        sub.connect(endpoint)
        for _ in range(count):
            assert sub.poll(int(WAIT * 1000)), "no heartbeat"
            sub.recv_multipart()
    finally:
        ctx.destroy(0)


def route_state(bus: EventBus, name: str) -> str:
    """Describe the route and candidate ``bus`` keeps for ``name`` (read on its I/O thread)."""
    box: list[str] = []
    done = threading.Event()

    def read() -> None:
        peer = node(bus)._bridge._peers.get(name)  # noqa: SLF001 - the state under attack
        box.append(
            "no peer"
            if peer is None
            else f"peer {name}: alive={peer.alive} route={peer.route is not None} "
            f"candidate={peer.candidate is not None}"
        )
        done.set()

    node(bus).call_soon(read)
    assert done.wait(WAIT)
    return box[0]


_KINDS = {18: "RECOVER", 19: "QUERY", 20: "CORRELATED", 23: "PUBLISH", 24: "METRICS", 25: "CREDIT"}


def requests_to(impostor: Impostor) -> list[str]:
    """The kinds of what the node sent ``impostor`` besides answers to its greetings."""
    return [
        _KINDS.get(r.kind, str(r.kind))
        for r in impostor.received()
        if r.kind not in (WELCOME, ERROR)
    ]


# -- a live node without a stream: heard on its request connection only --------------------


def test_a_live_node_without_a_stream_keeps_its_route_past_heartbeat_timeout(
    tmp_path: Path, nodes: Callable[..., EventBus], impostors: Callable[..., Impostor]
) -> None:
    # c has no listen: a hears it only on its request connection (its CREDIT
    # every heartbeat).  The docs call such a node alive while it is heard
    # within heartbeat_timeout, and a HELLO never re-points a live peer.
    a = nodes("a", listen=ipc(tmp_path, "a"), **FAST)
    c = nodes("c", peers=(request_endpoint(a),), **FAST)
    got = Until("real")
    c.subscribe("job.*", got)  # c grants a credit every heartbeat: it is heard
    assert node(c).wait_for_peers(["a"], WAIT)
    assert node(a).publish_remote("c", "job.run", "first", timeout=WAIT).origin == "c"
    heartbeats(a, 40)  # 2 s at 0.05 s: four heartbeat_timeouts, c heard all along
    impostor = impostors(request_endpoint(a))
    assert impostor.hello("c", {"kind": "node"}).kind == WELCOME
    try:
        answer = node(a).publish_remote("c", "job.run", "real", timeout=ANSWER)
    except NoAnswerError:
        answer = None
    diverted = requests_to(impostor)
    assert diverted == [], f"requests meant for the live node c went to the impostor: {diverted}"
    assert answer is not None
    assert answer.origin == "c"
    assert got.wait()[-1].data == "real"


# -- the node at a dialled endpoint, heard first through a broker ----------------------------


# Regression: b dials a and joins a broker, and a's heartbeat reached b through the broker
# before a's answer to b's greeting.  b put a's own stream aside, to be followed only once
# a was declared dead, while what a sent on b's link (its credit, every heartbeat) kept a
# alive: with the broker stopped, a's events never reached b, and a, out of b's credit,
# held its publishers until they failed.  The answer on b's own link gives b a's stream.
def test_the_node_a_link_dials_heard_first_through_a_broker_is_followed_on_its_stream(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with Broker(ipc(tmp_path, "broker")) as broker:
            # Node a, played with raw sockets: its ROUTER, its stream, its way into the broker.
            router, xpub, relay = ctx.socket(zmq.ROUTER), ctx.socket(zmq.XPUB), ctx.socket(zmq.PUB)
            for sock in (router, xpub, relay):
                sock.linger = 0
            router.bind(ipc(tmp_path, "a"))
            xpub.bind(ipc(tmp_path, "a-pub"))
            relay.connect(broker.publish_endpoint)
            b = nodes("b", peers=(broker.endpoint, ipc(tmp_path, "a")), **FAST)
            assert router.poll(int(WAIT * 1000)), "b never greeted a"
            identity, *parts = router.recv_multipart()
            hello = decode_request(parts, 1 << 24)
            beat = {"node": "a", "epoch": 1, "base": 1, "head": 0, "chains": []}

            def heard() -> bool:
                relay.send_multipart(encode_control(HEARTBEAT_TOPIC, HEARTBEAT, beat))
                return "a" in node(b).statistics().peers_alive

            assert wait_for(heard, WAIT), "a's heartbeat never reached b through the broker"
            pub = {"kind": "node", "pub": ipc(tmp_path, "a-pub"), "epoch": 1, "base": 1}
            welcome = Request(WELCOME, "b", "a", hello.rid, pub)
            router.send_multipart([identity, *encode_request(welcome)])
            # From now on a speaks to b only on b's link: its credit, as a live node does.
            grant = {"epoch": 0, "acked": 0, "window": 1000, "prefixes": [], "drop": False}
            credit = encode_request(Request(CREDIT, "b", "a", "credit", grant))

            def followed() -> bool:
                router.send_multipart([identity, *credit])
                return xpub.poll(50) != 0  # b subscribed to a's stream

            assert wait_for(followed, WAIT), f"b never followed a's stream: {route_state(b, 'a')}"
            b.close(timeout=10)
    finally:
        ctx.destroy(0)


# Regression: a node heard only by what it sends (no stream followed) restarted on a new
# connection and greeted with its stream: that stream was put aside until the node it
# replaced was declared dead, but the new incarnation's own credit, on the connection put
# aside, kept the old one alive, so the new stream was never followed.
def test_what_comes_on_a_connection_kept_aside_does_not_keep_the_known_peer_alive(
    tmp_path: Path, nodes: Callable[..., EventBus], impostors: Callable[..., Impostor]
) -> None:
    b = nodes("b", listen=ipc(tmp_path, "b"), **FAST)
    grant = {"epoch": 0, "acked": 0, "window": 1000, "prefixes": [], "drop": False}
    first = impostors(request_endpoint(b))  # a's first incarnation: heard by its credit

    def alive() -> bool:
        first.dealer.send_multipart(encode_request(Request(CREDIT, "b", "a", "c", grant)))
        return "a" in node(b).statistics().peers_alive

    assert wait_for(alive, WAIT)
    second = FakePeer("a", ipc(tmp_path, "a2"), request_endpoint(b))  # restarted, with a stream
    try:
        assert decode_request(second.hello(), 1 << 24).kind == WELCOME

        def followed() -> bool:
            second.request(CREDIT, "b", "a", "c", grant)
            return second.xpub.poll(50) != 0  # b subscribed to the new stream

        assert wait_for(followed, WAIT), f"never followed: {route_state(b, 'a')}"
    finally:
        second.close()


# -- a live node known through a broker ---------------------------------------------------


def test_a_hello_never_re_points_a_live_peer_heard_through_a_broker(
    tmp_path: Path, nodes: Callable[..., EventBus], impostors: Callable[..., Impostor]
) -> None:
    # a listens and is linked to a broker; b is heard through the broker (its
    # stream on the broker's shared SUB, its requests through the broker).  A
    # hand-made HELLO under b's name on a's own request port must not take b.
    with Broker(ipc(tmp_path, "broker")) as broker:
        a = nodes("a", listen=ipc(tmp_path, "a"), peers=(broker.endpoint,))
        b = nodes("b", peers=(broker.endpoint,))
        got = Until("real")
        b.subscribe("job.*", got)
        assert node(a).wait_for_peers(["b"], WAIT)
        assert node(a).publish_remote("b", "job.run", "first", timeout=WAIT).origin == "b"
        impostor = impostors(request_endpoint(a))
        welcome = impostor.hello("b", {"kind": "node", "epoch": 1, "base": 1})
        assert welcome.kind == WELCOME
        assert "b" in node(a).statistics().peers_alive
        try:
            answer = node(a).publish_remote("b", "job.run", "real", timeout=ANSWER)
        except NoAnswerError:
            answer = None
        diverted = requests_to(impostor)
        assert diverted == [], (
            f"requests meant for the live node b went to the impostor: {diverted}"
        )
        assert answer is not None
        assert answer.origin == "b"
        assert got.wait()[-1].data == "real"


def test_a_hello_never_feeds_events_under_a_live_peer_heard_through_a_broker(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # The same greeting, with a stream endpoint: a must not follow it as b's
    # stream while b is alive ("changes neither the stream endpoint ..."), so
    # nothing sent there under b's name reaches a's subscribers.
    with Broker(ipc(tmp_path, "broker")) as broker:
        a = nodes("a", listen=ipc(tmp_path, "a"), peers=(broker.endpoint,))
        b = nodes("b", peers=(broker.endpoint,))
        got = Until("real")
        a.subscribe("job.*", got)
        assert node(a).wait_for_peers(["b"], WAIT)
        assert node(b).wait(lambda s: "a" in s.credit_receivers, WAIT)  # a's credit reached b
        fake = FakePeer("b", ipc(tmp_path, "fake"), request_endpoint(a))
        try:
            assert decode_request(fake.hello(), 1 << 24).kind == WELCOME
            followed = fake.xpub.poll(int(ANSWER * 1000))  # a subscribing there: it follows it
            if followed:
                fake.answer_sync("b", epoch=1, head=1)
                fake.heartbeat("b", epoch=1, head=1, chains=[])
                fake.data(b"job.", "b", 1, [event("forged", 1, "b")])
            b.publish("job.run", "real").get(timeout=WAIT)
            arrived = got.done.wait(WAIT)
        finally:
            fake.close()
        assert (arrived, got.data) == (True, ["real"]), (
            f"a followed the impostor's stream as b's: {followed}; b's event arrived: {arrived}; "
            f"delivered {got.data}; a's stats {node(a).statistics()}"
        )


# -- a stale candidate outlives the peer it replaced ----------------------------------------


def test_a_hello_kept_aside_does_not_cut_off_a_peer_that_comes_back(
    tmp_path: Path,
    nodes: Callable[..., EventBus],
    impostors: Callable[..., Impostor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An impostor greets a under b's name while b is alive: kept aside.  a
    # stalls (its I/O thread paused longer than its heartbeat_timeout, not
    # b's) and so declares b dead; b never went anywhere and, having never
    # declared a dead, does not greet it again.  Once a runs, b is heard and
    # its requests must reach it ("What it cannot do is cut an established
    # peer off with one HELLO"; the impostor may hold the name only "while
    # it is dead").
    a = nodes("a", listen=ipc(tmp_path, "a"), **FAST)
    b = nodes(
        "b",
        listen=ipc(tmp_path, "b"),
        peers=(request_endpoint(a),),
        heartbeat_interval=0.05,
        heartbeat_timeout=60.0,
    )
    got_at_a = Until("after")
    a.subscribe("job.*", got_at_a)
    got_at_b = Until("real")
    b.subscribe("job.*", got_at_b)
    assert node(b).wait_for_peers(["a"], WAIT)
    assert node(a).wait_for_peers(["b"], WAIT)
    impostor = impostors(request_endpoint(a))
    ghost = ipc(tmp_path, "ghost")  # nobody binds it: the impostor only wants the route
    assert (
        impostor.hello("b", {"kind": "node", "pub": ghost, "epoch": 1, "base": 1}).kind == WELCOME
    )
    caplog.set_level(logging.WARNING, logger="actors.bridge")
    for _ in range(5):  # until a declared b dead while stalled (one try almost always does)
        gate = threading.Event()

        def stall(gate: threading.Event = gate) -> None:
            gate.wait(WAIT)

        node(a).call_soon(stall)  # a stalls
        heartbeats(b, 30)  # 1.5 s of b's heartbeats a does not read
        gate.set()
        if node(a).wait(lambda _s: "b is not responding" in caplog.text, 2.0):
            break
    assert "b is not responding" in caplog.text
    # b is alive and never restarted: a must hear it and ask it again.
    b.publish("job.run", "after").get(timeout=WAIT)
    heard = got_at_a.done.wait(ANSWER)
    try:
        answer = node(a).publish_remote("b", "job.run", "real", timeout=ANSWER)
    except (NoAnswerError, NotConnectedError):
        answer = None
    diverted = requests_to(impostor)
    alive = node(a).statistics().peers_alive
    assert (heard, answer is not None, diverted, "b" in alive) == (True, True, [], True), (
        f"after a's stall: b's events heard at a: {heard}; a's request answered by b: "
        f"{answer is not None}; sent to the impostor: {diverted}; a's live peers: {alive}"
    )


# -- CURVE: a name bound to a key ---------------------------------------------------------


def curve_pair(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> tuple[EventBus, dict[str, tuple[bytes, bytes]]]:
    keys = {n: generate_keypair() for n in ("a", "b", "evil")}
    a = nodes(
        "a",
        listen=ipc(tmp_path, "a"),
        curve_public_key=keys["a"][0],
        curve_secret_key=keys["a"][1],
        authorized_keys=(keys["b"][0], keys["evil"][0]),
        peer_names={n: k[0] for n, k in keys.items()},
        **FAST,
    )
    return a, keys


def curve_b(
    tmp_path: Path, nodes: Callable[..., EventBus], a: EventBus, keys: dict[str, Any]
) -> EventBus:
    return nodes(
        "b",
        listen=ipc(tmp_path, "b"),
        peers=(request_endpoint(a),),
        curve_public_key=keys["b"][0],
        curve_secret_key=keys["b"][1],
        authorized_keys=(keys["a"][0],),
        peer_public_keys={request_endpoint(a): keys["a"][0]},
        **FAST,
    )


def test_a_bound_name_greeted_as_a_broker_from_another_key_is_refused(
    tmp_path: Path, nodes: Callable[..., EventBus], impostors: Callable[..., Impostor]
) -> None:
    # peer_names binds b to its key: a HELLO under b from evil's key must be
    # refused (ERROR, counted) whatever its body says, and take no route:
    # requests to b, not yet heard, must not go to evil.
    a, keys = curve_pair(tmp_path, nodes)
    evil = impostors(request_endpoint(a), keys["evil"], keys["a"][0])
    answer = evil.hello("b", {"kind": "broker"})
    with contextlib.suppress(NotConnectedError, NoAnswerError):
        node(a).publish_remote("b", "job.run", "secret", timeout=1.0)
    diverted = requests_to(evil)
    refused = node(a).statistics().hellos_refused
    assert (answer.kind, refused, diverted) == (ERROR, 1, []), (
        f"a HELLO under the bound name b from evil's key, body kind 'broker': answered with "
        f"kind {answer.kind} (ERROR is {ERROR}), hellos_refused {refused}, requests meant for b "
        f"sent to evil: {diverted}"
    )


@pytest.mark.parametrize("kind", ["node", "broker"])
def test_a_dead_bound_peer_is_not_re_pointed_by_another_key(
    tmp_path: Path,
    nodes: Callable[..., EventBus],
    impostors: Callable[..., Impostor],
    kind: str,
) -> None:
    # b (bound to its key) was heard, then declared dead: a HELLO under b from
    # another key is refused and takes neither its route nor its liveness.
    a, keys = curve_pair(tmp_path, nodes)
    b = curve_b(tmp_path, nodes, a, keys)
    assert node(b).wait_for_peers(["a"], WAIT)
    assert node(a).wait_for_peers(["b"], WAIT)
    b.close(timeout=WAIT)
    assert node(a).wait(lambda s: "b" not in s.peers_alive, WAIT)
    evil = impostors(request_endpoint(a), keys["evil"], keys["a"][0])
    answer = evil.hello("b", {"kind": kind, "pub": ipc(tmp_path, "evil"), "epoch": 1, "base": 1})
    with contextlib.suppress(NotConnectedError, NoAnswerError):
        node(a).publish_remote("b", "job.run", "secret", timeout=1.0)
    diverted = requests_to(evil)
    alive = node(a).statistics().peers_alive
    assert (answer.kind, diverted, "b" in alive) == (ERROR, [], False), (
        f"answer kind {answer.kind} (ERROR is {ERROR}), sent to evil: {diverted}, live: {alive}"
    )


# -- a peer restarted several times quickly ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("timeout", "places"),
    [(60.0, ["p1"] * 4), (0.5, ["p1", "p1", "p2", "p1", "p2", "p2"])],
    ids=["in-place-never-dead", "moving-fast-beats"],
)
def test_a_peer_killed_and_restarted_again_and_again_is_asked_each_time(
    tmp_path: Path,
    nodes: Callable[..., EventBus],
    children: list[Node],
    timeout: float,
    places: list[str],
) -> None:
    # Each incarnation greets a on a new connection, before or after a declared
    # the last one dead; a query to p must reach the incarnation that lives.
    beats = {"heartbeat_interval": 0.05, "heartbeat_timeout": timeout}
    a = nodes("a", listen=ipc(tmp_path, "a"), **beats)
    config = {"name": "p", "peers": [request_endpoint(a)], "path": str(tmp_path / "p")}
    for n, place in enumerate(places):
        p = Node(**config, listen=ipc(tmp_path, place), node=beats)
        children.append(p)
        p.ask("peers a", "peers")  # a welcomed this incarnation
        p.ask(f"publish job.run {n} {n + 1} acked", "acked")
        try:
            found = a.query(EventQuery(event_types=("job.*",)), node="p", timeout=WAIT)
        except (NotConnectedError, NoAnswerError) as exc:
            pytest.fail(f"incarnation {n} at {place}: {exc!r}; a's {route_state(a, 'p')}")
        assert [e.data for e in found] == list(range(n + 1)), f"incarnation {n}"
        if n < len(places) - 1:
            p.kill()
    p.close()
