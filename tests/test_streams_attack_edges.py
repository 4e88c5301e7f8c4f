"""``AsyncEventBus.stream`` across event loops: closed from another loop, or outliving its own."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

from actors import AsyncEventBus, EventBus
from tests._support import WAIT, wait_for


def test_a_stream_closed_from_another_loop_ends_its_readers_iteration() -> None:
    """``aclose`` set the reader's ``asyncio.Event`` from another thread, which does
    not wake that reader's loop: its ``async for`` waited for good."""
    bus = AsyncEventBus()
    held: dict[str, Any] = {}
    ready, ended = threading.Event(), threading.Event()
    got: list[Any] = []

    def reader() -> None:
        async def read() -> None:
            stream = held["stream"] = bus.stream("a.*")
            ready.set()
            async for event in stream:
                got.append(event.data)
            ended.set()

        asyncio.run(read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert ready.wait(WAIT)

    async def close_it() -> None:
        await bus.publish("a.x", 1)
        assert await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: got == [1])
        await held["stream"].aclose()  # from this loop, not the reader's

    try:
        asyncio.run(close_it())
        assert ended.wait(WAIT)  # before: never
        assert got == [1]
        assert bus.sync.subscriptions() == []
    finally:
        bus.sync.close(timeout=WAIT)
        thread.join(WAIT)


def test_a_stream_collected_after_its_loop_closed_is_unsubscribed() -> None:
    """Kept on an object that outlived ``asyncio.run``, then dropped: its loop can run
    nothing, and the stream stayed subscribed, each matching event a dead letter."""
    with EventBus() as bus:
        held: dict[str, Any] = {}

        async def open_one() -> None:
            held["stream"] = AsyncEventBus(bus=bus).stream("a.*")

        asyncio.run(open_one())
        assert len(bus.subscriptions()) == 1
        held.clear()
        gc.collect()
        assert wait_for(lambda: not bus.subscriptions())  # on a thread of its own
        for i in range(100):
            bus.publish("a.x", i)
        bus.flush(WAIT)
        assert bus.metrics().dead_letters == 0


def test_aclose_of_a_stream_whose_loop_closed_with_its_reader_waiting() -> None:
    """The reader's wake-up raised on its closed loop, ``aclose`` raised before it
    unsubscribed, and every later event was a dead letter."""
    with EventBus() as bus:
        loop = asyncio.new_event_loop()
        held: dict[str, Any] = {}

        async def start() -> None:
            stream = held["stream"] = AsyncEventBus(bus=bus).stream("x.*")
            held["reader"] = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0)  # the reader waits

        loop.run_until_complete(start())
        loop.close()  # with the reader still waiting

        async def close_it() -> None:
            await held["stream"].aclose()

        asyncio.run(close_it())
        assert not held["stream"].subscription.active
        bus.publish("x.y", {}).get(timeout=WAIT)
        bus.flush(WAIT)
        assert bus.metrics().dead_letters == 0
