"""A persistent receiving node with a durable subscription, killed (kill -9) and restarted.

``docs/cluster.md``, "Restarts of a receiving node": a durable subscription on
a restarted node misses nothing the origins still hold, in per-origin order,
and the node journals each received event once.  Each test kills the
receiver ``d`` at awkward moments (right after its sync, after a few events
arrived, while the origin publishes, in the middle of a recovery, before it
ever synced) and checks, at the end:

- every event an origin acknowledged reached ``d`` at least once;
- no incarnation of ``d`` handled an event twice, and each handled them in
  the origin's order; across incarnations the first appearances are in
  order too (a later incarnation never goes back below what it skipped);
- ``d``'s journal holds each event exactly once, in order.

The parent synchronises on the children's output lines only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors._journal.rocks import RocksStorage
from tests._support import reaped, wait_for
from tests.test_cluster import Node, start
from tests.test_cluster_fault_edges import (
    BROKER_CHILD,
    BrokerChild,
    gaps_add_up,
    in_order_once,
    settled,
)

pytestmark = pytest.mark.slow

WAIT = 25.0
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def restart(cluster: list[Any], lives: list[Node], config: dict[str, Any]) -> Node:
    """Start a new incarnation of the receiver; ``lives`` keeps every incarnation."""
    node = start(cluster, **config)
    lives.append(node)
    return node


def runs(data: list[int]) -> str:
    """``data`` as ascending runs (``"0-99, 50-120"``): duplicates and reorderings at a glance."""
    out: list[str] = []
    start = prev = -2
    for x in data:
        if start == -2:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}-{prev}")
            start = prev = x
    if data:
        out.append(f"{start}-{prev}")
    return ", ".join(out)


def check_lives(lives: list[Node], origin: str, acknowledged: set[int]) -> None:
    """Each incarnation in order and once; first appearances in order; nothing lost."""
    summary = "; ".join(
        f"#{n}: {runs([d for o, _, d in life.got if o == origin])}" for n, life in enumerate(lives)
    )
    for n, life in enumerate(lives):
        try:
            in_order_once(list(life.got), origin)
        except AssertionError as exc:
            raise AssertionError(f"incarnation {n} of {life.name}: {exc}; {summary}") from None
    first = list(dict.fromkeys(d for life in lives for o, _, d in life.got if o == origin))
    if first != sorted(first):
        back = [(x, y) for x, y in itertools.pairwise(first) if y < x]
        raise AssertionError(f"first appearances of {origin} out of order at {back[:5]}; {summary}")
    missing = sorted(acknowledged - set(first))
    assert not missing, f"{len(missing)} of {origin} lost: {runs(missing)}; {summary}"


def arrives(d: Node, wanted: set[int], origin: str = "a") -> None:
    """Wait (bounded) until ``d`` handled ``wanted`` of ``origin``; the checks report the rest."""
    wait_for(lambda: wanted <= {x for o, _, x in list(d.got) if o == origin}, WAIT)


def first_events(d: Node, n: int) -> None:
    """Wait (bounded) until ``d`` handled ``n`` events; if not, fail with its statistics."""
    if wait_for(lambda: len(d.got) >= n, WAIT):
        return
    stats = d.stats()
    keys = (
        "peers_alive",
        "synced_peers",
        "events_received",
        "events_delivered",
        "events_recovered",
        "gaps",
        "gaps_open",
        "recovery_retries",
        "duplicates",
        "sequences_rejected",
    )
    raise AssertionError(f"{d.name} handled {len(d.got)} of {n}: { {k: stats[k] for k in keys} }")


def saved_marks(path: Path, origins: tuple[str, ...] = ("a",)) -> dict[str, Any]:
    """The bridge checkpoints of a killed node's journal and its last sequence (evidence)."""
    storage = RocksStorage(str(path), read_only=True)
    try:
        out: dict[str, Any] = {n: storage.get_checkpoint(f"bridge:{n}") for n in origins}
        out["bridge@journal"] = storage.get_checkpoint("bridge@journal")
        out["last"] = storage.last_sequence()
        return out
    finally:
        storage.close()


def all_hold(*checks: Any, note: str = "") -> None:
    """Run every check; fail with all of their messages (a loss and a duplicate at once)."""
    errors = []
    for check in checks:
        try:
            check()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors) + (f"\n{note}" if note else "")


def journal_is(d: Node, event_type: str, expected: list[int]) -> None:
    """``d``'s journal holds ``expected`` of ``event_type``, each once, in order (bounded wait)."""
    box: dict[str, Any] = {}

    def stored() -> bool:
        line = d.ask(f"journal {event_type}", "journal ")
        box["data"] = json.loads(line[len("journal ") :])
        # A duplicate never goes away: no use waiting for more then.
        return bool(box["data"] == expected) or len(set(box["data"])) < len(box["data"])

    wait_for(stored, WAIT)
    data: list[int] = box["data"]
    if data == expected:
        return
    dups = sorted({x for x in data if data.count(x) > 1})
    missing = sorted(set(expected) - set(data))
    raise AssertionError(
        f"{event_type}: journal holds {len(data)} of {len(expected)}; "
        f"duplicated {runs(dups)}, missing {runs(missing)}, as stored: {runs(data)}"
    )


# -- 1. a restart loop through a broker, restarted while d is down -----------------------------


# Regression: a receiver killed while journaling could leave a torn, unacknowledged WAL tail that
# the restart refused as damage (JournalDamagedError), so the node could not come back at all.
def test_a_durable_receiver_restarted_through_a_restarted_broker_misses_nothing(
    cluster: list[Any], tmp_path: Path
) -> None:
    script = tmp_path / "broker_child.py"
    script.write_text(BROKER_CHILD)
    hub = f"ipc://{tmp_path}/hub.sock"
    broker = BrokerChild(script, hub)
    cluster.append(broker)
    a = start(cluster, name="a", peers=[hub], path=str(tmp_path / "a"), node=FAST)
    d_config = {
        "name": "d",
        "peers": [hub],
        "path": str(tmp_path / "d"),
        "pattern": "job.*",
        "durable": "w",
        "node": FAST,
    }
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.run 0 100", "published")
    d.wait_data(set(range(100)))
    d.kill()
    a.ask("publish job.run 100 200", "published")  # d is down
    broker.kill()
    a.ask("publish job.run 200 300", "published")  # d and the broker are down
    broker = BrokerChild(script, hub)
    cluster.append(broker)
    a.ask("publish job.run 300 350", "published")
    # Killed right after its sync.
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    d.kill()
    a.ask("publish job.run 350 450", "published")
    # Killed while a publishes; then the broker goes down and up while d is down.
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.send("publish job.run 450 2450")
    d.wait_data({500})
    d.kill()
    a.expect("published")
    broker.kill()
    a.ask("publish job.run 2450 2550", "published")
    broker = BrokerChild(script, hub)
    cluster.append(broker)
    # Killed a few events into its recovery, before it was asked to sync.
    d = restart(cluster, lives, d_config)
    first_events(d, 5)
    d.kill()
    a.ask("publish job.run 2550 2600", "published")
    marks = saved_marks(tmp_path / "d")
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.run 2600 2650", "published")
    acknowledged = set(range(2650))
    arrives(d, acknowledged - {x for life in lives[:-1] for _, _, x in life.got})
    all_hold(
        lambda: check_lives(lives, "a", acknowledged),
        lambda: journal_is(d, "job.run", list(range(2650))),
        note=f"saved by the last killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    a.close()


# -- 2. two origins, d killed while it recovers a long downtime from one of them ----------------


def test_a_durable_receiver_killed_while_recovering_from_one_of_two_origins(
    cluster: list[Any], tmp_path: Path
) -> None:
    a = start(
        cluster, name="a", listen=f"ipc://{tmp_path}/a.sock", path=str(tmp_path / "a"), node=FAST
    )
    b = start(
        cluster, name="b", listen=f"ipc://{tmp_path}/b.sock", path=str(tmp_path / "b"), node=FAST
    )
    d_config = {
        "name": "d",
        "peers": [a.endpoint, b.endpoint],
        "path": str(tmp_path / "d"),
        "pattern": "job.**",
        "durable": "w",
        # A small window: the recovery comes in pages of 500, so it lasts.
        "node": {**FAST, "credit_window": 500},
    }
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    d.ask("sync a,b", "synced")
    a.ask("publish job.a 0 50", "published")
    b.ask("publish job.b 0 50", "published")
    d.wait_data(set(range(50)))
    wait_for(lambda: len(d.got) >= 100, WAIT)
    d.kill()
    n = 5050
    for lo in range(50, n, 1000):  # a long downtime: 5,000 events of a
        a.ask(f"publish job.a {lo} {min(lo + 1000, n)}", "published")
    b.ask("publish job.b 50 250", "published")
    # Killed once it handled part of a's range, not all of it.
    d = restart(cluster, lives, d_config)
    assert wait_for(lambda: sum(1 for o, _, _ in d.got if o == "a") >= 1500, WAIT), len(d.got)
    d.kill()
    got_a = {x for o, _, x in d.got if o == "a"}
    assert not set(range(50, n)) <= got_a, "the recovery was over before the kill: nothing tested"
    a.ask(f"publish job.a {n} {n + 50}", "published")
    b.ask("publish job.b 250 300", "published")
    # Killed again, a few events in.
    d = restart(cluster, lives, d_config)
    first_events(d, 5)
    d.kill()
    marks = saved_marks(tmp_path / "d", ("a", "b"))
    d = restart(cluster, lives, d_config)
    d.ask("sync a,b", "synced")
    a.ask(f"publish job.a {n + 50} {n + 60}", "published")
    b.ask("publish job.b 300 310", "published")
    acked_a, acked_b = set(range(n + 60)), set(range(310))

    def still(origin: str, acked: set[int]) -> set[int]:
        return acked - {x for life in lives[:-1] for o, _, x in life.got if o == origin}

    want = [(still("a", acked_a), "a"), (still("b", acked_b), "b")]
    ok = wait_for(
        lambda: all(w <= {x for o, _, x in d.got if o == origin} for w, origin in want), WAIT
    )
    all_hold(
        lambda: check_lives(lives, "a", acked_a),
        lambda: check_lives(lives, "b", acked_b),
        lambda: journal_is(d, "job.a", list(range(n + 60))),
        lambda: journal_is(d, "job.b", list(range(310))),
        note=f"saved by the last killed incarnation: {marks}",
    )
    assert ok
    gaps_add_up(settled(d))
    d.close()
    a.close()
    b.close()


# -- 3. a subscription made after the bus started, the node killed before it ever synced --------


@pytest.mark.parametrize("heard", [False, True], ids=["at-once", "after-a-is-heard"])
def test_a_receiver_subscribing_after_start_killed_before_its_sync_fetches_its_downtime(
    cluster: list[Any], tmp_path: Path, heard: bool
) -> None:
    a = start(
        cluster, name="a", listen=f"ipc://{tmp_path}/a.sock", path=str(tmp_path / "a"), node=FAST
    )
    d_config = {"name": "d", "peers": [a.endpoint], "path": str(tmp_path / "d"), "node": FAST}
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    d.ask("subscribe job.* w", "subscribed")
    d.ask("sync a", "synced")
    a.ask("publish job.run 0 50", "published")
    d.wait_data(set(range(50)))
    d.kill()
    a.ask("publish job.run 50 120", "published")  # d is down
    # Restarted, subscribed, and killed before it ever synced.
    d = restart(cluster, lives, d_config)
    if heard:
        d.ask("peers a", "peers")  # a's heartbeats (and its sync reply) came first
    d.ask("subscribe job.* w", "subscribed")
    d.kill()
    a.ask("publish job.run 120 200", "published")  # down again
    marks = saved_marks(tmp_path / "d")
    d = restart(cluster, lives, d_config)
    d.ask("peers a", "peers")
    a.ask("publish job.run 200 210", "published")  # before the subscription
    d.ask("subscribe job.* w", "subscribed")
    d.ask("sync a", "synced")
    a.ask("publish job.run 210 220", "published")
    acknowledged = set(range(220))
    arrives(d, acknowledged - {x for life in lives[:-1] for _, _, x in life.got})
    all_hold(
        lambda: check_lives(lives, "a", acknowledged),
        lambda: journal_is(d, "job.run", list(range(220))),
        note=f"saved by the last killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    a.close()


# -- 4. the origin dials the receiver: its link reconnects to the restarted node by itself ------


# Regression: a restarted receiver that first heard its origin through a CREDIT on its ROUTER made
# the origin a live peer without loading its watermark or following its stream, then took the
# origin's HELLO for a second node (or got none), so it never synced nor fetched its downtime.
def test_a_durable_receiver_dialled_by_its_origin_restarted_at_once_fetches_its_downtime(
    cluster: list[Any], tmp_path: Path
) -> None:
    d_config = {
        "name": "d",
        "listen": f"ipc://{tmp_path}/d.sock",
        "path": str(tmp_path / "d"),
        "pattern": "job.*",
        "durable": "w",
        "node": FAST,
    }
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    a = start(
        cluster,
        name="a",
        listen=f"ipc://{tmp_path}/a.sock",
        peers=[d.endpoint],
        path=str(tmp_path / "a"),
        node=FAST,
    )
    d.ask("sync a", "synced")
    a.ask("publish job.run 0 50", "published")
    d.wait_data(set(range(50)))
    d.kill()
    a.ask("publish job.run 50 120", "published")  # d is down
    marks = saved_marks(tmp_path / "d")
    d = restart(cluster, lives, d_config)  # at once, on the same endpoint
    # Polled, not ``sync`` (which would block the child for a minute): a bounded wait.
    box: dict[str, Any] = {}

    def synced() -> bool:
        box["s"] = d.stats()
        return "a" in box["s"]["synced_peers"]

    # Bounded below WAIT so a failure reports within the test's budget.
    assert wait_for(synced, 15.0), (
        f"d never synced with a: "
        f"{ {k: box['s'][k] for k in ('peers_alive', 'synced_peers', 'events_received')} }; "
        f"saved by the killed incarnation: {marks}; "
        f"{d.ask('journal job.run', 'journal ')} (a published 0-119)"
    )
    a.ask("publish job.run 120 130", "published")
    acknowledged = set(range(130))
    arrives(d, acknowledged - {x for life in lives[:-1] for _, _, x in life.got})
    all_hold(
        lambda: check_lives(lives, "a", acknowledged),
        lambda: journal_is(d, "job.run", list(range(130))),
        note=f"saved by the last killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    a.close()
