"""A broker that runs for months: it forgets the names of nodes gone, and counts what it drops.

Short-lived nodes (one per CLI command through a broker) must not grow its
table of names for ever; a name still heard is never forgotten; malformed
requests are dropped and counted.  Real ZeroMQ sockets on ipc:// and real
nodes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from actors import Broker, EventBus, NodeConfig, NotConnectedError
from actors._cluster.broker import FORGET_AFTER
from actors._cluster.wire import (
    CREDIT,
    ERROR,
    HELLO,
    PUBLISH,
    VERSION,
    WELCOME,
    Request,
    decode_request,
    encode_request,
)
from tests._cluster_support import WAIT, ipc
from tests._support import wait_for
from tests.test_broker_edges import fast

# Names silent for FORGET_AFTER x this (3 s) are forgotten; the nodes greet every 0.6 s.
ROUTE_TIMEOUT = 0.3


@pytest.fixture
def dealers() -> Iterator[Callable[[str], zmq.Socket[bytes]]]:
    """Raw DEALER sockets connected to a given endpoint, closed at the end."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

    def connect(endpoint: str) -> zmq.Socket[bytes]:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(endpoint)
        return dealer

    try:
        yield connect
    finally:
        ctx.destroy(0)


def ask(dealer: zmq.Socket[bytes], request: Request) -> Request:
    """Send ``request`` and return the broker's answer (a failure bound, not a timing)."""
    dealer.send_multipart(encode_request(request))
    assert dealer.poll(int(WAIT * 1000)), f"no answer to {request.kind} {request.rid}"
    return decode_request(dealer.recv_multipart(), 1 << 20)


def greet(dealer: zmq.Socket[bytes], name: str) -> None:
    answer = ask(dealer, Request(HELLO, "", name, uuid.uuid4().hex, {}))
    assert answer.kind == WELCOME, answer


def test_names_of_nodes_gone_are_forgotten_and_a_name_still_heard_is_kept(
    tmp_path: Path,
    nodes: Callable[..., EventBus],
    dealers: Callable[[str], zmq.Socket[bytes]],
) -> None:
    with Broker(ipc(tmp_path, "hub"), route_timeout=ROUTE_TIMEOUT) as broker:
        a, _b = fast(nodes, "a", broker), fast(nodes, "b", broker)
        assert a.wait_for_peers(["b"], WAIT)
        assert wait_for(lambda: {"a", "b"} <= set(broker.names))
        # Short-lived nodes: each greets once and is gone (as a CLI command is).
        for i in range(20):
            greet(dealers(broker.endpoint), f"cli-{i}")
        assert {f"cli-{i}" for i in range(20)} <= set(broker.names)
        # The 20 names are forgotten once silent for FORGET_AFTER route timeouts.
        assert wait_for(lambda: not any(n.startswith("cli-") for n in broker.names)), broker.names
        assert broker.forgotten >= 20
        # a and b were in the table longer than that, and greet every heartbeat_timeout.
        assert {"a", "b"} <= set(broker.names), broker.names
        assert a.publish_remote("b", "t.x", 1, timeout=WAIT).origin == "b"
        # A request for a forgotten name is answered at once: unknown.
        answer = ask(dealers(broker.endpoint), Request(PUBLISH, "cli-3", "probe", "r1", {}))
        assert answer.kind == ERROR, answer
        assert "unknown node cli-3" in str(answer.body.get("error")), answer
        # A node that greets again is routed to again.
        again = dealers(broker.endpoint)
        greet(again, "cli-3")
        assert "cli-3" in broker.names
    assert FORGET_AFTER * ROUTE_TIMEOUT < WAIT  # the wait above is bounded by WAIT


def raw(kind: int, to: str, sender: str, body: bytes) -> list[bytes]:
    return [bytes((VERSION, kind)), to.encode(), sender.encode(), b"r", body]


def test_malformed_requests_are_counted_in_dropped(
    tmp_path: Path, dealers: Callable[[str], zmq.Socket[bytes]]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        dealer = dealers(broker.endpoint)
        garbage = [
            [b"\x01"],
            [b"", b""],
            raw(PUBLISH, "b", "evil", b"{}")[:4],
            [bytes((9, PUBLISH)), b"b", b"evil", b"r", b"{}"],
            [bytes((VERSION, 200)), b"b", b"evil", b"r", b"{}"],
            raw(CREDIT, "b", "evil", b"[1, 2]"),
            raw(CREDIT, "b", "evil", b"\xff\xfe"),
        ]
        for parts in garbage:
            dealer.send_multipart(parts)
        # Answered once the broker handled everything above (one connection, in order).
        answer = ask(dealer, Request(PUBLISH, "ghost", "evil", "probe", {}))
        assert (answer.kind, answer.rid) == (ERROR, "probe"), answer
        assert broker.dropped == len(garbage)
        assert dealer.poll(0) == 0, "a malformed request got an answer"
        # Well-formed ones are not counted.
        greet(dealer, "fine")
        assert broker.dropped == len(garbage)


@pytest.mark.parametrize("name", ["", "b" * 256, "b\ud800"], ids=["empty", "long", "surrogate"])
def test_a_broker_named_as_no_node_can_be_is_refused(tmp_path: Path, name: str) -> None:
    # Its name is the sender of its WELCOME: nodes would drop every one.
    with pytest.raises(ValueError, match="255 bytes"):
        Broker(ipc(tmp_path, "named"), name=name)


@pytest.mark.parametrize("name", ["n" * 256, "n\ud800"], ids=["long", "surrogate"])
def test_a_node_named_as_no_frame_can_carry_is_refused(name: str) -> None:
    # A lone surrogate cannot be encoded into any frame: its bus failed to start
    # with a BridgeError, far from the cause.
    with pytest.raises(ValueError, match="node name"):
        NodeConfig(name=name)


def test_a_request_to_a_name_no_node_can_have_is_not_connected_at_once(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # The broker drops a request naming a node over 255 bytes (malformed);
    # the caller waited its whole timeout for an answer that could not come.
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, _b = fast(nodes, "a", broker), fast(nodes, "b", broker)
        assert a.wait_for_peers(["b"], WAIT)
        for name in ("nosuchnode", "n" * 256, "x\ud800"):  # a surrogate broke the send
            with pytest.raises(NotConnectedError, match="is not connected"):
                a.remote_metrics(name, timeout=WAIT)  # NoAnswerError after it, before
        assert broker.dropped == 0


# Regression: OverflowError in the constructor (a socket reads parts up to twice it).
def test_a_broker_refuses_a_max_frame_bytes_its_sockets_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_frame_bytes must be <="):
        Broker(ipc(tmp_path, "hub"), max_frame_bytes=2**62)
