"""Messages a node cannot use, over real ZeroMQ sockets: dropped and counted, never fatal.

A hand-made peer (raw pyzmq sockets) sends what no node sends; the node must
drop it, count it and keep sending and receiving.  Every wait is on a
condition (``Node.wait``, a collector's event); nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import EventBus, PeerRefusedError
from actors._cluster.bridge import Bridge
from actors._cluster.broker import Broker
from actors._cluster.wire import (
    CREDIT,
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    HELLO,
    VERSION,
    FrameError,
    Request,
    decode_request,
    decode_stream,
)
from tests._cluster_support import WAIT, Collector, fake_peer, ipc, node, request_endpoint


def raw_request(kind: int, sender: str, body: bytes) -> list[bytes]:
    """A request-channel message whose JSON body is written by hand."""
    return [bytes((VERSION, kind)), b"", sender.encode(), b"r", body]


def still_works(tmp_path: Path, nodes: Callable[..., EventBus], a: EventBus) -> None:
    """``a`` still receives (a new real peer's event) and sends (its own event back)."""
    got_a, got_b = Collector(1), Collector(1)
    a.subscribe("real.*", got_a)
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),))
    b.subscribe("back.*", got_b)
    assert node(a).wait_for_peers(["b"], WAIT)
    assert node(b).wait_for_peers(["a"], WAIT)
    b.publish("real.thing", "in").get(timeout=WAIT)
    assert got_a.wait()[0].data == "in"
    a.publish("back.thing", "out").get(timeout=WAIT)
    assert got_b.wait()[0].data == "out"


# -- decoding ------------------------------------------------------------------------------

POISON = [
    b'{"epoch": Infinity, "acked": 0, "window": 10}',
    b'{"epoch": -Infinity, "acked": 0, "window": 10}',
    b'{"epoch": NaN, "acked": 0, "window": 10}',
    b'{"epoch": 1e400, "acked": 0, "window": 10}',
    b'{"epoch": 1' + b"0" * 30 + b', "acked": 0, "window": 10}',
    b'{"kind": "node", "pub": "tcp://127.0.0.1:1\\ud800"}',
    b'{"\\udc00": 1}',
    b'{"prefixes": [["\\ud800"]]}',
]


@pytest.mark.parametrize("body", POISON)
def test_a_body_with_a_non_finite_number_or_a_lone_surrogate_is_refused(body: bytes) -> None:
    with pytest.raises(FrameError):
        decode_request(raw_request(CREDIT, "x", body), 1 << 20)
    with pytest.raises(FrameError):
        decode_stream([HEARTBEAT_TOPIC, bytes((VERSION, HEARTBEAT)), body], 1 << 20)


def test_a_body_with_ordinary_numbers_and_text_decodes() -> None:
    body = b'{"epoch": 18446744073709551615, "f": 1.5e300, "t": "\\ud83d\\ude00 \\u00e9"}'
    message = decode_request(raw_request(CREDIT, "x", body), 1 << 20)
    assert message.body == {"epoch": (1 << 64) - 1, "f": 1.5e300, "t": "\U0001f600 \u00e9"}


# -- a live node ---------------------------------------------------------------------------


def test_poisoned_requests_and_control_frames_are_dropped_and_counted(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    with fake_peer(tmp_path, a) as (fake_pub, dealer):
        before = node(a).statistics().frames_dropped
        requests = [
            raw_request(CREDIT, "fake", b'{"epoch": Infinity, "acked": 0, "window": 10}'),
            raw_request(CREDIT, "fake", b'{"epoch": 1, "acked": 1e400, "window": 10}'),
            raw_request(CREDIT, "fake", b'{"epoch": 1, "acked": 0, "window": 10, "drop": "x"}'),
            raw_request(HELLO, "fake2", b'{"kind": "node", "pub": "tcp://127.0.0.1:1\\ud800"}'),
        ]
        for parts in requests:
            dealer.send_multipart(parts)
        hb = [HEARTBEAT_TOPIC, bytes((VERSION, HEARTBEAT))]
        frames = [
            [*hb, b'{"node": "fake", "epoch": 1e400, "base": 1, "head": 1, "chains": []}'],
            [*hb, b'{"node": "fake", "epoch": 1, "base": -Infinity, "head": 1}'],
            [*hb, b'{"node": "fake", "epoch": 1, "base": 1, "head": NaN}'],
            [*hb, b'{"node": "fake", "epoch": 1, "base": 1, "head": 1, "chains": [["t.", 1e400]]}'],
            [*hb, b'{"node": "fake", "epoch": 1, "base": 1, "head": 1, "chains": [[1, 2, 3]]}'],
            [*hb, b'{"node": "\\ud800", "epoch": 1, "base": 1, "head": 1}'],
        ]
        for parts in frames:
            fake_pub.send_multipart(parts)
        expected = before + len(requests) + len(frames)
        assert node(a).wait(lambda s: s.frames_dropped >= expected, WAIT)
        still_works(tmp_path, nodes, a)


def test_a_poisoned_heartbeat_through_a_broker_harms_no_node(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "broker")) as broker:
        a, b, c = (nodes(n, peers=(broker.endpoint,)) for n in "abc")
        got = {n: Collector(2) for n in "bc"}
        b.subscribe("t.*", got["b"])
        c.subscribe("t.*", got["c"])
        assert node(b).wait_for_peers(["a"], WAIT)
        assert node(c).wait_for_peers(["a"], WAIT)
        ctx = zmq.Context()
        try:
            # A publisher nobody greeted, straight into the broker's publish-in socket.
            raw = ctx.socket(zmq.XPUB)
            raw.connect(broker.publish_endpoint)
            assert raw.poll(int(WAIT * 1000))  # the broker forwards its subscribers' topics
            body = b'{"node": "zz", "epoch": 1e400, "base": 1, "head": 1, "chains": []}'
            raw.send_multipart([HEARTBEAT_TOPIC, bytes((VERSION, HEARTBEAT)), body])
            for n in (b, c):
                assert node(n).wait(lambda s: s.frames_dropped >= 1, WAIT)
        finally:
            ctx.destroy(0)
        a.publish("t.x", "one").get(timeout=WAIT)
        a.publish("t.x", "two").get(timeout=WAIT)
        for n in "bc":
            assert [e.data for e in got[n].wait()] == ["one", "two"]


def test_a_handler_that_raises_costs_one_message_not_the_node(
    tmp_path: Path, nodes: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Bridge._on_credit  # noqa: SLF001 - the handler made to fail

    def failing(self: Bridge, message: Request) -> None:
        if message.sender == "fake":
            raise RuntimeError("a defect in a handler")
        real(self, message)

    monkeypatch.setattr(Bridge, "_on_credit", failing)
    a = nodes("a", listen=ipc(tmp_path, "a"))
    with fake_peer(tmp_path, a) as (_, dealer):
        before = node(a).statistics().frames_dropped
        body = b'{"epoch": 1, "acked": 0, "window": 10}'
        dealer.send_multipart(raw_request(CREDIT, "fake", body))
        assert node(a).wait(lambda s: s.frames_dropped > before, WAIT)
    still_works(tmp_path, nodes, a)


def test_a_step_of_the_io_loop_that_raises_is_logged_and_the_loop_goes_on(
    tmp_path: Path, nodes: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Bridge._hello_links  # noqa: SLF001 - the periodic step made to fail
    failed = threading.Event()

    def failing_once(self: Bridge, now: float) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a defect in a periodic step")
        return real(self, now)

    monkeypatch.setattr(Bridge, "_hello_links", failing_once)
    a = nodes("a", listen=ipc(tmp_path, "a"))
    assert failed.wait(WAIT)
    assert node(a).wait(lambda s: s.frames_dropped >= 1, WAIT)
    still_works(tmp_path, nodes, a)


# -- subscriptions on the XPUB ---------------------------------------------------------------


def publish_endpoint(bus: EventBus) -> str:
    found = node(bus).endpoints["publish"]
    assert found is not None
    return found


def subscriber_pair(tmp_path: Path, nodes: Callable[..., EventBus]) -> tuple[EventBus, Collector]:
    """``a`` publishing, ``b`` following ``t.*`` from it; returns ``a`` and b's collector."""
    a = nodes("a", listen=ipc(tmp_path, "a"))
    got = Collector(1)
    b = nodes("b", peers=(request_endpoint(a),))
    b.subscribe("t.*", got)
    assert node(b).wait_for_peers(["a"], WAIT)
    return a, got


@pytest.mark.parametrize("message", [b"\x02t.", b"\xfft.", b""])
def test_a_message_on_the_xpub_that_is_no_subscription_is_dropped(
    tmp_path: Path, nodes: Callable[..., EventBus], message: bytes
) -> None:
    a, got = subscriber_pair(tmp_path, nodes)
    before = node(a).statistics().frames_dropped
    ctx = zmq.Context()
    try:
        raw = ctx.socket(zmq.XSUB)  # XSUB passes anything but 0x00/0x01 upstream as is
        raw.connect(publish_endpoint(a))
        raw.send(message)
        assert node(a).wait(lambda s: s.frames_dropped > before, WAIT)
    finally:
        ctx.destroy(0)
    a.publish("t.x", "still sent").get(timeout=WAIT)
    assert [e.data for e in got.wait()] == ["still sent"]


def test_a_message_at_a_brokers_subscribe_endpoint_stops_no_prefix(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "broker")) as broker:
        a, b = (nodes(n, peers=(broker.endpoint,)) for n in "ab")
        got = Collector(1)
        b.subscribe("t.*", got)
        assert node(b).wait_for_peers(["a"], WAIT)
        ctx = zmq.Context()
        try:
            raw = ctx.socket(zmq.XSUB)
            raw.connect(broker.subscribe_endpoint)
            raw.send(b"\x02t.")
            assert node(a).wait(lambda s: s.frames_dropped >= 1, WAIT)
        finally:
            ctx.destroy(0)
        a.publish("t.x", "still sent").get(timeout=WAIT)
        assert [e.data for e in got.wait()] == ["still sent"]


# -- duplicate names -------------------------------------------------------------------------


def test_linked_nodes_on_the_listening_side_of_a_duplicate_name_raises(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    listener = nodes("x", listen=ipc(tmp_path, "x"))
    nodes("x", peers=(request_endpoint(listener),))
    assert node(listener).wait(lambda s: s.hellos_refused >= 1, WAIT)
    with pytest.raises(PeerRefusedError, match="this node's name 'x'"):
        node(listener).linked_nodes(WAIT)
