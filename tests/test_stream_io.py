"""The event stream of the bridge (``_cluster.stream_io``), in real processes."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cluster import Node

pytestmark = pytest.mark.slow


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(60)


def start(nodes: list[Node], **config: Any) -> Node:
    node = Node(**config)
    nodes.append(node)
    return node


def journaled(node: Node, event_type: str) -> list[Any]:
    data: list[Any] = json.loads(node.ask(f"journal {event_type}", "journal ")[8:])
    return data


def test_a_persistent_origin_killed_at_full_rate_never_sent_what_it_forgot(
    nodes: list[Node], tmp_path: Path
) -> None:
    a_config = {
        "name": "a",
        "listen": f"ipc://{tmp_path}/a.sock",
        "path": str(tmp_path / "a"),
        "durability": "sync",
    }
    a = start(nodes, **a_config)
    b = start(nodes, name="b", peers=[a.endpoint], pattern="job.*", capacity=1_000_000)
    b.ask("sync a", "synced")
    for round_ in range(3):
        base = round_ * 100_000
        assert a.proc.stdin is not None
        a.proc.stdin.write(f"publish job.run {base} {base + 50_000}\n")
        a.proc.stdin.flush()
        b.wait_data({base + 500})
        a.kill()  # in the middle of the publish: events in flight to the disk
        a = start(nodes, **a_config)
        stored = set(journaled(a, "job.run"))
        # Everything b received, the restarted origin still holds: an event is
        # sent only once written, so a crash never takes back what a peer has.
        received = {d for _, _, d in b.got}
        assert received <= stored, sorted(received - stored)[:10]
    a.ask("publish job.run 900000 900010", "published")
    got = b.wait_data(set(range(900_000, 900_010)))
    data = [d for _, _, d in got]
    first_seen = list(dict.fromkeys(data))
    assert len(first_seen) == len(data), "an event delivered twice"  # the filter drops copies
    assert first_seen == sorted(first_seen)  # per-origin order, across every restart
    b.close()
    a.close()
