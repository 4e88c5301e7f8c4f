"""AsyncEventBus at its edges: aclose beside a close, timeouts, abandoned and blocking handlers.

Every wait is bounded by ``GUARD``, a hang guard whose expiry fails the
test, never a measure of speed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    Event,
    EventBus,
    EventConfig,
    EventStream,
    OverflowStrategy,
    RateLimitedError,
)
from tests._support import use_off_loop_threads
from tests.test_async_close import hold_a_handler

GUARD = 10.0


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 3 * GUARD))


async def read_all(stream: EventStream) -> list[Any]:
    return [event.data async for event in stream]


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds (re-checked between turns of the loop)."""
    async with asyncio.timeout(GUARD):
        while not condition():
            await asyncio.sleep(0.002)


# -- aclose while the bus is already closing ---------------------------------------------------


def test_aclose_while_a_sync_close_flushes_still_delivers_what_was_published_before() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*", capacity=1, overflow=OverflowStrategy.BLOCK)
        for i in range(3):  # 0 in the stream, 1 waiting for room, 2 in the mailbox
            await bus.publish("s.a", i)
        gate = await hold_a_handler(bus)  # close's flush waits for it
        closing = asyncio.create_task(asyncio.to_thread(bus.sync.close))
        try:
            await until(lambda: bus.sync.closed)
            # The twin of close, begun while close flushes: it waits for that
            # close; everything published before it reaches the stream, then
            # the stream ends.
            second = asyncio.create_task(bus.aclose())
            await asyncio.sleep(0)
            assert not second.done()
        finally:
            gate.set()
        await asyncio.wait_for(second, GUARD)
        await asyncio.wait_for(closing, GUARD)
        got = await asyncio.wait_for(read_all(stream), GUARD)
        assert (got, stream.dropped) == ([0, 1, 2], 0)

    run(main)


def test_a_second_aclose_returns_only_once_the_bus_is_closed() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        gate = threading.Event()
        loop = asyncio.get_running_loop()
        inside = asyncio.Event()

        def held(_: Event) -> None:
            loop.call_soon_threadsafe(inside.set)
            gate.wait(3 * GUARD)

        await bus.subscribe("held.x", held)
        first = asyncio.create_task(bus.aclose())
        await asyncio.sleep(0)  # first's flush is sent: it covers nothing held
        await bus.publish("held.x")  # before close: close's own flush waits for it
        try:
            await inside.wait()
            await until(lambda: bus.sync.closed)  # first is in close (executor)
            second = asyncio.create_task(bus.aclose())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert not second.done(), "the second aclose returned while the bus was closing"
        finally:
            gate.set()
        await asyncio.wait_for(second, GUARD)
        await asyncio.wait_for(first, GUARD)
        assert bus.sync.closed

    run(main)


def test_aclose_with_a_timeout_returns_within_it_plus_the_grace() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        gate = await hold_a_handler(bus)
        try:
            # close(timeout=T) "returns within T + 0.5 s whatever the handlers
            # do"; aclose is its twin.  The bound below adds a full second.
            await asyncio.wait_for(bus.aclose(timeout=2.0), 2.0 + 0.5 + 1.0)
        finally:
            gate.set()

    run(main)


# -- held (not covered elsewhere): two readers, async with whose body raises -----------------


def test_two_readers_of_one_stream_share_it_and_both_end() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*", capacity=3, overflow=OverflowStrategy.BLOCK)
        a = asyncio.create_task(read_all(stream))
        b = asyncio.create_task(read_all(stream))
        for i in range(40):
            await bus.publish("s.a", i)
        await bus.aclose()
        got_a, got_b = await asyncio.wait_for(asyncio.gather(a, b), GUARD)
        assert sorted(got_a + got_b) == list(range(40))

    run(main)


def test_async_with_whose_body_raises_closes_and_propagates_unchanged() -> None:
    class Boom(Exception):
        pass

    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*")

        async def body() -> None:
            async with bus:
                await bus.publish("s.a", 1)
                raise Boom("x")

        with pytest.raises(Boom) as info:
            await body()
        assert info.value.args == ("x",)
        assert bus.sync.closed
        assert await asyncio.wait_for(read_all(stream), GUARD) == [1]

    run(main)


# -- async handlers on the bus's own loop (subscribed from sync code) --------------------------


def test_an_abandoned_async_handler_on_the_bus_loop_finishes_on_its_own() -> None:
    bus = EventBus()
    entered = threading.Event()
    gate = threading.Event()
    finished = threading.Event()

    async def handler(event: Event) -> None:
        entered.set()
        try:
            await asyncio.to_thread(gate.wait, 3 * GUARD)
        finally:
            finished.set()

    bus.subscribe("h.*", handler)
    bus.publish("h.a", 1)
    assert entered.wait(GUARD)
    bus.close(timeout=0)  # gives up on the running handler: it is abandoned
    gate.set()
    # "A handler still running is abandoned ... it finishes its current batch on its own"
    assert finished.wait(GUARD)


# -- an async handler that blocks its loop past its timeout ------------------------------------


@pytest.mark.parametrize("ends", ["returns", "raises", "raises TimeoutError"])
def test_an_async_handler_blocking_past_its_timeout_is_counted(ends: str) -> None:
    # As a synchronous one is, whether it returns or raises (one that raised
    # after blocking its loop was not counted).
    async def main() -> None:
        async with AsyncEventBus() as bus:
            gate = threading.Event()

            async def blocks(event: Event) -> None:
                gate.wait(0.3)  # the fault: blocks the loop well past its timeout
                if ends == "raises":
                    raise ValueError("late and failed")
                if ends == "raises TimeoutError":
                    raise TimeoutError("its own")

            sub = await bus.subscribe("b.*", blocks, timeout=0.05, retries=0)
            await bus.publish("b.a")
            await bus.flush(GUARD)
            stats = sub.statistics()
            assert stats.timeouts == 1
            assert (stats.errors, stats.dead_letters) == ((0, 0) if ends == "returns" else (1, 1))

    run(main)


# -- a BLOCK stream closed by its own aclose ---------------------------------------------------


def test_a_block_stream_closed_by_its_own_aclose_counts_every_event_it_lost() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            stream = bus.stream("s.*", capacity=2, overflow=OverflowStrategy.BLOCK)
            sub = stream.subscription
            # 0-1 held by the stream, 2 waits for room, 3-4 in the mailbox or in
            # the handler's batch behind 2 (as the handler's turns fell).
            for i in range(5):
                await bus.publish("s.a", i)

            def settled() -> bool:
                stats = sub.statistics()
                return stats.delivered == 2 and stats.queued + stats.in_flight == 3

            await until(settled)
            await stream.aclose()
            got = await asyncio.wait_for(read_all(stream), GUARD)
            assert got == [0, 1]
            # Final once the subscription has finished (the event waiting for
            # room is let go on the loop, the queued ones on the handler's thread).
            await until(lambda: sub.statistics().queued == 0 and sub.statistics().in_flight == 0)
            assert len(got) + stream.dropped == 5

    run(main)


# -- a publish cancelled while it waits for room is withdrawn ----------------------------------


class _OneThread(ThreadPoolExecutor):
    """An executor of one thread that tells when a job starts (``started``)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.started = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def job() -> Any:
            self.started.set()
            return fn(*args, **kwargs)

        return super().submit(job)


async def _gated_block_subscriber(
    bus: AsyncEventBus,
) -> tuple[threading.Event, list[int], _OneThread]:
    """Subscribe a BLOCK subscriber of capacity 1 and fill it; return its gate, what it got
    and the loop's executor.

    The executor has one thread: a publish that may wait runs there, so each
    publish after a withdrawn one runs only once that one has ended
    (withdrawn, or published before it).
    """
    executor = _OneThread()
    use_off_loop_threads(executor)
    gate = threading.Event()
    got: list[int] = []
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()

    def held(event: Event) -> None:
        if not started.done():
            loop.call_soon_threadsafe(lambda: started.done() or started.set_result(None))
        gate.wait(3 * GUARD)  # only the test opens it
        got.append(event.data)  # type: ignore[arg-type]

    await bus.subscribe("w.*", held, overflow=OverflowStrategy.BLOCK, capacity=1)
    await bus.publish("w.a", 0)
    await started  # 0 in the handler
    await bus.publish("w.a", 1)  # routed: the mailbox is full
    executor.started.clear()
    return gate, got, executor


def test_a_publish_cancelled_while_it_waits_for_room_is_never_published() -> None:
    """``asyncio.wait_for(bus.publish(...), t)`` that times out must not publish later.

    Before, the publish went on waiting on its executor thread after the
    await was cancelled and published the event as soon as room came."""

    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=3 * GUARD)) as bus:
            gate, got, executor = await _gated_block_subscriber(bus)
            try:
                task = asyncio.create_task(bus.publish("w.a", 2))
                await until(executor.started.is_set)  # waiting for room on the executor
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                gate.set()
            await bus.publish("w.a", 3)  # runs once the withdrawn one has ended
            await bus.flush(timeout=GUARD)
            assert got == [0, 1, 3]
            assert bus.metrics().rejected == 0  # withdrawn, not refused

    run(main)


def test_a_publish_many_cancelled_while_it_waits_for_room_publishes_none_of_its_events() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=3 * GUARD)) as bus:
            gate, got, executor = await _gated_block_subscriber(bus)
            batch = [Event(event_type="w.a", data=i) for i in (2, 3)]
            try:
                task = asyncio.create_task(bus.publish_many(batch))
                await until(executor.started.is_set)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                gate.set()
            await bus.publish("w.a", 4)
            await bus.flush(timeout=GUARD)
            assert got == [0, 1, 4]

    run(main)


def test_a_cancelled_publish_many_in_pieces_published_a_prefix_and_withdraws_the_rest() -> None:
    """A batch larger than the room goes in pieces: cancelled while a later piece waits,
    the pieces admitted before it are out (in order), the rest is withdrawn, none rejected."""
    got: list[int] = []

    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=3 * GUARD)) as bus:
            gate, entered = threading.Event(), threading.Event()

            def held(event: Event) -> None:
                got.append(event.data)  # type: ignore[arg-type]
                if event.data == 0:
                    entered.set()
                    assert gate.wait(3 * GUARD)

            sub = await bus.subscribe("w.*", held, overflow=OverflowStrategy.BLOCK, capacity=2)
            try:
                await bus.publish("w.a", 0)
                assert await asyncio.to_thread(entered.wait, GUARD)  # the mailbox is empty
                batch = [Event(event_type="w.a", data=i) for i in (1, 2, 3, 4)]
                task = asyncio.create_task(bus.publish_many(batch))
                # 1 and 2 fill the room; the piece of 3 waits for more (the handler holds 0).
                await until(lambda: sub.statistics().queued == 2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                gate.set()
            await bus.publish("w.a", 5)
            await bus.flush(timeout=GUARD)
            assert bus.metrics().rejected == 0  # withdrawn, not refused

    run(main)
    assert got == [0, 1, 2, 5]


def test_a_withdrawn_publish_gives_its_rate_limit_tokens_back() -> None:
    async def main() -> None:
        config = EventConfig(block_timeout=3 * GUARD, rate_limit=0.001, burst=3)
        async with AsyncEventBus(config) as bus:
            gate, got, executor = await _gated_block_subscriber(bus)  # two tokens taken
            try:
                task = asyncio.create_task(bus.publish("w.a", 2))  # the last token
                await until(executor.started.is_set)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                gate.set()
            await bus.flush(timeout=GUARD)
            await bus.publish("w.a", 3)  # RateLimitedError had the token been kept
            await bus.flush(timeout=GUARD)
            assert got == [0, 1, 3]
            with pytest.raises(RateLimitedError):  # and the bucket is empty again
                await bus.publish("w.a", 4)

    run(main)


def test_a_publish_that_may_wait_and_finds_room_is_published() -> None:
    """The withdrawable path (a BLOCK subscription exists) publishes when there is room."""

    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=3 * GUARD)) as bus:
            got: list[int] = []
            await bus.subscribe(
                "w.*", lambda e: got.append(e.data), overflow=OverflowStrategy.BLOCK
            )
            event = await bus.publish("w.a", 7)  # BLOCK: through the executor
            await bus.flush(timeout=GUARD)
            assert got == [7]
            assert event.sequence is not None

    run(main)
