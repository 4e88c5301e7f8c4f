"""Resource bounds in a long-running process: nothing the bus keeps may grow without bound.

Every table, cache, queue and thread the bus keeps stays within what the docs
promise (``docs/architecture.md``, ``docs/observability.md``,
``docs/requests.md``, ``docs/persistence.md``), and subscriptions, buses,
streams and requests created and dropped many times leave nothing behind.

Measured without clocks: live objects counted with ``gc``, pymalloc blocks
(``sys.getallocatedblocks``), ``tracemalloc`` deltas against bounds derived
from the documented limits with a wide margin, threads
(``threading.enumerate``), file descriptors (``/proc/self/fd``) and the bus's
own figures.  Waits are ``wait_for`` on a condition, never a sleep.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import tracemalloc
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BackpressureError,
    Event,
    EventBus,
    EventConfig,
    EventFilter,
    PersistentEventBus,
    RequestTimeoutError,
)
from actors._model import patterns
from tests._support import WAIT, Gate, wait_for

CACHE_LIMIT = 100_000  # docs: the type caches are cleared when they grow large (patterns.py)
PENDING_LIMIT = 65_536  # docs/requests.md: waiting requests per bus
MAX_LEFT_BEHIND = 16  # docs/architecture.md: calls left running per dedicated subscription


# -- helpers -------------------------------------------------------------------------------


def live(module: str, name: str) -> int:
    """Return how many objects of the class ``module.name`` are alive (after a collection)."""
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if type(o).__name__ == name and type(o).__module__ == module
    )


def objects(module: str, name: str) -> list[object]:
    """Return the live objects of the class ``module.name`` (after a collection)."""
    gc.collect()
    return [
        o for o in gc.get_objects() if type(o).__name__ == name and type(o).__module__ == module
    ]


def subscribers(bus: EventBus) -> int:
    """Return how many subscriber actors of ``bus`` are alive (other tests' leftovers aside)."""
    gc.collect()
    inbox = bus.core.inbox
    return sum(
        1
        for o in gc.get_objects()
        if type(o).__name__ == "SubscriberActor" and o.ports.router is inbox
    )


def trie_nodes() -> int:
    return live("actors._model.trie", "_Node")


def threads() -> int:
    return threading.active_count()


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled(bus: EventBus, baseline: int, slack: int = 2) -> bool:
    """Whether the subscriber actors alive are back to ``baseline`` (plus ``slack``).

    ``metrics()`` first: it folds the figures of unsubscribed actors that have
    stopped, so the bus lets go of them.
    """
    bus.metrics()
    return subscribers(bus) <= baseline + slack


def assert_no_subscriptions(bus: EventBus) -> None:
    assert bus.subscriptions() == []
    metrics = bus.metrics()
    assert metrics.subscriptions == 0
    assert metrics.per_subscription == ()


# -- churn: subscribe and unsubscribe many times -------------------------------------------


def test_plain_and_filtered_churn_leaves_nothing_behind() -> None:
    n = 2_000
    with EventBus(EventConfig(threads=2)) as bus:
        bus.subscribe("warm.up", lambda e: None).unsubscribe()
        bus.flush()
        assert wait_for(lambda: settled(bus, 0, slack=5))
        base_subs, base_nodes, base_threads = subscribers(bus), trie_nodes(), threads()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for i in range(n):
                kind = i % 3
                if kind == 0:
                    sub = bus.subscribe("churn.a.*", lambda e: None)
                elif kind == 1:
                    sub = bus.subscribe("churn.**", lambda e: None, filter=EventFilter(source="x"))
                else:
                    sub = bus.subscribe("churn.{a,b}.c", lambda e: None, filter=lambda e: True)
                if i % 10 == 0:
                    bus.publish("churn.a.c", {"i": i})
                sub.unsubscribe()
            del sub
            bus.flush()
            assert wait_for(lambda: settled(bus, base_subs))
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        assert_no_subscriptions(bus)
        assert trie_nodes() == base_nodes  # every node of the churned patterns pruned
        assert wait_for(lambda: threads() <= base_threads)
        # A subscription costs a few KB (SPEC: < 10 KB idle); 2,000 kept would
        # be megabytes.  The latency window (65,536 floats at most) is the one
        # thing that may grow here: 500 samples.
        assert grown < 1_000_000, f"{grown} bytes kept after {n} subscribe/unsubscribe cycles"


def test_async_handler_churn_leaves_one_loop_thread() -> None:
    async def handler(event: Event) -> None:
        pass

    base_threads = threads()
    with EventBus() as bus:
        warm = bus.subscribe("warm.up", handler)  # starts the bus's loop thread
        bus.publish("warm.up")  # and the timer thread (a batch on a loop is watched)
        bus.flush()
        # The batch's watch starts the timer thread, which can come just after
        # flush: the handler's end released it.
        assert wait_for(lambda: "bus-local-timers" in {t.name for t in threading.enumerate()})
        warm.unsubscribe()
        bus_threads = threads()
        warm_names = sorted(t.name for t in threading.enumerate())
        base_subs = subscribers(bus)
        for i in range(2_000):
            sub = bus.subscribe("achurn.*", handler)
            if i % 20 == 0:
                bus.publish("achurn.x", {"i": i})
            sub.unsubscribe()
        del sub
        bus.flush()
        assert wait_for(lambda: settled(bus, base_subs))
        assert_no_subscriptions(bus)
        # A stand-in the pool added for a slow turn retires after its keepalive.
        assert wait_for(lambda: threads() <= bus_threads), sorted(
            {t.name for t in threading.enumerate()} - set(warm_names)
        )
    assert wait_for(lambda: threads() <= base_threads)


# Regression: unsubscribed dedicated_thread subscriptions kept their 2 threads for ever.
def test_dedicated_thread_churn_returns_threads() -> None:
    base_threads = threads()
    bus = EventBus(EventConfig(threads=2))
    try:
        bus.flush()
        bus_threads = threads()
        for i in range(50):
            sub = bus.subscribe("ded.x", lambda e: None, dedicated_thread=True)
            bus.publish("ded.x", {"i": i})
            bus.flush()
            sub.unsubscribe()
        bus.flush()
        assert_no_subscriptions(bus)
        held = threads() - bus_threads
        assert wait_for(lambda: threads() <= bus_threads, timeout=5), (
            f"{threads() - bus_threads} threads left by 50 unsubscribed dedicated subscriptions "
            f"({held} right after), e.g. {sorted(t.name for t in threading.enumerate())[:4]}"
        )
    finally:
        bus.close(timeout=WAIT)
    assert wait_for(lambda: threads() <= base_threads, timeout=5), (
        f"{threads() - base_threads} threads still alive after close()"
    )


# Regression: a handler `timeout` timer kept an unsubscribed subscriber alive until its deadline.
def test_handler_timeout_churn_releases_subscribers(bus) -> None:
    n = 300
    with EventBus() as bus:
        bus.flush()
        base_subs = subscribers(bus)
        for i in range(n):
            sub = bus.subscribe("tmo.x", lambda e: None, timeout=600.0)
            bus.publish("tmo.x", {"i": i})
            bus.flush()  # the call returned long before its 600 s deadline
            sub.unsubscribe()
        del sub
        bus.flush()
        assert_no_subscriptions(bus)
        assert wait_for(lambda: settled(bus, base_subs, slack=5), timeout=5), (
            f"{subscribers(bus) - base_subs} of {n} unsubscribed subscribers still alive "
            "(held by the bus's timer heap until their handler deadline)"
        )


def test_block_and_reject_churn_releases_gates_and_subscribers(bus) -> None:
    release = threading.Event()

    def stuck(event: Event) -> None:
        release.wait(WAIT)

    with EventBus(EventConfig(block_timeout=0.01, max_threads=64)) as bus:
        bus.flush()
        base_subs = subscribers(bus)
        refused = 0
        for i in range(60):
            overflow = "block" if i % 2 else "reject"
            sub = bus.subscribe("full.x", stuck, capacity=2, overflow=overflow)
            for k in range(5):
                try:
                    bus.publish("full.x", {"k": k}).get(WAIT)
                except BackpressureError:
                    refused += 1
            sub.unsubscribe()
        del sub
        release.set()
        bus.flush()
        assert refused > 0  # the mailboxes were full: gates were set
        assert wait_for(lambda: settled(bus, base_subs))
        assert live("actors._core.backpressure", "Gate") == 0
        assert_no_subscriptions(bus)
        assert wait_for(lambda: bus.metrics().handler_threads == 2)


def test_catch_up_and_durable_churn_leaves_nothing_behind(tmp_path: Path) -> None:
    config = EventConfig(persistence_path=str(tmp_path / "journal"))
    with PersistentEventBus(config) as bus:
        for i in range(300):
            bus.publish("hist.x", {"i": i})
        bus.flush()
        base_subs, base_threads = subscribers(bus), threads()
        for i in range(300):
            sub = bus.subscribe("hist.*", lambda e: None, from_sequence=1 + i)
            sub.unsubscribe()
            sub = bus.subscribe("hist.*", lambda e: None, durable=f"name{i % 7}")
            bus.publish("hist.x", {"again": i})
            sub.unsubscribe()
        del sub
        bus.flush()
        assert wait_for(lambda: settled(bus, base_subs))
        assert_no_subscriptions(bus)
        assert wait_for(lambda: threads() <= base_threads)


def test_distinct_patterns_churn_prunes_the_trie() -> None:
    with EventBus() as bus:
        bus.flush()
        base_nodes, base_subs = trie_nodes(), subscribers(bus)
        subs = []
        for i in range(2_000):
            pattern = (
                f"p{i}.seg{i % 13}.*",
                f"p{i}.**.end",
                f"p{i}.{{a,b{i}}}.x[0-9]",
                f"**.q{i}",
            )[i % 4]
            subs.append(bus.subscribe(pattern, lambda e: None))
        bus.flush()
        assert trie_nodes() > base_nodes + 1_000
        for sub in subs:
            sub.unsubscribe()
        del subs, sub
        bus.flush()
        assert trie_nodes() == base_nodes
        assert wait_for(lambda: settled(bus, base_subs))
        assert_no_subscriptions(bus)


# -- caches: many distinct event types ------------------------------------------------------


def test_many_distinct_event_types_keep_the_type_caches_bounded() -> None:
    # The validated-type set, the trie's resolved-type cache and the router's
    # plan cache each hold at most CACHE_LIMIT types: one string and one small
    # tuple (two pymalloc blocks) per type at most, shared by the three.
    # Without a bound 350,000 types would be 700,000 blocks.
    total, step = 350_000, 10_000
    with EventBus() as bus:
        bus.publish_many([Event(event_type=f"warm.n{i}") for i in range(1_000)])
        bus.flush()
        gc.collect()
        base = sys.getallocatedblocks()
        peak = 0
        prefix = f"types{uuid.uuid4().hex[:8]}"
        for start in range(0, total, step):
            bus.publish_many(
                [Event(event_type=f"{prefix}.n{i}") for i in range(start, start + step)]
            )
            bus.flush()
            gc.collect()
            peak = max(peak, sys.getallocatedblocks() - base)
            assert patterns.cached_type_count() <= CACHE_LIMIT
        assert bus.metrics().published >= total
    assert peak <= 3 * CACHE_LIMIT, f"{peak} blocks held after {total} distinct event types"


# -- correlation store ---------------------------------------------------------------------


def test_traces_are_kept_within_max_traces_and_counted() -> None:
    config = EventConfig(max_traces=100, max_events_per_trace=10)
    with EventBus(config) as bus:
        long = uuid.uuid4()
        for i in range(50):
            bus.publish_correlated("trace.long", {"i": i}, long)
        bus.flush()
        metrics = bus.metrics()
        assert metrics.traces_truncated == 1  # outgrew max_events_per_trace, before any eviction
        assert [e.data["i"] for e in bus.get_correlated(long)] == list(range(40, 50))
        cids = [uuid.uuid4() for _ in range(3_000)]
        bus.publish_many(
            [
                Event(event_type="trace.step", data={"i": i}, correlation_id=c)
                for i, c in enumerate(cids)
            ]
        )
        bus.flush()
        metrics = bus.metrics()
        assert metrics.traces == 100
        assert metrics.traces_evicted == 3_001 - 100  # the long trace went too
        assert bus.get_correlated(cids[0]) == []  # evicted, no journal: gone
        assert len(bus.get_correlated(cids[-1])) == 1
        gc.collect()
        held = sum(1 for o in gc.get_objects() if type(o) is Event and o.event_type == "trace.step")
        assert held < 300, f"{held} Event objects held for 100 traces of one event"


# Regression: traces_truncated missed traces outgrowing max_events_per_trace after evictions.
def test_traces_truncated_counts_a_trace_that_outgrew_after_evictions() -> None:
    config = EventConfig(max_traces=2, max_events_per_trace=5)
    with EventBus(config) as bus:
        for _ in range(5):  # 3 evictions: more than max_traces evicted ids to remember
            bus.publish_correlated("trunc.other", {}, uuid.uuid4())
        bus.flush()
        before = bus.metrics()
        assert before.traces_evicted == 3
        cid = uuid.uuid4()
        for i in range(20):
            bus.publish_correlated("trunc.long", {"i": i}, cid)
        bus.flush()
        assert [e.data["i"] for e in bus.get_correlated(cid)] == list(range(15, 20))
        after = bus.metrics()
        assert after.traces_truncated == before.traces_truncated + 1, (
            f"a trace lost 15 of its 20 events to max_events_per_trace=5 but traces_truncated "
            f"went {before.traces_truncated} -> {after.traces_truncated}"
        )


# -- dead letters --------------------------------------------------------------------------


def test_dead_letters_are_kept_within_dead_letter_limit(caplog: pytest.LogCaptureFixture) -> None:
    # The handler's failures are logged at WARNING; captured records would hold the events.
    caplog.set_level(logging.CRITICAL, logger="actors.subscriber")

    def fails(event: Event) -> None:
        raise ValueError(f"bad {event.data['i']}")

    with EventBus(EventConfig(dead_letter_limit=50)) as bus:
        bus.subscribe("dl.x", fails)
        bus.publish_many([Event(event_type="dl.x", data={"i": i}) for i in range(2_000)])
        bus.flush()
        letters = bus.dead_letters()
        assert [letter.event.data["i"] for letter in letters] == list(range(1_950, 2_000))
        metrics = bus.metrics()
        assert metrics.dead_letters == 2_000
        assert metrics.handler_errors == 2_000
        gc.collect()
        held = sum(1 for o in gc.get_objects() if type(o) is Event and o.event_type == "dl.x")
        assert held <= 50 + 300, f"{held} failed events held for 50 dead letters"
    assert len(bus.dead_letters()) == 50  # the router's last figures, after close


# -- requests ------------------------------------------------------------------------------


def test_timed_out_and_late_answered_requests_leave_the_table_empty() -> None:
    gate = threading.Event()

    def late(event: Event) -> dict[str, Any]:
        gate.wait(WAIT)
        return {"late": True}

    with EventBus() as bus:
        bus.respond("slow.q", late, dedicated_thread=True)
        timed_out = 0
        for i in range(300):
            request_type = ("nobody.a", "nobody.b", "slow.q")[i % 3]
            try:
                bus.request(request_type, {"i": i}, timeout=0.001)
            except RequestTimeoutError:
                timed_out += 1
            assert bus.pending_requests() == 0
        assert timed_out == 300
        gate.set()  # the responder answers 100 callers that left long ago
        bus.flush()
        assert bus.pending_requests() == 0
        # docs/requests.md: one reply route per request type, kept until close.
        assert len(bus.subscriptions()) == 1 + 3
        replies = bus.metrics().per_subscription
        assert all(s.queued == 0 and s.in_flight == 0 for s in replies)
        assert bus.request("slow.q", timeout=WAIT).data == {"late": True}
        assert bus.pending_requests() == 0


def test_pending_table_is_bounded_and_cancelled_requests_leave_it() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(buffer_size=2 * PENDING_LIMIT)) as abus:
            tasks = [
                asyncio.create_task(abus.request("nobody.asked", None, timeout=60))
                for _ in range(PENDING_LIMIT)
            ]
            full = asyncio.Event()

            def check() -> None:
                if abus.sync.pending_requests() >= PENDING_LIMIT:
                    full.set()
                else:
                    asyncio.get_running_loop().call_soon(check)

            check()
            await asyncio.wait_for(full.wait(), WAIT * 3)
            assert abus.sync.pending_requests() == PENDING_LIMIT
            with pytest.raises(BackpressureError):
                await abus.request("nobody.asked", None, timeout=60)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert abus.sync.pending_requests() == 0
            assert len(abus.sync.subscriptions()) == 1  # the one reply route

    asyncio.run(main())


# -- floods: memory bounded by capacity ------------------------------------------------------


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "reject"])
def test_a_flood_into_a_stuck_subscription_is_bounded_by_capacity(overflow: str) -> None:
    capacity, flood = 100, 20_000
    with EventBus() as bus:
        gate = Gate()
        sub = bus.subscribe("flood.x", gate, capacity=capacity, overflow=overflow)
        bus.publish("flood.x", {"i": -1})
        assert gate.entered.wait(WAIT)
        futures = [bus.publish("flood.x", {"i": i, "pad": "x" * 200}) for i in range(flood)]
        refused = 0
        for future in futures:
            try:
                future.get(WAIT)
            except BackpressureError:
                refused += 1
        del futures, future
        stats = sub.statistics()
        assert stats.queued <= capacity
        gc.collect()
        held = sum(1 for o in gc.get_objects() if type(o) is Event and o.event_type == "flood.x")
        assert held <= capacity + 1 + 256, f"{held} events held for a capacity of {capacity}"
        if overflow == "reject":
            assert refused == flood - capacity
            assert stats.dropped == 0
        else:
            assert refused == 0
            assert stats.dropped == flood - capacity
        gate.release.set()
        bus.flush()
        stats = sub.statistics()
        assert stats.accepted == stats.delivered + stats.dropped
        assert stats.delivered == capacity + 1
        assert stats.queued == stats.in_flight == 0


def test_a_block_subscription_holds_capacity_plus_one_per_publisher() -> None:
    capacity = 50
    with EventBus(EventConfig(block_timeout=0.01)) as bus:
        gate = Gate()
        sub = bus.subscribe("bflood.x", gate, capacity=capacity, overflow="block")
        bus.publish("bflood.x", {"i": -1}).get(WAIT)
        assert gate.entered.wait(WAIT)
        refused = 0
        for i in range(capacity + 40):
            try:
                bus.publish("bflood.x", {"i": i}).get(WAIT)
            except BackpressureError:
                refused += 1
        stats = sub.statistics()
        assert stats.queued <= capacity + 1  # one publisher
        assert refused >= 39
        gate.release.set()
        bus.flush()
        assert sub.statistics().delivered == stats.accepted


# -- threads: the handler pool, hand-offs, servers -------------------------------------------


def test_the_handler_pool_grows_for_blocked_handlers_and_retires() -> None:
    config = EventConfig(threads=2, max_threads=12, blocking_threshold=0.05)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocks(event: Event) -> None:
        entered.release()
        release.wait(WAIT)

    with EventBus(config) as bus:
        bus.flush()
        base_threads = threads()
        for i in range(10):
            bus.subscribe(f"pool.b{i}", blocks)
            bus.publish(f"pool.b{i}", {})
        for _ in range(10):
            assert entered.acquire(timeout=WAIT)
        assert bus.metrics().handler_threads <= 12
        assert threads() <= base_threads + 10 + 1
        release.set()
        bus.flush()
        assert wait_for(lambda: bus.metrics().handler_threads == 2)
        assert wait_for(lambda: threads() <= base_threads)


def test_dedicated_timeouts_leave_at_most_sixteen_calls_behind() -> None:
    release = threading.Event()

    def stuck(event: Event) -> None:
        release.wait(WAIT)

    with EventBus() as bus:
        bus.flush()
        base_threads = threads()
        sub = bus.subscribe("left.x", stuck, dedicated_thread=True, timeout=0.02)
        for i in range(40):
            bus.publish("left.x", {"i": i})
        assert wait_for(lambda: sub.statistics().timeouts >= MAX_LEFT_BEHIND + 1)
        # 16 calls left behind, the current one, the watchdog, the timer thread.
        assert threads() <= base_threads + MAX_LEFT_BEHIND + 1 + 2
        assert sub.statistics().timeouts <= MAX_LEFT_BEHIND + 1
        release.set()
        bus.flush()
        # The left-behind threads exit once their calls return.
        assert wait_for(lambda: threads() <= base_threads + 3)
        assert sub.statistics().delivered == 40


def test_metrics_server_scrapes_leave_no_threads_or_sockets() -> None:
    with EventBus() as bus:
        server = bus.serve_metrics(0)
        try:
            urllib.request.urlopen(server.url, timeout=WAIT).read()
            base_threads, base_fds = threads(), fds()
            for _ in range(200):
                with urllib.request.urlopen(server.url, timeout=WAIT) as answer:
                    assert answer.status == 200
                    answer.read()
            assert wait_for(lambda: threads() <= base_threads)
            assert wait_for(lambda: fds() <= base_fds)
        finally:
            server.close()


# -- many buses, loops and wrappers in one process -------------------------------------------


def test_many_buses_opened_and_closed_leave_no_threads_or_descriptors(tmp_path: Path) -> None:
    async def handler(event: Event) -> None:
        pass

    gc.collect()
    base_threads, base_fds = threads(), fds()
    base_holds = live("actors._async_holds", "Holds")
    for _ in range(60):
        with EventBus() as bus:
            bus.subscribe("many.a", lambda e: None)
            bus.subscribe("many.b", handler)
            bus.subscribe("many.c", lambda e: None, dedicated_thread=True)
            bus.publish("many.a", {})
            bus.publish("many.b", {})
            bus.publish("many.c", {})
            bus.flush()
    for i in range(15):
        config = EventConfig(persistence_path=str(tmp_path / "journal"))
        with PersistentEventBus(config) as pbus:
            pbus.subscribe("many.*", lambda e: None, durable="d")
            pbus.publish("many.p", {"i": i}).get(WAIT)
            pbus.flush()

    async def one_loop() -> None:
        async with AsyncEventBus() as abus:
            await abus.subscribe("many.l", handler)
            await abus.publish("many.l", {})
            await abus.flush()

    for _ in range(20):
        asyncio.run(one_loop())
    del bus, pbus
    assert wait_for(lambda: threads() <= base_threads), sorted(
        t.name for t in threading.enumerate()
    )
    assert wait_for(lambda: fds() <= base_fds)
    assert wait_for(lambda: live("actors._async_holds", "Holds") <= base_holds)


def test_stream_and_wrapper_churn_leave_nothing_behind() -> None:
    async def main(bus: EventBus) -> None:
        abus = AsyncEventBus(bus=bus)
        for i in range(500):
            stream = abus.stream("str.*", capacity=5)
            await abus.publish("str.x", {"i": i})
            async for event in stream:
                assert event.data == {"i": i}
                break
            await stream.aclose()
        for _ in range(1_000):
            AsyncEventBus(bus=bus)
        for _ in range(300):  # awaits cancelled: their futures leave the bus's record
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                await asyncio.wait_for(abus.flush(), 0)

    # Another test's wrapper still alive in this worker (its thread finishing) is not ours.
    earlier = objects("actors._async", "AsyncEventBus")
    with EventBus() as bus:
        bus.flush()
        base_subs = subscribers(bus)
        asyncio.run(main(bus))
        bus.flush()
        # A stream is its subscriber's handler: it goes with it (``settled``'s slack).
        assert wait_for(
            lambda: settled(bus, base_subs) and live("actors._async", "EventStream") <= 2
        )
        assert_no_subscriptions(bus)
        assert live("actors._async_holds", "Holds") >= 1  # one per bus, however often wrapped
        now = objects("actors._async", "AsyncEventBus")
        ours = [o for o in now if not any(o is e for e in earlier)]
        assert ours == []
