"""AsyncEventBus (SPEC 8): coroutines that never block the loop.

Every test runs its own loop with ``asyncio.run``; no pytest plugin needed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BusClosedError,
    Event,
    EventConfig,
    EventQuery,
    OverflowStrategy,
    Subscription,
    Trace,
)
from tests._support import use_off_loop_threads

WAIT = 10.0


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


def test_publish_subscribe_flush_aclose() -> None:
    async def main() -> None:
        bus = AsyncEventBus(EventConfig(threads=2))
        seen: list[Event] = []
        sub = await bus.subscribe("user.*", seen.append)
        assert isinstance(sub, Subscription)
        event = await bus.publish("user.login", {"user_id": "123"})
        assert isinstance(event, Event)
        assert event.sequence is not None
        again = await bus.publish(Event(event_type="user.logout"))
        assert again.sequence == event.sequence + 1
        await bus.flush(WAIT)
        assert [e.event_type for e in seen] == ["user.login", "user.logout"]
        await bus.aclose()
        with pytest.raises(BusClosedError):
            await bus.publish("user.login")
        with pytest.raises(BusClosedError):
            await bus.subscribe("user.*", seen.append)
        with pytest.raises(BusClosedError):
            await bus.flush(1)
        with pytest.raises(BusClosedError):
            await bus.get_correlated(uuid.uuid4())

    run(main)


def test_publish_many_and_correlation() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            cid = uuid.uuid4()
            published = await bus.publish_many(
                [Event(event_type="wf.step", data=i, correlation_id=cid) for i in range(10)]
            )
            assert [e.data for e in published] == list(range(10))
            seqs = [e.sequence for e in published]
            assert seqs == list(range(seqs[0], seqs[0] + 10))  # type: ignore[operator]
            last = await bus.publish_correlated("wf.end", None, cid)
            assert last.correlation_id == cid
            # Read-your-writes through the async face too.
            events = await bus.get_correlated(cid)
            assert [e.id for e in events] == [e.id for e in [*published, last]]
            trace = await bus.trace(cid)
            assert isinstance(trace, Trace)
            assert len(trace) == 11

    run(main)


def test_async_with_drains_on_exit() -> None:
    seen: list[Any] = []

    async def main() -> AsyncEventBus:
        async with AsyncEventBus() as bus:
            await bus.subscribe("x.*", lambda e: seen.append(e.data))
            for i in range(300):
                await bus.publish("x.e", i)
        return bus

    bus = run(main)
    assert seen == list(range(300))
    assert bus.sync.closed


def test_stream_misses_nothing_published_right_after_it_returns() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            stream = bus.stream("user.*")
            # Published at once, from another thread, before iterating.
            publisher = threading.Thread(
                target=lambda: [bus.sync.publish("user.e", i) for i in range(50)]
            )
            publisher.start()
            await bus.publish("other.ignored")
            got: list[Any] = []
            async for event in stream:
                got.append(event.data)
                if len(got) == 50:
                    break
            await stream.aclose()
            publisher.join(WAIT)
            assert got == list(range(50))

    run(main)


def test_stream_ends_after_aclose_once_drained() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            async with bus.stream("s.*") as stream:
                await bus.publish("s.e", 1)
                await bus.flush(WAIT)
                assert (await anext(stream)).data == 1
            await bus.publish("s.e", 2)
            await bus.flush(WAIT)
            rest = [e async for e in stream]
            assert rest == []

    run(main)


def test_a_reader_waiting_on_an_empty_stream_ends_at_aclose() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            stream = bus.stream("quiet.*")
            started = asyncio.Event()

            async def read() -> list[Event]:
                started.set()
                return [e async for e in stream]

            reader = asyncio.create_task(read())
            await started.wait()
            await asyncio.sleep(0)  # let the reader block in __anext__
            await stream.aclose()
            assert await asyncio.wait_for(reader, WAIT) == []

    run(main)


def test_async_handlers_run_on_the_subscribing_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        here = threading.get_ident()
        seen: list[tuple[int, asyncio.AbstractEventLoop, Any]] = []
        done = asyncio.Event()

        async def handler(event: Event) -> None:
            seen.append((threading.get_ident(), asyncio.get_running_loop(), event.data))
            await asyncio.sleep(0)
            if len(seen) == 20:
                done.set()

        async with AsyncEventBus() as bus:
            await bus.subscribe("a.*", handler)
            for i in range(20):
                await bus.publish("a.e", i)
            await asyncio.wait_for(done.wait(), WAIT)
            await bus.flush(WAIT)
        assert [d for _, _, d in seen] == list(range(20))  # in order, one at a time
        assert {t for t, _, _ in seen} == {here}
        assert all(lp is loop for _, lp, _ in seen)

    run(main)


def test_async_handler_is_never_run_twice_at_once() -> None:
    async def main() -> None:
        inside = 0
        peak = 0
        count = 0

        async def handler(event: Event) -> None:
            nonlocal inside, peak, count
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside -= 1
            count += 1

        async with AsyncEventBus() as bus:
            await bus.subscribe("c.*", handler)
            await asyncio.gather(*(bus.publish("c.e", i) for i in range(200)))
            await bus.flush(WAIT)
        assert count == 200
        assert peak == 1

    run(main)


def test_awaiting_a_blocked_publish_never_blocks_the_loop() -> None:
    async def main() -> None:
        entered = threading.Event()
        release = threading.Event()
        delivered: list[Any] = []

        def gate(event: Event) -> None:
            entered.set()
            assert release.wait(WAIT)
            delivered.append(event.data)

        config = EventConfig(threads=2, block_timeout=30.0)
        async with AsyncEventBus(config) as bus:
            await bus.subscribe(
                "b.*", gate, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
            )
            await bus.publish("b.e", 0)
            await asyncio.to_thread(entered.wait, WAIT)
            await bus.publish("b.e", 1)  # fills the mailbox
            # Far more than fits anywhere: some wait on the router's full inbox too.
            blocked = [asyncio.ensure_future(bus.publish("b.e", i)) for i in range(2, 3000)]

            ticks = 0

            async def ticker() -> int:
                nonlocal ticks
                for _ in range(200):
                    ticks += 1
                    await asyncio.sleep(0)
                return ticks

            assert await asyncio.wait_for(ticker(), WAIT) == 200
            assert not all(t.done() for t in blocked)  # they are still waiting for room
            release.set()
            results = await asyncio.wait_for(asyncio.gather(*blocked), WAIT * 3)
            assert all(isinstance(e, Event) for e in results)
            await bus.flush(WAIT)
        assert sorted(delivered) == list(range(3000))  # BLOCK loses nothing

    run(main)


def test_metrics_and_dead_letters_through_the_async_face() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:

            async def fails(event: Event) -> None:
                raise RuntimeError("nope")

            await bus.subscribe("d.*", fails)
            await bus.publish("d.e")
            await bus.flush(WAIT)
            assert bus.metrics().handler_errors == 1
            assert [d.event.event_type for d in bus.dead_letters()] == ["d.e"]

    run(main)


class _CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting what is sent to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_flush_query_and_get_correlated_await_the_core_without_a_thread(tmp_path: Any) -> None:
    async def main() -> None:
        executor = _CountingExecutor()
        use_off_loop_threads(executor)
        bus = AsyncEventBus(EventConfig(persistence_path=str(tmp_path / "j")))
        cid = uuid.uuid4()
        published = await bus.publish("a.b", 1, correlation_id=cid)
        await bus.flush(WAIT)
        assert [e.id for e in await bus.query(EventQuery(event_types=["a.b"]))] == [published.id]
        assert [e.id for e in await bus.get_correlated(cid)] == [published.id]
        assert executor.submitted == 0
        await bus.aclose(WAIT)

    run(main)
