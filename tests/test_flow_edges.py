"""Fault injection at cross-process flow control and the broker (``docs/cluster.md``,
"Flow control"): paused peers, an unsubscribing receiver, a restarted broker,
receivers of different speeds.  In-process node buses over ipc first, then
real OS processes (``tests/_credit_child.py``)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import (
    BackpressureError,
    Broker,
    Event,
    EventBus,
    EventConfig,
    NodeConfig,
    generate_keypair,
)
from tests._cluster_support import free_port
from tests._support import LineChild, reaped
from tests.test_credit_procs import CHILD, QUEUE, Proc, pair, with_signal

pytestmark = pytest.mark.slow

WAIT = 30.0
FAST = {"heartbeat_interval": 0.25, "heartbeat_timeout": 1.0}


# -- in one process ----------------------------------------------------------------------


class Gated:
    """A handler held shut until ``gate`` is set; records data."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.got: list[Any] = []
        self.cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        self.gate.wait(WAIT)
        with self.cond:
            self.got.append(event.data)
            self.cond.notify_all()

    def wait_for(self, n: int) -> list[Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, WAIT), len(self.got)
            return list(self.got)


@pytest.fixture
def buses() -> Iterator[list[EventBus]]:
    opened: list[EventBus] = []
    yield opened
    for bus in reversed(opened):
        bus.close(timeout=10)


def make(opened: list[EventBus], name: str, block_timeout: float = 10.0, **node: Any) -> EventBus:
    bus = EventBus(EventConfig(block_timeout=block_timeout), node=NodeConfig(name=name, **node))
    opened.append(bus)
    return bus


def fill_until_held(a: EventBus, kind: str) -> threading.Thread:
    """Publish ``kind`` on a thread until the origin's hold is up (credit-stalled)."""
    stop = threading.Event()

    def run() -> None:
        n = 0
        while not stop.is_set():
            try:
                a.publish_many([Event(event_type=kind, data=n + i) for i in range(10)])
            except Exception:  # BackpressureError, or the bus closed under a held publish
                return
            n += 10

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert a.node is not None
    ok = a.node.wait(
        lambda s: s.publishers_held >= 1 and bool(s.lagging_peers) and s.send_queued >= 100, WAIT
    )
    stop.set()
    assert ok, a.node.statistics()
    return thread


def publish_until(bus: EventBus, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            bus.publish_many([Event(event_type="flood.x", data=n + i) for i in range(10)])
        except Exception:  # held past block_timeout, or the bus closed: stop
            return
        n += 10


def test_unsubscribing_the_last_pattern_releases_what_the_origin_holds_for_it(
    tmp_path: Path, buses: list[EventBus]
) -> None:
    """``docs/cluster.md``: an origin forgets a receiver "that unsubscribed
    everything": the queue goes on, held publishers are released.  With a long
    ``heartbeat_timeout`` the release can only come from the unsubscribe."""
    slow = {"heartbeat_interval": 0.25, "heartbeat_timeout": 60.0}
    a = make(
        buses,
        "a",
        block_timeout=2.0,
        listen=f"ipc://{tmp_path}/a.sock",
        send_queue=100,
        batch_size=10,
        **slow,
    )
    b = make(buses, "b", peers=[f"ipc://{tmp_path}/a.sock"], credit_window=50, **slow)
    handler = Gated()
    sub = b.subscribe("flood.*", handler)
    assert b.wait_for_peers(["a"], WAIT)
    assert a.node is not None
    assert a.node.wait(lambda s: "b" in s.credit_receivers, WAIT)
    thread = fill_until_held(a, "flood.x")
    sub.unsubscribe()
    handler.gate.set()
    ok = a.node.wait(
        lambda s: s.send_queued == 0 and not s.lagging_peers and "b" not in s.credit_receivers,
        WAIT / 2,  # well under heartbeat_timeout: not an expiry
    )
    assert ok, a.node.statistics()
    thread.join(WAIT)
    a.publish("flood.x", -1).get(timeout=WAIT)  # nobody holds it back any more


def test_publishers_of_events_no_peer_wants_are_never_held_by_a_stalled_queue(
    tmp_path: Path, buses: list[EventBus]
) -> None:
    """ "Publishers of events no peer wants are never held." """
    slow = {"heartbeat_interval": 0.25, "heartbeat_timeout": 60.0}
    a = make(
        buses,
        "a",
        block_timeout=2.0,
        listen=f"ipc://{tmp_path}/a.sock",
        send_queue=100,
        batch_size=10,
        **slow,
    )
    b = make(buses, "b", peers=[f"ipc://{tmp_path}/a.sock"], credit_window=50, **slow)
    handler = Gated()
    b.subscribe("flood.*", handler)
    assert b.wait_for_peers(["a"], WAIT)
    assert a.node is not None
    assert a.node.wait(lambda s: "b" in s.credit_receivers, WAIT)
    thread = fill_until_held(a, "flood.x")
    try:
        for kind in ("other.y", "flood", "floodx.y"):
            a.publish(kind, kind).get(timeout=WAIT)  # BackpressureError if held
            a.publish_many([Event(event_type=kind, data=i) for i in range(300)])[-1].get(
                timeout=WAIT
            )
    finally:
        handler.gate.set()
        thread.join(WAIT)


def test_a_fast_subscriber_behind_a_broker_is_not_held_by_a_slow_one_that_asked_to_be_dropped(
    tmp_path: Path, buses: list[EventBus]
) -> None:
    """Two receivers behind one broker: ``b`` handles nothing (``lag_policy="drop"``),
    ``c`` is fast.  "A frame that another receiver with credit wants still goes
    out"; frames only ``b`` wants are dropped, counted and announced: the origin's
    publishers are never refused and ``c`` gets everything, in order."""
    with Broker(f"ipc://{tmp_path}/hub.sock") as hub:
        a = make(
            buses,
            "a",
            # c, live and without a drop policy, holds a's publishers while it
            # is out of credit: on a loaded machine for more than a moment.
            # Held by b (the defect this looks for), they would fail after it.
            block_timeout=WAIT,
            peers=[hub.endpoint],
            send_queue=200,
            batch_size=10,
            **FAST,
        )
        b = make(buses, "b", peers=[hub.endpoint], credit_window=50, lag_policy="drop", **FAST)
        c = make(buses, "c", peers=[hub.endpoint], credit_window=50, **FAST)
        slow = Gated()
        b.subscribe("t.*", slow, capacity=100_000)
        fast = Gated()
        fast.gate.set()
        c.subscribe("t.shared.*", fast)
        lagging: list[Any] = []
        a.subscribe("$bus.peer.lagging", lambda e: lagging.append(e.data))
        assert b.wait_for_peers(["a"], WAIT)
        assert c.wait_for_peers(["a"], WAIT)
        assert a.node is not None
        assert a.node.wait(lambda s: {"b", "c"} <= set(s.credit_receivers), WAIT)
        n = 5_000
        try:
            for first in range(0, n, 50):
                a.publish_many(
                    [Event(event_type="t.shared.x", data=i) for i in range(first, first + 50)]
                    + [Event(event_type="t.only_b", data=i) for i in range(first, first + 50)]
                )
            got = fast.wait_for(n)
            assert got == list(range(n))
            assert a.node.wait(lambda s: s.events_dropped_lagging > 0, WAIT)
            assert a.metrics().rejected == 0
            assert lagging
            assert lagging[0]["peer"] == "b"
            # The queue's bound: send_queue plus two publishes of the one publishing thread.
            assert a.node.statistics().send_queue_peak <= 200 + 2 * 100
        finally:
            slow.gate.set()


# -- across processes --------------------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


class BrokerAt(LineChild):
    def __init__(self, endpoint: str) -> None:
        super().__init__(CHILD, {"broker": endpoint}, wait=WAIT, name="broker")
        self.endpoint = self.expect("ready").split()[1]


def acked(proc: Proc, kind: str, n: int, chunk: int) -> dict[str, Any]:
    proc.send(f"acked {kind} {n} {chunk}")
    while True:
        line = proc.lines.get(timeout=WAIT)
        if line.startswith("flooded "):
            return json.loads(line[len("flooded ") :])
        assert line.startswith("ack "), line


@pytest.mark.parametrize("via", ["mesh", "broker"])
def test_a_paused_receiver_holds_no_one_back_and_recovers_everything_once_continued(
    procs: list[Any], tmp_path: Path, via: str
) -> None:
    """A receiver paused (SIGSTOP) past ``heartbeat_timeout`` is forgotten, the
    origin's publishers go on; after SIGCONT it recovers what it missed from the
    persistent origin's journal: every event, in order, once."""
    hub = None
    if via == "broker":
        hub = BrokerAt("tcp://127.0.0.1:*")
        procs.append(hub)
    a, b = pair(
        procs,
        origin={"path": str(tmp_path / "a"), "block_timeout": WAIT, "node": FAST},
        receiver={"node": FAST},
        broker=hub.endpoint if hub else None,
    )
    with_signal(b, signal.SIGSTOP)
    try:
        n = 3 * QUEUE
        a.answer(f"flood flood.x {n} 500", "flooded ")
        stats = a.answer("stats", "stats ")
        assert stats["rejected"] == 0
        assert stats["credit_receivers"] == []
    finally:
        with_signal(b, signal.SIGCONT)
    got = b.answer(f"count {n}", "count ")
    assert got == {"count": n, "next": n, "out_of_order": 0}
    # Nothing more after it (a late duplicate would count past n).
    a.answer("flood other.x 1 1", "flooded ")
    b_stats = b.answer("stats", "stats ")
    assert b_stats["handler"] == {"count": n, "next": n, "out_of_order": 0}, b_stats


def test_a_broker_killed_and_restarted_while_credit_is_outstanding_deadlocks_nothing(
    procs: list[Any], tmp_path: Path
) -> None:
    """A publisher held by a receiver's credit through a broker; the broker is
    killed (kill -9): the publisher is released once the receiver is declared
    dead; the broker restarts on the same endpoint: credit resumes, events flow,
    and the receiver gets every event, in order, once."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    hub = BrokerAt(endpoint)
    procs.append(hub)
    a, b = pair(
        procs,
        origin={"path": str(tmp_path / "a"), "block_timeout": WAIT, "node": FAST},
        receiver={"gated": True, "node": FAST},
        broker=endpoint,
    )
    a.ask(f"hang flood.x {QUEUE}", "hanging")
    hub.kill()
    freed = a.answer("freed", "freed ")
    assert freed["error"] is None
    published = freed["published"]
    hub2 = BrokerAt(endpoint)
    procs.append(hub2)
    b.ask("release", "released")
    more = acked(a, "flood.x", 2 * QUEUE, 200)  # publishers not held for ever
    total = more["first"] + 2 * QUEUE
    assert more["first"] >= published
    got = b.answer(f"count {total}", "count ")
    assert got == {"count": total, "next": total, "out_of_order": 0}
    stats = a.answer("stats", "stats ")
    assert "b" in stats["credit_receivers"]  # credit resumed through the new broker
    assert stats["rejected"] == 0


def test_credit_holds_and_releases_through_a_curve_broker_with_peer_names(
    buses: list[EventBus],
) -> None:
    """Credit is end to end through a broker: ``CREDIT`` is a request the broker
    forwards.  With CURVE and ``peer_names`` on both the broker and the nodes the
    broker runs its checked proxy; the same protocol must hold: a receiver
    that handles nothing holds the publisher (``BackpressureError`` after
    ``block_timeout``), and once it handles again everything arrives in order."""
    hub_pub, hub_sec = generate_keypair()
    keys = {name: generate_keypair() for name in ("a", "b")}
    names = {name: pair_[0] for name, pair_ in keys.items()}
    with Broker(
        "tcp://127.0.0.1:*",
        curve_public_key=hub_pub,
        curve_secret_key=hub_sec,
        authorized_keys=list(names.values()),
        peer_names=names,
    ) as hub:

        def node(name: str, **extra: Any) -> EventBus:
            public, secret = keys[name]
            return make(
                buses,
                name,
                block_timeout=1.0,
                peers=[hub.endpoint],
                curve_public_key=public,
                curve_secret_key=secret,
                authorized_keys=(hub_pub,),
                peer_public_keys={hub.endpoint: hub_pub},
                peer_names=names,
                **FAST,
                **extra,
            )

        a = node("a", send_queue=100, batch_size=10)
        b = node("b", credit_window=50)
        handler = Gated()
        b.subscribe("flood.*", handler, capacity=10_000)
        assert b.wait_for_peers(["a"], WAIT)
        assert a.node is not None
        assert a.node.wait(lambda s: "b" in s.credit_receivers, WAIT)
        published = 0
        try:
            while True:
                a.publish("flood.x", published)
                published += 1
                assert published < 100_000, a.node.statistics()
        except BackpressureError:
            pass
        stats = a.node.statistics()
        assert list(stats.lagging_peers) == ["b"]
        assert stats.send_queued <= 100 + 2
        handler.gate.set()
        got = handler.wait_for(published)
        assert got == list(range(published))
        assert hub.impostors == 0


def test_a_receiver_holds_at_most_its_window_of_remote_events_through_a_broker(
    tmp_path: Path, buses: list[EventBus]
) -> None:
    """ "remote events waiting at a receiver ... are at most ``credit_window``
    (plus one frame) per origin": two origins behind a broker, a handler held
    shut behind a subscription large enough to keep whatever arrives."""
    window, batch = 100, 10
    with Broker(f"ipc://{tmp_path}/hub.sock") as hub:
        origins = [
            make(
                buses,
                name,
                block_timeout=WAIT,
                peers=[hub.endpoint],
                send_queue=200,
                batch_size=batch,
                **FAST,
            )
            for name in ("a", "c")
        ]
        b = make(buses, "b", peers=[hub.endpoint], credit_window=window, **FAST)
        handler = Gated()
        stop = threading.Event()
        sub = b.subscribe("flood.*", handler, capacity=100_000)
        assert b.wait_for_peers(["a", "c"], WAIT)
        for origin in origins:
            assert origin.node is not None
            assert origin.node.wait(lambda s: "b" in s.credit_receivers, WAIT)
        try:
            for origin in origins:
                threading.Thread(target=publish_until, args=(origin, stop), daemon=True).start()
            for origin in origins:
                assert origin.node is not None
                assert origin.node.wait(lambda s: bool(s.lagging_peers), WAIT)
            assert b.node is not None
            stats = sub.statistics()
            waiting = stats.queued + stats.in_flight
            assert waiting <= 2 * (window + batch), (stats, b.node.statistics())
        finally:
            stop.set()
            handler.gate.set()


@pytest.mark.parametrize("via", ["mesh", "broker"])
def test_a_paused_receiver_that_asked_to_be_dropped_gets_exactly_what_was_not_dropped(
    procs: list[Any], via: str
) -> None:
    """``lag_policy="drop"``: "A dropped frame moves no chain pointer, so the
    receiver sees no gap and fetches nothing: the drop is final, counted and
    announced".  A receiver paused (SIGSTOP) is dropped for while it is alive,
    then forgotten (``heartbeat_timeout``); after SIGCONT it gets every event
    not counted as dropped, once, and none of the dropped ones."""
    hub = None
    if via == "broker":
        hub = BrokerAt("tcp://127.0.0.1:*")
        procs.append(hub)
    a, b = pair(
        procs,
        origin={"block_timeout": WAIT, "node": FAST},
        receiver={"node": {**FAST, "lag_policy": "drop"}},
        broker=hub.endpoint if hub else None,
    )
    with_signal(b, signal.SIGSTOP)
    try:
        n = 3 * QUEUE
        a.answer(f"flood flood.x {n} 500", "flooded ")
        stats = a.answer("stats", "stats ")
        dropped = stats["events_dropped_lagging"]
        assert stats["rejected"] == 0
        (lagging,) = a.answer("lagging", "lagging ")
        assert lagging["peer"] == "b"
    finally:
        with_signal(b, signal.SIGCONT)
    b.answer(f"count {n - dropped}", "count ")
    # A marker after the flood: once it arrived, nothing of the flood is still on its way.
    # If a still counts b out of credit (b's acknowledgement of the flood has not reached
    # it yet: b was not paused past ``heartbeat_timeout`` and was never forgotten), the
    # marker is dropped like the flood, counted and never delivered; publish another.
    a.ask("receivers b", "receivers")
    for markers_dropped in range(1000):
        a.answer("flood flood.x 1 1", "flooded ")
        now_dropped = a.answer("stats", "stats ")["events_dropped_lagging"]
        if now_dropped == dropped + markers_dropped:
            break
        assert now_dropped == dropped + markers_dropped + 1
    else:
        raise AssertionError("b's credit never reached a after SIGCONT")
    got = b.answer(f"count {n - dropped + 1}", "count ")
    b_stats = b.answer("stats", "stats ")
    assert got["count"] == n - dropped + 1, (dropped, got, b_stats["jumps"], b_stats["gaps"])
