"""Handler policies: ``timeout=``, ``retry_backoff=`` and ``retries=`` on subscribe/respond.

Handlers that block wait on a ``threading.Event`` (or an ``asyncio.Event``)
that the test sets; nothing sleeps.  A timeout is observed through what it
causes: the WARNING it logs, the later events a moved-on subscription
delivers, the dead letter of a cancelled call.  Backoff delays are checked on
the delay function itself, with a seeded generator, without threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    Event,
    EventBus,
    EventConfig,
    RemoteHandlerError,
)
from actors._core import handling
from actors._core.policies import MAX_BACKOFF, backoff_delay
from tests._support import WAIT, Collector


class LogWatch(logging.Handler):
    """Set ``seen`` once a record containing ``text`` is logged at WARNING or above."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.seen.set()


@pytest.fixture
def timeout_log() -> Iterator[LogWatch]:
    watch = LogWatch("longer than its timeout")
    logger = logging.getLogger("actors.subscriber")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a handler blocked behind a failed test


# -- the backoff delay (no threads) --------------------------------------------------------


def test_backoff_delays_are_drawn_within_their_bounds() -> None:
    rng = random.Random(1234)
    for retry in range(1, 12):
        bound = min(MAX_BACKOFF, 0.1 * 2 ** (retry - 1))
        draws = [backoff_delay(0.1, retry, rng) for _ in range(500)]
        assert all(0.0 <= d <= bound for d in draws), retry
        # Full jitter: spread over the whole range, not bunched at its top.
        assert min(draws) < 0.1 * bound
        assert max(draws) > 0.9 * bound


def test_backoff_is_capped_and_never_overflows() -> None:
    rng = random.Random(7)
    assert MAX_BACKOFF == 30.0
    for retry in (10, 100, 10_000):
        delay = backoff_delay(1.0, retry, rng)
        assert 0.0 <= delay <= MAX_BACKOFF
        assert math.isfinite(delay)


def test_backoff_is_reproducible_with_a_seed_and_zero_retries_at_once() -> None:
    first = [backoff_delay(0.5, n, random.Random(99)) for n in range(1, 6)]
    second = [backoff_delay(0.5, n, random.Random(99)) for n in range(1, 6)]
    assert first == second
    assert backoff_delay(0.0, 3, random.Random(1)) == 0.0


# -- synchronous handlers past their timeout ----------------------------------------------


def test_a_sync_handler_past_its_timeout_is_counted_and_logged(
    timeout_log: LogWatch, release: threading.Event
) -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        entered = threading.Event()

        def slow(event: Event) -> None:
            entered.set()
            assert release.wait(WAIT)

        sub = bus.subscribe("job.*", slow, timeout=0.05)
        bus.publish("job.run", 1)
        assert entered.wait(WAIT)
        assert timeout_log.seen.wait(WAIT)
        # Still blocked: counted while the call runs, once.
        assert not release.is_set()
        assert sub.statistics().timeouts == 1
        metrics = bus.metrics()
        assert metrics.handler_timeouts == 1
        text = bus.prometheus()
        assert "llmspell_events_handler_timeouts_total 1" in text
        assert f'llmspell_events_subscription_timeouts{{id="{sub.id}",pattern="job.*"}} 1' in text
        assert sub.id in timeout_log.messages[0]
        release.set()
        bus.flush(WAIT)
        # On the shared pool the subscription waited; the late call counts as usual.
        stats = sub.statistics()
        assert stats.delivered == 1
        assert stats.errors == 0
        assert stats.timeouts == 1


def test_a_dedicated_subscription_moves_on_while_a_call_is_stuck(
    timeout_log: LogWatch, release: threading.Event
) -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        entered = threading.Event()
        later = Collector(3)
        late_return = threading.Event()

        def handler(event: Event) -> None:
            if event.data == 0:
                entered.set()
                assert release.wait(WAIT)
                late_return.set()
                raise RuntimeError("the late call fails: ignored")
            later(event)

        sub = bus.subscribe("job.*", handler, timeout=0.05, dedicated_thread=True)
        for i in range(4):
            bus.publish("job.run", i)
        assert entered.wait(WAIT)
        # The later events are delivered, in order, while the first call still blocks.
        assert later.done.wait(WAIT)
        assert not release.is_set()
        assert later.data == [1, 2, 3]
        assert sub.statistics().timeouts == 1  # counted before the next events could run
        assert timeout_log.seen.wait(WAIT)
        assert "moves on" in timeout_log.messages[0]
        bus.flush(WAIT)
        release.set()
        assert late_return.wait(WAIT)
        bus.publish("job.run", 4)
        bus.flush(WAIT)
        assert later.data == [1, 2, 3, 4]
        stats = sub.statistics()
        # The stuck call's event counts as delivered; its late error is ignored.
        assert stats.delivered == 5
        assert stats.errors == 0
        assert stats.dead_letters == 0
        assert stats.timeouts == 1
        assert bus.dead_letters() == []


def test_a_fast_handler_with_a_timeout_is_never_reported() -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        seen = Collector(200)
        sub = bus.subscribe("job.*", seen, timeout=6 * WAIT, dedicated_thread=True)
        for i in range(200):
            bus.publish("job.run", i)
        bus.flush(WAIT)
        assert seen.data == list(range(200))
        assert sub.statistics().timeouts == 0
        assert sub.statistics().delivered == 200


# -- async handlers past their timeout ------------------------------------------------------


def test_an_async_handler_past_its_timeout_is_cancelled_then_dead_lettered(
    timeout_log: LogWatch,
) -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        cancelled: list[object] = []
        after = Collector(1)

        async def forever(event: Event) -> None:
            if event.data == "ok":
                after(event)
                return
            try:
                await asyncio.Event().wait()  # nobody ever sets it
            except asyncio.CancelledError:
                cancelled.append(event.data)
                raise

        sub = bus.subscribe("job.*", forever, timeout=0.05, retries=2, retry_backoff=0)
        bus.publish("job.run", "stuck")
        bus.publish("job.run", "ok")
        bus.flush(WAIT)
        assert cancelled == ["stuck"] * 3  # one try, two retries, each cancelled
        assert after.data == ["ok"]
        letters = bus.dead_letters()
        assert len(letters) == 1
        letter = letters[0]
        assert letter.event.data == "stuck"
        assert letter.attempts == 3
        assert letter.error_type == "TimeoutError"
        assert "timeout of 0.05 s" in letter.error
        stats = sub.statistics()
        assert stats.timeouts == 3
        assert stats.errors == 3
        assert stats.delivered == 1
        assert stats.dead_letters == 1
        assert bus.metrics().handler_timeouts == 3
        assert timeout_log.seen.is_set()


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


def test_an_async_responder_past_its_timeout_replies_a_timeout_error() -> None:
    run(_responder_timeout)


async def _responder_timeout() -> None:
    async with AsyncEventBus(EventConfig(threads=2)) as bus:
        gate = asyncio.Event()

        async def responder(event: Event) -> Any:
            if event.data == "slow":
                await gate.wait()
            return {"answer": event.data}

        sub = await bus.respond("tool.ask", responder, timeout=0.05)
        with pytest.raises(RemoteHandlerError) as caught:
            await bus.request("tool.ask", "slow", timeout=WAIT)
        assert caught.value.remote_type == "TimeoutError"
        assert "timeout of 0.05 s" in caught.value.remote_message
        reply = await bus.request("tool.ask", "fast", timeout=WAIT)
        assert reply.data == {"answer": "fast"}
        await bus.flush(WAIT)
        stats = sub.statistics()
        assert stats.timeouts == 1
        assert stats.dead_letters == 0  # a responder's failures are error replies
        assert bus.dead_letters() == []


def test_a_dedicated_sync_responder_answers_others_while_one_call_is_stuck(
    release: threading.Event,
) -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        entered = threading.Event()

        def responder(event: Event) -> Any:
            if event.data == "slow":
                entered.set()
                assert release.wait(WAIT)
            return {"answer": event.data}

        sub = bus.respond("tool.ask", responder, timeout=0.05, dedicated_thread=True)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(bus.request, "tool.ask", "slow", timeout=WAIT)
            assert entered.wait(WAIT)
            # Answered once the subscription moved on past the stuck call.
            assert bus.request("tool.ask", "fast", timeout=WAIT).data == {"answer": "fast"}
            assert not slow.done()
            release.set()
            # The late call's reply still reaches its caller, who is still waiting.
            assert slow.result(timeout=WAIT).data == {"answer": "slow"}
        assert sub.statistics().timeouts == 1


# -- retries with backoff ----------------------------------------------------------------------


class Flaky:
    """Fails the first ``fail_times`` attempts at each event in ``failing``; records the rest."""

    def __init__(self, failing: set[object], fail_times: int) -> None:
        self.failing = failing
        self.fail_times = fail_times
        self.attempts: dict[object, int] = {}
        self.handled: list[object] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            n = self.attempts[event.data] = self.attempts.get(event.data, 0) + 1
        if event.data in self.failing and n <= self.fail_times:
            raise ValueError(f"attempt {n} at {event.data!r} fails")
        self.handled.append(event.data)


def test_retries_after_a_backoff_keep_the_subscription_s_order() -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        flaky = Flaky({"b"}, fail_times=2)
        sub = bus.subscribe("job.*", flaky, retries=2, retry_backoff=0.01)
        for item in ["a", "b", "c", "d"]:
            bus.publish("job.run", item)
        bus.flush(WAIT)
        assert flaky.handled == ["a", "b", "c", "d"]
        assert flaky.attempts["b"] == 3
        stats = sub.statistics()
        assert stats.errors == 2
        assert stats.delivered == 4
        assert stats.in_flight == 0
        assert bus.dead_letters() == []


def test_a_dead_letter_records_the_attempts_and_the_last_error() -> None:
    with EventBus(EventConfig(threads=2, handler_retries=0)) as bus:
        flaky = Flaky({"x"}, fail_times=99)
        after = Collector(1)
        sub = bus.subscribe("job.*", flaky, retries=3, retry_backoff=0.005)
        bus.subscribe("job.*", after)
        bus.publish("job.run", "x")
        bus.publish("job.run", "y")
        bus.flush(WAIT)
        assert flaky.attempts == {"x": 4, "y": 1}  # retries= overrides handler_retries
        assert flaky.handled == ["y"]
        (letter,) = bus.dead_letters()
        assert letter.attempts == 4
        assert letter.error_type == "ValueError"
        assert "attempt 4 at 'x' fails" in letter.error
        assert sub.statistics().errors == 4


def test_a_waiting_retry_holds_no_thread_and_later_events_wait_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pin the jittered delay to an hour: the retry is certainly still waiting
    # while the test looks (the draw itself is tested above).
    monkeypatch.setattr(handling, "backoff_delay", lambda base, retry, rng=None: 3600.0)
    # One handler thread, and no stand-in thread for a blocked turn within the test.
    with EventBus(EventConfig(threads=1, max_threads=1, blocking_threshold=600.0)) as bus:
        flaky = Flaky({"x"}, fail_times=1)
        failed = threading.Event()

        def first(event: Event) -> None:
            try:
                flaky(event)
            except ValueError:
                failed.set()
                raise

        waiting = bus.subscribe("job.*", first, retries=1)
        others = Collector(50)
        bus.subscribe("job.*", others)
        bus.publish("job.run", "x")
        assert failed.wait(WAIT)
        for i in range(49):
            bus.publish("job.run", i)
        # The only thread serves the other subscription while the retry waits...
        assert others.done.wait(WAIT)
        assert others.data == ["x", *range(49)]
        # ...and the waiting subscription keeps its later events behind the retry.
        stats = waiting.statistics()
        assert flaky.handled == []
        assert flaky.attempts == {"x": 1}
        assert stats.delivered == 0
        assert stats.errors == 1
        assert stats.queued + stats.in_flight == 50
        waiting.unsubscribe()


def test_async_retries_wait_on_the_loop_and_keep_order() -> None:
    run(_async_retries)


async def _async_retries() -> None:
    async with AsyncEventBus(EventConfig(threads=2)) as bus:
        attempts: dict[object, int] = {}
        handled: list[object] = []

        async def handler(event: Event) -> None:
            attempts[event.data] = attempts.get(event.data, 0) + 1
            if event.data == "a" and attempts["a"] <= 2:
                raise RuntimeError("not yet")
            handled.append(event.data)

        await bus.subscribe("job.*", handler, retries=2, retry_backoff=0.01)
        for item in ["a", "b", "c"]:
            await bus.publish("job.run", item)
        await bus.flush(WAIT)
        assert handled == ["a", "b", "c"]
        assert attempts == {"a": 3, "b": 1, "c": 1}


# -- arguments ----------------------------------------------------------------------------------


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": -1.0}, ValueError, "timeout"),
    ({"timeout": math.nan}, ValueError, "timeout"),
    ({"timeout": math.inf}, ValueError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout"),
    ({"timeout": True}, TypeError, "timeout"),
    ({"retry_backoff": -0.1}, ValueError, "retry_backoff"),
    ({"retry_backoff": math.inf}, ValueError, "retry_backoff"),
    ({"retry_backoff": "fast"}, TypeError, "retry_backoff"),
    ({"retries": -1}, ValueError, "retries"),
    ({"retries": 1.5}, TypeError, "retries"),
    ({"retries": False}, TypeError, "retries"),
]


@pytest.mark.parametrize(("options", "error", "name"), BAD)
@pytest.mark.parametrize("method", ["subscribe", "respond"])
def test_bad_policies_are_refused_before_anything_changes(
    bus: EventBus,
    options: dict[str, Any],
    error: type[Exception],
    name: str,
    method: str,
) -> None:
    call: Callable[..., Any] = getattr(bus, method)
    with pytest.raises(error, match=name):
        call("job.*", lambda event: None, **options)
    assert bus.subscriptions() == []
    assert bus.metrics().subscriptions == 0


def test_the_async_bus_refuses_bad_policies_too() -> None:
    run(_async_refuses)


async def _async_refuses() -> None:
    async with AsyncEventBus() as bus:
        with pytest.raises(ValueError, match="timeout"):
            await bus.subscribe("job.*", lambda event: None, timeout=0)
        assert bus.sync.subscriptions() == []
