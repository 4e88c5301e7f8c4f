"""Subscribers (``actors._core.subscriber``): handler failures, retries, dead letters,
a subscription's life cycle, and subscribe's argument checks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from actors import DeadLetter, Event, EventBus, EventBusError, EventConfig, InvalidPatternError
from tests._support import WAIT, Collector, Gate, wait_for


class Flaky:
    """Raise on every event whose data is in ``bad``, ``fail_times`` times each (None: always)."""

    def __init__(self, bad: set[object], fail_times: int | None = None) -> None:
        self.bad = bad
        self.fail_times = fail_times
        self.attempts: dict[object, int] = {}
        self.handled: list[object] = []

    def __call__(self, event: Event) -> None:
        n = self.attempts.get(event.data, 0) + 1
        self.attempts[event.data] = n
        if event.data in self.bad and (self.fail_times is None or n <= self.fail_times):
            raise RuntimeError(f"cannot handle {event.data!r}")
        self.handled.append(event.data)


def test_a_failing_handler_keeps_its_subscription_and_the_bus(bus: EventBus) -> None:
    flaky = Flaky({2, 4})
    sub = bus.subscribe("h.*", flaky)
    for i in range(6):
        bus.publish("h.e", i)
    bus.flush(WAIT)
    assert flaky.handled == [0, 1, 3, 5]
    stats = sub.statistics()
    assert stats.delivered == 4
    assert stats.errors == 2
    assert sub.active
    # Still alive: later events arrive, and the bus still takes publishes.
    bus.publish("h.e", 6).get(timeout=WAIT)
    bus.flush(WAIT)
    assert flaky.handled[-1] == 6


def test_dead_letter_names_the_error_type(bus: EventBus) -> None:
    class Custom(Exception):
        pass

    def handler(event: Event) -> None:
        raise Custom("custom failure")

    bus.subscribe("h.*", handler)
    bus.publish("h.e")
    bus.flush(WAIT)
    letters = bus.dead_letters()
    assert [d.error_type for d in letters] == ["Custom"]
    assert "custom failure" in letters[0].error


def test_a_failing_handler_does_not_affect_another_subscription(bus: EventBus) -> None:
    def always_fails(event: Event) -> None:
        raise ValueError("broken")

    healthy = Collector()
    broken = bus.subscribe("h.*", always_fails)
    ok = bus.subscribe("h.*", healthy)
    for i in range(100):
        bus.publish("h.e", i)
    bus.flush(WAIT)
    assert healthy.data == list(range(100))
    assert ok.statistics().errors == 0
    assert broken.statistics().errors == 100
    assert broken.statistics().delivered == 0
    assert bus.metrics().dead_letters == 100


def test_retries_then_success_is_no_dead_letter() -> None:
    with EventBus(EventConfig(handler_retries=2)) as b:
        flaky = Flaky({"x"}, fail_times=2)
        sub = b.subscribe("h.*", flaky)
        b.publish("h.e", "x")
        b.flush(WAIT)
        assert flaky.attempts["x"] == 3
        assert flaky.handled == ["x"]
        stats = sub.statistics()
        assert stats.errors == 2
        assert stats.delivered == 1
        assert b.dead_letters() == []
        assert b.metrics().dead_letters == 0


def test_retries_exhausted_make_a_dead_letter() -> None:
    with EventBus(EventConfig(handler_retries=2)) as b:
        notices = Collector(1)
        b.subscribe("$bus.deadletter", notices)
        flaky = Flaky({"x"})
        sub = b.subscribe("h.*", flaky)
        event = b.publish("h.e", "x", source="test").get(timeout=WAIT)
        b.flush(WAIT)
        assert flaky.attempts["x"] == 3  # one try plus two retries
        assert sub.statistics().errors == 3
        assert notices.done.wait(WAIT)

        letter = notices.events[0]
        assert letter.event_type == "$bus.deadletter"
        assert letter.causation_id == event.id
        assert isinstance(letter.data, dict)
        assert letter.data["subscription"] == sub.id
        assert Event.from_dict(letter.data["event"]) == event
        assert letter.data["error_type"] == "RuntimeError"
        assert "cannot handle 'x'" in letter.data["error"]
        assert letter.data["attempts"] == 3

        letters = b.dead_letters()
        assert len(letters) == 1
        dead = letters[0]
        assert isinstance(dead, DeadLetter)
        assert dead.subscription_id == sub.id
        assert dead.event == event
        assert dead.error_type == "RuntimeError"
        assert "cannot handle 'x'" in dead.error
        assert dead.attempts == 3
        metrics = b.metrics()
        assert metrics.dead_letters == 1
        assert metrics.handler_errors == 3


def test_dead_letter_keeps_the_correlation(bus: EventBus) -> None:
    notices = Collector(1)
    bus.subscribe("$bus.deadletter", notices)
    bus.subscribe("h.*", Flaky({"x"}))
    cid = uuid.uuid4()
    bus.publish_correlated("h.e", "x", cid)
    assert notices.done.wait(WAIT)
    assert notices.events[0].correlation_id == cid


def test_dead_letters_are_not_seen_by_wildcard_subscribers(bus: EventBus) -> None:
    everything = Collector()
    bus.subscribe("**", everything)
    bus.subscribe("h.*", Flaky({"x"}))
    bus.publish("h.e", "x")
    bus.flush(WAIT)
    bus.flush(WAIT)  # the announcement is published while the first flush completes
    assert [e.event_type for e in everything.events] == ["h.e"]
    assert len(bus.dead_letters()) == 1


def test_each_failing_subscription_gets_its_own_dead_letter(bus: EventBus) -> None:
    first = bus.subscribe("h.*", Flaky({"x"}))
    second = bus.subscribe("h.**", Flaky({"x"}))
    event = bus.publish("h.e", "x").get(timeout=WAIT)
    bus.flush(WAIT)
    letters = bus.dead_letters()
    assert sorted(d.subscription_id for d in letters) == sorted([first.id, second.id])
    assert all(d.event.id == event.id for d in letters)


def test_a_handler_error_inside_an_async_handler_is_a_dead_letter() -> None:
    with EventBus(EventConfig(handler_retries=1)) as b:
        attempts: list[object] = []

        async def handler(event: Event) -> None:
            attempts.append(event.data)
            raise KeyError("async failure")

        after = Collector()
        sub = b.subscribe("h.*", handler)
        b.subscribe("h.*", after)
        b.publish("h.e", 1)
        b.publish("h.e", 2)
        b.flush(WAIT)
        assert attempts == [1, 1, 2, 2]
        assert sub.statistics().errors == 4
        assert [d.event.data for d in b.dead_letters()] == [1, 2]
        assert after.data == [1, 2]


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, GeneratorExit, BaseException])
def test_a_handler_raising_a_base_exception_is_a_failure_like_any_other(
    bus: EventBus, raised: type[BaseException]
) -> None:
    handled: list[object] = []

    def handler(event: Event) -> None:
        if event.data == 1:
            raise raised("not an exception")
        handled.append(event.data)

    sub = bus.subscribe("h.*", handler)
    for i in range(4):
        bus.publish("h.e", i)
    bus.flush(WAIT)  # would time out: the subscription kept its turn for ever
    assert handled == [0, 2, 3]
    stats = sub.statistics()
    assert (stats.delivered, stats.errors, stats.dead_letters, stats.in_flight) == (3, 1, 1, 0)
    assert [d.error_type for d in bus.dead_letters()] == [raised.__name__]
    bus.publish("h.e", 4)
    bus.flush(WAIT)
    assert handled[-1] == 4


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_an_async_handler_raising_a_base_exception_leaves_the_loop_running(
    raised: type[BaseException],
) -> None:
    with EventBus() as b:
        seen: list[object] = []

        async def handler(event: Event) -> None:
            if event.data == 1:
                raise raised("not an exception")
            seen.append(event.data)

        other = Collector()

        async def on_other(event: Event) -> None:
            other(event)

        sub = b.subscribe("h.*", handler)
        b.subscribe("o.*", on_other)  # on the same loop, which must survive
        for i in range(3):
            b.publish("h.e", i)
        b.flush(WAIT)
        b.publish("o.e", "after")
        b.flush(WAIT)
        assert seen == [0, 2]
        assert other.data == ["after"]
        assert (sub.statistics().errors, sub.statistics().in_flight) == (1, 0)


def test_a_cancelled_error_escaping_an_async_handler_is_its_failure() -> None:
    # What a handler awaiting a task that someone else cancels lets out.
    with EventBus() as b:
        seen: list[object] = []

        async def handler(event: Event) -> None:
            if event.data == 1:
                inner = asyncio.get_running_loop().create_future()
                inner.cancel()
                await inner
            seen.append(event.data)

        sub = b.subscribe("h.*", handler)
        for i in range(3):
            b.publish("h.e", i)
        b.flush(WAIT)
        b.publish("h.e", 3)
        b.flush(WAIT)
        assert seen == [0, 2, 3]
        assert [d.error_type for d in b.dead_letters()] == ["CancelledError"]
        assert sub.statistics().in_flight == 0


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ValueError):
        EventConfig(handler_retries=-1)


def test_async_retries_then_success_is_no_dead_letter() -> None:
    with EventBus(EventConfig(handler_retries=2)) as b:
        failures: dict[object, int] = {}
        seen: list[object] = []

        async def handler(event: Event) -> None:
            failures[event.data] = failures.get(event.data, 0) + 1
            if failures[event.data] <= 2:
                raise RuntimeError("not yet")
            seen.append(event.data)

        sub = b.subscribe("h.*", handler)
        b.publish("h.e", "x")
        b.flush(WAIT)
        assert failures == {"x": 3}
        assert seen == ["x"]
        assert sub.statistics().errors == 2
        assert sub.statistics().delivered == 1
        assert b.dead_letters() == []


# -- a subscription's life cycle ------------------------------------------------------


def test_events_discarded_at_unsubscribe_count_as_dropped_not_in_flight(bus: EventBus) -> None:
    gate = Gate()
    sub = bus.subscribe("h.*", gate, dedicated_thread=True)
    bus.publish("h.e", 0)
    assert gate.entered.wait(WAIT)
    for i in range(1, 6):
        bus.publish("h.e", i).get(timeout=WAIT)
    assert wait_for(lambda: sub.statistics().queued == 5)
    sub.unsubscribe()
    gate.release.set()
    assert wait_for(lambda: sub.statistics().in_flight == 0)
    stats = sub.statistics()
    assert stats.queued == 0
    assert stats.accepted == 6
    assert stats.delivered == 1  # the event its handler was running when unsubscribe returned
    assert stats.dropped == 5  # queued then: discarded, never handled


def test_active_is_false_as_soon_as_unsubscribe_returns(bus: EventBus) -> None:
    sub = bus.subscribe("a.*", lambda e: None)
    assert sub.active
    sub.unsubscribe()
    assert not sub.active
    assert bus.subscriptions() == []
    sub.unsubscribe()  # idempotent
    assert not sub.active


def test_subscriptions_are_inactive_after_close() -> None:
    b = EventBus()
    sub = b.subscribe("a.*", lambda e: None)
    b.close(WAIT)
    assert not sub.active


BAD_SUBSCRIBE_ARGUMENTS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"pattern": "a..b"}, InvalidPatternError),
    ({"handler": 3}, TypeError),
    ({"filter": "x"}, TypeError),
    ({"capacity": 0}, ValueError),
    ({"capacity": "3"}, TypeError),
    ({"overflow": "sideways"}, ValueError),
    ({"from_sequence": "1"}, TypeError),
    ({"durable": 5}, TypeError),
    ({"durable": "w"}, EventBusError),  # a bus without journal
    ({"dedicated_thread": "yes"}, TypeError),
]


@pytest.mark.parametrize(("bad", "error"), BAD_SUBSCRIBE_ARGUMENTS)
def test_a_refused_subscribe_leaves_no_trace(
    bus: EventBus, bad: dict[str, Any], error: type[Exception]
) -> None:
    kept = bus.subscribe("k.*", lambda e: None)
    before = (bus.metrics(), bus.prometheus())
    arguments: dict[str, Any] = {"pattern": "a.*", "handler": lambda e: None, **bad}
    with pytest.raises(error):
        bus.subscribe(arguments.pop("pattern"), arguments.pop("handler"), **arguments)
    assert [s.id for s in bus.subscriptions()] == [kept.id]
    after = bus.metrics()
    assert after.subscriptions == before[0].subscriptions == 1
    assert after.per_subscription == before[0].per_subscription
    assert bus.prometheus() == before[1]


def test_an_idle_subscription_stays_under_the_memory_target() -> None:
    # SPEC's target is < 10 KB per idle subscription; tracemalloc counts
    # exactly what Python allocates, so this is not a timing.
    import gc  # noqa: PLC0415
    import tracemalloc  # noqa: PLC0415

    n = 500
    with EventBus() as bus:
        bus.subscribe("warm.*", lambda e: None)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            subs = [bus.subscribe(f"idle{i}.*", lambda e: None) for i in range(n)]
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        per_subscription = sum(s.size_diff for s in after.compare_to(before, "filename")) / n
        assert len(subs) == n
        assert per_subscription < 10_000, f"{per_subscription:.0f} bytes per idle subscription"
