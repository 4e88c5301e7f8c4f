"""A persistent origin killed (kill -9) and restarted again and again, in real processes.

``docs/cluster.md``, "Restarts of an origin": a persistent origin continues
its sequence after a restart (a new epoch, the same numbering); a live
receiver notices the new epoch and fetches everything from its watermark to
the head the origin announces. With ``durability="sync"``, every event whose
publish was acknowledged reaches each live subscriber of a live receiving
node at least once, with no duplicate within one receiver incarnation, in
per-origin order, and ``gaps == gaps_recovered + gaps_unrecovered +
gaps_open`` at the receivers.

The origin ``a`` publishes through ``tests/_node_child.py``: a ``published``
or ``acked`` answer says every event of that command was acknowledged; the
events of a command still running at the kill are unknown (they may or may
not arrive). The receivers are ``b`` (live, no journal) and ``d``
(persistent, with a durable subscription); both stay up.

The restart loop runs twice: the nodes joined directly (each receiver
follows ``a``'s address) and through a broker (every node knows only the
broker's); the other tests, directly.

The parent synchronises on the children's output lines only.
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
from tests.test_cluster_fault_edges import (
    BROKER_CHILD,
    BrokerChild,
    gaps_add_up,
    settled,
)
from tests.test_durable_receiver_restarts import check_lives, journal_is, runs

pytestmark = pytest.mark.slow

WAIT = 25.0
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


@pytest.fixture(params=["direct", "broker"])
def hub(request: pytest.FixtureRequest, cluster: list[Any], tmp_path: Path) -> str | None:
    """``None`` (nodes joined directly) or the endpoint of a broker every node joins through."""
    if request.param == "direct":
        return None
    return broker(cluster, tmp_path)


def broker(cluster: list[Any], tmp_path: Path) -> str:
    """Start a broker process (last in ``cluster``) on an ipc endpoint; return the endpoint."""
    script = tmp_path / "broker_child.py"
    script.write_text(BROKER_CHILD)
    endpoint = f"ipc://{tmp_path}/hub.sock"
    cluster.append(BrokerChild(script, endpoint))
    return endpoint


def origin_config(tmp_path: Path, hub: str | None, **node: Any) -> dict[str, Any]:
    """Persistent origin ``a`` (``sync`` durability): restarts reuse its journal and address."""
    link: dict[str, Any] = {"peers": [hub]} if hub else {"listen": f"ipc://{tmp_path}/a.sock"}
    return {
        "name": "a",
        **link,
        "path": str(tmp_path / "a"),
        "durability": "sync",
        "node": {**FAST, **node},
    }


def receivers(cluster: list[Any], tmp_path: Path, peers: list[str]) -> tuple[Node, Node]:
    b = start(cluster, name="b", peers=peers, pattern="job.*", capacity=1_000_000, node=FAST)
    d = start(
        cluster,
        name="d",
        peers=peers,
        path=str(tmp_path / "d"),
        pattern="job.*",
        durable="w",
        capacity=1_000_000,
        node=FAST,
    )
    return b, d


def wait_all(node: Node, wanted: set[int]) -> None:
    """Wait (bounded) until ``node`` handled all of ``wanted``; the checks report the rest."""
    wait_for(lambda: wanted <= {x for o, _, x in list(node.got) if o == "a"}, WAIT)


def check_receivers(b: Node, d: Node, acknowledged: set[int], published: int) -> None:
    """Every acknowledged event at b and d, once, in order; gaps add up; d journaled each once."""
    for node in (b, d):
        wait_all(node, acknowledged)
        try:
            check_lives([node], "a", acknowledged)
        except AssertionError as exc:
            keys = ("gaps", "gaps_recovered", "gaps_unrecovered", "gaps_open", "recovery_retries")
            stats = node.stats()
            raise AssertionError(f"{node.name}: {exc}; { {k: stats[k] for k in keys} }") from None
        gaps_add_up(settled(node))
    seen = [x for o, _, x in list(d.got) if o == "a"]
    assert all(x < published for x in seen), runs(seen)
    journal_is(d, "job.run", seen)


def synced_three(
    cluster: list[Any], tmp_path: Path, hub: str | None, **node: Any
) -> tuple[dict[str, Any], Node, Node, Node]:
    """Start ``a`` (``origin_config``, with ``node``), ``b`` and ``d``, both synced with ``a``."""
    a_config = origin_config(tmp_path, hub, **node)
    a = start(cluster, **a_config)
    b, d = receivers(cluster, tmp_path, [hub or a_config["listen"]])
    b.ask("sync a", "synced")
    d.ask("sync a", "synced")
    return a_config, a, b, d


def kill_in_publish(a: Node, lo: int, hi: int, seen_by: Node | None = None) -> None:
    """Start publishing ``lo..hi-1`` and kill ``a`` while that runs (those events are unknown).

    With ``seen_by``, the kill comes once that node handled the range's first event.
    """
    a.send(f"publish job.run {lo} {hi}")
    if seen_by is not None:
        wait_for(lambda: any(x >= lo for o, _, x in list(seen_by.got) if o == "a"), WAIT)
    a.kill()


# -- 1. a restart loop ------------------------------------------------------------------------


def test_an_origin_restarted_again_and_again_loses_nothing_acknowledged(
    cluster: list[Any], tmp_path: Path, hub: str | None
) -> None:
    a_config, a, b, d = synced_three(cluster, tmp_path, hub)
    acknowledged: set[int] = set()
    for life in range(8):
        lo = life * 10_000
        a.ask(f"publish job.run {lo} {lo + 300}", "published")
        acknowledged |= set(range(lo, lo + 300))
        mode = life % 4
        if mode == 0:
            a.kill()  # right after an answer: all before it is acknowledged
        elif mode == 1:
            kill_in_publish(a, lo + 300, lo + 900)  # at once, the publish just sent
        elif mode == 2:
            kill_in_publish(a, lo + 300, lo + 5_300, seen_by=b)  # in the middle of it
        else:
            # Journaled, never sent (the bridge is blocked): fetched after the restart.
            a.ask("pause", "paused")
            a.ask(f"publish job.run {lo + 300} {lo + 800} acked", "acked")
            acknowledged |= set(range(lo + 300, lo + 800))
            a.kill()
        if life % 2:
            # Published at once after the restart, before the receivers' streams reconnected.
            first = ["job.run", lo + 6_000, lo + 6_100]
            a = start(cluster, **a_config, publish_first=first)
            acknowledged |= set(range(lo + 6_000, lo + 6_100))
        else:
            a = start(cluster, **a_config)
    a.ask("publish job.run 100000 100100", "published")
    acknowledged |= set(range(100_000, 100_100))
    check_receivers(b, d, acknowledged, 100_100)
    for node in (b, d, a):
        node.close()


# -- 2. a restarted while b is paused past heartbeat_timeout --------------------------------


@pytest.mark.parametrize("hub", ["direct"], indirect=True)  # the loop above covers brokers
def test_an_origin_restarted_while_a_live_receiver_is_paused(
    cluster: list[Any], tmp_path: Path, hub: str | None
) -> None:
    a_config, a, b, d = synced_three(cluster, tmp_path, hub)
    acknowledged: set[int] = set()
    for life in range(3):
        lo = life * 1_000
        a.ask(f"publish job.run {lo} {lo + 200}", "published")
        acknowledged |= set(range(lo, lo + 200))
        pause(b.proc)
        kill_in_publish(a, lo + 200, lo + 500)
        a = start(cluster, **a_config)
        a.ask(f"publish job.run {lo + 500} {lo + 700}", "published")
        acknowledged |= set(range(lo + 500, lo + 700))
        # b stays paused past heartbeat_timeout (the length of the fault).
        threading.Event().wait(2 * FAST["heartbeat_timeout"])
        os.kill(b.proc.pid, signal.SIGCONT)
        a.ask(f"publish job.run {lo + 700} {lo + 800}", "published")
        acknowledged |= set(range(lo + 700, lo + 800))
    check_receivers(b, d, acknowledged, 3_000)
    for node in (b, d, a):
        node.close()


# -- 3. a restarted twice quickly: the second restart before b fetched the first gap ---------


@pytest.mark.parametrize("hub", ["direct"], indirect=True)  # the loop above covers brokers
def test_an_origin_restarted_twice_before_the_first_gap_was_fetched(
    cluster: list[Any], tmp_path: Path, hub: str | None
) -> None:
    a_config, a, b, d = synced_three(cluster, tmp_path, hub)
    acknowledged: set[int] = set()
    for life in range(4):
        lo = life * 100_000
        a.ask(f"publish job.run {lo} {lo + 100}", "published")
        acknowledged |= set(range(lo, lo + 100))
        # Journaled, never sent: the receivers must fetch all of it after the restart.
        a.ask("pause", "paused")
        a.ask(f"publish job.run {lo + 100} {lo + 5_100} acked", "acked")
        acknowledged |= set(range(lo + 100, lo + 5_100))
        a.kill()
        a = start(cluster, **a_config)
        # Killed again at once: the receivers are (at most) in the middle of that fetch.
        kill_in_publish(a, lo + 5_100, lo + 5_200)
        first = ["job.run", lo + 5_200, lo + 5_300]
        a = start(cluster, **a_config, publish_first=first)
        acknowledged |= set(range(lo + 5_200, lo + 5_300))
    a.ask("publish job.run 900000 900010", "published")
    acknowledged |= set(range(900_000, 900_010))
    check_receivers(b, d, acknowledged, 900_010)
    for node in (b, d, a):
        node.close()


# -- 4. a restarted with another batch_size and credit_window --------------------------------


@pytest.mark.parametrize("hub", ["direct"], indirect=True)  # the loop above covers brokers
def test_an_origin_restarted_with_other_batch_size_and_credit_window(
    cluster: list[Any], tmp_path: Path, hub: str | None
) -> None:
    settings = [
        {},
        {"batch_size": 1, "credit_window": 16},
        {"batch_size": 4096, "credit_window": 100_000},
        {"batch_size": 7, "credit_window": 1},
        {"batch_size": 256},
    ]
    a_config, a, b, d = synced_three(cluster, tmp_path, hub, **settings[0])
    acknowledged: set[int] = set()
    for life, node in enumerate(settings[1:]):
        lo = life * 10_000
        a.ask(f"publish job.run {lo} {lo + 2_000}", "published")
        acknowledged |= set(range(lo, lo + 2_000))
        kill_in_publish(a, lo + 2_000, lo + 4_000)
        a_config = origin_config(tmp_path, hub, **node)
        a = start(cluster, **a_config)
    a.ask("publish job.run 90000 90100", "published")
    acknowledged |= set(range(90_000, 90_100))
    check_receivers(b, d, acknowledged, 90_100)
    for n in (b, d, a):
        n.close()
