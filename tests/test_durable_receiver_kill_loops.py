"""A durable receiver killed (kill -9) again and again: its saved position stays in its watermark.

``docs/cluster.md``, "Restarts of a receiving node": after a restart the node
reads the received events journaled past its saved position (``bridge@journal``)
into its duplicate filter, and moves that position only once each of their
origins' watermarks covers them.  Here ``d`` journals only ``a``'s ``job.run``
events, so its local numbering is ``a``'s: a saved position past the saved
watermark means received events that the next start would neither know nor
skip, fetched again and journaled twice.  Every kill checks that on the killed
node's journal, and the end checks what the incarnations handled and what the
journal holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import reaped
from tests.test_cluster import Node, start
from tests.test_cluster_fault_edges import gaps_add_up, settled
from tests.test_durable_receiver_restarts import (
    FAST,
    WAIT,
    all_hold,
    arrives,
    check_lives,
    first_events,
    journal_is,
    restart,
    saved_marks,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def killed(d: Node, path: Path) -> dict[str, Any]:
    """Kill ``d``; return what its journal saved, checked: the position within the watermark."""
    d.kill()
    marks = saved_marks(path)
    position, watermark = marks["bridge@journal"], marks["a"]
    assert position is None or (watermark is not None and position <= watermark), (
        f"{d.name} saved its journal's position past its watermark of a: {marks}"
    )
    return marks


def read_out(d: Node) -> None:
    """Wait (bounded) until every line the killed ``d`` wrote was read: its ``got`` lines all in."""
    while d.lines.get(timeout=WAIT) != "<eof>":
        pass


def handled(lives: list[Node], origin: str) -> set[int]:
    """What the incarnations in ``lives`` handled of ``origin``."""
    return {x for life in lives for o, _, x in life.got if o == origin}


def first_life(cluster: list[Any], tmp_path: Path) -> tuple[Node, dict[str, Any], list[Node]]:
    """Start origin ``a`` and receiver ``d``; ``d`` syncs, gets 100 events and is killed.

    Returns ``a``, ``d``'s config and the list of its incarnations.
    """
    a = start(
        cluster, name="a", listen=f"ipc://{tmp_path}/a.sock", path=str(tmp_path / "a"), node=FAST
    )
    d_config = {
        "name": "d",
        "peers": [a.endpoint],
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
    killed(d, tmp_path / "d")
    return a, d_config, lives


# -- 1. five kills at awkward moments -----------------------------------------------------------


# Regression: a restarted receiver saved ``bridge@journal`` at its journal's end before its
# watermark covered the received events journaled past the old position; killed again, the next
# incarnation no longer knew their ids and journaled and delivered the fetched range a second time.
def test_a_durable_receiver_killed_five_times_at_awkward_moments_misses_nothing(
    cluster: list[Any], tmp_path: Path
) -> None:
    a, d_config, lives = first_life(cluster, tmp_path)  # kill 1: after events arrived
    a.ask("publish job.run 100 300", "published")  # d is down
    # Incarnation 1: killed right after its sync (its recovery may be out).
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    killed(d, tmp_path / "d")  # kill 2: right after sync
    a.ask("publish job.run 300 500", "published")
    # Incarnation 2: killed once a few events arrived (in the middle of its recovery).
    d = restart(cluster, lives, d_config)
    first_events(d, 5)
    killed(d, tmp_path / "d")  # kill 3: a few got lines in
    a.ask("publish job.run 500 1500", "published")
    # Incarnation 3: killed while a publishes.
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.send("publish job.run 1500 4500")
    d.wait_data({1600})
    killed(d, tmp_path / "d")  # kill 4: a's publish is still running (or its answer not read yet)
    a.expect("published")
    a.ask("publish job.run 4500 4600", "published")
    # Incarnation 4: killed at its first event, before its sync was asked for.
    d = restart(cluster, lives, d_config)
    first_events(d, 1)
    marks = killed(d, tmp_path / "d")  # kill 5
    # Incarnation 5: lives to the end.
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.run 4600 4700", "published")
    d.wait_data(set(range(4600, 4700)))
    acknowledged = set(range(4700))
    # The last incarnation gets what none before it handled (and nothing twice).
    arrives(d, acknowledged - {x for life in lives[:-1] for _, _, x in life.got})
    all_hold(
        lambda: check_lives(lives, "a", acknowledged),
        lambda: journal_is(d, "job.run", list(range(4700))),
        note=f"saved by the last killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    # Caught up, it moved its position past where it started: the next start reads only
    # what it received from then on (the position never stays behind for good).
    end = saved_marks(tmp_path / "d")
    assert (end["bridge@journal"] or 0) >= marks["last"], (
        f"position not moved: at the end {end}, at the start {marks}"
    )
    a.close()


# -- 2. twelve kills during one long recovery ------------------------------------------------


# Regression: the position moved as soon as nothing of the origin waited, which is also the case
# right after the watermark loaded and before the sync was asked for: with the watermark at 100,
# the position went to the journal's end (4,196: a first run under load), and the next
# incarnation journaled and delivered those events a second time.
def test_a_durable_receiver_killed_again_and_again_during_one_long_recovery_journals_once(
    cluster: list[Any], tmp_path: Path
) -> None:
    a, d_config, lives = first_life(cluster, tmp_path)
    n = 5100
    for lo in range(100, n, 1000):  # d is down
        a.ask(f"publish job.run {lo} {min(lo + 1000, n)}", "published")
    # Each incarnation killed at its first event (fetched or replayed): the recovery of the
    # 5,000 missed events is cut again and again, with received events journaled past the
    # watermark each time, which the next start must know it holds.  An incarnation may
    # handle the rest of the recovery before its kill lands (a loaded machine): the next
    # would then have nothing to handle, and the loop ends there.
    marks = saved_marks(tmp_path / "d")
    for _ in range(12):
        if set(range(n)) <= handled(lives, "a"):
            break
        d = restart(cluster, lives, d_config)
        first_events(d, 1)
        marks = killed(d, tmp_path / "d")
        read_out(d)
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask(f"publish job.run {n} {n + 10}", "published")
    acknowledged = set(range(n + 10))
    arrives(d, acknowledged - handled(lives[:-1], "a"))
    all_hold(
        lambda: check_lives(lives, "a", acknowledged),
        lambda: journal_is(d, "job.run", list(range(n + 10))),
        note=f"saved by the last killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    a.close()
