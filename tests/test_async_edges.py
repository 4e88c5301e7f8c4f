"""AsyncEventBus at its edges: publishes that wait for room, requests, streams that end.

Every test runs its own loop with ``asyncio.run``.  "The loop is not blocked"
is shown by ordering, never by durations: a task created after the call
runs (and finds the call still pending) while the call waits for room.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BackpressureError,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    OverflowStrategy,
    RequestTimeoutError,
    Subscription,
)
from actors._core import handling
from tests._support import use_off_loop_threads, wait_for

WAIT = 10.0


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


async def fill_block_lane(bus: AsyncEventBus, pattern: str, event_type: str) -> threading.Event:
    """Subscribe a gated BLOCK subscriber of capacity 1 and fill it; return its gate.

    One event is in the handler (held by the gate) and one in the mailbox, so
    the next publish of ``event_type`` waits for room until the gate opens.
    """
    gate = threading.Event()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def slow(_: Event) -> str:
        if not started.done():
            loop.call_soon_threadsafe(lambda: started.done() or started.set_result(None))
        gate.wait(3 * WAIT)  # longer than block_timeout: only the test opens it
        return "ok"

    await bus.respond(pattern, slow, overflow=OverflowStrategy.BLOCK, capacity=1)
    await bus.publish(event_type, 0)
    await started  # the first event is in the handler
    await bus.publish(event_type, 1)  # routed: the mailbox is full
    return gate


async def runs_meanwhile(call: asyncio.Task[Any]) -> bool:
    """Return whether a task created after ``call`` runs while ``call`` is still pending."""
    ran = asyncio.Event()

    async def other() -> None:
        ran.set()

    await asyncio.create_task(other())
    return ran.is_set() and not call.done()


# -- context: correlation and causation survive the executor hop -------------------------


def test_publish_that_may_wait_keeps_causation_and_correlation() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            # A BLOCK subscription elsewhere: every publish may wait, so it
            # runs in an executor thread.
            await bus.subscribe(
                "unrelated.x", lambda e: None, overflow=OverflowStrategy.BLOCK, capacity=10
            )
            loop = asyncio.get_running_loop()
            children: asyncio.Future[list[Event]] = loop.create_future()

            async def handler(_: Event) -> None:
                one = await bus.publish("child.one")
                many = await bus.publish_many([Event(event_type="child.two")])
                children.set_result([one, *many])

            await bus.subscribe("parent.x", handler)
            cid = uuid.uuid4()
            parent = await bus.publish_correlated("parent.x", None, cid)
            for child in await children:
                assert child.correlation_id == cid
                assert child.causation_id == parent.id

    run(main)


# -- publish_many waits for room off the loop ----------------------------------------------


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting the jobs that began."""

    def __init__(self, workers: int) -> None:
        super().__init__(max_workers=workers)
        self.began = threading.Semaphore(0)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def job() -> Any:
            self.began.release()
            return fn(*args, **kwargs)

        return super().submit(job)


def test_aclose_keeps_its_deadline_with_every_executor_thread_waiting_for_room() -> None:
    # AsyncEventBus.aclose: "holds one deadline for its flush and its close, as
    # close does".  Publishes waiting for room each hold an executor thread
    # for up to block_timeout; the close used to queue behind them there.
    async def test() -> None:
        executor = CountingExecutor(2)
        use_off_loop_threads(executor)
        bus = AsyncEventBus(EventConfig(block_timeout=60.0))
        gate = await fill_block_lane(bus, "full.*", "full.e")
        try:
            waiting = [asyncio.create_task(bus.publish("full.e", i)) for i in range(2, 6)]
            # Events 0 and 1 went through the executor; then both of its
            # threads took a publish that waits for room (2 and 3).
            with concurrent.futures.ThreadPoolExecutor(1) as side:
                for _ in range(4):
                    await asyncio.get_running_loop().run_in_executor(side, executor.began.acquire)
            await asyncio.wait_for(bus.aclose(timeout=0.5), WAIT)
            assert bus.sync.closed
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(o, BusClosedError) for o in outcomes), outcomes
        finally:
            gate.set()

    run(test)


def test_aclose_warns_with_the_timeout_it_was_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    # aclose(t) flushes first, then closes within the time left; the close's
    # warning said "flush timed out after 0.0s" (the time left), not t.
    async def test() -> None:
        bus = AsyncEventBus()
        entered, gate = threading.Event(), threading.Event()

        def held(event: Event) -> None:
            entered.set()
            gate.wait(WAIT)

        await bus.subscribe("held.*", held)
        try:
            await bus.publish("held.a", 1)
            await asyncio.to_thread(entered.wait, WAIT)
            with caplog.at_level(logging.WARNING, logger="actors"):
                await asyncio.wait_for(bus.aclose(timeout=0.25), WAIT)
        finally:
            gate.set()
        told = [r.getMessage() for r in caplog.records if "flush timed out" in r.getMessage()]
        assert told == ["close(): flush timed out after 0.25s; stopping anyway"], told

    run(test)


def test_publish_many_waits_for_room_off_the_loop() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=WAIT)) as bus:
            gate = await fill_block_lane(bus, "slow.x", "slow.x")
            call = asyncio.create_task(bus.publish_many([Event(event_type="slow.x", data=2)]))
            try:
                assert await runs_meanwhile(call)
            finally:
                gate.set()
            (event,) = await call
            assert event.data == 2
            assert event.sequence is not None

    run(main)


# -- request: off the loop, and bounded by its timeout ---------------------------------------


def test_request_waiting_for_room_is_bounded_by_its_timeout() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=WAIT)) as bus:
            gate = await fill_block_lane(bus, "svc.x", "svc.x")
            # The request's timeout is much shorter than block_timeout: it is
            # what ends the call, with the error of a request nobody answered.
            call = asyncio.create_task(bus.request("svc.x", 2, timeout=0.2))
            try:
                assert await runs_meanwhile(call)
                with pytest.raises(RequestTimeoutError):
                    await call
                assert bus.sync.pending_requests() == 0
            finally:
                gate.set()

    run(main)


def test_request_all_waiting_for_room_returns_no_replies_at_its_timeout() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=WAIT)) as bus:
            gate = await fill_block_lane(bus, "svc.x", "svc.x")
            call = asyncio.create_task(bus.request_all("svc.x", 2, timeout=0.2))
            try:
                assert await runs_meanwhile(call)
                assert await call == []
                assert bus.sync.pending_requests() == 0
            finally:
                gate.set()

    run(main)


def test_request_refused_for_room_raises_backpressure_as_the_sync_form() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=0.05)) as bus:
            gate = await fill_block_lane(bus, "svc.x", "svc.x")
            try:
                with pytest.raises(BackpressureError):
                    await bus.request("svc.x", 2, timeout=WAIT)
                assert bus.sync.pending_requests() == 0
            finally:
                gate.set()

    run(main)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"max_replies": 0}, ValueError),
        ({"max_replies": 1.5}, TypeError),
    ],
)
def test_request_arguments_are_checked_before_publishing(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            seen: list[Event] = []
            await bus.subscribe("a.*", seen.append)
            with pytest.raises(error):
                await bus.request_all("a.b", **kwargs)
            if "max_replies" not in kwargs:
                with pytest.raises(error):
                    await bus.request("a.b", **kwargs)
            await bus.flush(WAIT)
            assert seen == []

    run(main)


# -- streams end with the bus, and never hold it up ------------------------------------------


def test_an_unread_stream_drops_oldest_and_never_holds_up_flush() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            stream = bus.stream("t.*", capacity=5)
            for i in range(12):
                await bus.publish("t.a", i)
            await bus.flush(WAIT)  # the stream's put never waits for a reader
            assert [(await anext(stream)).data for _ in range(5)] == [7, 8, 9, 10, 11]
            assert stream.dropped == 7
            await bus.publish("t.a", 12)
            await bus.flush(WAIT)
            await stream.aclose()
            assert [e.data async for e in stream] == [12]

    run(main)


def test_drop_newest_stream_keeps_the_first_events() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            stream = bus.stream("t.*", capacity=3, overflow=OverflowStrategy.DROP_NEWEST)
            for i in range(6):
                await bus.publish("t.a", i)
            await bus.flush(WAIT)
        assert [e.data async for e in stream] == [0, 1, 2]
        assert stream.dropped == 3

    run(main)


def test_leaving_async_with_after_breaking_out_of_a_full_stream() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(buffer_size=10)) as bus:
            stream = bus.stream("t.*")
            for i in range(30):
                await bus.publish("t.a", i)
            async for event in stream:
                if event.data >= 22:
                    break  # not closed: the bus's aclose ends it
        assert [e.data async for e in stream] == list(range(23, 30))

    run(main)


def test_block_stream_paces_publishers_until_the_bus_closes() -> None:
    async def main() -> None:
        bus = AsyncEventBus()
        stream = bus.stream("t.*", capacity=2, overflow=OverflowStrategy.BLOCK)
        for i in range(3):  # one more than the stream holds: its put waits for the reader
            await bus.publish("t.a", i)
        await bus.aclose()  # delivers what was published, without waiting for a reader
        assert [e.data async for e in stream] == [0, 1, 2]
        assert stream.dropped == 0

    run(main)


def test_an_async_handler_whose_loop_closed_gives_its_events_up_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(EventConfig(handler_retries=0))
    try:

        async def subscribe() -> None:
            async def handler(event: Event) -> None:
                raise AssertionError("never runs: its loop is closed")

            bus.subscribe("x.*", handler)

        asyncio.run(subscribe())  # the handler's loop is closed when this returns
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bus.publish("x.a", 1).get(timeout=30)
            bus.flush(timeout=30)
            gc.collect()  # a coroutine never awaited is reported when it is collected
        assert [(d.event.data, d.attempts) for d in bus.dead_letters()] == [(1, 0)]
        assert not [w for w in caught if "never awaited" in str(w.message)]
        logged = [r.getMessage() for r in caplog.records if "x.a" in r.getMessage()]
        assert len(logged) == 1, logged
        assert "before any attempt" in logged[0], logged  # not "after 0 attempt(s)"
    finally:
        bus.close(timeout=30)


def test_an_event_whose_call_its_loops_end_cut_off_counts_that_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # asyncio.run ends while the handler awaits: its batch is cancelled.  The
    # dead letter said attempts 0 ("before any attempt"), though it ran.
    bus = EventBus(EventConfig(handler_retries=3))
    try:

        async def main() -> None:
            entered = asyncio.Event()

            async def handler(event: Event) -> None:
                entered.set()
                await asyncio.Event().wait()  # never set

            bus.subscribe("s.*", handler)
            bus.publish("s.q", 1).get(timeout=WAIT)
            await asyncio.wait_for(entered.wait(), WAIT)

        asyncio.run(main())
        [letter] = bus.dead_letters()
        assert (letter.attempts, letter.error_type) == (1, "CancelledError")
        logged = [r.getMessage() for r in caplog.records if "s.q" in r.getMessage()]
        assert len(logged) == 1, logged
        assert "after 1 attempt(s)" in logged[0], logged
        [sub] = bus.subscriptions()
        assert (sub.statistics().errors, sub.statistics().dead_letters) == (1, 1)
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("where", ["in its call", "waiting to retry"])
def test_an_event_whose_loop_is_closed_by_hand_keeps_its_attempts_and_last_error(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # docs/architecture.md: "The dead letter records the attempts (tries plus
    # retries) and the last attempt's error".  A loop stopped and closed by
    # hand (no task cancelled) gave the event up as never tried (attempts 0),
    # and one waiting to retry with the loop's error, its failure counted twice.
    monkeypatch.setattr(handling, "backoff_delay", lambda base, retry: 3600.0)
    bus = EventBus(EventConfig(handler_retries=5))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ran = threading.Event()
    try:

        async def handler(event: Event) -> None:
            ran.set()
            if where == "waiting to retry":
                raise ValueError("attempt 1 failed")
            await asyncio.Event().wait()  # suspended inside its call

        async def subscribe() -> Subscription:
            return bus.subscribe("job.*", handler, timeout=3600)

        sub = asyncio.run_coroutine_threadsafe(subscribe(), loop).result(WAIT)
        bus.publish("job.a", 1).get(timeout=WAIT)
        assert ran.wait(WAIT)
        loop.call_soon_threadsafe(loop.stop)  # runs once the batch awaits
        thread.join(WAIT)
        loop.close()
        assert wait_for(lambda: bus.dead_letters() != [])  # the loop watch's next look
        [letter] = bus.dead_letters()
        assert (letter.attempts, letter.error) == (
            (1, "ValueError: attempt 1 failed")
            if where == "waiting to retry"
            else (1, "RuntimeError: the handler's event loop closed first")
        )
        stats = sub.statistics()
        assert (stats.errors, stats.dead_letters, stats.timeouts, stats.in_flight) == (1, 1, 0, 0)
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("order", ["unsubscribe first", "close the loop first"])
def test_unsubscribing_a_batch_whose_loop_is_closed_by_hand_drops_it(order: str) -> None:
    # docs/architecture.md: a finished subscription shows no event in flight.
    # The actor stopped before its loop watch saw the closed loop: the batch
    # stayed in flight for ever, after close() too.
    bus = EventBus()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    entered = threading.Event()
    try:

        async def handler(event: Event) -> None:
            entered.set()
            await asyncio.Event().wait()  # suspended inside its call

        async def subscribe() -> Subscription:
            return bus.subscribe("job.*", handler)

        sub = asyncio.run_coroutine_threadsafe(subscribe(), loop).result(WAIT)
        for i in range(3):
            bus.publish("job.a", i).get(timeout=WAIT)
        assert entered.wait(WAIT)
        if order == "unsubscribe first":
            sub.unsubscribe()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()
        if order == "close the loop first":
            sub.unsubscribe()
        assert wait_for(lambda: sub.statistics().in_flight == 0)  # the loop watch's next look
        stats = sub.statistics()
        assert (stats.accepted, stats.dropped, stats.in_flight, stats.queued) == (3, 3, 0, 0)
        assert stats.dead_letters == 0
    finally:
        bus.close(timeout=WAIT)


def test_a_durable_subscription_awaited_on_a_loop_leaves_the_loop_running(tmp_path: Path) -> None:
    # SPEC section 8: awaiting never blocks the event loop.  A durable
    # subscription waits for the journal to load its checkpoint, through the
    # router; here the router is held (a filter runs on its turn) until a task
    # on the same loop lets it go.  Regression: the wait ran on the loop, so
    # that task ran only after the filter gave up (the order below reversed).
    async def main() -> list[str]:
        abus = AsyncEventBus(EventConfig(persistence_path=tmp_path / "j", threads=2))
        try:
            gate, entered = threading.Event(), threading.Event()

            def held(event: Event) -> bool:
                entered.set()
                return gate.wait(WAIT)

            await abus.subscribe("busy.*", lambda e: None, filter=held)
            abus.sync.publish("busy.x")
            assert entered.wait(WAIT)
            order: list[str] = []
            got: list[Event] = []
            loop = asyncio.get_running_loop()
            arrived = asyncio.Event()

            async def handler(event: Event) -> None:
                assert asyncio.get_running_loop() is loop  # run on the loop it came from
                got.append(event)
                arrived.set()

            async def release() -> None:
                order.append("released")
                gate.set()

            async def subscribe_durably() -> None:
                await abus.subscribe("job.*", handler, durable="d")
                order.append("subscribed")

            subscribing = asyncio.ensure_future(subscribe_durably())
            await asyncio.sleep(0)  # a turn of the loop: the subscription starts
            await release()
            await subscribing
            await abus.publish("job.run")
            await asyncio.wait_for(arrived.wait(), WAIT)
            assert [e.event_type for e in got] == ["job.run"]
            return order
        finally:
            await abus.aclose(timeout=WAIT)

    assert asyncio.run(main()) == ["released", "subscribed"]
