"""Node identity on the wire: names bound to CURVE keys, range checks, routes, credit.

Every peer that misbehaves here is a raw pyzmq socket sending hand-made
frames; the nodes are real buses on ipc:// endpoints.  Waits are on
conditions (``Node.wait``, ``poll``), never on sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import Broker, Event, EventBus, NoAnswerError
from actors._cluster.security import generate_keypair
from actors._cluster.wire import (
    CREDIT,
    ERROR,
    EVENTS,
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    HELLO,
    RECOVER,
    SYNC,
    Request,
    decode_request,
    encode_control,
    encode_data,
    encode_request,
    parse_sync_topic,
)
from actors._model.config import MIN_FRAME_BYTES
from tests._cluster_support import WAIT, node, request_endpoint
from tests._cluster_support import Until as Collector


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

    def answer_sync(self, origin: str, epoch: int, head: int, for_node: str | None = None) -> bytes:
        """Wait for a node's sync topic on the XPUB; answer it as ``origin``; return the topic."""
        while True:
            assert self.xpub.poll(int(WAIT * 1000)), "the node never subscribed"
            message = self.xpub.recv()
            sync = parse_sync_topic(message[1:])
            wanted = sync is not None and for_node in (None, sync[0])
            if message[:1] == b"\x01" and sync is not None and wanted:
                self.sync(message[1:], origin, epoch, head)
                return message[1:]

    def sync(self, topic: bytes, origin: str, epoch: int, head: int) -> None:
        """Send a sync reply on ``topic`` (a node's sync topic) as ``origin``."""
        sync = parse_sync_topic(topic)
        assert sync is not None
        body = {"node": origin, "epoch": epoch, "base": 1, "head": head}
        body.update({"for": sync[0], "round": sync[1]})
        self.xpub.send_multipart(encode_control(topic, SYNC, body))

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


# -- a peer's stream carries its own name only -----------------------------------------------


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "peer_names"])
def test_a_peers_stream_cannot_speak_for_another_node(
    tmp_path: Path,
    nodes: Callable[..., EventBus],
    fakes: Callable[..., FakePeer],
    curve: bool,
) -> None:
    extra: dict[str, Any] = {}
    fake_keys: Keys | None = None
    server: bytes | None = None
    if curve:  # the fake is authorised and holds its own name's key: "ghost" is bound to another
        keys = {n: generate_keypair() for n in ("a", "fake", "ghost")}
        extra = {
            "curve_public_key": keys["a"][0],
            "curve_secret_key": keys["a"][1],
            "authorized_keys": (keys["fake"][0],),
            "peer_names": {n: k[0] for n, k in keys.items()},
        }
        fake_keys, server = keys["fake"], keys["a"][0]
    a = nodes("a", listen=ipc(tmp_path, "a"), **extra)
    got = Collector("end")
    a.subscribe("job.*", got)
    a.flush()
    fake = fakes("fake", ipc(tmp_path, "fake"), request_endpoint(a), fake_keys, server)
    fake.hello()
    topic = fake.answer_sync("fake", epoch=1, head=1)
    # On its own stream, everything a node that is not there would send: taken for nothing.
    fake.sync(topic, "ghost", epoch=7, head=2)
    fake.heartbeat("ghost", epoch=7, head=2, chains=[])
    fake.data(b"job.", "ghost", 7, [event("forged", 1, "ghost"), event("forged", 2, "ghost")])
    fake.data(b"job.", "fake", 1, [event("end", 1, "fake")])
    assert [(e.origin, e.data) for e in got.wait()] == [("fake", "end")]
    stats = node(a).statistics()
    assert stats.frames_dropped == 3
    assert "ghost" not in stats.peers_alive


def test_a_peer_restarted_on_another_endpoint_is_followed_once_declared_dead(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    beats = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}
    a = nodes("a", listen=ipc(tmp_path, "a"), **beats)
    got = Collector("again")
    a.subscribe("job.*", got)
    a.flush()
    b = nodes("b", listen=ipc(tmp_path, "b1"), peers=(request_endpoint(a),), **beats)
    assert node(b).wait_for_peers(["a"], WAIT)
    b.publish("job.run", "first").get(timeout=WAIT)
    b.close(timeout=WAIT)
    # The same name on another endpoint: a keeps the old stream while it holds b
    # alive, then follows the new one and fetches what it missed there.
    b2 = nodes("b", listen=ipc(tmp_path, "b2"), peers=(request_endpoint(a),), **beats)
    assert node(b2).wait_for_peers(["a"], WAIT)
    b2.publish("job.run", "again").get(timeout=WAIT)
    assert [e.data for e in got.wait()] == ["first", "again"]
    assert node(a).statistics().frames_dropped == 0


# -- messages in a bound name need that name's key -----------------------------------------


def test_a_credit_in_a_bound_name_from_another_key_is_dropped(
    tmp_path: Path, nodes: Callable[..., EventBus], fakes: Callable[..., FakePeer]
) -> None:
    keys = {n: generate_keypair() for n in ("a", "b", "evil")}
    a = nodes(
        "a",
        listen=ipc(tmp_path, "a"),
        curve_public_key=keys["a"][0],
        curve_secret_key=keys["a"][1],
        authorized_keys=(keys["b"][0], keys["evil"][0]),
        peer_names={n: k[0] for n, k in keys.items()},
    )
    evil = fakes("evil", ipc(tmp_path, "evil"), request_endpoint(a), keys["evil"], keys["a"][0])
    grant = {"epoch": 0, "acked": 1 << 62, "window": 1 << 31, "prefixes": ["job."]}
    evil.request(CREDIT, "a", "b", "credit", grant)  # b's grant, from evil's key
    evil.request(CREDIT, "a", "evil", "credit", grant)  # its own: taken, after the other
    assert node(a).wait(lambda s: "evil" in s.credit_receivers, WAIT)
    stats = node(a).statistics()
    assert stats.credit_receivers == ("evil",)
    assert stats.frames_dropped == 1


# -- a broker binds names to keys -----------------------------------------------------


def curve_node(
    nodes: Callable[..., EventBus],
    name: str,
    broker: Broker,
    keys: dict[str, Keys],
    **extra: Any,
) -> EventBus:
    return nodes(
        name,
        peers=(broker.endpoint,),
        curve_public_key=keys[name][0],
        curve_secret_key=keys[name][1],
        authorized_keys=tuple(k[0] for k in keys.values()),
        peer_public_keys={broker.endpoint: keys["broker"][0]},
        **extra,
    )


def raw(
    ctx: zmq.Context[zmq.Socket[bytes]], kind: int, keys: Keys, server: bytes
) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey = keys
    sock.curve_serverkey = server
    return sock


@pytest.mark.parametrize("bound", [True, False], ids=["peer_names", "first-key"])
def test_a_broker_route_is_never_taken_by_another_key(
    tmp_path: Path, nodes: Callable[..., EventBus], bound: bool
) -> None:
    keys = {n: generate_keypair() for n in ("broker", "a", "b", "evil")}
    names = {n: keys[n][0] for n in ("a", "b", "evil")} if bound else {}
    with Broker(
        ipc(tmp_path, "broker"),
        curve_public_key=keys["broker"][0],
        curve_secret_key=keys["broker"][1],
        authorized_keys=[keys[n][0] for n in ("a", "b", "evil")],
        peer_names=names,
    ) as broker:
        a = curve_node(nodes, "a", broker, keys)
        b = curve_node(nodes, "b", broker, keys)
        assert node(b).wait_for_peers(["a"], WAIT)
        assert node(b).publish_remote("a", "job.run", "before", timeout=WAIT).origin == "a"
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            evil = raw(ctx, zmq.DEALER, keys["evil"], keys["broker"][0])
            evil.connect(broker.endpoint)
            grant = {"epoch": 0, "acked": 0, "window": 1, "prefixes": []}
            evil.send_multipart(encode_request(Request(CREDIT, "b", "a", "credit", grant)))
            # Answered once the broker handled the claim above (one connection, in order).
            evil.send_multipart(encode_request(Request(CREDIT, "nobody", "evil", "x", grant)))
            assert evil.poll(int(WAIT * 1000))
            assert evil.recv_multipart()[0] == bytes((1, ERROR))
            answer = node(b).publish_remote("a", "job.run", "after", timeout=WAIT)
            assert (answer.origin, answer.data) == ("a", "after")
            assert not evil.poll(0)  # nothing meant for a came to evil
            assert broker.impostors == 1
        finally:
            ctx.destroy(0)
        assert node(a).statistics().frames_dropped == 0


def bound_broker(tmp_path: Path, keys: dict[str, Keys], **extra: Any) -> Broker:
    """A CURVE broker that lets a, b and evil in and binds each name to its key."""
    return Broker(
        ipc(tmp_path, "broker"),
        curve_public_key=keys["broker"][0],
        curve_secret_key=keys["broker"][1],
        authorized_keys=[keys[n][0] for n in ("a", "b", "evil")],
        peer_names={n: keys[n][0] for n in ("a", "b", "evil")},
        **extra,
    )


def test_a_message_over_the_brokers_frames_under_a_bound_name_is_an_impostors(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    """The broker checked a message's size before its sender: an oversized "answer"
    under a's name from another key made it send b a refusal for a's answer (a
    guessed recovery id: b would ask again, and after four such, give the range up)."""
    keys = {n: generate_keypair() for n in ("broker", "a", "b", "evil")}
    with bound_broker(tmp_path, keys, max_frame_bytes=MIN_FRAME_BYTES) as broker:
        curve_node(nodes, "a", broker, keys)
        b = curve_node(nodes, "b", broker, keys)
        assert node(b).wait_for_peers(["a"], WAIT)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            evil = raw(ctx, zmq.DEALER, keys["evil"], keys["broker"][0])
            evil.connect(broker.endpoint)
            forged = Request(EVENTS, "b", "a", "r1", {}, b"x" * (2 * MIN_FRAME_BYTES))
            evil.send_multipart(encode_request(forged))
            # Answered once the broker handled the message above (one connection, in order).
            grant = {"epoch": 0, "acked": 0, "window": 1, "prefixes": []}
            evil.send_multipart(encode_request(Request(CREDIT, "nobody", "evil", "x", grant)))
            assert evil.poll(int(WAIT * 1000))
            assert evil.recv_multipart()[0] == bytes((1, ERROR))
            assert (broker.impostors, broker.oversized) == (1, 0)  # before: (0, 1)
        finally:
            ctx.destroy(0)


def test_a_broker_drops_stream_frames_of_a_bound_name_from_another_key(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    keys = {n: generate_keypair() for n in ("broker", "a", "b", "evil")}
    with bound_broker(tmp_path, keys) as broker:
        a = curve_node(nodes, "a", broker, keys)
        b = curve_node(nodes, "b", broker, keys)
        got = Collector("end")
        b.subscribe("job.*", got)
        assert node(b).wait_for_peers(["a"], WAIT)
        a.publish("job.run", "real").get(timeout=WAIT)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            sniff = raw(ctx, zmq.SUB, keys["evil"], keys["broker"][0])
            sniff.subscribe(HEARTBEAT_TOPIC)
            sniff.connect(broker.subscribe_endpoint)
            while True:  # a's epoch and head, from its heartbeat
                assert sniff.poll(int(WAIT * 1000))
                beat = json.loads(sniff.recv_multipart()[2])
                if beat["node"] == "a":
                    break
            fake = FakePeer.__new__(FakePeer)
            fake.ctx, fake.keys = ctx, keys["evil"]
            fake.xpub = raw(ctx, zmq.XPUB, keys["evil"], keys["broker"][0])
            fake.xpub.connect(broker.publish_endpoint)
            fake.answer_sync("evil", epoch=1, head=0, for_node="b")
            fake.heartbeat("evil", epoch=1, head=0, chains=[])
            forged = event("forged", beat["head"] + 1, "a")
            fake.data(b"job.", "a", beat["epoch"], [forged])
            # A header too short to read: dropped, and the broker goes on forwarding.
            fake.xpub.send_multipart([b"job.", b"\x01\x01", b"p"])
            fake.data(b"job.", "evil", 1, [event("end", 1, "evil")])
            events = got.wait()
            assert [(e.origin, e.data) for e in events] == [("a", "real"), ("evil", "end")]
            assert broker.impostors == 1
        finally:
            ctx.destroy(0)


# -- routes: a HELLO under a live peer's name is a fallback, never taken while it is heard --


def test_a_slow_answer_never_hands_a_live_peers_route_to_a_hello(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    b = nodes("b", listen=ipc(tmp_path, "b"))
    a = nodes("a", listen=ipc(tmp_path, "a"), peers=(request_endpoint(b),))
    gate = threading.Event()
    a.subscribe("slow.*", lambda _e: gate.wait(WAIT), capacity=1, overflow="block")
    assert node(b).wait_for_peers(["a"], WAIT)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        impostor = ctx.socket(zmq.DEALER)
        impostor.linger = 0
        impostor.connect(request_endpoint(b))
        body = {"kind": "node", "pub": ipc(tmp_path, "impostor"), "epoch": 1, "base": 1}
        impostor.send_multipart(encode_request(Request(HELLO, "", "a", "hello", body)))
        assert impostor.poll(int(WAIT * 1000))
        impostor.recv_multipart()  # b's WELCOME: the HELLO was handled
        # a's handler holds the first event, the second fills the subscription:
        # a publish from b now waits in a, and b's request goes unanswered.
        a.publish("slow.x", 0)
        a.publish("slow.x", 1)
        with pytest.raises(NoAnswerError):
            node(b).publish_remote("a", "slow.x", 2, timeout=0.5)
        gate.set()
        answer = node(b).publish_remote("a", "job.run", "next", timeout=WAIT)
        assert (answer.origin, answer.data) == ("a", "next")
        assert not impostor.poll(0)  # no request or credit of b went to the impostor
    finally:
        gate.set()
        ctx.destroy(0)


# -- recovery answers fit the asker's frame limit ---------------------------------------


def test_a_receiver_with_a_smaller_frame_limit_recovers_a_dropped_batch(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"), max_frame_bytes=4 << 20)
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),), max_frame_bytes=1 << 20)
    got = Collector("last")
    b.subscribe("job.*", got, capacity=1000)
    assert node(b).wait_for_peers(["a"], WAIT)
    batch = [Event(event_type="job.run", data=f"{i}:" + "y" * 20_000) for i in range(100)]
    for future in a.publish_many(batch):  # about 2 MB: one frame, over b's limit
        future.get(timeout=WAIT)
    a.publish("job.run", "last").get(timeout=WAIT)
    events = got.wait()
    assert [e.data.split(":")[0] for e in events[:-1]] == [str(i) for i in range(100)]
    stats = node(b).statistics()
    assert stats.frames_too_large >= 1
    assert (stats.gaps_recovered, stats.gaps_unrecovered) == (stats.gaps, 0)


# -- recovery from an origin in a crash loop ----------------------------------------------
#
# docs/cluster.md ("Recovery waits for the origin"): a range is given up only
# after RECOVER_ATTEMPTS tries that its origin, heard, left unanswered.  A try
# whose origin restarted before answering says nothing of whether the range
# is still held: the new incarnation is asked, and the try is not counted.
# An origin restarting faster than a try lasts (2 x heartbeat_timeout; a
# crash loop under Restart=always) used to have its range given up after
# four restarts, though its journal held it.

RESTARTS = 10  # far more than RECOVER_ATTEMPTS


def next_recover(fake: FakePeer) -> Request:
    """The next RECOVER the node sends the fake (credit grants and the like pass by)."""
    while True:
        assert fake.dealer.poll(int(WAIT * 1000)), "no recovery request came"
        message = decode_request(fake.dealer.recv_multipart(), 1 << 24)
        if message.kind == RECOVER:
            return message


def test_an_origin_restarting_before_it_answers_never_has_its_range_given_up(
    tmp_path: Path, nodes: Callable[..., EventBus], fakes: Callable[..., FakePeer]
) -> None:
    # A try lasts 2 x 2.0 s, and each restart comes within milliseconds: no
    # try runs out, so only a restart can end one.
    a = nodes("a", listen=ipc(tmp_path, "a"), heartbeat_interval=0.1, heartbeat_timeout=2.0)
    got = Collector("one")
    a.subscribe("job.*", got)
    a.flush()
    fake = fakes("fake", ipc(tmp_path, "fake"), request_endpoint(a))
    fake.hello()
    fake.answer_sync("fake", epoch=1, head=1)
    fake.data(b"job.", "fake", 1, [event("one", 1, "fake")])
    assert [e.data for e in got.wait()] == ["one"]
    fake.heartbeat("fake", epoch=1, head=5, chains=[["job.", 5]])  # 2..5 never came
    first = next_recover(fake)
    assert (first.body["after"], first.body["upto"]) == (1, 5)
    for epoch in range(2, 2 + RESTARTS):  # each incarnation dies before it answers
        fake.heartbeat("fake", epoch=epoch, head=5, chains=[["job.", 5]])
        again = next_recover(fake)
        assert again.rid == first.rid
        assert (again.body["after"], again.body["upto"]) == (1, 5)
    stats = node(a).statistics()
    assert stats.gaps_unrecovered == 0
    assert stats.recovery_retries == 0  # no try was counted
