"""What the documentation promises, checked at its edges (a new user's reading of docs/)."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from actors import EventBus, NodeConfig
from tests._cluster_support import ipc, node


def test_waiting_for_a_missing_peer_does_not_spin_the_io_loop(tmp_path: Path) -> None:
    # Each view() asked of the I/O thread made a turn that woke the waiter,
    # whose next view() made another: a core spent for the whole wait.
    config = NodeConfig(name="a", listen=ipc(tmp_path, "a"), heartbeat_interval=0.2)
    with EventBus(node=config) as bus:
        bridge = node(bus)._bridge  # noqa: SLF001 - the I/O loop's turn count
        before = bridge._generation  # noqa: SLF001
        start = time.monotonic()
        assert not bus.wait_for_peers(["nobody"], timeout=1.0)
        ticks = (time.monotonic() - start) / 0.2
        turns = bridge._generation - before  # noqa: SLF001
    # A heartbeat tick per interval, and a few turns for the wait's own start.
    assert turns <= 3 * ticks + 20, f"{turns} I/O turns in {ticks:.1f} heartbeat intervals"


def test_node_wait_checks_its_timeout(tmp_path: Path) -> None:
    with EventBus(node=NodeConfig(name="a", listen=ipc(tmp_path, "a"))) as bus:
        n = node(bus)
        with pytest.raises(ValueError, match="timeout"):
            n.wait(lambda _s: False, math.nan)
        with pytest.raises(TypeError, match="timeout"):
            n.wait(lambda _s: False, "5")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (threading.TIMEOUT_MAX * 2, ValueError),
        (math.nan, ValueError),
        (-1, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_remote_metrics_checks_its_timeout(
    tmp_path: Path, timeout: object, error: type[Exception]
) -> None:
    with (
        EventBus(node=NodeConfig(name="a", listen=ipc(tmp_path, "a"))) as bus,
        pytest.raises(error, match="timeout"),
    ):
        bus.remote_metrics("hub", timeout=timeout)  # type: ignore[arg-type]
