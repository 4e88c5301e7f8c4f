"""A durable receiver killed (kill -9) and restarted while its origins change under it.

``docs/cluster.md``, "Restarts of a receiving node": after a restart a
persistent node misses no event its origins still hold, handles none twice
within one incarnation, keeps each origin's order, and its journal holds each
received event once.  Here the origins themselves move while the receiver
``d`` is down or recovering: an origin without a journal is restarted (a new
numbering), an origin goes away for good, a persistent origin is killed in
the middle of ``d``'s recovery, and ``d`` is stopped (SIGSTOP) past its peers'
heartbeat timeout before it is killed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import pause, reaped, wait_for
from tests.test_cluster import Node, start
from tests.test_cluster_fault_edges import gaps_add_up, settled
from tests.test_durable_receiver_kill_loops import killed
from tests.test_durable_receiver_restarts import (
    FAST,
    WAIT,
    all_hold,
    check_lives,
    first_events,
    journal_is,
    restart,
    runs,
    saved_marks,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def handled(lives: list[Node], origin: str) -> set[int]:
    """What every incarnation handled of ``origin``."""
    return {x for life in lives for o, _, x in list(life.got) if o == origin}


def journal_once(d: Node, event_type: str, least: set[int], most: set[int]) -> None:
    """``d``'s journal: ``event_type`` once each, in order, from ``least`` to ``most``.

    For an origin gone for good: what it sent past ``d``'s saved watermark
    before ``d`` was killed may be handled and not journaled, and never comes
    again; what the watermark covers is journaled.
    """
    data = json.loads(d.ask(f"journal {event_type}", "journal ")[len("journal ") :])
    assert data == sorted(set(data)), f"{event_type}: journal not once each in order: {data}"
    assert least <= set(data) <= most, f"{event_type}: journal holds {runs(data)}"


def a_config_of(tmp_path: Path) -> dict[str, Any]:
    """The config of a persistent origin ``a`` (restarted on it: the same journal and address)."""
    return {
        "name": "a",
        "listen": f"ipc://{tmp_path}/a.sock",
        "path": str(tmp_path / "a"),
        "node": FAST,
    }


def persistent_a(cluster: list[Any], tmp_path: Path) -> Node:
    return start(cluster, **a_config_of(tmp_path))


def receiver_of(a: Node, tmp_path: Path, **node: Any) -> dict[str, Any]:
    """The config of the durable receiver ``d`` of ``a``'s ``job.*`` (``node``: its settings)."""
    return {
        "name": "d",
        "peers": [a.endpoint],
        "path": str(tmp_path / "d"),
        "pattern": "job.*",
        "durable": "w",
        "node": {**FAST, **node},
    }


def receiving_first_100(
    cluster: list[Any], tmp_path: Path, a: Node
) -> tuple[dict[str, Any], list[Node], Node]:
    """Start ``d`` on ``a``'s ``job.*``; it syncs and journals ``a``'s first 100 events.

    Returns ``d``'s config, its incarnations and ``d``.
    """
    d_config = receiver_of(a, tmp_path)
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.a 0 100", "published")
    journal_is(d, "job.a", list(range(100)))
    return d_config, lives, d


def first_life(cluster: list[Any], tmp_path: Path, a: Node) -> tuple[dict[str, Any], list[Node]]:
    """Start ``d`` on ``a``'s ``job.*``; it syncs, gets 100 events and is killed.

    A small window: a recovery comes in pages, so it lasts.  Returns ``d``'s
    config and its incarnations.
    """
    d_config = receiver_of(a, tmp_path, credit_window=300)
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.a 0 100", "published")
    d.wait_data(set(range(100)))
    killed(d, tmp_path / "d")
    return d_config, lives


def last_life(
    cluster: list[Any],
    tmp_path: Path,
    a: Node,
    d: tuple[dict[str, Any], list[Node]],
    n: int,
    marks: dict[str, Any],
) -> None:
    """A last incarnation of ``d`` syncs and gets 10 more; check every incarnation and the journal.

    ``n`` events of ``a`` were acknowledged so far; ``marks`` are what the last
    killed incarnation saved.  Once caught up, ``d`` moved its position past them.
    """
    d_config, lives = d
    node = restart(cluster, lives, d_config)
    node.ask("sync a", "synced")
    a.ask(f"publish job.a {n} {n + 10}", "published")
    n += 10
    acked = set(range(n))
    wait_for(lambda: acked <= handled(lives, "a"), WAIT)
    all_hold(
        lambda: check_lives(lives, "a", acked),
        lambda: journal_is(node, "job.a", list(range(n))),
        note=f"saved by the last killed incarnation: {marks}",
    )
    gaps_add_up(settled(node))
    node.close()
    end = saved_marks(tmp_path / "d")
    assert (end["bridge@journal"] or 0) >= marks["last"], (
        f"position not moved: at the end {end}, at the last kill {marks}"
    )


def two_origins(
    cluster: list[Any], tmp_path: Path, from_c: int
) -> tuple[Node, Node, dict[str, Any], dict[str, Any], list[Node]]:
    """Start ``a`` (persistent), ``c`` (no journal) and ``d`` on ``job.**``; kill ``d``.

    ``d`` syncs, gets ``a``'s 0-149 and ``c``'s first ``from_c``, and is killed once
    they are journaled (handled is not yet journaled: a's later events are
    journaled after the checkpoint set before them).  Returns ``a``, ``c``,
    ``c``'s config, ``d``'s and the list of its incarnations.
    """
    a = persistent_a(cluster, tmp_path)
    c_config = {"name": "c", "listen": f"ipc://{tmp_path}/c.sock", "node": FAST}
    c = start(cluster, **c_config)
    d_config = {
        "name": "d",
        "peers": [a.endpoint, c.endpoint],
        "path": str(tmp_path / "d"),
        "pattern": "job.**",
        "durable": "w",
        "node": FAST,
    }
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    d.ask("sync a,c", "synced")
    a.ask("publish job.a 0 100", "published")
    c.ask(f"publish job.c 0 {from_c}", "published")
    d.wait_data(set(range(from_c)))
    journal_is(d, "job.c", list(range(from_c)))
    a.ask("publish job.a 100 150", "published")
    journal_is(d, "job.a", list(range(150)))
    d.kill()
    return a, c, c_config, d_config, lives


# -- 1. an origin without a journal restarted (a new numbering) while d is down ------------------


# Regression: a restarted receiver keeps only its saved watermark of an origin, not that origin's
# epoch: when an origin without a journal was restarted while the receiver was down, the receiver
# took the new incarnation's numbering for the old one and never fetched the new events below its
# old watermark (held in the origin's ring); expected: they are fetched from the new stream's start.
def test_an_origin_without_a_journal_restarted_while_the_receiver_is_down_loses_nothing(
    cluster: list[Any], tmp_path: Path
) -> None:
    a, c, c_config, d_config, lives = two_origins(cluster, tmp_path, 200)
    marks = saved_marks(tmp_path / "d", ("a", "c"))
    a.ask("publish job.a 150 300", "published")  # d is down
    c.kill()
    c = start(cluster, **c_config)  # its numbering starts at 1 again
    c.ask("publish job.c 1000 1050", "published")  # d is down: kept in c's ring
    d = restart(cluster, lives, d_config)
    d.ask("sync a,c", "synced")
    a.ask("publish job.a 300 310", "published")
    c.ask("publish job.c 1050 1060", "published")
    acked_a = set(range(310))
    acked_c = set(range(200)) | set(range(1000, 1060))
    # Bounded: the checks below report what did not come.
    wait_for(lambda: acked_a <= handled(lives, "a") and acked_c <= handled(lives, "c"), 10.0)
    all_hold(
        lambda: check_lives(lives, "a", acked_a),
        lambda: check_lives(lives, "c", acked_c),
        lambda: journal_is(d, "job.a", list(range(310))),
        lambda: journal_is(d, "job.c", sorted(acked_c)),
        note=f"saved by the killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    a.close()
    c.close()


# Both origins publish while d is killed again and again; c (no journal) is restarted while d is
# down and publishes more than d's watermark of it (the new numbering passes it).
# Regression: the restarted receiver fetched only the new incarnation's events above its old saved
# watermark of c (1100-1299 of 1000-1299) and lost the ones below it; expected: all of them.
def test_two_origins_one_without_a_journal_restarted_while_the_receiver_is_killed_repeatedly(
    cluster: list[Any], tmp_path: Path
) -> None:
    a, c, c_config, d_config, lives = two_origins(cluster, tmp_path, 100)
    marks = saved_marks(tmp_path / "d", ("a", "c"))
    a.ask("publish job.a 150 600", "published")  # d is down
    c.kill()
    c = start(cluster, **c_config)
    c.ask("publish job.c 1000 1300", "published")  # d is down: 300 > d's watermark of c (100)
    # Killed while both publish.
    d = restart(cluster, lives, d_config)
    d.ask("sync a,c", "synced")
    a.send("publish job.a 600 2600")
    c.send("publish job.c 1300 2300")
    first_events(d, 50)
    d.kill()
    a.expect("published")
    c.expect("published")
    # Killed a few events in.
    d = restart(cluster, lives, d_config)
    first_events(d, 5)
    d.kill()
    a.ask("publish job.a 2600 2700", "published")
    c.ask("publish job.c 2300 2400", "published")
    d = restart(cluster, lives, d_config)
    d.ask("sync a,c", "synced")
    a.ask("publish job.a 2700 2710", "published")
    c.ask("publish job.c 2400 2410", "published")
    acked_a = set(range(2710))
    acked_c = set(range(100)) | set(range(1000, 2410))
    # Bounded: the checks below report what did not come.
    wait_for(lambda: acked_a <= handled(lives, "a") and acked_c <= handled(lives, "c"), 10.0)
    all_hold(
        lambda: check_lives(lives, "a", acked_a),
        lambda: check_lives(lives, "c", acked_c),
        lambda: journal_is(d, "job.a", list(range(2710))),
        lambda: journal_is(d, "job.c", sorted(acked_c)),
        note=f"saved by the first killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    a.close()
    c.close()


# -- 2. an origin gone for good while the receiver restarts --------------------------------------


def test_an_origin_gone_for_good_leaves_the_other_one_delivered_once_across_restarts(
    cluster: list[Any], tmp_path: Path
) -> None:
    a = persistent_a(cluster, tmp_path)
    b = start(
        cluster, name="b", listen=f"ipc://{tmp_path}/b.sock", path=str(tmp_path / "b"), node=FAST
    )
    d_config = {
        "name": "d",
        "peers": [a.endpoint, b.endpoint],
        "path": str(tmp_path / "d"),
        "pattern": "job.**",
        "durable": "w",
        "node": FAST,
    }
    lives: list[Node] = []
    d = restart(cluster, lives, d_config)
    d.ask("sync a,b", "synced")
    a.ask("publish job.a 0 100", "published")
    b.ask("publish job.b 0 100", "published")
    wait_for(lambda: len(d.got) >= 200, WAIT)
    # Killed while b publishes: b's events are journaled past d's position.
    b.send("publish job.b 100 1100")
    first_events(d, 300)
    d.kill()
    b.expect("published")
    b.kill()  # gone for good
    acked_b = set(range(1100))
    a.ask("publish job.a 100 1100", "published")  # d is down
    n = 1100
    for _ in range(6):
        d = restart(cluster, lives, d_config)
        first_events(d, 1)
        d.kill()
        a.ask(f"publish job.a {n} {n + 300}", "published")
        n += 300
    # Killed while a publishes, once synced.
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.send(f"publish job.a {n} {n + 1000}")
    d.wait_data({n + 100})
    d.kill()
    a.expect("published")
    n += 1000
    marks = saved_marks(tmp_path / "d", ("a", "b"))
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask(f"publish job.a {n} {n + 10}", "published")
    n += 10
    acked_a = set(range(n))
    wait_for(lambda: acked_a <= handled(lives, "a"), WAIT)
    all_hold(
        lambda: check_lives(lives, "a", acked_a),
        lambda: check_lives(lives, "b", set(range(100))),
        lambda: journal_is(d, "job.a", list(range(n))),
        lambda: journal_once(d, "job.b", set(range(100)), acked_b),
        note=f"saved by the last killed incarnation: {marks}",
    )
    assert handled(lives, "b") <= acked_b
    gaps_add_up(settled(d))
    d.close()
    a.close()


# -- 3. a persistent origin killed and restarted in the middle of d's recovery ------------------


def test_a_persistent_origin_killed_in_the_middle_of_the_receivers_recovery(
    cluster: list[Any], tmp_path: Path
) -> None:
    a_config = a_config_of(tmp_path)
    a = start(cluster, **a_config)
    d_config, lives = first_life(cluster, tmp_path, a)
    n = 100
    for lo in range(100, 4100, 1000):  # d is down
        a.ask(f"publish job.a {lo} {lo + 1000}", "published")
    n = 4100
    for round_ in range(4):
        d = restart(cluster, lives, d_config)
        first_events(d, 1 + 200 * round_)
        if round_ % 2 == 0:
            # a dies in the middle of d's recovery and comes back (the same numbering).
            a.kill()
            a = start(cluster, **a_config)
            a.ask(f"publish job.a {n} {n + 200}", "published")
            n += 200
            first_events(d, 2 + 200 * round_)
        marks = killed(d, tmp_path / "d")
        a.ask(f"publish job.a {n} {n + 100}", "published")
        n += 100
    last_life(cluster, tmp_path, a, (d_config, lives), n, marks)
    a.close()


# -- 4. the receiver stopped past the heartbeat timeout during its recovery, then killed --------


def test_a_receiver_stopped_during_its_recovery_then_killed_journals_once(
    cluster: list[Any], tmp_path: Path
) -> None:
    a = persistent_a(cluster, tmp_path)
    d_config, lives = first_life(cluster, tmp_path, a)
    n = 100
    for _ in range(3):
        for lo in range(n, n + 2000, 1000):  # d is down: a long recovery ahead of it
            a.ask(f"publish job.a {lo} {lo + 1000}", "published")
        n += 2000
        d = restart(cluster, lives, d_config)
        first_events(d, 1)
        pause(d.proc)
        a.ask("gone d", "gone")  # a declared d dead: it was stopped past heartbeat_timeout
        a.ask(f"publish job.a {n} {n + 100}", "published")
        n += 100
        os.kill(d.proc.pid, signal.SIGCONT)
        # The length of the fault after the continue: d resumes its recovery for a moment.
        threading.Event().wait(0.3)
        marks = killed(d, tmp_path / "d")
    last_life(cluster, tmp_path, a, (d_config, lives), n, marks)
    a.close()


# Its origin killed in the middle of d's recovery; d killed and restarted while the origin is down
# (it cannot load that origin's watermark nor sync), then both come back.
def test_a_receiver_restarted_while_its_persistent_origin_is_down_journals_once(
    cluster: list[Any], tmp_path: Path
) -> None:
    a_config = a_config_of(tmp_path)
    a = start(cluster, **a_config)
    d_config, lives = first_life(cluster, tmp_path, a)
    n = 100
    for _ in range(3):
        for lo in range(n, n + 2000, 1000):  # d is down: a long recovery ahead of it
            a.ask(f"publish job.a {lo} {lo + 1000}", "published")
        n += 2000
        d = restart(cluster, lives, d_config)
        first_events(d, 1)
        a.kill()  # in the middle of d's recovery
        marks = killed(d, tmp_path / "d")
        d = restart(cluster, lives, d_config)  # a is down
        d.stats()  # up and answering
        marks = killed(d, tmp_path / "d")
        a = start(cluster, **a_config)
    last_life(cluster, tmp_path, a, (d_config, lives), n, marks)
    a.close()


# d stopped right after its restart, before it heard its origin, past the origin's heartbeat
# timeout; continued, it syncs and is killed at once.
def test_a_receiver_stopped_before_it_heard_its_origin_then_killed_after_its_sync(
    cluster: list[Any], tmp_path: Path
) -> None:
    a = persistent_a(cluster, tmp_path)
    d_config, lives = first_life(cluster, tmp_path, a)
    n = 100
    for _ in range(4):
        a.ask(f"publish job.a {n} {n + 1500}", "published")  # d is down
        n += 1500
        d = restart(cluster, lives, d_config)
        pause(d.proc)
        a.ask(f"publish job.a {n} {n + 100}", "published")
        n += 100
        # The length of the fault: past d's heartbeat timeout of a (0.6 s).
        threading.Event().wait(1.0)
        os.kill(d.proc.pid, signal.SIGCONT)
        d.ask("sync a", "synced")
        marks = killed(d, tmp_path / "d")
    last_life(cluster, tmp_path, a, (d_config, lives), n, marks)
    a.close()


# -- 5. a persistent origin moved to a fresh journal (a new numbering) while d is down ---------


# Regression: a restarted receiver knew a persistent origin's restart only by its epoch and by the
# new incarnation's first sequence (``base``): an origin restarted twice on a fresh journal while
# the receiver was down started past the receiver's old watermark, so the new journal's events
# below it (published by the first incarnation on it) were never fetched; expected: the journal's
# identity tells the numbering changed, and they are fetched from its start.
def test_an_origin_restarted_twice_on_a_fresh_journal_while_the_receiver_is_down_loses_nothing(
    cluster: list[Any], tmp_path: Path
) -> None:
    a = persistent_a(cluster, tmp_path)
    d_config, lives, d = receiving_first_100(cluster, tmp_path, a)
    a.ask("publish job.a 100 150", "published")
    journal_is(d, "job.a", list(range(150)))  # the watermark of the first 100 is saved before
    d.kill()
    marks = saved_marks(tmp_path / "d")
    assert (marks["a"] or 0) >= 100, f"no watermark to go stale: {marks}"
    a.kill()
    fresh = {**a_config_of(tmp_path), "path": str(tmp_path / "a-fresh")}
    a = start(cluster, **fresh)  # numbers from 1 again
    a.ask("publish job.a 1000 1300", "published")  # d is down: past its old watermark
    a.close()
    a = start(cluster, **fresh)  # its first sequence is past d's old watermark
    a.ask("publish job.a 1300 1350", "published")
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.a 1350 1360", "published")
    acked = set(range(150)) | set(range(1000, 1360))
    # Bounded: the checks below report what did not come.
    wait_for(lambda: acked <= handled(lives, "a"), 10.0)
    all_hold(
        lambda: check_lives(lives, "a", acked),
        lambda: journal_is(d, "job.a", sorted(acked)),
        note=f"saved by the killed incarnation: {marks}",
    )
    gaps_add_up(settled(d))
    d.close()
    a.close()


# Regression: an origin moved back to a journal the receiver had followed before (a -> a fresh
# journal -> a again) was taken for a fresh one and fetched from its start: the restarted receiver
# handled and journaled the first journal's events a second time.  Expected: it resumes the first
# journal where it was in it.
@pytest.mark.parametrize("middle", ["fresh journal", "no journal"])
def test_an_origin_moved_back_to_a_journal_followed_before_is_journaled_once(
    cluster: list[Any], tmp_path: Path, middle: str
) -> None:
    a_config = a_config_of(tmp_path)
    a = start(cluster, **a_config)
    d_config, lives, d = receiving_first_100(cluster, tmp_path, a)
    a.close()
    moved = {**a_config, "path": str(tmp_path / "a-fresh")}
    if middle == "no journal":
        del moved["path"]
    a = start(cluster, **moved)
    a.ask("publish job.a 1000 1050", "published")
    journal_is(d, "job.a", [*range(100), *range(1000, 1050)])
    d.close()
    a.close()
    a = start(cluster, **a_config)  # back on the first journal
    a.ask("publish job.a 2000 2010", "published")
    d = restart(cluster, lives, d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.a 2010 2020", "published")
    acked = set(range(100)) | set(range(1000, 1050)) | set(range(2000, 2020))
    wait_for(lambda: acked <= handled(lives, "a"), 10.0)
    all_hold(
        lambda: check_lives(lives, "a", acked),
        lambda: journal_is(d, "job.a", [*range(100), *range(1000, 1050), *range(2000, 2020)]),
    )
    last = [x for o, _, x in list(d.got) if o == "a"]
    assert last == list(range(2000, 2020)), f"the last incarnation handled {runs(last)}"
    gaps_add_up(settled(d))
    d.close()
    a.close()
