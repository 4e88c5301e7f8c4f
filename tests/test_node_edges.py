"""Node configuration and lifecycle at their edges (``NodeConfig``, ``Broker``, ``bus.node``).

Bad input must get a clear typed error at construction and lose nothing
else; nothing may hang.  Real sockets on ipc (under tmp_path), 127.0.0.1 and
inproc only; every wait is bounded and is a failure bound, never a timing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import (
    BridgeError,
    BusClosedError,
    Event,
    EventBus,
    EventQuery,
    EventTooLargeError,
    NoAnswerError,
    NodeConfig,
    NotConnectedError,
)
from actors._cluster.broker import Broker
from actors._cluster.security import generate_keypair
from tests._cluster_support import WAIT, Collector, Until, ipc, node, request_endpoint
from tests._support import Gate


def _run_bounded(fn: Callable[[], Any], bound: float) -> tuple[bool, Any]:
    """Run ``fn`` on a daemon thread; return (finished within ``bound``, result or exception)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    return (not thread.is_alive(), out[0] if out else None)


# -- NodeConfig: values that cannot work -------------------------------------------------


def test_the_smallest_frame_limit_the_config_accepts_can_publish_an_event(
    nodes: Callable[..., EventBus],
) -> None:
    # NodeConfig accepts max_frame_bytes >= 1024, but publish refuses every
    # event over max_frame_bytes - 64 KiB - S: below ~64 KiB nothing can be sent.
    try:
        NodeConfig(name="x", max_frame_bytes=1024)
    except ValueError:
        return  # refused at the config: fine
    bus = nodes("x", max_frame_bytes=1024)
    try:
        bus.publish("t.tiny", 1).get(timeout=WAIT)
    except EventTooLargeError as exc:
        pytest.fail(f"a frame limit NodeConfig accepted cannot carry a 48-byte event: {exc}")


def test_a_listen_port_whose_publish_port_is_out_of_range_fails_at_the_config() -> None:
    # The XPUB binds at listen's port + 1: 65535 can never work.
    with pytest.raises(ValueError, match="65535"):
        NodeConfig(name="x", listen="tcp://127.0.0.1:65535")


@pytest.mark.parametrize("port", ["\u0661\u0662", "5\u00b2", "\uff15\uff17\uff10\uff11"])
def test_a_tcp_port_in_other_than_ascii_digits_fails_at_the_config(port: str) -> None:
    # int() reads Arabic-Indic and full-width digits; ZeroMQ does not.
    for field in ("listen", "peers"):
        endpoint = f"tcp://127.0.0.1:{port}"
        value: object = endpoint if field == "listen" else [endpoint]
        with pytest.raises(ValueError, match="tcp://"):
            NodeConfig(name="x", **{field: value})  # type: ignore[arg-type]


def test_a_node_that_lists_itself_as_a_peer_fails_at_the_config_or_still_syncs(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    ep = ipc(tmp_path, "self")
    try:
        NodeConfig(name="a", listen=ep, peers=(ep,))
    except ValueError:
        return  # refused at the config: fine
    a = nodes("a", listen=ep, peers=(ep,))
    assert node(a).wait(lambda s: s.hellos_refused >= 1, WAIT)  # a refused its own HELLO
    # Observed: that refusal poisons a for good: waiting for any real peer
    # that has not synced yet raises "a peer has this node's name 'a'".
    assert a.wait_for_peers(["b"], 1.0) is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("curve_public_key", b"~" * 40),
        ("peer_names", {"b": b"~" * 40}),
        ("authorized_keys", (b"~" * 40,)),
    ],
)
def test_a_key_that_is_not_z85_fails_at_the_config(field: str, value: Any) -> None:
    pub, sec = generate_keypair()
    settings: dict[str, Any] = {"curve_public_key": pub, "curve_secret_key": sec, field: value}
    if field == "curve_public_key":
        settings["curve_secret_key"] = sec
    with pytest.raises(ValueError, match=field):
        NodeConfig(name="x", **settings)


def test_a_peer_names_key_that_is_not_a_name_fails_at_the_config() -> None:
    pub, sec = generate_keypair()
    b_pub, _ = generate_keypair()
    with pytest.raises(TypeError, match="peer_names"):
        NodeConfig(
            name="x",
            curve_public_key=pub,
            curve_secret_key=sec,
            peer_names={1: b_pub},  # type: ignore[dict-item]
        )


def test_authorized_keys_without_a_key_pair_fail_at_the_config() -> None:
    # Without curve keys the node runs plain and accepts anyone: the
    # authorized_keys the user gave are silently ignored.
    b_pub, _ = generate_keypair()
    with pytest.raises(ValueError, match="authorized_keys"):
        NodeConfig(name="x", authorized_keys=(b_pub,))


def test_peer_names_without_a_key_pair_fail_at_the_config() -> None:
    b_pub, _ = generate_keypair()
    with pytest.raises(ValueError, match="peer_names"):
        NodeConfig(name="x", peer_names={"b": b_pub})


def test_an_ipc_listen_path_too_long_for_a_socket_fails_cleanly(tmp_path: Path) -> None:
    long_dir = tmp_path / ("d" * 60)
    long_dir.mkdir()
    ep = f"ipc://{long_dir}/{'n' * 60}.sock"
    assert len(ep) - len("ipc://") > 107
    try:
        config = NodeConfig(name="x", listen=ep)
    except ValueError:
        return  # checked at the config: what the docs promise for a bad endpoint
    with pytest.raises(BridgeError):
        EventBus(node=config)


def test_an_ipc_listen_in_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/missing/a.sock"
    with pytest.raises(BridgeError):
        EventBus(node=NodeConfig(name="x", listen=ep))
    # Nothing was left behind: the same name and folder work once it exists.
    (tmp_path / "missing").mkdir()
    with EventBus(node=NodeConfig(name="x", listen=ep)) as bus:
        assert node(bus).endpoints["request"] == ep


def test_a_listen_whose_publish_port_is_taken_fails_and_frees_the_request_port() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        request = f"tcp://127.0.0.1:{port - 1}"
        try:
            with pytest.raises(BridgeError):
                EventBus(node=NodeConfig(name="x", listen=request))
        except zmq.ZMQError:
            pytest.skip("the port below was taken too")
        # The ROUTER that did bind was closed: the port can be bound again.
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port - 1))
        except OSError as exc:
            if "in use" not in str(exc).lower():
                raise
            pytest.fail(f"the request port {port - 1} stayed bound after the failed start")
        finally:
            probe.close()
    finally:
        holder.close()


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "ä-ünï", "a\x00b"])
def test_an_odd_name_either_fails_at_the_config_or_works_across_nodes(
    tmp_path: Path, nodes: Callable[..., EventBus], name: str
) -> None:
    try:
        NodeConfig(name=name)
    except ValueError:
        return
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    spoke = nodes(name, listen=ipc(tmp_path, "spoke"), peers=(request_endpoint(hub),))
    got = Collector(1)
    hub.subscribe("odd.*", got)
    assert hub.wait_for_peers([name], WAIT)
    spoke.publish("odd.one", 1).get(timeout=WAIT)
    assert [e.origin for e in got.wait()] == [name]
    assert spoke.linked_nodes(WAIT) == ["hub"]
    back = hub.publish_remote(name, "odd.back", 2, timeout=WAIT)
    assert back.origin == name


def test_a_name_longer_than_the_wire_allows_fails_at_the_config_or_streams(
    tmp_path: Path, nodes: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    # The data frame header has one byte for the origin name's length.
    name = "n" * 256
    try:
        NodeConfig(name=name)
    except ValueError:
        return  # refused at the config: fine
    caplog.set_level(logging.ERROR, "actors.bridge")
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    spoke = nodes(name, listen=ipc(tmp_path, "spoke"), peers=(request_endpoint(hub),))
    got = Collector(1)
    hub.subscribe("odd.*", got)
    assert hub.wait_for_peers([name], WAIT)
    spoke.publish("odd.one", 1).get(timeout=WAIT)
    got.wait()
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, failures
    assert node(spoke).statistics().frames_sent >= 1


# -- peers listed twice, or the node itself -------------------------------------------------


def test_the_same_peer_endpoint_twice_links_once_and_delivers_once(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    ep = request_endpoint(a)
    try:
        NodeConfig(name="b", peers=(ep, ep))
    except ValueError:
        return  # refused at the config: fine
    b = nodes("b", peers=(ep, ep))
    got = Collector(2)
    b.subscribe("dup.*", got)
    assert b.wait_for_peers(["a"], WAIT)
    a.publish("dup.one", 1).get(timeout=WAIT)
    a.publish("dup.two", 2).get(timeout=WAIT)
    got.wait()
    b.flush(WAIT)
    assert [e.data for e in got.events] == [1, 2]
    # "the names of the nodes among NodeConfig.peers": a, once.
    assert b.linked_nodes(WAIT) == ["a"]


def test_wait_for_peers_of_no_names_returns_at_once(nodes: Callable[..., EventBus]) -> None:
    a = nodes("a")
    assert a.wait_for_peers([], WAIT) is True


def test_wait_for_peers_on_its_own_name_is_a_clear_error(nodes: Callable[..., EventBus]) -> None:
    # A node never syncs with itself: waiting for it can only time out.
    a = nodes("a")
    done, result = _run_bounded(lambda: a.wait_for_peers(["a"], 3.0), WAIT)
    assert done
    assert isinstance(result, ValueError), f"wait_for_peers(['a']) on node a gave {result!r}"


# -- publish_remote and remote calls at the edges --------------------------------------------


def test_publish_remote_through_a_broker_to_an_unknown_name_is_not_connected(
    nodes: Callable[..., EventBus],
) -> None:
    with Broker("tcp://127.0.0.1:*") as broker:
        a = nodes("a", peers=(broker.endpoint,))
        assert a.linked_nodes(WAIT) == []
        with pytest.raises(NotConnectedError, match="nobody"):
            a.publish_remote("nobody", "t.x", 1, timeout=WAIT)


def test_publish_remote_with_a_zero_timeout_answers_or_times_out(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    client = nodes("client", peers=(request_endpoint(hub),))
    assert client.linked_nodes(WAIT) == ["hub"]
    done, result = _run_bounded(lambda: client.publish_remote("hub", "t.z", 0, timeout=0), WAIT)
    assert done
    assert isinstance(result, Event | NoAnswerError), result


def test_an_unknown_node_is_not_connected_even_with_a_zero_timeout(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # A call's deadline is exact now; an ask the I/O thread has not looked at
    # yet still gets that look, where an unknown node fails at once.
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    client = nodes("client", peers=(request_endpoint(hub),))
    assert client.linked_nodes(WAIT) == ["hub"]
    for _ in range(50):
        with pytest.raises(NotConnectedError):
            client.publish_remote("nosuch", "t.z", 0, timeout=0)
        with pytest.raises(NotConnectedError):
            client.query(EventQuery(), node="nosuch", timeout=0.001)


def test_a_node_that_went_away_gives_a_typed_error_within_the_timeout(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = EventBus(
        node=NodeConfig(
            name="hub", listen=ipc(tmp_path, "hub"), heartbeat_interval=0.1, heartbeat_timeout=0.5
        )
    )
    client = nodes(
        "client", peers=(request_endpoint(hub),), heartbeat_interval=0.1, heartbeat_timeout=0.5
    )
    assert client.linked_nodes(WAIT) == ["hub"]
    hub.close(WAIT)
    assert node(client).wait(lambda s: "hub" not in s.peers_alive, WAIT)
    done, result = _run_bounded(
        lambda: client.publish_remote("hub", "t.gone", 1, timeout=2.0), WAIT
    )
    assert done
    assert isinstance(result, NotConnectedError | NoAnswerError), result


def test_closing_a_node_while_publish_remote_waits_fails_it_promptly(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    client = nodes("client", peers=(request_endpoint(hub),))
    gate = Gate()
    hub.subscribe("t.*", gate, capacity=1, overflow="block")
    assert client.linked_nodes(WAIT) == ["hub"]
    hub.publish("t.fill", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    hub.publish("t.fill", 1).get(timeout=WAIT)  # the mailbox is full: the next publish waits
    outcome: list[BaseException | Event] = []
    started = threading.Event()

    def call() -> None:
        started.set()
        try:
            outcome.append(client.publish_remote("hub", "t.wait", 2, timeout=3 * WAIT))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert started.wait(WAIT)
    try:
        client.close(WAIT)
        caller.join(WAIT)
        assert not caller.is_alive(), "publish_remote still waits after its bus closed"
        assert outcome, "publish_remote returned nothing"
        # Not NoAnswerError, which says a retry is safe: the bus is closed.
        assert isinstance(outcome[0], BusClosedError), outcome
    finally:
        gate.release.set()


def test_remote_metrics_after_close_is_bus_closed_at_once(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    client = nodes("client", peers=(request_endpoint(hub),))
    assert client.linked_nodes(WAIT) == ["hub"]
    client.close(WAIT)
    done, result = _run_bounded(lambda: client.remote_metrics("hub", timeout=3.0), WAIT)
    assert done
    assert isinstance(result, BusClosedError), f"remote_metrics after close gave {result!r}"


def test_get_correlated_after_close_is_bus_closed(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    import uuid  # noqa: PLC0415

    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    client = nodes("client", peers=(request_endpoint(hub),))
    assert client.wait_for_peers(["hub"], WAIT)
    client.close(WAIT)
    done, result = _run_bounded(lambda: client.get_correlated(uuid.uuid4(), timeout=3.0), WAIT)
    assert done
    assert isinstance(result, BusClosedError), result


def test_wait_for_peers_and_linked_nodes_after_close_do_not_hang(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    client = nodes("client", peers=(request_endpoint(hub),))
    assert client.wait_for_peers(["hub"], WAIT)
    client.close(WAIT)
    done, result = _run_bounded(lambda: client.wait_for_peers(["hub"], 3.0), WAIT)
    assert done
    assert isinstance(result, BusClosedError | bool), result
    done, result = _run_bounded(lambda: client.linked_nodes(3.0), WAIT)
    assert done


# -- duplicate names at one hub ------------------------------------------------------------------


def test_a_second_node_with_a_taken_name_is_reported_by_the_hub(
    tmp_path: Path, nodes: Callable[..., EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    # Without CURVE a second node under a live name cannot be told from the
    # same node restarted elsewhere: its greeting is kept aside (docs/cluster.md,
    # "Node identity"), and the hub says so at WARNING.
    hub = nodes("hub", listen=ipc(tmp_path, "hub"))
    got = Until("from-first")
    hub.subscribe("t.*", got)
    first = nodes("twin", listen=ipc(tmp_path, "t1"), peers=(request_endpoint(hub),))
    assert hub.wait_for_peers(["twin"], WAIT)
    assert first.linked_nodes(WAIT) == ["hub"]
    caplog.set_level(logging.WARNING, logger="actors.bridge")
    second = nodes("twin", listen=ipc(tmp_path, "t2"), peers=(request_endpoint(hub),))
    assert second.linked_nodes(WAIT) == ["hub"]
    assert "a second node with that name" in caplog.text
    first.publish("t.x", "from-first").get(timeout=WAIT)  # the first keeps its place
    assert [e.origin for e in got.wait()] == ["twin"]


# -- Broker ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "error"),
    [
        ({"max_frame_bytes": 0}, ValueError),
        ({"route_timeout": -1.0}, ValueError),
        ({"authorized_keys": (b"short",)}, ValueError),
    ],
)
def test_a_bad_broker_setting_fails_at_construction(
    keywords: dict[str, Any], error: type[Exception]
) -> None:
    broker: Broker | None = None
    try:
        with pytest.raises(error):
            broker = Broker("tcp://127.0.0.1:*", **keywords)
    finally:
        if broker is not None:
            broker.close()


def test_a_broker_whose_stream_port_is_taken_fails_and_frees_its_router_port() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        with pytest.raises(BridgeError):
            Broker(f"tcp://127.0.0.1:{port - 1}")
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port - 1))
        finally:
            probe.close()
    finally:
        holder.close()


def test_closing_a_broker_twice_is_harmless(tmp_path: Path) -> None:
    broker = Broker(ipc(tmp_path, "b"))
    broker.close()
    done, result = _run_bounded(broker.close, WAIT)
    assert done
    assert not isinstance(result, BaseException), result


def test_a_broker_closed_while_nodes_send_stops_nothing_and_hangs_nothing(
    nodes: Callable[..., EventBus],
) -> None:
    broker = Broker("tcp://127.0.0.1:*")
    a = nodes("a", peers=(broker.endpoint,), heartbeat_interval=0.1, heartbeat_timeout=0.5)
    b = nodes("b", peers=(broker.endpoint,), heartbeat_interval=0.1, heartbeat_timeout=0.5)
    got = Collector(1)
    b.subscribe("t.*", got)
    assert b.wait_for_peers(["a"], WAIT)
    a.publish("t.before", 0).get(timeout=WAIT)
    got.wait()
    stop = threading.Event()

    def flood() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            a.publish("t.flood", n).get(timeout=WAIT)
            n += 1

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    done, result = _run_bounded(broker.close, WAIT)
    assert done, "Broker.close() hangs while nodes send"
    assert not isinstance(result, BaseException), result
    stop.set()
    sender.join(WAIT)
    assert not sender.is_alive(), "a publish hangs once the broker is gone"
    with pytest.raises(BridgeError):
        a.publish_remote("b", "t.x", 1, timeout=2.0)
    a.publish("t.after", 1).get(timeout=WAIT)


def test_a_node_with_receive_hwm_zero_and_credit_below_batch_still_delivers(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"), batch_size=256, credit_window=1, send_hwm=0)
    b = nodes("b", peers=(request_endpoint(a),), receive_hwm=0, credit_window=1, batch_size=256)
    got = Collector(300)
    b.subscribe("c.*", got, capacity=1000)
    assert b.wait_for_peers(["a"], WAIT)
    for future in a.publish_many([Event(event_type="c.n", data=i) for i in range(300)]):
        future.get(timeout=WAIT)
    assert [e.data for e in got.wait()] == list(range(300))


def test_a_wake_up_after_close_never_writes_to_a_reused_descriptor() -> None:
    """The bridge wakes its I/O thread through a pipe.  The router can still hand it
    records while the bus closes (the bridge closes first); once the pipe is closed its
    descriptor numbers belong to the next file or socket the process opens, and a wake-up
    must not write there (a stray ``x`` was seen at the head of a metrics HTTP reply)."""
    bus = EventBus(node=NodeConfig(name="waker", listen="tcp://127.0.0.1:*"))
    bridge = bus._bridge  # noqa: SLF001 - the pipe is the bridge's own
    assert bridge is not None
    old = bridge._wfd  # noqa: SLF001
    bus.close(timeout=WAIT)
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.dup2(w, old)  # what the next open file would be given
    try:
        bridge.call_soon(lambda: None)  # a late hand-over wakes the I/O thread
        with pytest.raises(BlockingIOError):
            os.read(r, 16)  # nothing was written to the reused descriptor
    finally:
        for fd in {r, w, old}:
            os.close(fd)


def test_wait_for_peers_returns_false_at_its_timeout_even_a_timeout_of_zero(
    tmp_path: Path,
) -> None:
    # "Returns False after timeout": its first step, a flush of the bus,
    # let FutureTimeoutError out instead (timeout=0, or a busy router), and
    # the CLI printed "Error: 0.0 seconds" for an unreachable --node.
    config = NodeConfig(name="a", peers=[f"ipc://{tmp_path}/nobody"])
    with EventBus(node=config) as bus:
        assert bus.wait_for_peers(["hub"], timeout=0) is False
        assert bus.wait_for_peers(["hub"], timeout=0.0) is False


@pytest.mark.parametrize("mix", ["swapped", "another pair's secret"])
def test_curve_keys_of_two_pairs_are_refused_at_start(tmp_path: Path, mix: str) -> None:
    # Halves of two pairs start a node no correctly configured peer can link
    # to, with nothing said (before): refused, as the CLI refuses them.
    pub, sec = generate_keypair()
    other_pub, other_sec = generate_keypair()
    keys = (sec, pub) if mix == "swapped" else (pub, other_sec)
    config = NodeConfig(
        name="a",
        listen=f"ipc://{tmp_path}/a",
        curve_public_key=keys[0],
        curve_secret_key=keys[1],
        authorized_keys=[other_pub],
    )
    with pytest.raises(BridgeError, match="not the public half"):
        EventBus(node=config)
    with pytest.raises(ValueError, match="not the public half"):
        Broker(f"ipc://{tmp_path}/b", curve_public_key=keys[0], curve_secret_key=keys[1])


def test_an_ipc_path_a_live_node_listens_on_is_in_use_for_a_second(tmp_path: Path) -> None:
    # ZeroMQ itself removes the file and binds anew: a node started twice on
    # one path took it from the first in silence, splitting the cluster.
    path = f"ipc://{tmp_path}/a.sock"
    with EventBus(node=NodeConfig(name="a", listen=path)):
        with pytest.raises(BridgeError, match="Address already in use"):
            EventBus(node=NodeConfig(name="b", listen=path))
        with EventBus(node=NodeConfig(name="c", peers=[path])) as client:
            assert client.linked_nodes(WAIT) == ["a"]
    # Gone (its files may stay): the path is free again.
    with EventBus(node=NodeConfig(name="b", listen=path)):
        pass
    broker_path = f"ipc://{tmp_path}/hub.sock"
    first = Broker(broker_path)
    try:
        with pytest.raises(BridgeError, match="Address already in use"):
            Broker(broker_path)
    finally:
        first.close()


@pytest.mark.parametrize(
    ("peers", "listen"),
    [
        (("tcp://127.0.0.1:7001", "tcp://127.0.0.1:07001"), None),
        (("tcp://LOCALHOST:7001", "tcp://localhost:7001"), None),
        (("ipc:///tmp/x//a.sock", "ipc:///tmp/x/a.sock"), None),
        (("ipc:////tmp/x.sock", "ipc:///tmp/x.sock"), None),
        (("tcp://127.0.0.1:07002",), "tcp://127.0.0.1:7002"),
        (("ipc:///tmp/x/./n.sock",), "ipc:///tmp/x/n.sock"),
    ],
)
def test_an_endpoint_spelt_two_ways_is_still_listed_twice(
    peers: tuple[str, ...], listen: str | None
) -> None:
    # docs/cluster.md: peers may not list an endpoint twice, nor the node's
    # own listen; a port with leading zeros, a host in capitals or a path
    # with a doubled slash is the same endpoint.
    with pytest.raises(ValueError, match=r"twice|own listen"):
        NodeConfig(name="a", listen=listen, peers=peers)


@pytest.mark.parametrize(
    "peers",
    [
        ("ipc://@llmspell-a//b", "ipc://@llmspell-a/b"),  # abstract names: two sockets
        ("ipc:///tmp/x/d/../a.sock", "ipc:///tmp/x/a.sock"),  # d may be a symbolic link
        ("tcp://localhost:7001", "tcp://127.0.0.1:7001"),  # names are not resolved
    ],
)
def test_endpoints_that_may_differ_are_both_taken(peers: tuple[str, ...]) -> None:
    assert NodeConfig(name="a", peers=peers).peers == peers
