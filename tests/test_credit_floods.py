"""Floods through a ``Broker`` and a persistent origin killed mid-flood, in real OS processes.

Every part is its own process (``tests/_credit_child.py``): the origin ``a``,
the ``Broker`` and the slower subscriber ``b``.  The flow-control settings
are small (``tests/test_credit_procs.py``), so a flood many times larger
than what flow control lets any process hold would show in its resident
memory (``docs/cluster.md``, "Flow control": the memory bound).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import LineChild, reaped
from tests.test_credit_procs import CHILD, QUEUE, RING, WAIT, WINDOW, Proc, pair

pytestmark = pytest.mark.slow

FLOOD = 300_000
CHUNK = 1_000  # events per publish_many
KIB_PER_EVENT = 1  # several times one event's footprint (Event, encoded bytes, future)
NOISE_KIB = 32 * 1024  # the interpreter's and the allocator's own growth
DEDUPE = max(RING, 10_000)  # the receiver's duplicate filter: event ids
FLOOD_WAIT = 5 * WAIT  # a whole flood at a slower subscriber, on a loaded machine


class BrokerProc(LineChild):
    """A ``Broker`` in its own process (``_credit_child.py`` with ``broker``)."""

    def __init__(self) -> None:
        super().__init__(CHILD, {"broker": "tcp://127.0.0.1:*"}, wait=WAIT, name="broker")
        self.endpoint = self.expect("ready").split()[1]

    def grown(self) -> int:
        """Return the growth of its peak resident memory since it started, in KiB."""
        stats = json.loads(self.ask("stats", "stats ")[6:])
        return int(stats["memory"]["VmHWM"] - stats["start_memory"]["VmRSS"])


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    yield from reaped(WAIT)


@pytest.fixture
def broker_proc() -> Iterator[BrokerProc]:
    hub = BrokerProc()
    yield hub
    if hub.proc.poll() is None:
        hub.proc.kill()
        hub.proc.wait(WAIT)


def grown(stats: dict[str, Any]) -> int:
    return int(stats["memory"]["VmHWM"] - stats["start_memory"]["VmRSS"])


def bounds(batch: int) -> dict[str, int]:
    """The resident-memory growth each process may show, in KiB (``docs/cluster.md``).

    - origin: its recovery ring (``recovery_ring + 2 * send_queue`` events,
      which holds the send queue: ``send_queue`` plus one publish per
      publishing thread), one publish in the router's mailbox, one frame;
    - broker: per receiver, its credit window of events plus one frame;
    - subscriber: the credit window plus one frame, and the duplicate
      filter's ids (``DEDUPE``, counted as events: generous).
    """
    return {
        "origin": (RING + 2 * QUEUE + CHUNK + batch) * KIB_PER_EVENT + NOISE_KIB,
        "broker": (WINDOW + batch) * KIB_PER_EVENT + NOISE_KIB,
        "subscriber": (WINDOW + batch + DEDUPE) * KIB_PER_EVENT + NOISE_KIB,
    }


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("batch", [1, 256])
def test_a_flood_through_a_broker_arrives_whole_in_order_with_bounded_memory(
    procs: list[Proc], broker_proc: BrokerProc, batch: int
) -> None:
    a, b = pair(
        procs,
        batch=batch,
        origin={"block_timeout": WAIT},
        receiver={"slow_us": 40},  # a handler slower than the origin publishes
        broker=broker_proc.endpoint,
    )
    a.wait = b.wait = FLOOD_WAIT
    flooded = a.answer(f"flood flood.x {FLOOD} {CHUNK}", "flooded ")
    got = b.answer(f"count {FLOOD}", "count ")
    assert got == {"count": FLOOD, "next": FLOOD, "out_of_order": 0}
    a_stats, b_stats = a.answer("stats", "stats "), b.answer("stats", "stats ")
    assert b_stats["duplicates"] == 0
    assert b_stats["handler"]["count"] == FLOOD  # nothing after the last: no duplicate
    assert a_stats["events_dropped_lagging"] == 0
    assert a_stats["credit_stalls"] >= 1, "the receiver was never slower: nothing was tested"
    limit = bounds(batch)
    measured = {
        "origin": grown(a_stats),
        "broker": broker_proc.grown(),
        "subscriber": grown(b_stats),
    }
    print(
        f"batch {batch}: grown {measured} KiB (bounds {limit}), queue peak "
        f"{a_stats['send_queue_peak']}, stalls {a_stats['credit_stalls']}, held "
        f"{a_stats['publishers_held']}, gaps {b_stats['gaps']}, {flooded['seconds']:.1f} s"
    )
    for process, kib in measured.items():
        assert kib < limit[process], (process, measured, limit, a_stats, b_stats)
    # The queue's own bound (docs/cluster.md): send_queue plus two batches per
    # publishing thread (the one that slipped in as the pacing began, one paced).
    assert a_stats["send_queue_peak"] <= QUEUE + 2 * CHUNK, a_stats["send_queue_peak"]
    a.close()
    b.close()


@pytest.mark.timeout(1800)
def test_a_persistent_origin_killed_mid_flood_and_restarted_loses_no_acknowledged_event(
    procs: list[Proc], tmp_path: Path
) -> None:
    """kill -9 of a persistent origin (``durability="sync"``) at full rate, restart on the
    same journal and endpoint, the subscriber up throughout: every acknowledged event arrives,
    in order, once (``docs/cluster.md``, "Restarts of an origin")."""
    fast = {"heartbeat_interval": 0.25, "heartbeat_timeout": 1.0}
    origin: dict[str, Any] = {
        "block_timeout": WAIT,
        "path": str(tmp_path / "a"),
        "node": fast,
        # The restarts take the same endpoint: an ipc path, which no other process can
        # take meanwhile (a TCP port freed by kill -9 can go to another's connection).
        "listen": f"ipc://{tmp_path}/a.sock",
    }
    # The default DROP_OLDEST with the capacity docs/cluster.md asks of a
    # subscription that must never drop a remote event: one credit window plus
    # one frame (``batch_size``) per origin. The backfill after each restart
    # obeys the window too. With a capacity of the window alone, a loaded run
    # dropped 244 events: a recovered page still queued when the restarted
    # origin's first frames came, 1,244 in all, inside window plus one frame.
    receiver = {"slow_us": 10, "node": fast, "capacity": WINDOW + 256}
    a, b = pair(procs, origin=origin, receiver=receiver)
    b.wait = FLOOD_WAIT  # the child's own wait (120 s) answers first, with its figures
    origin["node"] = {"batch_size": 256, "send_queue": QUEUE, "recovery_ring": RING, **fast}
    acknowledged = -1
    for _ in range(3):
        a.send(f"acked flood.x {FLOOD} {CHUNK}")
        first = a.expect("ack ")  # mid-flood: the flood is far from its end
        acknowledged = max(acknowledged, int(first.split()[1]))
        b.answer(f"count {acknowledged + 1}", "count ")  # the subscriber is receiving
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(WAIT)
        for line in drain(a):
            if line.startswith("ack "):
                acknowledged = max(acknowledged, int(line.split()[1]))
        a = Proc(name="a", **origin)
        procs.append(a)
    # The last incarnation publishes a few more at once after its restart.
    a.send(f"acked flood.x {CHUNK} {CHUNK}")
    while not (line := a.expect("")).startswith("flooded "):
        acknowledged = max(acknowledged, int(line.split()[1]))
    got = b.answer(f"count {acknowledged + 1}", "count ")
    # Data runs 0, 1, 2, ... with nothing missing, nothing twice: each
    # incarnation continues after the last event in the journal, so the
    # events the kill took before the journal wrote them leave no hole.
    stats = b.answer("stats", "stats ")
    print(f"subscriber: {got}, acknowledged up to {acknowledged}, {stats}")
    assert got["out_of_order"] == 0, (got, acknowledged, stats)
    assert got["next"] == got["count"] >= acknowledged + 1, (got, acknowledged, stats)
    assert stats["gaps"] == stats["gaps_recovered"] + stats["gaps_unrecovered"] + stats["gaps_open"]
    assert stats["gaps_unrecovered"] == 0
    assert stats["subscription_dropped"] == 0, stats
    print(f"acknowledged up to {acknowledged}; subscriber got {got}, gaps {stats['gaps']}")
    a.close()
    b.close()


def drain(child: LineChild) -> list[str]:
    """Return the lines a killed child printed that nobody read yet (up to its end)."""
    lines = []
    while (line := child.lines.get(timeout=WAIT)) != "<eof>":
        lines.append(line)
    return lines
