"""Subscriptions at their edges: unsubscribe mid-batch, filters that raise, self-publishing
loops, ttl while queued, handlers that never return, and durable subscriptions cut short."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from actors import BackpressureError, Event, EventBus, EventConfig, PersistentEventBus
from tests._support import WAIT, Collector, wait_for

# -- unsubscribe while a batch is being handled ---------------------------------------


def test_unsubscribe_from_another_thread_stops_the_rest_of_a_taken_batch() -> None:
    """``unsubscribe`` "stop[s] delivery": nothing may be handled after it returns.

    All 50 events reach the mailbox in one router turn (``publish_many``),
    so the subscriber takes them as one batch; its handler blocks on the
    first one; ``unsubscribe`` returns; the handler is released.
    """
    bus = EventBus(EventConfig(threads=2))
    try:
        entered = threading.Event()
        release = threading.Event()
        after: list[Any] = []
        unsubscribed = threading.Event()

        def handler(event: Event) -> None:
            if event.data == 0:
                entered.set()
                assert release.wait(WAIT)
            elif unsubscribed.is_set():  # event 0 was running when unsubscribe returned
                after.append(event.data)

        sub = bus.subscribe("u.*", handler, dedicated_thread=True)
        futures = bus.publish_many([Event(event_type="u.x", data=i) for i in range(50)])
        for f in futures:
            f.get(timeout=WAIT)
        assert entered.wait(WAIT)
        sub.unsubscribe()
        unsubscribed.set()
        release.set()
        assert wait_for(lambda: sub.statistics().in_flight == 0)
        stats = sub.statistics()
        assert after == [], (
            f"{len(after)} events handled after unsubscribe() returned: {after[:5]}...; "
            f"stats={stats}"
        )
    finally:
        bus.close(timeout=WAIT)


def test_unsubscribe_from_inside_its_own_handler_stops_the_rest_of_the_batch() -> None:
    bus = EventBus(EventConfig(threads=2))
    try:
        handled: list[Any] = []
        holder: list[Any] = []
        go = threading.Event()

        def handler(event: Event) -> None:
            assert go.wait(WAIT)
            handled.append(event.data)
            if event.data == 3:
                holder[0].unsubscribe()

        sub = bus.subscribe("u.*", handler)
        holder.append(sub)
        for f in bus.publish_many([Event(event_type="u.x", data=i) for i in range(50)]):
            f.get(timeout=WAIT)
        go.set()
        assert wait_for(lambda: sub.statistics().in_flight == 0 and not sub.active)
        assert handled == [0, 1, 2, 3], f"handled after unsubscribing itself: {handled[4:10]}..."
    finally:
        bus.close(timeout=WAIT)


# -- filters that raise ----------------------------------------------------------------


class FilterBoom(BaseException):
    """Not an ``Exception``: what a buggy filter may raise (e.g. a SystemExit)."""


def test_a_filter_raising_a_base_exception_counts_as_no_match_and_routing_goes_on(
    bus: EventBus,
) -> None:
    """ "a filter that raises counts as "no match" and is logged" - whatever it raises."""

    def bad_filter(event: Event) -> bool:
        raise FilterBoom("filter bug")

    other = Collector()
    bus.subscribe("f.*", lambda e: None, filter=bad_filter)
    bus.subscribe("f.*", other)
    futures = [bus.publish("f.x", i) for i in range(5)]
    for f in futures:
        assert f.get(timeout=WAIT).sequence is not None
    bus.flush(WAIT)
    assert other.data == list(range(5))
    # And the bus still routes after that.
    bus.publish("f.y", 99).get(timeout=WAIT)
    bus.flush(WAIT)
    assert other.data[-1] == 99


# -- a handler publishing to its own BLOCK pattern --------------------------------------


def test_a_handler_feeding_its_own_full_block_subscription_ends_with_backpressure() -> None:
    bus = EventBus(EventConfig(threads=2, block_timeout=0.3))
    try:
        errors: list[BaseException] = []
        done = threading.Event()

        def loop(event: Event) -> None:
            if event.data >= 40:
                done.set()
                return
            try:
                for _ in range(3):
                    bus.publish("l.x", event.data + 1)
            except BackpressureError as exc:
                errors.append(exc)
                done.set()

        bus.subscribe("l.*", loop, capacity=2, overflow="block")
        bus.publish("l.x", 0)
        assert done.wait(WAIT), "self-feeding BLOCK loop neither finished nor refused"
        # The bus is still usable.
        other = Collector()
        bus.subscribe("o.*", other)
        bus.publish("o.x", 1).get(timeout=WAIT)
        assert wait_for(lambda: other.data == [1])
    finally:
        closed = bus.close(timeout=2)
        del closed


# -- ttl expiring while queued ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync_timeout", "async"])
def test_events_expiring_while_queued_are_counted_not_delivered(kind: str) -> None:
    bus = EventBus(EventConfig(threads=2))
    try:
        release = threading.Event()
        entered = threading.Event()
        seen: list[Any] = []
        if kind == "async":

            async def handler(event: Event) -> None:
                if event.data == "first":
                    entered.set()
                    while not release.is_set():
                        await asyncio.sleep(0.01)
                seen.append(event.data)

            sub = bus.subscribe("t.*", handler)
        else:

            def handler(event: Event) -> None:  # type: ignore[misc]
                if event.data == "first":
                    entered.set()
                    assert release.wait(WAIT)
                seen.append(event.data)

            sub = bus.subscribe("t.*", handler, timeout=5.0)
        bus.publish("t.x", "first").get(timeout=WAIT)
        assert entered.wait(WAIT)
        short = bus.publish(Event(event_type="t.x", data="short", ttl=0.05)).get(timeout=WAIT)
        bus.publish("t.x", "long").get(timeout=WAIT)
        assert wait_for(lambda: time.time() > short.timestamp.timestamp() + 0.2)
        release.set()
        bus.flush(WAIT)
        assert seen == ["first", "long"]
        s = sub.statistics()
        assert (s.expired, s.delivered, s.in_flight) == (1, 2, 0), s
    finally:
        bus.close(timeout=WAIT)


# -- durable subscriptions: close gives up on a handler mid-batch -----------------------


@pytest.mark.parametrize("checkpointed", [False, True], ids=["new", "checkpointed"])
def test_a_durable_subscription_abandoned_mid_batch_resumes_at_the_unhandled_events(
    journal: str, checkpointed: bool
) -> None:
    """``durable=`` resumes after the last event whose checkpoint was written (at least once).

    ``close(timeout)`` gives up on a handler stuck on the first event of a
    batch; the handler then returns, and the abandoned subscriber stops at
    the next event.  The rest of the batch was never handled, so a durable
    subscription opened again on the same journal must get it.
    """
    config = EventConfig(persistence_path=journal)
    bus = PersistentEventBus(config)
    seen: list[Any] = []
    entered = threading.Event()
    holder: list[Any] = []

    def handler(event: Event) -> None:
        seen.append(event.data)
        if event.data == 0:
            entered.set()
            sub = holder[0]
            while sub.active:  # returns the moment close() gives up on it
                pass

    holder.append(bus.subscribe("w.*", handler, durable="worker"))
    if checkpointed:
        bus.publish("w.x", -1).get(timeout=WAIT)
        bus.flush(WAIT)  # one batch finished: the checkpoint exists
    for f in bus.publish_many([Event(event_type="w.x", data=i) for i in range(20)]):
        f.get(timeout=WAIT)
    assert entered.wait(WAIT)
    bus.close(timeout=0.5)
    handled_before = list(seen)

    bus = PersistentEventBus(config)
    try:
        resumed: list[Any] = []
        bus.subscribe("w.*", lambda e: resumed.append(e.data), durable="worker")
        bus.flush(WAIT)
        missed = [i for i in range(20) if i not in handled_before]
        # At least once: every event never handled comes again, in order; what
        # was handled after close gave up on it (its checkpoint could no
        # longer be written) may come again too, never one before it.
        assert resumed == list(range(resumed[0] if resumed else 0, 20)), resumed
        assert set(missed) <= set(resumed), (
            f"handled before the restart: {handled_before}; resumed with {resumed}, "
            f"never handled: {missed}"
        )
        assert resumed[0] in handled_before or resumed[0] == missed[0]
    finally:
        bus.close(timeout=WAIT)


# -- async handlers that never return; flush inside an async handler ----------------------


def test_close_returns_under_an_async_handler_that_never_returns() -> None:
    bus = EventBus(EventConfig(threads=2))
    entered = threading.Event()

    async def forever(event: Event) -> None:
        entered.set()
        await asyncio.Event().wait()  # an LLM call that never answers

    other = Collector(3)
    bus.subscribe("a.*", forever)
    bus.subscribe("a.*", forever)
    bus.subscribe("a.*", other)
    for i in range(3):
        bus.publish("a.x", i).get(timeout=WAIT)
    assert entered.wait(WAIT)
    assert other.done.wait(WAIT)
    done = threading.Event()
    result: list[Any] = []
    t = threading.Thread(target=lambda: (result.append(bus.close(timeout=0.5)), done.set()))
    t.start()
    assert done.wait(WAIT), "close(timeout=0.5) hung under a never-returning async handler"
    assert len(result[0]) == 2


def test_flush_inside_an_async_handler_raises_runtime_error() -> None:
    bus = EventBus(EventConfig(threads=2))
    try:
        errors: list[BaseException] = []

        async def handler(event: Event) -> None:
            try:
                bus.flush(timeout=2)
            except BaseException as exc:
                errors.append(exc)

        bus.subscribe("x.*", handler)
        bus.publish("x.y").get(timeout=WAIT)
        bus.flush(WAIT)
        assert [type(e) for e in errors] == [RuntimeError], errors
    finally:
        bus.close(timeout=WAIT)
