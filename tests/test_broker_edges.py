"""The ``Broker`` with three or more nodes, under faults, checked against ``docs/cluster.md``.

Routing through one broker (exact delivery, wildcards, unsubscribe, a late
subscriber), the broker killed with kill -9 and restarted on its endpoint,
paused with SIGSTOP past ``heartbeat_timeout``, a node restarted under its
name, two nodes under one name, and hand-made frames sent to the broker's
sockets with raw pyzmq.

Nodes run in one process over ipc (``nodes`` fixture) where the case needs no
process to die, and as OS processes (``tests/_node_child.py``, a broker
child) where one is killed or paused.  Every wait is on a condition or a
child's answer; nothing sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import BridgeError, Broker, Event, EventBus
from actors._cluster.wire import (
    CREDIT,
    ERROR,
    HEARTBEAT_TOPIC,
    PUBLISH,
    VERSION,
    Request,
    decode_request,
    decode_stream,
    encode_data_payload,
    encode_request,
)
from actors._codec.events import encode_batch
from tests._cluster_support import WAIT, ipc, node, request_endpoint
from tests._support import reaped, wait_for
from tests.test_cluster import Node, start
from tests.test_cluster_fault_edges import (
    BROKER_CHILD,
    FAST,
    BrokerChild,
    cont,
    gaps_add_up,
    in_order_once,
    settled,
    stop,
)


class Log:
    """A handler keeping ``(origin, type, data)`` of each event; waits on a condition."""

    def __init__(self) -> None:
        self.got: list[tuple[str | None, str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.got.append((event.origin, event.event_type, event.data))
            self._cond.notify_all()

    def until(self, check: Callable[[list[tuple[str | None, str, Any]]], bool]) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: check(self.got), WAIT)
            assert ok, f"condition never held: {self.got[-20:]}"
            return list(self.got)

    def has(self, origin: str, event_type: str, data: Any) -> list[Any]:
        return self.until(lambda got: (origin, event_type, data) in got)

    def of(self, origin: str) -> list[Any]:
        with self._cond:
            return [d for o, _, d in self.got if o == origin]


def fast(nodes: Callable[..., EventBus], name: str, broker: Broker, **kw: Any) -> EventBus:
    return nodes(name, peers=(broker.endpoint,), **FAST, **kw)


def drain_publish(bus: EventBus, event_type: str, lo: int, hi: int) -> None:
    for future in bus.publish_many([Event(event_type=event_type, data=i) for i in range(lo, hi)]):
        future.get(timeout=WAIT)


def data_of(child: Node, origin: str) -> list[Any]:
    return [d for o, _, d in list(child.got) if o == origin]


def wait_origin(child: Node, origin: str, wanted: set[Any]) -> list[Any]:
    """Wait until ``child`` handled every data value in ``wanted`` from ``origin``."""
    ok = wait_for(lambda: wanted <= set(data_of(child, origin)), WAIT)
    assert ok, (
        f"{child.name} misses {sorted(wanted - set(data_of(child, origin)))[:20]} of {origin}"
    )
    return data_of(child, origin)


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def broker_process(procs: list[Any], tmp_path: Path, hub: str) -> BrokerChild:
    script = tmp_path / "broker_child.py"
    if not script.exists():
        script.write_text(BROKER_CHILD)
    broker = BrokerChild(script, hub)
    procs.append(broker)
    return broker


# -- routing through one broker ----------------------------------------------------------------


def test_four_nodes_through_one_broker_each_get_exactly_what_they_subscribe(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, c, d = (fast(nodes, n, broker) for n in "abcd")
        logs = {n: Log() for n in "abcd"}
        a.subscribe("job.*", logs["a"])  # one segment after job.
        b.subscribe("job.**", logs["b"])  # anything under job
        c.subscribe("**", logs["c"])  # everything
        d.subscribe("audit.*.done", logs["d"])
        buses = {"a": a, "b": b, "c": c, "d": d}
        for n, bus in buses.items():
            assert bus.wait_for_peers([m for m in "abcd" if m != n], WAIT)
        for n, bus in buses.items():
            drain_publish(bus, f"job.{n}", 0, 20)
            drain_publish(bus, f"job.{n}.deep", 0, 5)
            drain_publish(bus, f"audit.{n}.done", 0, 3)
            drain_publish(bus, "other", 0, 2)
        for n in "abcd":  # a marker every pattern of c matches, last of each origin
            buses[n].publish("zz.end", n).get(timeout=WAIT)
        logs["c"].until(lambda got: {d_ for _, t, d_ in got if t == "zz.end"} == set("abcd"))
        for n in "abcd":
            buses[n].publish("job.end", n).get(timeout=WAIT)
        for n in "ab":
            logs[n].until(lambda got: {d_ for _, t, d_ in got if t == "job.end"} == set("abcd"))
        for n in "abcd":
            buses[n].publish("audit.end.done", n).get(timeout=WAIT)
        logs["d"].until(
            lambda got: {d_ for _, t, d_ in got if t == "audit.end.done"} == set("abcd")
        )
        for o in "abcd":
            assert [(t, x) for oo, t, x in logs["a"].got if oo == o and t != "job.end"] == [
                (f"job.{o}", i) for i in range(20)
            ]
            assert [(t, x) for oo, t, x in logs["b"].got if oo == o and t != "job.end"] == [
                (f"job.{o}", i) for i in range(20)
            ] + [(f"job.{o}.deep", i) for i in range(5)]
            assert [(t, x) for oo, t, x in logs["d"].got if oo == o and t != "audit.end.done"] == [
                (f"audit.{o}.done", i) for i in range(3)
            ]
            ends = {"zz.end", "job.end", "audit.end.done"}
            assert len([1 for oo, t, _ in logs["c"].got if oo == o and t not in ends]) == 30
        # Matching only: a and b take nothing whose prefix is not "job." from a peer.
        for n in "ab":
            stats = node(buses[n]).statistics()
            assert stats.events_received == 3 * (25 + 1), stats  # job.* of 3 peers
            assert stats.duplicates == 0
        assert node(d).statistics().events_received == 3 * (3 + 1), node(d).statistics()


def test_an_unsubscribe_through_the_broker_stops_the_traffic_to_that_node_only(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, c = (fast(nodes, n, broker) for n in "abc")
        got_b, got_c, marker_b = Log(), Log(), Log()
        sub_b = b.subscribe("t.*", got_b)
        b.subscribe("m.*", marker_b)
        c.subscribe("t.*", got_c)
        assert b.wait_for_peers(["a"], WAIT)
        assert c.wait_for_peers(["a"], WAIT)
        drain_publish(a, "t.x", 0, 10)
        got_b.has("a", "t.x", 9)
        got_c.has("a", "t.x", 9)
        sub_b.unsubscribe()
        assert b.wait_for_peers(["a"], WAIT)  # the new sync round: the unsubscribe is in force
        received = node(b).statistics().events_received
        drain_publish(a, "t.x", 10, 30)
        a.publish("m.end", "end").get(timeout=WAIT)
        marker_b.has("a", "m.end", "end")
        got_c.has("a", "t.x", 29)
        assert got_c.of("a") == list(range(30))
        assert got_b.of("a") == list(range(10))
        # Nothing of t.x crossed to b after its unsubscribe: only the marker.
        assert node(b).statistics().events_received == received + 1


def test_a_subscriber_added_late_through_the_broker_gets_everything_from_then_on(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, c = (fast(nodes, n, broker) for n in "abc")
        early = Log()
        b.subscribe("job.*", early)
        c.subscribe("other.*", Log())
        assert b.wait_for_peers(["a", "c"], WAIT)
        assert c.wait_for_peers(["a", "b"], WAIT)
        drain_publish(a, "job.x", 0, 50)
        early.has("a", "job.x", 49)
        late = Log()
        c.subscribe("job.*", late)  # the prefix b holds already: the broker announces it once
        assert c.wait_for_peers(["a", "b"], WAIT)
        drain_publish(a, "job.x", 50, 100)
        drain_publish(b, "job.y", 0, 10)
        late.has("a", "job.x", 99)
        late.has("b", "job.y", 9)
        from_a = late.of("a")
        # At-least-once from the subscribe on: maybe a few earlier ones, in order, once.
        assert from_a == sorted(set(from_a)), from_a
        assert set(range(50, 100)) <= set(from_a)
        assert late.of("b") == list(range(10))
        gaps_add_up(node(c).statistics())


# -- the broker killed, paused ---------------------------------------------------------------


@pytest.mark.slow
def test_a_broker_killed_and_restarted_loses_nothing_of_either_origin_at_two_receivers(
    procs: list[Any], tmp_path: Path
) -> None:
    hub = ipc(tmp_path, "hub")
    broker = broker_process(procs, tmp_path, hub)
    a = start(procs, name="a", peers=[hub], path=str(tmp_path / "a"), node=FAST)
    c = start(procs, name="c", peers=[hub], node=FAST)  # no journal: its ring answers
    b = start(procs, name="b", peers=[hub], pattern="job.*", node=FAST)
    d = start(
        procs,
        name="d",
        peers=[hub],
        pattern="job.**",
        path=str(tmp_path / "d"),
        durable="w",
        node=FAST,
    )
    b.ask("sync a,c", "synced")
    d.ask("sync a,c", "synced")
    a.ask("publish job.a 0 40", "published")
    c.ask("publish job.c 0 40", "published")
    for r in (b, d):
        wait_origin(r, "a", set(range(40)))
        wait_origin(r, "c", set(range(40)))
    broker.kill()
    a.ask("publish job.a 40 80 acked", "acked")  # acknowledged: journaled, fsynced or not
    c.ask("publish job.c 40 80", "published")
    broker = broker_process(procs, tmp_path, hub)
    a.ask("publish job.a 80 100", "published")
    c.ask("publish job.c 80 100", "published")
    for r in (b, d):
        wait_origin(r, "a", set(range(100)))
        wait_origin(r, "c", set(range(100)))
        assert in_order_once(r.got, "a") == list(range(100))
        assert in_order_once(r.got, "c") == list(range(100))
        stats = settled(r)
        gaps_add_up(stats)
        assert stats["gaps_unrecovered"] == 0, stats
    assert d.ask("journal job.a", "journal ") == "journal " + json.dumps(list(range(100)))
    for child in (a, b, c, d, broker):
        child.close()


@pytest.mark.slow
def test_a_broker_paused_past_heartbeat_timeout_loses_nothing_once_continued(
    procs: list[Any], tmp_path: Path
) -> None:
    hub = ipc(tmp_path, "hub")
    broker = broker_process(procs, tmp_path, hub)
    a = start(procs, name="a", peers=[hub], path=str(tmp_path / "a"), node=FAST)
    c = start(procs, name="c", peers=[hub], node=FAST)
    b = start(procs, name="b", peers=[hub], pattern="job.*", node=FAST)
    b.ask("sync a,c", "synced")
    a.ask("publish job.a 0 20", "published")
    c.ask("publish job.c 0 20", "published")
    wait_origin(b, "a", set(range(20)))
    wait_origin(b, "c", set(range(20)))
    stop(broker)
    b.ask("gone a", "gone")  # heard through the broker only: dead past heartbeat_timeout
    b.ask("gone c", "gone")
    a.ask("publish job.a 20 60 acked", "acked")
    c.ask("publish job.c 20 60", "published")
    cont(broker)
    b.ask("peers a,c", "peers")
    a.ask("publish job.a 60 70", "published")
    c.ask("publish job.c 60 70", "published")
    wait_origin(b, "a", set(range(70)))
    wait_origin(b, "c", set(range(70)))
    assert in_order_once(b.got, "a") == list(range(70))
    assert in_order_once(b.got, "c") == list(range(70))
    stats = settled(b)
    gaps_add_up(stats)
    assert stats["gaps_unrecovered"] == 0, stats
    for child in (a, b, c):
        child.close()
    broker.close()


@pytest.mark.slow
def test_losses_of_an_origin_without_a_journal_past_its_ring_are_counted_through_a_broker(
    procs: list[Any], tmp_path: Path
) -> None:
    # A small ring (recovery_ring + 2 x send_queue kept) and a burst while the
    # broker is down: what the ring no longer holds is counted, never silent.
    hub = ipc(tmp_path, "hub")
    broker = broker_process(procs, tmp_path, hub)
    small = {**FAST, "recovery_ring": 50, "send_queue": 50, "send_hwm": 10, "batch_size": 1}
    c = start(procs, name="c", peers=[hub], node=small)
    b = start(procs, name="b", peers=[hub], pattern="job.*", node=FAST)
    b.ask("sync c", "synced")
    c.ask("publish job.c 0 10", "published")
    wait_origin(b, "c", set(range(10)))
    broker.kill()
    n = 1000
    c.ask(f"publish job.c 10 {n}", "published")
    broker = broker_process(procs, tmp_path, hub)
    c.ask(f"publish job.c {n} {n + 1}", "published")
    wait_origin(b, "c", {n})
    data = in_order_once(b.got, "c")
    assert len(data) < n + 1, "the ring kept everything: nothing was tested"

    def counted() -> bool:
        s = b.stats()
        return s["gaps_open"] == 0 and s["gaps_unrecovered"] >= 1

    assert wait_for(counted, WAIT), b.stats()
    gaps_add_up(b.stats())
    for child in (b, c, broker):
        child.close()


# -- names: restarted, duplicated --------------------------------------------------------------


@pytest.mark.slow
def test_an_origin_without_a_journal_restarted_under_its_name_behind_a_broker(
    procs: list[Any], tmp_path: Path
) -> None:
    hub = ipc(tmp_path, "hub")
    broker_process(procs, tmp_path, hub)
    b = start(procs, name="b", peers=[hub], pattern="job.*", node=FAST)
    d = start(procs, name="d", peers=[hub], pattern="job.*", node=FAST)
    c_config = {"name": "c", "peers": [hub], "node": FAST}
    c = start(procs, **c_config)
    b.ask("sync c", "synced")
    d.ask("sync c", "synced")
    c.ask("publish job.c 0 30", "published")
    wait_origin(b, "c", set(range(30)))
    wait_origin(d, "c", set(range(30)))
    c.kill()
    c = start(procs, **c_config)
    c.ask("publish job.c 30 60", "published")  # before the receivers follow the new stream
    c.ask("sync b,d", "synced")
    c.ask("publish job.c 60 70", "published")
    for r in (b, d):
        wait_origin(r, "c", set(range(70)))
        assert in_order_once(r.got, "c") == list(range(70))
        gaps_add_up(settled(r))


def test_two_nodes_under_one_name_through_a_broker_leave_the_others_traffic_alone(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b = fast(nodes, "a", broker), fast(nodes, "b", broker)
        x1 = fast(nodes, "x", broker)
        got = Log()
        b.subscribe("t.*", got)
        x1.subscribe("t.*", Log())
        assert b.wait_for_peers(["a", "x"], WAIT)
        x2 = fast(nodes, "x", broker)
        x2.subscribe("t.*", Log())
        drain_publish(x2, "t.twin", 0, 5)
        drain_publish(a, "t.a", 0, 20)
        got.has("a", "t.a", 19)
        assert got.of("a") == list(range(20))
        # Neither twin takes the other for a live peer of its own name.
        for twin in (x1, x2):
            assert "x" not in node(twin).statistics().peers_alive
        # A request through the broker still reaches a node of that name.
        answered = a.publish_remote("b", "t.remote", "r", timeout=WAIT)
        assert answered.origin == "b"
        got.has("b", "t.remote", "r")


# -- hand-made frames at the broker's sockets ---------------------------------------------------


def raw(kind: int, to: str, sender: str, body: bytes, *extra: bytes) -> list[bytes]:
    return [bytes((VERSION, kind)), to.encode(), sender.encode(), b"r", body, *extra]


def test_malformed_requests_at_the_brokers_router_are_dropped_and_routing_goes_on(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub"), max_frame_bytes=70 * 1024) as broker:
        a, b, c = (fast(nodes, n, broker) for n in "abc")
        got_b, got_c = Log(), Log()
        b.subscribe("t.*", got_b)
        b.subscribe("evil.*", got_b)
        c.subscribe("t.*", got_c)
        assert b.wait_for_peers(["a", "c"], WAIT)
        assert c.wait_for_peers(["a", "b"], WAIT)
        assert a.wait_for_peers(["b", "c"], WAIT)
        dropped = {n: node(bus).statistics().frames_dropped for n, bus in (("b", b), ("c", c))}
        big = Event(event_type="evil.big", data="x" * (80 * 1024))
        ctx = zmq.Context()
        try:
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.connect(broker.endpoint)
            garbage = [
                [b"\x01"],  # one frame
                [b"", b""],
                raw(PUBLISH, "b", "evil", b"{}")[:4],  # four frames
                [*raw(PUBLISH, "b", "evil", b"{}"), b"", b""],  # seven frames
                [bytes((9, PUBLISH)), b"b", b"evil", b"r", b"{}"],  # another version
                [bytes((VERSION, 200)), b"b", b"evil", b"r", b"{}"],  # unknown kind
                [bytes((VERSION,)), b"b", b"evil", b"r", b"{}"],  # truncated header
                raw(CREDIT, "b", "evil", b"[1, 2]"),  # body not an object
                raw(CREDIT, "b", "evil", b'{"epoch": NaN}'),
                raw(CREDIT, "b", "evil", b"\xff\xfe{\x00}\x00"),  # not UTF-8
                [bytes((VERSION, CREDIT)), b"b\xff", b"evil", b"r", b"{}"],  # to not UTF-8
                raw(PUBLISH, "b", "evil", b"{}", encode_batch([big])),  # over max_frame_bytes
            ]
            for parts in garbage:
                dealer.send_multipart(parts)
            # Answered once the broker handled everything above (one connection, in order).
            probe = Request(PUBLISH, "ghost", "evil", "probe", {})
            dealer.send_multipart(encode_request(probe))
            # Only the request over max_frame_bytes is answered: refused at once
            # (its asker waits for an answer), the rest are dropped unanswered.
            assert dealer.poll(int(WAIT * 1000))
            refusal = decode_request(dealer.recv_multipart(), 1 << 20)
            assert (refusal.kind, refusal.rid, refusal.to) == (ERROR, "r", "evil"), refusal
            assert "the broker's max_frame_bytes" in refusal.body["error"], refusal
            assert broker.oversized == 1
            assert dealer.poll(int(WAIT * 1000))
            answer = decode_request(dealer.recv_multipart(), 1 << 20)
            assert (answer.kind, answer.rid) == (ERROR, "probe"), answer
            assert dealer.poll(0) == 0, "a malformed request got an answer"
        finally:
            ctx.destroy(0)
        # Nothing malformed was forwarded: b and c would have dropped and
        # counted it (checked below).  ``broker.routed`` is no measure here:
        # honest credits go through it whenever a peer is heard again, which
        # a loaded machine makes happen at any moment.
        # Honest traffic, requests and stream, still flows through it.
        answered = a.publish_remote("b", "t.remote", "r", timeout=WAIT)
        assert answered.origin == "b"
        drain_publish(a, "t.x", 0, 10)
        got_b.has("a", "t.x", 9)
        got_c.has("a", "t.x", 9)
        got_b.has("b", "t.remote", "r")
        assert [t for _, t, _ in got_b.got if t.startswith("evil")] == []
        for n, bus in (("b", b), ("c", c)):
            assert node(bus).statistics().frames_dropped == dropped[n], n


def test_forged_out_of_range_frames_through_the_broker_are_rejected_and_counted(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, c = (fast(nodes, n, broker) for n in "abc")
        got = {"b": Log(), "c": Log()}
        b.subscribe("t.*", got["b"])
        c.subscribe("t.*", got["c"])
        assert b.wait_for_peers(["a"], WAIT)
        assert c.wait_for_peers(["a"], WAIT)
        drain_publish(a, "t.x", 0, 5)
        for n in "bc":
            got[n].has("a", "t.x", 4)
        ctx = zmq.Context()
        try:
            sniff = ctx.socket(zmq.SUB)
            sniff.linger = 0
            sniff.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
            sniff.connect(broker.subscribe_endpoint)
            epoch = head = None
            while epoch is None:
                assert sniff.poll(int(WAIT * 1000))
                frame = decode_stream(sniff.recv_multipart(), 1 << 20)
                body = getattr(frame, "body", {})
                if body.get("node") == "a":
                    epoch, head = body["epoch"], body["head"]
            fake = ctx.socket(zmq.XPUB)
            fake.linger = 0
            fake.connect(broker.publish_endpoint)
            assert fake.poll(int(WAIT * 1000))  # the broker forwards its subscribers' topics
            assert head is not None
            forged = [
                (1 << 63, 1 << 63),  # at 2^63
                (head + (1 << 30) + 5, head + (1 << 30) + 5),  # more than 2^30 past the head
            ]
            before = {
                n: node(bus).statistics().sequences_rejected for n, bus in (("b", b), ("c", c))
            }
            for first, last in forged:
                event = Event(event_type="t.forged", data="forged", origin="a", sequence=first)
                fake.send_multipart(
                    encode_data_payload(
                        b"t.", "a", epoch, [(b"t.", head)], (first, last, 1), encode_batch([event])
                    )
                )
            for n, bus in (("b", b), ("c", c)):
                assert node(bus).wait(
                    lambda s, k=n: s.sequences_rejected >= before[k] + len(forged), WAIT
                ), node(bus).statistics()
        finally:
            ctx.destroy(0)
        drain_publish(a, "t.x", 5, 15)
        for n, bus in (("b", b), ("c", c)):
            got[n].has("a", "t.x", 14)
            assert got[n].of("a") == list(range(15)), n
            gaps_add_up(node(bus).statistics())


def test_an_unsubscribe_sent_by_hand_to_the_brokers_subscribe_endpoint_stops_no_prefix(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # A hand-made client at the broker's XPUB unsubscribes a prefix it never
    # subscribed: the honest subscribers of that prefix must go on receiving.
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, c = (fast(nodes, n, broker) for n in "abc")
        got = {"b": Log(), "c": Log()}
        b.subscribe("t.*", got["b"])
        c.subscribe("t.*", got["c"])
        assert b.wait_for_peers(["a"], WAIT)
        assert c.wait_for_peers(["a"], WAIT)
        drain_publish(a, "t.x", 0, 5)
        for n in "bc":
            got[n].has("a", "t.x", 4)
        ctx = zmq.Context()
        try:
            rogue = ctx.socket(zmq.XSUB)
            rogue.linger = 0
            rogue.connect(broker.subscribe_endpoint)
            rogue.send(b"\x00t.")
            # A probe on the same connection: once the broker forwarded its
            # subscription upstream, the unsubscribe before it went too.
            rogue.send(b"\x01probe.")

            def probe_back() -> bool:
                a.publish("probe.x", "p").get(timeout=WAIT)
                return bool(rogue.poll(50))

            assert wait_for(probe_back, WAIT)
        finally:
            ctx.destroy(0)
        drain_publish(a, "t.x", 5, 15)
        for n in "bc":
            got[n].has("a", "t.x", 14)
            assert got[n].of("a") == list(range(15)), n


def test_two_brokers_between_the_same_three_nodes_deliver_each_event_once_in_order(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub1")) as one, Broker(ipc(tmp_path, "hub2")) as two:
        buses = {n: nodes(n, peers=(one.endpoint, two.endpoint), **FAST) for n in "abc"}
        logs = {n: Log() for n in "abc"}
        for n, bus in buses.items():
            bus.subscribe("job.*", logs[n])
        for n, bus in buses.items():
            assert bus.wait_for_peers([m for m in "abc" if m != n], WAIT)
        for n, bus in buses.items():
            drain_publish(bus, f"job.{n}", 0, 100)
        for n in "abc":
            for o in "abc":
                logs[n].has(o, f"job.{o}", 99)
        for bus in buses.values():
            drain_publish(bus, "job.end", 0, 1)
        for n in "abc":
            logs[n].until(lambda got: len([1 for _, t, _ in got if t == "job.end"]) == 3)
            for o in "abc":
                assert logs[n].of(o) == [*range(100), 0], (n, o)
            gaps_add_up(node(buses[n]).statistics())


def test_a_mesh_link_beside_a_broker_delivers_each_event_once_in_order(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a = nodes("a", listen=ipc(tmp_path, "a"), peers=(broker.endpoint,), **FAST)
        b = nodes("b", peers=(broker.endpoint, request_endpoint(a)), **FAST)
        c = nodes("c", peers=(broker.endpoint,), **FAST)
        logs = {"b": Log(), "c": Log()}
        b.subscribe("job.*", logs["b"])
        c.subscribe("job.*", logs["c"])
        assert b.wait_for_peers(["a", "c"], WAIT)
        assert c.wait_for_peers(["a", "b"], WAIT)
        drain_publish(a, "job.a", 0, 200)
        drain_publish(a, "job.end", 200, 201)
        for n in "bc":
            logs[n].has("a", "job.end", 200)
            assert logs[n].of("a") == list(range(201)), n


def test_a_broker_restarted_in_place_routes_requests_again_once_the_nodes_greet_it(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = ipc(tmp_path, "hub")
    broker = Broker(hub)
    try:
        a, b, c = (nodes(n, peers=(hub,), **FAST) for n in "abc")
        got = Log()
        b.subscribe("t.*", got)
        assert a.wait_for_peers(["b", "c"], WAIT)
        assert a.publish_remote("b", "t.one", 1, timeout=WAIT).origin == "b"
        broker.close()
        broker = Broker(hub)

        def remote_works() -> bool:
            try:
                return a.publish_remote("b", "t.two", 2, timeout=1.0).origin == "b"
            except BridgeError:  # typed: not yet re-greeted
                return False

        assert wait_for(remote_works, WAIT)
        got.has("b", "t.two", 2)
        drain_publish(c, "t.c", 0, 10)
        got.has("c", "t.c", 9)
        assert got.of("c") == list(range(10))
    finally:
        broker.close()


@pytest.mark.slow
def test_publish_remote_through_a_broker_reaches_a_node_restarted_under_its_name(
    procs: list[Any], tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = ipc(tmp_path, "hub")
    broker_process(procs, tmp_path, hub)
    a = nodes("a", peers=(hub,), **FAST)
    got = Log()
    a.subscribe("job.*", got)
    c_config = {"name": "c", "peers": [hub], "path": str(tmp_path / "c"), "node": FAST}
    c = start(procs, **c_config)
    assert a.wait_for_peers(["c"], WAIT)
    c.ask("sync a", "synced")
    assert a.publish_remote("c", "job.r", 1, timeout=WAIT).origin == "c"
    got.has("c", "job.r", 1)
    c.kill()
    c = start(procs, **c_config)
    c.ask("sync a", "synced")
    answered = a.publish_remote("c", "job.r", 2, timeout=WAIT)
    assert answered.origin == "c"
    got.has("c", "job.r", 2)
    assert c.ask("journal job.r", "journal ") == "journal [1, 2]"
    assert got.of("c") == [1, 2]
    c.close()


def test_stream_frames_of_the_wrong_shape_through_the_broker_are_dropped_and_counted(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    with Broker(ipc(tmp_path, "hub")) as broker:
        a, b, c = (fast(nodes, n, broker) for n in "abc")
        got = {"b": Log(), "c": Log()}
        b.subscribe("t.*", got["b"])
        c.subscribe("t.*", got["c"])
        assert b.wait_for_peers(["a"], WAIT)
        assert c.wait_for_peers(["a"], WAIT)
        before = {n: node(bus).statistics().frames_dropped for n, bus in (("b", b), ("c", c))}
        bad = [
            [b"t.x"],  # one part
            [b"t.x", b"\x01\x01"],  # two parts
            [b"t.x", b"\x01\x01", b"", b""],  # four parts
            [b"t.x", b"\x01\x01", b"not a batch"],  # truncated header
            [b"t.x", bytes((7, 1)) + bytes(40), b""],  # another version
            [b"t.x", b"\x01\x01" + bytes(29) + b"\x01\x00\x00a", b"\xff\xff\xff"],  # bad payload
        ]
        ctx = zmq.Context()
        try:
            fake = ctx.socket(zmq.XPUB)
            fake.linger = 0
            fake.connect(broker.publish_endpoint)
            assert fake.poll(int(WAIT * 1000))
            for parts in bad:
                fake.send_multipart(parts)
            for n, bus in (("b", b), ("c", c)):
                assert node(bus).wait(
                    lambda s, k=n: s.frames_dropped >= before[k] + len(bad), WAIT
                ), node(bus).statistics()
        finally:
            ctx.destroy(0)
        drain_publish(a, "t.x", 0, 10)
        for n in "bc":
            got[n].has("a", "t.x", 9)
            assert got[n].of("a") == list(range(10))


# Regression: a node named "broker" could not join through a Broker: the WELCOME's sender
# is the broker's default name, which the node refused as a duplicate of its own.
def test_a_node_may_be_named_like_the_broker_it_joins_through(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # Nothing documents "broker" as a reserved node name: the broker is no node.
    with Broker(ipc(tmp_path, "hub")) as broker:
        hub = fast(nodes, "broker", broker)
        b, c = fast(nodes, "b", broker), fast(nodes, "c", broker)
        got = Log()
        b.subscribe("t.*", got)
        hub.linked_nodes(WAIT)  # must not raise PeerRefusedError: nobody else is "broker"
        assert b.wait_for_peers(["broker", "c"], WAIT)
        drain_publish(hub, "t.h", 0, 5)
        drain_publish(c, "t.c", 0, 5)
        got.has("broker", "t.h", 4)
        got.has("c", "t.c", 4)
        assert got.of("broker") == list(range(5))


def test_a_peer_without_listen_behind_a_broker_is_synced_only_through_the_broker(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # Mesh and broker mixed: ``b`` has no stream of its own, but its events
    # reach ``a`` on the broker's, which must be synced before ``a`` counts
    # ``b`` ready (counted at once, the first event after it was lost half the time).
    with Broker(ipc(tmp_path, "hub")) as broker:
        a = nodes("a", listen=ipc(tmp_path, "a"), peers=(broker.endpoint,))
        got: list[int] = []
        arrived = threading.Event()
        a.subscribe("x.*", lambda e: (got.append(e.data), arrived.set()))
        b = nodes("b", peers=(broker.endpoint, request_endpoint(a)))
        assert a.wait_for_peers(["b"], WAIT)
        b.publish("x.evt", 0).get(timeout=WAIT)
        assert arrived.wait(WAIT), "the first event after wait_for_peers was lost"
        assert got == [0]


def test_a_client_dialing_a_brokered_node_alone_holds_up_no_request(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # A node behind a broker, and a client (no listen) that dials only that
    # node, as every short-lived CLI command does: nothing of the client can
    # come on any stream, so nothing is waited for (the node-wide "behind a
    # broker" rule made every request wait half its timeout, or for ever).
    with Broker(ipc(tmp_path, "hub")) as broker:
        a = nodes("a", listen=ipc(tmp_path, "a"), peers=(broker.endpoint,))
        assert a.linked_nodes(WAIT) == []  # the broker link is up (a broker is no node)
        nodes("client", peers=(request_endpoint(a),))
        assert a.wait_for_peers(["client"], WAIT)
        a.respond("q.one", lambda e: "ok")
        answers: list[str] = []
        asking = threading.Thread(
            target=lambda: answers.append(a.request("q.one", timeout=None).data), daemon=True
        )
        asking.start()
        asking.join(WAIT)
        assert not asking.is_alive(), "a request waited for a client with nothing to sync"
        assert answers == ["ok"]
