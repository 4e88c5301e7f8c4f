"""The public API under misuse: wrong types, edge values and lifecycle.

The standard (SPEC section 10, docs/architecture.md "Arguments"): bad input
gets a clear, typed error (the type SPEC names, or a ``TypeError`` /
``ValueError`` naming the argument) and loses nothing else; a failing handler
or filter never takes the bus down; after ``close()`` calls raise
``BusClosedError`` and never hang.  Everything runs in one process on real
buses (a real RocksDB journal in ``tmp_path`` where one is needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import json
import pickle
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors import (
    BackpressureError,
    BusClosedError,
    Event,
    EventBus,
    EventBusError,
    EventConfig,
    EventFilter,
    EventQuery,
    InvalidEventError,
    InvalidPatternError,
    PersistentEventBus,
)
from tests._support import WAIT, Collector, Gate, wait_for


def _bus_threads(name: str) -> list[str]:
    """Names of the live threads of the bus called ``name`` (they are ``bus-<name>...``)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(f"bus-{name}")]


def _unless_refused(make: Callable[[], Any], name: str) -> Any:
    """Return ``make()``, or None if it refused with a ``ValueError`` naming ``name``.

    Refusing an out-of-range value at the call site is what the docs promise;
    accepting it is fine too, as long as what follows works.
    """
    try:
        return make()
    except ValueError as exc:
        if not str(exc).startswith(name):
            raise
        return None


# -- EventConfig at and past its bounds -------------------------------------------------


def test_a_config_with_every_field_at_its_lower_bound_runs_a_bus(tmp_path: Path) -> None:
    config = EventConfig(
        persistence_path=str(tmp_path / "j"),
        retention_days=1e-9,  # "> 0": a tiny retention is still a retention
        max_events=1,
        durability="sync",
        buffer_size=1,
        overflow="drop_newest",
        block_timeout=0,
        rate_limit=1e6,
        burst=1_000,
        handler_retries=0,
        max_traces=1,
        max_events_per_trace=1,
        trace_ttl=1e-9,
        threads=1,
        dead_letter_limit=0,
        blocking_threshold=1e-9,
        max_threads=1,
    )
    got = Collector(expected=1)
    with PersistentEventBus(config, name="lowbounds") as bus:
        bus.subscribe("a.*", got)
        published = bus.publish("a.b", {"n": 1}).get(timeout=WAIT)
        assert published.sequence is not None
        bus.flush(WAIT)
        assert got.done.wait(WAIT)
        assert got.data == [{"n": 1}]
    assert wait_for(lambda: not _bus_threads("lowbounds"))


# Sizes are bounded where they are given: a dead_letter_limit no deque can hold is
# a ValueError from EventConfig naming it, not an OverflowError from deep inside
# EventBus after its threads started.
def test_a_dead_letter_limit_too_large_is_refused_by_the_config_or_works() -> None:
    config = _unless_refused(lambda: EventConfig(dead_letter_limit=10**30), "dead_letter_limit")
    if config is None:
        return
    error: BaseException | None = None
    try:
        bus = EventBus(config, name="hugedll")
    except BaseException as exc:
        error = exc
    else:
        bus.close(timeout=WAIT)
    leaked = _bus_threads("hugedll")
    assert error is None, f"EventBus raised {error!r}; threads left running: {leaked}"
    assert wait_for(lambda: not _bus_threads("hugedll"))


# retention_days is at most timedelta's 999,999,999 days, refused by EventConfig
# past that; a cutoff before the year 1 keeps everything.
def test_a_huge_retention_is_refused_by_the_config_or_keeps_everything(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    config = _unless_refused(
        lambda: EventConfig(persistence_path=path, retention_days=1e300), "retention_days"
    )
    if config is None:
        return
    error: BaseException | None = None
    try:
        with PersistentEventBus(config) as bus:
            bus.publish("a.b", 1).get(timeout=WAIT)
            bus.flush(WAIT)
            assert [e.data for e in bus.query(EventQuery())] == [1]
    except AssertionError:
        raise
    except BaseException as exc:
        error = exc
    # Whatever happened, the journal is not left locked behind.
    with PersistentEventBus(EventConfig(persistence_path=path)):
        pass
    assert error is None, f"PersistentEventBus(retention_days=1e300) raised {error!r}"


# block_timeout is at most threading.TIMEOUT_MAX: past it EventConfig refuses it,
# instead of a publish that raised OverflowError after its event was accepted
# (a caller retrying it published it twice).
def test_a_block_timeout_past_timeout_max_is_refused_or_publishes_cleanly() -> None:
    config = _unless_refused(lambda: EventConfig(block_timeout=1e300, threads=2), "block_timeout")
    if config is None:
        return
    gate = Gate()
    with EventBus(config) as bus:
        bus.subscribe("b.*", gate, capacity=1, overflow="block")
        error: BaseException | None = None
        try:
            bus.publish("b.x", "first").get(timeout=WAIT)
        except BaseException as exc:
            error = exc
        gate.release.set()
        bus.flush(WAIT)
        delivered = gate.data
    # A publish that returned was delivered; one that raised (a BackpressureError,
    # nothing else) was not.
    assert (error is None and delivered == ["first"]) or (
        isinstance(error, BackpressureError) and delivered == []
    ), f"publish raised {error!r} and the handler got {delivered}"


# A handler timeout is at most threading.TIMEOUT_MAX, and the bus's one timer
# thread never dies on a far deadline: before, subscribe(timeout=1e300) killed it
# at the handler's first call, and every other subscription's retries with it.
def test_a_huge_handler_timeout_does_not_stop_other_subscriptions_retries() -> None:
    bus = EventBus(EventConfig(threads=2))
    try:
        if (
            _unless_refused(
                lambda: bus.subscribe("big.x", lambda e: None, timeout=1e300), "timeout"
            )
            is None
        ):
            return
        bus.publish("big.x").get(timeout=WAIT)
        bus.flush(WAIT)
        calls: list[int] = []
        handled = threading.Event()

        def flaky(event: Event) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("first attempt fails")
            handled.set()

        bus.subscribe("r.x", flaky, retries=1, retry_backoff=0.001)
        bus.publish("r.x").get(timeout=WAIT)
        assert handled.wait(WAIT), f"the retry never ran ({len(calls)} call(s))"
        bus.flush(WAIT)
    finally:
        bus.close(timeout=1.0)  # bounded: the stuck retry would hold its flush for ever


# -- arguments of the bus's methods -----------------------------------------------------


class RaisingHashStr(str):
    """A str subclass whose ``__hash__`` and ``__eq__`` raise (a hostile caller)."""

    __slots__ = ()

    def __hash__(self) -> int:
        raise RuntimeError("__hash__ of the caller's str")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ of the caller's str")


def test_an_event_type_that_is_a_hostile_str_subclass_is_stored_as_a_plain_str(
    bus: EventBus,
) -> None:
    got = Collector(expected=1)
    bus.subscribe("h.*", got)
    event = Event(event_type=RaisingHashStr("h.x"))
    assert type(event.event_type) is str
    bus.publish(event).get(timeout=WAIT)
    bus.flush(WAIT)
    assert got.types == ["h.x"]


# A pattern given as a str subclass is taken as its text, a plain str (its own
# __hash__ or __eq__ take no part), as Event takes an event type.
def test_a_pattern_that_is_a_hostile_str_subclass_is_taken_as_its_text(bus: EventBus) -> None:
    got = Collector(expected=1)
    try:
        sub = bus.subscribe(RaisingHashStr("h.*"), got)
    except InvalidPatternError:
        assert bus.subscriptions() == []
        return
    assert type(sub.pattern) is str
    bus.publish("h.x", 1).get(timeout=WAIT)
    assert got.done.wait(WAIT)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda b: b.publish(RaisingHashStr("$bus.x")), InvalidEventError),
        (lambda b: b.publish("a.b", float("-inf")), InvalidEventError),
        (lambda b: b.publish("a.b", {"k": float("nan")}), InvalidEventError),
        (lambda b: b.publish("a.b", [b"raw"]), InvalidEventError),
        (lambda b: b.publish("a.b", {1: "int key"}), InvalidEventError),
        (lambda b: b.publish("a.b", 10**5000), InvalidEventError),
        (lambda b: b.publish("a.b", priority=True), InvalidEventError),
        (lambda b: b.publish("a.b", ttl=float("inf")), InvalidEventError),
        (lambda b: b.publish("a.b", tags=b"ab"), InvalidEventError),
        (lambda b: b.publish("a.b", metadata={"k": 1}), InvalidEventError),
        (lambda b: b.publish("a.b", source="\ud800"), InvalidEventError),
        (lambda b: b.publish("a.b", sequence=1), TypeError),
        (lambda b: b.publish(Event(event_type="a.b"), None, source="x"), TypeError),
        (lambda b: b.publish(Event(event_type="a.b"), 0), TypeError),
        (lambda b: b.publish_correlated("a.b", 1, uuid.uuid4().bytes), TypeError),
        (lambda b: b.publish_many(iter(["a.b"])), TypeError),
        (lambda b: b.publish_many(Event(event_type="a.b")), TypeError),
        (lambda b: b.subscribe("a.*", lambda e: None, capacity=False), TypeError),
        (lambda b: b.subscribe("a.*", lambda e: None, capacity=-0), ValueError),
        (lambda b: b.subscribe("a.*", lambda e: None, timeout=float("nan")), ValueError),
        (lambda b: b.subscribe("a.*", lambda e: None, retries=1.0), TypeError),
        (lambda b: b.subscribe("a.**.", lambda e: None), InvalidPatternError),
        (lambda b: b.subscribe(["a.*"], lambda e: None), InvalidPatternError),
        (lambda b: b.subscribe("a.*", "not callable"), TypeError),
        (lambda b: b.flush(timeout=-0.5), ValueError),
        (lambda b: b.flush(timeout=True), TypeError),
        (lambda b: b.close(timeout=float("nan")), ValueError),
        (lambda b: b.get_correlated(uuid.uuid4().int), TypeError),
        (lambda b: b.trace(uuid.uuid4(), timeout=2.0**1000), ValueError),
        (lambda b: b.dead_letters(limit=True), TypeError),
    ],
)
def test_bad_calls_raise_typed_errors_and_leave_the_bus_working(
    bus: EventBus, call: Callable[[EventBus], Any], expected: type[BaseException]
) -> None:
    got = Collector()
    bus.subscribe("ok.*", got)
    with pytest.raises(expected):
        call(bus)
    assert not bus.closed
    # Nothing else lost: the bus still routes, and no subscription was added.
    assert [s.pattern for s in bus.subscriptions()] == ["ok.*"]
    bus.publish("ok.x", 1).get(timeout=WAIT)
    bus.flush(WAIT)
    assert got.data == [1]
    assert bus.metrics().published == 1


def test_a_publish_many_whose_iterable_fails_midway_publishes_nothing(bus: EventBus) -> None:
    got = Collector()
    bus.subscribe("g.*", got)

    def events() -> Any:
        yield Event(event_type="g.first")
        raise RuntimeError("the caller's generator broke")

    with pytest.raises(RuntimeError, match="generator broke"):
        bus.publish_many(events())
    bus.publish("g.after", 2).get(timeout=WAIT)
    bus.flush(WAIT)
    assert got.types == ["g.after"]  # all or nothing: the first event never went out


def test_an_event_subclass_is_published_with_every_field(bus: EventBus) -> None:
    class MyEvent(Event):
        __slots__ = ()

    got = Collector(expected=1)
    bus.subscribe("s.*", got)
    sent = MyEvent(event_type="s.x", data={"a": [1]}, tags=("t",), priority=3)
    published = bus.publish(sent).get(timeout=WAIT)
    assert got.done.wait(WAIT)
    (received,) = got.events
    for event in (published, received):
        assert isinstance(event, Event)
        assert event.id == sent.id
        assert (event.event_type, event.data, event.tags, event.priority) == (
            "s.x",
            {"a": [1]},
            ("t",),
            3,
        )
        assert event.sequence is not None
    assert sent.sequence is None  # the caller's object is never stamped


# -- handlers and filters that misbehave ------------------------------------------------


class ExplodingBool:
    def __bool__(self) -> bool:
        raise RuntimeError("__bool__ of the filter's answer")


@pytest.mark.parametrize(
    "answer",
    [ExplodingBool, lambda: None, lambda: 0, list, lambda: float("nan")],
    ids=["bool-raises", "none", "zero", "empty-list", "nan"],
)
def test_a_filter_answer_is_taken_for_its_truth_and_never_breaks_routing(
    bus: EventBus, answer: Callable[[], Any]
) -> None:
    # Python's plain expectation where the docs are silent: a predicate's answer
    # counts for its truth; one whose truth raises counts as "no match" (as a
    # raising filter does, docs/architecture.md "Filters").
    value = answer()
    try:
        truth: bool | None = bool(value)
    except RuntimeError:
        truth = None
    filtered = Collector()
    other = Collector()
    sub = bus.subscribe("f.*", filtered, filter=lambda e: answer())
    bus.subscribe("f.*", other)
    for i in range(3):
        bus.publish("f.x", i).get(timeout=WAIT)
    bus.flush(WAIT)
    assert other.data == [0, 1, 2]
    assert filtered.data == ([0, 1, 2] if truth else [])
    assert sub.active


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_a_handler_raising_a_base_exception_is_a_dead_letter_and_the_bus_goes_on(
    bus: EventBus, kind: type[BaseException]
) -> None:
    calls: list[int] = []

    def handler(event: Event) -> None:
        calls.append(event.data)
        if event.data == 0:
            raise kind()

    sub = bus.subscribe("k.*", handler)
    bus.publish("k.x", 0).get(timeout=WAIT)
    bus.publish("k.x", 1).get(timeout=WAIT)
    bus.flush(WAIT)
    assert calls == [0, 1]
    assert sub.active
    assert sub.statistics().errors == 1
    letters = bus.dead_letters()
    assert [d.event.data for d in letters] == [0]
    assert not bus.closed


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_an_async_handler_awaiting_a_task_that_raises_a_base_exception_strands_nothing(
    bus: EventBus, kind: type[BaseException]
) -> None:
    # asyncio lets a task's SystemExit or KeyboardInterrupt out of the loop's
    # run_forever: the bus's own loop must go on with every other handler.
    other: list[int] = []

    async def library_call() -> None:
        raise kind("raised inside a task")

    async def handler(event: Event) -> None:
        await asyncio.wait_for(library_call(), timeout=WAIT)

    async def unrelated(event: Event) -> None:
        other.append(event.data)

    failing = bus.subscribe("job.run", handler)
    bus.subscribe("audit.*", unrelated)
    bus.publish("job.run", 1).get(timeout=WAIT)
    bus.flush(WAIT)
    bus.publish("audit.log", 2).get(timeout=WAIT)
    bus.publish("job.run", 3).get(timeout=WAIT)
    bus.flush(WAIT)
    assert other == [2]
    stats = failing.statistics()
    assert (stats.errors, stats.dead_letters, stats.in_flight) == (2, 2, 0)
    assert [d.event.data for d in bus.dead_letters()] == [1, 3]


def test_handlers_and_filters_with_hostile_eq_and_hash_are_usable(bus: EventBus) -> None:
    class Hostile:
        def __init__(self) -> None:
            self.events: list[Event] = []

        def __call__(self, event: Event) -> bool:
            self.events.append(event)
            return True

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("__eq__")

        def __hash__(self) -> int:
            raise RuntimeError("__hash__")

        def __repr__(self) -> str:
            raise RuntimeError("__repr__")

    handler, flt = Hostile(), Hostile()
    sub = bus.subscribe("x.*", handler, filter=flt)
    bus.publish("x.y", 1).get(timeout=WAIT)
    bus.flush(WAIT)
    assert [e.data for e in handler.events] == [1]
    assert [e.data for e in flt.events] == [1]
    sub.unsubscribe()
    assert bus.subscriptions() == []


def test_a_handler_mutating_its_event_cannot_touch_the_envelope(bus: EventBus) -> None:
    # SPEC section 2: Event is immutable (frozen, slotted); metadata is read-only
    # and tags a tuple.  (data is shared, not copied - event_checks documents it.)
    seen: list[Event] = []
    errors: list[BaseException] = []

    def meddler(event: Event) -> None:
        for attempt in (
            lambda: setattr(event, "priority", 9),
            lambda: event.metadata.__setitem__("k", "changed"),  # type: ignore[index]
            lambda: event.tags.append("x"),  # type: ignore[attr-defined]
            lambda: object.__getattribute__(event, "__dict__"),
        ):
            try:
                attempt()
            except (AttributeError, TypeError) as exc:
                errors.append(exc)

    bus.subscribe("m.*", meddler)
    bus.subscribe("m.*", seen.append)
    bus.publish("m.x", None, metadata={"k": "v"}, tags=["t"], priority=1).get(timeout=WAIT)
    bus.flush(WAIT)
    assert len(errors) == 4
    (event,) = seen
    assert (dict(event.metadata), event.tags, event.priority) == ({"k": "v"}, ("t",), 1)


def test_the_callers_metadata_and_tags_are_copied_not_shared(tmp_path: Path) -> None:
    metadata = {"k": "v"}
    tags = ["t"]
    got = Collector(expected=1)
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as bus:
        bus.subscribe("c.*", got)
        bus.publish("c.x", 1, metadata=metadata, tags=tags).get(timeout=WAIT)
        metadata["k"] = "changed"
        metadata["extra"] = "x"
        tags.append("late")
        bus.flush(WAIT)
        (stored,) = bus.query(EventQuery(event_types="c.*"))
    assert got.done.is_set()
    for event in (got.events[0], stored):
        assert dict(event.metadata) == {"k": "v"}
        assert event.tags == ("t",)


def test_flush_inside_a_handler_raises_and_the_handler_is_not_stuck(bus: EventBus) -> None:
    outcome: list[BaseException | None] = []

    def handler(event: Event) -> None:
        try:
            bus.flush(timeout=WAIT)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    bus.subscribe("fl.*", handler)
    bus.publish("fl.x").get(timeout=WAIT)
    bus.flush(WAIT)
    assert len(outcome) == 1
    assert isinstance(outcome[0], RuntimeError)


# -- lifecycle: after close, and close from odd places ---------------------------------


AFTER_CLOSE: list[tuple[str, Callable[[EventBus], Any]]] = [
    ("publish", lambda b: b.publish("a.b", 1)),
    ("publish_event", lambda b: b.publish(Event(event_type="a.b"))),
    ("publish_many", lambda b: b.publish_many([Event(event_type="a.b")])),
    ("publish_many_empty", lambda b: b.publish_many([])),
    ("publish_correlated", lambda b: b.publish_correlated("a.b", 1, uuid.uuid4())),
    ("subscribe", lambda b: b.subscribe("a.*", lambda e: None)),
    ("get_correlated", lambda b: b.get_correlated(uuid.uuid4(), timeout=WAIT)),
    ("trace", lambda b: b.trace(uuid.uuid4(), timeout=WAIT)),
    ("flush", lambda b: b.flush(WAIT)),
    ("flush_no_timeout", lambda b: b.flush()),
    ("query", lambda b: b.query(EventQuery(), timeout=WAIT)),
    ("replay", lambda b: b.replay(EventQuery(), lambda e: None)),
    ("request", lambda b: b.request("q.x", 1, timeout=WAIT)),
    ("respond", lambda b: b.respond("q.x", lambda e: 1)),
    ("serve_metrics", lambda b: b.serve_metrics()),
    ("dead_letters_from_the_journal", lambda b: b.dead_letters()),
]


@pytest.mark.parametrize(("name", "call"), AFTER_CLOSE, ids=[n for n, _ in AFTER_CLOSE])
def test_every_call_after_close_raises_bus_closed_error_at_once(
    tmp_path: Path, name: str, call: Callable[[EventBus], Any]
) -> None:
    bus = PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j")))
    sub = bus.subscribe("a.*", lambda e: None)
    bus.publish("a.b", 0).get(timeout=WAIT)
    bus.close(timeout=WAIT)
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call(bus)
        except BaseException as exc:
            result.append(exc)
        else:
            result.append(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(WAIT)
    assert not worker.is_alive(), f"{name} after close hung"
    assert isinstance(result[0], BusClosedError), f"{name}: {result[0]!r}"
    # The handle stays usable, and close stays idempotent.
    assert not sub.active
    sub.unsubscribe()
    assert sub.statistics().delivered == 1
    assert bus.close(timeout=WAIT) == ()


def test_figures_and_dead_letters_survive_close(bus: EventBus) -> None:
    # docs/observability.md: the totals stay readable "after close() too".
    bus.subscribe("d.*", lambda e: 1 / 0)
    bus.publish("d.x", 7).get(timeout=WAIT)
    bus.flush(WAIT)
    before = bus.dead_letters()
    figures = bus.metrics()
    bus.close(timeout=WAIT)
    assert [d.event.data for d in bus.dead_letters()] == [d.event.data for d in before] == [7]
    metrics = bus.metrics()
    assert (metrics.handler_errors, metrics.dead_letters) == (1, 1)
    assert metrics.published == figures.published
    assert "llmspell" in bus.prometheus()


@pytest.mark.parametrize("where", ["handler", "filter"])
def test_close_from_inside_a_handler_or_filter_stops_the_bus(where: str) -> None:
    name = f"closein{where}"
    bus = EventBus(EventConfig(threads=2), name=name)
    outcome: list[Any] = []

    def closer(event: Event) -> bool:
        try:
            outcome.append(bus.close(timeout=WAIT))
        except BaseException as exc:
            outcome.append(exc)
        return True

    if where == "handler":
        bus.subscribe("c.*", closer)
    else:
        bus.subscribe("c.*", lambda e: None, filter=closer)
    bus.publish("c.x").get(timeout=WAIT)
    assert wait_for(lambda: bool(outcome))
    assert not isinstance(outcome[0], BaseException), repr(outcome[0])
    assert bus.closed
    with pytest.raises(BusClosedError):
        bus.publish("c.y")
    assert bus.close(timeout=WAIT) == ()
    assert wait_for(lambda: not _bus_threads(name)), _bus_threads(name)


def test_close_from_two_threads_while_a_publish_many_waits_for_room_never_hangs() -> None:
    name = "closerace"
    bus = EventBus(EventConfig(threads=2, block_timeout=WAIT), name=name)
    gate = Gate()
    bus.subscribe("w.*", gate, capacity=2, overflow="block")
    bus.publish("w.x", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    outcomes: list[Any] = []
    closes: list[Any] = []

    def publisher() -> None:
        try:
            futures = bus.publish_many([Event(event_type="w.x", data=i) for i in range(1, 10)])
        except BaseException as exc:
            outcomes.append(exc)
            return
        for future in futures:
            try:
                outcomes.append(future.get(timeout=WAIT).data)
            except BaseException as exc:
                outcomes.append(exc)

    def close() -> None:
        closes.append(bus.close(timeout=1.0))

    threads = [threading.Thread(target=f, daemon=True) for f in (publisher, close, close)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * WAIT)
    gate.release.set()
    assert not any(t.is_alive() for t in threads), "a publish_many or close hung"
    assert len(closes) == 2
    assert bus.closed
    # Each event of the batch was published (its number) or refused with a bus error.
    for item in outcomes:
        assert isinstance(item, int | BusClosedError | BackpressureError), repr(item)
    assert wait_for(lambda: not _bus_threads(name)), _bus_threads(name)


def test_a_subscription_handle_hammered_from_many_threads(bus: EventBus) -> None:
    got = Collector()
    subs = [bus.subscribe("r.*", got) for _ in range(4)]
    bus.publish("r.x", 1).get(timeout=WAIT)
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def hammer(index: int) -> None:
        sub = subs[index % len(subs)]
        start.wait(WAIT)
        for _ in range(100):
            try:
                sub.statistics()
                sub.unsubscribe()
                assert not sub.active
                with sub:
                    pass
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * WAIT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert bus.subscriptions() == []
    bus.publish("r.x", 2).get(timeout=WAIT)
    bus.flush(WAIT)
    assert 2 not in got.data


# -- EventFilter -----------------------------------------------------------------------


def test_an_event_filter_with_every_field_at_its_edge(bus: EventBus) -> None:
    edge = EventFilter(
        source="",
        tags_any="only",
        min_priority=-(2**63),
        data_equals={"big": 2**63, "neg0": -0.0, "nested": {"l": [None, True]}},
    )
    assert EventFilter.from_dict(json.loads(json.dumps(edge.to_dict()))) == edge
    assert pickle.loads(pickle.dumps(edge)) == edge
    got = Collector()
    bus.subscribe("e.*", got, filter=edge)
    data = {"big": 2**63, "neg0": 0.0, "nested": {"l": [None, True]}, "more": 1}
    bus.publish("e.x", data, source="", tags=("only",), priority=-(2**63)).get(timeout=WAIT)
    bus.publish("e.x", data, source="other", tags=("only",)).get(timeout=WAIT)
    bus.publish("e.x", data, source="", tags=("ONLY",)).get(timeout=WAIT)
    bus.flush(WAIT)
    assert len(got.events) == 1


# EventFilter.from_dict names a key it does not know (a misspelt "min_prio" made a
# filter that matched everything), as Event.from_dict does.
def test_event_filter_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises((TypeError, ValueError), match="min_prio"):
        EventFilter.from_dict({"min_prio": 5})


# EventFilter is declarative and crosses processes: a data_equals value that is not
# JSON (a set, NaN, bytes) is refused where it is given.
@pytest.mark.parametrize(
    "value", [{1, 2}, float("nan"), b"raw", object()], ids=["set", "nan", "bytes", "object"]
)
def test_event_filter_data_equals_must_hold_json_values(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="data_equals"):
        EventFilter(data_equals={"k": value})


# An EventFilter is immutable (its data_equals a read-only copy): it cannot change
# what a live subscription lets through after subscribe returned.
def test_an_event_filter_cannot_be_changed_behind_a_live_subscription(bus: EventBus) -> None:
    flt = EventFilter(data_equals={"k": 1})
    got = Collector()
    bus.subscribe("fz.*", got, filter=flt)
    assert flt.data_equals is not None
    with contextlib.suppress(TypeError):  # a read-only mapping refuses: fine
        flt.data_equals["k"] = 2  # type: ignore[index]
    bus.publish("fz.x", {"k": 1}).get(timeout=WAIT)
    bus.publish("fz.x", {"k": 2}).get(timeout=WAIT)
    bus.flush(WAIT)
    assert got.data == [{"k": 1}]


# -- Event: equality, hashing, copies and round trips with every field -------------------


def _full_event() -> Event:
    return Event(
        event_type="agent.tool.done",
        data={"s": "é\u2028", "i": -(2**63), "f": -0.0, "l": [None, True, 1.5e-300], "d": {}},
        correlation_id=uuid.uuid4(),
        causation_id=uuid.uuid4(),
        source="src",
        target="dst",
        tags=("a", "b", "a"),
        priority=2**63 - 1,
        ttl=0.0,
        language="rust",
        metadata={"k": "v", "": ""},
        sequence=2**64 - 1,
        origin="node-a",
    )


def test_round_trips_with_every_field_set_are_exact() -> None:
    event = _full_event()
    via_json = Event.from_dict(json.loads(json.dumps(event.to_dict())))
    for copied in (
        Event.from_bytes(event.to_bytes()),
        via_json,
        pickle.loads(pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)),
        copy.copy(event),
        copy.deepcopy(event),
    ):
        assert copied == event
        assert hash(copied) == hash(event)
        assert type(copied.metadata) is type(event.metadata)
        assert copied.to_dict() == event.to_dict()
    # A deep copy owns its data; mutating it leaves the original alone.
    deep = copy.deepcopy(event)
    deep.data["d"]["new"] = 1  # type: ignore[index]
    assert event.data["d"] == {}  # type: ignore[index]


def test_equality_sees_every_field_and_hash_follows_the_id() -> None:
    event = _full_event()
    assert event != object()
    assert (event == "agent.tool.done") is False
    same_id_other_data = Event(event_type=event.event_type, data=1, id=event.id)
    assert same_id_other_data != event
    assert hash(same_id_other_data) == hash(event)  # equal ids, equal hash: consistent
    assert len({event, copy.copy(event), _full_event()}) == 2


def test_an_event_cannot_be_mutated_through_any_public_door() -> None:
    event = _full_event()
    for attempt in (
        lambda: setattr(event, "data", None),
        lambda: delattr(event, "sequence"),
        lambda: setattr(event, "extra", 1),
        lambda: event.metadata.update({"x": "y"}),  # type: ignore[attr-defined]
        lambda: event.__setstate__(event.__getstate__()[:-1]),
    ):
        with pytest.raises((AttributeError, TypeError, ValueError)):
            attempt()
    assert event == Event.from_bytes(event.to_bytes())


@pytest.mark.parametrize(
    "bad",
    [
        {"event_type": "a.b", "sequence": -1},
        {"event_type": "a.b", "priority": "1"},
        {"event_type": "a.b", "timestamp": "not a time"},
        {"event_type": "a.b", "timestamp": "2020-01-01T00:00:00"},
        {"event_type": "a.b", "correlation_id": ""},
        {"event_type": "a.b", "tags": "abc"},
        {"event_type": "a.b", "ttl": -0.5},
        {"event_type": "a.b", "metadata": {"k": None}},
        {"event_type": "", "data": None},
        {"data": 1},
    ],
)
def test_from_dict_refuses_every_bad_field_with_invalid_event_error(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventError):
        Event.from_dict(bad)


@pytest.mark.parametrize("raw", ["text", None, 5, [1, 2], b"\xff" * 64, b"\x08\x01" * 3], ids=str)
def test_from_bytes_refuses_anything_but_a_valid_encoding(raw: Any) -> None:
    with pytest.raises(InvalidEventError):
        Event.from_bytes(raw)


# A durable name that is not valid Unicode is a ValueError naming "durable", not a
# JournalError that reads like a broken journal.
def test_a_durable_name_that_is_not_valid_unicode_is_refused_naming_it(tmp_path: Path) -> None:
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as bus:
        with pytest.raises((TypeError, ValueError), match="durable"):
            bus.subscribe("a.*", lambda e: None, durable="name-\ud800")
        assert bus.subscriptions() == []
        bus.publish("a.b", 1).get(timeout=WAIT)


def test_a_journal_error_for_bad_input_is_still_an_event_bus_error(tmp_path: Path) -> None:
    # Whatever a misused persistent bus raises stays inside the SPEC's hierarchy
    # (or is the TypeError/ValueError of a bad argument): never an OverflowError
    # or a rocksdict exception.
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as bus:
        bus.publish("a.b", 1).get(timeout=WAIT)
        bus.flush(WAIT)
        for query in (
            EventQuery(after_sequence=2**64),
            EventQuery(after_sequence=10**40, descending=True),
            EventQuery(limit=10**40),
            EventQuery(event_types=["**"], limit=0),
        ):
            with contextlib.suppress(EventBusError, TypeError, ValueError):
                bus.query(query, timeout=WAIT)
        assert [e.data for e in bus.query(EventQuery(limit=10**40))] == [1]
        assert bus.dead_letters(after=2**70) == []


# Regression: flush() inside a filter waited for the router running that filter, for ever.
def test_flush_from_inside_a_filter_is_refused_and_routing_goes_on() -> None:
    """A filter runs on the router's turn (docs/architecture.md), which a flush
    waits for: the router stayed stuck, and ``close(timeout)`` left its threads
    running.  Refused as inside a handler; everything else goes on."""
    refused: list[BaseException] = []

    def checking(event: Event) -> bool:
        try:
            bus.flush(5)
        except Exception as exc:  # what the filter got, whatever it is
            refused.append(exc)
        return True

    with EventBus() as bus:
        filtered, other = Collector(1), Collector(1)
        bus.subscribe("f.*", filtered, filter=checking)
        bus.subscribe("h.*", other)
        bus.publish("f.x", 1).get(timeout=WAIT)
        bus.publish("h.y", 2).get(timeout=WAIT)
        assert filtered.done.wait(WAIT)
        assert other.done.wait(WAIT)
        bus.flush(WAIT)
    assert [(type(e), str(e)) for e in refused] == [
        (RuntimeError, "flush() cannot be called from inside a subscription's filter")
    ]


def test_work_a_filter_hands_on_is_not_inside_the_filter() -> None:
    """asyncio's ``call_soon_threadsafe`` and ``run_coroutine_threadsafe`` run what
    a filter hands them in a copy of its context: a flush there, after the filter
    returned, is an ordinary caller's (a context variable made it "inside")."""
    handed: list[contextvars.Context] = []

    def filtering(event: Event) -> bool:
        handed.append(contextvars.copy_context())
        return True

    with EventBus() as bus:
        got = Collector(1)
        bus.subscribe("f.*", got, filter=filtering)
        bus.publish("f.x", 1).get(timeout=WAIT)
        assert got.done.wait(WAIT)
        [context] = handed
        context.run(bus.flush, WAIT)  # no RuntimeError: not inside the filter
