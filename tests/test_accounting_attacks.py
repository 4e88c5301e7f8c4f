"""Attacks on the bus's statistics (docs/architecture.md "Statistics account for every
event", docs/observability.md): every event accepted is in exactly one place at every
moment, a finished subscription holds none, and the bus's totals are the sums over every
subscription it ever had.  Hypothesis mixes overflow strategies, capacities 1-4, held,
failing and retried handlers, expired events, filters, ``publish_many``, ``unsubscribe``
mid-stream and ``close(timeout)`` giving up, sync and async.  The last two tests hold a thread
at a log call (as a slow log sink would) or in a filter to open the windows every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import pykka
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import (
    AsyncEventBus,
    BackpressureError,
    BusFuture,
    Event,
    EventBus,
    EventConfig,
    OverflowStrategy,
    Subscription,
    SubscriptionStatistics,
)
from tests._support import WAIT, wait_for

TYPES = ("a.x", "a.y", "b.x")
PATTERNS = ("a.x", "a.*", "**", "*.x")  # one-dot types: fnmatch decides as the bus does
KINDS = ("plain", "plain", "fail1", "fail3", "stale", "late")
LATE_TTL = 0.03  # a "late" event expires while its handler holds it; then the handler raises
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
FEW = settings(max_examples=20, deadline=None, database=None, suppress_health_check=SLOW)


@dataclass(frozen=True)
class SubPlan:
    pattern: str
    overflow: OverflowStrategy
    capacity: int
    retries: int
    backoff: float
    modulus: int  # 0: no filter; else events whose index is a multiple of it are filtered out
    hold: bool  # the handler holds its calls until the test lets them go
    dedicated: bool


@dataclass(frozen=True)
class Plan:
    subs: tuple[SubPlan, ...]
    events: tuple[tuple[str, str], ...]  # (event type, kind)
    unsub: tuple[int, int] | None  # (subscription, before which event)
    batched: bool  # publish in threes with publish_many


one_of, flag = st.sampled_from, st.booleans()
sub_plans = st.builds(
    SubPlan, one_of(PATTERNS), one_of(list(OverflowStrategy)), st.integers(1, 4),
    st.integers(0, 2), one_of([0.0, 0.001, 0.004]), one_of([0, 0, 2, 3]), flag, flag,
)  # fmt: skip


@st.composite
def plans(draw: st.DrawFn, *, unsubscribe: bool = True) -> Plan:
    subs = tuple(draw(st.lists(sub_plans, min_size=1, max_size=4)))
    kinds = st.tuples(st.sampled_from(TYPES), st.sampled_from(KINDS))
    events = tuple(draw(st.lists(kinds, min_size=1, max_size=14)))
    unsub = None
    if unsubscribe and draw(st.booleans()):
        unsub = (draw(st.integers(0, len(subs) - 1)), draw(st.integers(0, len(events))))
    return Plan(subs, events, unsub, draw(st.booleans()))


def make_event(i: int, event_type: str, kind: str) -> Event:
    data: Any = {"i": i, "k": kind}
    if kind == "stale":  # its ttl ran out long before it was published
        past = datetime.now(UTC) - timedelta(seconds=60)
        return Event(event_type=event_type, data=data, timestamp=past, ttl=1.0)
    return Event(event_type=event_type, data=data, ttl=LATE_TTL if kind == "late" else None)


def fails(kind: str, attempt: int) -> bool:
    """Return whether attempt ``attempt`` (1 for the first) of an event of ``kind`` raises."""
    return (
        kind == "late" or (kind == "fail1" and attempt == 1) or (kind == "fail3" and attempt <= 3)
    )


def field(event: Event, name: str) -> Any:
    data = event.data
    assert isinstance(data, dict)
    return data[name]


class Tally:
    """What a handler saw: calls that returned, calls that raised, attempts per event."""

    def __init__(self, hold: Any = None) -> None:
        self.hold = hold  # a threading.Event (sync) or asyncio.Event (async) holding calls
        self.lock = threading.Lock()
        self.ok = self.raised = 0
        self.attempts: dict[int, int] = {}
        self.kinds: dict[int, str] = {}

    def attempt(self, event: Event) -> int:
        i, kind = field(event, "i"), field(event, "k")
        assert kind != "stale", f"expired event {i} reached the handler"
        with self.lock:
            self.attempts[i] = n = self.attempts.get(i, 0) + 1
            self.kinds[i] = kind
        return n

    def outcome(self, event: Event, n: int) -> None:
        failed = fails(field(event, "k"), n)
        with self.lock:
            self.raised += failed
            self.ok += not failed
        if failed:
            raise RuntimeError(f"attempt {n} fails")

    def expected_dead(self, retries: int) -> int:
        return sum(k == "fail3" or (k == "fail1" and retries == 0) for k in self.kinds.values())


class SyncHandler(Tally):
    def __call__(self, event: Event) -> None:
        n = self.attempt(event)
        if self.hold is not None:
            self.hold.wait(WAIT)
        if field(event, "k") == "late":
            wait_for(event.expired)  # only a clock brings its ttl to an end
        self.outcome(event, n)


class AsyncHandler(Tally):
    async def __call__(self, event: Event) -> None:
        n = self.attempt(event)
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), WAIT)
        deadline = time.monotonic() + WAIT
        while field(event, "k") == "late" and not event.expired() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # a clock-only state, polled as wait_for does
        self.outcome(event, n)


class Watcher:
    """A handler on ``$bus.**``: the events the bus published of its own."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def dead(self, sub_id: str | None = None) -> int:
        return sum(
            e.event_type == "$bus.deadletter" and sub_id in (None, field(e, "subscription"))
            for e in list(self.events)
        )


def balanced(s: SubscriptionStatistics) -> bool:
    rest = s.delivered + s.expired + s.dead_letters + s.dropped + s.queued + s.in_flight
    return s.accepted == rest


def at_rest(s: SubscriptionStatistics) -> bool:
    return s.queued == 0 and s.in_flight == 0


def options(p: SubPlan) -> dict[str, Any]:
    def keep(e: Event, m: int = p.modulus) -> bool:
        return bool(field(e, "i") % m != 0)

    return {
        "capacity": p.capacity,
        "overflow": p.overflow,
        "retries": p.retries,
        "retry_backoff": p.backoff,
        "filter": keep if p.modulus else None,
        "dedicated_thread": p.dedicated,
    }


def wanted(p: SubPlan, event: Event) -> bool:
    keep = p.modulus == 0 or field(event, "i") % p.modulus != 0
    return keep and (p.pattern == "**" or fnmatchcase(event.event_type, p.pattern))


@dataclass
class Run:  # what one scenario did: subscriptions, handlers, what publishers were told
    subs: list[Subscription]
    handlers: list[Tally]
    watcher: Watcher
    watcher_sub: Subscription
    published: list[tuple[int, Event]]  # (position in the plan, the sequenced event)
    refused: int = 0
    ended: int | None = None  # the subscription unsubscribed mid-stream
    ended_at: int | None = None  # events from this position on never reached it


def check_subscription(run: Run, plan: Plan, k: int, *, exact: bool, closed: bool) -> None:
    """Check one subscription at rest against what its handler and publishers saw."""
    p, tally, s = plan.subs[k], run.handlers[k], run.subs[k].statistics()
    cut = run.ended_at if k == run.ended else None
    assert balanced(s), s
    assert at_rest(s), s
    ids = {field(e, "i") for pos, e in run.published if wanted(p, e) and (cut is None or pos < cut)}
    assert s.accepted == len(ids), (s, sorted(ids))
    assert set(tally.attempts) <= ids, (sorted(tally.attempts), sorted(ids))
    assert (s.delivered, s.errors) == (tally.ok, tally.raised), (s, tally.ok, tally.raised)
    if not closed:  # once close gave up on the watcher it sees no more
        assert s.dead_letters == run.watcher.dead(s.id), s
    if not exact or cut is not None:
        return
    assert s.dead_letters == tally.expected_dead(p.retries), (s, tally.kinds)
    for i, kind in tally.kinds.items():  # tried until it succeeds or its retries run out
        n = 1
        while kind != "late" and fails(kind, n) and n <= p.retries:
            n += 1
        assert tally.attempts[i] == n, (i, kind, tally.attempts[i], p.retries)
    if p.overflow in (
        OverflowStrategy.BLOCK,
        OverflowStrategy.REJECT,
    ):  # nothing dropped: every accepted event reached the subscriber
        timed = [e for _, e in run.published if wanted(p, e) and e.ttl is not None]
        assert (s.dropped, s.expired) == (0, len(timed)), (s, timed)


def check_bus(metrics: Any, run: Run, *, closed: bool, gave_up: bool = False) -> None:
    """The bus's totals are the sums over every subscription it had.  After a ``close``
    that ``gave_up``, handlers and the router may still be at work: a dead letter may
    come later and a ``$bus`` event be routed to the stopped watcher later (where they end
    up is pinned by the last two tests)."""
    every = [s.statistics() for s in [*run.subs, run.watcher_sub]]
    for s in every[: -1 if gave_up else None]:
        assert balanced(s), s
        assert at_rest(s), s
    names = ("delivered", "dropped", "expired", "errors", "timeouts")
    totals = ("delivered", "dropped", "expired", "handler_errors", "handler_timeouts")
    for name, total in zip(names, totals, strict=True):
        assert getattr(metrics, total) == sum(getattr(s, name) for s in every), (name, metrics)
    dead = sum(s.dead_letters for s in every)
    assert metrics.dead_letters <= dead if gave_up else metrics.dead_letters == dead, metrics
    if not closed:
        assert metrics.dead_letters == run.watcher.dead(), (metrics, run.watcher.events)
    watched = every[-1].accepted
    assert metrics.published == len(run.published) + watched, (metrics, watched)
    assert metrics.rejected == run.refused, metrics
    live = {s.id for s in [*run.subs, run.watcher_sub] if s.active}
    assert {s.id for s in metrics.per_subscription} == (set() if closed else live)
    by_id = {s.id: s for s in every}
    for s in metrics.per_subscription:
        assert balanced(s), s
        assert s == by_id[s.id] or s.blocked_seconds != by_id[s.id].blocked_seconds, s


def sampling(subs: Sequence[Subscription]) -> Callable[[bool], None]:
    """Read statistics on a thread while the bus works; the returned call stops it and
    checks each read balanced (at every moment) and no counter ever went back."""
    stop, wrong, last = threading.Event(), list[Any](), dict[str, tuple[int, ...]]()

    def run() -> None:
        while not stop.is_set() and not wrong:
            for s in (sub.statistics() for sub in subs):
                now = (s.accepted, s.delivered, s.dropped, s.expired, s.dead_letters, s.errors)
                if not balanced(s) or any(map(int.__lt__, now, last.get(s.id, now))):
                    wrong.append((last.get(s.id), s))
                last[s.id] = now

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish(check: bool) -> None:
        stop.set()
        thread.join(WAIT)
        assert not check or (not thread.is_alive() and wrong == []), wrong

    return finish


def unsubscriber(plan: Plan, run: Run) -> Callable[[int], None]:
    def ending(pos: int) -> None:
        if plan.unsub is not None and plan.unsub[1] == pos and run.ended is None:
            run.ended, run.ended_at = plan.unsub[0], pos
            run.subs[plan.unsub[0]].unsubscribe()

    return ending


def publish_plan(bus: EventBus, plan: Plan, run: Run) -> None:
    """Publish every event of ``plan`` from this thread; count what publishers were told."""
    events = [make_event(i, t, k) for i, (t, k) in enumerate(plan.events)]
    futures: list[tuple[int, BusFuture[Event]]] = []
    ending = unsubscriber(plan, run)
    chunks: list[list[int]] = []  # positions per call: threes when batched, cut at unsubscribe
    for pos in range(len(events)):
        cut = plan.unsub is not None and plan.unsub[1] == pos
        if not chunks or cut or not plan.batched or len(chunks[-1]) == 3:
            chunks.append([])
        chunks[-1].append(pos)
    for chunk in chunks:
        ending(chunk[0])
        try:
            if len(chunk) == 1:
                got = [bus.publish(events[chunk[0]])]
            else:
                got = bus.publish_many([events[pos] for pos in chunk])
        except BackpressureError:  # a full BLOCK subscription, past block_timeout
            run.refused += len(chunk)
            continue
        futures.extend(zip(chunk, got, strict=True))
    ending(len(plan.events))
    for pos, future in futures:
        try:
            run.published.append((pos, future.get(timeout=WAIT)))
        except BackpressureError:  # a full REJECT subscription
            run.refused += 1


def check_all(run: Run, plan: Plan, *, exact: bool, closed: bool = False) -> None:
    """Let every subscription come to rest (an ended one finishes on its own), check each."""
    for k, sub in enumerate(run.subs):
        assert wait_for(lambda: at_rest(sub.statistics())), sub.statistics()  # noqa: B023
        assert sub.active != (closed or k == run.ended), sub
        check_subscription(run, plan, k, exact=exact, closed=closed)


def start(bus: EventBus, plan: Plan, handlers: list[Any]) -> Run:
    watcher = Watcher()
    watcher_sub = bus.subscribe("$bus.**", watcher, capacity=100_000)
    subs = [
        bus.subscribe(p.pattern, h, **options(p)) for p, h in zip(plan.subs, handlers, strict=True)
    ]
    return Run(subs, handlers, watcher, watcher_sub, [])


@FEW
@given(plan=plans())
def test_a_random_mix_adds_up_exactly_per_subscription_and_on_the_bus(plan: Plan) -> None:
    """Every figure matches what handlers and publishers saw, balances at every moment,
    and the bus's totals are the sums, before and after ``close``."""
    bus = EventBus(EventConfig(threads=2, block_timeout=0.02))
    release, sampled = threading.Event(), None
    try:
        run = start(bus, plan, [SyncHandler(release if p.hold else None) for p in plan.subs])
        sampled = sampling([*run.subs, run.watcher_sub])
        publish_plan(bus, plan, run)
        release.set()
        bus.flush(WAIT)
        bus.flush(WAIT)  # the $bus events that handlers' outcomes made after the first began
        check_all(run, plan, exact=True)
        sampled(True)
        check_bus(bus.metrics(), run, closed=False)
        assert bus.close(timeout=WAIT) == ()
        check_bus(bus.metrics(), run, closed=True)
    finally:
        if sampled is not None:
            sampled(False)  # a failed example leaves no thread reading behind
        release.set()
        bus.close(timeout=WAIT)


@FEW
@given(plan=plans(unsubscribe=False), timeout=st.sampled_from([0.0, 0.05]))
def test_close_that_gives_up_on_a_stuck_handler_leaves_every_figure_adding_up(
    plan: Plan, timeout: float
) -> None:
    """``close(timeout)`` gives up on a handler stuck in its first call (and any other
    busy at the deadline); let go, every subscription comes to rest balanced and
    ``metrics()`` after ``close`` still sums them all."""
    bus = EventBus(EventConfig(threads=2, block_timeout=0.02))
    release, unstick = threading.Event(), threading.Event()
    stuck = SubPlan("**", OverflowStrategy.DROP_OLDEST, 10_000, 1, 0.0, 0, True, False)
    first = ("z.z", "plain")  # only "**" wants it: the stuck handler gets a call, whatever else
    plan = Plan((*plan.subs, stuck), (first, *plan.events), None, plan.batched)
    try:
        handlers: list[Tally] = [SyncHandler(release if p.hold else None) for p in plan.subs]
        handlers[-1] = SyncHandler(unstick)
        run = start(bus, plan, handlers)
        publish_plan(bus, plan, run)
        release.set()
        assert wait_for(lambda: bool(handlers[-1].attempts))
        given_up = bus.close(timeout=timeout)
        assert run.subs[-1].id in {s.id for s in given_up}, given_up
        for s in given_up:
            assert balanced(s), s
            assert s.queued + s.in_flight > 0, s
        unstick.set()
        check_all(run, plan, exact=False, closed=True)
        check_bus(bus.metrics(), run, closed=True, gave_up=True)
    finally:
        release.set()
        unstick.set()
        bus.close(timeout=WAIT)


async def async_scenario(plan: Plan) -> None:
    abus = AsyncEventBus(EventConfig(threads=2, block_timeout=0.02))
    release, thread_release = asyncio.Event(), threading.Event()
    try:
        # A dedicated thread takes a synchronous handler; the others run on this loop.
        handlers: list[Tally] = [
            SyncHandler(thread_release if p.hold else None)
            if p.dedicated
            else AsyncHandler(release if p.hold else None)
            for p in plan.subs
        ]
        run = start(abus.sync, plan, handlers)
        ending = unsubscriber(plan, run)
        for pos, (event_type, kind) in enumerate(plan.events):
            ending(pos)
            try:
                run.published.append((pos, await abus.publish(make_event(pos, event_type, kind))))
            except BackpressureError:
                run.refused += 1
        ending(len(plan.events))
        release.set()
        thread_release.set()
        await abus.flush(WAIT)
        await abus.flush(WAIT)
        # Off the loop: an ended subscription's handler still needs it to finish.
        await asyncio.to_thread(check_all, run, plan, exact=True)
        check_bus(abus.metrics(), run, closed=False)
        await abus.aclose(WAIT)
        check_bus(abus.metrics(), run, closed=True)
    finally:
        await abus.aclose(WAIT)


@FEW
@given(plan=plans())
def test_a_random_mix_on_the_async_bus_adds_up_exactly(plan: Plan) -> None:
    """The same mixes through ``AsyncEventBus`` with ``async def`` handlers (held on an
    ``asyncio.Event``, failing, retried after a backoff, expiring while held)."""
    asyncio.run(async_scenario(plan))


# -- windows a descheduled thread opens, held open by a logging handler ----------------------


@contextlib.contextmanager
def held_at_log(name: str, prefix: str) -> Iterator[threading.Event]:
    """Hold the first thread that logs a record starting with ``prefix`` on logger ``name``
    until the block ends; yield an event set once a thread is held there."""
    inside, go = threading.Event(), threading.Event()

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not inside.is_set() and record.getMessage().startswith(prefix):
                inside.set()
                go.wait(WAIT)

    logger, hold = logging.getLogger(name), Hold(logging.DEBUG)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(hold)
    try:
        yield inside
    finally:
        go.set()
        logger.removeHandler(hold)
        logger.setLevel(level)


def test_metrics_read_while_an_unsubscribed_subscriber_stops_keeps_its_discards() -> None:
    """docs/observability.md: an ended subscription "keeps counting what it still does
    while it finishes (... the queue it discards), and its figures stay in the totals".
    A ``metrics()`` between pykka marking the actor stopped and the actor discarding
    its queue must not lose those discards from ``metrics().dropped`` for good."""
    bus = EventBus(EventConfig(threads=2))
    entered, release = threading.Event(), threading.Event()

    def held(event: Event) -> None:
        entered.set()
        release.wait(WAIT)

    try:
        sub = bus.subscribe("x.*", held)
        bus.publish("x.e", 0).get(timeout=WAIT)
        assert entered.wait(WAIT)
        for i in range(5):  # queued behind the held call
            bus.publish("x.e", i + 1).get(timeout=WAIT)
        with held_at_log("pykka", "Stopped SubscriberActor") as inside:
            sub.unsubscribe()
            release.set()
            assert inside.wait(WAIT)  # stopped, its queue not yet discarded
            bus.metrics()
        assert wait_for(lambda: at_rest(sub.statistics())), sub.statistics()
        s = sub.statistics()
        assert balanced(s), s
        assert (s.accepted, s.delivered, s.dropped) == (6, 1, 5), s
        metrics = bus.metrics()
        assert (metrics.delivered, metrics.dropped) == (s.delivered, s.dropped), metrics
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_a_dead_letter_decided_as_close_gives_up_is_lost_to_the_bus() -> None:
    """A handler's last attempt fails just before ``close(timeout)`` gives up on it: the
    subscription counts the dead letter, so the bus's ``dead_letters`` (the sum over
    its subscriptions) and ``dead_letters()`` must count it too."""
    bus = EventBus(EventConfig(threads=2))

    def failing(event: Event) -> None:
        raise RuntimeError("no")

    try:
        sub = bus.subscribe("d.*", failing, retries=0)
        with held_at_log("actors.subscriber", "handler of") as inside:
            bus.publish("d.e", 1).get(timeout=WAIT)
            assert inside.wait(WAIT)  # decided: a dead letter; not yet told to the router
            bus.close(timeout=0.05)  # gives up on it
        assert wait_for(lambda: at_rest(sub.statistics())), sub.statistics()
        s = sub.statistics()
        assert balanced(s), s
        assert (s.accepted, s.dead_letters, s.errors) == (1, 1, 1), s
        # Told to the router once the held thread goes on from its log line: no hook
        # says when, so the bus's figures are polled (a failure bound, not a timing).
        assert wait_for(lambda: bus.metrics().dead_letters == s.dead_letters), bus.metrics()
        assert len(bus.dead_letters()) == s.dead_letters
    finally:
        bus.close(timeout=WAIT)


def test_a_bus_event_routed_after_close_stopped_its_subscriber_is_not_left_queued() -> None:
    """A finished subscription shows nothing queued.  The router is held in a filter,
    a dead letter behind it in the same turn, while ``close`` stops the subscribers;
    let go, it announces the dead letter to a ``$bus.**`` subscription that stopped."""
    bus = EventBus(EventConfig(threads=2))
    stage = {x: (threading.Event(), threading.Event()) for x in "AB"}  # (inside, go)
    fail_go, passed = threading.Event(), threading.Event()

    def holding_filter(event: Event) -> bool:
        inside, go = stage[str(event.data)]
        inside.set()
        go.wait(WAIT)
        return True

    def handler(event: Event) -> None:
        if event.data == 1:
            fail_go.wait(WAIT)
            raise RuntimeError("no")
        passed.set()  # the dead letter of event 1 is in the router's mailbox

    before = set(pykka.ActorRegistry.get_all())
    try:
        watcher_sub = bus.subscribe("$bus.**", Watcher())
        bus.subscribe("d.*", handler, retries=0)
        bus.subscribe("f.*", lambda e: None, filter=holding_filter)
        ours = set(pykka.ActorRegistry.get_by_class_name("SubscriberActor")) - before
        for i in (1, 2):
            bus.publish("d.e", i).get(timeout=WAIT)
        bus.publish("f.e", "A")
        assert stage["A"][0].wait(WAIT)  # the router's turn holds in the filter
        bus.publish("f.e", "B")
        fail_go.set()
        assert passed.wait(WAIT)
        last = bus.publish("g.e", "C")
        stage["A"][1].set()  # its next turn takes B, the dead letter, then C
        assert stage["B"][0].wait(WAIT)
        bus.close(timeout=0.05)  # the router does not stop in time; the subscribers do
        assert wait_for(lambda: not ours & set(pykka.ActorRegistry.get_all()))
        stage["B"][1].set()
        last.get(timeout=WAIT)  # resolved once the turn offered what it routed
        assert wait_for(lambda: at_rest(watcher_sub.statistics())), watcher_sub.statistics()
        assert balanced(watcher_sub.statistics())
    finally:
        for _inside, go in stage.values():
            go.set()
        fail_go.set()
        bus.close(timeout=WAIT)
