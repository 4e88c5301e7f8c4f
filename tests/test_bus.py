"""The synchronous bus (SPEC sections 2-4): publish, subscribe, order, flush, close."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pykka
import pytest

from actors import (
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventFilter,
    InvalidEventError,
    InvalidPatternError,
    Subscription,
)
from tests._support import WAIT, Collector

# -- publishing -------------------------------------------------------------------


def test_publish_future_resolves_to_sequenced_event(bus: EventBus) -> None:
    first = bus.publish(Event(event_type="user.login", data={"user_id": "123"})).get(timeout=WAIT)
    second = bus.publish("user.logout", {"user_id": "123"}, source="web", priority=3).get(
        timeout=WAIT
    )
    assert isinstance(first, Event)
    assert first.event_type == "user.login"
    assert first.data == {"user_id": "123"}
    assert first.sequence is not None
    assert second.sequence == first.sequence + 1
    assert second.source == "web"
    assert second.priority == 3


def test_publish_keeps_the_event_identity(bus: EventBus) -> None:
    event = Event(event_type="a.b", data=[1, 2], tags=("x",))
    published = bus.publish(event).get(timeout=WAIT)
    assert published.id == event.id
    assert published.timestamp == event.timestamp
    assert published.tags == ("x",)
    assert event.sequence is None  # the caller's event is immutable


def test_publish_rejects_unknown_fields_and_mixed_arguments(bus: EventBus) -> None:
    with pytest.raises(TypeError):
        bus.publish("a.b", None, colour="red")
    with pytest.raises(TypeError):
        bus.publish(Event(event_type="a.b"), {"x": 1})


def test_publish_invalid_event_raises(bus: EventBus) -> None:
    with pytest.raises(InvalidEventError):
        bus.publish("bad..type")
    with pytest.raises(InvalidEventError):
        bus.publish("a.b", {"x": object()})


def test_publish_many_returns_futures_in_order_with_consecutive_sequences(bus: EventBus) -> None:
    seen = Collector()
    bus.subscribe("batch.*", seen)
    events = [Event(event_type=f"batch.e{i}", data=i) for i in range(50)]
    futures = bus.publish_many(events)
    published = [f.get(timeout=WAIT) for f in futures]
    assert [e.id for e in published] == [e.id for e in events]
    seqs = [e.sequence for e in published]
    assert seqs == list(range(seqs[0], seqs[0] + 50))  # type: ignore[operator]
    bus.flush(WAIT)
    assert [e.data for e in seen.events] == list(range(50))
    assert bus.publish_many([]) == []


def test_publish_correlated_sets_the_correlation_id(bus: EventBus) -> None:
    cid = uuid.uuid4()
    event = bus.publish_correlated("workflow.start", {"workflow": "analysis"}, cid).get(
        timeout=WAIT
    )
    assert event.correlation_id == cid
    assert event.data == {"workflow": "analysis"}
    assert [e.id for e in bus.get_correlated(cid)] == [event.id]


@pytest.mark.parametrize("event_type", ["$bus.deadletter", "$bus.backpressure.started", "$x"])
def test_reserved_types_are_rejected_on_publish(bus: EventBus, event_type: str) -> None:
    seen = Collector()
    bus.subscribe("$bus.**", seen)
    with pytest.raises(InvalidEventError):
        bus.publish(event_type, {})
    with pytest.raises(InvalidEventError):
        bus.publish(Event(event_type=event_type))
    with pytest.raises(InvalidEventError):
        bus.publish_many([Event(event_type="ok.one"), Event(event_type=event_type)])
    bus.flush(WAIT)
    assert seen.events == []
    assert bus.metrics().published == 0  # the batch was refused as a whole


# -- subscribing --------------------------------------------------------------------


def test_subscribe_returns_a_subscription(bus: EventBus) -> None:
    sub = bus.subscribe("user.*", lambda e: None)
    assert isinstance(sub, Subscription)
    assert sub.pattern == "user.*"
    assert isinstance(sub.id, str)
    assert sub.id
    other = bus.subscribe("user.*", lambda e: None)
    assert other.id != sub.id
    stats = sub.statistics()
    assert (stats.delivered, stats.dropped, stats.errors, stats.queued) == (0, 0, 0, 0)
    assert stats.capacity == bus.config.buffer_size


def test_invalid_pattern_and_handler_are_refused(bus: EventBus) -> None:
    for pattern in ["", "a..b", "a.[b", "a.{b", "***"]:
        with pytest.raises(InvalidPatternError):
            bus.subscribe(pattern, lambda e: None)
    with pytest.raises(TypeError):
        bus.subscribe("a.b", "not a handler")  # type: ignore[arg-type]
    assert bus.metrics().subscriptions == 0


def test_pattern_routing(bus: EventBus) -> None:
    user = Collector()
    errors = Collector()
    everything = Collector()
    bus.subscribe("user.*", user)
    bus.subscribe("**.error", errors)
    bus.subscribe("**", everything)
    for t in ["user.login", "user.login.failed", "db.error", "error", "user", "tool.start"]:
        bus.publish(t)
    bus.flush(WAIT)
    assert user.types == ["user.login"]
    assert errors.types == ["db.error", "error"]
    assert everything.types == [
        "user.login",
        "user.login.failed",
        "db.error",
        "error",
        "user",
        "tool.start",
    ]


def test_subscribed_before_publish_means_delivered(bus: EventBus) -> None:
    # Many rounds: subscribe here, publish from another thread at once.
    for round_ in range(50):
        got = threading.Event()
        bus.subscribe(f"round.r{round_}", lambda e, got=got: got.set())
        publisher = threading.Thread(target=bus.publish, args=(f"round.r{round_}",))
        publisher.start()
        publisher.join(WAIT)
        assert got.wait(WAIT), f"round {round_}: event published after subscribe was lost"


def test_order_per_subscription_across_publisher_threads(bus: EventBus) -> None:
    threads_n, per_thread = 4, 400
    total = threads_n * per_thread
    subs = [Collector(total) for _ in range(3)]
    bus.subscribe("order.**", subs[0])
    bus.subscribe("order.*", subs[1])
    bus.subscribe("**", subs[2])
    start = threading.Barrier(threads_n)

    def publish(t: int) -> None:
        start.wait(WAIT)
        for n in range(per_thread):
            bus.publish(f"order.t{t}", {"t": t, "n": n})

    workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WAIT)
    bus.flush(WAIT)
    reference = [e.id for e in subs[0].events]
    for sub in subs:
        assert len(sub.events) == total
        seqs = [e.sequence for e in sub.events]
        assert seqs == sorted(seqs)  # type: ignore[type-var]
        assert len(set(seqs)) == total
        assert [e.id for e in sub.events] == reference  # one order for every subscription
        for t in range(threads_n):
            ns = [e.data["n"] for e in sub.events if e.data["t"] == t]
            assert ns == list(range(per_thread))  # each publisher's own order kept


def test_unsubscribe_stops_delivery(bus: EventBus) -> None:
    seen = Collector()
    other = Collector()
    sub = bus.subscribe("u.*", seen)
    bus.subscribe("u.*", other)
    bus.publish("u.before")
    bus.flush(WAIT)
    sub.unsubscribe()
    sub.unsubscribe()  # idempotent
    bus.publish("u.after")
    bus.flush(WAIT)
    assert seen.types == ["u.before"]
    assert other.types == ["u.before", "u.after"]
    assert bus.metrics().subscriptions == 1


def test_unsubscribe_on_a_single_thread_dispatcher() -> None:
    one = EventBus(EventConfig(threads=1))
    try:
        seen = Collector()
        sub = one.subscribe("u.*", seen)
        one.publish("u.before")
        one.flush(WAIT)
        sub.unsubscribe()
        one.publish("u.after").get(timeout=2)
        one.flush(2)
        assert seen.types == ["u.before"]
    finally:
        one.close(timeout=0.5)


def test_subscription_context_manager_unsubscribes(bus: EventBus) -> None:
    seen = Collector()
    with bus.subscribe("cm.*", seen) as sub:
        assert isinstance(sub, Subscription)
        bus.publish("cm.inside")
        bus.flush(WAIT)
    bus.publish("cm.outside")
    bus.flush(WAIT)
    assert seen.types == ["cm.inside"]


def test_bus_context_manager_drains_and_closes() -> None:
    seen = Collector()
    with EventBus() as b:
        b.subscribe("x.*", seen)
        for i in range(200):
            b.publish("x.y", i)
    assert b.closed
    assert [e.data for e in seen.events] == list(range(200))
    with pytest.raises(BusClosedError):
        b.publish("x.y")


# -- flush and close ------------------------------------------------------------------


def test_flush_waits_for_handlers_to_return() -> None:
    with EventBus(EventConfig(threads=2)) as b:
        entered = threading.Event()
        release = threading.Event()
        finished: list[int] = []

        def slow(event: Event) -> None:
            entered.set()
            release.wait(WAIT)
            finished.append(event.data)

        b.subscribe("slow.*", slow, dedicated_thread=True)
        b.publish("slow.x", 1)
        assert entered.wait(WAIT)
        flushed = threading.Event()
        flusher = threading.Thread(target=lambda: (b.flush(WAIT), flushed.set()))
        flusher.start()
        assert not flushed.is_set()  # the handler is still inside
        release.set()
        flusher.join(WAIT)
        assert flushed.is_set()
        assert finished == [1]


def test_flush_on_an_idle_bus_and_with_no_subscribers(bus: EventBus) -> None:
    bus.flush(WAIT)
    bus.publish("nobody.listens")
    bus.flush(WAIT)
    assert bus.metrics().published == 1


def test_flush_inside_a_handler_raises(bus: EventBus) -> None:
    errors: list[BaseException] = []

    def handler(event: Event) -> None:
        try:
            bus.flush(1)
        except RuntimeError as exc:
            errors.append(exc)

    bus.subscribe("f.*", handler)
    bus.publish("f.x")
    bus.flush(WAIT)
    assert len(errors) == 1


def test_close_drains_then_refuses_everything() -> None:
    b = EventBus()
    seen = Collector()
    b.subscribe("c.*", seen)
    for i in range(500):
        b.publish("c.e", i)
    b.close(timeout=WAIT)
    assert [e.data for e in seen.events] == list(range(500))
    assert b.closed
    with pytest.raises(BusClosedError):
        b.publish("c.e")
    with pytest.raises(BusClosedError):
        b.publish(Event(event_type="c.e"))
    with pytest.raises(BusClosedError):
        b.publish_many([Event(event_type="c.e")])
    with pytest.raises(BusClosedError):
        b.publish_correlated("c.e", None, uuid.uuid4())
    with pytest.raises(BusClosedError):
        b.subscribe("c.*", seen)
    with pytest.raises(BusClosedError):
        b.flush(1)
    with pytest.raises(BusClosedError):
        b.get_correlated(uuid.uuid4())
    b.close()  # idempotent


# -- concurrency ----------------------------------------------------------------------


def test_handlers_of_different_subscriptions_run_concurrently() -> None:
    with EventBus(EventConfig(threads=2)) as b:
        meet = threading.Barrier(2, timeout=WAIT)
        met: list[str] = []

        def handler(name: str) -> Any:
            def run(event: Event) -> None:
                meet.wait()  # BrokenBarrierError unless both run at the same time
                met.append(name)

            return run

        b.subscribe("meet.*", handler("a"))
        b.subscribe("meet.*", handler("b"))
        b.publish("meet.now")
        b.flush(WAIT)
        assert sorted(met) == ["a", "b"]
        assert b.metrics().handler_errors == 0


def test_one_handler_never_runs_twice_at_once() -> None:
    with EventBus(EventConfig(threads=4)) as b:
        state = {"inside": 0, "max": 0, "calls": 0}
        lock = threading.Lock()

        def handler(event: Event) -> None:
            with lock:
                state["inside"] += 1
                state["max"] = max(state["max"], state["inside"])
                state["calls"] += 1
            sum(range(200))  # stay inside for a while
            with lock:
                state["inside"] -= 1

        b.subscribe("c.**", handler)
        b.subscribe("c.**", lambda e: None)  # keep the other threads busy
        workers = [
            threading.Thread(target=lambda: [b.publish("c.x", i) for i in range(500)])
            for _ in range(4)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(WAIT)
        b.flush(WAIT)
        assert state["calls"] == 2000
        assert state["max"] == 1


# -- filters --------------------------------------------------------------------------


def _publish_filter_mix(b: EventBus) -> None:
    b.publish("f.e", {"kind": "a", "n": 1}, source="web", tags=("red",), priority=1)
    b.publish("f.e", {"kind": "b", "n": 2}, source="cli", tags=("blue", "red"), priority=5)
    b.publish("f.e", {"kind": "a", "n": 3}, source="web", tags=(), priority=9)
    b.publish("f.e", [1, 2, 3], source="job", tags=("green",), priority=0)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (EventFilter(source="web"), [1, 3]),
        (EventFilter(tags_any=("red",)), [1, 2]),
        (EventFilter(tags_any=("green", "blue")), [2, 4]),
        (EventFilter(min_priority=5), [2, 3]),
        (EventFilter(data_equals={"kind": "a"}), [1, 3]),
        (EventFilter(data_equals={"kind": "a", "n": 3}), [3]),
        (EventFilter(source="web", min_priority=2), [3]),
        (EventFilter(), [1, 2, 3, 4]),
    ],
)
def test_event_filter_fields(bus: EventBus, flt: EventFilter, expected: list[int]) -> None:
    seen = Collector()
    bus.subscribe("f.*", seen, filter=flt)
    _publish_filter_mix(bus)
    bus.flush(WAIT)
    numbers = [e.data["n"] if isinstance(e.data, dict) else 4 for e in seen.events]
    assert numbers == expected


@pytest.mark.parametrize(
    ("wanted", "data", "matches"),
    [
        (1, 1, True),
        (1, 1.0, True),  # one JSON number
        (1, True, False),  # JSON's true is not 1 (Python's True == 1)
        (0, False, False),
        (True, 1, False),
        (True, True, True),
        ([1, {"x": False}], [1.0, {"x": False}], True),
        ([1, {"x": False}], [True, {"x": False}], False),
        ([1, {"x": False}], [1, {"x": 0}], False),
        ({"a": [0]}, {"a": [False]}, False),
    ],
)
def test_data_equals_compares_json_values(wanted: object, data: object, matches: bool) -> None:
    flt = EventFilter(data_equals={"k": wanted})
    assert flt(Event(event_type="f.e", data={"k": data})) is matches
    assert (
        EventFilter.from_dict(flt.to_dict())(Event(event_type="f.e", data={"k": data})) is matches
    )


def test_predicate_filter_and_a_predicate_that_raises(bus: EventBus) -> None:
    even = Collector()
    fragile = Collector()
    unfiltered = Collector()

    def explodes_on_three(event: Event) -> bool:
        if event.data == 3:
            raise ValueError("no threes")
        return True

    bus.subscribe("p.*", even, filter=lambda e: e.data % 2 == 0)
    bus.subscribe("p.*", fragile, filter=explodes_on_three)
    bus.subscribe("p.*", unfiltered)
    for i in range(6):
        bus.publish("p.n", i)
    bus.flush(WAIT)
    assert [e.data for e in even.events] == [0, 2, 4]
    assert [e.data for e in fragile.events] == [0, 1, 2, 4, 5]
    assert [e.data for e in unfiltered.events] == list(range(6))
    # The bus and the subscription keep working after the predicate raised.
    bus.publish("p.n", 7)
    bus.flush(WAIT)
    assert fragile.events[-1].data == 7


def test_bad_filter_is_refused(bus: EventBus) -> None:
    with pytest.raises(TypeError):
        bus.subscribe("a.*", lambda e: None, filter="source=web")  # type: ignore[arg-type]


# -- ttl ------------------------------------------------------------------------------


def test_expired_event_is_not_delivered_and_is_counted(bus: EventBus) -> None:
    seen = Collector()
    sub = bus.subscribe("t.*", seen)
    past = datetime.now(UTC) - timedelta(seconds=60)
    bus.publish(Event(event_type="t.stale", timestamp=past, ttl=0.001))
    bus.publish(Event(event_type="t.fresh", ttl=3600.0))
    bus.publish(Event(event_type="t.forever", timestamp=past))
    bus.flush(WAIT)
    assert seen.types == ["t.fresh", "t.forever"]
    assert sub.statistics().expired == 1
    metrics = bus.metrics()
    assert metrics.expired == 1
    assert metrics.delivered == 2


# -- handler kinds ------------------------------------------------------------------------


class Recorder(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Event):
            self.events.append(message)
            return None
        if message == "events":
            return list(self.events)
        return None


def test_actor_ref_handler_gets_events_as_messages(bus: EventBus) -> None:
    ref = Recorder.start()
    try:
        bus.subscribe("actor.*", ref)
        for i in range(20):
            bus.publish("actor.msg", i)
        bus.flush(WAIT)
        # The tells are queued ahead of this ask in the actor's FIFO inbox.
        events = ref.ask("events", timeout=WAIT)
        assert [e.data for e in events] == list(range(20))
        assert all(e.sequence is not None for e in events)
    finally:
        ref.stop(timeout=WAIT)


def test_dedicated_thread_handler_does_not_hold_up_others() -> None:
    # One shared dispatcher thread: a blocking handler on it would stall the bus.
    with EventBus(EventConfig(threads=1)) as b:
        entered = threading.Event()
        release = threading.Event()
        blocked_seen: list[Event] = []

        def blocking(event: Event) -> None:
            entered.set()
            release.wait(WAIT)
            blocked_seen.append(event)

        fast = Collector(3)
        b.subscribe("io.*", blocking, dedicated_thread=True)
        b.subscribe("io.*", fast)
        b.publish("io.first")
        assert entered.wait(WAIT)
        b.publish("io.second")
        b.publish("io.third")
        assert fast.done.wait(WAIT), "the other subscription stopped receiving"
        assert fast.types == ["io.first", "io.second", "io.third"]
        assert not release.is_set()
        release.set()
        b.flush(WAIT)
        assert [e.event_type for e in blocked_seen] == ["io.first", "io.second", "io.third"]
