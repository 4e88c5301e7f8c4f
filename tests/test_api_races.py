"""The public API used from many threads at once.

Fault injection on concurrency: threads lined up with barriers race
``publish``, ``publish_many``, ``subscribe``, ``unsubscribe``, ``flush``,
``query``, ``get_correlated``, ``request``/``respond``, ``close`` and the
asyncio face beside synchronous callers, and each test checks one promise of
SPEC section 4 or ``docs/architecture.md``: exactly once, in publish order,
gap-free sequences, flush covers what was published before it, a call racing
``close`` either works or raises ``BusClosedError`` (never hangs), handlers
that call the bus do not deadlock.  Every wait is bounded by ``WAIT`` (a hang
guard whose expiry fails the test, never a measure of speed).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import (
    AsyncEventBus,
    BusClosedError,
    BusFuture,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    PersistentEventBus,
)
from tests._support import WAIT, Recorder, wait_for

THREADS = 6


class Seen:
    """A handler that records (data, sequence) pairs under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[Any, int]] = []

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.items.append((event.data, event.sequence or 0))

    def data(self) -> list[Any]:
        with self.lock:
            return [d for d, _ in self.items]

    def sequences(self) -> list[int]:
        with self.lock:
            return [s for _, s in self.items]


def run_threads(targets: list[Callable[[], None]], join: float = 4 * WAIT) -> list[BaseException]:
    """Start one thread per target, join them all; return what they raised.

    A thread still alive after ``join`` is reported as a hang.
    """
    errors: list[BaseException] = []
    lock = threading.Lock()

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        return body

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join)
    hung = [t for t in threads if t.is_alive()]
    if hung:
        errors.append(AssertionError(f"{len(hung)} thread(s) still running after {join}s"))
    return errors


def assert_in_order_exactly_once(seen: Seen, expected: set[Any]) -> None:
    data = [tuple(d) if isinstance(d, list) else d for d in seen.data()]
    sequences = seen.sequences()
    assert len(data) == len(set(data)), "an event was delivered twice"
    assert set(data) == expected, f"missing {len(expected - set(data))} event(s)"
    assert sequences == sorted(sequences), "a subscription saw events out of sequence order"


# -- publishers against publishers -----------------------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_concurrent_publish_and_publish_many_give_gap_free_unique_sequences(trial: int) -> None:
    per_thread = 400
    with EventBus(EventConfig(threads=2)) as bus:
        seen = Seen()
        other = Seen()
        bus.subscribe("p.**", seen)
        bus.subscribe("p.*", other, dedicated_thread=True)
        start = threading.Barrier(THREADS)
        futures: dict[int, list[BusFuture[Event]]] = {k: [] for k in range(THREADS)}

        def publisher(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                n = 0
                while n < per_thread:
                    if (n + k) % 3 == 0:
                        size = 1 + (n % 7)
                        batch = [
                            Event(event_type="p.e", data=[k, i])
                            for i in range(n, min(per_thread, n + size))
                        ]
                        futures[k].extend(bus.publish_many(batch))
                        n += len(batch)
                    else:
                        futures[k].append(bus.publish("p.e", [k, n]))
                        n += 1

            return body

        assert run_threads([publisher(k) for k in range(THREADS)]) == []
        published = {k: [f.get(timeout=WAIT) for f in fs] for k, fs in futures.items()}
        bus.flush(WAIT)
        all_sequences = sorted(e.sequence or 0 for es in published.values() for e in es)
        total = THREADS * per_thread
        assert all_sequences == list(range(all_sequences[0], all_sequences[0] + total))
        for k, events in published.items():
            assert [e.data for e in events] == [[k, i] for i in range(per_thread)]
            seqs = [e.sequence or 0 for e in events]
            assert seqs == sorted(seqs), "one thread's publishes were sequenced out of order"
        expected = {(k, i) for k in range(THREADS) for i in range(per_thread)}
        for s in (seen, other):
            data = [tuple(d) for d in s.data()]
            assert len(data) == len(set(data)) == total
            assert set(data) == expected
            assert s.sequences() == all_sequences


@settings(
    max_examples=12,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    threads=st.integers(2, 6),
    per_thread=st.integers(1, 120),
    batch=st.integers(1, 17),
    dedicated=st.booleans(),
    capacity_slack=st.booleans(),
)
def test_property_every_event_reaches_every_matching_subscription_once_in_order(
    threads: int, per_thread: int, batch: int, dedicated: bool, capacity_slack: bool
) -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        subs = {
            "h.*": Seen(),
            "h.**": Seen(),
            "h.{a,b}": Seen(),
            "**": Seen(),
        }
        for pattern, seen in subs.items():
            bus.subscribe(
                pattern,
                seen,
                dedicated_thread=dedicated,
                capacity=threads * per_thread + 10 if capacity_slack else None,
            )
        start = threading.Barrier(threads)
        kinds = ["h.a", "h.b", "h.c"]

        def publisher(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                for first in range(0, per_thread, batch):
                    events = [
                        Event(event_type=kinds[(k + i) % 3], data=[k, i])
                        for i in range(first, min(per_thread, first + batch))
                    ]
                    if len(events) == 1:
                        bus.publish(events[0])
                    else:
                        bus.publish_many(events)

            return body

        assert run_threads([publisher(k) for k in range(threads)]) == []
        bus.flush(WAIT)
        every = {(k, i) for k in range(threads) for i in range(per_thread)}
        ab = {(k, i) for (k, i) in every if (k + i) % 3 != 2}
        for pattern, seen in subs.items():
            got = [tuple(d) for d in seen.data()]
            assert len(got) == len(set(got)), f"{pattern}: duplicates"
            assert set(got) == (ab if pattern == "h.{a,b}" else every), pattern
            seqs = seen.sequences()
            assert seqs == sorted(seqs), pattern
            for k in range(threads):  # one publisher's events in its order
                mine = [i for (j, i) in got if j == k]
                assert mine == sorted(mine), pattern


# -- subscribe / unsubscribe churn beside publishers -------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_subscription_churn_does_not_disturb_a_steady_subscription(trial: int) -> None:
    per_thread = 600
    with EventBus(EventConfig(threads=2)) as bus:
        steady = Seen()
        bus.subscribe("c.*", steady)
        publishers = 3
        churners = 3
        start = threading.Barrier(publishers + churners)
        done = threading.Event()

        def publisher(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                for i in range(per_thread):
                    bus.publish("c.e", [k, i])

            return body

        def churner(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                n = 0
                while not done.is_set() or n < 20:
                    pattern = ["c.*", "c.**", "**", "c.e"][n % 4]
                    sub = bus.subscribe(pattern, lambda _: None, dedicated_thread=n % 5 == 0)
                    sub.unsubscribe()
                    n += 1

            return body

        pubs = [publisher(k) for k in range(publishers)]
        chs = [churner(k) for k in range(churners)]
        errors: list[BaseException] = []
        churning = threading.Thread(target=lambda: errors.extend(run_threads(chs)))
        # the churners need the publishers to reach the barrier too: start both sides
        churning.start()
        errors.extend(run_threads(pubs))
        done.set()
        churning.join(4 * WAIT)
        assert not churning.is_alive()
        assert errors == []
        bus.flush(WAIT)
        assert_in_order_exactly_once(
            steady, {(k, i) for k in range(publishers) for i in range(per_thread)}
        )
        steady_data = [tuple(d) for d in steady.data()]
        for k in range(publishers):
            mine = [i for (j, i) in steady_data if j == k]
            assert mine == list(range(per_thread))
        assert [s.pattern for s in bus.subscriptions()] == ["c.*"]


@pytest.mark.parametrize("trial", range(3))
def test_every_event_published_after_subscribe_returns_reaches_it(trial: int) -> None:
    """Subscribers join while publishers run; each sees everything published after it joined.

    A publisher snapshots which subscriptions had returned from ``subscribe``
    before each publish: those must get that event, exactly once, in order.
    """
    joiners = 8
    publishers = 3
    per_thread = 300
    with EventBus(EventConfig(threads=2)) as bus:
        joined: list[tuple[Seen, int]] = []  # (handler, index)
        lock = threading.Lock()
        owed: list[tuple[tuple[int, int], tuple[int, ...]]] = []
        start = threading.Barrier(joiners + publishers)

        def joiner(j: int) -> Callable[[], None]:
            def body() -> None:
                seen = Seen()
                start.wait(WAIT)
                bus.subscribe("j.**", seen, dedicated_thread=j % 3 == 0)
                with lock:
                    joined.append((seen, j))
                # at once, a publish of our own after subscribe returned
                key = (100 + j, 0)
                with lock:
                    snapshot = tuple(i for _, i in joined)
                    owed.append((key, snapshot))
                bus.publish("j.own", list(key))

            return body

        def publisher(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                for i in range(per_thread):
                    with lock:
                        snapshot = tuple(x for _, x in joined)
                        owed.append(((k, i), snapshot))
                    bus.publish("j.e", [k, i])

            return body

        errors = run_threads(
            [joiner(j) for j in range(joiners)] + [publisher(k) for k in range(publishers)]
        )
        assert errors == []
        bus.flush(WAIT)
        by_index = {j: seen for seen, j in joined}
        for j, seen in by_index.items():
            got = [tuple(d) for d in seen.data()]
            assert len(got) == len(set(got)), f"subscription {j} got a duplicate"
            seqs = seen.sequences()
            assert seqs == sorted(seqs), f"subscription {j} out of order"
            missing = [key for key, snap in owed if j in snap and key not in set(got)]
            assert missing == [], f"subscription {j} missed {len(missing)} event(s): {missing[:5]}"


# -- unsubscribe ------------------------------------------------------------------------------


@pytest.mark.parametrize("dedicated", [False, True])
@pytest.mark.parametrize("round_", range(30))
def test_no_handler_call_starts_after_unsubscribe_returns(dedicated: bool, round_: int) -> None:
    """Publishers flood; another thread unsubscribes: afterwards no new call begins."""
    with EventBus(EventConfig(threads=2)) as bus:
        lock = threading.Lock()
        state = {"starts": 0, "running": 0}
        going = threading.Event()

        def handler(_: Event) -> None:
            with lock:
                state["starts"] += 1
                state["running"] += 1
            going.set()
            with lock:
                state["running"] -= 1

        sub = bus.subscribe("u.*", handler, dedicated_thread=dedicated)
        stop = threading.Event()
        start = threading.Barrier(3)

        def publisher() -> None:
            start.wait(WAIT)
            while not stop.is_set():
                bus.publish_many([Event(event_type="u.e", data=i) for i in range(20)])

        after: list[tuple[int, int]] = []

        def unsubscriber() -> None:
            start.wait(WAIT)
            assert going.wait(WAIT)
            sub.unsubscribe()
            with lock:
                after.append((state["starts"], state["running"]))

        pubs = [publisher, publisher]
        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: errors.extend(run_threads(pubs)))
        t.start()
        errors.extend(run_threads([unsubscriber]))
        stop.set()
        t.join(4 * WAIT)
        assert errors == []
        bus.flush(WAIT)
        (starts, running) = after[0]
        assert running <= 1
        # A call entered just before the return may not have counted itself
        # yet (it is "the one the handler may be running"): at most one.
        extra = state["starts"] - starts
        assert extra <= 1 - running, f"{extra} handler call(s) began after unsubscribe() returned"
        assert not sub.active


@pytest.mark.parametrize("round_", range(40))
def test_unsubscribe_racing_its_own_handler_unsubscribing(round_: int) -> None:
    """The handler unsubscribes itself while another thread does too: idempotent, no hang."""
    with EventBus(EventConfig(threads=2)) as bus:
        holder: list[Any] = []
        calls = []
        ready = threading.Event()

        def handler(event: Event) -> None:
            calls.append(event.data)
            ready.wait(WAIT)
            holder[0].unsubscribe()

        holder.append(bus.subscribe("v.*", handler))
        for i in range(50):
            bus.publish("v.e", i)
        start = threading.Barrier(2)

        def other() -> None:
            start.wait(WAIT)
            holder[0].unsubscribe()
            ready.set()

        def again() -> None:
            start.wait(WAIT)
            holder[0].unsubscribe()

        assert run_threads([other, again]) == []
        ready.set()
        bus.flush(WAIT)
        assert len(calls) <= 1
        assert bus.subscriptions() == []


# -- flush ------------------------------------------------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_flush_from_many_threads_covers_each_threads_own_publishes(trial: int) -> None:
    per_round = 50
    rounds = 10
    with EventBus(EventConfig(threads=2)) as bus:
        seen_pool = Seen()
        seen_own = Seen()
        bus.subscribe("f.**", seen_pool)
        bus.subscribe("f.*", seen_own, dedicated_thread=True)
        start = threading.Barrier(THREADS)

        def worker(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                for r in range(rounds):
                    mine = set()
                    for i in range(per_round):
                        key = (k, r, i)
                        mine.add(key)
                        if i % 10 == 0:
                            bus.publish_many([Event(event_type="f.e", data=list(key))])
                        else:
                            bus.publish("f.e", list(key))
                    bus.flush(WAIT)
                    for seen in (seen_pool, seen_own):
                        got = {tuple(d) for d in seen.data()}
                        lost = mine - got
                        assert not lost, f"flush returned before {len(lost)} event(s) were handled"

            return body

        assert run_threads([worker(k) for k in range(THREADS)]) == []


# -- close racing everything ------------------------------------------------------------------


# Regression: subscribe() racing close() returned a subscription that stayed active.
def test_subscribe_racing_close_leaves_no_live_subscription() -> None:
    """``close`` stops every actor; a ``subscribe`` that overlaps it raises or is stopped too.

    Reproduces in most of 20 rounds: a ``subscribe`` that passed the closed
    check adds its subscriber after ``close`` took the subscribers to stop.
    """
    leaked: list[int] = []
    for _ in range(20):
        bus = EventBus(EventConfig(threads=2))
        subs: list[Any] = []
        start = threading.Barrier(5)

        def loop(bus: EventBus = bus, subs: list[Any] = subs, start: Any = start) -> None:
            start.wait(WAIT)
            while True:
                try:
                    subs.append(bus.subscribe("a.*", lambda _: None))
                except BusClosedError:
                    return

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        start.wait(WAIT)
        assert wait_for(lambda subs=subs: len(subs) >= 50)
        bus.close(timeout=WAIT)
        for t in threads:
            t.join(WAIT)
            assert not t.is_alive()
        live = [s for s in subs if s.active]
        if live or bus.subscriptions():
            leaked.append(len(live))
    assert leaked == [], f"subscriptions still active after close in {len(leaked)} of 20 rounds"


@pytest.mark.parametrize("trial", range(6))
def test_every_call_racing_close_returns_or_raises_bus_closed(trial: int) -> None:
    """Many threads loop over the API while the main thread closes: each call ends cleanly.

    A call either completes or raises ``BusClosedError`` (raised, or in its
    future); none waits until its own timeout, and after ``close`` returns no
    publish future is pending and every subscription is inactive.
    """
    bus = EventBus(EventConfig(threads=2))
    handled: set[Any] = set()
    hl = threading.Lock()

    def record(event: Event) -> None:
        with hl:
            handled.add(tuple(event.data))

    bus.subscribe("z.*", record, capacity=10**7)  # nothing dropped
    bus.respond("q.ask", lambda e: e.data)
    cid = uuid.uuid4()
    futures: list[BusFuture[Event]] = []
    subs: list[Any] = []
    fl = threading.Lock()
    count = itertools.count()
    start = threading.Barrier(8)
    wrong: list[str] = []

    def loop(step: Callable[[int], None]) -> Callable[[], None]:
        def body() -> None:
            start.wait(WAIT)
            n = 0
            while True:
                try:
                    step(n)
                except BusClosedError:
                    return
                except Exception as exc:  # timeouts: the call was left waiting
                    wrong.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
                    return
                n += 1
                next(count)

        return body

    def publish(n: int) -> None:
        f = bus.publish("z.e", [0, n], correlation_id=cid)
        with fl:
            futures.append(f)

    def publish_many(n: int) -> None:
        fs = bus.publish_many([Event(event_type="z.e", data=[1, n, i]) for i in range(3)])
        with fl:
            futures.extend(fs)

    def subscribe(n: int) -> None:
        sub = bus.subscribe("z.*", lambda _: None)
        with fl:
            subs.append(sub)
        if n % 2:
            sub.unsubscribe()

    def flush(_: int) -> None:
        bus.flush(timeout=WAIT)

    def correlated(_: int) -> None:
        bus.get_correlated(cid, timeout=WAIT)

    def request(n: int) -> None:
        assert bus.request("q.ask", n, timeout=WAIT).data == n

    def metrics(_: int) -> None:
        bus.metrics()
        if bus.closed:
            raise BusClosedError("done")

    steps = [publish, publish_many, subscribe, flush, correlated, request, metrics]
    threads = [threading.Thread(target=loop(s), daemon=True) for s in steps]
    for t in threads:
        t.start()
    start.wait(WAIT)
    assert wait_for(lambda: next(count) > 300 + 100 * trial)
    bus.close(timeout=WAIT)
    for t in threads:
        t.join(3 * WAIT)
    assert [s.__name__ for s, t in zip(steps, threads, strict=True) if t.is_alive()] == []
    assert wrong == []
    acked: set[Any] = set()
    for f in futures:
        assert f.done(), "a publish future stayed pending after close"
        if f.exception() is None:
            acked.add(tuple(f.get().data))
        else:
            assert isinstance(f.exception(), BusClosedError)
    assert acked <= handled
    # (subscriptions left active by this race: test_subscribe_racing_close_leaves_no_live_...)


@pytest.mark.parametrize("trial", range(10))
def test_flush_and_get_correlated_racing_close_never_wait_out_their_timeout(trial: int) -> None:
    bus = EventBus(EventConfig(threads=2))
    bus.subscribe("y.*", lambda _: None)
    cid = uuid.uuid4()
    bus.publish_correlated("y.e", 1, cid)
    stuck: list[str] = []
    start = threading.Barrier(9)

    def flusher() -> None:
        start.wait(WAIT)
        while True:
            try:
                bus.flush(timeout=WAIT)
            except BusClosedError:
                return
            except Exception as exc:
                stuck.append(f"flush: {type(exc).__name__}")
                return

    def correlator() -> None:
        start.wait(WAIT)
        while True:
            try:
                bus.get_correlated(cid, timeout=WAIT)
            except BusClosedError:
                return
            except Exception as exc:
                stuck.append(f"get_correlated: {type(exc).__name__}")
                return

    threads = [threading.Thread(target=f, daemon=True) for f in [flusher] * 4 + [correlator] * 4]
    for t in threads:
        t.start()
    start.wait(WAIT)
    bus.close(timeout=WAIT)
    for t in threads:
        t.join(3 * WAIT)
    assert not any(t.is_alive() for t in threads)
    assert stuck == []


@pytest.mark.parametrize("round_", range(20))
def test_many_threads_closing_at_once_all_return_one_does_the_work(round_: int) -> None:
    bus = EventBus(EventConfig(threads=2))
    seen = Seen()
    bus.subscribe("w.*", seen)
    for i in range(200):
        bus.publish("w.e", i)
    results: list[Any] = []
    start = threading.Barrier(THREADS)

    def closer() -> None:
        start.wait(WAIT)
        results.append(bus.close(timeout=WAIT))

    assert run_threads([closer] * THREADS) == []
    assert results == [()] * THREADS
    assert seen.data() == list(range(200))


# -- handlers that call the bus ---------------------------------------------------------------


@pytest.mark.parametrize("dedicated", [False, True])
def test_handlers_subscribing_publishing_requesting_and_unsubscribing_do_not_deadlock(
    dedicated: bool,
) -> None:
    """Every handler subscribes, publishes, requests and unsubscribes from inside itself."""
    with EventBus(EventConfig(threads=2)) as bus:
        bus.respond("r.ask", lambda e: e.data)
        inner = Seen()
        outcomes: list[Any] = []
        ol = threading.Lock()

        def handler(event: Event) -> None:
            sub = bus.subscribe(f"inner.{event.data[0]}.*", inner)
            bus.publish(f"inner.{event.data[0]}.e", event.data)
            reply = bus.request("r.ask", event.data, timeout=WAIT)
            sub.unsubscribe()
            with ol:
                outcomes.append((tuple(event.data), tuple(reply.data)))

        for k in range(4):
            bus.subscribe(f"outer.{k}", handler, dedicated_thread=dedicated)
        start = threading.Barrier(4)

        def publisher(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                for i in range(15):
                    bus.publish(f"outer.{k}", [k, i])

            return body

        assert run_threads([publisher(k) for k in range(4)]) == []
        assert wait_for(lambda: len(outcomes) == 60, 3 * WAIT), f"{len(outcomes)} of 60 done"
        assert sorted(outcomes) == sorted(((k, i), (k, i)) for k in range(4) for i in range(15))
        bus.flush(WAIT)
        assert [s.pattern for s in bus.subscriptions() if s.pattern.startswith("inner")] == []


# -- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_requests_from_many_threads_each_get_their_own_reply(trial: int) -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        bus.respond("rq.a", lambda e: {"echo": e.data, "by": "a"})
        bus.respond("rq.b", lambda e: {"echo": e.data, "by": "b"}, dedicated_thread=True)
        start = threading.Barrier(8)
        got: dict[int, list[Any]] = {}

        def caller(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                mine = []
                for i in range(40):
                    kind = "rq.a" if (k + i) % 2 else "rq.b"
                    reply = bus.request(kind, [k, i], timeout=WAIT)
                    mine.append((reply.data["echo"], reply.data["by"], kind))
                got[k] = mine

            return body

        assert run_threads([caller(k) for k in range(8)]) == []
        for k, replies in got.items():
            for i, (echo, by, kind) in enumerate(replies):
                assert echo == [k, i]
                assert by == kind[-1]
        assert bus.pending_requests() == 0


@pytest.mark.parametrize("round_", range(10))
def test_first_requests_of_a_new_type_racing_each_other_all_get_replies(round_: int) -> None:
    """The reply route of a type is made by the first caller: racing first callers all get one."""
    with EventBus(EventConfig(threads=2)) as bus:
        kind = f"first.t{uuid.uuid4().hex[:6]}"
        bus.respond(kind, lambda e: e.data)
        start = threading.Barrier(THREADS)
        got: list[Any] = []

        def caller(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                got.append(bus.request(kind, k, timeout=WAIT).data)

            return body

        assert run_threads([caller(k) for k in range(THREADS)]) == []
        assert sorted(got) == list(range(THREADS))
        reply_routes = [s for s in bus.subscriptions() if s.pattern.startswith(kind + ".")]
        assert len(reply_routes) == 1


# -- persistence: query, get_correlated, durable ------------------------------------------


def _query_race(tmp_path: Path) -> list[str]:
    bus = PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j")))
    acked = [0] * 3
    stop = threading.Event()
    start = threading.Barrier(5)
    problems: list[str] = []

    def publisher(k: int) -> Callable[[], None]:
        def body() -> None:
            start.wait(WAIT)
            i = 0
            while not stop.is_set():
                if i % 4 == 0:
                    fs = bus.publish_many(
                        [Event(event_type="qp.e", data=[k, i, j]) for j in range(5)]
                    )
                    last = fs[-1].get(timeout=WAIT)
                else:
                    last = bus.publish("qp.e", [k, i]).get(timeout=WAIT)
                acked[k] = max(acked[k], last.sequence or 0)
                i += 1

        return body

    def querier() -> None:
        start.wait(WAIT)
        try:
            for _ in range(30):
                floor = max(acked)  # every publish acknowledged before the query
                found = bus.query(EventQuery(event_types=["qp.*"]), timeout=WAIT)
                seqs = [e.sequence or 0 for e in found]
                if seqs != list(range(1, len(seqs) + 1)):
                    problems.append(f"not a prefix: {len(seqs)} events with holes")
                    return
                if floor and (not seqs or seqs[-1] < floor):
                    problems.append(f"query missed acknowledged events up to {floor}")
                    return
                tail = bus.query(
                    EventQuery(event_types=["qp.*"], descending=True, limit=10), timeout=WAIT
                )
                tseq = [e.sequence or 0 for e in tail]
                if tseq != sorted(tseq, reverse=True) or (floor and tseq[0] < floor):
                    problems.append(f"descending tail wrong: {tseq} floor {floor}")
                    return
        finally:
            stop.set()

    try:
        errors = run_threads([querier, querier] + [publisher(k) for k in range(3)])
        problems.extend(f"{type(e).__name__}: {e}" for e in errors)
    finally:
        stop.set()
        bus.close(timeout=WAIT)
    return problems


def test_get_correlated_during_concurrent_publishes_sees_every_acknowledged_event() -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        cid = uuid.uuid4()
        acked: list[set[uuid.UUID]] = [set(), set(), set()]
        stop = threading.Event()
        start = threading.Barrier(5)
        problems: list[str] = []

        def publisher(k: int) -> Callable[[], None]:
            def body() -> None:
                start.wait(WAIT)
                i = 0
                # below max_events_per_trace (10,000): the trace stays whole in memory
                while not stop.is_set() and i < 2500:
                    e = bus.publish_correlated("gc.e", [k, i], cid).get(timeout=WAIT)
                    acked[k].add(e.id)
                    i += 1

            return body

        def reader() -> None:
            start.wait(WAIT)
            try:
                for _ in range(60):
                    before = set().union(*(set(a) for a in acked))
                    events = bus.get_correlated(cid, timeout=WAIT)
                    ids = [e.id for e in events]
                    seqs = [e.sequence or 0 for e in events]
                    if len(ids) != len(set(ids)):
                        problems.append("duplicate event in get_correlated")
                        return
                    if seqs != sorted(seqs):
                        problems.append("get_correlated not in sequence order")
                        return
                    if not before <= set(ids):
                        problems.append(f"missed {len(before - set(ids))} acknowledged event(s)")
                        return
            finally:
                stop.set()

        errors = run_threads([reader, reader] + [publisher(k) for k in range(3)])
        assert errors == []
        assert problems == []


def test_query_during_concurrent_publishes_sees_a_prefix(tmp_path: Path) -> None:
    assert _query_race(tmp_path) == []


def test_durable_subscriptions_of_one_name_opened_at_once(tmp_path: Path) -> None:
    """Two threads open ``durable="d"`` at once beside publishers; the checkpoint never goes back.

    The docs ask for one live subscription per name; when two are opened at
    once both must still work (no hang, no error), and after a clean close
    the name resumes after the last event, with nothing skipped or repeated.
    """
    path = str(tmp_path / "j")
    bus = PersistentEventBus(EventConfig(persistence_path=path))
    a, b = Recorder(), Recorder()
    start = threading.Barrier(4)
    subs: list[Any] = []

    def opener(handler: Recorder) -> Callable[[], None]:
        def body() -> None:
            start.wait(WAIT)
            subs.append(bus.subscribe("d.*", handler, durable="d"))

        return body

    def publisher(k: int) -> Callable[[], None]:
        def body() -> None:
            start.wait(WAIT)
            for i in range(200):
                bus.publish("d.e", [k, i])

        return body

    assert run_threads([opener(a), opener(b), publisher(0), publisher(1)]) == []
    last = bus.publish("d.e", "last").get(timeout=WAIT)
    a.wait_for(last, WAIT)
    b.wait_for(last, WAIT)
    for r in (a, b):
        seqs = r.sequences
        assert seqs == sorted(set(seqs)), "a durable subscription saw duplicates or disorder"
        assert seqs[-1] == last.sequence
    bus.close(timeout=WAIT)

    bus = PersistentEventBus(EventConfig(persistence_path=path))
    try:
        again = Recorder()
        bus.subscribe("d.*", again, durable="d")
        after = bus.publish("d.e", "after").get(timeout=WAIT)
        again.wait_for(after, WAIT)
        assert again.data == ["after"]
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("trial", range(3))
def test_durable_resume_while_publishers_run_has_no_gap_and_no_duplicate(
    tmp_path: Path, trial: int
) -> None:
    path = str(tmp_path / "j")
    bus = PersistentEventBus(EventConfig(persistence_path=path))
    first = Recorder()
    sub = bus.subscribe("dr.*", first, durable="n")
    for i in range(300):
        bus.publish("dr.e", i)
    bus.flush(WAIT)
    sub.unsubscribe()
    checkpoint = first.sequences[-1]
    start = threading.Barrier(4)
    again = Recorder()

    def publisher(k: int) -> Callable[[], None]:
        def body() -> None:
            start.wait(WAIT)
            for i in range(300):
                bus.publish("dr.e", [k, i])

        return body

    def resumer() -> None:
        start.wait(WAIT)
        bus.subscribe("dr.*", again, durable="n")

    try:
        assert run_threads([resumer, *(publisher(k) for k in range(3))]) == []
        last = bus.publish("dr.e", "last").get(timeout=WAIT)
        again.wait_for(last, WAIT)
        seqs = again.sequences
        assert seqs == list(range(checkpoint + 1, (last.sequence or 0) + 1))
    finally:
        bus.close(timeout=WAIT)


# -- the asyncio face beside synchronous callers --------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_async_publishers_streams_and_flush_beside_sync_threads(trial: int) -> None:
    sync_threads = 3
    per = 200
    bus = EventBus(EventConfig(threads=2))
    results: dict[str, Any] = {}
    ready = threading.Event()
    start = threading.Barrier(sync_threads + 1)

    async def main() -> None:
        abus = AsyncEventBus(bus=bus)
        stream = abus.stream("as.**")
        seen_async: list[Any] = []

        async def ahandler(event: Event) -> None:
            seen_async.append((tuple(event.data), event.sequence))

        await abus.subscribe("as.**", ahandler)
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, start.wait, WAIT)

        async def apub(k: int) -> None:
            for i in range(per):
                if i % 5 == 0:
                    await abus.publish_many([Event(event_type="as.a", data=[k, i])])
                else:
                    await abus.publish("as.a", [k, i])

        await asyncio.gather(*(apub(100 + k) for k in range(3)))
        await asyncio.wait_for(abus.flush(), WAIT)
        results["async_seen"] = list(seen_async)
        got = []
        total = (sync_threads + 3) * per
        async for event in stream:
            got.append((tuple(event.data), event.sequence))
            if len(got) == total:
                break
        results["stream"] = got
        await stream.aclose()

    def loop_thread() -> None:
        try:
            asyncio.run(asyncio.wait_for(main(), 4 * WAIT))
        except BaseException as exc:
            results["error"] = exc

    lt = threading.Thread(target=loop_thread, daemon=True)
    lt.start()
    assert ready.wait(WAIT)

    def publisher(k: int) -> Callable[[], None]:
        def body() -> None:
            start.wait(WAIT)
            for i in range(per):
                bus.publish("as.s", [k, i])

        return body

    try:
        assert run_threads([publisher(k) for k in range(sync_threads)]) == []
        lt.join(5 * WAIT)
        assert not lt.is_alive()
        assert "error" not in results, repr(results.get("error"))
        sync_keys = {(k, i) for k in range(sync_threads) for i in range(per)}
        async_keys = {(100 + k, i) for k in range(3) for i in range(per)}
        # the async publishers awaited their publishes before the flush
        async_seen = results["async_seen"]
        keys = [k for k, _ in async_seen]
        assert async_keys <= set(keys)
        assert len(keys) == len(set(keys))
        seqs = [s for _, s in async_seen]
        assert seqs == sorted(seqs)
        stream = results["stream"]
        skeys = [k for k, _ in stream]
        assert set(skeys) == sync_keys | async_keys
        assert len(skeys) == len(set(skeys))
        sseqs = [s for _, s in stream]
        assert sseqs == sorted(sseqs)
    finally:
        bus.close(timeout=WAIT)


def test_async_requests_beside_sync_requests_each_get_their_own_reply() -> None:
    bus = EventBus(EventConfig(threads=2))
    bus.respond("ar.q", lambda e: e.data)
    out: dict[str, Any] = {}
    start = threading.Barrier(4)

    async def main() -> None:
        abus = AsyncEventBus(bus=bus)
        await asyncio.get_running_loop().run_in_executor(None, start.wait, WAIT)
        replies = await asyncio.gather(
            *(abus.request("ar.q", ["a", i], timeout=WAIT) for i in range(200))
        )
        out["async"] = [r.data for r in replies]

    def loop_thread() -> None:
        try:
            asyncio.run(asyncio.wait_for(main(), 3 * WAIT))
        except BaseException as exc:
            out["error"] = exc

    def caller(k: int) -> Callable[[], None]:
        def body() -> None:
            start.wait(WAIT)
            out[f"s{k}"] = [bus.request("ar.q", [k, i], timeout=WAIT).data for i in range(60)]

        return body

    try:
        assert run_threads([loop_thread, *(caller(k) for k in range(3))]) == []
        assert "error" not in out, repr(out.get("error"))
        assert out["async"] == [["a", i] for i in range(200)]
        for k in range(3):
            assert out[f"s{k}"] == [[k, i] for i in range(60)]
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("trial", range(5))
def test_aclose_racing_sync_publishers_each_publish_resolves_or_is_refused(trial: int) -> None:
    bus = EventBus(EventConfig(threads=2))
    handled: set[Any] = set()
    hl = threading.Lock()

    def record(event: Event, hl: threading.Lock = hl, handled: set[Any] = handled) -> None:
        with hl:
            handled.add(tuple(event.data))

    sub = bus.subscribe("ac.*", record, capacity=10**7)  # nothing dropped
    futures: list[BusFuture[Event]] = []
    fl = threading.Lock()
    start = threading.Barrier(4)
    count = itertools.count()

    def publisher(k: int, bus: EventBus = bus, futures: list[Any] = futures) -> None:
        start.wait(WAIT)
        i = 0
        while True:
            try:
                f = bus.publish("ac.e", [k, i])
            except BusClosedError:
                return
            with fl:
                futures.append(f)
            next(count)
            i += 1

    async def main(bus: EventBus = bus) -> None:
        abus = AsyncEventBus(bus=bus)
        await asyncio.get_running_loop().run_in_executor(None, start.wait, WAIT)
        await asyncio.get_running_loop().run_in_executor(
            None, wait_for, lambda: next(count) > 500 + 100 * trial
        )
        await asyncio.wait_for(abus.aclose(timeout=WAIT), 2 * WAIT)

    threads = [threading.Thread(target=publisher, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    asyncio.run(main())
    for t in threads:
        t.join(2 * WAIT)
        assert not t.is_alive()
    acked = set()
    for f in futures:
        assert f.done()
        if f.exception() is None:
            acked.add(tuple(f.get().data))
        else:
            assert isinstance(f.exception(), BusClosedError)
    assert sub.statistics().dropped == 0
    assert acked <= handled, f"{len(acked - handled)} acknowledged event(s) never handled"
