"""Flow control (SPEC 4.1): capacity, overflow strategies, backpressure events, rate limit.

Mailboxes are filled deterministically: the handler blocks on a
``threading.Event`` inside the first event, so every later event stays queued
until the test releases it.  The publish futures resolve once the router has
routed the event, which makes them a barrier for the mailbox's contents.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from actors import (
    BackpressureError,
    BusFuture,
    Event,
    EventBus,
    EventConfig,
    OverflowStrategy,
    RateLimitedError,
)
from tests._support import WAIT, Collector, Gate


def _hold(bus: EventBus, gate: Gate, pattern: str = "q.*", **kwargs: Any) -> Any:
    """Subscribe ``gate`` on its own thread and park it inside event 0."""
    sub = bus.subscribe(pattern, gate, dedicated_thread=True, **kwargs)
    bus.publish("q.e", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    return sub


def _routed(futures: list[BusFuture[Event]]) -> list[Event]:
    return [f.get(timeout=WAIT) for f in futures]


def test_default_capacity_and_overflow_come_from_the_config() -> None:
    config = EventConfig()
    assert config.buffer_size == 10_000
    assert config.overflow is OverflowStrategy.DROP_OLDEST
    with EventBus(EventConfig(buffer_size=7)) as b:
        sub = b.subscribe("a.*", lambda e: None)
        assert sub.statistics().capacity == 7
        other = b.subscribe("a.*", lambda e: None, capacity=3)
        assert other.statistics().capacity == 3


def test_capacity_must_be_positive(bus: EventBus) -> None:
    with pytest.raises(ValueError):
        bus.subscribe("a.*", lambda e: None, capacity=0)
    with pytest.raises(ValueError):
        EventConfig(buffer_size=0)


def test_drop_oldest_keeps_the_newest_n(bus: EventBus) -> None:
    gate = Gate()
    sub = _hold(bus, gate, capacity=5, overflow=OverflowStrategy.DROP_OLDEST)
    _routed([bus.publish("q.e", i) for i in range(1, 21)])
    stats = sub.statistics()
    assert stats.queued == 5
    assert stats.dropped == 15
    gate.release.set()
    bus.flush(WAIT)
    assert gate.data == [0, 16, 17, 18, 19, 20]
    assert sub.statistics().dropped == 15
    assert bus.metrics().dropped == 15


def test_drop_newest_keeps_the_oldest_n(bus: EventBus) -> None:
    gate = Gate()
    sub = _hold(bus, gate, capacity=5, overflow=OverflowStrategy.DROP_NEWEST)
    _routed([bus.publish("q.e", i) for i in range(1, 21)])
    assert sub.statistics().queued == 5
    gate.release.set()
    bus.flush(WAIT)
    assert gate.data == [0, 1, 2, 3, 4, 5]
    assert sub.statistics().dropped == 15
    assert bus.metrics().dropped == 15


@pytest.mark.parametrize("overflow", [OverflowStrategy.DROP_NEWEST, OverflowStrategy.DROP_OLDEST])
def test_flush_waits_for_the_events_before_it_whatever_is_dropped_after_it(
    bus: EventBus, overflow: OverflowStrategy
) -> None:
    """Drops of events published after a flush never let it end before the ones before it."""
    gate = Gate()
    sub = _hold(bus, gate, capacity=2, overflow=overflow)  # event 0 in the handler
    _routed([bus.publish("q.e", 1)])  # queued, before the flush
    flushed = bus._core.start_flush()  # noqa: SLF001 - its Flush goes before what follows
    _routed([bus.publish("q.e", i) for i in range(2, 40)])  # after it: most dropped
    assert sub.statistics().dropped >= 30
    later = bus._core.start_flush()  # noqa: SLF001 - its barrier looks at the first one's again
    _routed([bus.publish("z.other", "after the second flush")])  # both Flushes taken
    assert not flushed.done()  # event 0 is still in the handler
    gate.release.set()
    flushed.get(timeout=WAIT)
    kept = [0, 1] if overflow is OverflowStrategy.DROP_NEWEST else [0]
    assert gate.data[: len(kept)] == kept  # handled before the flush ended
    later.get(timeout=WAIT)
    bus.flush(WAIT)
    assert sub.statistics().dropped + len(gate.data) == 40


def test_overflow_accepts_the_strategy_value_as_a_string(bus: EventBus) -> None:
    gate = Gate()
    sub = _hold(bus, gate, capacity=2, overflow="drop_newest")
    _routed([bus.publish("q.e", i) for i in range(1, 5)])
    gate.release.set()
    bus.flush(WAIT)
    assert gate.data == [0, 1, 2]
    assert sub.statistics().dropped == 2


def test_drops_affect_only_the_full_subscription(bus: EventBus) -> None:
    gate = Gate()
    roomy = Collector()
    bus.subscribe("q.*", roomy)
    _hold(bus, gate, capacity=2)
    _routed([bus.publish("q.e", i) for i in range(1, 11)])
    gate.release.set()
    bus.flush(WAIT)
    assert [e.data for e in roomy.events] == list(range(11))
    assert gate.data == [0, 9, 10]


def test_reject_fails_the_publish_and_the_event_goes_nowhere(bus: EventBus) -> None:
    gate = Gate()
    everyone = Collector()
    bus.subscribe("**", everyone)
    sub = _hold(bus, gate, capacity=10, overflow=OverflowStrategy.REJECT)
    _routed([bus.publish("q.e", i) for i in range(1, 11)])  # fills the mailbox
    before = bus.publish("other.before").get(timeout=WAIT)
    rejected = bus.publish("q.e", "rejected")
    with pytest.raises(BackpressureError):
        rejected.get(timeout=WAIT)
    after = bus.publish("other.after").get(timeout=WAIT)
    assert before.sequence is not None
    assert after.sequence == before.sequence + 1  # the rejected event took no sequence
    gate.release.set()
    bus.flush(WAIT)
    assert "rejected" not in [e.data for e in everyone.events]
    assert "rejected" not in gate.data
    assert gate.data == list(range(11))
    assert sub.statistics().dropped == 0
    metrics = bus.metrics()
    assert metrics.rejected == 1
    assert metrics.dropped == 0
    # Room again: the publisher may retry.
    bus.publish("q.e", "retried").get(timeout=WAIT)
    bus.flush(WAIT)
    assert gate.data[-1] == "retried"


def test_reject_with_publish_many_fails_only_the_events_that_do_not_fit(bus: EventBus) -> None:
    gate = Gate()
    _hold(bus, gate, capacity=3, overflow=OverflowStrategy.REJECT)
    futures = bus.publish_many([Event(event_type="q.e", data=i) for i in range(1, 6)])
    assert [f.get(timeout=WAIT).data for f in futures[:3]] == [1, 2, 3]
    for f in futures[3:]:
        with pytest.raises(BackpressureError):
            f.get(timeout=WAIT)
    gate.release.set()
    bus.flush(WAIT)
    assert gate.data == [0, 1, 2, 3]
    assert bus.metrics().rejected == 2


def test_backpressure_started_at_80_and_relieved_under_20_percent(bus: EventBus) -> None:
    notices = Collector(2)
    bus.subscribe("$bus.**", notices)
    gate = Gate()
    sub = _hold(bus, gate, capacity=10)
    _routed([bus.publish("q.e", i) for i in range(1, 8)])  # 7 queued: 70%
    assert bus.metrics().published == 8  # no $bus event yet
    _routed([bus.publish("q.e", 8)])  # 8 queued: 80%
    assert bus.metrics().published == 10  # ... plus $bus.backpressure.started
    gate.release.set()
    assert notices.done.wait(WAIT)
    bus.flush(WAIT)
    started, relieved = notices.events[:2]
    assert started.event_type == "$bus.backpressure.started"
    assert relieved.event_type == "$bus.backpressure.relieved"
    assert started.data["subscription"] == sub.id
    assert started.data["queued"] == 8
    assert started.data["capacity"] == 10
    assert relieved.data["subscription"] == sub.id
    assert relieved.data["queued"] < 2
    assert len(notices.events) == 2


def test_backpressure_announcements_alternate_when_a_relief_is_seen_while_the_router_is_busy(
    bus: EventBus,
) -> None:
    # The subscriber sees the relief as it takes events and tells the router
    # by message; the router may cross the high mark again before it reads
    # that message.  Its "relieved" then came after the new "started", and the
    # last announcement said relieved while the mailbox was at 80%.
    notices = Collector()
    bus.subscribe("$bus.backpressure.*", notices)
    first, fourth, in_first, in_fourth = (threading.Event() for _ in range(4))
    in_filter, filter_go = threading.Event(), threading.Event()

    def slow(event: Event) -> None:
        if event.data == 0:
            in_first.set()
            first.wait(WAIT)
        if event.data == 4:
            in_fourth.set()
            fourth.wait(WAIT)

    def holding(event: Event) -> bool:  # a filter that holds the router once
        if event.data == "hold":
            in_filter.set()
            filter_go.wait(WAIT)
        return True

    bus.subscribe("s", slow, capacity=5, overflow=OverflowStrategy.REJECT)
    bus.subscribe("f", lambda e: None, filter=holding)
    bus.publish("s", 0)
    assert in_first.wait(WAIT)
    _routed([bus.publish("s", i) for i in range(1, 5)])  # 4 of 5 queued: started
    bus.publish("f", "hold")
    assert in_filter.wait(WAIT)  # the router is inside the filter
    later = [bus.publish("s", i) for i in range(5, 9)]  # wait in the router's mailbox
    first.set()
    assert in_fourth.wait(WAIT)  # 1..4 taken: the relief is seen, its message sent
    filter_go.set()  # the router offers 5..8 (80% again), then reads the message
    _routed(later)
    fourth.set()
    bus.flush(WAIT)
    kinds = [e.event_type.rsplit(".", 1)[1] for e in notices.events]
    assert kinds == ["started", "relieved", "started", "relieved"]


def test_backpressure_announcements_alternate_under_racing_publishers_and_readers(
    bus: EventBus,
) -> None:
    # Switching threads every microsecond puts the owner's relief between the
    # router's start and its announcement, and a relief's message behind later
    # starts: every one of those orders used to break the alternation.
    notices = Collector()
    bus.subscribe("$bus.backpressure.*", notices)
    subs = [bus.subscribe("w.x", lambda e: None, capacity=10) for _ in range(4)]

    def publish() -> None:
        for _ in range(800):
            bus.publish_many([Event(event_type="w.x", data=i) for i in range(9)])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=publish) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bus.flush(WAIT)
    finally:
        sys.setswitchinterval(interval)
    bus.flush(WAIT)  # the last reliefs' announcements
    for sub in subs:
        said = [(e.event_type.rsplit(".", 1)[1], e.data["queued"]) for e in notices.events
                if e.data["subscription"] == sub.id]  # fmt: skip
        kinds = [kind for kind, _ in said]
        assert kinds == ["started", "relieved"] * (len(kinds) // 2), said
        assert all(queued >= 8 for kind, queued in said if kind == "started"), said


def test_backpressure_events_do_not_reach_wildcard_subscribers(bus: EventBus) -> None:
    everything = Collector()
    bus.subscribe("**", everything)
    gate = Gate()
    _hold(bus, gate, capacity=2)
    _routed([bus.publish("q.e", i) for i in range(1, 4)])
    gate.release.set()
    bus.flush(WAIT)
    assert all(not e.event_type.startswith("$") for e in everything.events)


def test_rate_limit_rejects_publishes_beyond_the_bucket() -> None:
    # A rate so low that no token comes back during the test.
    with EventBus(EventConfig(rate_limit=0.001, burst=3)) as b:
        seen = Collector()
        b.subscribe("r.*", seen)
        for i in range(3):
            b.publish("r.e", i)
        with pytest.raises(RateLimitedError):
            b.publish("r.e", "over")
        with pytest.raises(RateLimitedError):
            b.publish_many([Event(event_type="r.e", data="batch")])
        b.flush(WAIT)
        assert [e.data for e in seen.events] == [0, 1, 2]
        metrics = b.metrics()
        assert metrics.published == 3
        assert metrics.rate_limited == 2


def test_rate_limit_refuses_a_batch_larger_than_the_tokens_left() -> None:
    with EventBus(EventConfig(rate_limit=0.001, burst=5)) as b:
        seen = Collector()
        b.subscribe("r.*", seen)
        b.publish("r.e", 0)
        with pytest.raises(RateLimitedError):
            b.publish_many([Event(event_type="r.e", data=i) for i in range(5)])
        accepted = b.publish_many([Event(event_type="r.e", data=i) for i in range(4)])
        _routed(accepted)
        b.flush(WAIT)
        assert [e.data for e in seen.events] == [0, 0, 1, 2, 3]


def test_rate_limit_tells_a_batch_larger_than_the_burst_it_can_never_pass() -> None:
    with EventBus(EventConfig(rate_limit=0.001, burst=4)) as b:
        b.publish("r.e", 0)  # 3 tokens left
        with pytest.raises(RateLimitedError, match="events/s exceeded"):  # later, it would
            b.publish_many([Event(event_type="r.e", data=i) for i in range(4)])
        with pytest.raises(RateLimitedError, match="can never pass"):  # no wait would do
            b.publish_many([Event(event_type="r.e", data=i) for i in range(5)])
        assert b.metrics().rate_limited == 9
        assert len(b.publish_many([Event(event_type="r.e", data=i) for i in range(3)])) == 3


def test_no_rate_limit_by_default(bus: EventBus) -> None:
    assert bus.config.rate_limit is None
    _routed([bus.publish("r.e", i) for i in range(2000)])
    assert bus.metrics().rate_limited == 0
