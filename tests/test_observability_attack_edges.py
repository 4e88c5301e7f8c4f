"""Observability at the edges: reads that must not hold an event loop, answers that
must not crash a reader, and exposition that must stay one series per label set."""

from __future__ import annotations

import asyncio
import sys

import pytest

from actors import AsyncEventBus, BridgeError, Event, EventBus, NodeConfig
from actors._core import router_reads
from actors._model.config import MIN_FRAME_BYTES
from actors._model.metrics import BusMetrics
from actors._model.metrics_json import metrics_from_json, metrics_to_json
from actors._runtime.dispatcher import FifoMailbox
from tests._support import WAIT
from tests.test_ops_edges import _router_held
from tests.test_top import WAIT as TERMINAL_WAIT
from tests.test_top import Terminal, _metrics


def test_async_metrics_and_dead_letters_do_not_hold_the_loop_behind_a_held_router(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``AsyncEventBus.metrics()`` asked the router as the sync bus does and waited
    up to its 10 s on the event loop.  It now waits at most ``LOOP_ASK_TIMEOUT``,
    then gives the last figures, as the sync bus does past its 10 s."""
    monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 3600.0)  # waiting for it would hang

    def failing(event: Event) -> None:
        raise RuntimeError("no")

    with _router_held() as (bus, entered, hold):
        bus.subscribe("f.*", failing)
        bus.publish("f.x", 1)
        for i in range(3):
            bus.publish("s.e", i).get(timeout=WAIT)
        bus.flush(WAIT)
        # Four, and the dead letter's announcement.
        assert (bus.metrics().published, len(bus.dead_letters())) == (5, 1)
        bus.publish("s.e", "slow")
        assert entered.wait(WAIT)
        abus = AsyncEventBus(bus=bus)

        async def read() -> tuple[int, int]:
            return abus.metrics().published, len(abus.dead_letters())

        try:
            assert asyncio.run(read()) == (5, 1)  # the last answer: stale, never lower
        finally:
            hold.set()
        bus.flush(WAIT)
        assert asyncio.run(read()) == (6, 1)  # the router answered: fresh again


def test_an_ask_put_first_is_taken_before_the_backlog() -> None:
    """What lets a loop's ask be answered in the router's next turn, not after a burst."""
    inbox = FifoMailbox()
    for i in range(3):
        inbox.put(i)
    inbox.put_first("ask")
    assert inbox.take(10) == ["ask", 0, 1, 2]


@pytest.mark.slow
def test_top_fails_at_once_when_the_node_refuses_its_figures() -> None:
    """``--timeout`` covers reaching the node and reading its first figures; a node
    whose answer was refused (larger than its frames) kept ``top`` blank for a whole
    ``--interval`` more, then said it "did not answer"."""
    bus = EventBus(
        node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*", max_frame_bytes=MIN_FRAME_BYTES)
    )
    try:
        for i in range(400):  # an answer past its frame size
            bus.subscribe(f"topic{i}.*", lambda event: None)
        peer = str(bus.endpoints["request"])
        args = ["top", "--peer", peer, "--timeout", "30", "--interval", "3600"]
        term = Terminal([sys.executable, "-m", "actors", *args])
        try:
            term.wait_for(r"<eof>")  # before: an hour
            assert term.proc.wait(TERMINAL_WAIT) == 1
            assert "node 'hub' refused its figures" in term.text
        finally:
            term.close()
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize(
    ("where", "value"),
    [("published", "many"), ("published", None), ("published", True), ("latency_p50", "x")],
)
def test_figures_of_the_wrong_type_are_a_bridge_error(where: str, value: object) -> None:
    raw = metrics_to_json(_figures())
    raw[where] = value
    with pytest.raises(BridgeError, match=f"malformed BusMetrics: {where}"):
        metrics_from_json(raw)
    raw = metrics_to_json(_figures())
    raw["per_subscription"][0]["delivered"] = "7"
    with pytest.raises(BridgeError, match="malformed SubscriptionStatistics: delivered"):
        metrics_from_json(raw)
    assert metrics_from_json(metrics_to_json(_figures())) == _figures()


def _figures() -> BusMetrics:
    return _metrics(10, 5, 1)
