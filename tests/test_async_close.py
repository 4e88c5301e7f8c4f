"""AsyncEventBus when its bus closes: by ``aclose``, or by ``sync.close()`` under it.

However the bus closes, every open stream ends as ``aclose`` ends it (the
reader gets what the stream holds, then its ``async for`` stops), and a
coroutine still waiting on the bus raises ``BusClosedError``.  The
synchronous close runs in another thread, as it does when synchronous code
shares the bus with a loop.  Every wait is bounded by ``GUARD``, a hang
guard whose expiry fails the test, never a measure of speed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    EventStream,
    OverflowStrategy,
)
from tests._support import wait_for

GUARD = 30.0

Closer = Callable[[AsyncEventBus], Awaitable[object]]


async def sync_close(bus: AsyncEventBus) -> object:
    return await asyncio.to_thread(bus.sync.close)


async def aclose(bus: AsyncEventBus) -> object:
    return await bus.aclose()


CLOSERS = pytest.mark.parametrize("close", [aclose, sync_close], ids=["aclose", "sync-close"])


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 2 * GUARD))


async def started(task: asyncio.Task[Any]) -> None:
    """Return once ``task`` has run up to its first wait (and is still waiting there)."""
    await asyncio.create_task(asyncio.sleep(0))
    assert not task.done()


# -- streams end however the bus closes --------------------------------------------------------


@CLOSERS
def test_a_waiting_reader_ends_after_what_its_stream_holds(close: Closer) -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*")
        got: list[Any] = []
        first = asyncio.Event()

        async def reader() -> None:
            async for event in stream:
                got.append(event.data)
                first.set()

        task = asyncio.create_task(reader())
        await bus.publish("s.a", 1)
        await first.wait()  # the reader now waits on an empty stream
        await bus.publish("s.a", 2)
        await close(bus)
        await asyncio.wait_for(task, GUARD)  # the iteration stopped
        assert got == [1, 2]
        assert not stream.subscription.active

    run(main)


@CLOSERS
def test_an_unread_stream_keeps_its_events_and_then_ends(close: Closer) -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("t.*", capacity=5)
        for i in range(12):
            await bus.publish("t.a", i)
        await bus.flush(GUARD)  # every event has reached the stream, or been dropped
        await close(bus)
        rest = await asyncio.wait_for(read_all(stream), GUARD)
        assert rest == [7, 8, 9, 10, 11]
        assert stream.dropped == 7
        await stream.aclose()  # ended already: harmless
        assert await asyncio.wait_for(read_all(stream), GUARD) == []

    run(main)


@CLOSERS
def test_a_block_stream_whose_reader_reads_gets_everything(close: Closer) -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("t.*", capacity=2, overflow=OverflowStrategy.BLOCK)
        reader = asyncio.create_task(read_all(stream))
        for i in range(10):
            await bus.publish("t.a", i)
        await close(bus)
        assert await asyncio.wait_for(reader, GUARD) == list(range(10))
        assert stream.dropped == 0

    run(main)


def test_leaving_with_on_the_sync_bus_ends_the_streams_of_a_loop_thread() -> None:
    # Synchronous code owns the bus; a loop in another thread reads it.
    ready = threading.Event()
    outcome: list[Any] = []

    def loop_thread(bus: EventBus) -> None:
        async def consume() -> list[Any]:
            stream = AsyncEventBus(bus=bus).stream("s.*")
            ready.set()
            return [event.data async for event in stream]

        try:
            outcome.append(asyncio.run(asyncio.wait_for(consume(), GUARD)))
        except BaseException as exc:  # the test thread reports it
            outcome.append(exc)

    with EventBus() as bus:
        thread = threading.Thread(target=loop_thread, args=(bus,))
        thread.start()
        assert ready.wait(GUARD)
        for i in range(3):
            bus.publish("s.a", i).get(GUARD)
    thread.join(2 * GUARD)
    assert outcome == [[0, 1, 2]]


def test_closing_after_the_streams_loop_has_ended_is_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()

    async def open_stream() -> EventStream:
        return AsyncEventBus(bus=bus).stream("s.*")

    asyncio.run(open_stream())  # its loop is closed: nobody reads it any more
    with caplog.at_level(logging.WARNING):
        bus.close(timeout=GUARD)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("actors")] == []


def test_a_stream_of_an_already_closed_bus_cannot_be_opened() -> None:
    async def main() -> None:
        bus = EventBus()
        bus.close()
        with pytest.raises(BusClosedError):
            AsyncEventBus(bus=bus).stream("s.*")

    run(main)


# -- coroutines still waiting on the bus raise BusClosedError ----------------------------------


async def read_all(stream: EventStream) -> list[Any]:
    return [event.data async for event in stream]


async def hold_a_handler(bus: AsyncEventBus) -> threading.Event:
    """Subscribe a synchronous handler that holds its event until the returned gate opens."""
    gate = threading.Event()
    loop = asyncio.get_running_loop()
    inside = asyncio.Event()

    def held(_: Event) -> None:
        loop.call_soon_threadsafe(inside.set)
        gate.wait(3 * GUARD)  # only the test opens it

    await bus.subscribe("held.x", held)
    await bus.publish("held.x")
    await inside.wait()
    return gate


def test_a_flush_waiting_when_the_sync_bus_closes_raises_bus_closed() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        gate = await hold_a_handler(bus)
        try:
            flush = asyncio.create_task(bus.flush())
            await started(flush)  # waits for the held handler
            # close gives up on the held handler at once and stops the bus.
            await asyncio.to_thread(bus.sync.close, 0)
            with pytest.raises(BusClosedError):
                await asyncio.wait_for(flush, GUARD)
        finally:
            gate.set()

    run(main)


def test_a_request_waiting_when_the_sync_bus_closes_raises_bus_closed() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        request = asyncio.create_task(bus.request("nobody.answers", timeout=None))
        await started(request)
        await asyncio.to_thread(bus.sync.close)
        with pytest.raises(BusClosedError):
            await asyncio.wait_for(request, GUARD)

    run(main)


def test_a_publish_waiting_for_room_when_the_sync_bus_closes_raises_bus_closed() -> None:
    async def main() -> None:
        bus = AsyncEventBus(EventConfig(block_timeout=3 * GUARD))
        gate = threading.Event()
        loop = asyncio.get_running_loop()
        inside = asyncio.Event()

        def held(_: Event) -> None:
            loop.call_soon_threadsafe(inside.set)
            gate.wait(3 * GUARD)

        await bus.subscribe("slow.x", held, overflow=OverflowStrategy.BLOCK, capacity=1)
        await bus.publish("slow.x", 0)
        await inside.wait()  # the first event is in the handler
        await bus.publish("slow.x", 1)  # the mailbox is full
        try:
            publish = asyncio.create_task(bus.publish("slow.x", 2))
            await started(publish)  # waits for room, in an executor thread
            await asyncio.to_thread(bus.sync.close, 0)
            with pytest.raises(BusClosedError):
                await asyncio.wait_for(publish, GUARD)
        finally:
            gate.set()

    run(main)


def test_a_stream_counts_what_its_mailbox_dropped_while_its_loop_was_busy() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("t.*", capacity=5)
        sub = stream.subscription
        # The loop is held (a blocking wait on it) until all 12 events have
        # reached the subscription: its mailbox drops what it has no room for.
        for i in range(12):
            bus.sync.publish("t.a", i)
        assert wait_for(lambda: sub.statistics().accepted == 12, GUARD)
        assert sub.statistics().dropped > 0
        await bus.flush(GUARD)
        await bus.aclose()
        rest = await asyncio.wait_for(read_all(stream), GUARD)
        assert len(rest) == 5
        assert rest == sorted(rest)
        assert stream.dropped == 12 - 5  # every event the reader lost, whichever layer

    run(main)


def test_a_stream_opened_while_aclose_flushes_does_not_hold_the_close() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        gate = await hold_a_handler(bus)
        closing = asyncio.create_task(bus.aclose())
        await started(closing)  # aclose's flush waits for the held handler
        # Opened now, the stream is not among those aclose told to stop
        # waiting for their readers; nobody reads it until the bus closed.
        stream = bus.stream("late.*", capacity=1, overflow=OverflowStrategy.BLOCK)
        for i in range(3):
            await bus.publish("late.a", i)
        gate.set()
        await asyncio.wait_for(closing, GUARD)
        assert await asyncio.wait_for(read_all(stream), GUARD) == [0, 1, 2]

    run(main)


# Regression: the router a close gave up on never stopped, so nothing ended these awaits.
def test_awaits_end_when_a_close_gives_up_on_a_held_router(tmp_path: Any) -> None:
    """``AsyncEventBus.flush``: BusClosedError if the bus "closes (``sync.close()``
    gave up) before the flush is done"; so do a query and a replay awaiting a page."""
    hold, held = threading.Event(), threading.Event()

    def holding(event: Event) -> bool:
        held.set()
        hold.wait(120)
        return True

    async def main() -> list[BaseException | object]:
        bus = AsyncEventBus(EventConfig(persistence_path=tmp_path / "j"))
        await bus.publish("a.b", 1)
        await bus.flush()
        bus.sync.subscribe("h.*", lambda e: None, filter=holding)
        bus.sync.publish("h.x", 1)
        assert await asyncio.to_thread(held.wait, 30)
        waits = [
            asyncio.ensure_future(bus.flush()),
            asyncio.ensure_future(bus.query(EventQuery(), timeout=None)),
            asyncio.ensure_future(bus.replay(EventQuery(), lambda e: None)),
        ]
        try:
            assert await asyncio.to_thread(bus.sync.close, 0.2) == ()
            done = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 30)
        finally:
            hold.set()
        return list(done)

    outcomes = asyncio.run(main())
    assert [type(o) for o in outcomes] == [BusClosedError] * 3, outcomes
