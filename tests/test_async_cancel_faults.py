"""AsyncEventBus when the awaiting side gives up: cancellation, deadlines, closes, loops.

A coroutine awaiting ``request``, ``publish`` or ``flush`` may be cancelled
(by the caller, by ``asyncio.timeout``, by ``asyncio.run`` ending) at any
point.  Whatever happens, the pending-reply table keeps no entry for a caller
that stopped waiting, a reply that comes after its caller left is only an
event, an admitted publish is published, and the bus goes on working.  Every
wait is bounded by ``GUARD``, a hang guard whose expiry fails the test, never
a measure of speed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    OverflowStrategy,
    PersistentEventBus,
    RemoteHandlerError,
    RequestTimeoutError,
)
from tests._support import WAIT, finished, in_background, use_off_loop_threads, wait_for

GUARD = 30.0


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 2 * GUARD))


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds, checked off the loop; fail after ``WAIT``."""
    assert await asyncio.to_thread(wait_for, condition, WAIT), "the condition never held"


def cancel_after_first_step(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel each task once it has run up to its first await (FIFO of ``call_soon``)."""
    loop = asyncio.get_running_loop()
    for task in tasks:
        loop.call_soon(task.cancel)


def data(event: Event) -> Any:
    """Return the event's data, as the JSON value the test knows it to be."""
    return event.data


def make_bus(kind: str, tmp_path: Path) -> AsyncEventBus:
    if kind == "persistent":
        config = EventConfig(persistence_path=str(tmp_path / "j"))
        return AsyncEventBus(bus=PersistentEventBus(config))
    return AsyncEventBus()


KINDS = pytest.mark.parametrize("kind", ["memory", "persistent"])


@pytest.fixture
def bus_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """The ERROR records the bus's own loggers write during the test."""
    caplog.set_level(logging.ERROR, logger="actors")
    records: list[logging.LogRecord] = []
    yield records
    records.extend(r for r in caplog.records if r.name.startswith("actors"))


class HeldResponder:
    """A synchronous responder that holds the first request until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, request: Event) -> Any:
        self.entered.set()
        if not self.release.wait(3 * GUARD):
            raise AssertionError("the test never released the responder")
        with self.lock:
            self.seen.append(request.data)
        return {"echo": request.data}


# -- cancelling a request ---------------------------------------------------------------------


@KINDS
def test_cancelled_requests_leave_no_entry_and_their_late_replies_are_ignored(
    kind: str, tmp_path: Path, bus_errors: list[logging.LogRecord]
) -> None:
    count = 50

    async def main() -> None:
        async with make_bus(kind, tmp_path) as bus:
            held = HeldResponder()
            await bus.respond("held.ask", held, dedicated_thread=True)
            tasks = [
                asyncio.create_task(bus.request("held.ask", i, timeout=None)) for i in range(count)
            ]
            await until(lambda: bus.sync.pending_requests() == count and held.entered.is_set())
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
            assert bus.sync.pending_requests() == 0
            held.release.set()  # every reply now comes after its caller left
            await until(lambda: len(held.seen) == count)
            await bus.flush(timeout=GUARD)
            assert bus.sync.pending_requests() == 0
            reply = await bus.request("held.ask", "after", timeout=GUARD)
            assert reply.data == {"echo": "after"}
            assert bus.sync.pending_requests() == 0

    run(main)
    assert bus_errors == []


def test_a_request_cancelled_right_after_its_publish_leaves_no_entry() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            await bus.respond("fast.ask", lambda e: e.data)
            for _ in range(5):
                tasks = [
                    asyncio.create_task(bus.request("fast.ask", i, timeout=None))
                    for i in range(200)
                ]
                cancel_after_first_step(tasks)
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
                # Each either got its own reply first or was cancelled: nothing else.
                for i, outcome in enumerate(outcomes):
                    if not isinstance(outcome, asyncio.CancelledError):
                        assert isinstance(outcome, Event), outcome
                        assert outcome.data == i
                assert bus.sync.pending_requests() == 0
            await bus.flush(timeout=GUARD)
            assert (await bus.request("fast.ask", "ok", timeout=GUARD)).data == "ok"

    run(main)


def test_a_cancelled_request_all_leaves_no_entry_and_keeps_gathering_for_others() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            held = HeldResponder()
            await bus.respond("many.ask", held, dedicated_thread=True)
            await bus.respond("many.ask", lambda e: "quick")
            gather_forever = asyncio.create_task(bus.request_all("many.ask", 1, timeout=3 * GUARD))
            other = asyncio.create_task(
                bus.request_all("many.ask", 2, timeout=3 * GUARD, max_replies=2)
            )
            await until(lambda: bus.sync.pending_requests() == 2)
            gather_forever.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gather_forever
            assert bus.sync.pending_requests() == 1  # only the other one waits
            held.release.set()
            replies = await asyncio.wait_for(other, GUARD)
            assert sorted(str(r.data) for r in replies) == sorted(["quick", str({"echo": 2})])
            assert all(r.causation_id == replies[0].causation_id for r in replies)
            assert bus.sync.pending_requests() == 0

    run(main)


def test_a_request_cancelled_while_its_publish_waits_for_room_leaves_no_entry(
    bus_errors: list[logging.LogRecord],
) -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(block_timeout=3 * GUARD)) as bus:
            held = HeldResponder()
            await bus.respond(
                "room.ask", held, overflow=OverflowStrategy.BLOCK, capacity=1, dedicated_thread=True
            )
            first = asyncio.create_task(bus.request("room.ask", 0, timeout=None))
            await asyncio.to_thread(held.entered.wait, WAIT)
            second = asyncio.create_task(bus.request("room.ask", 1, timeout=None))
            await until(lambda: bus.sync.pending_requests() == 2)
            # The mailbox holds 1: this one waits for room in an executor thread.
            third = asyncio.create_task(bus.request("room.ask", 2, timeout=None))
            await until(lambda: bus.sync.pending_requests() == 3)
            for task in (second, third):
                task.cancel()
            for task in (second, third):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert bus.sync.pending_requests() == 1
            held.release.set()
            reply = await asyncio.wait_for(first, GUARD)
            assert reply.data == {"echo": 0}
            await bus.flush(timeout=GUARD)
            assert bus.sync.pending_requests() == 0
            assert (await bus.request("room.ask", 3, timeout=GUARD)).data == {"echo": 3}

    run(main)
    assert bus_errors == []


# -- deadlines: the caller's and the bus's ----------------------------------------------------


def test_asyncio_deadlines_raise_asyncio_timeout_and_the_bus_timeout_raises_its_own() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            held = HeldResponder()
            await bus.respond("slow.ask", held, dedicated_thread=True)
            try:
                with pytest.raises(TimeoutError) as outer:
                    async with asyncio.timeout(0):
                        await bus.request("slow.ask", 1, timeout=3 * GUARD)
                assert not isinstance(outer.value, RequestTimeoutError)
                assert bus.sync.pending_requests() == 0

                with pytest.raises(TimeoutError) as waited:
                    await asyncio.wait_for(bus.request("slow.ask", 2, timeout=3 * GUARD), 0)
                assert not isinstance(waited.value, RequestTimeoutError)
                assert bus.sync.pending_requests() == 0

                with pytest.raises(RequestTimeoutError):
                    await bus.request("slow.ask", 3, timeout=0)
                assert bus.sync.pending_requests() == 0

                # The bus's own deadline inside a longer asyncio one: the bus's error.
                with pytest.raises(RequestTimeoutError):
                    async with asyncio.timeout(3 * GUARD):
                        await bus.request("slow.ask", 4, timeout=0)
                assert await bus.request_all("slow.ask", 5, timeout=0) == []
                assert bus.sync.pending_requests() == 0
            finally:
                held.release.set()
            await bus.flush(timeout=GUARD)
            assert (await bus.request("slow.ask", 6, timeout=GUARD)).data == {"echo": 6}

    run(main)


# -- cancelling a publish or a flush ----------------------------------------------------------


@KINDS
def test_a_cancelled_publish_is_published_all_the_same(kind: str, tmp_path: Path) -> None:
    count = 300

    async def main() -> None:
        async with make_bus(kind, tmp_path) as bus:
            seen: list[Any] = []
            await bus.subscribe("pub.*", lambda e: seen.append(e.data))
            tasks = [asyncio.create_task(bus.publish("pub.x", i)) for i in range(count)]
            cancel_after_first_step(tasks)
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for i, outcome in enumerate(outcomes):
                if not isinstance(outcome, asyncio.CancelledError):
                    assert isinstance(outcome, Event), outcome
                    assert outcome.data == i
            await bus.flush(timeout=GUARD)
            assert sorted(seen) == list(range(count))
            if kind == "persistent":
                stored = await bus.query(EventQuery(event_types=["pub.x"]), timeout=GUARD)
                assert sorted(data(e) for e in stored) == list(range(count))
            after = await bus.publish("pub.x", "after")
            assert after.sequence is not None

    run(main)


def test_a_cancelled_flush_holds_nothing_and_a_later_flush_completes() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            gate = threading.Event()
            entered = threading.Event()

            def held(_: Event) -> None:
                entered.set()
                gate.wait(3 * GUARD)

            await bus.subscribe("held.x", held)
            await bus.publish("held.x")
            await asyncio.to_thread(entered.wait, WAIT)
            flushes = [asyncio.create_task(bus.flush()) for _ in range(20)]
            cancel_after_first_step(flushes)
            outcomes = await asyncio.gather(*flushes, return_exceptions=True)
            assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
            assert bus._holds.held(object) == []  # noqa: SLF001 - nothing awaited is left
            with pytest.raises(asyncio.TimeoutError):
                async with asyncio.timeout(0):
                    await bus.flush()
            assert bus._holds.held(object) == []  # noqa: SLF001
            gate.set()
            await bus.flush(timeout=GUARD)

    run(main)


# -- closing while much is awaited ------------------------------------------------------------


@KINDS
def test_aclose_ends_every_awaiter_with_a_result_or_bus_closed(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        bus = make_bus(kind, tmp_path)
        await bus.respond("echo.ask", lambda e: e.data)
        requests = [
            asyncio.create_task(bus.request("nobody.ask", i, timeout=None)) for i in range(200)
        ]
        answered = [
            asyncio.create_task(bus.request("echo.ask", i, timeout=None)) for i in range(200)
        ]
        publishes = [asyncio.create_task(bus.publish("pub.x", i)) for i in range(200)]
        flushes = [asyncio.create_task(bus.flush()) for _ in range(20)]
        await until(lambda: bus.sync.pending_requests() >= 200)
        await asyncio.wait_for(bus.aclose(), GUARD)
        everything: list[asyncio.Task[Any]] = [*requests, *answered, *publishes, *flushes]
        _, not_done = await asyncio.wait(everything, timeout=GUARD)
        assert not not_done, f"{len(not_done)} awaiters hung after aclose"
        for task in requests:
            assert isinstance(task.exception(), BusClosedError)
        for i, task in enumerate(answered):
            exc = task.exception()
            assert exc is None or isinstance(exc, BusClosedError), exc
            if exc is None:
                assert task.result().data == i
        for i, task in enumerate(publishes):
            assert task.exception() is None  # published before aclose began
            assert task.result().data == i
        for flush in flushes:
            assert flush.exception() is None or isinstance(flush.exception(), BusClosedError)
        assert bus.sync.pending_requests() == 0
        with pytest.raises(BusClosedError):
            await bus.request("echo.ask", 1, timeout=GUARD)
        with pytest.raises(BusClosedError):
            await bus.publish("pub.x", 1)
        with pytest.raises(BusClosedError):
            await bus.flush()

    run(main)


def test_requests_waiting_on_two_loops_both_end_when_the_bus_closes() -> None:
    bus = AsyncEventBus()
    waiting = threading.Barrier(3)

    async def ask(tag: str) -> list[Any]:
        tasks = [
            asyncio.create_task(bus.request("nobody.ask", f"{tag}{i}", timeout=None))
            for i in range(50)
        ]
        await asyncio.to_thread(waiting.wait, WAIT)
        return await asyncio.gather(*tasks, return_exceptions=True)

    first = in_background(lambda: asyncio.run(ask("a")))
    second = in_background(lambda: asyncio.run(ask("b")))
    waiting.wait(WAIT)
    assert wait_for(lambda: bus.sync.pending_requests() == 100)
    bus.sync.close(timeout=GUARD)
    for thread, outcome in (first, second):
        results = finished(thread, outcome, GUARD)
        assert isinstance(results, list)
        assert len(results) == 50
        assert all(isinstance(r, BusClosedError) for r in results), results
    assert bus.sync.pending_requests() == 0


# -- responders that fail, hang, ask again, or close the bus ----------------------------------


def test_an_async_responder_that_raises_or_never_returns_gives_typed_errors() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            never = asyncio.Event()

            async def broken(request: Event) -> Any:
                raise KeyError(request.data)

            async def stuck(request: Event) -> Any:
                await never.wait()

            await bus.respond("broken.ask", broken)
            stuck_sub = await bus.respond("stuck.ask", stuck, timeout=0.05)
            with pytest.raises(RemoteHandlerError) as raised:
                await bus.request("broken.ask", "k", timeout=None)
            assert raised.value.remote_type == "KeyError"
            with pytest.raises(RemoteHandlerError) as timed_out:
                await bus.request("stuck.ask", 1, timeout=None)
            assert timed_out.value.remote_type == "TimeoutError"
            assert stuck_sub.statistics().timeouts == 1
            assert bus.sync.pending_requests() == 0
            # A second one is not held up by the first (it was cancelled).
            with pytest.raises(RemoteHandlerError):
                await bus.request("stuck.ask", 2, timeout=None)
            assert stuck_sub.statistics().timeouts == 2
            assert bus.sync.pending_requests() == 0

    run(main)


def test_an_async_responder_may_await_nested_requests_on_the_same_bus() -> None:
    depth = 6

    async def main() -> None:
        async with AsyncEventBus() as bus:

            async def step(request: Event) -> Any:
                n = data(request)
                if n == 0:
                    return 0
                inner = await bus.request(f"level.{n - 1}", n - 1, timeout=None)
                return data(inner) + 1

            for n in range(depth + 1):
                await bus.respond(f"level.{n}", step)
            replies = await asyncio.gather(
                *(bus.request(f"level.{depth}", depth, timeout=None) for _ in range(20))
            )
            assert [r.data for r in replies] == [depth] * 20
            assert bus.sync.pending_requests() == 0

    run(main)


def test_an_async_responder_that_closes_the_bus_ends_every_waiting_request() -> None:
    async def main() -> None:
        bus = AsyncEventBus()

        async def closer(_: Event) -> Any:
            await bus.aclose()
            return "too late"

        await bus.respond("close.ask", closer)
        others = [
            asyncio.create_task(bus.request("nobody.ask", i, timeout=None)) for i in range(50)
        ]
        await until(lambda: bus.sync.pending_requests() == 50)
        with pytest.raises(BusClosedError):
            await asyncio.wait_for(bus.request("close.ask", timeout=None), GUARD)
        outcomes = await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), GUARD)
        assert all(isinstance(o, BusClosedError) for o in outcomes)
        assert bus.sync.pending_requests() == 0
        await asyncio.wait_for(bus.aclose(), GUARD)  # a second close returns
        assert bus.sync.closed

    run(main)


# -- the loop ends, or another loop uses the bus ----------------------------------------------


def test_asyncio_run_ending_with_work_in_flight_leaves_the_bus_usable(
    tmp_path: Path, bus_errors: list[logging.LogRecord]
) -> None:
    config = EventConfig(persistence_path=str(tmp_path / "j"))
    bus = AsyncEventBus(bus=PersistentEventBus(config))
    held = HeldResponder()
    gate = threading.Event()
    entered = threading.Event()

    def slow(_: Event) -> None:
        entered.set()
        gate.wait(3 * GUARD)

    bus.sync.respond("held.ask", held, dedicated_thread=True)
    bus.sync.subscribe("slow.x", slow)
    try:

        async def leave_work_behind() -> None:
            for i in range(100):
                asyncio.create_task(bus.request("held.ask", i, timeout=None))  # noqa: RUF006
                asyncio.create_task(bus.publish("pub.x", i))  # noqa: RUF006
            await bus.publish("slow.x")
            await asyncio.to_thread(entered.wait, WAIT)
            for _ in range(20):
                asyncio.create_task(bus.flush())  # noqa: RUF006
            await until(lambda: bus.sync.pending_requests() == 100)
            # Returning ends the loop: asyncio.run cancels every task above.

        asyncio.run(leave_work_behind())
        assert bus.sync.pending_requests() == 0
        held.release.set()  # late replies, for callers whose loop is closed
        gate.set()  # the flushes complete after their loop closed
        bus.sync.flush(timeout=GUARD)
        assert len(held.seen) == 100

        async def use_again() -> list[Any]:
            reply = await bus.request("held.ask", "again", timeout=GUARD)
            stored = await bus.query(EventQuery(event_types=["pub.x"]), timeout=GUARD)
            await bus.flush(timeout=GUARD)
            return [reply.data, sorted(data(e) for e in stored)]

        assert asyncio.run(use_again()) == [{"echo": "again"}, list(range(100))]
        assert bus.sync.pending_requests() == 0
    finally:
        held.release.set()
        gate.set()
        bus.sync.close(timeout=GUARD)
    assert bus_errors == []


def test_requests_from_another_loop_and_a_thread_reach_a_responder_on_this_loop() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            loop = asyncio.get_running_loop()
            ran_on: set[asyncio.AbstractEventLoop] = set()

            async def answer(request: Event) -> Any:
                ran_on.add(asyncio.get_running_loop())
                return request.data

            await bus.respond("loop.ask", answer)

            async def from_other_loop() -> list[Any]:
                replies = await asyncio.gather(
                    *(bus.request("loop.ask", f"b{i}", timeout=GUARD) for i in range(100))
                )
                return [r.data for r in replies]

            def from_thread() -> list[Any]:
                return [
                    bus.sync.request("loop.ask", f"t{i}", timeout=GUARD).data for i in range(50)
                ]

            other = asyncio.to_thread(asyncio.run, from_other_loop())
            blocking = asyncio.to_thread(from_thread)
            here = asyncio.gather(
                *(bus.request("loop.ask", f"a{i}", timeout=GUARD) for i in range(100))
            )
            b, t, a = await asyncio.gather(other, blocking, here)
            assert b == [f"b{i}" for i in range(100)]
            assert t == [f"t{i}" for i in range(50)]
            assert [r.data for r in a] == [f"a{i}" for i in range(100)]
            assert ran_on == {loop}
            assert bus.sync.pending_requests() == 0

    run(main)


# -- many at once ------------------------------------------------------------------------------


@pytest.mark.parametrize("responder", ["sync", "async"])
def test_two_thousand_concurrent_requests_each_get_their_own_reply_once(responder: str) -> None:
    count = 2000

    async def main() -> None:
        async with AsyncEventBus() as bus:
            asked: list[int] = []
            lock = threading.Lock()

            def sync_answer(request: Event) -> Any:
                with lock:
                    asked.append(data(request))
                return {"n": request.data, "id": str(request.id)}

            async def async_answer(request: Event) -> Any:
                return sync_answer(request)

            await bus.respond("many.ask", sync_answer if responder == "sync" else async_answer)
            replies = await asyncio.gather(
                *(bus.request("many.ask", i, timeout=None) for i in range(count))
            )
            assert [data(r)["n"] for r in replies] == list(range(count))
            assert all(data(r)["id"] == str(r.causation_id) for r in replies)
            assert len({r.id for r in replies}) == count
            assert sorted(asked) == list(range(count))
            assert bus.sync.pending_requests() == 0

    run(main)


def test_concurrent_requests_with_a_quarter_cancelled_answer_the_rest_correctly() -> None:
    count = 2000

    async def main() -> None:
        async with AsyncEventBus() as bus:
            await bus.respond("mix.ask", lambda e: {"n": e.data, "id": str(e.id)})
            tasks = [
                asyncio.create_task(bus.request("mix.ask", i, timeout=None)) for i in range(count)
            ]
            cancel_after_first_step(tasks[::4])
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for i, outcome in enumerate(outcomes):
                if i % 4 and not isinstance(outcome, Event):
                    raise AssertionError(f"request {i} ended with {outcome!r}")
                if isinstance(outcome, Event):
                    assert data(outcome)["n"] == i
                    assert data(outcome)["id"] == str(outcome.causation_id)
                else:
                    assert isinstance(outcome, asyncio.CancelledError)
            assert bus.sync.pending_requests() == 0
            await bus.flush(timeout=GUARD)
            assert data(await bus.request("mix.ask", -1, timeout=GUARD))["n"] == -1

    run(main)


def test_a_sync_bus_shared_with_a_loop_keeps_no_entry_after_cancels() -> None:
    bus = EventBus()
    try:
        bus.respond("share.ask", lambda e: e.data)

        async def main() -> None:
            abus = AsyncEventBus(bus=bus)
            tasks = [
                asyncio.create_task(abus.request("share.ask", i, timeout=None)) for i in range(300)
            ]
            cancel_after_first_step(tasks[1::2])
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for i, outcome in enumerate(outcomes[::2]):
                assert isinstance(outcome, Event), outcome
                assert outcome.data == 2 * i

        asyncio.run(main())
        assert bus.pending_requests() == 0
        assert bus.request("share.ask", "sync", timeout=GUARD).data == "sync"
    finally:
        bus.close(timeout=GUARD)


# -- deadlines racing replies ------------------------------------------------------------------


def test_deadlines_racing_replies_give_the_own_reply_or_a_timeout_and_leave_no_entry(
    bus_errors: list[logging.LogRecord],
) -> None:
    count = 1000

    async def main() -> None:
        async with AsyncEventBus() as bus:
            await bus.respond("race.ask", lambda e: {"n": e.data, "id": str(e.id)})

            async def bus_deadline(i: int) -> Any:
                return await bus.request("race.ask", i, timeout=0.001)

            async def loop_deadline(i: int) -> Any:
                async with asyncio.timeout(0.001):
                    return await bus.request("race.ask", i, timeout=3 * GUARD)

            for ask, expected in ((bus_deadline, RequestTimeoutError), (loop_deadline, None)):
                outcomes = await asyncio.gather(
                    *(ask(i) for i in range(count)), return_exceptions=True
                )
                for i, outcome in enumerate(outcomes):
                    if isinstance(outcome, Event):
                        assert data(outcome)["n"] == i
                        assert data(outcome)["id"] == str(outcome.causation_id)
                    elif expected is None:  # asyncio's own, not the bus's
                        assert type(outcome) is TimeoutError, outcome
                    else:
                        assert isinstance(outcome, expected), outcome
                assert bus.sync.pending_requests() == 0
            await bus.flush(timeout=GUARD)
            assert bus.sync.pending_requests() == 0
            assert data(await bus.request("race.ask", -1, timeout=GUARD))["n"] == -1

    run(main)
    assert bus_errors == []


def test_a_caller_cancelled_during_a_nested_request_leaves_both_tables_clean() -> None:
    async def main() -> None:
        async with AsyncEventBus() as bus:
            held = HeldResponder()
            inner_started = asyncio.Event()
            outer_done = asyncio.Event()

            async def outer(request: Event) -> Any:
                inner_started.set()
                try:
                    inner = await bus.request("inner.ask", request.data, timeout=3 * GUARD)
                    return data(inner)
                finally:
                    outer_done.set()

            await bus.respond("outer.ask", outer)
            await bus.respond("inner.ask", held, dedicated_thread=True)
            caller = asyncio.create_task(bus.request("outer.ask", 7, timeout=None))
            await inner_started.wait()
            await until(lambda: bus.sync.pending_requests() == 2)
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            # The responder's own request goes on: only the caller left.
            assert bus.sync.pending_requests() == 1
            held.release.set()
            await asyncio.wait_for(outer_done.wait(), GUARD)
            await bus.flush(timeout=GUARD)
            assert bus.sync.pending_requests() == 0
            reply = await bus.request("outer.ask", 8, timeout=GUARD)
            assert reply.data == {"echo": 8}

    run(main)


# -- a durable subscribe cancelled while it runs off the loop -------------------------------------


def test_a_cancelled_durable_subscribe_leaves_no_subscription_behind(tmp_path: Path) -> None:
    # The subscribe runs on in the executor after its await was cancelled;
    # the subscription it made must not live on unseen, or a retry under the
    # same name would get every event twice.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        one = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        use_off_loop_threads(one)  # FIFO: a later job runs after the subscribe
        bus = AsyncEventBus(bus=PersistentEventBus(EventConfig(persistence_path=tmp_path / "j")))
        got: list[Any] = []

        async def handler(event: Event) -> None:
            got.append(event.data)

        attempt = asyncio.create_task(bus.subscribe("x.*", handler, durable="worker"))
        cancel_after_first_step([attempt])  # its subscribe runs on in the executor
        with pytest.raises(asyncio.CancelledError):
            await attempt
        await loop.run_in_executor(one, lambda: None)  # the subscribe's job has ended (FIFO)
        assert bus.sync.metrics().subscriptions == 0
        await bus.publish("x.y", 1)
        sub = await bus.subscribe("x.*", handler, durable="worker")  # the caller retries
        await bus.publish("x.y", 2)
        await bus.flush(timeout=GUARD)
        assert got.count(2) == 1
        assert bus.sync.metrics().subscriptions == 1
        sub.unsubscribe()
        await bus.aclose()

    run(main)


# -- a close that is itself cancelled ----------------------------------------------------------


def test_a_cancelled_aclose_still_closes_the_bus_at_once_and_ends_every_waiter() -> None:
    # As trio's aclose: cancelled, it closes all the same, without waiting any
    # more; never a bus left half-closed (streams ended, the bus still open).
    async def main() -> None:
        bus = AsyncEventBus()
        gate = threading.Event()
        entered = threading.Event()

        def held(_: Event) -> None:
            entered.set()
            gate.wait(3 * GUARD)

        await bus.subscribe("held.x", held)
        stream = bus.stream("s.*")
        await bus.publish("s.x", 1)
        waiting = asyncio.create_task(bus.request("nobody.ask", timeout=None))
        await until(lambda: bus.sync.pending_requests() == 1)
        await bus.publish("held.x")
        await asyncio.to_thread(entered.wait, WAIT)
        closing = asyncio.create_task(bus.aclose())
        cancel_after_first_step([closing])  # while its flush waits for the held handler
        with pytest.raises(asyncio.CancelledError):
            await closing
        await until(lambda: bus.sync.closed)
        with pytest.raises(BusClosedError):
            await asyncio.wait_for(waiting, GUARD)
        with pytest.raises(BusClosedError):
            await bus.publish("s.x", 2)
        got = [event.data async for event in stream]  # ends: the bus closed
        assert got == [1]
        await asyncio.wait_for(bus.aclose(), GUARD)  # a later aclose returns at once
        gate.set()
        assert bus.sync.pending_requests() == 0

    run(main)


def test_a_cancelled_aclose_leaves_another_aclose_under_way_to_drain() -> None:
    # The close under way has its own deadline: the impatient caller's
    # cancellation must not stop the bus at once under it.
    async def main() -> None:
        bus = AsyncEventBus()
        gate = threading.Event()
        handled: list[int] = []

        def held(event: Event) -> None:
            gate.wait(3 * GUARD)
            handled.append(event.data)

        await bus.subscribe("held.x", held)
        for i in range(6):
            await bus.publish("held.x", i)
        patient = asyncio.create_task(bus.aclose(timeout=3 * GUARD))
        impatient = asyncio.create_task(bus.aclose())
        cancel_after_first_step([impatient])  # both are waiting for the held handler
        with pytest.raises(asyncio.CancelledError):
            await impatient
        assert not patient.done()
        gate.set()
        await asyncio.wait_for(patient, 2 * GUARD)
        assert bus.sync.closed
        assert handled == [0, 1, 2, 3, 4, 5]

    run(main)


def test_a_close_racing_a_storm_of_requests_from_two_loops_leaves_none_waiting() -> None:
    """Requests sent while another thread closes the bus: each ends, none is left waiting."""
    per_loop = 500
    bus = AsyncEventBus()
    bus.sync.respond("storm.ask", lambda e: e.data)
    go = threading.Barrier(3)

    async def storm(tag: str) -> list[Any]:
        await asyncio.to_thread(go.wait, WAIT)
        tasks = [
            asyncio.create_task(bus.request("storm.ask", f"{tag}{i}", timeout=None))
            for i in range(per_loop)
        ]
        tasks += [
            asyncio.create_task(bus.request("nobody.ask", f"{tag}{i}", timeout=None))
            for i in range(per_loop)
        ]
        _, not_done = await asyncio.wait(tasks, timeout=GUARD)
        assert not not_done, f"{len(not_done)} requests still wait after the close"
        return [t.exception() or t.result() for t in tasks]

    first = in_background(lambda: asyncio.run(storm("a")))
    second = in_background(lambda: asyncio.run(storm("b")))
    go.wait(WAIT)
    assert wait_for(lambda: bus.sync.pending_requests() >= 100)  # in the midst of the storm
    bus.sync.close(timeout=GUARD)
    for tag, (thread, outcome) in zip("ab", (first, second), strict=True):
        results = finished(thread, outcome, 2 * GUARD)
        assert isinstance(results, list), results
        for i, result in enumerate(results[:per_loop]):
            if isinstance(result, Event):
                assert result.data == f"{tag}{i}"
            else:
                assert isinstance(result, BusClosedError), result
        assert all(isinstance(r, BusClosedError) for r in results[per_loop:])
    assert bus.sync.pending_requests() == 0


def test_cancelling_every_other_awaitable_holds_nothing_and_loses_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with make_bus("persistent", tmp_path) as bus:
            cid = uuid.uuid4()
            stream = bus.stream("many.*")
            reader = asyncio.create_task(anext(stream))
            batch = [Event(event_type="many.x", data=i, correlation_id=cid) for i in range(200)]
            tasks: list[asyncio.Task[Any]] = [
                asyncio.create_task(bus.publish_many(batch)),
                asyncio.create_task(bus.query(EventQuery(event_types=["many.x"]))),
                asyncio.create_task(bus.get_correlated(cid)),
                asyncio.create_task(bus.trace(cid)),
                reader,
            ]
            cancel_after_first_step(tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            assert reader.cancelled()  # nothing was published before its first step
            await bus.flush(timeout=GUARD)
            assert [h for _, h in bus._holds.held(object) if h is not stream.inbox] == []  # noqa: SLF001
            stored = await bus.query(EventQuery(event_types=["many.x"]), timeout=GUARD)
            assert sorted(data(e) for e in stored) == list(range(200))
            correlated = await bus.get_correlated(cid, timeout=GUARD)
            assert [data(e) for e in correlated] == list(range(200))
            # The stream kept every event for its next reader.
            assert [data(await anext(stream)) for _ in range(200)] == list(range(200))
            await stream.aclose()

    run(main)


def test_requests_awaited_on_a_loop_closed_by_hand_leave_the_table_after_their_timeout() -> None:
    """A loop closed by hand (not ``asyncio.run``) strands the requests awaited on it:
    their callers never come back to close their entries.  The table ends each one as
    its timeout would, once past it, so the bound is not used up by callers long gone."""
    bus = EventBus()
    abus = AsyncEventBus(bus=bus)
    release = threading.Event()
    bus.respond("job.ask", lambda e: release.wait(WAIT) and e.data)
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[Any]] = []

    async def ask_all() -> None:
        tasks.extend(loop.create_task(abus.request("job.ask", i, timeout=0.05)) for i in range(10))
        while bus.pending_requests() < len(tasks):
            await asyncio.sleep(0)  # each task's first steps: its entry opens

    try:
        loop.run_until_complete(ask_all())
    finally:
        loop.close()  # the ten tasks stay pending for good
    try:
        assert not any(t.done() for t in tasks)
        assert wait_for(lambda: bus.pending_requests() == 0), bus.pending_requests()
        release.set()
        bus.flush(timeout=WAIT)  # the late replies find no one: ignored
        assert bus.pending_requests() == 0
        assert bus.request("job.ask", "again", timeout=WAIT).data == "again"
    finally:
        release.set()
        bus.close(timeout=WAIT)
