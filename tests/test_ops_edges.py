"""What operators watch, under fault: counters that must add up and never go back,
the Prometheus exposition (both forms), ``llmspell-events top`` and the
OpenTelemetry spans (``actors.otel``).

Every expectation comes from docs/observability.md, docs/cli.md,
docs/architecture.md or SPEC.md sections 9 and 13 (quoted where it matters).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import re
import struct
import sys
import termios
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from actors import (
    BackpressureError,
    Event,
    EventBus,
    EventConfig,
    InvalidPatternError,
    NodeConfig,
    OverflowStrategy,
    PersistentEventBus,
    RateLimitedError,
)
from actors._core import router_reads
from actors._metrics_http import MetricsServer
from actors._model.metrics import (
    COUNTER_METRICS,
    METRIC_HELP,
    SubscriptionStatistics,
)
from actors._model.otelspans import span_id_of
from actors.cli.top import render, sample
from actors.otel import instrument
from tests._cli_support import cli, one_error_line
from tests._support import WAIT, Collector, Gate, tracer_provider, wait_for
from tests.test_top import Terminal

PREFIX = "llmspell_events"


# -- helpers ----------------------------------------------------------------------------------


def _get(url: str, timeout: float = WAIT) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _totals(text: str) -> dict[str, float]:
    """The bus-wide counters of a scrape (``*_total`` samples without labels)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for s in family.samples:
            if s.name.endswith("_total") and not s.labels:
                out[s.name] = s.value
    return out


def _unclamped_in_flight(s: SubscriptionStatistics) -> int:
    """``accepted - (delivered + expired + dead_letters + dropped + queued)``: what the
    documented identity leaves for ``in_flight``, before ``statistics()`` clamps it at 0."""
    return s.accepted - (s.delivered + s.expired + s.dead_letters + s.dropped + s.queued)


def _counts(s: SubscriptionStatistics) -> SubscriptionStatistics:
    return replace(s, blocked=False, blocked_seconds=0.0)


def _publish_outcome(bus: EventBus, event_type: str, data: Any) -> str:
    """Publish and wait: ``ok`` or the name of the error (raised or set in the future)."""
    try:
        bus.publish(event_type, data).get(timeout=WAIT)
    except (BackpressureError, RateLimitedError) as exc:
        return type(exc).__name__
    return "ok"


def _raising(value: Any) -> Any:
    def handler(event: Event) -> None:
        raise ValueError(value)

    return handler


# -- counters that must add up ----------------------------------------------------------------


@dataclass
class Workload:
    bus: EventBus
    subs: dict[str, Any]
    watcher: Collector
    outcomes: dict[str, list[str]]
    scrapes: list[tuple[int, str]] = field(default_factory=list)


def _mixed_workload(bus: EventBus, server: MetricsServer) -> Workload:
    """Deliveries, retries and dead letters, expiry, every overflow policy at its limit,
    REJECT and BLOCK refusals, with a scraper reading ``/metrics`` the whole time."""
    watcher = Collector()
    bus.subscribe("$bus.**", watcher)
    gates = {name: Gate() for name in ("o", "n", "r", "b")}
    policies = {
        "o": OverflowStrategy.DROP_OLDEST,
        "n": OverflowStrategy.DROP_NEWEST,
        "r": OverflowStrategy.REJECT,
        "b": OverflowStrategy.BLOCK,
    }
    subs: dict[str, Any] = {"all": bus.subscribe("m.**", Collector())}
    subs["f"] = bus.subscribe("m.f", _raising("always"), retries=2, retry_backoff=0.001)
    for name, gate in gates.items():
        subs[name] = bus.subscribe(
            f"m.{name}", gate, capacity=2, overflow=policies[name], dedicated_thread=True
        )
    scrapes: list[tuple[int, str]] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            scrapes.append(_get(server.url))

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    outcomes: dict[str, list[str]] = {}
    try:
        stale = datetime.now(UTC) - timedelta(seconds=60)
        outcomes["f"] = [_publish_outcome(bus, "m.f", i) for i in range(2)]
        outcomes["x"] = [
            "ok"
            if bus.publish(Event(event_type="m.x", data=i, timestamp=stale, ttl=0.001)).get(WAIT)
            else "?"
            for i in range(2)
        ]
        for name, gate in gates.items():
            outcomes[name] = [_publish_outcome(bus, f"m.{name}", 0)]
            assert gate.entered.wait(WAIT)
        for name in ("o", "n"):
            outcomes[name] += [_publish_outcome(bus, f"m.{name}", i) for i in range(1, 6)]
        for name in ("r", "b"):
            outcomes[name] += [_publish_outcome(bus, f"m.{name}", i) for i in range(1, 4)]
        for gate in gates.values():
            gate.release.set()
        bus.flush(WAIT)
        bus.flush(WAIT)  # the $bus events the first flush's handlers caused
        assert wait_for(lambda: len(scrapes) >= 3)
    finally:
        stop.set()
        for gate in gates.values():
            gate.release.set()
        scraper.join(WAIT)
    scrapes.append(_get(server.url))
    return Workload(bus, subs, watcher, outcomes, scrapes)


@pytest.fixture
def workload() -> Any:
    bus = EventBus(EventConfig(threads=2, block_timeout=0.2, handler_retries=0))
    server = bus.serve_metrics(0)
    try:
        yield _mixed_workload(bus, server)
    finally:
        server.close()
        bus.close(timeout=WAIT)


def test_a_mixed_workload_has_the_refusals_and_losses_each_policy_documents(
    workload: Workload,
) -> None:
    """SPEC 4.1: DROP_OLDEST/DROP_NEWEST drop (counted), REJECT and a BLOCK past
    ``block_timeout`` raise ``BackpressureError`` (counted in ``rejected``)."""
    w = workload
    assert w.outcomes["o"] == ["ok"] * 6
    assert w.outcomes["n"] == ["ok"] * 6
    assert w.outcomes["r"] == ["ok"] * 3 + ["BackpressureError"]
    assert w.outcomes["b"] == ["ok"] * 3 + ["BackpressureError"]
    m = w.bus.metrics()
    stats = {name: sub.statistics() for name, sub in w.subs.items()}
    assert (stats["o"].delivered, stats["o"].dropped) == (3, 3)
    assert (stats["n"].delivered, stats["n"].dropped) == (3, 3)
    assert (stats["r"].delivered, stats["b"].delivered) == (3, 3)
    assert (stats["f"].delivered, stats["f"].errors, stats["f"].dead_letters) == (0, 6, 2)
    assert (stats["all"].delivered, stats["all"].expired) == (20, 2)
    assert m.rejected == 2
    assert (m.dropped, m.handler_errors, m.dead_letters, m.expired) == (6, 6, 2, 2)


def test_a_mixed_workload_adds_up_per_subscription_and_bus_wide(workload: Workload) -> None:
    """``accepted == delivered + expired + dead_letters + dropped + queued + in_flight``
    per subscription (``SubscriptionStatistics``), the bus totals are the sums of the
    subscriptions' figures, and ``published`` is every accepted publish plus the bus's
    own ``$bus.*`` events (docs/observability.md)."""
    w = workload
    m = w.bus.metrics()
    per = {s.id: s for s in m.per_subscription}
    for sub in w.subs.values():
        s = sub.statistics()
        # blocked/blocked_seconds are a clock reading: compare the counts
        assert _counts(per[s.id]) == _counts(s), "statistics() and per_subscription disagree"
        assert (s.queued, s.in_flight) == (0, 0), s
        assert _unclamped_in_flight(s) == 0, f"{s.pattern}: identity off by {s}"
    every = m.per_subscription
    assert m.delivered == sum(s.delivered for s in every)
    assert m.dropped == sum(s.dropped for s in every)
    assert m.expired == sum(s.expired for s in every)
    assert m.handler_errors == sum(s.errors for s in every)
    assert m.dead_letters == sum(s.dead_letters for s in every)
    accepted = sum(o.count("ok") for o in w.outcomes.values())
    assert accepted == 22
    assert m.published == accepted + len(w.watcher.events)
    assert len([e for e in w.watcher.events if e.event_type == "$bus.deadletter"]) == 2


def test_counters_scraped_during_a_mixed_workload_never_go_back(workload: Workload) -> None:
    """``*_total`` families are counters: no scrape may show less than the one before."""
    w = workload
    assert {status for status, _ in w.scrapes} == {200}
    previous: dict[str, float] = {}
    for i, (_, text) in enumerate(w.scrapes):
        now = _totals(text)
        back = {k: (previous[k], v) for k, v in now.items() if k in previous and v < previous[k]}
        assert back == {}, f"scrape {i} went back: {back}"
        previous = now
    final = _totals(w.scrapes[-1][1])
    m = w.bus.metrics()
    for name in ("published", "delivered", "dropped", "rejected", "dead_letters"):
        assert final[f"{PREFIX}_{name}_total"] == getattr(m, name)


def test_the_dead_letter_counter_keeps_counting_past_the_letters_kept() -> None:
    """``dead_letter_limit`` bounds the letters *kept in memory*; the counter is a
    counter ("never go back"), so it counts every dead letter."""
    with EventBus(EventConfig(threads=2, dead_letter_limit=2, handler_retries=0)) as bus:
        sub = bus.subscribe("d.*", _raising("no"))
        for i in range(5):
            bus.publish("d.e", i).get(timeout=WAIT)
        bus.flush(WAIT)
        bus.flush(WAIT)
        m = bus.metrics()
        assert len(bus.dead_letters()) == 2
        assert m.dead_letters == 5
        assert sub.statistics().dead_letters == 5
        assert m.published == 10  # 5 events, 5 announcements


def test_rate_limited_publishes_are_counted_and_never_published() -> None:
    with EventBus(EventConfig(threads=2, rate_limit=0.001, burst=2)) as bus:
        seen = Collector()
        bus.subscribe("r.*", seen)
        outcomes = [_publish_outcome(bus, "r.e", i) for i in range(5)]
        bus.flush(WAIT)
        m = bus.metrics()
        assert outcomes == ["ok", "ok"] + ["RateLimitedError"] * 3
        assert (m.published, m.rate_limited, m.delivered, len(seen.events)) == (2, 3, 2, 2)
        assert _totals(bus.prometheus())[f"{PREFIX}_rate_limited_total"] == 3


def test_close_with_an_abandoned_handler_keeps_every_event_in_the_totals() -> None:
    """docs/architecture.md: ``close(timeout)`` abandons a running handler, "it finishes
    its current batch on its own and the events its subscription had not handled are
    discarded"; docs/observability.md: "its figures stay in the totals once it stopped,
    after ``close()`` too" and the counters never go back."""
    bus = EventBus(EventConfig(threads=2))
    gate = Gate()
    bus.subscribe("c.*", gate, dedicated_thread=True)
    bus.publish("c.e", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    for i in (1, 2, 3):
        bus.publish("c.e", i).get(timeout=WAIT)
    before = bus.metrics()
    given_up = bus.close(timeout=0.2)
    try:
        assert [s.queued + s.in_flight for s in given_up] == [4]
        at_close = bus.metrics()
    finally:
        gate.release.set()

    def settled() -> bool:
        m = bus.metrics()
        return m.delivered + m.dropped == 4

    assert wait_for(settled), bus.metrics()
    final = bus.metrics()
    assert (final.delivered, final.dropped, final.published) == (1, 3, 4)
    for name in ("published", "delivered", "dropped", "handler_errors"):
        series = [getattr(x, name) for x in (before, at_close, final)]
        assert series == sorted(series), f"{name} went back across close: {series}"


def test_a_batch_abandoned_at_close_is_accounted_event_by_event() -> None:
    """Same as above with the events in the handler's batch (published before it ran):
    each is delivered or dropped, none vanishes from the identity."""
    bus = EventBus(EventConfig(threads=2))
    gate = Gate()
    sub = bus.subscribe("c.*", gate, dedicated_thread=True)
    futures = [bus.publish("c.e", i) for i in range(4)]
    for f in futures:
        f.get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    try:
        bus.close(timeout=0.2)
    finally:
        gate.release.set()

    def settled() -> bool:
        s = sub.statistics()
        return s.in_flight == 0 and s.queued == 0

    assert wait_for(settled), sub.statistics()
    s = sub.statistics()
    assert _unclamped_in_flight(s) == 0, s
    assert s.delivered + s.dropped == 4
    m = bus.metrics()
    assert (m.delivered, m.dropped) == (s.delivered, s.dropped)


# -- the Prometheus exposition ----------------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SAMPLE = re.compile(
    r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$'
)


def _strict_text_check(text: str) -> dict[str, str]:
    """Check the 0.0.4 text format line by line; return each family's TYPE."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    finished: set[str] = set()
    current = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert _NAME.fullmatch(name), line
            assert name not in helps, f"HELP twice: {name}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"TYPE twice: {name}"
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped"), line
            types[name] = kind
            if current:
                finished.add(current)
            current = name
            continue
        assert not line.startswith("#"), line
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        name = match.group(1)
        family = name if name in types else re.sub(r"_(sum|count)$", "", name)
        assert family in types, f"sample before its TYPE: {line!r}"
        assert family == current, f"family split: {line!r}"
        assert family not in finished, f"family split: {line!r}"
        float(match.group(3))
    assert helps == set(types)
    return types


@pytest.fixture
def full_node(tmp_path: Any) -> Any:
    """A persistent node with a peer: every optional family (journal, bridge) present."""
    hub = PersistentEventBus(
        EventConfig(persistence_path=tmp_path / "j", threads=2),
        node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"),
    )
    hub.subscribe("n.*", _raising("x"))
    peer = EventBus(node=NodeConfig(name="peer", peers=(str(hub.endpoints["request"]),)))
    try:
        assert peer.linked_nodes(WAIT) == ["hub"]
        hub.publish("n.e", 1).get(timeout=WAIT)
        hub.flush(WAIT)
        hub.flush(WAIT)
        yield hub
    finally:
        peer.close(timeout=WAIT)
        hub.close(timeout=WAIT)


def test_the_text_form_is_strict_0_0_4_with_every_family_typed_once(full_node: Any) -> None:
    text = full_node.prometheus()
    types = _strict_text_check(text)
    for name in METRIC_HELP:
        if name in COUNTER_METRICS:
            assert types[f"{PREFIX}_{name}_total"] == "counter", name
        else:
            assert types[f"{PREFIX}_{name}"] == "gauge", name
    assert types[f"{PREFIX}_bridge_frames_sent_total"] == "counter"
    assert types[f"{PREFIX}_journal_write_latency_seconds"] == "gauge"
    assert all(kind == "counter" for n, kind in types.items() if n.endswith("_total"))
    assert all(not n.endswith("_total") for n, kind in types.items() if kind == "gauge")


def test_both_forms_type_and_value_every_family_alike(full_node: Any) -> None:
    """ "Both forms take these lists from that one module, so they export the same
    figures": same families, same types (but the latency summary), same counter values."""
    got: dict[bool, dict[str, Any]] = {}
    for use_client in (True, False):
        with MetricsServer(full_node, 0, use_client=use_client) as server:
            status, text = _get(server.url)
        assert status == 200
        got[use_client] = _families(text)
    assert set(got[True]) == set(got[False])
    for name, family in got[False].items():
        other = got[True][name]
        if name == f"{PREFIX}_latency_seconds":
            assert other.type == "summary"
            continue
        assert family.type == other.type, name
        if family.type == "counter":
            assert [s.value for s in family.samples] == [s.value for s in other.samples], name


# Regression: a pattern with a lone surrogate was accepted, and made every scrape a 500.
@pytest.mark.parametrize("use_client", [True, False], ids=["prometheus_client", "text"])
def test_a_pattern_no_utf8_can_carry_is_refused_and_the_scrape_stays_up(use_client: bool) -> None:
    """No event type can hold a lone surrogate (``InvalidEventError``), so a pattern with
    one would match nothing: ``subscribe`` refuses it (docs/topics.md), and the bus's
    figures stay scrapable."""
    with EventBus(EventConfig(threads=2)) as bus:
        ok = bus.subscribe("ok.*", Collector())
        with pytest.raises(InvalidPatternError, match="not valid Unicode"):
            bus.subscribe("\ud800.*", Collector())
        with MetricsServer(bus, 0, use_client=use_client) as server:
            status, text = _get(server.url)
        assert status == 200, text
        ids = {s.labels["id"] for s in _families(text)[f"{PREFIX}_subscription_queued"].samples}
        assert ids == {ok.id}


@pytest.mark.parametrize("use_client", [True, False], ids=["prometheus_client", "text"])
def test_control_and_invisible_characters_in_patterns_survive_a_strict_parse(
    use_client: bool,
) -> None:
    patterns = ["a\x00b", "a\x7fb", "a\x1bb", "a\u200bb", "e\u0301.*", "\U0001f600.**", "q\\\\"]
    with EventBus(EventConfig(threads=2)) as bus:
        subs = {bus.subscribe(p, Collector()).id: p for p in patterns}
        with MetricsServer(bus, 0, use_client=use_client) as server:
            status, text = _get(server.url)
        assert status == 200
        if not use_client:
            _strict_text_check(text)
        samples = _families(text)[f"{PREFIX}_subscription_capacity"].samples
        assert {s.labels["id"]: s.labels["pattern"] for s in samples} == subs


def test_a_scrape_of_10000_subscriptions_lists_each_once() -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        ids = {bus.subscribe(f"p{i}.*", lambda e: None).id for i in range(10_000)}
        with bus.serve_metrics(0) as server:
            status, text = _get(server.url, timeout=60)
        assert status == 200
        fams = _families(text)
        for stat in ("delivered", "queued", "capacity", "in_flight"):
            samples = fams[f"{PREFIX}_subscription_{stat}"].samples
            assert len(samples) == 10_000
            assert {s.labels["id"] for s in samples} == ids
        assert fams[f"{PREFIX}_subscriptions"].samples[0].value == 10_000


# Regression: 10,000 subscribes kept a node's router busy >10 s; metrics() then read published 0.
def test_a_node_with_10000_subscriptions_still_answers_its_scrape() -> None:
    """SPEC 11 sizes a bus for 10,000 subscriptions; a node's figures must still be
    scrapable right after they were made, and its counters never go back."""
    hub = EventBus(EventConfig(threads=2), node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"))
    try:
        for i in range(2):
            hub.publish("a.b", i).get(timeout=WAIT)
        for i in range(10_000):
            hub.subscribe(f"p{i}.*", lambda e: None)
        with hub.serve_metrics(0) as server:
            status, text = _get(server.url, timeout=60)
        assert status == 200, text
        assert _totals(text)[f"{PREFIX}_published_total"] >= 2, "published went back"
        assert _families(text)[f"{PREFIX}_subscriptions"].samples[0].value == 10_000
    finally:
        hub.close(timeout=1)


@contextlib.contextmanager
def _router_held() -> Iterator[tuple[EventBus, threading.Event, threading.Event]]:
    """A bus whose router a filter holds on the event "slow" (``entered``) until ``hold``."""
    bus = EventBus(EventConfig(threads=2))
    entered, hold = threading.Event(), threading.Event()

    def slow(event: Event) -> bool:
        if event.data == "slow":
            entered.set()
            hold.wait(3 * WAIT)
        return True

    try:
        bus.subscribe("s.*", Collector(), filter=slow)
        yield bus, entered, hold
    finally:
        hold.set()
        bus.close(timeout=WAIT)


# Regression: a router that did not answer within 10 s made metrics() report published 0.
def test_counters_never_read_zero_while_the_router_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/observability.md: "The bus's counters never go back".  Filters run in the
    router (docs/architecture.md); while one is slow, ``metrics()`` must not report the
    zeros of a router that never ran (``RouterFigures`` fallback)."""
    monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 0.5)  # the 10 s wait, shortened
    with _router_held() as (bus, entered, hold):
        for i in range(3):
            bus.publish("s.e", i).get(timeout=WAIT)
        bus.flush(WAIT)
        before = bus.metrics()
        bus.publish("s.e", "slow")
        assert entered.wait(WAIT)
        try:
            during = bus.metrics()
        finally:
            hold.set()
        assert before.published == 3
        assert during.published >= before.published, (before.published, during.published)


def test_while_the_router_is_busy_only_the_first_reader_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scrape of /metrics every few seconds waited out the router's 10 s each
    time (Prometheus's default scrape timeout), and each left one more ask in
    its inbox.  Now readers after one that gave up get the last figures at
    once, until the router answers; then they get fresh ones again."""
    monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 0.5)  # the 10 s wait, shortened
    with _router_held() as (bus, entered, hold):
        for i in range(3):
            bus.publish("s.e", i).get(timeout=WAIT)
        bus.flush(WAIT)
        assert bus.metrics().published == 3
        bus.publish("s.e", "slow")
        assert entered.wait(WAIT)
        later: concurrent.futures.Future[list[int]] = concurrent.futures.Future()
        try:
            first = bus.metrics()  # waits ASK_TIMEOUT, then the last figures
            monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 3600.0)  # waiting again would hang
            threading.Thread(
                target=lambda: later.set_result([bus.metrics().published for _ in range(5)]),
                daemon=True,
            ).start()
            assert later.result(WAIT) == [first.published] * 5 == [3] * 5
        finally:
            hold.set()
        bus.flush(WAIT)
        assert bus.metrics().published == 4  # the router answered: fresh figures again


def test_while_the_router_is_busy_dead_letters_wait_once_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dead_letters()`` on a bus without a journal asks the router as ``metrics()``
    does; each call waited out the 10 s while it was held, and left one more ask in
    its inbox.  After one reader gave up (of either kind), both get the last answer
    at once until the router answers."""
    monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 0.5)  # the 10 s wait, shortened

    def failing(event: Event) -> None:
        raise RuntimeError("no")

    with _router_held() as (bus, entered, hold):
        bus.subscribe("f.*", failing, retries=0)
        bus.publish("f.x", 1).get(timeout=WAIT)
        bus.flush(WAIT)
        assert [d.event.data for d in bus.dead_letters()] == [1]
        published = bus.metrics().published  # the event and its dead letter's announcement
        bus.publish("s.e", "slow")
        assert entered.wait(WAIT)
        later: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        try:
            first = bus.dead_letters()  # waits ASK_TIMEOUT, then the last list
            monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 3600.0)  # waiting again would hang

            def read() -> None:
                later.set_result(
                    [[d.event.data for d in bus.dead_letters()] for _ in range(3)]
                    + [bus.metrics().published]
                )

            threading.Thread(target=read, daemon=True).start()
            assert [d.event.data for d in first] == [1]
            assert later.result(WAIT) == [[1], [1], [1], published]
        finally:
            hold.set()
        bus.publish("f.x", 2).get(timeout=WAIT)
        bus.flush(WAIT)
        assert [d.event.data for d in bus.dead_letters()] == [1, 2]  # fresh again


def test_a_reader_sees_its_own_publish_though_another_readers_ask_is_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``metrics()`` after a ``publish`` counts it, whatever other readers do: a
    scrape's ask queued before the publish is not this reader's answer."""
    asked: dict[str, threading.Event] = {"scrape": threading.Event(), "mine": threading.Event()}
    real = router_reads.GetRouterFigures

    def spy(future: Any) -> Any:
        name = threading.current_thread().name
        if name in asked:
            asked[name].set()
        return real(future)

    monkeypatch.setattr(router_reads, "GetRouterFigures", spy)
    with _router_held() as (bus, entered, hold):
        bus.publish("s.e", "slow")
        assert entered.wait(WAIT)
        scrape = threading.Thread(target=bus.metrics, name="scrape", daemon=True)
        scrape.start()
        assert asked["scrape"].wait(WAIT)  # its ask is queued behind the held event
        bus.publish("s.e", "mine")  # queued after that ask
        mine: concurrent.futures.Future[int] = concurrent.futures.Future()
        threading.Thread(
            target=lambda: mine.set_result(bus.metrics().published), name="mine", daemon=True
        ).start()
        assert asked["mine"].wait(WAIT)
        hold.set()
        assert mine.result(WAIT) == 2
        scrape.join(WAIT)


def test_scrapes_during_a_nodes_close_all_answer_and_never_go_back() -> None:
    """ "closing the bus does not stop it" (the endpoint) and counters never go back:
    every scrape while a loaded node closes is a 200 with totals at least the last."""
    hub = EventBus(EventConfig(threads=2), node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"))
    hub.subscribe("l.*", lambda e: None)
    hub.subscribe("l.*", _raising("x"))
    server = hub.serve_metrics(0)
    scrapes: list[tuple[int, str]] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            scrapes.append(_get(server.url))

    def load() -> None:
        for i in range(2000):
            if stop.is_set():
                return
            try:
                hub.publish("l.e", i)
            except Exception:  # BusClosedError once close began: expected
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (scrape, load)]
    try:
        for t in threads:
            t.start()
        assert wait_for(lambda: len(scrapes) >= 3)
        hub.close(timeout=WAIT)
        after = len(scrapes)
        assert wait_for(lambda: len(scrapes) >= after + 3)
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
        server.close()
    assert {status for status, _ in scrapes} == {200}
    previous: dict[str, float] = {}
    for i, (_, text) in enumerate(scrapes):
        now = _totals(text)
        back = {k: (previous[k], v) for k, v in now.items() if k in previous and v < previous[k]}
        assert back == {}, f"scrape {i} of {len(scrapes)} went back: {back}"
        previous = now


# -- llmspell-events top ----------------------------------------------------------------------


def _top_args(hub: EventBus, *extra: str) -> list[str]:
    return [sys.executable, "-m", "actors", "top", "--peer", str(hub.endpoints["request"]), *extra]


def _screen(now: Any, before: Any = None, width: int = 160) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(now, before))
    return console.export_text()


# Regression: top rendered patterns as rich markup: '[bold]' vanished, '[/a]' raised.
@pytest.mark.parametrize("pattern", ["x.[bold]y", "x.[/a]"])
def test_top_shows_a_glob_class_pattern_as_written(pattern: str) -> None:
    """SPEC 3: ``[abc]`` is a glob class, so ``x.[bold]y`` and ``x.[/a]`` are patterns;
    ``top`` shows "per-subscription ..." rows: the pattern as subscribed."""
    with EventBus(EventConfig(threads=2)) as bus:
        bus.subscribe(pattern, lambda e: None)
        screen = _screen(sample(bus.metrics(), {}, 1.0, "hub"))
    assert pattern in screen


def test_top_against_a_node_whose_pattern_is_markup_keeps_running_and_q_quits() -> None:
    hub = EventBus(node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"))
    hub.subscribe("x.[/a]", lambda e: None)
    term = Terminal(_top_args(hub, "--interval", "0.2"))
    try:
        term.wait_for(r"q quits|Traceback|Error")
        assert "Traceback" not in term.text, term.text[-1500:]
        term.press(b"q")
        assert term.proc.wait(WAIT) == 0
    finally:
        term.close()
        hub.close(timeout=WAIT)


# Regression: top rendered patterns as they were, so a control character reached the terminal.
def test_top_prints_a_pattern_with_an_escape_sequence_escaped() -> None:
    """docs/cli.md: text a terminal would act on is printed escaped; a pattern may
    hold an ESC (SPEC 3 forbids only whitespace and ``. * ? [ ] { }``)."""
    hub = EventBus(node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"))
    hub.subscribe("x\x1bc.*", lambda e: None)  # ESC c: a terminal reset
    term = Terminal(_top_args(hub, "--interval", "0.2"))
    try:
        term.wait_for(r"q quits|Traceback|Error")
        assert "Traceback" not in term.text, term.text[-1500:]
        term.wait_for(r"x\\x1bc\.\*")
        term.press(b"q")
        assert term.proc.wait(WAIT) == 0
    finally:
        term.close()
        hub.close(timeout=WAIT)


def test_top_keeps_the_last_figures_marked_stale_when_its_node_goes_away() -> None:
    """top's contract (``_watch``): "a silent node keeps its last figures on screen,
    marked stale"; ``q`` still quits with status 0."""
    hub = EventBus(node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"))
    hub.subscribe("gone.*", lambda e: None)
    term = Terminal(_top_args(hub, "--interval", "0.2", "--timeout", "1"))
    try:
        term.wait_for(r"gone\.\*")
        hub.close(timeout=WAIT)
        stale = term.wait_for(r"node 'hub' is not answering")
        after = term.text[stale.start() :]
        term.wait_for(r"node 'hub' is not answering[\s\S]*gone\.\*")
        assert "Traceback" not in after
        term.press(b"q")
        assert term.proc.wait(WAIT) == 0
    finally:
        term.close()
        hub.close(timeout=WAIT)


def test_top_pointed_at_the_http_metrics_endpoint_fails_in_one_line() -> None:
    with EventBus() as bus, bus.serve_metrics(0) as server:
        result = cli("top", "--peer", f"tcp://127.0.0.1:{server.port}", "--timeout", "1")
        assert result.returncode == 1
        assert "no node answered" in one_error_line(result)
        status, _ = _get(server.url)
        assert status == 200  # the endpoint survived the ZeroMQ client


@pytest.mark.parametrize("size", [(3, 10)], ids=["3x10"])
def test_top_on_a_tiny_terminal_draws_and_quits(size: tuple[int, int]) -> None:
    hub = EventBus(node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"))
    term = Terminal(_top_args(hub, "--interval", "0.2"))
    try:
        rows, cols = size
        fcntl.ioctl(term.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        # Two readings drawn at that size (node name or its ellipsis), then q.
        term.wait_for(r"(node|…)[\s\S]*(node|…)")
        term.press(b"q")
        assert term.proc.wait(WAIT) == 0
        assert "Traceback" not in term.text
    finally:
        term.close()
        hub.close(timeout=WAIT)


# -- OpenTelemetry ----------------------------------------------------------------------------


class RaisingExporter:
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Any) -> Any:
        self.calls += 1
        raise ConnectionError("collector down")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class BlockedExporter:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Any) -> Any:
        self.entered.set()
        self.release.wait(60)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_an_exporter_that_raises_changes_nothing_the_bus_counts() -> None:
    provider = TracerProvider()
    exporter = RaisingExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with EventBus(EventConfig(threads=2)) as bus:
        instrumentation = instrument(bus, provider)
        seen = Collector()
        bus.subscribe("o.*", seen)
        for i in range(20):
            bus.publish("o.e", i)
        bus.flush(WAIT)
        m = bus.metrics()
        instrumentation.uninstrument()
    assert exporter.calls == 20
    assert seen.data == list(range(20))
    assert (m.delivered, m.handler_errors, m.dead_letters, m.published) == (20, 0, 0, 20)


def test_an_exporter_that_blocks_behind_a_batch_processor_never_stalls_handlers() -> None:
    provider = TracerProvider()
    exporter = BlockedExporter()
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_queue_size=64, max_export_batch_size=16, schedule_delay_millis=1
        )
    )
    try:
        with EventBus(EventConfig(threads=2)) as bus:
            instrumentation = instrument(bus, provider)
            seen = Collector()
            bus.subscribe("o.*", seen)
            bus.publish("o.e", -1).get(timeout=WAIT)
            bus.flush(WAIT)
            assert exporter.entered.wait(WAIT)
            for i in range(2000):  # far past the processor's queue
                bus.publish("o.e", i)
            bus.flush(WAIT)
            assert len(seen.events) == 2001
            assert bus.metrics().delivered == 2001
            instrumentation.uninstrument()
    finally:
        exporter.release.set()
        provider.shutdown()


class FailingOnEnd(SpanProcessor):
    """A span processor that raises when a span ends (a broken vendor processor)."""

    def on_end(self, span: Any) -> None:
        raise RuntimeError("processor broke")


# Regression: a span processor failing in on_end made a returned handler retried, dead-lettered.
def test_tracing_that_fails_never_changes_the_outcome_of_a_handler() -> None:
    """docs/observability.md: instrumenting wraps the handlers to make spans; it is the
    handler's own exception that "goes to the bus as usual: retries, then a dead
    letter". A handler that returned must count as delivered, once, never retried."""
    provider = TracerProvider()
    provider.add_span_processor(FailingOnEnd())
    with EventBus(EventConfig(threads=2, handler_retries=2)) as bus:
        instrumentation = instrument(bus, provider)
        seen = Collector()
        bus.subscribe("t.*", seen, retry_backoff=0.001)
        bus.publish("t.e", 1).get(timeout=WAIT)
        bus.flush(WAIT)
        bus.flush(WAIT)
        m = bus.metrics()
        instrumentation.uninstrument()
    assert seen.data == [1], "the handler ran more than once"
    assert (m.delivered, m.handler_errors, m.dead_letters) == (1, 0, 0)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


# Regression: traced, an exception whose str() raised reached the bus as a RuntimeError.
def test_an_unprintable_handler_exception_reaches_the_bus_as_itself_when_traced() -> None:
    """ "A handler's exception is recorded on its span ..., then goes to the bus as
    usual": the dead letter names the handler's exception, traced or not."""
    letters: dict[bool, list[str]] = {}
    for traced in (False, True):
        provider, sink = tracer_provider()
        with EventBus(EventConfig(threads=2, handler_retries=0)) as bus:
            instrumentation = instrument(bus, provider) if traced else None

            def handler(event: Event) -> None:
                raise Unprintable()

            bus.subscribe("u.*", handler)
            bus.publish("u.e", 1).get(timeout=WAIT)
            bus.flush(WAIT)
            bus.flush(WAIT)
            letters[traced] = [d.error_type for d in bus.dead_letters()]
            if instrumentation is not None:
                instrumentation.uninstrument()
                [span] = sink.wait_for(1)
                assert span.status.status_code == trace.StatusCode.ERROR
    assert letters[False] == ["Unprintable"]
    assert letters[True] == ["Unprintable"]


def test_request_reply_spans_link_requester_responder_and_reply_handler() -> None:
    """A request made in a traced handler: the responder's span is the handler's child
    (the request's cause), a traced handler of the reply is the responder's child
    (the reply's ``causation_id`` is the request), all in the workflow's trace."""
    provider, sink = tracer_provider()
    with EventBus(EventConfig(threads=4), name="a") as bus:
        instrumentation = instrument(bus, provider)
        bus.respond("svc.ask", lambda e: {"answer": e.data})
        replies = Collector(expected=1)
        bus.subscribe("svc.ask.reply", replies)
        answers: list[Any] = []

        def step(event: Event) -> None:
            answers.append(bus.request("svc.ask", 7, timeout=WAIT).data)

        bus.subscribe("wf.start", step)
        cid = uuid.uuid4()
        start = bus.publish("wf.start", None, correlation_id=cid).get(timeout=WAIT)
        spans = sink.wait_for(3)
        assert replies.done.wait(WAIT)
        bus.flush(WAIT)
        instrumentation.uninstrument()
    spans = sink.spans
    by_name = {s.name: s for s in spans}
    assert answers == [{"answer": 7}]
    assert set(by_name) == {"wf.start", "svc.ask", "svc.ask.reply"}
    assert {s.context.trace_id for s in spans} == {cid.int}
    assert by_name["wf.start"].context.span_id == span_id_of(start.id)
    assert by_name["svc.ask"].parent.span_id == by_name["wf.start"].context.span_id
    assert by_name["svc.ask.reply"].parent.span_id == by_name["svc.ask"].context.span_id
    # the handler's span encloses the request it waited for
    assert by_name["wf.start"].end_time >= by_name["svc.ask"].end_time


def test_odd_attribute_values_are_carried_exactly() -> None:
    provider, sink = tracer_provider()
    with EventBus(EventConfig(threads=2), name="nöde-日本") as bus:
        instrumentation = instrument(bus, provider)
        bus.subscribe("a.{b,c}", Collector())
        source, target = 'we"ird\\ \n\u200b😀', ""
        published = bus.publish("a.b", None, source=source, target=target).get(timeout=WAIT)
        [span] = sink.wait_for(1)
        instrumentation.uninstrument()
    attrs = dict(span.attributes)
    assert attrs["llmspell.event.source"] == source
    assert attrs["llmspell.event.target"] == target
    assert attrs["llmspell.event.origin"] == "nöde-日本"
    assert attrs["messaging.destination.subscription.name"] == "a.{b,c}"
    assert attrs["llmspell.event.sequence"] == published.sequence
    assert span.parent is None
