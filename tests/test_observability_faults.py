"""Observability under failure: span processors and exporters that raise or block,
handlers that raise, hang or outlive ``close``, spans across request/reply and two
nodes, figures that must add up under concurrent publishers, and ``top``'s screen
for awkward figures.

Real buses, real ZeroMQ on ipc; every wait is bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import re
import threading
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from actors import (
    AsyncEventBus,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    NodeConfig,
    OverflowStrategy,
    RemoteHandlerError,
)
from actors._model.metrics import COUNTER_METRICS, BusMetrics, SubscriptionStatistics
from actors._model.otelspans import span_id_of
from actors.cli.top import render, sample
from actors.otel import instrument
from tests._support import (
    WAIT,
    Collector,
    finished,
    in_background,
    tracer_provider,
    wait_for,
)


def balanced(st: SubscriptionStatistics) -> bool:
    """Every accepted event is in exactly one place (``SubscriptionStatistics``)."""
    placed = st.delivered + st.expired + st.dead_letters + st.dropped + st.queued + st.in_flight
    return st.accepted == placed


def settled(st: SubscriptionStatistics) -> bool:
    return st.queued == 0 and st.in_flight == 0


def counters(m: BusMetrics) -> dict[str, int]:
    return {f.name: getattr(m, f.name) for f in fields(m) if f.name in COUNTER_METRICS}


# -- tracing that fails --------------------------------------------------------------------


class _Raising(SpanProcessor):
    """A span processor that raises on start or on end."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.where == "start":
            raise RuntimeError("processor broke on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.where == "end":
            raise RuntimeError("processor broke on end")


class _RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise RuntimeError("exporter broke")


def _failing_provider(where: str) -> TracerProvider:
    provider = TracerProvider()
    if where == "export":
        provider.add_span_processor(SimpleSpanProcessor(_RaisingExporter()))
    else:
        provider.add_span_processor(_Raising(where))
    return provider


def _run_workload(bus: EventBus) -> tuple[list[Any], BusMetrics]:
    """Three good events and two bad ones (one retry each): what the bus made of them."""
    got = Collector(3)

    def picky(event: Event) -> None:
        if event.data == "bad":
            raise ValueError("bad data")

    bus.subscribe("w.ok", got)
    bus.subscribe("w.picky", picky, retries=1, retry_backoff=0.0)
    for data in (1, 2, 3):
        bus.publish("w.ok", data)
    for other in ("bad", 4, "bad"):
        bus.publish("w.picky", other)
    assert got.done.wait(WAIT)
    assert wait_for(lambda: bus.metrics().dead_letters == 2)
    bus.flush(WAIT)
    bus.flush(WAIT)
    return got.data, bus.metrics()


@pytest.mark.parametrize("where", ["start", "end", "export"])
def test_a_span_processor_or_exporter_that_raises_changes_no_outcome(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The same workload, untraced and traced through a tracing pipeline that raises:
    the handlers see the same events and every counter comes out the same; a failure
    of the tracing itself is logged on ``actors.otel`` at WARNING once, then DEBUG."""
    caplog.set_level(logging.DEBUG, logger="actors.otel")
    with EventBus(EventConfig(threads=2)) as plain:
        expected_data, expected = _run_workload(plain)
    with EventBus(EventConfig(threads=2)) as bus:
        instrumentation = instrument(bus, _failing_provider(where))
        data, got = _run_workload(bus)
        instrumentation.uninstrument()
    assert data == expected_data == [1, 2, 3]
    assert counters(got) == counters(expected)
    assert (got.delivered, got.handler_errors, got.dead_letters) == (4, 4, 2)
    ours = [r for r in caplog.records if r.name == "actors.otel"]
    if where == "export":
        # The SDK's SimpleSpanProcessor keeps an exporter's failure to itself.
        assert ours == []
    else:
        assert [r.levelno for r in ours].count(logging.WARNING) == 1
        assert ours[0].levelno == logging.WARNING
        assert len(ours) >= 7  # one per handler call: 3 good, 4 attempts of picky
        assert {r.levelno for r in ours[1:]} == {logging.DEBUG}


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


def test_an_exception_whose_str_raises_still_becomes_a_dead_letter_and_an_error_span() -> None:
    provider, sink = tracer_provider()
    with EventBus(EventConfig(threads=2)) as bus:
        instrumentation = instrument(bus, provider)
        raised: list[BaseException] = []

        def ugly(event: Event) -> None:
            exc = _Unprintable()
            raised.append(exc)
            raise exc

        sub = bus.subscribe("u.e", ugly, retries=0)
        bus.publish("u.e", 1)
        [span] = sink.wait_for(1)
        assert wait_for(lambda: bus.metrics().dead_letters == 1)
        bus.flush(WAIT)
        st = sub.statistics()
        instrumentation.uninstrument()
    assert span.end_time is not None
    assert span.status.status_code == trace.StatusCode.ERROR
    assert "_Unprintable" in (span.status.description or "")
    assert (st.errors, st.dead_letters, st.delivered) == (1, 1, 0)
    assert len(raised) == 1


class _BlockedExporter(SpanExporter):
    """An exporter that blocks in ``export`` until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(WAIT)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def test_an_exporter_blocked_behind_a_batch_processor_holds_no_handler() -> None:
    exporter = _BlockedExporter()
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_queue_size=4, max_export_batch_size=1, schedule_delay_millis=1
        )
    )
    try:
        with EventBus(EventConfig(threads=2)) as bus:
            instrumentation = instrument(bus, provider)
            got = Collector(200)
            bus.subscribe("b.*", got)
            bus.publish("b.first", 0)
            assert exporter.entered.wait(WAIT)
            for i in range(1, 200):
                bus.publish("b.e", i)
            # Every event is handled while the exporter still holds its first span.
            assert got.done.wait(WAIT)
            assert not exporter.release.is_set()
            bus.flush(WAIT)
            assert bus.metrics().delivered == 200
            instrumentation.uninstrument()
    finally:
        exporter.release.set()
        provider.shutdown()
    assert exporter.exported >= 1


# -- handlers that hang, and close -----------------------------------------------------------


def test_a_handler_outliving_uninstrument_ends_its_span_and_the_next_call_is_untraced() -> None:
    provider, sink = tracer_provider()
    with EventBus(EventConfig(threads=2)) as bus:
        instrumentation = instrument(bus, provider)
        entered, release = threading.Event(), threading.Event()
        seen: list[int] = []

        def slow(event: Event) -> None:
            seen.append(trace.get_current_span().get_span_context().span_id)
            entered.set()
            assert release.wait(WAIT)

        bus.subscribe("h.e", slow, dedicated_thread=True)
        first = bus.publish("h.e", 1).get(timeout=WAIT)
        assert entered.wait(WAIT)
        instrumentation.uninstrument()
        release.set()
        [span] = sink.wait_for(1)
        bus.publish("h.e", 2)
        bus.flush(WAIT)
        assert len(seen) == 2
    assert span.context.span_id == span_id_of(first.id) == seen[0]
    assert span.status.status_code == trace.StatusCode.UNSET
    assert seen[1] == trace.INVALID_SPAN_ID  # untraced: no span is current
    assert len(sink.spans) == 1


@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_a_handler_still_running_when_close_starts_ends_its_span_with_its_own_outcome(
    outcome: str,
) -> None:
    """``close`` begins while a handler is stuck; once released the handler finishes:
    each call's span ends with that call's outcome, and the figures count each call
    exactly once."""
    provider, sink = tracer_provider()
    bus = EventBus(EventConfig(threads=2))
    instrumentation = instrument(bus, provider)
    entered, release = threading.Event(), threading.Event()

    def stuck(event: Event) -> None:
        entered.set()
        assert release.wait(WAIT)
        if outcome == "raises":
            raise RuntimeError("failed after close began")

    try:
        sub = bus.subscribe("c.e", stuck, retries=2, retry_backoff=0.0, dedicated_thread=True)
        event = bus.publish_correlated("c.e", 1, uuid.uuid4()).get(timeout=WAIT)
        assert entered.wait(WAIT)
        thread, result = in_background(lambda: bus.close(timeout=WAIT))
        assert wait_for(lambda: bus.closed)
        release.set()
        assert finished(thread, result) == ()
    finally:
        release.set()
        bus.close(timeout=WAIT)
        instrumentation.uninstrument()
    st = sub.statistics()
    attempts = 3 if outcome == "raises" else 1  # close drains: the retries run too
    spans = sink.wait_for(attempts)
    assert len(spans) == attempts == st.errors + st.delivered
    for span in spans:
        assert span.context.span_id == span_id_of(event.id)
        assert span.context.trace_id == event.correlation_id.int  # type: ignore[union-attr]
        assert span.end_time is not None
    m = bus.metrics()
    if outcome == "raises":
        assert {s.status.status_code for s in spans} == {trace.StatusCode.ERROR}
        assert "failed after close began" in (spans[0].status.description or "")
        assert (st.errors, st.delivered, st.dead_letters) == (3, 0, 1)
        assert m.dead_letters == 1
    else:
        assert spans[0].status.status_code == trace.StatusCode.UNSET
        assert (st.errors, st.delivered, st.dead_letters) == (0, 1, 0)
    assert balanced(st)
    assert settled(st)
    assert m.handler_errors == st.errors
    assert m.delivered == st.delivered


# -- async handlers ----------------------------------------------------------------------------


def test_interleaved_async_handlers_each_keep_their_own_span_across_awaits() -> None:
    """Two ``async def`` handlers on one loop, each suspended while the other runs:
    after every await, the current span is still the handler's own."""
    provider, sink = tracer_provider()
    seen: dict[str, list[int]] = {"a": [], "b": []}

    async def main() -> tuple[Event, Event]:
        async with AsyncEventBus(EventConfig(threads=2)) as bus:
            instrumentation = instrument(bus, provider)
            a_in, b_in = asyncio.Event(), asyncio.Event()

            def now() -> int:
                return int(trace.get_current_span().get_span_context().span_id)

            async def a(event: Event) -> None:
                seen["a"].append(now())
                a_in.set()
                await b_in.wait()
                seen["a"].append(now())

            async def b(event: Event) -> None:
                await a_in.wait()
                seen["b"].append(now())
                b_in.set()
                await asyncio.sleep(0)
                seen["b"].append(now())

            await bus.subscribe("x.a", a)
            await bus.subscribe("x.b", b)
            ea = await bus.publish("x.a", 1)
            eb = await bus.publish("x.b", 2)
            await asyncio.to_thread(sink.wait_for, 2)
            instrumentation.uninstrument()
            return ea, eb

    ea, eb = asyncio.run(main())
    assert seen["a"] == [span_id_of(ea.id)] * 2
    assert seen["b"] == [span_id_of(eb.id)] * 2
    spans = {s.name: s for s in sink.spans}
    assert spans["x.a"].context.span_id == span_id_of(ea.id)
    assert spans["x.b"].context.span_id == span_id_of(eb.id)


def test_an_async_handler_cancelled_at_its_timeout_has_an_error_span_and_is_counted() -> None:
    provider, sink = tracer_provider()

    async def main() -> tuple[BusMetrics, SubscriptionStatistics]:
        async with AsyncEventBus(EventConfig(threads=2)) as bus:
            instrumentation = instrument(bus, provider)
            never = asyncio.Event()

            async def hangs(event: Event) -> None:
                await never.wait()

            sub = await bus.subscribe("t.e", hangs, timeout=0.05, retries=0)
            await bus.publish("t.e", 1)
            await asyncio.to_thread(sink.wait_for, 1)
            await asyncio.to_thread(wait_for, lambda: bus.metrics().dead_letters == 1)
            await bus.flush(WAIT)
            instrumentation.uninstrument()
            return bus.metrics(), sub.statistics()

    m, st = asyncio.run(main())
    [span] = sink.spans
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.end_time is not None
    assert (m.handler_timeouts, st.timeouts) == (1, 1)
    assert (m.dead_letters, st.dead_letters) == (1, 1)
    assert balanced(st)


# -- responders --------------------------------------------------------------------------------


def test_a_responder_whose_answer_becomes_an_error_reply_has_an_error_span() -> None:
    """``actors/otel.py``: "An error reply a responder answered with (``answer_errors``)
    is recorded like an exception".  A result that is not JSON is answered with an
    ``.error`` reply; the caller gets ``RemoteHandlerError``; the span must say so."""
    provider, sink = tracer_provider()
    with EventBus(EventConfig(threads=2)) as bus:
        instrumentation = instrument(bus, provider)
        bus.respond("tool.odd", lambda request: object())
        with pytest.raises(RemoteHandlerError, match="JSON"):
            bus.request("tool.odd", 1, timeout=WAIT)
        [span] = sink.wait_for(1)
        instrumentation.uninstrument()
    assert span.status.status_code == trace.StatusCode.ERROR, span.status


def test_an_async_responder_past_its_timeout_has_an_error_span() -> None:
    """An ``async def`` responder past ``timeout`` "is cancelled and replies ``.error``
    (``TimeoutError``)" (``EventBus.respond``); the same cancellation of a plain
    ``async def`` handler gives an ERROR span, and an error reply is recorded like an
    exception (``actors/otel.py``)."""
    provider, sink = tracer_provider()

    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as bus:
            instrumentation = instrument(bus, provider)
            never = asyncio.Event()

            async def slow(request: Event) -> None:
                await never.wait()

            await bus.respond("tool.slow", slow, timeout=0.05)
            with pytest.raises(RemoteHandlerError, match="TimeoutError"):
                await bus.request("tool.slow", 1, timeout=WAIT)
            await asyncio.to_thread(sink.wait_for, 1)
            instrumentation.uninstrument()

    asyncio.run(main())
    [span] = sink.spans
    assert span.status.status_code == trace.StatusCode.ERROR, span.status


def test_a_request_across_two_nodes_links_the_responders_span_to_the_callers(
    tmp_path: Path,
) -> None:
    """Node a's handler asks node b's responder over ipc: b's span is in a's trace,
    child of a's handler span; the reply carries the answer; a's handler span covers
    the whole request; a raising responder on b has an ERROR span and a gets the error."""
    provider_a, sink_a = tracer_provider()
    provider_b, sink_b = tracer_provider()
    b = EventBus(EventConfig(threads=2), node=NodeConfig(name="b", listen=f"ipc://{tmp_path}/b"))
    a = EventBus(
        EventConfig(threads=2),
        node=NodeConfig(name="a", listen=f"ipc://{tmp_path}/a", peers=(f"ipc://{tmp_path}/b",)),
    )
    try:
        instrument(a, provider_a)
        instrument(b, provider_b)
        b.respond("tool.add", lambda request: {"sum": sum(_numbers(request))}, source="tools")

        def broken(request: Event) -> None:
            raise LookupError("no such tool")

        b.respond("tool.broken", broken)
        outcomes: list[Any] = []
        done = threading.Event()

        def step(event: Event) -> None:
            outcomes.append(a.request("tool.add", [1, 2], timeout=WAIT).data)
            try:
                a.request("tool.broken", None, timeout=WAIT)
            except RemoteHandlerError as exc:
                outcomes.append(type(exc).__name__)
            done.set()

        a.subscribe("wf.start", step)
        assert a.wait_for_peers(["b"], WAIT)
        assert b.wait_for_peers(["a"], WAIT)
        cid = uuid.uuid4()
        start = a.publish_correlated("wf.start", None, cid).get(timeout=WAIT)
        assert done.wait(WAIT)
        theirs = {s.name: s for s in sink_b.wait_for(2)}
        assert wait_for(lambda: any(s.name == "wf.start" for s in sink_a.spans))
        ours = {s.name: s for s in sink_a.spans}
    finally:
        a.close(timeout=WAIT)
        b.close(timeout=WAIT)
    assert outcomes == [{"sum": 3}, "RemoteHandlerError"]
    root = ours["wf.start"]
    assert root.context.span_id == span_id_of(start.id)
    assert root.parent is None
    for name in ("tool.add", "tool.broken"):
        span = theirs[name]
        assert span.context.trace_id == cid.int, name
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id, name
        assert dict(span.attributes or {})["llmspell.event.origin"] == "a"
    assert theirs["tool.add"].status.status_code == trace.StatusCode.UNSET
    assert theirs["tool.broken"].status.status_code == trace.StatusCode.ERROR
    assert "LookupError" in (theirs["tool.broken"].status.description or "")
    # Replies a's reply routes handled, if traced, are children of b's spans.
    for span in ours.values():
        if span.name.startswith("tool."):
            assert span.parent is not None
            assert span.parent.span_id in {s.context.span_id for s in theirs.values()}


def _numbers(event: Event) -> list[int]:
    data: Any = event.data
    return [int(x) for x in data]


# -- figures that add up ---------------------------------------------------------------------


def test_figures_add_up_under_concurrent_publishers_failing_and_dropping_handlers() -> None:
    """Four publishers at once into a subscription that fails one event in five (one
    retry), one that is held until its small queue overflows, and a plain one; every
    ``$bus`` event is collected.  Each subscription balances; the bus totals are the
    sums of the subscriptions'; ``published`` is the events published plus the
    ``$bus`` events the bus sequenced."""
    publishers, each = 4, 250
    total = publishers * each
    with EventBus(EventConfig(threads=2)) as bus:
        hold = threading.Event()
        held_entered = threading.Event()

        def held(event: Event) -> None:
            held_entered.set()
            assert hold.wait(WAIT)

        def picky(event: Event) -> None:
            data: Any = event.data
            if data[1] % 5 == 0:
                raise ValueError("one in five")

        bus_events = Collector()
        subs = {
            "bus": bus.subscribe("$bus.**", bus_events),
            "picky": bus.subscribe("f.*", picky, retries=1, retry_backoff=0.0),
            "held": bus.subscribe(
                "f.**",
                held,
                capacity=16,
                overflow=OverflowStrategy.DROP_OLDEST,
                dedicated_thread=True,
            ),
            "plain": bus.subscribe("{f,g}.e", lambda event: None),
        }
        start = threading.Barrier(publishers + 1, timeout=WAIT)

        def publisher(n: int) -> None:
            start.wait()
            for i in range(each):
                bus.publish("f.e", [n, i]).get(timeout=WAIT)

        runs = [in_background(functools.partial(publisher, n)) for n in range(publishers)]
        start.wait()
        for run in runs:
            assert finished(*run) is None
        assert held_entered.wait(WAIT)
        hold.set()
        failing = publishers * (each // 5)
        assert wait_for(lambda: subs["picky"].statistics().dead_letters == failing)
        assert wait_for(lambda: all(settled(s.statistics()) for s in subs.values()))
        bus.flush(WAIT)
        bus.flush(WAIT)
        assert wait_for(lambda: all(settled(s.statistics()) for s in subs.values()))
        m = bus.metrics()
        stats = {name: sub.statistics() for name, sub in subs.items()}
    for name, st in stats.items():
        assert balanced(st), (name, st)
    assert stats["picky"].accepted == stats["held"].accepted == stats["plain"].accepted == total
    assert (stats["picky"].delivered, stats["picky"].dead_letters) == (total - failing, failing)
    assert stats["picky"].errors == 2 * failing
    assert stats["held"].dropped > 0
    assert stats["held"].delivered + stats["held"].dropped == total
    assert stats["plain"].delivered == total
    every = list(stats.values())
    assert m.delivered == sum(s.delivered for s in every)
    assert m.dropped == sum(s.dropped for s in every)
    assert m.handler_errors == sum(s.errors for s in every)
    assert m.dead_letters == sum(s.dead_letters for s in every) == failing
    deadletters = [e for e in bus_events.events if e.event_type == "$bus.deadletter"]
    assert len(deadletters) == failing
    assert m.published == total + len(bus_events.events)
    assert stats["bus"].accepted == len(bus_events.events)


def _close_under_readers(readers: int) -> tuple[list[list[dict[str, int]]], BusMetrics, list[Any]]:
    """Publish into a failing subscription and a small one while ``readers`` threads
    take snapshots without pause; close the bus; return every reader's snapshots."""
    bus = EventBus(EventConfig(threads=2))

    def flaky(event: Event) -> None:
        data: Any = event.data
        if data[1] % 3 == 0:
            raise RuntimeError("every third")

    subs = [
        bus.subscribe("r.*", flaky, retries=0),
        bus.subscribe("r.**", lambda event: None, capacity=8, dedicated_thread=True),
    ]
    stop = threading.Event()
    moving = threading.Event()
    going = threading.Barrier(readers + 3, timeout=WAIT)

    def reader() -> list[dict[str, int]]:
        seen = []
        going.wait()
        after = 0
        while after < 5:
            if stop.is_set():
                after += 1
            seen.append(counters(bus.metrics()))
        return seen

    def publisher(n: int) -> int:
        going.wait()
        sent = 0
        for i in range(100_000):
            try:
                bus.publish("r.e", [n, i])
            except BusClosedError:  # refused once the bus closed
                return sent
            sent += 1
            if i == 200:
                moving.set()
        return sent

    reads = [in_background(reader) for _ in range(readers)]
    pubs = [in_background(functools.partial(publisher, n)) for n in range(2)]
    going.wait()
    assert moving.wait(WAIT)
    bus.close(timeout=WAIT)
    stop.set()
    seen = [finished(*read) for read in reads]
    for run in pubs:
        assert isinstance(finished(*run), int)
    for one in seen:
        assert not isinstance(one, BaseException), repr(one)
    return seen, bus.metrics(), [s.statistics() for s in subs]


def test_after_close_the_totals_are_the_sums_of_the_ended_subscriptions() -> None:
    _seen, final, stats = _close_under_readers(1)
    for st in stats:
        assert balanced(st), st
        assert settled(st), st
    assert final.delivered == sum(s.delivered for s in stats)
    assert final.dropped == sum(s.dropped for s in stats)
    assert final.handler_errors == sum(s.errors for s in stats)
    assert final.dead_letters == stats[0].dead_letters
    assert stats[0].accepted == stats[1].accepted > 200
    assert final.subscriptions == 0


def test_counters_read_while_the_bus_closes_never_fall() -> None:
    """docs/observability.md: the router's counters are "stale but never lower", and the
    bus's counters "never go back ... after close() too".  Readers taking snapshots
    while ``close`` stops the router must never see a counter fall."""
    falls = []
    for _trial in range(4):
        seen, final, _stats = _close_under_readers(3)
        for snapshots in seen:
            for i, (earlier, later) in enumerate(itertools.pairwise([*snapshots, counters(final)])):
                lower = {k: (v, later[k]) for k, v in earlier.items() if later[k] < v}
                if lower:
                    falls.append((i, lower))
    assert falls == [], f"counters fell: {falls[:3]}"


def test_scraped_subscription_series_add_up_to_the_totals_for_odd_patterns() -> None:
    """Subscriptions on patterns with braces, globs, ``**`` and ``$bus``: the scraped
    per-subscription series (one per subscription, by id) sum to the bus totals."""
    patterns = ["**", "$bus.**", "o.{a,b}", "o.[ab]?", "o.*", "o.a", "*.b"]
    with EventBus(EventConfig(threads=2)) as bus:

        def failing(event: Event) -> None:
            raise KeyError(event.event_type)

        subs = {bus.subscribe(p, Collector()).id: p for p in patterns}
        failing_sub = bus.subscribe("o.b", failing, retries=0)
        subs[failing_sub.id] = "o.b"
        for event_type in ("o.a", "o.b", "o.ax", "x.b", "o.a"):
            bus.publish(event_type, None)
        assert wait_for(lambda: bus.metrics().dead_letters == 1)
        bus.flush(WAIT)
        bus.flush(WAIT)
        with (
            bus.serve_metrics(0) as server,
            urllib.request.urlopen(server.url, timeout=WAIT) as reply,
        ):
            text = reply.read().decode()
        m = bus.metrics()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for stat, total in (("delivered", m.delivered), ("errors", m.handler_errors)):
        samples = fams[f"llmspell_events_subscription_{stat}"].samples
        assert {s.labels["id"]: s.labels["pattern"] for s in samples} == subs
        assert sum(s.value for s in samples) == total, stat
    assert fams["llmspell_events_delivered"].samples[0].value == m.delivered
    by_pattern = {
        s.labels["pattern"]: s.value
        for s in fams["llmspell_events_subscription_delivered"].samples
        if s.labels["id"] != failing_sub.id
    }
    # ** takes every user event (never $bus ones); $bus.** the one dead letter.
    assert by_pattern["**"] == 5
    assert by_pattern["$bus.**"] == 1
    assert by_pattern["o.{a,b}"] == 3
    assert by_pattern["o.[ab]?"] == 1
    assert by_pattern["o.*"] == 4
    assert by_pattern["o.a"] == 2
    assert by_pattern["*.b"] == 2


# -- top -------------------------------------------------------------------------------------


def _screen(renderable: Any, width: int = 140) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_top_shows_a_remote_nodes_awkward_patterns_escaped_and_its_figures(
    tmp_path: Path,
) -> None:
    """Figures asked over ipc match the node's own; a pattern with an escape character
    and rich markup is drawn as text, never acted on by the terminal."""
    pattern = "x.\x1b(0owned\x07"
    hub = EventBus(
        EventConfig(threads=2), node=NodeConfig(name="hub", listen=f"ipc://{tmp_path}/h")
    )
    try:
        got = Collector(1)
        hub.subscribe(pattern, got)
        hub.publish(pattern, 1)
        assert got.done.wait(WAIT)
        hub.flush(WAIT)
        own = hub.metrics()
        viewer = EventBus(node=NodeConfig(name="viewer", peers=(f"ipc://{tmp_path}/h",)))
        try:
            assert viewer.linked_nodes(WAIT) == ["hub"]
            remote, heard = viewer.remote_metrics("hub", timeout=WAIT)
        finally:
            viewer.close(timeout=WAIT)
    finally:
        hub.close(timeout=WAIT)
    assert [(s.id, s.pattern, s.delivered) for s in remote.per_subscription] == [
        (s.id, s.pattern, s.delivered) for s in own.per_subscription
    ]
    assert (remote.published, remote.delivered) == (own.published, own.delivered) == (1, 1)
    screen = _screen(render(sample(remote, heard, 1.0, "hub", "viewer"), None))
    assert "\x1b" not in screen
    assert "\x07" not in screen
    assert "x.\\x1b(0owned\\x07" in screen


def test_top_never_shows_a_negative_rate_when_a_node_restarted_between_readings() -> None:
    sub = SubscriptionStatistics("sub-1", "a.*", 500, 0, 0, 0, 100)
    before_figures = BusMetrics(
        published=1000,
        delivered=500,
        dropped=0,
        rejected=0,
        expired=0,
        handler_errors=0,
        dead_letters=0,
        subscriptions=1,
        events_per_second=10.0,
        peak_events_per_second=20.0,
        latency_p50=None,
        latency_p90=None,
        latency_p99=None,
        latency_max=None,
        per_subscription=(sub,),
    )
    restarted = replace(
        before_figures,
        published=3,
        delivered=2,
        per_subscription=(replace(sub, delivered=2),),
    )
    before = sample(before_figures, {}, 10.0, "hub")
    now = sample(restarted, {}, 11.0, "hub")
    screen = _screen(render(now, before))
    assert "rate 0/s" in screen
    assert "delivered 0/s" in screen
    assert re.search(r"sub-1\s+│\s+a\.\*\s+│\s+0\s+│\s+100\s+│\s+0/s\s+│\s+2\s", screen)
    assert re.search(r"-\d[\d,.]*/s", screen) is None
