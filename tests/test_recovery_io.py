"""Recovery across faults (``_cluster.recovery_io``), in real processes.

A missing range is fetched from its origin however long the origin is out
of reach (paused, behind a broker that restarted): a request is never
given up because nobody answered while the origin was not heard.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors._cluster.broker import Broker
from tests._support import reaped, wait_for
from tests.test_cluster import WAIT, Node, start

pytestmark = pytest.mark.slow

FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    yield from reaped()


def _broker_away_then_back(nodes: list[Node], tmp_path: Path, origin: dict[str, Any]) -> None:
    """Lose a's events while the broker is away, restart it: b recovers every one, in order."""
    endpoint = f"ipc://{tmp_path}/broker"
    broker = Broker(endpoint)
    try:
        a = start(nodes, name="a", peers=[endpoint], path=str(tmp_path / "a"), node=origin)
        b = start(nodes, name="b", peers=[endpoint], pattern="job.*", node=FAST)
        b.ask("sync a", "synced")
        a.ask("publish job.run 0 100", "published")
        b.wait_data(set(range(100)))
        broker.close()
        a.ask("publish job.run 100 2000", "published")  # no broker: nobody gets these
        # The new broker knows no names; a sends it no request of its own.
        broker = Broker(endpoint)
        got = b.wait_data(set(range(2000)))
        assert [d for _, _, d in got] == list(range(2000))  # in order, once
        stats = b.stats()
        assert stats["gaps"] >= 1  # the loss was real, and recovered
        assert stats["gaps_unrecovered"] == 0
        b.close()
        a.close()
    finally:
        broker.close()


def test_a_restarted_broker_routes_recovery_to_an_origin_that_only_publishes(
    nodes: list[Node], tmp_path: Path
) -> None:
    # A queue of 5 frames of one event: what a publishes while the broker
    # is away overflows it and is lost on the way (a real gap).
    _broker_away_then_back(nodes, tmp_path, {**FAST, "send_hwm": 5, "batch_size": 1})


def test_a_recovery_waits_for_an_origin_paused_in_the_middle_of_it(
    nodes: list[Node], tmp_path: Path
) -> None:
    a = start(
        nodes, name="a", listen=f"ipc://{tmp_path}/a.sock", path=str(tmp_path / "a"), node=FAST
    )
    b_config = {
        "name": "b",
        "peers": [a.endpoint],
        "path": str(tmp_path / "b"),
        "pattern": "job.*",
        "durable": "worker",
        "capacity": 1_000_000,  # the default DROP_OLDEST would drop a burst at the handler
        "node": FAST,
    }
    b = start(nodes, **b_config)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 10", "published")
    b.wait_data(set(range(10)))
    b.kill()
    a.ask("publish job.run 10 40010", "published")  # b is down: 8 answers of 5000 to fetch
    b2 = start(nodes, **b_config)
    b2.wait_data({2_000})  # the first answers arrived, the rest is being asked for
    a.proc.send_signal(signal.SIGSTOP)
    try:
        b2.ask("gone a", "gone")  # b2 declared a dead ...
        # ... and a stays stopped past the deadline of b2's outstanding request:
        # the length of the fault, not a synchronisation.
        threading.Event().wait(3 * FAST["heartbeat_timeout"])
    finally:
        a.proc.send_signal(signal.SIGCONT)
    got = b2.wait_data(set(range(10, 40_010)))
    data = [d for _, _, d in got]
    first_seen = list(dict.fromkeys(data))
    assert len(first_seen) == len(data), "an event delivered twice"  # the filter drops copies
    assert first_seen == sorted(first_seen)
    stats = b2.stats()
    assert stats["gaps_unrecovered"] == 0
    b2.close()
    a.close()


def test_a_broker_that_does_not_know_the_origin_yet_never_makes_recovery_give_up(
    nodes: list[Node], tmp_path: Path
) -> None:
    # a greets a broker only every 8 s (its heartbeat_timeout), while b
    # asks again every 0.5 s: a restarted broker answers b's requests
    # "unknown node a" for seconds, far more than RECOVER_ATTEMPTS times,
    # while b hears a's heartbeats through it all along.
    slow = {"heartbeat_interval": 0.1, "heartbeat_timeout": 8.0, "send_hwm": 5}
    _broker_away_then_back(nodes, tmp_path, slow)


# Found by the fault harness: a durable receiver restarted while its persistent origin was
# restarted and paused again and again asked for 29,508 missed events; the origin, heard but
# loaded, answered none of 4 tries of 2 x heartbeat_timeout in time, and the range was given
# up: acknowledged events lost, though the origin's journal held them.  Here the origin's
# journal is stalled past its read timeout (30 s): the tries run out, then an ERROR answer
# comes (the read timed out), which used to give the range up at once.
def test_a_heard_origin_that_answers_late_never_has_its_range_given_up(
    nodes: list[Node], tmp_path: Path
) -> None:
    a, b2 = _restarted_receiver(nodes, tmp_path, {})
    a.ask("stall", "stalled")  # a's journal answers nothing now; its heartbeats go on
    try:
        b2 = start(nodes, **b2)
        # More tries than RECOVER_ATTEMPTS run out, and the first read of a's journal times
        # out (an ERROR answer): the range used to be given up at one of these.
        assert wait_for(lambda: _tried_or_lost(b2, 20), WAIT), b2.stats()
        assert b2.stats()["gaps_unrecovered"] == 0, b2.stats()
    finally:
        a.ask("unstall", "unstalled")
    got = [d for _, _, d in b2.wait_data(set(range(10, 1010)))]
    # In order, once; 0..9 may come first again (handled before the kill, their checkpoint
    # not yet written: docs/persistence.md).
    assert got == sorted(set(got)), got
    stats = b2.stats()
    assert (stats["gaps_unrecovered"], stats["gaps_open"]) == (0, 0), stats
    b2.close()
    a.close()


def test_an_answer_too_large_to_take_ends_as_an_error_not_a_wait_for_ever(
    nodes: list[Node], tmp_path: Path
) -> None:
    """An origin that ignores the asker's size answers a frame it can never take.

    Never given up, the range held a's later events for ever; each such answer
    is an error now, and 4 give the range up (announced), so they flow again.
    """
    small = {"max_frame_bytes": 65 * 1024}
    a, b2 = _restarted_receiver(nodes, tmp_path, small, sized=True)
    b2 = start(nodes, **b2)
    assert wait_for(lambda: b2.stats()["gaps_unrecovered"] >= 1, WAIT), b2.stats()
    a.ask("publish job.run 5000 5010", "published")
    b2.wait_data(set(range(5000, 5010)))
    b2.close()
    a.close()


def _restarted_receiver(
    nodes: list[Node], tmp_path: Path, b_node: dict[str, Any], *, sized: bool = False
) -> tuple[Node, dict[str, Any]]:
    """Origin ``a``; receiver ``b`` gets 0..9 and is killed; ``a`` publishes more.

    Returns ``a`` and ``b``'s config, to restart it (it then fetches what it missed).
    ``sized``: ``a`` answers as an older origin (``_old_origin_child``), and
    publishes two 40,000-character events, one answer of which exceeds ``b_node``.
    """
    child = Path(__file__).with_name("_old_origin_child.py")
    a = start(
        nodes,
        name="a",
        listen=f"ipc://{tmp_path}/a.sock",
        path=str(tmp_path / "a"),
        node=FAST,
        **({"child": str(child)} if sized else {}),
    )
    b_config = {
        "name": "b",
        "peers": [a.endpoint],
        "path": str(tmp_path / "b"),
        "pattern": "job.*",
        "durable": "worker",
        "node": {**FAST, **b_node},
    }
    b = start(nodes, **b_config)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 10", "published")
    b.wait_data(set(range(10)))
    b.kill()
    if sized:
        a.ask("sized job.run 40000,40000", "sized ok,ok")
    else:
        a.ask("publish job.run 10 1010", "published")  # b is down
    return a, b_config


def _tried_or_lost(node: Node, tries: int) -> bool:
    stats = node.stats()
    return bool(stats["gaps_unrecovered"] >= 1 or stats["recovery_retries"] >= tries)
