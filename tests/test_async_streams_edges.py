"""AsyncEventBus at its edges: cancelled readers and publishers, loops that close,
handlers that hang, raise in ``finally`` or outlive themselves, several loops at once.

Every wait is bounded by ``GUARD``, a hang guard whose expiry fails the test,
never a measure of speed.  Statistics are checked at rest with the promise of
``docs/architecture.md`` ("Statistics account for every event"):
``accepted == delivered + expired + dead_letters + dropped + queued + in_flight``,
and a finished subscription shows nothing queued or in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventStream,
    OverflowStrategy,
    Subscription,
)
from tests._support import wait_for

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


def settled(sub: Subscription) -> bool:
    stats = sub.statistics()
    return stats.queued == 0 and stats.in_flight == 0


def assert_adds_up(sub: Subscription) -> None:
    s = sub.statistics()
    assert s.accepted == (
        s.delivered + s.expired + s.dead_letters + s.dropped + s.queued + s.in_flight
    ), s


# -- an event loop that closes with a batch handed to it but not yet run -------------------


# A batch handed to a loop that is not running and then closes is never run and
# never cancelled: the subscription notices the closed loop (within LOOP_WATCH)
# and gives the batch up as dead letters, so nothing stays in flight for ever and
# flush() and close() need not give up on the subscription.
def test_a_batch_handed_to_a_loop_that_closes_before_running_it_is_given_up() -> None:
    bus = EventBus(EventConfig(handler_retries=0))
    loop = asyncio.new_event_loop()
    try:
        ran: list[Any] = []

        async def handler(event: Event) -> None:
            ran.append(event.data)

        async def subscribe() -> Subscription:
            return bus.subscribe("x.*", handler)

        sub = loop.run_until_complete(subscribe())  # the loop stops running after this
        bus.publish("x.a", 1).get(timeout=GUARD)
        # Taken by the subscriber and handed to the (idle) loop.
        assert wait_for(lambda: sub.statistics().in_flight == 1, GUARD)
        loop.close()  # e.g. asyncio.run's last step, after its final run_until_complete
        bus.flush(timeout=GUARD)
        assert ran == []
        assert wait_for(lambda: settled(sub), GUARD), sub.statistics()
        assert sub.statistics().dead_letters == 1
        assert_adds_up(sub)
    finally:
        if not loop.is_closed():
            loop.close()
        bus.close(timeout=2)


# A batch that ends in the very iteration after which its loop stops (the
# handler's loop is stopped and closed by its owner, as asyncio.run's shutdown
# can do mid-batch): the callback passing "finished" back was scheduled on the
# loop and never runs.  The subscription must still see the batch as over, and
# the events after it are given up, not queued for ever.
def test_a_batch_that_ends_as_its_loop_stops_leaves_nothing_stuck_behind_it() -> None:
    bus = EventBus(EventConfig(handler_retries=0))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    try:
        ran: list[Any] = []

        async def handler(event: Event) -> None:
            ran.append(event.data)
            if event.data == "last":
                asyncio.get_running_loop().stop()  # its owner stops it in this iteration

        async def subscribe() -> Subscription:
            return bus.subscribe("x.*", handler)

        sub = asyncio.run_coroutine_threadsafe(subscribe(), loop).result(GUARD)
        bus.publish("x.y", "last").get(timeout=GUARD)
        runner.join(GUARD)
        assert not runner.is_alive()
        loop.close()
        for i in range(5):
            bus.publish("x.y", i).get(timeout=GUARD)
        bus.flush(timeout=GUARD)
        assert ran == ["last"]
        assert wait_for(lambda: settled(sub), GUARD), sub.statistics()
        stats = sub.statistics()
        assert (stats.delivered, stats.dead_letters, stats.queued) == (1, 5, 0)
        assert_adds_up(sub)
    finally:
        if runner.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            runner.join(GUARD)
        if not loop.is_closed():
            loop.close()
        bus.close(timeout=2)


# -- readers cancelled, readers that leave ---------------------------------------------------


def test_a_reader_cancelled_while_it_waits_loses_nothing_and_a_new_reader_goes_on() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=GUARD)) as bus:
            stream = bus.stream("s.*", capacity=2, overflow=OverflowStrategy.BLOCK)
            got: list[int] = []

            async def reader() -> None:
                async for event in stream:
                    got.append(event.data)

            first = asyncio.create_task(reader())
            for i in range(5):
                await bus.publish("s.a", i)
            await until(lambda: len(got) == 5)
            first.cancel()  # waiting in __anext__ on an empty stream
            with pytest.raises(asyncio.CancelledError):
                await first
            # 2 unread, 1 waiting for room, 2 in the mailbox: all fit without a reader.
            for i in range(5, 10):
                await bus.publish("s.a", i)
            second = asyncio.create_task(reader())
            await until(lambda: len(got) == 10)
            await stream.aclose()
            await asyncio.wait_for(second, GUARD)
            assert got == list(range(10))
            sub = stream.subscription
            await until(lambda: settled(sub))
            assert sub.statistics().delivered == 10
            assert stream.dropped == 0
            assert_adds_up(sub)

    run(main)


def test_a_stream_left_by_a_cancelled_async_with_unsubscribes_and_accounts() -> None:
    # EventStream's docstring: "Closing the iterator (aclose or leaving async with)
    # unsubscribes"; leaving by cancellation is leaving.
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=GUARD)) as bus:
            inside = asyncio.Event()
            holder: list[EventStream] = []

            async def consume() -> None:
                async with bus.stream("s.*", capacity=1, overflow=OverflowStrategy.BLOCK) as s:
                    holder.append(s)
                    inside.set()
                    async for _ in s:
                        await asyncio.Event().wait()  # a reader stuck on its first event

            task = asyncio.create_task(consume())
            await asyncio.wait_for(inside.wait(), GUARD)
            stream = holder[0]
            sub = stream.subscription
            for i in range(4):  # 1 read, 1 unread, 1 waiting for room, 1 queued
                await bus.publish("s.a", i)
            await until(lambda: sub.statistics().queued == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not sub.active
            await until(lambda: settled(sub))
            assert_adds_up(sub)
            # Read 1, held 1: the rest are lost and said so.
            assert 2 + stream.dropped == 4
            await bus.publish("s.a", 99)  # no longer routed to it
            await bus.flush(GUARD)
            assert sub.statistics().accepted == 4

    run(main)


def test_a_stream_dropped_without_aclose_never_holds_the_bus_and_ends_with_it() -> None:
    # Plain expectation (the docs are silent on garbage collection): a stream whose
    # last reference is dropped does not hold up flush or aclose, and once the bus
    # is closed nothing keeps it alive.
    async def main() -> weakref.ref[EventStream]:
        bus = AsyncEventBus()
        stream = bus.stream("s.*", capacity=2)
        ref = weakref.ref(stream)
        sub = stream.subscription
        del stream
        gc.collect()
        for i in range(10):
            await bus.publish("s.a", i)
        await bus.flush(GUARD)  # DROP_OLDEST: no reader needed
        await asyncio.wait_for(bus.aclose(), GUARD)
        assert not sub.active
        await until(lambda: settled(sub))
        assert_adds_up(sub)
        return ref

    ref = run(main)
    gc.collect()
    # The closed bus is gone with main's frame; so must be the stream.
    assert ref() is None


# -- async with whose body is cancelled ----------------------------------------------------


def test_async_with_bus_whose_body_is_cancelled_closes_the_bus_and_delivers_first() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*")
        inside = asyncio.Event()

        async def body() -> None:
            async with bus:
                await bus.publish("s.a", 1)
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(body())
        await asyncio.wait_for(inside.wait(), GUARD)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, GUARD)
        assert bus.sync.closed
        assert await asyncio.wait_for(read_all(stream), GUARD) == [1]
        with pytest.raises(BusClosedError):
            await bus.publish("s.a", 2)

    run(main)


def test_async_with_bus_under_a_timeout_that_expires_closes_the_bus() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*")

        async def body() -> None:
            async with asyncio.timeout(0):  # expires at the body's first wait
                async with bus:
                    await bus.publish("s.a", 1)
                    await asyncio.Event().wait()

        with pytest.raises(TimeoutError):
            await body()
        assert bus.sync.closed
        got = await asyncio.wait_for(read_all(stream), GUARD)
        assert got in ([], [1])  # the publish may have been cancelled before it was admitted
        m = bus.metrics()
        assert m.published == len(got)

    run(main)


def test_an_aclose_cancelled_during_its_flush_can_be_done_again() -> None:
    # Plain asyncio expectation: an interrupted cleanup leaves the object usable for
    # a second try; the docs promise every stream ends once the bus closes.
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*")
        release = asyncio.Event()
        entered = asyncio.Event()

        async def slow(_: Event) -> None:
            entered.set()
            await release.wait()

        await bus.subscribe("hold", slow)
        await bus.publish("s.a", 1)
        await bus.publish("hold")
        try:
            await asyncio.wait_for(entered.wait(), GUARD)
            closing = asyncio.create_task(bus.aclose())
            await asyncio.sleep(0)  # let it reach its flush (which waits for ``slow``)
            await asyncio.sleep(0)
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
        finally:
            release.set()
        await asyncio.wait_for(bus.aclose(), GUARD)
        assert bus.sync.closed
        assert await asyncio.wait_for(read_all(stream), GUARD) == [1]

    run(main)


# -- publishes cancelled at every point ----------------------------------------------------


@pytest.mark.parametrize("may_wait", [False, True], ids=["direct", "through-executor"])
def test_publishes_cancelled_at_every_point_are_published_once_or_not_at_all(
    may_wait: bool,
) -> None:
    """A cancelled publish is published or not, never twice; a returned one is delivered."""

    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=GUARD)) as bus:
            got: list[int] = []
            sub = await bus.subscribe(
                "p.*",
                lambda e: got.append(e.data),
                overflow=OverflowStrategy.BLOCK if may_wait else None,
                capacity=10_000,
            )
            returned: list[int] = []
            n = 0
            for steps in range(6):  # cancel after 0..5 turns of the loop
                for _ in range(20):
                    i = n
                    n += 1

                    async def one(i: int = i) -> None:
                        await bus.publish("p.a", i)
                        returned.append(i)

                    task = asyncio.create_task(one())
                    for _ in range(steps):
                        await asyncio.sleep(0)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await bus.flush(GUARD)
            assert len(got) == len(set(got))  # none twice
            assert set(returned) <= set(got)  # every returned publish was delivered
            m = bus.metrics()
            assert m.published == len(got)
            assert m.rejected == 0
            await until(lambda: settled(sub))
            assert_adds_up(sub)
            assert sub.statistics().delivered == len(got)

    run(main)


def test_a_publish_many_in_a_taskgroup_cancelled_by_a_sibling_is_all_or_nothing() -> None:
    """A batch that fits the room when admitted is one piece: all or nothing."""

    class Stop(Exception):
        pass

    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=GUARD)) as bus:
            got: list[int] = []
            await bus.subscribe(
                "p.*",
                lambda e: got.append(e.data),
                overflow=OverflowStrategy.BLOCK,
                capacity=10_000,
            )
            for k in range(30):
                batch = [Event(event_type="p.a", data=100 * k + j) for j in range(5)]
                steps = k % 6

                async def sibling(steps: int = steps) -> None:
                    for _ in range(steps):
                        await asyncio.sleep(0)
                    raise Stop

                with contextlib.suppress(Stop, ExceptionGroup):
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(bus.publish_many(batch))
                        tg.create_task(sibling())
            await bus.flush(GUARD)
            for k in range(30):
                part = [d for d in got if d // 100 == k]
                assert part in ([], [100 * k + j for j in range(5)]), part

    run(main)


# -- requests cancelled from outside -----------------------------------------------------


def test_a_request_cancelled_by_an_outer_timeout_leaves_no_pending_entry() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            release = asyncio.Event()
            asked = asyncio.Event()

            async def slow(_: Event) -> str:
                asked.set()
                await release.wait()
                return "late"

            await bus.respond("ask.slow", slow)
            try:
                task = asyncio.create_task(bus.request("ask.slow", timeout=None))
                await asyncio.wait_for(asked.wait(), GUARD)
                assert bus.sync.pending_requests() == 1
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert bus.sync.pending_requests() == 0
            finally:
                release.set()
            await bus.flush(GUARD)
            # The late reply is only an event; the next request is answered.
            release.set()
            assert (await bus.request("ask.slow", timeout=GUARD)).data == "late"
            assert bus.sync.pending_requests() == 0

    run(main)


# -- flush while others publish ----------------------------------------------------------


def test_flush_returns_while_other_tasks_keep_publishing() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            got: list[int] = []

            async def handler(event: Event) -> None:
                got.append(event.data)

            await bus.subscribe("f.*", handler)
            stop = asyncio.Event()
            counter = iter(range(10**9))

            async def publisher() -> None:
                while not stop.is_set():
                    await bus.publish("f.a", next(counter))
                    await asyncio.sleep(0)

            pubs = [asyncio.create_task(publisher()) for _ in range(3)]
            try:
                await until(lambda: len(got) >= 50)
                before = await bus.publish("f.a", -1)
                await asyncio.wait_for(bus.flush(), GUARD)
                assert -1 in got  # flush covers what was published before it
            finally:
                stop.set()
                await asyncio.gather(*pubs)
            assert before.sequence is not None

    run(main)


# -- handlers that hang, raise in finally, outlive themselves --------------------------


def test_aclose_with_a_timeout_returns_while_an_async_handler_never_returns() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*")
        release = asyncio.Event()
        entered = asyncio.Event()

        async def stuck(_: Event) -> None:
            entered.set()
            await release.wait()

        sub = await bus.subscribe("hang", stuck)
        try:
            await bus.publish("s.a", 1)
            await bus.publish("hang")
            await bus.publish("hang")  # queued behind the stuck one
            await asyncio.wait_for(entered.wait(), GUARD)
            await asyncio.wait_for(bus.aclose(timeout=0.2), GUARD)  # hang guard only
            assert bus.sync.closed
            assert await asyncio.wait_for(read_all(stream), GUARD) == [1]
        finally:
            release.set()
        await until(lambda: settled(sub))
        assert_adds_up(sub)
        stats = sub.statistics()
        assert stats.accepted == 2
        assert stats.delivered == 1  # the one the handler had
        assert stats.dropped == 1  # the queued one, discarded when close gave up

    run(main)


# A handler cancelled at its timeout whose cleanup raises something else still
# counts as timed out (statistics().timeouts, handler_timeouts), not only as failed.
def test_a_timed_out_async_handler_that_raises_in_finally_is_counted_as_a_timeout() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(handler_retries=0)) as bus:
            never = asyncio.Event()

            async def handler(_: Event) -> None:
                try:
                    await never.wait()
                finally:
                    raise ValueError("cleanup failed")

            sub = await bus.subscribe("t.*", handler, timeout=0.05)
            try:
                await bus.publish("t.a", 1)
                await bus.flush(GUARD)
            finally:
                never.set()
            stats = sub.statistics()
            assert stats.dead_letters == 1
            assert stats.errors == 1
            assert_adds_up(sub)
            assert stats.timeouts == 1, stats
            assert bus.metrics().handler_timeouts == 1

    run(main)


def test_a_task_spawned_by_an_async_handler_publishes_with_its_causation_later() -> None:
    # docs/architecture.md ("What a publish inherits"): "in an async def handler, and
    # in what runs in a copy of its context" - a task copies the context.
    async def main() -> None:
        async with AsyncEventBus() as bus:
            go = asyncio.Event()
            spawned: list[asyncio.Task[Any]] = []
            children: list[Event] = []
            done = asyncio.Event()

            async def later() -> None:
                await go.wait()
                await bus.publish("child.a", "late")

            async def parent(_: Event) -> None:
                spawned.append(asyncio.create_task(later()))

            async def child(event: Event) -> None:
                children.append(event)
                done.set()

            sub = await bus.subscribe("parent.*", parent)
            await bus.subscribe("child.*", child)
            root = await bus.publish("parent.a", 0)
            await bus.flush(GUARD)
            assert sub.statistics().delivered == 1  # the handler has returned
            go.set()
            await asyncio.wait_for(asyncio.gather(*spawned), GUARD)
            await asyncio.wait_for(done.wait(), GUARD)
            assert children[0].causation_id == root.id
            assert children[0].correlation_id == root.correlation_id

    run(main)


def test_an_async_handler_that_never_awaits_keeps_order_and_counts() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            got: list[int] = []

            async def eager(event: Event) -> None:
                got.append(event.data)  # never awaits

            sub = await bus.subscribe("e.*", eager)
            await bus.publish_many([Event(event_type="e.a", data=i) for i in range(500)])
            await bus.flush(GUARD)
            assert got == list(range(500))
            assert sub.statistics().delivered == 500
            assert_adds_up(sub)

    run(main)


def test_flush_inside_an_async_handler_raises_instead_of_waiting_for_itself() -> None:
    # docs/architecture.md: "flush() ... raises RuntimeError inside a handler".
    async def main() -> None:
        async with AsyncEventBus() as bus:
            outcome: asyncio.Future[BaseException | None] = (
                asyncio.get_running_loop().create_future()
            )

            async def handler(_: Event) -> None:
                try:
                    await bus.flush(GUARD)
                except BaseException as exc:
                    outcome.set_result(exc)
                else:
                    outcome.set_result(None)

            await bus.subscribe("h.*", handler)
            await bus.publish("h.a")
            error = await asyncio.wait_for(outcome, GUARD)
            assert isinstance(error, RuntimeError)

    run(main)


# -- one bus, several loops in several threads ----------------------------------------------


def test_one_bus_from_three_loops_in_three_threads_then_one_aclose_ends_them_all() -> None:
    shared = EventBus()
    n_loops, per_loop = 3, 30
    total = n_loops * per_loop
    ready = threading.Barrier(n_loops, timeout=GUARD)
    read_enough = [threading.Event() for _ in range(n_loops)]
    results: list[Any] = [None] * n_loops

    def loop_thread(k: int) -> None:
        async def main() -> tuple[list[int], list[int], bool]:
            abus = AsyncEventBus(bus=shared)
            me = threading.get_ident()
            handled: list[int] = []
            wrong_thread = False

            async def handler(event: Event) -> None:
                nonlocal wrong_thread
                wrong_thread |= threading.get_ident() != me
                handled.append(event.data)

            await abus.subscribe("m.*", handler)
            stream = abus.stream("m.*", capacity=total)
            await asyncio.to_thread(ready.wait)
            await abus.publish_many(
                [Event(event_type=f"m.l{k}", data=k * per_loop + j) for j in range(per_loop)]
            )
            streamed: list[int] = []
            async for event in stream:
                streamed.append(event.data)
                if len(streamed) == total:
                    read_enough[k].set()
            await until(lambda: len(handled) == total)
            return handled, streamed, wrong_thread

        async def closer_main() -> Any:
            task = asyncio.create_task(main())
            ok = await asyncio.to_thread(lambda: all(e.wait(GUARD) for e in read_enough))
            assert ok, "not every loop read everything"
            await AsyncEventBus(bus=shared).aclose()
            return await task

        try:
            coro = closer_main() if k == 0 else main()
            results[k] = asyncio.run(asyncio.wait_for(coro, 3 * GUARD))
        except BaseException as exc:
            results[k] = exc

    threads = [threading.Thread(target=loop_thread, args=(k,)) for k in range(n_loops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5 * GUARD)
    try:
        for k, result in enumerate(results):
            assert not isinstance(result, BaseException), (k, result)
            assert result is not None, k
            handled, streamed, wrong_thread = result
            assert sorted(handled) == list(range(total))
            assert sorted(streamed) == list(range(total))
            assert not wrong_thread
        assert shared.closed
    finally:
        shared.close(timeout=GUARD)


def test_asyncio_run_ending_with_the_bus_open_leaves_a_sync_bus_that_closes_cleanly() -> None:
    # Plain expectation: the loop's end does not break the bus it used; the stream of
    # the ended loop does not hold up flush/close (DROP_OLDEST) and close is quiet.
    holder: list[AsyncEventBus] = []

    async def main() -> Subscription:
        abus = AsyncEventBus()
        holder.append(abus)
        stream = abus.stream("s.*", capacity=4)
        await abus.publish("s.a", 0)
        return stream.subscription

    sub = asyncio.run(main())
    bus = holder[0].sync
    try:
        got: list[int] = []
        bus.subscribe("s.*", lambda e: got.append(e.data))
        for i in range(1, 6):
            bus.publish("s.a", i)
        bus.flush(timeout=GUARD)
        assert got == [1, 2, 3, 4, 5]
    finally:
        bus.close(timeout=GUARD)
    assert wait_for(lambda: settled(sub), GUARD)
    assert_adds_up(sub)


# -- a loop that ends while an async batch waits for its retry -------------------------------


# A batch cancelled (its loop ends) while an event waits for its retry is given
# up: the waiting event is a dead letter with its own error, nothing stays in flight.
def test_an_async_batch_waiting_for_its_retry_when_its_loop_ends_is_given_up() -> None:
    bus = EventBus(EventConfig())
    try:
        attempts: list[int] = []
        holder: list[Subscription] = []

        async def main() -> None:
            async def flaky(event: Event) -> None:
                attempts.append(event.data)
                if len(attempts) == 1:
                    raise ValueError("first attempt fails")
                await asyncio.Event().wait()  # a quick retry then waits: the loop ends it

            # The retry waits up to 30 s: the loop ends long before it, or during it.
            sub = bus.subscribe("r.*", flaky, retries=1, retry_backoff=1000.0)
            holder.append(sub)
            bus.publish("r.a", 1).get(timeout=GUARD)
            await until(lambda: sub.statistics().errors == 1)
            await asyncio.sleep(0)

        asyncio.run(asyncio.wait_for(main(), 3 * GUARD))  # cancels the batch's task
        sub = holder[0]
        assert wait_for(lambda: settled(sub), GUARD), sub.statistics()
        assert sub.statistics().dead_letters == 1
        assert_adds_up(sub)
        bus.flush(timeout=GUARD)
    finally:
        bus.close(timeout=2)


# -- a request cancelled while its publish waits for room -------------------------------


def test_a_request_cancelled_while_its_publish_waits_for_room_leaves_nothing_behind() -> None:
    # docs/requests.md: "such a request may still be published once room appears, and
    # its reply is then only an event"; "each caller removes its own entry when it
    # returns".
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=GUARD)) as bus:
            gate = threading.Event()
            entered = threading.Event()
            answered: list[Any] = []

            def slow(event: Event) -> str:
                entered.set()
                gate.wait(3 * GUARD)  # only the test opens it
                answered.append(event.data)
                return "ok"

            sub = await bus.respond("q.slow", slow, overflow=OverflowStrategy.BLOCK, capacity=1)
            try:
                await bus.publish("q.slow", 0)
                assert await asyncio.to_thread(entered.wait, GUARD)
                await bus.publish("q.slow", 1)  # the mailbox is full
                task = asyncio.create_task(bus.request("q.slow", 2, timeout=None))
                await until(lambda: bus.sync.pending_requests() == 1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert bus.sync.pending_requests() == 0
            finally:
                gate.set()
            await bus.flush(GUARD)
            await until(lambda: settled(sub))
            assert_adds_up(sub)
            # Published (once) after room appeared, or not at all: never twice.
            assert answered in ([0, 1], [0, 1, 2])
            assert bus.metrics().rejected == 0

    run(main)


# -- a slow reader fed from another thread --------------------------------------------


@pytest.mark.parametrize("overflow", [OverflowStrategy.DROP_OLDEST, OverflowStrategy.DROP_NEWEST])
def test_a_slow_reader_fed_from_a_thread_accounts_for_every_event(
    overflow: OverflowStrategy,
) -> None:
    """``EventStream.dropped`` counts every event the stream lost (docs): read + dropped
    is what was published, whatever the stream or its mailbox dropped."""
    n = 3000

    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("s.*", capacity=4, overflow=overflow)
        sub = stream.subscription
        read: list[int] = []

        def feed() -> None:
            for i in range(n):
                bus.sync.publish("s.a", i)
            bus.sync.flush(timeout=GUARD)

        async def reader() -> None:
            async for event in stream:
                read.append(event.data)
                for _ in range(3):  # a slow reader: gives the loop away between events
                    await asyncio.sleep(0)

        reading = asyncio.create_task(reader())
        await asyncio.wait_for(asyncio.to_thread(feed), 2 * GUARD)
        await asyncio.wait_for(bus.aclose(), GUARD)  # ends the stream once it is read
        await asyncio.wait_for(reading, GUARD)
        await until(lambda: settled(sub))
        assert read == sorted(read)
        assert len(set(read)) == len(read)
        assert len(read) + stream.dropped == n, (len(read), stream.dropped, sub.statistics())
        assert_adds_up(sub)

    run(main)


# -- a pacing stream whose loop ends without aclose -----------------------------------


# asyncio.run ending with a BLOCK stream open: the batch in hand is cancelled, and
# the next one, handed to the loop during its shutdown, is given up once the loop
# closed, so the BLOCK mailbox drains and later publishes of the sync bus go on.
def test_a_block_stream_whose_loop_ended_unread_does_not_hold_the_bus_for_ever() -> None:
    # Plain expectation (the docs say the loop's end gives the batch up as dead
    # letters): a BLOCK stream abandoned by a loop that ended leaves a bus whose
    # publishers are not paced for ever and whose close does not wait on it.
    bus = EventBus(EventConfig(block_timeout=GUARD))
    try:
        # The stream itself is held: one its reader dropped is unsubscribed
        # once collected (tested apart), and this is a stream still open.
        holder: list[EventStream] = []

        async def main() -> None:
            stream = AsyncEventBus(bus=bus).stream("s.*", capacity=1, overflow="block")
            holder.append(stream)
            for i in range(3):  # 1 unread, 1 waiting for room, 1 queued
                await asyncio.to_thread(lambda i=i: bus.publish("s.a", i).get(timeout=GUARD))
            await until(lambda: stream.subscription.statistics().queued == 1)

        asyncio.run(asyncio.wait_for(main(), 3 * GUARD))
        sub = holder[0].subscription
        # What the ended loop held is given up (dead letters), so room appears.
        assert wait_for(lambda: settled(sub), GUARD), sub.statistics()
        for i in range(3, 6):
            bus.publish("s.a", i).get(timeout=GUARD)
        bus.flush(timeout=GUARD)
        assert wait_for(lambda: settled(sub), GUARD), sub.statistics()
        assert_adds_up(sub)
        stats = sub.statistics()
        assert stats.accepted == 6
        assert stats.dead_letters + stats.dropped + stats.delivered == 6
    finally:
        bus.close(timeout=GUARD)


# -- two loops close the bus at once ----------------------------------------------------


def test_two_loops_in_two_threads_aclose_the_bus_at_once() -> None:
    # docs/architecture.md: "aclose begun while another close is under way ... returns
    # once that close has stopped the bus, so its streams have what was published before".
    shared = EventBus()
    start = threading.Barrier(2, timeout=GUARD)
    opened = threading.Barrier(2, timeout=GUARD)
    results: list[Any] = [None, None]

    def loop_thread(k: int) -> None:
        async def main() -> tuple[list[int], bool]:
            abus = AsyncEventBus(bus=shared)
            stream = abus.stream("s.*")
            await asyncio.to_thread(opened.wait)
            await abus.publish("s.a", k)
            await abus.flush(GUARD)
            await asyncio.to_thread(start.wait)
            await asyncio.wait_for(abus.aclose(), GUARD)
            closed = shared.closed
            return sorted(await asyncio.wait_for(read_all(stream), GUARD)), closed

        try:
            results[k] = asyncio.run(asyncio.wait_for(main(), 3 * GUARD))
        except BaseException as exc:
            results[k] = exc

    threads = [threading.Thread(target=loop_thread, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5 * GUARD)
    try:
        assert results == [([0, 1], True), ([0, 1], True)]
    finally:
        shared.close(timeout=GUARD)


# -- a stream its reader dropped without closing it ---------------------------------------


@pytest.mark.parametrize("overflow", [OverflowStrategy.DROP_OLDEST, OverflowStrategy.BLOCK])
def test_a_stream_left_by_break_is_unsubscribed_once_collected(overflow: OverflowStrategy) -> None:
    # ``async for e in bus.stream(...): return e`` never calls ``aclose``: the
    # stream used to stay subscribed (held by the bus) until the bus closed,
    # buffering every later event for a reader that was gone.
    async def first(bus: AsyncEventBus, subs: list[Subscription]) -> Any:
        stream = bus.stream("user.*", overflow=overflow, capacity=10)
        subs.append(stream.subscription)
        async for event in stream:
            return event.data
        return None

    async def test() -> None:
        async with AsyncEventBus() as bus:
            kept = bus.stream("user.*", capacity=1000)  # still referenced: stays
            subs: list[Subscription] = []
            for i in range(5):
                reader = asyncio.ensure_future(first(bus, subs))
                await until(lambda n=i: len(subs) == n + 1)
                await bus.publish("user.login", i)
                assert await reader == i
            del reader
            gc.collect()
            await until(lambda: not any(sub.active for sub in subs))
            for i in range(50):
                await bus.publish("user.later", i)
            await bus.flush()
            assert all(sub.statistics().queued == 0 for sub in subs)
            assert kept.subscription.active
            assert len(kept.inbox.unread) == 55
            assert bus.sync.metrics().subscriptions == 1

    run(test)
