"""The bridge across real OS processes (``tests/_node_child.py``).

Mesh, restarts, gaps, CURVE and the broker.

The parent synchronises on the children's output lines only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors._cluster.broker import Broker
from actors._cluster.security import generate_keypair
from tests._support import LineChild, reaped

pytestmark = pytest.mark.slow

CHILD = str(Path(__file__).with_name("_node_child.py"))
WAIT = float(__import__("os").environ.get("CLUSTER_WAIT", "60"))


class Node(LineChild):
    """A child process running one node; ``got`` collects what its handler printed."""

    def __init__(self, **config: Any) -> None:
        self.got: list[tuple[str, str, Any]] = []
        self._got_changed = threading.Condition()
        script = config.pop("child", CHILD)  # another script in its place (same commands)
        super().__init__(script, config, wait=WAIT, name=config["name"])
        self.endpoint = self.expect("ready").split()[1]

    def on_line(self, line: str) -> None:
        if line.startswith("got "):
            _, origin, event_type, data = line.split(" ", 3)
            with self._got_changed:
                self.got.append((origin, event_type, json.loads(data)))
                self._got_changed.notify_all()
        else:
            self.lines.put(line)

    def wait_got(self, n: int) -> list[tuple[str, str, Any]]:
        with self._got_changed:
            ok = self._got_changed.wait_for(lambda: len(self.got) >= n, WAIT)
            assert ok, f"{self.name} got {len(self.got)} of {n}"
            return list(self.got)

    def wait_data(self, wanted: set[Any]) -> list[tuple[str, str, Any]]:
        """Wait until the handler saw every data value in ``wanted`` (dicts are not looked at)."""

        def seen() -> set[Any]:
            return {d for _, _, d in self.got if not isinstance(d, dict)}

        with self._got_changed:
            ok = self._got_changed.wait_for(lambda: wanted <= seen(), WAIT)
            assert ok, f"{self.name} is missing {sorted(wanted - seen())}"
            return list(self.got)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ask("stats", "stats ")[6:])
        return result


@pytest.fixture
def cluster() -> Iterator[list[Node]]:
    yield from reaped(WAIT)


def start(cluster: list[Node], **config: Any) -> Node:
    node = Node(**config)
    cluster.append(node)
    return node


def test_three_processes_wildcards_and_order(cluster: list[Node]) -> None:
    a = start(cluster, name="a", listen="tcp://127.0.0.1:*", pattern="task.*.done")
    b = start(cluster, name="b", listen="tcp://127.0.0.1:*", peers=[a.endpoint], pattern="**")
    c = start(
        cluster,
        name="c",
        listen="tcp://127.0.0.1:*",
        peers=[a.endpoint, b.endpoint],
        pattern="task.**",
    )
    a.ask("sync b,c", "synced")
    b.ask("sync a,c", "synced")
    c.ask("sync a,b", "synced")
    b.ask("publish task.x.done 0 200", "published")
    c.ask("publish task.y.started 0 100", "published")
    a.ask("publish other.thing 0 50", "published")
    at_a = a.wait_got(200)
    assert [d for o, _, d in at_a if o == "b"] == list(range(200))
    assert {o for o, _, _ in at_a} == {"b"}  # c's task.y.started does not match
    at_b = b.wait_got(200 + 100 + 50)  # its own 200 too: "**" matches local events
    assert [d for o, _, d in at_b if o == "c"] == list(range(100))
    assert [d for o, _, d in at_b if o == "a"] == list(range(50))
    at_c = c.wait_got(100 + 200)
    assert [d for o, _, d in at_c if o == "b"] == list(range(200))
    assert c.stats()["events_received"] == 200  # a's other.thing never reached c
    for node in (a, b, c):
        node.close()


def test_killed_subscriber_resumes_without_loss(cluster: list[Node], tmp_path: Path) -> None:
    a = start(cluster, name="a", listen="tcp://127.0.0.1:*", path=str(tmp_path / "a"))
    b_config = {
        "name": "b",
        "listen": "tcp://127.0.0.1:*",
        "peers": [a.endpoint],
        "path": str(tmp_path / "b"),
        "pattern": "job.*",
        "durable": "worker",
    }
    b = start(cluster, **b_config)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 50", "published")
    b.wait_got(50)
    b.kill()
    a.ask("publish job.run 50 120", "published")  # b is down
    b2 = start(cluster, **b_config)
    b2.ask("sync a", "synced")
    a.ask("publish job.run 120 150", "published")
    before = {d for _, _, d in b.got}
    assert before >= set(range(50))
    got = b2.wait_data(set(range(50, 150)))  # nothing published meanwhile is lost
    data = [d for _, _, d in got]
    first_seen = list(dict.fromkeys(data))
    assert len(first_seen) == len(data), "an event delivered twice"  # the filter drops copies
    assert first_seen == sorted(first_seen)  # per-origin order across the restart
    b2.close()
    a.close()


def test_a_durable_node_subscribing_after_its_sync_reply_fetches_its_downtime(
    cluster: list[Node], tmp_path: Path
) -> None:
    a = start(cluster, name="a", listen="tcp://127.0.0.1:*", path=str(tmp_path / "a"))
    b_config = {"name": "b", "peers": [a.endpoint], "path": str(tmp_path / "b")}
    b = start(cluster, **b_config)
    b.ask("subscribe job.* worker", "subscribed")
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 50", "published")
    b.wait_got(50)
    b.kill()
    a.ask("publish job.run 50 120", "published")  # b is down
    b2 = start(cluster, **b_config)
    b2.ask("peers a", "peers")  # a's heartbeats and sync reply came first ...
    a.ask("publish job.run 120 130", "published")
    b2.ask("subscribe job.* worker", "subscribed")  # ... the subscription after them
    b2.ask("sync a", "synced")
    a.ask("publish job.run 130 140", "published")
    got = b2.wait_data(set(range(50, 140)))
    data = [d for _, _, d in got]
    first_seen = list(dict.fromkeys(data))
    assert len(first_seen) == len(data), "an event delivered twice"  # the filter drops copies
    assert first_seen == sorted(first_seen)
    b2.close()
    a.close()


def test_a_restarted_persistent_publisher_loses_nothing_at_a_live_subscriber(
    cluster: list[Node], tmp_path: Path
) -> None:
    a_config = {"name": "a", "listen": f"ipc://{tmp_path}/a.sock", "path": str(tmp_path / "a")}
    a = start(cluster, **a_config)
    b = start(cluster, name="b", peers=[a.endpoint], pattern="job.*", capacity=1_000_000)
    b.ask("sync a", "synced")
    acknowledged: set[int] = set()
    for round_ in range(3):
        base = round_ * 100_000
        # Killed at full rate, in the middle of a long publish.
        a.send(f"publish job.run {base} {base + 20_000}")
        b.wait_data({base + 1_000})
        a.kill()
        # At once after the restart, before b's stream reconnected.
        first = ["job.run", base + 20_000, base + 21_000]
        a = start(cluster, **a_config, publish_first=first)
        acknowledged |= set(range(base + 20_000, base + 21_000))
    got = b.wait_data(acknowledged)
    data = [d for _, _, d in got]
    first_seen = list(dict.fromkeys(data))
    assert len(first_seen) == len(data), "an event delivered twice"  # the filter drops copies
    assert first_seen == sorted(first_seen)
    stats = b.stats()
    assert stats["gaps"] == stats["gaps_recovered"] + stats["gaps_unrecovered"] + stats["gaps_open"]
    b.close()
    a.close()


def test_low_high_water_mark_gaps_are_recovered(cluster: list[Node]) -> None:
    tight = {"send_hwm": 1, "receive_hwm": 1, "batch_size": 1}
    a = start(cluster, name="a", listen="tcp://127.0.0.1:*", node=tight)
    b = start(cluster, name="b", peers=[a.endpoint], pattern="burst.*", capacity=50_000, node=tight)
    b.ask("sync a", "synced")
    b.ask("pause", "paused")  # b stops reading: frames pile up and overflow
    a.ask("publish burst.x 0 20000", "published")
    b.ask("resume", "resumed")
    a.ask("publish burst.x 20000 20001", "published")
    got = b.wait_got(20001)
    assert [d for _, _, d in got] == list(range(20001))
    stats = b.stats()
    assert stats["gaps"] >= 1
    assert stats["gaps_recovered"] >= 1
    assert stats["gaps_unrecovered"] == 0
    assert stats["gaps"] == stats["gaps_recovered"] + stats["gaps_unrecovered"] + stats["gaps_open"]
    b.close()
    a.close()


def test_a_mixed_size_burst_arrives_or_fails_at_publish(cluster: list[Node]) -> None:
    a = start(cluster, name="a", listen="tcp://127.0.0.1:*")
    b = start(cluster, name="b", peers=[a.endpoint], pattern="blob.*")
    b.ask("sync a", "synced")
    sizes = [1_000, 10_000_000, 20_000_000, 1]
    outcomes = a.ask("sized blob.put " + ",".join(map(str, sizes)), "sized ").split()[1]
    # The 20 MB event is over the 16 MiB frame limit: its publish failed at once.
    assert outcomes.split(",") == ["ok", "ok", "too-large", "ok"]
    got = b.wait_got(3)
    assert [d for _, _, d in got] == ["len:1000", "len:10000000", "x"]
    stats = b.stats()
    assert stats["frames_dropped"] == 0
    assert stats["gaps"] == 0
    assert a.stats()["events_too_large"] == 0  # refused at publish, never queued
    b.close()
    a.close()


def test_unauthorised_key_receives_nothing(cluster: list[Node]) -> None:
    a_pub, a_sec = (k.decode() for k in generate_keypair())
    b_pub, b_sec = (k.decode() for k in generate_keypair())
    x_pub, x_sec = (k.decode() for k in generate_keypair())
    a = start(
        cluster,
        name="a",
        listen="tcp://127.0.0.1:*",
        keys={"public": a_pub, "secret": a_sec, "authorized": [b_pub]},
    )
    peer_keys = {a.endpoint: a_pub}
    b = start(
        cluster,
        name="b",
        listen="tcp://127.0.0.1:*",
        peers=[a.endpoint],
        pattern="secret.*",
        keys={"public": b_pub, "secret": b_sec, "authorized": [a_pub], "peer_keys": peer_keys},
    )
    x = start(
        cluster,
        name="x",
        listen="tcp://127.0.0.1:*",
        peers=[a.endpoint],
        pattern="**",
        keys={"public": x_pub, "secret": x_sec, "authorized": [a_pub], "peer_keys": peer_keys},
    )
    a.ask("refused", "refused")
    b.ask("sync a", "synced")
    a.ask("publish secret.plan 0 10", "published")
    assert [d for _, _, d in b.wait_got(10)] == list(range(10))
    stats = x.stats()
    assert stats["events_received"] == 0
    assert stats["peers_alive"] == []
    assert x.got == []
    for node in (a, b, x):
        node.close()


def test_through_a_broker(cluster: list[Node]) -> None:
    with Broker("tcp://127.0.0.1:*") as broker:
        names = ["a", "b", "c"]
        nodes = {n: start(cluster, name=n, peers=[broker.endpoint], pattern="b.**") for n in names}
        for n, node in nodes.items():
            node.ask("sync " + ",".join(m for m in names if m != n), "synced")
        for n, node in nodes.items():
            node.ask(f"publish b.{n} 0 100", "published")
            node.ask(f"publish x.{n} 0 10", "published")
        for node in nodes.values():
            got = node.wait_got(300)
            for m in names:
                assert [d for o, _, d in got if o == m] == list(range(100))
            assert node.stats()["events_received"] == 200
        for node in nodes.values():
            node.close()
