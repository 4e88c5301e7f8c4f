"""Losses a receiver cannot fetch back are counted and announced (``$bus.peer.lost``).

The ring and renumbering cases are in ``test_outbound.py`` and
``test_inbound_steps.py``; here, a persistent origin whose retention
deleted what a receiver, down meanwhile, still had to fetch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import EventConfig, NodeConfig, PersistentEventBus
from actors._journal import actor as journal_actor
from tests._support import WAIT, wait_for

FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}


def test_what_retention_deleted_before_a_receiver_fetched_it_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b (persistent) follows a; b is down while a publishes 100 events and a's
    retention keeps the last 20.  Restarted, b asks for what it missed from its
    watermark: a's journal answered with the 20 it kept and said nothing of the
    rest, so 80 events were lost without a count or an announcement."""
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)  # at every journal turn
    a_node = NodeConfig(name="a", listen=f"ipc://{tmp_path}/a.sock", **FAST)
    a_config = EventConfig(persistence_path=tmp_path / "a", max_events=20)
    b_node = NodeConfig(name="b", peers=(f"ipc://{tmp_path}/a.sock",), **FAST)
    b_config = EventConfig(persistence_path=tmp_path / "b")
    with PersistentEventBus(a_config, node=a_node) as a:
        with PersistentEventBus(b_config, node=b_node) as b:
            b.subscribe("r.*", lambda e: None)
            assert b.wait_for_peers(["a"], WAIT)
            a.publish("r.x", -1).get(timeout=WAIT)
            assert wait_for(lambda: b.node is not None and b.node.statistics().events_delivered)
        for i in range(100):  # b is down
            a.publish("r.x", i).get(timeout=WAIT)
        a.flush(WAIT)
        got: list[Any] = []
        lost: list[Any] = []
        with PersistentEventBus(b_config, node=b_node) as b:
            b.subscribe("$bus.peer.lost", lambda e: lost.append(e.data))
            b.subscribe("r.*", lambda e: got.append(e.data))
            assert wait_for(lambda: 99 in got)
            assert wait_for(lambda: bool(lost))
            stats = b.node.statistics()  # type: ignore[union-attr]
    assert sorted(got) == got  # in order
    missing = set(range(100)) - set(got)
    assert missing, "retention kept everything: nothing was tested"
    assert {(d["node"], d["origin"], d["reason"]) for d in lost} == {
        ("b", "a", "the origin no longer holds them")
    }
    assert stats.gaps_unrecovered >= 1
    # a's events: -1 is its sequence 1, i its sequence i + 2 (it publishes nothing else).
    announced = {seq - 2 for d in lost for seq in range(d["first"], d["last"] + 1)}
    assert missing <= announced, sorted(missing - announced)[:10]
