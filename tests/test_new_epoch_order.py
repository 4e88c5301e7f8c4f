"""Frames of a new epoch held until the new incarnation is heard, in real OS processes.

``docs/cluster.md``, "Restarts of an origin": data frames of a new epoch
stay held until the new incarnation itself is heard (its heartbeat or sync
reply), however long that takes, so what the last incarnation sent and the
receiver missed is delivered before them, in per-origin order.  Heartbeats
of the epoch the receiver follows for longer than ``heartbeat_timeout``
after such a frame end that wait (the frame came late from another
incarnation, on a second path): its events are delivered like any other,
once.  A frame, heartbeat or sync reply of an incarnation the receiver
already left behind moves nothing back.

The origin ``a`` publishes through ``tests/_node_child.py``; the receivers
are ``b`` (live) and ``d`` (persistent, durable subscription), both up all
along.  Each test checks that every acknowledged event reached both once,
in per-origin order, and that the stream flows after the last restart.

The parent synchronises on the children's output lines only; a bounded
wait only makes a fault (a stopped process) last.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import pause, reaped, wait_for
from tests.test_cluster import Node, start
from tests.test_cluster_fault_edges import BrokerChild
from tests.test_origin_restart_loops import (
    FAST,
    broker,
    check_receivers,
    kill_in_publish,
    origin_config,
    receivers,
    synced_three,
    wait_all,
)

pytestmark = pytest.mark.slow

WAIT = 25.0
STOPPED = 4 * FAST["heartbeat_timeout"]  # how long a stopped process stays stopped
STEP = 5


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


@pytest.fixture(params=["direct", "broker"])
def hub(request: pytest.FixtureRequest, cluster: list[Any], tmp_path: Path) -> str | None:
    """``None`` (nodes joined directly) or the endpoint of a broker every node joins through."""
    return None if request.param == "direct" else broker(cluster, tmp_path)


def received(node: Node) -> int:
    return int(node.stats()["events_received"])


def received_past(node: Node, count: int) -> bool:
    """Wait (bounded) until ``node``'s bridge received more than ``count`` events."""
    return wait_for(lambda: received(node) > count, WAIT)


def publish_then_stop(a: Node, b: Node, lo: int) -> int:
    """Publish from ``lo`` in small steps until a data frame reaches ``b``; SIGSTOP ``a`` then.

    Return the end of what ``a`` acknowledged.  (What it publishes before
    ``b``'s stream reconnected reaches ``b`` only by recovery.)
    """
    before = received(b)
    box = {"hi": lo}

    def reached() -> bool:
        hi = box["hi"]
        a.ask(f"publish job.run {hi} {hi + STEP}", "published")
        box["hi"] = hi + STEP
        return received(b) > before

    # A loaded machine: b follows the new stream once it declared the last one dead.
    assert wait_for(reached, 2 * WAIT), f"no data frame of the new incarnation reached b ({before})"
    pause(a.proc)
    assert box["hi"] < lo + 40_000, box
    return box["hi"]


def resume(node: Node) -> None:
    os.kill(node.proc.pid, signal.SIGCONT)


def unsent_tail(a: Node, lo: int, hi: int) -> set[int]:
    """Journal ``lo..hi-1`` with ``a``'s bridge blocked, then kill ``a`` (acknowledged, unsent)."""
    a.ask("pause", "paused")
    a.ask(f"publish job.run {lo} {hi} acked", "acked")
    a.kill()
    return set(range(lo, hi))


# -- 1. the new incarnation stopped right after its first frame reached b ---------------------


def test_a_restarted_origin_stopped_after_its_first_new_frame_keeps_per_origin_order(
    cluster: list[Any], tmp_path: Path, hub: str | None
) -> None:
    a_config, a, b, d = synced_three(cluster, tmp_path, hub)
    acknowledged: set[int] = set()
    for life in range(2):
        lo = life * 100_000
        a.ask(f"publish job.run {lo} {lo + 200}", "published")
        acknowledged |= set(range(lo, lo + 200))
        if life % 2:
            kill_in_publish(a, lo + 200, lo + 2_200, seen_by=b)  # the rest is unknown
        else:
            acknowledged |= unsent_tail(a, lo + 200, lo + 1_200)  # b must fetch all of it
        a = start(cluster, **a_config)
        hi = publish_then_stop(a, b, lo + 10_000)
        acknowledged |= set(range(lo + 10_000, hi))
        # Stopped for several heartbeat_timeouts: b may have a frame of the new epoch and
        # no word yet from the new incarnation; that frame waits, the missed range first.
        threading.Event().wait(STOPPED)
        resume(a)
        # Not held for ever: what is published next arrives too.
        a.ask(f"publish job.run {lo + 60_000} {lo + 60_100}", "published")
        acknowledged |= set(range(lo + 60_000, lo + 60_100))
        wait_all(b, set(range(lo + 60_000, lo + 60_100)))
    a.ask("publish job.run 900000 900100", "published")
    acknowledged |= set(range(900_000, 900_100))
    check_receivers(b, d, acknowledged, 900_100)
    for node in (b, d, a):
        node.close()


# -- 2. the new incarnation stopped as soon as it is up ----------------------------------------


@pytest.mark.parametrize("hub", ["broker"], indirect=True)  # the longer path
def test_a_restarted_origin_stopped_at_once_is_fetched_after_it_continues(
    cluster: list[Any], tmp_path: Path, hub: str | None
) -> None:
    a_config, a, b, d = synced_three(cluster, tmp_path, hub)
    acknowledged: set[int] = set()
    for life in range(2):
        lo = life * 100_000
        a.ask(f"publish job.run {lo} {lo + 100}", "published")
        acknowledged |= set(range(lo, lo + 100))
        acknowledged |= unsent_tail(a, lo + 100, lo + 600)
        # Published before ready: before b's stream reconnected.
        first = ["job.run", lo + 1_000, lo + 1_200]
        a = start(cluster, **a_config, publish_first=first)
        acknowledged |= set(range(lo + 1_000, lo + 1_200))
        pause(a.proc)
        threading.Event().wait(STOPPED)
        resume(a)
        a.ask(f"publish job.run {lo + 2_000} {lo + 2_100}", "published")
        acknowledged |= set(range(lo + 2_000, lo + 2_100))
    a.ask("publish job.run 900000 900100", "published")
    acknowledged |= set(range(900_000, 900_100))
    check_receivers(b, d, acknowledged, 900_100)
    for node in (b, d, a):
        node.close()


# -- 3. b and d joined to a both directly and through a broker --------------------------------


def two_paths(
    cluster: list[Any], tmp_path: Path, **node: Any
) -> tuple[dict[str, Any], Node, Node, Node, BrokerChild]:
    """``a`` listens and joins a broker; ``b`` and ``d`` list both (``peers`` may mix them).

    ``node``: extra ``NodeConfig`` fields of ``b`` and ``d``.
    """
    hub = broker(cluster, tmp_path)
    hub_child = cluster[-1]
    a_config = origin_config(tmp_path, None)
    a_config["peers"] = [hub]
    a = start(cluster, **a_config)
    peers = [a_config["listen"], hub]
    settings = {"pattern": "job.*", "capacity": 1_000_000, "node": {**FAST, **node}}
    b = start(cluster, name="b", peers=peers, **settings)
    d = start(cluster, name="d", peers=peers, path=str(tmp_path / "d"), durable="w", **settings)
    b.ask("sync a", "synced")
    d.ask("sync a", "synced")
    return a_config, a, b, d, hub_child


def test_an_origin_restarted_again_and_again_on_two_paths(
    cluster: list[Any], tmp_path: Path
) -> None:
    a_config, a, b, d, hub = two_paths(cluster, tmp_path)
    acknowledged: set[int] = set()
    for life in range(4):
        lo = life * 100_000
        a.ask(f"publish job.run {lo} {lo + 300}", "published")
        acknowledged |= set(range(lo, lo + 300))
        mode = life % 4
        if mode in (1, 3):
            # The broker stopped over the restart: what the last incarnation sent
            # through it (frames, heartbeats) comes late, after the new one is heard.
            pause(hub.proc)
        if mode in (0, 1):
            kill_in_publish(a, lo + 300, lo + 2_300, seen_by=b)
        else:
            acknowledged |= unsent_tail(a, lo + 300, lo + 1_300)
        a = start(cluster, **a_config)
        if mode in (1, 3):
            threading.Event().wait(STOPPED)
            resume(hub)
        a.ask(f"publish job.run {lo + 3_000} {lo + 3_200}", "published")
        acknowledged |= set(range(lo + 3_000, lo + 3_200))
        wait_all(b, set(range(lo + 3_000, lo + 3_200)))
    a.ask("publish job.run 900000 900100", "published")
    acknowledged |= set(range(900_000, 900_100))
    check_receivers(b, d, acknowledged, 900_100)
    for node in (b, d, a):
        node.close()


def test_a_new_incarnation_stopped_on_two_paths_keeps_per_origin_order(
    cluster: list[Any], tmp_path: Path
) -> None:
    a_config, a, b, d, hub = two_paths(cluster, tmp_path)
    acknowledged: set[int] = set()
    for life in range(2):
        lo = life * 100_000
        a.ask(f"publish job.run {lo} {lo + 200}", "published")
        acknowledged |= set(range(lo, lo + 200))
        pause(hub.proc)
        acknowledged |= unsent_tail(a, lo + 200, lo + 1_200)
        a = start(cluster, **a_config)
        hi = publish_then_stop(a, b, lo + 10_000)
        acknowledged |= set(range(lo + 10_000, hi))
        resume(hub)  # the last incarnation's heartbeats and frames, late
        threading.Event().wait(STOPPED)
        resume(a)
        a.ask(f"publish job.run {lo + 60_000} {lo + 60_100}", "published")
        acknowledged |= set(range(lo + 60_000, lo + 60_100))
        wait_all(b, set(range(lo + 60_000, lo + 60_100)))
    a.ask("publish job.run 900000 900100", "published")
    acknowledged |= set(range(900_000, 900_100))
    check_receivers(b, d, acknowledged, 900_100)
    for node in (b, d, a):
        node.close()


# Regression: a heartbeat of the last incarnation that comes late, through the broker, after
# b and d followed the new one directly, is a late frame of another incarnation: it must not
# move anything back.  Taken as one more restart whose numbering went back (base 1 <=
# watermark), it set the watermark to 0 and b and d fetched the whole journal again (past the
# duplicate window, every event came twice).  Each event arrives on both paths, so the window
# (the default, 100,000 ids) is what keeps the second copy out; the fetch shows in
# ``events_recovered``.
def test_a_late_heartbeat_of_the_last_incarnation_fetches_nothing_again(
    cluster: list[Any], tmp_path: Path
) -> None:
    a_config, a, b, d, hub = two_paths(cluster, tmp_path)
    many = 15_000
    a.ask(f"publish job.run 0 {many}", "published")
    # The broker stops while a still runs: a's heartbeats wait in the broker's queue,
    # then a few events (b and d have them directly), then more heartbeats.
    pause(hub.proc)
    threading.Event().wait(STOPPED)
    a.ask(f"publish job.run {many} {many + 10}", "published")
    for node in (b, d):
        wait_all(node, set(range(many + 10)))
    threading.Event().wait(STOPPED)
    a.kill()
    a = start(cluster, **a_config)
    threading.Event().wait(STOPPED)  # b and d hear the new incarnation directly
    before = {node.name: received(node) for node in (b, d)}
    fetched = {node.name: node.stats()["events_recovered"] for node in (b, d)}
    resume(hub)
    for node in (b, d):
        # Those events through the broker: the heartbeats queued before them were read.
        assert received_past(node, before[node.name] + 9), f"{node.name}: no late frame"
    a.ask(f"publish job.run {many + 100} {many + 200}", "published")
    acknowledged = set(range(many + 10)) | set(range(many + 100, many + 200))
    check_receivers(b, d, acknowledged, many + 200)
    for node in (b, d):
        again = node.stats()["events_recovered"] - fetched[node.name]
        assert again < many, f"{node.name} fetched {again} events again"
    for node in (b, d, a):
        node.close()


# -- 4. an origin without a journal: its numbering restarts at 1 ------------------------------


@pytest.mark.parametrize("hub", ["broker"], indirect=True)  # the longer path
def test_an_origin_without_a_journal_stopped_after_its_first_new_frame(
    cluster: list[Any], tmp_path: Path, hub: str | None
) -> None:
    link: dict[str, Any] = {"peers": [hub]} if hub else {"listen": f"ipc://{tmp_path}/a.sock"}
    a_config = {"name": "a", **link, "node": FAST}
    a = start(cluster, **a_config)
    b, d = receivers(cluster, tmp_path, [hub or a_config["listen"]])
    b.ask("sync a", "synced")
    d.ask("sync a", "synced")
    acknowledged: set[int] = set()
    for life in range(2):
        lo = life * 100_000
        a.ask(f"publish job.run {lo} {lo + 300}", "published")
        # Without a journal only what b and d have outlives a kill.
        for node in (b, d):
            wait_all(node, set(range(lo, lo + 300)))
        acknowledged |= set(range(lo, lo + 300))
        a.kill()
        a = start(cluster, **a_config)
        hi = publish_then_stop(a, b, lo + 10_000)
        acknowledged |= set(range(lo + 10_000, hi))
        threading.Event().wait(STOPPED)
        resume(a)
        a.ask(f"publish job.run {lo + 60_000} {lo + 60_100}", "published")
        acknowledged |= set(range(lo + 60_000, lo + 60_100))
        for node in (b, d):
            wait_all(node, acknowledged)
    a.ask("publish job.run 900000 900100", "published")
    acknowledged |= set(range(900_000, 900_100))
    check_receivers(b, d, acknowledged, 900_100)
    for node in (b, d, a):
        node.close()
