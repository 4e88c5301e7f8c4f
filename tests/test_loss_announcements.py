"""Losses noted by any step of a node's inbound side are announced (``$bus.peer.lost``).

The ranges themselves are decided by ``Inbound`` (``test_inbound_steps.py``)
and shown end to end in ``test_cluster_fault_edges.py``; here, the
announcement of a range ended outside a recovery answer.
"""

from __future__ import annotations

import threading
from typing import Any

from actors import EventBus, NodeConfig
from actors._cluster.room import RENUMBERED, Loss
from tests._support import WAIT, wait_for


def test_a_range_ended_by_an_origins_restart_is_announced() -> None:
    """An origin without a journal that restarts ends the ranges of its earlier
    run in a heartbeat or a sync reply, not in a recovery answer: the losses
    were announced only at the next answer or failure, if one ever came."""
    with EventBus(node=NodeConfig(name="b", listen="tcp://127.0.0.1:*")) as bus:
        lost: list[Any] = []
        bus.subscribe("$bus.peer.lost", lambda e: lost.append(e.data))
        bridge = bus.node._bridge  # type: ignore[union-attr]  # noqa: SLF001
        done = threading.Event()

        def step() -> None:  # as ``_incarnation`` leaves it, then the step's delivery
            bridge._in.losses.append(Loss("a", 6, 11, RENUMBERED))  # noqa: SLF001
            bridge._deliver([])  # noqa: SLF001
            done.set()

        bus.node.call_soon(step)  # type: ignore[union-attr]
        assert done.wait(WAIT)
        assert wait_for(lambda: bool(lost))
    assert lost == [{"node": "b", "origin": "a", "first": 6, "last": 11, "reason": RENUMBERED}]
