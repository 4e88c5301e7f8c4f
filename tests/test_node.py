"""A bus as a node (``_cluster.node``, ``NodeConfig``): the handle, endpoints, identity.

Real ZeroMQ sockets on ipc:// and 127.0.0.1; a failed start is tried in a
child process with a timeout, since the fault it guards against is a hang.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import (
    Event,
    EventBus,
    EventTooLargeError,
    NodeConfig,
    PeerRefusedError,
)
from actors._cluster.broker import Broker
from actors._cluster.security import generate_keypair
from actors._cluster.wire import HELLO, Request, encode_request
from tests._support import WAIT, Collector, run_python

# -- endpoints are checked when the config is built -----------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("peers", ["127.0.0.1:27701"], r"peer '127\.0\.0\.1:27701' has no transport"),
        ("peers", ["tcp://127.0.0.1:*"], r"wildcard port can only be listened on"),
        ("peers", ["udp://127.0.0.1:5"], r"transport 'udp' is not supported"),
        ("listen", "localhost:5701", r"listen 'localhost:5701' has no transport"),
        ("listen", "tcp://127.0.0.1:70000", r"port 70000 is out of range"),
        ("listen", "tcp://127.0.0.1", r"is not tcp://HOST:PORT"),
        ("listen", "ipc://", r"needs a name"),
        ("peer_public_keys", {"127.0.0.1:1": b"k" * 40}, r"has no transport"),
        ("curve_public_key", b"short", r"curve_public_key and curve_secret_key go together"),
        ("heartbeat_timeout", 0, r"heartbeat_timeout must be > 0"),
        ("max_frame_bytes", 10, r"max_frame_bytes must be at least 66560"),
    ],
)
def test_a_bad_setting_fails_at_the_config(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeConfig(name="x", **{field: value})


def test_a_single_string_of_peers_is_refused() -> None:
    with pytest.raises(TypeError, match="peers must be a sequence"):
        NodeConfig(name="x", peers="tcp://127.0.0.1:1")  # type: ignore[arg-type]


def test_good_endpoints_pass() -> None:
    config = NodeConfig(
        name="x",
        listen="tcp://0.0.0.0:*",
        peers=["tcp://127.0.0.1:5701", "ipc:///tmp/a.sock", "inproc://b", "tcp://[::1]:5"],
    )
    assert len(config.peers) == 4


_FAILED_STARTS = textwrap.dedent(
    """
    import sys
    from actors import BridgeError, EventBus, NodeConfig
    try:
        EventBus(node=NodeConfig(name="x", peers=["127.0.0.1:27701"]))
    except ValueError as exc:
        print("value-error", exc)
    first = EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*"))
    taken = first.node.endpoints["request"]
    for attempt in range(3):
        try:
            EventBus(node=NodeConfig(name="b", listen=taken, peers=["tcp://127.0.0.1:1"]))
        except BridgeError as exc:
            print("bridge-error", attempt, "in use" in str(exc).lower())
    first.close(5)
    print("done")
    """
)


def test_a_failed_start_tears_down_without_hanging() -> None:
    result = run_python(_FAILED_STARTS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("value-error peer '127.0.0.1:27701' has no transport")
    assert lines[1:] == [f"bridge-error {i} True" for i in range(3)] + ["done"]


# -- the handle ------------------------------------------------------------------------


def ipc(tmp_path: Path, name: str) -> str:
    return f"ipc://{tmp_path}/{name}.sock"


def request_endpoint(bus: EventBus) -> str:
    assert bus.node is not None
    endpoint = bus.node.endpoints["request"]
    assert endpoint is not None
    return endpoint


def test_a_plain_bus_has_no_node() -> None:
    with EventBus() as bus:
        assert bus.node is None


def test_the_handle_holds_the_config_and_the_old_methods_are_aliases(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    b = nodes("b", peers=(request_endpoint(a),))
    assert a.node is not None
    assert b.node is not None
    assert a.node.config.name == "a"
    assert a.endpoints == a.node.endpoints
    assert a.node.endpoints["publish"] == ipc(tmp_path, "a") + ".pub"
    got = Collector(1)
    b.subscribe("job.*", got)
    assert b.wait_for_peers(["a"], WAIT)
    assert b.node.linked_nodes(WAIT) == ["a"] == b.linked_nodes(WAIT)
    a.publish("job.run", 1).get(timeout=WAIT)
    assert got.done.wait(WAIT)
    assert got.data == [1]
    assert b.node.wait(lambda s: s.events_delivered >= 1, WAIT)
    assert b.node.statistics().events_delivered == 1
    assert b.metrics().bridge == b.node.statistics()
    b.close(WAIT)
    assert b.node.statistics().events_delivered == 1  # the last snapshot


def test_an_event_over_the_size_limit_fails_its_publish(nodes: Callable[..., EventBus]) -> None:
    a = nodes("a", max_frame_bytes=200_000)
    with pytest.raises(EventTooLargeError, match=r"max_frame_bytes=200000"):
        a.publish("blob.put", "x" * 200_000)
    with pytest.raises(EventTooLargeError):
        a.publish_many([a_event("x" * 10), a_event("x" * 300_000)])
    a.publish("blob.put", "x" * 100_000).get(timeout=WAIT)


def a_event(data: str) -> Event:
    return Event(event_type="blob.put", data=data)


# -- identity --------------------------------------------------------------------------


def test_a_peer_with_this_nodes_name_is_refused(
    tmp_path: Path, nodes: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "actors.bridge")
    first = nodes("hub", listen=ipc(tmp_path, "one"))
    second = nodes("hub", listen=ipc(tmp_path, "two"), peers=(request_endpoint(first),))
    for bus in (second, first):  # whichever peer each waits for, the refusal is said
        with pytest.raises(PeerRefusedError, match=r"this node's name 'hub'"):
            bus.wait_for_peers(["other"], WAIT)
    with pytest.raises(PeerRefusedError, match="hub"):
        second.linked_nodes(WAIT)
    assert any("refused a peer" in r.getMessage() for r in caplog.records)
    assert first.node is not None
    assert first.node.statistics().hellos_refused >= 1


def test_a_hello_never_repoints_an_established_peer(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),))
    got = Collector(2)
    a.subscribe("job.*", got)
    assert a.wait_for_peers(["b"], WAIT)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        fake_pub = ctx.socket(zmq.XPUB)
        fake_pub.bind(ipc(tmp_path, "fake"))
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(request_endpoint(a))
        hello = Request(HELLO, "", "b", "h", {"kind": "node", "pub": ipc(tmp_path, "fake")})
        dealer.send_multipart(encode_request(hello))
        assert dealer.poll(int(WAIT * 1000))
        dealer.recv_multipart()
        # The HELLO was handled before its WELCOME came back: an old node
        # would have moved its subscription to the fake publisher by now.
        b.publish("job.run", 1).get(timeout=WAIT)
        b.publish("job.run", 2).get(timeout=WAIT)
        assert got.done.wait(WAIT)
        assert got.data == [1, 2]
        assert not fake_pub.poll(0)  # a never subscribed there
    finally:
        ctx.destroy(0)


def test_under_curve_a_name_is_bound_to_its_key(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a_pub, a_sec = generate_keypair()
    b_pub, b_sec = generate_keypair()
    x_pub, x_sec = generate_keypair()
    a_ep = ipc(tmp_path, "a")
    a = nodes(
        "a",
        listen=a_ep,
        curve_public_key=a_pub,
        curve_secret_key=a_sec,
        authorized_keys=(b_pub, x_pub),
        peer_names={"b": b_pub},
    )
    # x holds an authorised key but claims b's name.
    x = nodes(
        "b",
        peers=(a_ep,),
        curve_public_key=x_pub,
        curve_secret_key=x_sec,
        peer_public_keys={a_ep: a_pub},
    )
    with pytest.raises(PeerRefusedError, match="without the key peer_names binds"):
        x.linked_nodes(WAIT)
    b = nodes(
        "b",
        listen=ipc(tmp_path, "b"),
        peers=(a_ep,),
        curve_public_key=b_pub,
        curve_secret_key=b_sec,
        authorized_keys=(a_pub,),
        peer_public_keys={a_ep: a_pub},
    )
    assert b.linked_nodes(WAIT) == ["a"]
    got = Collector(1)
    a.subscribe("job.*", got)
    assert a.wait_for_peers(["b"], WAIT)  # the real b, although x's refusal is on record
    assert a.node is not None
    assert a.node.statistics().hellos_refused >= 1
    b.publish("job.run", 7).get(timeout=WAIT)
    assert got.done.wait(WAIT)
    assert [e.origin for e in got.events] == ["b"]


def test_a_broker_endpoint_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"broker listen '127\.0\.0\.1:5800' has no transport"):
        Broker("127.0.0.1:5800")
