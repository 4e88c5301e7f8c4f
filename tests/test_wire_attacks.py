"""A node's and a ``Broker``'s ZeroMQ sockets as an attacker on the network meets them.

Raw pyzmq sockets (and raw ZMTP over the ipc socket file, for frames cut by a
hang-up) send what ``docs/wire.md`` defines in shapes no node sends.  After
each attack an honest publish must reach an honest subscriber, what was
refused must be counted as the docs say, and what the attacker made the node
hold must go once it leaves.  Every wait is on a condition; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import Broker, Event, EventBus
from actors._cluster.security import generate_keypair
from actors._cluster.wire import (
    CREDIT,
    ERROR,
    HEARTBEAT_TOPIC,
    HELLO,
    METRICS,
    REQUEST_KINDS,
    VERSION,
    WELCOME,
    Request,
    decode_request,
    encode_data,
    encode_request,
)
from actors._model.config import MIN_FRAME_BYTES
from tests._cluster_support import ipc, node, request_endpoint
from tests._support import WAIT, wait_for
from tests.test_cluster_identity import FakePeer, curve_node, event
from tests.test_cluster_identity import raw as curve_socket

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}
Ctx = zmq.Context[zmq.Socket[bytes]]


class Log:
    """A handler keeping ``(origin, data)`` of each event; waits on a condition."""

    def __init__(self) -> None:
        self.got: list[tuple[str | None, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, e: Event) -> None:
        with self._cond:
            self.got.append((e.origin, e.data))
            self._cond.notify_all()

    def wait_for(self, item: tuple[str, Any]) -> list[tuple[str | None, Any]]:
        with self._cond:
            assert self._cond.wait_for(lambda: item in self.got, WAIT), self.got[-10:]
            return list(self.got)


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    made: Ctx = zmq.Context()
    yield made
    made.destroy(0)


def raw(ctx: Ctx, kind: int, endpoint: str, **options: int) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    for name, value in {"linger": 0, **options}.items():
        setattr(sock, name, value)
    sock.connect(endpoint)
    return sock


def honest_flow(origin: EventBus, log: Log, tag: str, n: int = 20) -> None:
    """``origin`` publishes ``n`` events; ``log`` (its subscriber) gets each once, in order."""
    name = node(origin).name
    for future in origin.publish_many([Event(event_type="t.x", data=[tag, i]) for i in range(n)]):
        future.get(timeout=WAIT)
    got = log.wait_for((name, [tag, n - 1]))
    mine = [d for o, d in got if o == name and d[0] == tag]
    assert mine == [[tag, i] for i in range(n)], mine


def pair(
    nodes: Callable[..., EventBus], a_at: dict[str, Any], b_at: dict[str, Any], **config: Any
) -> tuple[EventBus, EventBus, Log]:
    """``a`` and ``b`` joined (``a_at``/``b_at``: listen, peers); ``b`` follows ``t.*``."""
    a = nodes("a", **a_at, **FAST, **config)
    b = nodes("b", **b_at, **FAST, **config)
    log = Log()
    b.subscribe("t.*", log)
    assert node(b).wait_for_peers(["a"], WAIT)
    honest_flow(a, log, "before")
    return a, b, log


def mesh(
    tmp_path: Path, nodes: Callable[..., EventBus], **config: Any
) -> tuple[EventBus, EventBus, Log]:
    """``a`` listening, ``b`` dialling it."""
    listen = ipc(tmp_path, "a")
    return pair(nodes, {"listen": listen}, {"peers": (listen,)}, **config)


def hub(broker: Broker, nodes: Callable[..., EventBus]) -> tuple[EventBus, EventBus, Log]:
    """``a`` and ``b`` joined through ``broker``."""
    return pair(nodes, {"peers": (broker.endpoint,)}, {"peers": (broker.endpoint,)})


def dropped(bus: EventBus) -> int:
    return node(bus).statistics().frames_dropped


def metrics_answered(dealer: zmq.Socket[bytes], rid: str) -> None:
    """Ask ``a`` its figures; once answered, all sent before was handled (one connection)."""
    dealer.send_multipart(encode_request(Request(METRICS, "a", "fake", rid, {})))
    while True:
        assert dealer.poll(int(WAIT * 1000)), f"no answer to {rid}"
        parts = dealer.recv_multipart()
        if parts[3] == rid.encode():
            return


def sniff_heartbeat(sub: zmq.Socket[bytes], origin: str) -> tuple[int, dict[str, Any]]:
    """Return (size in bytes, body) of the next heartbeat of ``origin`` on ``sub``."""
    while True:
        assert sub.poll(int(WAIT * 1000)), "no heartbeat"
        parts = sub.recv_multipart()
        body = json.loads(parts[2])
        if body["node"] == origin:
            return sum(len(p) for p in parts), body


def test_every_request_kind_with_a_wrong_part_count_is_dropped_once_and_counted(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    a, _, log = mesh(tmp_path, nodes)
    dealer = raw(ctx, zmq.DEALER, request_endpoint(a), sndhwm=0)
    metrics_answered(dealer, "warm")
    before = dropped(a)
    forged: list[list[bytes]] = []
    for kind in sorted(REQUEST_KINDS):
        head = bytes((VERSION, kind))
        body = b'{"epoch": 1, "acked": 0, "window": 1}'
        forged += [
            [head],  # the header alone
            [head, b"a", b"fake", b"r"],  # four parts
            [head, b"a", b"fake", b"r", body, b"", b""],  # seven parts
            [head[:1], b"a", b"fake", b"r", body],  # the header cut to its version
            [head + b"\x00", b"a", b"fake", b"r", body],  # a header a byte too long
        ]
    forged.append([bytes((VERSION, CREDIT))] + [b""] * 100_000)  # a hundred thousand parts
    forged.append([b""] * 100_001)
    for parts in forged:
        dealer.send_multipart(parts)
    metrics_answered(dealer, "after")
    assert dropped(a) == before + len(forged)
    assert node(a).statistics().frames_too_large == 0
    honest_flow(a, log, "after")


Followed = tuple[EventBus, Log, FakePeer, bytes]


@pytest.fixture
def followed(tmp_path: Path, nodes: Callable[..., EventBus]) -> Iterator[Followed]:
    """``a`` (following ``job.*``), a hand-made peer ``fake`` it synced with, a's sync topic."""
    a = nodes("a", listen=ipc(tmp_path, "a"), **FAST)
    got = Log()
    a.subscribe("job.*", got)
    a.flush()
    fake = FakePeer("fake", ipc(tmp_path, "fake"), request_endpoint(a))
    try:
        fake.hello()
        yield a, got, fake, fake.answer_sync("fake", epoch=7, head=0)
    finally:
        fake.close()


def still_follows(fake: FakePeer, got: Log, data: str, sequence: int) -> None:
    """The fake origin's next frame within range is delivered, and nothing else was."""
    fake.heartbeat("fake", epoch=7, head=sequence, chains=[])
    fake.data(b"job.", "fake", 7, [event(data, sequence, "fake", "job.run")])
    assert got.wait_for(("fake", data)) == [("fake", data)]


def test_stream_frames_with_huge_part_counts_or_numbers_past_64_bits_are_dropped_once(
    followed: Followed,
) -> None:
    a, got, fake, _ = followed
    before = node(a).statistics()
    hb = [HEARTBEAT_TOPIC, bytes((VERSION, 2))]
    shapes = [
        [b"job."] + [b""] * 100_000,  # a hundred thousand parts
        [b"job.", b"\x01\x01"],  # two
        [*hb, b"{}", b"", b""],  # five
    ]
    fields = ['"head": 18446744073709551616', '"head": -1', '"epoch": -7', '"chains": [1]']
    # A journal's numbering (docs/wire.md): out of range or not an integer, never taken.
    fields += ['"numbering": -1', '"numbering": 18446744073709551616', '"numbering": "j1"']
    fields += ['"numbering": 1.5', '"numbering": null']
    for field in fields:
        body = '{"node": "fake", "epoch": 7, "base": 1, "head": 1, ' + field + "}"
        shapes.append([*hb, body.encode()])  # the last value of a repeated key wins
    for parts in shapes:
        fake.xpub.send_multipart(parts)
    still_follows(fake, got, "ok", 1)
    after = node(a).statistics()
    assert after.frames_dropped == before.frames_dropped + len(shapes)
    assert after.events_delivered == before.events_delivered + 1


def test_heartbeats_and_sync_replies_with_a_head_at_2_63_are_counted_as_rejected(
    followed: Followed,
) -> None:
    a, got, fake, topic = followed
    before = node(a).statistics()
    # Well formed, but at or past 2^63: "Reject (count in sequences_rejected ...)
    # heartbeats or sync replies whose head is at or past 2^63" (docs/wire.md, 4).
    fake.heartbeat("fake", epoch=7, head=1 << 63, chains=[])
    fake.heartbeat("fake", epoch=7, head=(1 << 64) - 1, chains=[])
    fake.heartbeat("fake", epoch=7, head=1, chains=[["job.", 1 << 63]])
    fake.sync(topic, "fake", epoch=7, head=1 << 63)
    still_follows(fake, got, "ok", 1)  # read after the four above: one stream, in order
    after = node(a).statistics()
    assert after.sequences_rejected == before.sequences_rejected + 4
    assert after.frames_dropped == before.frames_dropped


def test_credit_with_numbers_out_of_range_is_dropped_and_edge_values_harm_no_receiver(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    a, b, log = mesh(tmp_path, nodes)
    sniff = raw(ctx, zmq.SUB, node(a).endpoints["publish"] or "")
    sniff.subscribe(HEARTBEAT_TOPIC)
    epoch = sniff_heartbeat(sniff, "a")[1]["epoch"]
    dealer = raw(ctx, zmq.DEALER, request_endpoint(a))
    metrics_answered(dealer, "warm")
    before = dropped(a)
    fields = ['"window": -1', '"acked": -1', '"epoch": -1', '"epoch": 18446744073709551616']
    fields += ['"window": 18446744073709551616', '"window": 1.5', '"prefixes": [1]']
    fields += ['"drop": "yes"', '"epoch": null']
    refused = ['{"epoch": 1, "acked": 0, "window": 1, ' + f + "}" for f in fields]
    for body in refused:  # the last value of a repeated key wins (JSON as Python reads it)
        dealer.send_multipart([bytes((VERSION, CREDIT)), b"a", b"ghost", b"c", body.encode()])
    # In range, however odd: taken (without CURVE anyone may grant under b's name;
    # a name that never acknowledges holds t. only until heartbeat_timeout).
    edges = [
        ("b", {"epoch": epoch, "acked": (1 << 64) - 1, "window": (1 << 64) - 1}),
        ("b", {"epoch": (1 << 64) - 1, "acked": 1 << 63, "window": 1 << 63}),
        ("ghost", {"epoch": epoch, "acked": 0, "window": 0}),
    ]
    for sender, grant in edges:
        credit: dict[str, Any] = {**grant, "prefixes": ["t."], "drop": False}
        dealer.send_multipart(encode_request(Request(CREDIT, "a", sender, "credit", credit)))
    metrics_answered(dealer, "after")
    assert dropped(a) == before + len(refused)
    honest_flow(a, log, "after", 300)
    assert node(a).wait(lambda s: "ghost" not in s.credit_receivers, WAIT)
    stats = node(b).statistics()
    assert stats.gaps == stats.gaps_recovered + stats.gaps_unrecovered + stats.gaps_open
    assert stats.sequences_rejected == 0


def test_credit_under_thousands_of_made_up_names_leaves_no_bookkeeping_behind(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    a, b, log = mesh(tmp_path, nodes)
    dealer = raw(ctx, zmq.DEALER, request_endpoint(a), sndhwm=0)
    flood = [f"ghost{i}" for i in range(2000)]
    for name in flood:
        grant = {"epoch": 0, "acked": 0, "window": 1, "prefixes": ["zz."], "drop": False}
        dealer.send_multipart(encode_request(Request(CREDIT, "a", name, "credit", grant)))

    def known() -> set[str]:
        return set(node(b).remote_metrics("a", WAIT)[1])

    # Known once taken (a answers the flood's own connection as it can: its
    # credit to each made-up name fills that pipe; no one else's).
    assert wait_for(lambda: set(flood) <= known(), WAIT)
    honest_flow(a, log, "during")
    dealer.close(0)
    # Silent for 12 x heartbeat_timeout, with nothing to keep: forgotten
    # ("Gone peers are forgotten", docs/cluster.md); their credit goes first.
    assert node(a).wait(lambda s: not set(flood) & set(s.credit_receivers), WAIT)
    # 12 x heartbeat_timeout is 6 s of the clock: give a loaded machine room.
    assert wait_for(lambda: not set(flood) & known(), 3 * WAIT), len(set(flood) & known())
    assert "b" in known()
    honest_flow(a, log, "after")
    assert dropped(a) == 0


def test_a_subscription_flood_from_many_connections_is_let_go_when_they_leave(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    a, _, log = mesh(tmp_path, nodes)
    publish = node(a).endpoints["publish"] or ""
    sniff = raw(ctx, zmq.SUB, publish)
    sniff.subscribe(HEARTBEAT_TOPIC)
    honest = {c[0] for c in sniff_heartbeat(sniff, "a")[1]["chains"]}
    assert honest == {"t."}
    before = dropped(a)
    flood = [raw(ctx, zmq.XSUB, publish) for _ in range(20)]
    for i, sock in enumerate(flood):
        for j in range(200):
            sock.send(b"\x01flood.%d.%d." % (i, j))
        for j in range(20):  # sync topics of made-up names: each answered once
            sock.send(b"\x01\xffsync\x00ghost%d\x00%d" % (i, j))
    want = 20 * 200 + 1

    def chains() -> int:
        return len(sniff_heartbeat(sniff, "a")[1]["chains"])

    assert wait_for(lambda: chains() == want, WAIT)
    honest_flow(a, log, "during")
    for sock in flood:
        sock.close(0)
    # Gone with their connections: a keeps no chain, and announces none, for them.
    assert wait_for(lambda: chains() == len(honest), WAIT)
    assert {c[0] for c in sniff_heartbeat(sniff, "a")[1]["chains"]} == honest
    honest_flow(a, log, "after")
    assert dropped(a) == before


def test_a_heartbeat_stays_within_max_frame_bytes_whatever_a_stranger_subscribes(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    a, b, log = mesh(tmp_path, nodes, max_frame_bytes=MIN_FRAME_BYTES)
    publish = node(a).endpoints["publish"] or ""
    sniff = raw(ctx, zmq.SUB, publish)
    sniff.subscribe(HEARTBEAT_TOPIC)
    stranger = raw(ctx, zmq.XSUB, publish)
    for i in range(40):  # 40 prefixes of 3 KB: longer than any event type, never kept
        stranger.send(b"\x01zz%02d" % i + b"x" * 3000)
    # 150 prefixes of 1 KB (an event type's length in UTF-8 can reach them):
    # 150 KB of chains, more than a frame of MIN_FRAME_BYTES holds.
    wide = {f"yy{i:03d}" + "y" * 995 for i in range(150)}
    for prefix in sorted(wide):
        stranger.send(b"\x01" + prefix.encode())
    announced: set[str] = set()

    def every_chain_announced() -> bool:
        size, body = sniff_heartbeat(sniff, "a")
        # "A sender never builds a frame over max_frame_bytes" (docs/wire.md, section 5).
        assert size <= MIN_FRAME_BYTES
        listed = {str(c[0]) for c in body["chains"]}
        assert not any(p.startswith("zz") for p in listed)
        announced.update(listed & wide)
        return announced == wide

    # The chains that do not fit one heartbeat are announced by the next ones, in turn.
    assert wait_for(every_chain_announced, WAIT)
    # A receiver drops only frames over its limit: none of a's heartbeats
    # (b read those sent before this data frame: one stream, in order).
    honest_flow(a, log, "after")
    assert node(b).statistics().frames_too_large == 0


@pytest.mark.parametrize("where", ["node", "broker"])
def test_a_peer_that_never_reads_its_stream_or_its_answers_holds_back_no_one(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx, where: str
) -> None:
    with contextlib.ExitStack() as stack:
        if where == "node":
            a, b, log = mesh(tmp_path, nodes)
            stream, requests = node(a).endpoints["publish"] or "", request_endpoint(a)
        else:
            broker = stack.enter_context(Broker(ipc(tmp_path, "hub")))
            a, b, log = hub(broker, nodes)
            stream, requests = broker.subscribe_endpoint, broker.endpoint
        stuck = raw(ctx, zmq.SUB, stream, rcvhwm=1)
        for prefix in (b"", b"t.", HEARTBEAT_TOPIC):
            stuck.subscribe(prefix)
        deaf = raw(ctx, zmq.DEALER, requests, rcvhwm=1, sndhwm=0)
        for i in range(2000):
            deaf.send_multipart(encode_request(Request(METRICS, "a", "deaf", f"m{i}", {})))
        honest_flow(a, log, "flood", 3000)
        # The request channel still serves an honest peer, both ways.
        assert node(b).publish_remote("a", "t.remote", "r", timeout=WAIT).origin == "a"
        assert log.wait_for(("a", "r"))
        assert node(a).wait(lambda s: s.send_queued == 0, WAIT)
        assert node(a).statistics().frames_unsent == 0


# -- half frames, lying lengths, hang-ups (raw ZMTP) -------------------------------------------

GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)


def zmtp_frame(data: bytes, *, more: bool = False) -> bytes:
    flags = 1 if more else 0
    if len(data) < 256:
        return bytes((flags, len(data))) + data
    return bytes((flags | 2,)) + struct.pack(">Q", len(data)) + data


def zmtp_connect(endpoint: str, socket_type: bytes | None) -> socket.socket:
    """A raw connection to an ipc endpoint; with ``socket_type``, past the NULL handshake."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(endpoint.removeprefix("ipc://"))
    if socket_type is not None:
        sock.sendall(GREETING)
        seen = b""
        while len(seen) < len(GREETING):  # the peer's greeting: it speaks ZMTP 3 too
            chunk = sock.recv(len(GREETING) - len(seen))
            assert chunk, "the peer hung up during the greeting"
            seen += chunk
        body = b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
        sock.sendall(b"\x04" + bytes((len(body),)) + body)
    return sock


# Not ZMTP 3: ZeroMQ reads it as ZMTP 1.0 (a first byte other than 0xFF is a
# length), so it is well framed garbage: whole messages of the wrong shape.
GARBAGE = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256))


def lying_lengths(head: bytes) -> list[tuple[bool, bytes]]:
    """(handshake first, bytes) of each hang-up cutting short a message starting ``head``."""
    return [
        (False, GREETING[:30]),  # a greeting cut short
        (True, b""),  # a handshake, then nothing
        (True, zmtp_frame(head, more=True) + b"\x03" + struct.pack(">Q", 1 << 20) + b"x" * 4096),
        (True, zmtp_frame(head, more=True) + b"\x02" + struct.pack(">Q", 1 << 63) + b"xyz"),
        (True, zmtp_frame(head, more=True) + zmtp_frame(b"a" * 1000)[:500]),
        (True, b"\x02" + struct.pack(">Q", (1 << 63) + 1)),  # a length past 2^63, no part
    ]


def hang_up_on(endpoint: str, attacks: list[tuple[bool, bytes]], socket_type: bytes) -> None:
    for handshake, data in attacks:
        sock = zmtp_connect(endpoint, socket_type if handshake else None)
        try:
            sock.sendall(data)
        except OSError:
            pass  # hung up on already: fine
        finally:
            sock.close()


TARGETS = {  # where, as what a raw client connects there, the first part of what it sends
    "node request": (b"DEALER", bytes((VERSION, CREDIT))),
    "node publish": (b"XSUB", b"\x01t."),
    "broker endpoint": (b"DEALER", bytes((VERSION, CREDIT))),
    "broker publish_endpoint": (b"XPUB", b"t."),
    "broker subscribe_endpoint": (b"SUB", b"\x01t."),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_half_sent_frames_and_lying_lengths_then_a_hang_up(
    tmp_path: Path, nodes: Callable[..., EventBus], target: str
) -> None:
    socket_type, head = TARGETS[target]
    where, name = target.split()
    with contextlib.ExitStack() as stack:
        if where == "node":
            a, b, log = mesh(tmp_path, nodes)
            endpoint = node(a).endpoints[name] or ""
        else:
            broker = stack.enter_context(Broker(ipc(tmp_path, "hub")))
            a, b, log = hub(broker, nodes)
            endpoint = getattr(broker, name)
        before = dropped(a), dropped(b)
        hang_up_on(endpoint, lying_lengths(head), socket_type)
        honest_flow(a, log, "after")
        assert node(b).publish_remote("a", "t.remote", "r", timeout=WAIT).origin == "a"
        assert (dropped(a), dropped(b)) == before  # nothing cut short became a message
        # Whole messages of garbage: dropped and counted where they arrive.
        hang_up_on(endpoint, [(False, GARBAGE)], socket_type)
        if where == "node" or name == "subscribe_endpoint":  # the broker passes it upstream
            assert node(a).wait(lambda s: s.frames_dropped > before[0], WAIT)
        honest_flow(a, log, "garbage")
        assert node(a).publish_remote("b", "t.remote", "r2", timeout=WAIT).origin == "b"
        if where == "broker":
            assert all(thread.is_alive() for thread in broker._threads)  # noqa: SLF001


def test_a_broker_passes_no_malformed_credit_and_forwards_in_range_ones_unchanged(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, log = hub(broker, nodes)
        dealer = raw(ctx, zmq.DEALER, broker.endpoint, sndhwm=0)
        before = dropped(a), dropped(b)
        shapes = [
            [bytes((VERSION, CREDIT))] + [b"a"] * 100_000,  # a hundred thousand parts
            *([bytes((VERSION, k)), b"a", b"evil", b"r"] for k in sorted(REQUEST_KINDS)),
            [bytes((VERSION, CREDIT)), b"a", b"evil", b"r", b'{"window": 18446744073709551616}'],
            [bytes((VERSION, CREDIT)), b"a", b"evil", b"r", b'{"window": 1e999}'],
        ]
        for parts in shapes:
            dealer.send_multipart(parts)
        # Well formed, a number the node refuses: forwarded as it is, dropped there.
        negative = b'{"epoch": 1, "acked": 0, "window": -1, "prefixes": ["t."]}'
        dealer.send_multipart([bytes((VERSION, CREDIT)), b"a", b"evil", b"credit", negative])
        probe = Request(METRICS, "nobody", "evil", "probe", {})
        dealer.send_multipart(encode_request(probe))
        assert dealer.poll(int(WAIT * 1000))
        answer = decode_request(dealer.recv_multipart(), 1 << 20)
        assert (answer.kind, answer.rid) == (ERROR, "probe")
        assert node(a).wait(lambda s: s.frames_dropped >= before[0] + 1, WAIT)
        # A stream frame of a hundred thousand parts through the broker's plain
        # proxy: each subscriber drops it once.
        pub = raw(ctx, zmq.XPUB, broker.publish_endpoint, sndhwm=0)
        assert pub.poll(int(WAIT * 1000))  # the broker passed its subscriptions on
        pub.send_multipart([b"t.x"] + [b""] * 100_000)
        assert node(b).wait(lambda s: s.frames_dropped >= before[1] + 1, WAIT)
        honest_flow(a, log, "after")
        assert node(a).publish_remote("b", "t.remote", "r", timeout=WAIT).origin == "b"
        assert (dropped(a), dropped(b)) == (before[0] + 1, before[1] + 1)


def test_a_hello_flood_at_a_broker_from_many_connections_leaves_routing_intact(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, log = hub(broker, nodes)
        greeting = {"kind": "node", "pub": None, "epoch": 1, "base": 1}
        # Two hundred connections, each greets under a made-up name and hangs up.
        for i in range(200):
            sock = raw(ctx, zmq.DEALER, broker.endpoint)
            sock.send_multipart(encode_request(Request(HELLO, "", f"gone{i}", "hello", greeting)))
            assert sock.poll(int(WAIT * 1000)), f"no welcome for gone{i}"
            assert decode_request(sock.recv_multipart(), 1 << 20).kind == WELCOME
            sock.close(0)
        # One connection greets under five thousand names and stays.
        many = raw(ctx, zmq.DEALER, broker.endpoint)
        for batch in range(10):  # in batches the broker's queue to it holds
            names = [f"many{batch * 500 + i}" for i in range(500)]
            for name in names:
                many.send_multipart(encode_request(Request(HELLO, "", name, "h", greeting)))
            welcomed: list[str] = []
            while len(welcomed) < len(names):
                assert many.poll(int(WAIT * 1000)), f"{len(welcomed)} welcomes of {len(names)}"
                answer = decode_request(many.recv_multipart(), 1 << 20)
                assert answer.kind == WELCOME
                welcomed.append(answer.to)
            assert welcomed == names
        # A request for a name whose connection closed is answered at once ...
        many.send_multipart(encode_request(Request(METRICS, "gone7", "many1", "q1", {})))
        assert many.poll(int(WAIT * 1000))
        assert decode_request(many.recv_multipart(), 1 << 20).kind == ERROR
        # ... the honest nodes still reach each other, requests and stream.
        assert node(b).publish_remote("a", "t.remote", "r", timeout=WAIT).origin == "a"
        log.wait_for(("a", "r"))
        honest_flow(a, log, "after")
        assert (dropped(a), dropped(b)) == (0, 0)


def test_a_flood_of_impostors_at_a_curve_broker_is_each_refused_counted_and_harmless(
    tmp_path: Path, nodes: Callable[..., EventBus], ctx: Ctx
) -> None:
    keys = {n: generate_keypair() for n in ("broker", "a", "b", "evil")}
    with Broker(
        ipc(tmp_path, "hub"),
        curve_public_key=keys["broker"][0],
        curve_secret_key=keys["broker"][1],
        authorized_keys=[keys[n][0] for n in ("a", "b", "evil")],
        peer_names={n: keys[n][0] for n in ("a", "b")},
    ) as broker:
        a = curve_node(nodes, "a", broker, keys, **FAST)
        b = curve_node(nodes, "b", broker, keys, **FAST)
        log = Log()
        b.subscribe("t.*", log)
        assert node(b).wait_for_peers(["a"], WAIT)
        honest_flow(a, log, "before")
        kinds, key = (zmq.DEALER, zmq.XPUB), keys["broker"][0]
        evil, pub = (curve_socket(ctx, k, keys["evil"], key) for k in kinds)
        evil.sndhwm = pub.sndhwm = 0
        evil.connect(broker.endpoint)
        greeting = {"kind": "node", "pub": None, "epoch": 1, "base": 1}
        for i in range(500):
            claimed = "ab"[i % 2]
            evil.send_multipart(encode_request(Request(HELLO, "", claimed, f"h{i}", greeting)))
            grant = {"epoch": 0, "acked": 0, "window": 1, "prefixes": ["t."]}
            evil.send_multipart(encode_request(Request(CREDIT, claimed, claimed, "c", grant)))
        refusals: list[str] = []
        while len(refusals) < 500:
            assert evil.poll(int(WAIT * 1000)), f"{len(refusals)} refusals of 500"
            answer = decode_request(evil.recv_multipart(), 1 << 20)
            assert (answer.kind, answer.body.get("refused")) == (ERROR, True), answer
            refusals.append(answer.rid)
        assert refusals == [f"h{i}" for i in range(500)]
        assert wait_for(lambda: broker.impostors == 1000, WAIT)  # the last credit too
        # Stream frames of a bound name from evil's key, and of no readable shape:
        # never forwarded (the checked proxy).
        pub.connect(broker.publish_endpoint)
        assert pub.poll(int(WAIT * 1000))  # the broker passed its subscriptions on
        pub.send_multipart([b"t.x"] + [b""] * 100_000)
        pub.send_multipart([b"t.x", b"\x01"])
        forged = event("forged", 1 << 20, "a", "t.x")
        pub.send_multipart(encode_data(b"t.", "a", 1, [], [forged]))
        assert wait_for(lambda: broker.impostors == 1001, WAIT)
        honest_flow(a, log, "after")
        assert node(b).publish_remote("a", "t.remote", "r", timeout=WAIT).origin == "a"
        assert all(d != "forged" for _, d in log.got)
        assert (dropped(a), dropped(b)) == (0, 0)
