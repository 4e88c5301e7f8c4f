"""Observability at the edges: reads that must not hold an event loop, answers that
must not crash a reader, and exposition that must stay one series per label set."""

from __future__ import annotations

import asyncio

import pytest

from actors import AsyncEventBus, Event
from actors._core import router_reads
from actors._runtime.dispatcher import FifoMailbox
from tests._support import WAIT
from tests.test_ops_edges import _router_held


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
