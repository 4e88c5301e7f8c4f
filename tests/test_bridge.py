"""The ZeroMQ bridge in one process: several buses joined over ipc:// and 127.0.0.1 tcp.

Every wait is on an event, a future or ``Bridge.wait``/``wait_synced`` (a
condition variable); nothing sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from actors import (
    BridgeError,
    Event,
    EventBus,
    EventQuery,
    NotConnectedError,
    PeerRefusedError,
)
from actors._cluster import security
from actors._cluster.broker import Broker
from actors._cluster.security import generate_keypair
from actors._cluster.wire import (
    HELLO,
    VERSION,
    encode_data,
)
from actors._model.config import MIN_FRAME_BYTES
from tests._cluster_support import WAIT, Collector, ipc, say_hello
from tests._cluster_support import fake_sockets as fake_peer
from tests._cluster_support import node as bridge
from tests._cluster_support import request_endpoint as endpoint


def a_real_peer_gets_through(
    tmp_path: Path, nodes: Callable[..., EventBus], a: EventBus, got: Collector
) -> None:
    """Still working: a real peer's events arrive at ``a``'s ``got``."""
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(endpoint(a),))
    assert bridge(a).wait_for_peers(["b"], WAIT)
    b.publish("real.thing", "ok")
    assert got.wait()[0].data == "ok"


def test_wildcard_delivery_in_per_origin_order_over_ipc(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(ipc(tmp_path, "a"),))
    got = Collector(300)
    b.subscribe("job.*.done", got)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    for i in range(300):
        a.publish(f"job.{i % 7}.done", i)
        a.publish("job.x.started", i)
    events = got.wait()
    assert [e.data for e in events] == list(range(300))
    assert {e.origin for e in events} == {"a"}
    assert all(e.event_type.endswith(".done") for e in events)


def test_tcp_with_ephemeral_ports_both_directions(nodes: Callable[..., EventBus]) -> None:
    a = nodes("a", listen="tcp://127.0.0.1:*")
    b = nodes("b", listen="tcp://127.0.0.1:*", peers=(endpoint(a),))
    at_a, at_b = Collector(1), Collector(1)
    a.subscribe("ping", at_a)
    b.subscribe("pong", at_b)
    assert bridge(a).wait_for_peers(["b"], WAIT)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    b.publish("ping", 1)
    a.publish("pong", 2)
    assert at_a.wait()[0].data == 1
    assert at_b.wait()[0].data == 2


def test_only_events_a_peer_can_match_are_sent(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    b = nodes("b", peers=(ipc(tmp_path, "a"),))
    got = Collector(5)
    b.subscribe("user.*", got)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    for i in range(5):
        a.publish("tool.call", i).get(timeout=WAIT)
        a.publish("users.x", i).get(timeout=WAIT)
        a.publish("user.login", i).get(timeout=WAIT)
    assert [e.data for e in got.wait()] == list(range(5))
    # a's flush passes a barrier through its bridge after every send, so its
    # send counter is final (b may count a frame before a's counter moves).
    a.flush(WAIT)
    stats = bridge(b).statistics()
    assert stats.events_received == 5  # nothing else crossed the wire
    assert stats.frames_received == bridge(a).statistics().frames_sent


def test_no_loops_in_a_three_node_mesh(tmp_path: Path, nodes: Callable[..., EventBus]) -> None:
    names = ["a", "b", "c"]
    eps = {n: ipc(tmp_path, n) for n in names}
    buses = {n: nodes(n, listen=eps[n], peers=tuple(eps[m] for m in names if m < n)) for n in names}
    got = {n: Collector(6) for n in names}  # 2 local + 4 remote
    for n, bus in buses.items():
        bus.subscribe("**", got[n])
    for n, bus in buses.items():
        assert bridge(bus).wait_for_peers([m for m in names if m != n], WAIT)
    for n, bus in buses.items():
        bus.publish("work.item", n).get(timeout=WAIT)
    for n, bus in buses.items():
        bus.publish("work.marker", n).get(timeout=WAIT)
    for n in names:
        events = got[n].wait()
        remote = [e for e in events if e.origin != n]
        assert sorted((e.origin, e.event_type) for e in remote) == sorted(
            (m, t) for m in names if m != n for t in ("work.item", "work.marker")
        )
        # Each remote event came straight from its origin, once.
        stats = bridge(buses[n]).statistics()
        assert stats.events_received == 4
        assert stats.duplicates == 0


def test_remote_get_correlated_and_query(tmp_path: Path, nodes: Callable[..., EventBus]) -> None:
    a = nodes("a", persistent=True, listen=ipc(tmp_path, "a"))
    b = nodes("b", peers=(ipc(tmp_path, "a"),))
    assert bridge(b).wait_for_peers(["a"], WAIT)
    assert bridge(a).wait(lambda s: "b" in s.peers_alive, WAIT)  # b only connects
    cid = uuid.uuid4()
    a.publish_correlated("flow.start", 1, cid).get(timeout=WAIT)
    a.publish("other", 0).get(timeout=WAIT)
    b.publish_correlated("flow.step", 2, cid).get(timeout=WAIT)
    from_b = b.get_correlated(cid, timeout=WAIT)
    assert sorted((e.origin, e.data) for e in from_b) == [("a", 1), ("b", 2)]
    stored = b.query(EventQuery(event_types=["flow.*"]), node="a", timeout=WAIT)
    assert [(e.origin, e.data) for e in stored] == [("a", 1)]
    with pytest.raises(PeerRefusedError, match="keeps no journal"):
        a.query(EventQuery(), node="b", timeout=WAIT)  # b has no journal
    with pytest.raises(NotConnectedError, match="nobody"):
        b.query(EventQuery(), node="nobody", timeout=WAIT)


def test_curve_refuses_unknown_keys(tmp_path: Path, nodes: Callable[..., EventBus]) -> None:
    a_pub, a_sec = generate_keypair()
    b_pub, b_sec = generate_keypair()
    x_pub, x_sec = generate_keypair()
    a_ep = ipc(tmp_path, "a")
    a = nodes(
        "a",
        listen=a_ep,
        curve_public_key=a_pub,
        curve_secret_key=a_sec,
        authorized_keys=(b_pub,),
    )
    b = nodes(
        "b",
        listen=ipc(tmp_path, "b"),
        peers=(a_ep,),
        curve_public_key=b_pub,
        curve_secret_key=b_sec,
        authorized_keys=(a_pub,),
        peer_public_keys={a_ep: a_pub},
    )
    x = nodes(
        "x",
        peers=(a_ep,),
        curve_public_key=x_pub,
        curve_secret_key=x_sec,
        peer_public_keys={a_ep: a_pub},
    )
    at_b, at_x = Collector(1), Collector(1)
    b.subscribe("secret.*", at_b)
    x.subscribe("**", at_x)
    assert bridge(a).wait(lambda s: s.auth_refused >= 1, WAIT)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    a.publish("secret.plan", 42).get(timeout=WAIT)
    assert at_b.wait()[0].data == 42
    stats = bridge(x).statistics()
    assert stats.events_received == 0
    assert stats.peers_alive == ()
    assert at_x.events == []


def test_garbage_frames_are_dropped_and_the_node_keeps_running(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"), max_frame_bytes=MIN_FRAME_BYTES)
    got = Collector(1)
    a.subscribe("real.*", got)
    a.flush()
    with fake_peer(tmp_path, a) as (fake_pub, dealer):
        # Garbage on the request channel.
        dealer.send_multipart([b"\x00"])
        dealer.send_multipart([b"\x09\x10", b"", b"", b"", b"{}"])
        dealer.send_multipart([bytes((VERSION, HELLO)), b"", b"\xff", b"1", b"{}"])
        say_hello(tmp_path, fake_pub, dealer)
        garbage: list[list[bytes]] = [
            [b"real.x"],
            [b"real.x", b"", b""],
            [b"real.x", b"\x01", b"junk"],
            [b"real.x", b"\x02\x01", b"junk"],  # unknown version
            [b"real.x", b"\x01\x01" + b"\x00" * 10, b"junk"],  # truncated header
            [b"real.x", b"\x01\x09", b"{}"],  # unknown kind
            [b"\xffhb", b"\x01\x02", b"not json"],
            [b"\xffhb", b"\x01\x02", b'{"node": 3}'],
            [b"real.x", b"x" * (MIN_FRAME_BYTES + 1), b""],  # oversized
        ]
        for parts in garbage:
            fake_pub.send_multipart(parts)
        forged = Event(event_type="real.y", data=1, sequence=1, origin="other")
        fake_pub.send_multipart(encode_data(b"real.", "fake", 1, [], [forged]))
        request_garbage = 3
        expected = len(garbage) + 1 + request_garbage
        assert bridge(a).wait(lambda s: s.frames_dropped >= expected, WAIT)
        assert bridge(a).statistics().frames_dropped == expected
        a_real_peer_gets_through(tmp_path, nodes, a, got)


def test_a_missing_peer_key_fails_the_start_cleanly(nodes: Callable[..., EventBus]) -> None:
    pub, sec = generate_keypair()
    with pytest.raises(BridgeError, match="no public key for peer ipc://z"):
        nodes("k", curve_public_key=pub, curve_secret_key=sec, peers=("ipc://z",))


def test_nodes_meet_through_a_broker(tmp_path: Path, nodes: Callable[..., EventBus]) -> None:
    with Broker("tcp://127.0.0.1:*") as broker:
        names = ["a", "b", "c"]
        buses = {n: nodes(n, persistent=(n == "a"), peers=(broker.endpoint,)) for n in names}
        got = {n: Collector(3) for n in names}  # 1 local + 2 remote
        for n, bus in buses.items():
            bus.subscribe("job.**", got[n])
        for n, bus in buses.items():
            assert bridge(bus).wait_for_peers([m for m in names if m != n], WAIT)
        cid = uuid.uuid4()
        for n, bus in buses.items():
            bus.publish("job.run", n, correlation_id=cid).get(timeout=WAIT)
            bus.publish("jobs.other", n).get(timeout=WAIT)
        for n in names:
            remote = sorted(e.data for e in got[n].wait() if e.origin != n)
            assert remote == [m for m in names if m != n]
        correlated = buses["c"].get_correlated(cid, timeout=WAIT)
        assert sorted({e.data for e in correlated}) == names
        stored = buses["b"].query(EventQuery(event_types=["jobs.*"]), node="a", timeout=WAIT)
        assert [e.data for e in stored] == ["a"]
        assert broker.routed >= 3


def test_a_forged_sequence_over_the_wire_is_rejected_and_counted(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    got = Collector(1)
    a.subscribe("real.*", got)
    a.flush()
    with fake_peer(tmp_path, a) as (fake_pub, dealer):
        say_hello(tmp_path, fake_pub, dealer)
        forged = Event(event_type="real.y", data=1, sequence=(1 << 63) + 5, origin="fake")
        fake_pub.send_multipart(encode_data(b"real.", "fake", 1, [], [forged]))
        assert bridge(a).wait(lambda s: s.sequences_rejected >= 1, WAIT)
        assert bridge(a).statistics().events_delivered == 0
        a_real_peer_gets_through(tmp_path, nodes, a, got)


# Regression: a Ctrl-C during a node's start left a socket the context never registered;
# the start's cleanup then waited in zmq_ctx_term for ever (a demo hung so for two hours).
def test_closing_a_context_with_a_socket_it_does_not_know_does_not_hang(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(security, "TERM_WAIT", 0.5, raising=False)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stray = zmq.Socket(ctx, zmq.PAIR)  # made, never registered with the context
    closing = threading.Thread(target=security.close_context, args=(ctx, None), daemon=True)
    try:
        with caplog.at_level("WARNING", logger="actors.bridge"):
            closing.start()
            closing.join(30)
            assert not closing.is_alive()
        assert "still had a socket open" in caplog.text
    finally:
        stray.close(linger=0)  # the context can end now
