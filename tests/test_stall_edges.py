"""Holding to "never let one slow agent stall the others".

Many handlers blocked at once (more than ``threads``, up to and past
``max_threads``), handlers that busy-loop in Python, handlers that never
return (with ``dedicated_thread=True`` and ``timeout=``), a thundering herd
released at once, ``BLOCK`` publishers waiting for room beside blocked
handlers, blocked handlers that publish, request or flush from inside,
blocked ``async def`` handlers on the bus's background loop, and
``close(timeout)`` over all of it.  Every blocked handler waits on a
``threading.Event`` that the test sets in a ``finally``; every wait is
bounded and not arriving within the bound is the failure.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from actors import (
    BackpressureError,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    OverflowStrategy,
    SubscriptionStatistics,
)
from tests._support import WAIT, Collector, Gate, wait_for


class Held:
    """A handler that blocks in every event until ``release`` is set."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.entered = threading.Event()
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        self.entered.set()
        assert self.release.wait(WAIT * 3), "the test never released the handler"
        with self.lock:
            self.events.append(event)


class Spinner:
    """A handler that busy-loops in Python (holding the GIL in switch-interval slices)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.entered = threading.Event()
        self.handled = 0

    def __call__(self, event: Event) -> None:
        self.entered.set()
        total = 0
        while not self.release.is_set():
            for i in range(2000):
                total += i
        self.handled += 1


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a handler blocked behind a failed test


def adds_up(s: SubscriptionStatistics) -> bool:
    return s.accepted == (
        s.delivered + s.expired + s.dead_letters + s.dropped + s.queued + s.in_flight
    )


def in_thread(fn: Any) -> tuple[threading.Event, list[Any]]:
    """Run ``fn`` on a daemon thread; return (done, [result or exception])."""
    done = threading.Event()
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, out


# -- routing past max_threads ------------------------------------------------------------


# The router never waits behind handlers: with threads=2, max_threads=3 and
# more handlers blocking right after a publish than the pool may have threads,
# the publishes after it are routed.  The router's turn may be queued on the
# pool behind the handler turns that then block; the watchdog moves a system
# turn that waited blocking_threshold there to the spare thread.
@pytest.mark.parametrize("blocking", [3, 10])
def test_routing_goes_on_when_handlers_block_right_after_a_publish_past_max_threads(
    blocking: int, release: threading.Event
) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=3, blocking_threshold=0.05))
    try:
        held = [Held(release) for _ in range(blocking)]
        for handler in held:
            bus.subscribe("job.*", handler)
        bus.publish("job.go")
        cid = uuid.uuid4()
        futures = [bus.publish_correlated("ping.x", i, cid) for i in range(200)]
        done, out = in_thread(lambda: [f.get(timeout=WAIT) for f in futures])
        assert done.wait(WAIT * 1.5), "publish futures never resolved while handlers blocked"
        assert not isinstance(out[0], BaseException), out[0]
        assert [e.data for e in out[0]] == list(range(200))
        assert len(bus.get_correlated(cid, timeout=WAIT)) == 200
    finally:
        release.set()
        bus.close(timeout=WAIT)


# Nor does the correlation actor: once every thread the pool may have is
# blocked, get_correlated still answers (its stranded turn is moved to the
# spare thread too).
def test_routing_and_correlation_go_on_once_max_threads_are_all_blocked(
    release: threading.Event,
) -> None:
    # Past max_threads, once the blocked turns are known: publishes resolve,
    # get_correlated answers, the starved subscriptions only queue.
    bus = EventBus(EventConfig(threads=2, max_threads=4, blocking_threshold=0.05))
    try:
        held = [Held(release) for _ in range(6)]
        subs = [bus.subscribe("job.*", h) for h in held]
        bus.publish("job.go").get(timeout=WAIT)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 4)
        cid = uuid.uuid4()
        futures = [bus.publish_correlated("job.step", i, cid) for i in range(50)]
        for future in futures:
            assert future.get(timeout=WAIT).sequence is not None
        assert len(bus.get_correlated(cid, timeout=WAIT)) == 50
        metrics = bus.metrics()
        assert metrics.handler_threads == 4
        assert metrics.blocked_handlers == 4
        stats = [s.statistics() for s in subs]
        assert all(adds_up(s) for s in stats)
        assert sum(1 for s in stats if s.blocked) == 4
        starved = [s for s in stats if not s.blocked]
        assert [(s.in_flight, s.queued) for s in starved] == [(0, 51), (0, 51)]
        release.set()
        bus.flush(WAIT)
        assert all(len(h.events) == 51 for h in held)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 0)
        assert wait_for(lambda: bus.metrics().handler_threads == 2), "extra threads stayed"
    finally:
        release.set()
        bus.close(timeout=WAIT)


# "Past max_threads, the rest wait for a thread (logged at WARNING once)":
# once per episode of a full pool, not once per newly blocked turn.
def test_max_threads_reached_is_warned_once(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=3, blocking_threshold=0.05))
    try:
        with caplog.at_level(logging.WARNING, logger="actors.dispatcher"):
            held = [Held(release) for _ in range(5)]
            for h in held:
                bus.subscribe("job.*", h)
            bus.publish("job.go").get(timeout=WAIT)
            assert wait_for(lambda: bus.metrics().blocked_handlers == 3)
            # a few more watchdog scans with the same blocked turns
            for _ in range(3):
                assert wait_for(lambda: bus.metrics().blocked_handlers == 3)
            assert bus.metrics().handler_threads == 3
        warned = [r for r in caplog.records if "max_threads=3 reached" in r.getMessage()]
        assert len(warned) == 1, [r.getMessage() for r in warned]
    finally:
        release.set()
        bus.close(timeout=WAIT)


# -- many blocked, within max_threads -----------------------------------------------------


def test_busy_looping_handlers_stall_only_their_own_subscriptions(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=8, blocking_threshold=0.05))
    try:
        spinners = [Spinner(release) for _ in range(4)]
        subs = [bus.subscribe("job.*", s) for s in spinners]
        fast = Collector(300)
        bus.subscribe("fast.*", fast)
        bus.publish("job.go").get(timeout=WAIT)
        assert all(s.entered.wait(WAIT) for s in spinners)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 4)
        for i in range(300):
            bus.publish("fast.e", i)
        assert fast.done.wait(WAIT), f"the fast subscription got {len(fast.events)} of 300"
        assert fast.data == list(range(300))
        # The watchdog publishes what it saw blocked, then adds the threads: wait for them
        # (under load the fast events can all be handled before it added the last one).
        assert wait_for(lambda: bus.metrics().handler_threads >= 6)
        metrics = bus.metrics()
        assert 6 <= metrics.handler_threads <= 8
        assert {s.id for s in metrics.per_subscription if s.blocked} == {s.id for s in subs}
        release.set()
        bus.flush(WAIT)
        assert all(s.handled == 1 for s in spinners)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 0)
        assert wait_for(lambda: bus.metrics().handler_threads == 2)
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_a_thundering_herd_released_at_once_loses_nothing_and_gives_threads_back(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=20, blocking_threshold=0.05))
    try:
        held = [Held(release) for _ in range(12)]
        subs = [bus.subscribe("job.*", h) for h in held]
        bus.publish("job.go").get(timeout=WAIT)
        assert all(h.entered.wait(WAIT) for h in held), "a blocked handler never got a thread"
        for future in [bus.publish("job.step", i) for i in range(100)]:
            future.get(timeout=WAIT)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 12)
        # The watchdog publishes what it saw blocked, then adds the threads: wait for them.
        assert wait_for(lambda: bus.metrics().handler_threads >= 14)
        assert bus.metrics().handler_threads <= 20
        release.set()  # every handler returns at once
        bus.flush(WAIT)
        for h in held:
            assert [e.data for e in h.events] == [None, *range(100)]
        for sub in subs:
            s = sub.statistics()
            assert (s.accepted, s.delivered, s.queued, s.in_flight) == (101, 101, 0, 0)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 0)
        assert wait_for(lambda: bus.metrics().handler_threads == 2), "extra threads stayed"
        # and the pool still works after the herd
        after = Collector(10)
        bus.subscribe("after.*", after)
        for i in range(10):
            bus.publish("after.e", i)
        assert after.done.wait(WAIT)
    finally:
        release.set()
        bus.close(timeout=WAIT)


# -- BLOCK beside blocked handlers --------------------------------------------------------


def test_a_block_publisher_waits_only_for_its_own_subscription(
    release: threading.Event,
) -> None:
    config = EventConfig(threads=2, max_threads=16, blocking_threshold=0.05, block_timeout=WAIT)
    bus = EventBus(config)
    gate = Gate()
    try:
        held = [Held(release) for _ in range(4)]
        for h in held:
            bus.subscribe("job.*", h)
        work = bus.subscribe("work.*", gate, capacity=2, overflow=OverflowStrategy.BLOCK)
        fast = Collector(100)
        bus.subscribe("fast.*", fast)
        bus.publish("job.go").get(timeout=WAIT)
        assert all(h.entered.wait(WAIT) for h in held)
        bus.publish("work.e", 1).get(timeout=WAIT)
        assert gate.entered.wait(WAIT)
        bus.publish("work.e", 2).get(timeout=WAIT)
        bus.publish("work.e", 3).get(timeout=WAIT)
        assert wait_for(lambda: work.statistics().queued == 2)
        waiting, out = in_thread(lambda: bus.publish("work.e", 4).get(timeout=WAIT))
        for i in range(100):
            bus.publish("fast.e", i)  # not wanted by the full BLOCK subscription
        assert fast.done.wait(WAIT)
        assert not waiting.is_set(), "the BLOCK publish did not wait for room"
        gate.release.set()
        assert waiting.wait(WAIT)
        assert not isinstance(out[0], BaseException), out[0]
        assert wait_for(lambda: gate.data == [1, 2, 3, 4])
        assert all(not h.events for h in held), "the held handlers were never blocked"
    finally:
        gate.release.set()
        release.set()
        bus.close(timeout=WAIT)


def test_close_under_blocked_handlers_refuses_a_waiting_block_publisher(
    release: threading.Event,
) -> None:
    config = EventConfig(threads=2, max_threads=6, blocking_threshold=0.05, block_timeout=WAIT)
    bus = EventBus(config)
    gate = Gate()
    try:
        held = [Held(release) for _ in range(3)]
        for h in held:
            bus.subscribe("job.*", h)
        bus.subscribe("work.*", gate, capacity=1, overflow="block")
        bus.publish("job.go").get(timeout=WAIT)
        assert all(h.entered.wait(WAIT) for h in held)
        bus.publish("work.e", 1).get(timeout=WAIT)
        assert gate.entered.wait(WAIT)
        bus.publish("work.e", 2).get(timeout=WAIT)
        waiting, out = in_thread(lambda: bus.publish("work.e", 3))
        closed, given = in_thread(lambda: bus.close(timeout=0.5))
        assert waiting.wait(WAIT), "the BLOCK publisher still waits after close"
        assert isinstance(out[0], BusClosedError), out[0]
        assert not isinstance(out[0], BackpressureError)
        assert closed.wait(WAIT), "close(timeout=0.5) did not return"
        assert not isinstance(given[0], BaseException), given[0]
        assert len(given[0]) == 4
        assert all(adds_up(s) for s in given[0])
        assert bus.metrics().rejected == 0
    finally:
        gate.release.set()
        release.set()
        bus.close(timeout=WAIT)


# -- a blocked handler that publishes, requests or flushes from inside -------------------


def test_a_blocked_handler_publishes_requests_and_cannot_flush(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=16, blocking_threshold=0.05))
    seen: dict[str, Any] = {}
    inside = threading.Event()

    def agent(event: Event) -> None:
        bus.publish("child.x", "from-agent")
        seen["reply"] = bus.request("tool.q", {"q": 1}, timeout=WAIT)
        try:
            bus.flush(WAIT)
        except RuntimeError as exc:
            seen["flush"] = exc
        inside.set()
        assert release.wait(WAIT * 3)

    try:
        held = [Held(release) for _ in range(4)]
        for h in held:
            bus.subscribe("job.*", h)
        bus.respond("tool.q", lambda req: {"a": req.data["q"] + 1})
        children = Collector(1)
        bus.subscribe("child.*", children)
        bus.subscribe("agent.*", agent)
        bus.publish("job.go").get(timeout=WAIT)
        assert all(h.entered.wait(WAIT) for h in held)
        start = bus.publish("agent.go").get(timeout=WAIT)
        assert inside.wait(WAIT), "the agent never got its reply while others blocked"
        assert seen["reply"].data == {"a": 2}
        assert isinstance(seen.get("flush"), RuntimeError)
        assert children.done.wait(WAIT)
        [child] = children.events
        assert child.causation_id == start.id
        # the agent itself now blocks too: the others still flow
        assert wait_for(lambda: bus.metrics().blocked_handlers == 5)
        reply = bus.request("tool.q", {"q": 41}, timeout=WAIT)
        assert reply.data == {"a": 42}
    finally:
        release.set()
        bus.close(timeout=WAIT)


# -- dedicated_thread with timeout= ---------------------------------------------------------


def test_a_dedicated_handler_that_never_returns_is_moved_past(release: threading.Event) -> None:
    bus = EventBus(EventConfig(threads=2, blocking_threshold=0.05))
    handled: list[Any] = []
    stuck = threading.Event()

    def handler(event: Event) -> None:
        if event.data == "stuck":
            stuck.set()
            assert release.wait(WAIT * 3)
            return
        handled.append(event.data)

    try:
        sub = bus.subscribe("slow.*", handler, dedicated_thread=True, timeout=0.1)
        bus.publish("slow.e", "stuck")
        assert stuck.wait(WAIT)
        for i in range(5):
            bus.publish("slow.e", i)
        assert wait_for(lambda: handled == list(range(5))), handled
        bus.flush(WAIT)  # does not wait for the late call
        s = sub.statistics()
        assert (s.delivered, s.queued, s.in_flight, s.timeouts) == (6, 0, 0, 1)
        assert adds_up(s)
        assert bus.metrics().handler_threads == 2
        assert bus.metrics().handler_timeouts == 1
        closed, given = in_thread(lambda: bus.close(timeout=0.5))
        assert closed.wait(WAIT)
        assert given[0] == (), "close waited for / gave up on a call it had moved past"
    finally:
        release.set()
        bus.close(timeout=WAIT)


class Forever:
    """A handler whose every call blocks until ``release``; records the calls it got."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.calls: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.calls.append(event.data)
        assert self.release.wait(WAIT * 3)


# With dedicated_thread=True and timeout=, each event moved past counts as
# delivered at once, also while the batch is held by a call that never returns.
def test_events_moved_past_count_as_delivered_while_the_batch_is_held(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, blocking_threshold=0.05))
    handler = Forever(release)
    try:
        sub = bus.subscribe("slow.*", handler, dedicated_thread=True, timeout=0.05)
        for future in [bus.publish("slow.e", i) for i in range(20)]:
            future.get(timeout=WAIT)
        # 16 calls left behind, the 17th is late too but must be waited for.
        assert wait_for(lambda: sub.statistics().timeouts == 17), sub.statistics()
        assert handler.calls == list(range(17))
        s = sub.statistics()
        assert adds_up(s)
        assert s.delivered == 16, s
        assert s.queued + s.in_flight == 4, s
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_a_dedicated_handler_past_16_left_behind_is_given_up_at_close(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, blocking_threshold=0.05))
    handler = Forever(release)
    try:
        sub = bus.subscribe("slow.*", handler, dedicated_thread=True, timeout=0.05)
        for future in [bus.publish("slow.e", i) for i in range(20)]:
            future.get(timeout=WAIT)
        assert wait_for(lambda: sub.statistics().timeouts == 17), sub.statistics()
        assert handler.calls == list(range(17))  # it waits for the 17th, runs no 18th
        # unrelated subscriptions still flow, on the shared pool
        fast = Collector(20)
        bus.subscribe("fast.*", fast)
        for i in range(20):
            bus.publish("fast.e", i)
        assert fast.done.wait(WAIT)
        assert bus.metrics().handler_threads == 2
        closed, given = in_thread(lambda: bus.close(timeout=0.3))
        assert closed.wait(WAIT), "close(timeout=0.3) did not return"
        [gave_up] = given[0]
        assert gave_up.id == sub.id
        assert adds_up(gave_up)
        release.set()
        assert wait_for(lambda: sub.statistics().in_flight == 0), sub.statistics()
        final = sub.statistics()
        assert adds_up(final), final
        assert final.queued == 0
        assert final.delivered == 17, final  # 16 moved past, the 17th returned
        assert final.dropped == 3, final
        assert handler.calls == list(range(17)), "an event ran after close gave up"
    finally:
        release.set()
        bus.close(timeout=WAIT)


# -- async handlers on the bus's background loop ----------------------------------------------


def test_an_awaiting_async_handler_does_not_stall_other_async_handlers_on_the_loop(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, blocking_threshold=0.05))
    entered = threading.Event()
    got: list[Any] = []
    all_in = threading.Event()

    async def slow(event: Event) -> None:
        entered.set()
        while not release.is_set():  # an LLM call awaited: the loop stays free
            await asyncio.sleep(0.005)

    async def forever(event: Event) -> None:
        await asyncio.Event().wait()  # never set: cancelled at its timeout

    async def quick(event: Event) -> None:
        got.append(event.data)
        if len(got) == 100:
            all_in.set()

    try:
        bus.subscribe("slow.*", slow)
        timed = bus.subscribe("never.*", forever, timeout=0.1)
        bus.subscribe("quick.*", quick)
        bus.publish("slow.e")
        bus.publish("never.e")
        assert entered.wait(WAIT)
        for i in range(100):
            bus.publish("quick.e", i)
        assert all_in.wait(WAIT), f"the other async handler got {len(got)} of 100"
        assert got == list(range(100))
        assert wait_for(lambda: timed.statistics().timeouts == 1)
        assert wait_for(lambda: timed.statistics().dead_letters == 1)
        assert adds_up(timed.statistics())
        release.set()
        bus.flush(WAIT)
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_an_async_handler_blocking_its_loop_stalls_no_sync_handler(
    release: threading.Event,
) -> None:
    # Documented: an async handler that blocks its loop stalls that loop (and
    # cannot be cancelled); it is counted in ``timeouts``.  Sync subscriptions,
    # routing and requests are not on that loop and must go on.
    bus = EventBus(EventConfig(threads=2, blocking_threshold=0.05))
    entered = threading.Event()
    started: list[float] = []
    later: list[Any] = []

    async def hog(event: Event) -> None:
        started.append(time.monotonic())
        entered.set()
        assert release.wait(WAIT * 3)  # blocks the loop's thread

    async def neighbour(event: Event) -> None:
        later.append(event.data)

    try:
        hogged = bus.subscribe("hog.*", hog, timeout=0.1)
        bus.subscribe("near.*", neighbour)
        fast = Collector(100)
        bus.subscribe("fast.*", fast)
        bus.respond("tool.q", lambda req: "ok")
        bus.publish("hog.e")
        assert entered.wait(WAIT)
        bus.publish("near.e", 1)
        for i in range(100):
            bus.publish("fast.e", i)
        assert fast.done.wait(WAIT)
        assert bus.request("tool.q", timeout=WAIT).data == "ok"
        # let the hog outlive its timeout of 0.1 s (a state only the clock brings)
        assert wait_for(lambda: time.monotonic() - started[0] > 0.3)
        release.set()
        assert wait_for(lambda: later == [1])
        bus.flush(WAIT)
        assert wait_for(lambda: hogged.statistics().timeouts == 1), hogged.statistics()
        assert adds_up(hogged.statistics())
    finally:
        release.set()
        bus.close(timeout=WAIT)


# -- close(timeout) under many blocked handlers -------------------------------------------


# Events queued behind a handler that close gave up on are discarded once it
# returns (counted in dropped): its actor's last turn runs even though the
# dispatcher shut down, so nothing stays queued.
def test_close_under_many_blocked_handlers_reports_and_adds_up(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=4, blocking_threshold=0.05))
    try:
        held = [Held(release) for _ in range(6)]
        subs = [bus.subscribe("job.*", h) for h in held]
        fast = Collector()
        bus.subscribe("fast.*", fast)
        bus.publish("job.go").get(timeout=WAIT)
        # every thread the pool may have is inside a handler (no metrics() call
        # here: it asks the bus's actors)
        assert wait_for(lambda: sum(h.entered.is_set() for h in held) == 4)
        for future in [bus.publish("job.step", i) for i in range(5)]:
            future.get(timeout=WAIT)
        with caplog.at_level(logging.WARNING, logger="actors.bus"):
            closed, given = in_thread(lambda: bus.close(timeout=0.5))
            assert closed.wait(WAIT), "close(timeout=0.5) did not return"
        assert not isinstance(given[0], BaseException), given[0]
        given_up = {s.id: s for s in given[0]}
        assert set(given_up) == {s.id for s in subs}
        for s in given_up.values():
            assert adds_up(s), s
            assert s.accepted == 6
        running = [s for s in given_up.values() if s.in_flight]
        never = [s for s in given_up.values() if not s.in_flight]
        assert sorted((s.in_flight, s.queued) for s in running) == [(1, 5)] * 4
        assert [(s.in_flight, s.queued) for s in never] == [(0, 6)] * 2
        messages = [r.getMessage() for r in caplog.records]
        for s in never:
            assert any(s.id in m and "never got a thread" in m for m in messages), messages
        for s in running:
            assert any(s.id in m and "still running" in m for m in messages), messages
        release.set()
        # each handler ends its current event; the rest is discarded as dropped
        for sub in subs:
            assert wait_for(
                lambda sub=sub: sub.statistics().in_flight == sub.statistics().queued == 0
            ), sub.statistics()
            s = sub.statistics()
            assert adds_up(s), s
            assert s.queued == 0
        assert sum(len(h.events) for h in held) == 4
    finally:
        release.set()
        bus.close(timeout=WAIT)


# blocked clears once an abandoned handler returned: the watchdog keeps looking
# after shutdown until the turns still running have ended.
def test_blocked_clears_once_an_abandoned_handler_returns(release: threading.Event) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=4, blocking_threshold=0.05))
    try:
        held = [Held(release) for _ in range(3)]
        subs = [bus.subscribe("job.*", h) for h in held]
        bus.publish("job.go").get(timeout=WAIT)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 3)
        closed, given = in_thread(lambda: bus.close(timeout=0.3))
        assert closed.wait(WAIT)
        assert len(given[0]) == 3
        release.set()
        for sub in subs:
            assert wait_for(lambda sub=sub: sub.statistics().in_flight == 0), sub.statistics()
        assert all(len(h.events) == 1 for h in held)
        for sub in subs:
            assert wait_for(lambda sub=sub: not sub.statistics().blocked), sub.statistics()
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_a_full_reject_subscription_beside_blocked_handlers_refuses_at_once(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, max_threads=8, blocking_threshold=0.05))
    gate = Gate()
    try:
        held = [Held(release) for _ in range(4)]
        for h in held:
            bus.subscribe("job.*", h)
        strict = bus.subscribe("work.*", gate, capacity=2, overflow="reject")
        lossy = bus.subscribe("work.*", Held(release), capacity=2, overflow="drop_oldest")
        fast = Collector(50)
        bus.subscribe("fast.*", fast)
        bus.publish("job.go").get(timeout=WAIT)
        bus.publish("work.e", 0).get(timeout=WAIT)
        assert gate.entered.wait(WAIT)
        bus.publish("work.e", 1).get(timeout=WAIT)
        bus.publish("work.e", 2).get(timeout=WAIT)
        refused = bus.publish("work.e", 3)
        with pytest.raises(BackpressureError):
            refused.get(timeout=WAIT)
        for i in range(50):
            bus.publish("fast.e", i)
        assert fast.done.wait(WAIT)
        s, lossy_s = strict.statistics(), lossy.statistics()
        assert (s.accepted, s.queued, s.in_flight) == (3, 2, 1)
        assert adds_up(s)
        assert adds_up(lossy_s)
        assert lossy_s.accepted == 3  # the refused event reached nobody
        assert bus.metrics().rejected == 1
        gate.release.set()
        release.set()
        bus.flush(WAIT)
        assert gate.data == [0, 1, 2]
    finally:
        gate.release.set()
        release.set()
        bus.close(timeout=WAIT)


def test_close_gives_up_on_an_awaiting_async_handler_and_it_ends_on_its_own(
    release: threading.Event,
) -> None:
    bus = EventBus(EventConfig(threads=2, blocking_threshold=0.05))
    entered = threading.Event()
    finished: list[Any] = []

    async def slow(event: Event) -> None:
        entered.set()
        while not release.is_set():  # an awaited LLM call that outlives close
            await asyncio.sleep(0.005)
        finished.append(event.data)

    try:
        sub = bus.subscribe("slow.*", slow)
        for i in range(3):
            bus.publish("slow.e", i)
        assert entered.wait(WAIT)
        closed, given = in_thread(lambda: bus.close(timeout=0.3))
        assert closed.wait(WAIT), "close(timeout=0.3) did not return"
        [gave_up] = given[0]
        assert gave_up.id == sub.id
        assert adds_up(gave_up)
        assert gave_up.queued + gave_up.in_flight == 3
        release.set()
        assert wait_for(lambda: sub.statistics().in_flight == sub.statistics().queued == 0), (
            sub.statistics()
        )
        final = sub.statistics()
        assert adds_up(final), final
        assert final.delivered == len(finished) >= 1
    finally:
        release.set()
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("dedicated", [False, True], ids=["pool", "dedicated-thread"])
def test_close_reports_a_handler_still_running_for_an_unsubscribed_subscription(
    caplog: pytest.LogCaptureFixture, dedicated: bool
) -> None:
    # close(timeout) gives up on handlers still running and logs each at
    # WARNING.  unsubscribe() cannot stop a running call, so the handler of
    # a subscription removed before close may still hold a thread: close
    # waits for it as for any handler and, at the deadline, says so
    # (regression: it gave up in silence and returned ()).
    release, entered = threading.Event(), threading.Event()
    bus = EventBus(EventConfig(threads=2))
    try:

        def stuck(event: Event) -> None:
            entered.set()
            release.wait(WAIT)

        # A dedicated thread too (regression: close neither waited nor said so).
        sub = bus.subscribe("stuck.*", stuck, dedicated_thread=dedicated)
        bus.publish("stuck.x")
        assert entered.wait(WAIT)
        sub.unsubscribe()
        with caplog.at_level(logging.WARNING):
            assert bus.close(timeout=0.2) == ()
        assert any("unsubscribed before close" in r.getMessage() for r in caplog.records)
        # A pool shut down adds no thread on purpose: no "max_threads reached".
        assert not any("max_threads" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
