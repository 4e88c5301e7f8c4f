"""AsyncEventBus when several wrappers share one bus, and when a handler closes it.

Every ``AsyncEventBus(bus=...)`` over one ``EventBus`` shares what it holds
open with the others: ``aclose`` on any of them ends every stream of the bus,
and wrapping the bus again and again adds nothing that outlives the wrapper.
A ``close`` made inside a handler stops the bus without waiting, yet the
router still stops, so streams end and waiting coroutines raise
``BusClosedError`` as after any close.  Every wait is bounded by ``GUARD``, a
hang guard whose expiry fails the test, never a measure of speed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from actors import AsyncEventBus, BusClosedError, Event, EventBus, EventStream, OverflowStrategy
from tests.test_async_close import hold_a_handler

GUARD = 30.0


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 2 * GUARD))


async def read_all(stream: EventStream) -> list[Any]:
    return [event.data async for event in stream]


# -- wrappers sharing one bus ------------------------------------------------------------------


def test_wrapping_one_bus_many_times_adds_one_stop_listener_in_all() -> None:
    async def main() -> None:
        bus = EventBus()
        listeners = bus.core.router.stop_listeners
        AsyncEventBus(bus=bus)
        before = len(listeners)
        for _ in range(1000):
            stream = AsyncEventBus(bus=bus).stream("s.*")
            await stream.aclose()
        assert len(listeners) == before
        await AsyncEventBus(bus=bus).aclose()

    run(main)


def test_aclose_ends_a_stream_opened_through_another_wrapper_that_sets_the_pace() -> None:
    async def main() -> None:
        bus = EventBus()
        closer, reader = AsyncEventBus(bus=bus), AsyncEventBus(bus=bus)
        # Nobody reads it: BLOCK makes it hold up a flush that waits for it.
        stream = reader.stream("s.*", overflow=OverflowStrategy.BLOCK, capacity=2)
        for i in range(5):
            await closer.publish("s.a", i)
        await asyncio.wait_for(closer.aclose(), GUARD)
        assert await asyncio.wait_for(read_all(stream), GUARD) == list(range(5))

    run(main)


# -- close inside a handler -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sync-close", "aclose"])
def test_closing_inside_an_async_handler_ends_every_stream_and_fails_a_waiting_flush(
    how: str,
) -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        own = bus.stream("s.*")
        other = AsyncEventBus(bus=bus.sync).stream("s.*")

        async def close_here(_: Event) -> None:
            if how == "aclose":
                await bus.aclose(timeout=0)
            else:
                bus.sync.close(timeout=0)

        await bus.subscribe("close.now", close_here)
        for i in range(3):
            await bus.publish("s.a", i)
        await bus.flush(GUARD)  # the streams hold 0-2
        gate = await hold_a_handler(bus)
        try:
            flush = asyncio.create_task(bus.flush())  # waits for the held handler
            await bus.publish("close.now")
            with pytest.raises(BusClosedError):
                await asyncio.wait_for(flush, GUARD)
            assert await asyncio.wait_for(read_all(own), GUARD) == [0, 1, 2]
            assert await asyncio.wait_for(read_all(other), GUARD) == [0, 1, 2]
        finally:
            gate.set()

    run(main)


def test_closing_inside_a_sync_handler_ends_the_stream_of_a_loop_thread() -> None:
    bus = EventBus()
    ready = threading.Event()
    outcome: list[Any] = []

    def loop_thread() -> None:
        async def consume() -> list[Any]:
            stream = AsyncEventBus(bus=bus).stream("s.*")
            ready.set()
            return await read_all(stream)

        try:
            outcome.append(asyncio.run(asyncio.wait_for(consume(), GUARD)))
        except BaseException as exc:  # the test thread reports it
            outcome.append(exc)

    thread = threading.Thread(target=loop_thread)
    thread.start()
    assert ready.wait(GUARD)
    for i in range(3):
        bus.publish("s.a", i)
    bus.flush(GUARD)
    bus.subscribe("close.now", lambda _: bus.close())
    bus.publish("close.now")
    thread.join(2 * GUARD)
    assert outcome == [[0, 1, 2]]
