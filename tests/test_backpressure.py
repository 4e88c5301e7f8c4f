"""``BLOCK`` (SPEC 4.1): a publish that a full BLOCK subscription wants waits, then raises.

The handler parks inside its first event (``Gate``), so every later event
stays queued until the test releases it.  Waits are bounded by ``WAIT`` or by
the bus's ``block_timeout``; nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors import BackpressureError, BusFuture, Event, EventBus, EventConfig, OverflowStrategy
from actors._core.publishing import ROUTER_CAPACITY
from tests._support import WAIT, Collector, Gate


@pytest.fixture
def quick() -> Iterator[EventBus]:
    """A bus whose BLOCK publishes give up after half a second."""
    b = EventBus(EventConfig(threads=2, block_timeout=0.5))
    yield b
    b.close(timeout=WAIT)


def _hold(bus: EventBus, gate: Gate, pattern: str = "x.*", **kwargs: Any) -> Any:
    sub = bus.subscribe(pattern, gate, dedicated_thread=True, **kwargs)
    bus.publish("x.e", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    return sub


def _publish_until_refused(bus: EventBus, event_type: str) -> tuple[list[BusFuture[Event]], int]:
    accepted: list[BusFuture[Event]] = []
    for i in range(1, 100_000):
        try:
            accepted.append(bus.publish(event_type, i))
        except BackpressureError:
            return accepted, i
    raise AssertionError("publish never raised BackpressureError on a full BLOCK subscription")


def test_publish_waits_then_raises_after_a_handful(quick: EventBus) -> None:
    gate = Gate()
    sub = _hold(quick, gate, capacity=5, overflow=OverflowStrategy.BLOCK)
    accepted, refused = _publish_until_refused(quick, "x.e")
    # capacity (5) publishes fit; at most a couple more while the router marks it full.
    assert 5 <= len(accepted) <= 7
    assert quick.metrics().rejected == 1
    assert sub.statistics().dropped == 0
    gate.release.set()
    published = [f.get(timeout=WAIT) for f in accepted]
    quick.flush(WAIT)
    assert gate.data == [0, *(e.data for e in published)]  # nothing accepted was lost, in order
    assert refused not in gate.data


def test_unrelated_subscriptions_keep_flowing(quick: EventBus) -> None:
    gate = Gate()
    others = Collector(1000)
    quick.subscribe("y.*", others)
    _hold(quick, gate, capacity=5, overflow=OverflowStrategy.BLOCK)
    _publish_until_refused(quick, "x.e")  # x.* is full now
    futures = [quick.publish("y.e", i) for i in range(1000)]  # none of these waits
    assert [f.get(timeout=WAIT).data for f in futures] == list(range(1000))
    assert others.done.wait(WAIT)
    assert others.data == list(range(1000))
    gate.release.set()
    quick.flush(WAIT)


def test_a_filter_that_rejects_the_event_does_not_wait(quick: EventBus) -> None:
    gate = Gate()
    _hold(
        quick,
        gate,
        capacity=2,
        overflow=OverflowStrategy.BLOCK,
        filter=lambda e: e.data != "skip",
    )
    _publish_until_refused(quick, "x.e")
    # The full subscription does not want this one: it is routed at once.
    assert quick.publish("x.e", "skip").get(timeout=WAIT).data == "skip"
    gate.release.set()
    quick.flush(WAIT)


def test_a_waiting_publish_goes_through_when_room_frees(bus: EventBus) -> None:
    gate = Gate()
    _hold(bus, gate, capacity=2, overflow=OverflowStrategy.BLOCK)
    for i in (1, 2):
        bus.publish("x.e", i).get(timeout=WAIT)
    started = threading.Event()
    result: list[Event] = []

    def publisher() -> None:
        started.set()
        result.append(bus.publish("x.e", 3).get(timeout=WAIT))

    t = threading.Thread(target=publisher)
    t.start()
    assert started.wait(WAIT)
    gate.release.set()
    t.join(WAIT)
    assert not t.is_alive()
    assert result[0].data == 3
    bus.flush(WAIT)
    assert gate.data == [0, 1, 2, 3]


def test_block_keeps_publish_order_across_waits(bus: EventBus) -> None:
    permits = threading.Semaphore(0)
    entered = threading.Event()
    seen: list[Any] = []

    def one_at_a_time(event: Event) -> None:
        entered.set()
        assert permits.acquire(timeout=WAIT)
        seen.append(event.data)

    bus.subscribe(
        "x.*", one_at_a_time, capacity=2, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
    )
    bus.publish("x.e", 0).get(timeout=WAIT)
    assert entered.wait(WAIT)
    published: list[Event] = []
    done = threading.Event()

    def publisher() -> None:
        published.extend(bus.publish("x.e", i).get(timeout=WAIT) for i in range(1, 31))
        done.set()

    t = threading.Thread(target=publisher)
    t.start()
    permits.release(100)
    assert done.wait(WAIT)
    t.join(WAIT)
    bus.flush(WAIT)
    assert seen == list(range(31))
    seqs = [e.sequence or 0 for e in published]
    assert seqs == sorted(seqs)


def test_publish_many_waits_as_a_whole(quick: EventBus) -> None:
    gate = Gate()
    _hold(quick, gate, capacity=3, overflow=OverflowStrategy.BLOCK)
    _publish_until_refused(quick, "x.e")
    with pytest.raises(BackpressureError):
        quick.publish_many([Event(event_type="y.e"), Event(event_type="x.e", data="late")])
    gate.release.set()
    quick.flush(WAIT)
    assert "late" not in gate.data


def test_unsubscribing_a_full_block_subscription_releases_publishers(bus: EventBus) -> None:
    gate = Gate()
    sub = _hold(bus, gate, capacity=1, overflow=OverflowStrategy.BLOCK)
    bus.publish("x.e", 1).get(timeout=WAIT)
    sub.unsubscribe()
    assert bus.publish("x.e", 2).get(timeout=WAIT).data == 2
    gate.release.set()


def test_bus_events_never_wait_and_are_not_lost(bus: EventBus) -> None:
    gate = Gate()
    sub = bus.subscribe(
        "$bus.deadletter", gate, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
    )
    failing = bus.subscribe("z.*", _fail)
    bus.publish("z.e", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)  # parked inside the first dead letter
    # Each failure's $bus event goes in over capacity: never waits, never dropped.
    for i in range(1, 5):
        bus.publish("z.e", i).get(timeout=WAIT)
    gate.release.set()
    bus.flush(WAIT)
    assert sub.statistics().dropped == 0
    assert len(bus.dead_letters()) == 5
    failing.unsubscribe()
    bus.flush(WAIT)
    assert [e.data["event"]["data"] for e in gate.events] == [0, 1, 2, 3, 4]


def _fail(event: Event) -> None:
    raise RuntimeError("boom")


def test_the_routers_mailbox_holds_a_fixed_number_of_publishes_whatever_buffer_size() -> None:
    """A router held by a filter lets ``ROUTER_CAPACITY`` publishes queue, then refuses.

    Regression: its mailbox took ``max(buffer_size, 1024)`` messages, so a bus
    with large subscription buffers let publishers run 100,000 events ahead of
    the router (each an object the collector walks, promoted while it waits).
    Nothing is lost: once the router goes on, every queued publish is routed.
    """
    hold, held = threading.Event(), threading.Event()

    def holding(_event: Event) -> bool:
        held.set()
        return hold.wait(WAIT)

    seen = Collector()
    bus = EventBus(EventConfig(buffer_size=100_000, block_timeout=0.2))
    try:
        bus.subscribe("h.*", seen, filter=holding)
        bus.publish("h.first", 0)
        assert held.wait(WAIT)
        accepted, refused_at = _publish_until_refused(bus, "h.x")
        # One queued message per publish (the bus's own messages may take a few places).
        assert ROUTER_CAPACITY - 8 <= len(accepted) <= ROUTER_CAPACITY, refused_at
        seen.expected = len(accepted) + 1
        hold.set()
        assert [f.get(timeout=WAIT).data for f in accepted] == list(range(1, len(accepted) + 1))
        assert seen.done.wait(WAIT)
        assert seen.data == list(range(len(accepted) + 1))
    finally:
        hold.set()
        bus.close(timeout=WAIT)
