"""``wait_for_peers`` on a persistent node: the watermarks it implies are journaled first.

A persistent node that restarts fetches from each origin what came after
the watermark it saved; an origin it has no watermark for is new to it, and
its past is not fetched.  So a node killed (kill -9) right after
``wait_for_peers`` returned must find the watermarks of those peers in its
journal, or the restart skips everything they published while it was down.
Regression: the call returned as soon as the sync replies arrived, while the
watermarks were still on their way to the journal; a node killed then (its
journal thread had not run yet, as on a loaded machine) came back without
them and never fetched its downtime.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from actors import EventBus, EventConfig, NodeConfig, PersistentEventBus
from actors._journal.rocks import RocksStorage
from tests._cluster_support import WAIT, Until, ipc, node
from tests._support import reaped
from tests.test_cluster import start


@pytest.fixture
def held_watermarks(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold every write of a bridge watermark until the returned gate is set."""
    gate = threading.Event()
    real = RocksStorage.set_checkpoints

    def held(self: RocksStorage, items: Sequence[tuple[str, int]], *, sync: bool = False) -> None:
        if any(name.startswith("bridge:") for name, _ in items):
            gate.wait(WAIT)
        real(self, items, sync=sync)

    monkeypatch.setattr(RocksStorage, "set_checkpoints", held)
    yield gate
    gate.set()


def test_wait_for_peers_returns_once_the_watermarks_are_journaled(
    tmp_path: Path, held_watermarks: threading.Event
) -> None:
    a = EventBus(node=NodeConfig(name="a", listen=ipc(tmp_path, "a")))
    d = PersistentEventBus(
        EventConfig(persistence_path=str(tmp_path / "d")),
        node=NodeConfig(name="d", peers=(ipc(tmp_path, "a"),)),
    )
    try:
        got = Until(1)
        d.subscribe("job.*", got)
        # The sync reply is in, its watermark is not written: not yet.
        assert node(d).wait_for_peers(["a"], 1.0) is False
        assert node(d).statistics().synced_peers == ("a",)
        held_watermarks.set()
        assert node(d).wait_for_peers(["a"], WAIT) is True
        storage = RocksStorage(str(tmp_path / "d"), read_only=True)
        try:
            assert storage.get_checkpoint("bridge:a") is not None
        finally:
            storage.close()
        a.publish("job.run", 1)
        got.wait()  # the sync is in force
    finally:
        d.close()
        a.close()


# -- in real processes: kill -9 right after the sync ------------------------------------------


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def test_a_node_killed_right_after_its_sync_fetches_its_downtime(
    cluster: list[Any], tmp_path: Path
) -> None:
    a = start(cluster, name="a", listen=f"ipc://{tmp_path}/a.sock", path=str(tmp_path / "a"))
    d_config = {
        "name": "d",
        "peers": [a.endpoint],
        "path": str(tmp_path / "d"),
        "pattern": "job.*",
        "durable": "w",
    }
    d = start(cluster, **d_config)
    d.ask("sync a", "synced")
    d.kill()  # no event of a was ever received: the watermark is all d knows of a
    a.ask("publish job.run 0 40", "published")  # d is down
    d = start(cluster, **d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.run 40 50", "published")
    got = d.wait_data(set(range(50)))
    data = [x for _, _, x in got]
    assert data == list(range(50))  # once each, in order
    d.close()
    a.close()
