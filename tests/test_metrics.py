"""Metrics (SPEC 9): the BusMetrics snapshot, per-subscription figures, Prometheus text."""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from actors import (
    BackpressureError,
    BusMetrics,
    Event,
    EventBus,
    EventConfig,
    OverflowStrategy,
    SubscriptionStatistics,
)
from tests._support import WAIT, Gate


def _flush_twice(bus: EventBus) -> None:
    # Bus events ($bus.deadletter, $bus.backpressure.relieved) are published
    # by the actors while the first flush completes; the second covers them.
    bus.flush(WAIT)
    bus.flush(WAIT)


def test_metrics_is_a_frozen_snapshot_with_the_spec_fields(bus: EventBus) -> None:
    m = bus.metrics()
    assert isinstance(m, BusMetrics)
    for name in (
        "published",
        "delivered",
        "dropped",
        "rejected",
        "expired",
        "handler_errors",
        "dead_letters",
        "subscriptions",
        "events_per_second",
        "peak_events_per_second",
        "latency_p50",
        "latency_p90",
        "latency_p99",
        "latency_max",
        "per_subscription",
        "journal_written",
        "journal_write_latency",
        "journal_size_bytes",
    ):
        assert hasattr(m, name), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.published = 5  # type: ignore[misc]
    assert (m.published, m.delivered, m.dropped, m.rejected, m.expired) == (0, 0, 0, 0, 0)
    assert (m.handler_errors, m.dead_letters, m.subscriptions) == (0, 0, 0)
    assert m.per_subscription == ()
    assert m.journal_written == 0


def test_latency_is_none_before_any_delivery_and_set_after(bus: EventBus) -> None:
    bus.publish("nobody.listens")
    bus.flush(WAIT)
    m = bus.metrics()
    assert (m.latency_p50, m.latency_p90, m.latency_p99, m.latency_max) == (None,) * 4
    bus.subscribe("l.*", lambda e: None)
    for i in range(50):
        bus.publish("l.e", i)
    bus.flush(WAIT)
    m = bus.metrics()
    assert m.latency_p50 is not None
    assert m.latency_p90 is not None
    assert m.latency_p99 is not None
    assert m.latency_max is not None
    assert 0 <= m.latency_p50 <= m.latency_p90 <= m.latency_p99 <= m.latency_max


def test_per_subscription_statistics(bus: EventBus) -> None:
    a = bus.subscribe("s.a", lambda e: None, capacity=100)
    b = bus.subscribe("s.*", lambda e: None)
    for _ in range(3):
        bus.publish("s.a")
    bus.publish("s.b")
    bus.flush(WAIT)
    sa, sb = a.statistics(), b.statistics()
    assert isinstance(sa, SubscriptionStatistics)
    assert (sa.delivered, sa.dropped, sa.errors, sa.queued, sa.capacity) == (3, 0, 0, 0, 100)
    assert (sb.delivered, sb.capacity) == (4, bus.config.buffer_size)
    per = {s.id: s for s in bus.metrics().per_subscription}
    assert set(per) == {a.id, b.id}
    assert per[a.id] == sa
    assert per[a.id].pattern == "s.a"
    assert bus.metrics().subscriptions == 2


def test_counts_are_exact_after_flush() -> None:
    with EventBus(EventConfig(threads=2, handler_retries=1)) as b:
        delivered: list[object] = []

        def picky(event: Event) -> None:
            if event.data == "bad":
                raise ValueError("bad data")
            delivered.append(event.data)

        b.subscribe("c.*", picky)
        b.subscribe("c.*", lambda e: None)
        stale = datetime.now(UTC) - timedelta(seconds=30)
        b.publish("c.e", 1)
        b.publish("c.e", "bad")
        b.publish(Event(event_type="c.e", data=2, timestamp=stale, ttl=0.001))
        b.publish("unmatched.e", 3)
        _flush_twice(b)
        m = b.metrics()
        assert m.published == 5  # 4 events + the $bus.deadletter announcement
        assert m.delivered == 3  # picky: 1; the other: 1 and "bad"
        assert m.expired == 2  # one stale event, two subscriptions
        assert m.handler_errors == 2  # one try plus one retry
        assert m.dead_letters == 1
        assert (m.dropped, m.rejected, m.rate_limited) == (0, 0, 0)
        assert delivered == [1]


def test_drop_and_reject_counts_are_exact(bus: EventBus) -> None:
    drop_gate, reject_gate = Gate(), Gate()
    dropping = bus.subscribe(
        "d.*", drop_gate, capacity=2, overflow=OverflowStrategy.DROP_NEWEST, dedicated_thread=True
    )
    rejecting = bus.subscribe(
        "r.*", reject_gate, capacity=2, overflow=OverflowStrategy.REJECT, dedicated_thread=True
    )
    bus.publish("d.e", 0).get(timeout=WAIT)
    bus.publish("r.e", 0).get(timeout=WAIT)
    assert drop_gate.entered.wait(WAIT)
    assert reject_gate.entered.wait(WAIT)
    futures = [bus.publish("d.e", i) for i in range(1, 6)]  # 2 fit, 3 dropped
    for f in futures:
        f.get(timeout=WAIT)
    ok = [bus.publish("r.e", i) for i in (1, 2)]
    for f in ok:
        f.get(timeout=WAIT)
    for i in (3, 4):
        with pytest.raises(BackpressureError):
            bus.publish("r.e", i).get(timeout=WAIT)
    m = bus.metrics()
    assert m.dropped == 3
    assert m.rejected == 2
    assert dropping.statistics().queued == 2
    assert rejecting.statistics().queued == 2
    drop_gate.release.set()
    reject_gate.release.set()
    _flush_twice(bus)
    m = bus.metrics()
    # 6 d.e + 3 r.e accepted; each mailbox crossed 80% once and was relieved once.
    assert m.published == 9 + 4
    assert m.delivered == 3 + 3
    assert m.dropped == 3
    assert m.rejected == 2
    assert dropping.statistics().dropped == 3
    assert rejecting.statistics().dropped == 0


def test_counts_survive_unsubscribe(bus: EventBus) -> None:
    sub = bus.subscribe("u.*", lambda e: None)
    for _ in range(5):
        bus.publish("u.e")
    bus.flush(WAIT)
    sub.unsubscribe()
    bus.flush(WAIT)
    m = bus.metrics()
    assert m.delivered == 5
    assert m.subscriptions == 0
    assert m.per_subscription == ()


def test_rates_are_non_negative_numbers(bus: EventBus) -> None:
    for _ in range(100):
        bus.publish("r.e")
    bus.flush(WAIT)
    m = bus.metrics()
    assert m.events_per_second >= 0
    assert m.peak_events_per_second >= m.events_per_second


# -- Prometheus ---------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)?\}})? (\S+)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|summary|histogram|untyped)$")
_HELP = re.compile(rf"^# HELP ({_NAME}) .*$")


def _parse_prometheus(text: str) -> dict[str, list[tuple[str, float]]]:
    """Check every line; return samples by metric name (labels as written)."""
    assert text.endswith("\n")
    typed: set[str] = set()
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            m = _TYPE.match(line)
            if m:
                assert m.group(1) not in typed, f"TYPE given twice: {line}"
                typed.add(m.group(1))
            else:
                assert _HELP.match(line), f"malformed comment: {line!r}"
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample: {line!r}"
        name, labels, raw = m.group(1), m.group(2) or "", m.group(3)
        value = float(raw)  # also accepts +Inf/NaN as Prometheus does
        assert not math.isnan(value) or raw == "NaN"
        assert name in typed, f"sample before its TYPE: {line!r}"
        samples.setdefault(name, []).append((labels, value))
    return samples


def test_prometheus_text_parses_and_matches_the_snapshot(bus: EventBus) -> None:
    weird = 'we"ird\\x.*'  # a quote and a backslash in a label value
    bus.subscribe(weird, lambda e: None)
    bus.subscribe("p.*", lambda e: None)
    for i in range(7):
        bus.publish("p.e", i)
    bus.flush(WAIT)
    samples = _parse_prometheus(bus.prometheus())
    by_suffix = {name.rsplit("llmspell_events_", 1)[-1]: v for name, v in samples.items()}
    assert by_suffix["published_total"] == [("", 7.0)]
    assert by_suffix["delivered_total"] == [("", 7.0)]
    assert by_suffix["subscriptions"] == [("", 2.0)]
    quantiles = {labels for labels, _ in by_suffix["latency_seconds"]}
    assert quantiles == {'quantile="0.5"', 'quantile="0.9"', 'quantile="0.99"'}
    assert by_suffix["latency_max_seconds"][0][1] > 0
    delivered = dict(by_suffix["subscription_delivered"])
    assert len(delivered) == 2
    assert sorted(delivered.values()) == [0.0, 7.0]
    assert any('we\\"ird\\\\x.*' in labels for labels in delivered)


def test_trace_figures_count_what_the_trace_store_evicts_and_truncates() -> None:
    config = EventConfig(max_traces=2, max_events_per_trace=2, trace_ttl=None)
    with EventBus(config) as b:
        first, second, third = (uuid.uuid4() for _ in range(3))
        for cid, n in ((first, 3), (second, 1), (third, 1)):  # 3 in first: 1 truncated away
            for i in range(n):
                b.publish(Event(event_type="t.e", data=i, correlation_id=cid))
        _flush_twice(b)
        figures = b.metrics()
        # The third trace evicted the least recently active one (first).
        assert (figures.traces, figures.traces_evicted, figures.traces_truncated) == (2, 1, 1)
        samples = _parse_prometheus(b.prometheus())
        by_suffix = {name.rsplit("llmspell_events_", 1)[-1]: v for name, v in samples.items()}
        assert by_suffix["traces"] == [("", 2.0)]
        assert by_suffix["traces_evicted_total"] == [("", 1.0)]
        assert by_suffix["traces_truncated_total"] == [("", 1.0)]


def test_prometheus_before_any_delivery_parses(bus: EventBus) -> None:
    samples = _parse_prometheus(bus.prometheus())
    assert not any(name.endswith("latency_seconds") for name in samples)
