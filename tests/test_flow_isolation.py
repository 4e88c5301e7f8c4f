"""Flow control isolates receivers from each other (``docs/cluster.md``, "Flow control").

One origin, two receivers in their own OS processes (``tests/_credit_child.py``):
``slow`` wants ``x.*`` and stops taking events (its subscription asked to be
dropped when it lags, or it is killed -9 mid-flood), ``fast`` wants ``y.*``.
The origin runs in this process so that the test sees each of its publishes
complete or fail.  Then two origins in their own processes flood one slow
receiver here: each is held by its own credit only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors import BackpressureError, Event, EventBus, EventConfig, NodeConfig
from tests._support import reaped, wait_for
from tests.test_credit_procs import QUEUE, RING, WINDOW, Proc

pytestmark = pytest.mark.slow

WAIT = 30.0
# A receiver held shut must stay live for the whole test: only SIGSTOP or
# kill -9 may make the origin declare it dead.
LIVE = {"heartbeat_interval": 0.25, "heartbeat_timeout": 30.0}
FAST = {"heartbeat_interval": 0.25, "heartbeat_timeout": 1.0}


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    yield from reaped(WAIT)


@pytest.fixture
def buses() -> Iterator[list[EventBus]]:
    opened: list[EventBus] = []
    yield opened
    for bus in reversed(opened):
        bus.close(timeout=10)


def origin(
    buses: list[EventBus], *, block_timeout: float, name: str = "a", **node: Any
) -> EventBus:
    bus = EventBus(
        EventConfig(block_timeout=block_timeout),
        node=NodeConfig(
            name=name,
            listen="tcp://127.0.0.1:*",
            send_queue=QUEUE,
            recovery_ring=RING,
            batch_size=node.pop("batch_size", 64),
            **node,
        ),
    )
    buses.append(bus)
    return bus


def receiver(procs: list[Proc], a: EventBus, name: str, pattern: str, **config: Any) -> Proc:
    assert a.node is not None
    node = {"credit_window": WINDOW, **config.pop("node", {})}
    proc = Proc(
        name=name, peers=[a.node.endpoints["request"]], pattern=pattern, node=node, **config
    )
    procs.append(proc)
    proc.ask("sync a", "synced")
    assert a.node.wait(lambda s: name in s.credit_receivers, WAIT), a.node.statistics()
    return proc


class Flood:
    """Publish ``kind`` on a thread, 10 events at a time, data 0, 1, 2, ...

    Counts what was published (accepted by ``publish_many``) and keeps the
    error that stopped it, if any.
    """

    def __init__(self, bus: EventBus, kind: str) -> None:
        self.bus = bus
        self.kind = kind
        self.published = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                self.bus.publish_many([Event(event_type=self.kind, data=n + i) for i in range(10)])
            except BackpressureError as exc:
                self.error = exc
                return
            n += 10
            self.published = n

    def end(self) -> int:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        return self.published


def held_by(a: EventBus, peer: str) -> bool:
    """Wait until ``a``'s publishers are held because ``peer`` is out of credit."""
    assert a.node is not None
    return a.node.wait(
        lambda s: (
            s.publishers_held >= 1 and peer in s.lagging_peers and s.send_queued >= QUEUE // 2
        ),
        WAIT,
    )


def publish_y(a: EventBus, n: int) -> BackpressureError | None:
    """Publish ``y.e`` data 0..n-1 in chunks of 100; return the refusal, if any."""
    try:
        for low in range(0, n, 100):
            for future in a.publish_many(
                [Event(event_type="y.e", data=i) for i in range(low, min(n, low + 100))]
            ):
                future.get(timeout=WAIT)
    except BackpressureError as exc:
        return exc
    return None


def test_a_receiver_that_asked_to_be_dropped_holds_no_one_and_loses_nothing_silently(
    procs: list[Proc], buses: list[EventBus]
) -> None:
    """``lag_policy="drop"`` on ``slow``: frames only it wants are dropped and
    counted, ``$bus.peer.lagging`` is published, no publisher of either type
    is refused, and ``fast`` gets every ``y`` event."""
    a = origin(buses, block_timeout=5.0, **LIVE)
    lagging: list[Any] = []
    a.subscribe("$bus.peer.lagging", lambda e: lagging.append(e.data))
    slow = receiver(procs, a, "slow", "x.*", gated=True, node={**LIVE, "lag_policy": "drop"})
    fast = receiver(procs, a, "fast", "y.*", node=LIVE)
    n = 5 * WINDOW
    try:
        for low in range(0, n, 100):
            for kind in ("x.e", "y.e"):
                for future in a.publish_many(
                    [Event(event_type=kind, data=i) for i in range(low, low + 100)]
                ):
                    future.get(timeout=WAIT)
        got = fast.answer(f"count {n}", "count ")
        assert got == {"count": n, "next": n, "out_of_order": 0}
        assert a.node is not None
        a.flush(WAIT)
        stats = a.node.statistics()
        dropped = stats.events_dropped_lagging
        assert dropped > 0, stats
        assert a.metrics().rejected == 0
        assert wait_for(lambda: bool(lagging), WAIT)
        assert lagging[0]["peer"] == "slow"
    finally:
        slow.ask("release", "released")
    got = slow.answer(f"count {n - dropped}", "count ")
    assert got["count"] == n - dropped, (got, dropped)
    slow_stats = slow.answer("stats", "stats ")
    assert slow_stats["gaps_unrecovered"] == 0
    assert slow_stats["gaps"] == slow_stats["gaps_recovered"] + slow_stats["gaps_open"]


def test_a_receiver_killed_mid_flood_releases_the_origin_within_its_queue_bound(
    procs: list[Proc], buses: list[EventBus]
) -> None:
    """kill -9 of ``slow`` while it holds ``a``'s publishers: they are released,
    ``a``'s send queue never held more than ``send_queue`` plus two publishes,
    and ``fast`` gets every ``y`` event published after."""
    a = origin(buses, block_timeout=WAIT, **FAST)
    slow = receiver(procs, a, "slow", "x.*", gated=True, node=FAST)
    fast = receiver(procs, a, "fast", "y.*", node=FAST)
    flood = Flood(a, "x.e")
    try:
        assert held_by(a, "slow"), a.node and a.node.statistics()
        at_kill = flood.published
        slow.kill()
        assert wait_for(lambda: flood.published > at_kill + 2 * QUEUE, WAIT), (
            flood.published,
            flood.error,
            a.node and a.node.statistics(),
        )
    finally:
        flood.end()
    assert flood.error is None
    n = 1_000
    assert publish_y(a, n) is None
    got = fast.answer(f"count {n}", "count ")
    assert got == {"count": n, "next": n, "out_of_order": 0}
    assert a.node is not None
    stats = a.node.statistics()
    assert "slow" not in stats.credit_receivers
    # send_queue plus two publishes of 10 per publishing thread, plus the
    # few events the bus publishes itself.
    assert stats.send_queue_peak <= QUEUE + 2 * 10 + 20, stats


# -- two origins, one receiver -------------------------------------------------------------


def test_two_origins_flooding_one_slow_receiver_are_each_held_by_their_own_credit(
    procs: list[Proc], buses: list[EventBus]
) -> None:
    """Two origins flood one receiver whose handler is slower than either: each
    origin's queue stays within its own bound, nothing is refused, and the
    receiver gets every event of each, in order, without dropping any."""
    node = {"send_queue": QUEUE, "recovery_ring": RING, "batch_size": 64, **LIVE}
    origins = [
        Proc(name=name, listen="tcp://127.0.0.1:*", block_timeout=WAIT, node=node)
        for name in ("a", "c")
    ]
    procs.extend(origins)
    r = EventBus(
        node=NodeConfig(
            name="r",
            peers=tuple(o.endpoint for o in origins),
            credit_window=WINDOW,
            **LIVE,
        )
    )
    buses.append(r)
    got: dict[str, list[Any]] = {"a": [], "c": []}

    def slow(event: Event) -> None:
        sum(range(2_000))  # a handler slower than either origin publishes
        assert event.origin is not None
        got[event.origin].append(event.data)

    r.subscribe("flood.*", slow)
    assert r.node is not None
    assert r.node.wait_for_peers(["a", "c"], WAIT)
    n = 10 * WINDOW
    for o in origins:
        o.ask("receivers r", "receivers")
    for o in origins:
        o.send(f"flood flood.{o.name} {n} 500")
    for o in origins:
        o.expect("flooded")
    assert wait_for(lambda: len(got["a"]) >= n and len(got["c"]) >= n, WAIT), (
        len(got["a"]),
        len(got["c"]),
    )
    assert got["a"] == list(range(n))
    assert got["c"] == list(range(n))
    assert r.metrics().dropped == 0
    for o in origins:
        stats = o.answer("stats", "stats ")
        assert stats["rejected"] == 0
        assert stats["credit_stalls"] >= 1, "the receiver was never slower: nothing was tested"
        # send_queue plus two publishes of 500 per publishing thread.
        assert stats["send_queue_peak"] <= QUEUE + 2 * 500 + 20, stats["send_queue_peak"]
