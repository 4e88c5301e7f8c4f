"""Flow control across real OS processes (``tests/_credit_child.py``; ``docs/cluster.md``).

An origin floods a slower receiver: everything arrives, in order, once, and
the resident memory of both stays bounded by the credit window and the send
queue; a receiver that stops taking events holds the origin's publishers
(``BackpressureError`` after ``block_timeout``), unless it asked to be
dropped; a receiver that dies or is paused releases them.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import Broker
from tests._support import LineChild, reaped

pytestmark = pytest.mark.slow

CHILD = str(Path(__file__).with_name("_credit_child.py"))
WAIT = float(os.environ.get("CLUSTER_WAIT", "120"))

# Small windows, so that a flood several times larger than everything the
# bridge may hold would show in the resident memory if it were buffered.
WINDOW = 1_000
QUEUE = 2_000
RING = 2_000
FAST = {"heartbeat_interval": 0.25, "heartbeat_timeout": 1.0}


class Proc(LineChild):
    def __init__(self, **config: Any) -> None:
        super().__init__(CHILD, config, wait=WAIT, name=config["name"])
        self.endpoint = self.expect("ready").split()[1]

    def answer(self, command: str, prefix: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ask(command, prefix)[len(prefix) :])
        return result


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    yield from reaped(WAIT)


def with_signal(proc: Proc, sig: int) -> None:
    if proc.proc.poll() is None:
        os.kill(proc.proc.pid, sig)


def pair(
    procs: list[Proc],
    *,
    batch: int = 256,
    origin: dict[str, Any],
    receiver: dict[str, Any],
    broker: str | None = None,
) -> tuple[Proc, Proc]:
    """Start origin ``a`` and receiver ``b`` (joined directly, or through ``broker``)."""
    node = {"batch_size": batch, "send_queue": QUEUE, "recovery_ring": RING}
    where = {"peers": [broker]} if broker else {"listen": "tcp://127.0.0.1:*"}
    a = Proc(name="a", **{**where, **origin, "node": {**node, **origin.get("node", {})}})
    procs.append(a)
    b = Proc(
        name="b",
        peers=[broker or a.endpoint],
        pattern="flood.*",
        **{**receiver, "node": {"credit_window": WINDOW, **receiver.get("node", {})}},
    )
    procs.append(b)
    b.ask("sync a", "synced")
    a.ask("receivers b", "receivers")
    return a, b


@pytest.mark.parametrize("batch", [1, 256])
def test_a_flood_at_a_slower_receiver_arrives_whole_in_order_with_bounded_memory(
    procs: list[Proc], batch: int
) -> None:
    n = 100_000
    a, b = pair(
        procs,
        batch=batch,
        origin={"block_timeout": WAIT},
        receiver={"slow_us": 40},  # a handler slower than the origin publishes
    )
    flooded = a.answer(f"flood flood.x {n} 1000", "flooded ")
    got = b.answer(f"count {n}", "count ")
    assert got == {"count": n, "next": n, "out_of_order": 0}
    a_stats, b_stats = a.answer("stats", "stats "), b.answer("stats", "stats ")
    assert b_stats["gaps"] == 0
    assert b_stats["duplicates"] == 0
    assert a_stats["events_dropped_lagging"] == 0
    assert a_stats["credit_stalls"] >= 1, "the receiver was never slower: nothing was tested"
    # Bounded: at most QUEUE (+ one publish_many chunk admitted before the
    # hold) waited at the origin, at most WINDOW (+ one frame) at the
    # receiver.  1 KiB per event is several times an event's footprint; the
    # ring and the 32 MiB cover the interpreter's and allocator's own noise.
    # Unbounded buffering of the flood (as before flow control) would hold
    # ~n events in one of the two processes: 100,000 events is ~100 MiB.
    per_event_kib = 1
    bound_a = (QUEUE + 1000 + RING + batch) * per_event_kib + 32 * 1024
    bound_b = (WINDOW + batch + 10_000) * per_event_kib + 32 * 1024
    grown_a = a_stats["memory"]["VmHWM"] - a_stats["start_memory"]["VmRSS"]
    grown_b = b_stats["memory"]["VmHWM"] - b_stats["start_memory"]["VmRSS"]
    assert grown_a < bound_a, (grown_a, bound_a, flooded, a_stats)
    assert grown_b < bound_b, (grown_b, bound_b, b_stats)
    # The queue itself: its limit plus what publishers had admitted before the
    # hold went up (chunks of 1,000 still in the router's mailbox): far below n.
    assert a_stats["send_queue_peak"] < n // 4, a_stats["send_queue_peak"]
    print(
        f"batch {batch}: origin +{grown_a} KiB, receiver +{grown_b} KiB, "
        f"queue peak {a_stats['send_queue_peak']}, stalls {a_stats['credit_stalls']}, "
        f"held {a_stats['publishers_held']}, {flooded['seconds']:.1f} s"
    )


@pytest.fixture
def broker() -> Iterator[str]:
    with Broker("tcp://127.0.0.1:*") as hub:
        yield hub.endpoint


@pytest.mark.parametrize("via", ["mesh", "broker"])
def test_a_publisher_held_by_a_lagging_peer_gets_backpressure_after_block_timeout(
    procs: list[Proc], via: str, request: pytest.FixtureRequest
) -> None:
    # Through a broker the credit travels end to end: the broker forwards it.
    hub = request.getfixturevalue("broker") if via == "broker" else None
    a, b = pair(procs, origin={"block_timeout": 1.0}, receiver={"gated": True}, broker=hub)
    refused = a.answer("fill flood.x", "refused ")
    assert refused["waited"] >= 1.0 * 0.9  # it waited for block_timeout (a lower bound)
    assert "out of credit" in refused["error"]
    stats = a.answer("stats", "stats ")
    assert stats["publishers_held"] >= 1
    assert stats["credit_stalls"] >= 1
    assert stats["lagging_peers"] == ["b"]
    assert stats["rejected"] >= 1
    # Nothing published was lost: once b takes events again, all arrive, in order.
    published = refused["published"]
    assert published >= QUEUE
    b.ask("release", "released")
    got = b.answer(f"count {published}", "count ")
    assert got == {"count": published, "next": published, "out_of_order": 0}


def test_a_peer_that_asked_to_be_dropped_is_dropped_counted_and_announced(
    procs: list[Proc],
) -> None:
    a, b = pair(
        procs,
        origin={"block_timeout": 1.0},
        receiver={"gated": True, "node": {"lag_policy": "drop"}},
    )
    n = 10_000
    a.answer(f"flood flood.x {n} 500", "flooded ")  # never held: b asked to be dropped
    stats = a.answer("stats", "stats ")
    dropped = stats["events_dropped_lagging"]
    assert dropped > 0
    assert stats["rejected"] == 0  # held at most while the bridge caught up, never refused
    (lagging,) = a.answer("lagging", "lagging ")  # one announcement per lag
    assert lagging["node"] == "a"
    assert lagging["peer"] == "b"
    assert lagging["window"] == WINDOW
    # What was not dropped reaches b, in order, and nothing else: every event
    # is either delivered or counted, none is lost silently or recovered.
    b.ask("release", "released")
    got = b.answer(f"count {n - dropped}", "count ")
    assert got["count"] == n - dropped
    b_stats = b.answer("stats", "stats ")
    assert b_stats["gaps"] == 0
    assert b_stats["handler"]["count"] == n - dropped


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_dead_or_paused_peer_releases_held_publishers(procs: list[Proc], fault: str) -> None:
    a, b = pair(
        procs,
        origin={"block_timeout": WAIT, "node": FAST},
        receiver={"gated": True, "node": FAST},
    )
    a.ask(f"hang flood.x {QUEUE}", "hanging")
    if fault == "kill":
        b.kill()
    else:
        with_signal(b, signal.SIGSTOP)  # past heartbeat_timeout: declared dead
    freed = a.answer("freed", "freed ")
    assert freed["error"] is None
    assert freed["published"] > freed["blocked_at"] + 1
    stats = a.answer("stats", "stats ")
    assert stats["credit_receivers"] == []
    assert stats["lagging_peers"] == []
    if fault == "stop":
        with_signal(b, signal.SIGCONT)
