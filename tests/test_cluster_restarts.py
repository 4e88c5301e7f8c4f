"""Restarts under the fault harness's faults, one deterministic sequence each, in real processes.

Each test replays, step by step, a sequence that lost or duplicated
acknowledged events at the durable node of ``bench/faults.py``
(``docs/cluster.md``, "Fault harness"). The nodes are ``tests/_node_child.py``
processes; the parent synchronises on their output lines only.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import EventBus, EventConfig, EventQuery
from actors._journal.rocks import RocksStorage
from tests._support import reaped
from tests.test_cluster import Node, start

pytestmark = pytest.mark.slow

CHECKPOINT_CHILD = str(Path(__file__).with_name("_checkpoint_child.py"))


@pytest.fixture
def cluster() -> Iterator[list[Node]]:
    yield from reaped()


def test_a_restarted_publisher_sends_what_it_journaled_but_never_sent(
    cluster: list[Node], tmp_path: Path
) -> None:
    # kill -9 of a persistent publisher: its last acknowledged events are in
    # its journal, but its bridge had not sent them (or they died in its
    # socket's queue). The restarted publisher must announce them (its head
    # starts at its journal's end), so the subscriber fetches them.
    fast = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}
    a_config = {
        "name": "a",
        "listen": f"ipc://{tmp_path}/a.sock",
        "path": str(tmp_path / "a"),
        "node": fast,
    }
    a = start(cluster, **a_config)
    b = start(cluster, name="b", peers=[a.endpoint], pattern="job.*", node=fast)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 100", "published")
    b.wait_data(set(range(100)))
    a.ask("pause", "paused")  # a's bridge stops: what a journals now stays unsent
    a.ask("publish job.run 100 150 acked", "acked")  # acknowledged: journaled
    a.kill()
    b.ask("gone a", "gone")
    a = start(cluster, **a_config)
    # b takes the new incarnation's sync reply before a publishes anything (a
    # new subscription starts a new sync round: only the new a can answer it).
    b.ask("subscribe other.*", "subscribed")
    b.ask("sync a", "synced")
    a.ask("publish job.run 150 160", "published")
    got = b.wait_data(set(range(150, 160)))
    assert [d for _, _, d in got] == list(range(160))  # 100..149 too, in order, once
    b.close()
    a.close()


def test_a_durable_checkpoint_never_reaches_the_journal_before_its_events(tmp_path: Path) -> None:
    # kill -9 of a durable node while its router is in the middle of a turn:
    # the subscription handled events the router had not yet handed to the
    # journal. Its checkpoint must not be stored before them; else the
    # restarted journal gives their sequences to new events, which the
    # subscription then skips as handled.
    path = str(tmp_path / "journal")

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, CHECKPOINT_CHILD, path, mode]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    crashed = run("crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert crashed.stdout.splitlines()[-1] == "in-order"  # never "ahead"
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr
    got = [int(line.split()[1]) for line in resumed.stdout.splitlines() if line.startswith("got ")]
    assert set(range(100, 200)) <= set(got)  # no new event skipped as handled


def journaled(path: Path) -> dict[Any, int]:
    """Return ``{data: sequence}`` of the ``job.run`` events in the journal at ``path``.

    Raises ``AssertionError`` if one is there twice.
    """
    with EventBus(EventConfig(persistence_path=str(path))) as bus:
        events = bus.query(EventQuery(event_types=["job.run"]))
    out = {e.data: e.sequence or 0 for e in events}
    assert len(out) == len(events), f"journaled twice: {len(events) - len(out)} event(s)"
    return out


def test_a_durable_node_never_journals_a_received_event_twice(
    cluster: list[Node], tmp_path: Path
) -> None:
    # kill -9 of a durable node between the write of received events and the
    # write of the watermark that covers them: the restarted node fetches them
    # again. It must not journal (and deliver) them a second time: its
    # durable subscription, restarted from before them, would handle each twice.
    a_config = {"name": "a", "listen": f"ipc://{tmp_path}/a.sock", "path": str(tmp_path / "a")}
    b_config = {
        "name": "b",
        "peers": [f"ipc://{tmp_path}/a.sock"],
        "path": str(tmp_path / "b"),
        "pattern": "job.*",
        "durable": "w",
    }
    a = start(cluster, **a_config)
    b = start(cluster, **b_config)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 100", "published")
    b.wait_data(set(range(100)))
    b.close()
    a.close()
    # The state that crash leaves: events 50..99 journaled at b, the
    # watermark of a and the subscription's checkpoint still at event 49.
    at_a, at_b = journaled(tmp_path / "a"), journaled(tmp_path / "b")
    storage = RocksStorage(tmp_path / "b")
    storage.set_checkpoint("bridge:a", at_a[49])
    storage.set_checkpoint("bridge@journal", at_b[49])
    storage.set_checkpoint("sub:w", at_b[49])
    storage.close()
    a = start(cluster, **a_config)
    b = start(cluster, **b_config)
    b.ask("sync a", "synced")
    a.ask("publish job.run 100 110", "published")
    got = b.wait_data(set(range(50, 110)))
    assert [d for _, _, d in got] == list(range(50, 110))  # each once, in order
    b.close()
    a.close()
    assert sorted(journaled(tmp_path / "b")) == list(range(110))
