"""OpenTelemetry: live spans of handled events (``actors.otel``) and ``Trace.to_otel``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

from actors import Event, EventBus, EventConfig, NodeConfig, PersistentEventBus
from actors._model.otelspans import span_id_of
from actors.otel import instrument
from tests._support import WAIT, Collector, SpanSink, span_dict, tracer_provider, wait_for

CHILD = str(Path(__file__).with_name("_otel_child.py"))


@pytest.fixture
def traced() -> Iterator[tuple[EventBus, Any]]:
    provider, sink = tracer_provider()
    bus = EventBus(EventConfig(threads=2), name="a")
    instrumentation = instrument(bus, provider)
    yield bus, sink
    instrumentation.uninstrument()
    bus.close(timeout=WAIT)


def test_a_handled_event_is_a_consumer_span_with_messaging_attributes(
    traced: tuple[EventBus, Any],
) -> None:
    bus, sink = traced
    bus.subscribe("user.*", Collector())
    cid = uuid.uuid4()
    event = bus.publish("user.login", {"u": 1}, correlation_id=cid, source="web", target="auth")
    published = event.get(timeout=WAIT)
    [span] = sink.wait_for(1)
    assert span.name == "user.login"
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.context.trace_id == cid.int
    assert span.context.span_id == span_id_of(published.id)
    assert span.parent is None
    attrs = dict(span.attributes)
    assert attrs["messaging.system"] == "llmspell-events"
    assert attrs["messaging.destination.name"] == "user.login"
    assert attrs["messaging.message.id"] == str(published.id)
    assert attrs["messaging.destination.subscription.name"] == "user.*"
    assert attrs["llmspell.event.sequence"] == published.sequence
    assert attrs["llmspell.event.source"] == "web"
    assert attrs["llmspell.event.target"] == "auth"
    assert attrs["llmspell.event.origin"] == "a"
    assert attrs["llmspell.subscription.id"].startswith("sub-")


def test_a_caused_event_is_a_child_span_and_the_handler_span_is_current(
    traced: tuple[EventBus, Any],
) -> None:
    bus, sink = traced
    current: list[Any] = []

    def step(event: Event) -> None:
        current.append(trace.get_current_span().get_span_context().span_id)
        bus.publish("wf.next", {"n": 2})

    bus.subscribe("wf.start", step)
    bus.subscribe("wf.next", Collector())
    cid = uuid.uuid4()
    start = bus.publish_correlated("wf.start", {"n": 1}, cid).get(timeout=WAIT)
    spans = {s.name: s for s in sink.wait_for(2)}
    assert current == [span_id_of(start.id)]
    assert spans["wf.next"].parent.span_id == spans["wf.start"].context.span_id
    assert {s.context.trace_id for s in spans.values()} == {cid.int}


@pytest.mark.parametrize("ratio", [0.0, 0.625, 1.0])
def test_children_follow_their_roots_sampling_so_a_workflow_is_kept_whole_or_not_at_all(
    ratio: float,
) -> None:
    # The parent of a span is rebuilt from ids: it used to be marked sampled
    # always, so ParentBased(anything) dropped the roots and kept every child.
    sink = SpanSink()
    sampler = ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(sink))
    cids = [uuid.uuid4() for _ in range(40)]
    done = Collector(expected=len(cids))
    with EventBus() as bus:
        instrumentation = instrument(bus, provider)
        bus.subscribe("wf.start", lambda e: bus.publish("wf.step", None))
        bus.subscribe("wf.step", lambda e: bus.publish("wf.done", None))
        bus.subscribe("wf.done", done)
        for cid in cids:
            bus.publish_correlated("wf.start", None, cid)
        assert done.done.wait(WAIT)
        bus.flush(WAIT)
    instrumentation.uninstrument()  # closed: every handler, so every span, has ended
    kept = {
        cid.int
        for cid in cids
        if sampler.should_sample(None, cid.int, "wf.start").decision.is_sampled()
    }
    by_trace: dict[int, list[str]] = {}
    for span in sink.spans:
        by_trace.setdefault(span.context.trace_id, []).append(span.name)
    assert set(by_trace) == kept
    assert all(sorted(names) == ["wf.done", "wf.start", "wf.step"] for names in by_trace.values())
    if ratio == 0.625:  # a UUID fixes the top 2 bits of the 64 the sampler reads: half kept
        assert 0 < len(kept) < len(cids)


def test_a_sampler_that_reads_the_attributes_still_sees_its_children_traced() -> None:
    # The child's parent carries the root's decision, asked of the sampler with
    # no span of its own: a sampler reading ``attributes`` must not fail there.
    class ByAttributes(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None,
                          ) -> SamplingResult:  # fmt: skip
            len(attributes)  # None would raise
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "by attributes"

    sink = SpanSink()
    provider = TracerProvider(sampler=ParentBased(ByAttributes()))
    provider.add_span_processor(SimpleSpanProcessor(sink))
    done = Collector(expected=1)
    with EventBus() as bus:
        instrumentation = instrument(bus, provider)
        bus.subscribe("wf.start", lambda e: bus.publish("wf.step", None))
        bus.subscribe("wf.step", done)
        bus.publish_correlated("wf.start", None, uuid.uuid4())
        assert done.done.wait(WAIT)
        bus.flush(WAIT)
    instrumentation.uninstrument()
    assert sorted(span.name for span in sink.spans) == ["wf.start", "wf.step"]


def test_a_sampler_deciding_by_name_is_asked_the_root_decision_with_the_childs_type() -> None:
    # docs/observability.md: the root's type is not known where a child is
    # handled; the root's decision is asked with the child's own type, so a
    # sampler keeping only "wf.start" by name keeps the root and drops the
    # child (whose parent then reads unsampled): it must decide by trace id.
    asked: list[str] = []

    class ByName(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None,
                          ) -> SamplingResult:  # fmt: skip
            asked.append(name)
            keep = name == "wf.start"
            return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP)

        def get_description(self) -> str:
            return "by name"

    sink = SpanSink()
    provider = TracerProvider(sampler=ParentBased(ByName()))
    provider.add_span_processor(SimpleSpanProcessor(sink))
    done = Collector(expected=1)
    with EventBus() as bus:
        instrumentation = instrument(bus, provider)
        bus.subscribe("wf.start", lambda e: bus.publish("wf.step", None))
        bus.subscribe("wf.step", done)
        bus.publish_correlated("wf.start", None, uuid.uuid4())
        assert done.done.wait(WAIT)
        bus.flush(WAIT)
    instrumentation.uninstrument()
    assert "wf.step" in asked
    assert [span.name for span in sink.spans] == ["wf.start"]


def test_a_handler_exception_is_recorded_on_its_span_and_the_bus_goes_on(
    traced: tuple[EventBus, Any],
) -> None:
    bus, sink = traced

    def boom(event: Event) -> None:
        raise RuntimeError("tool broke")

    bus.subscribe("tool.call", boom)
    bus.publish("tool.call", 1)
    [span] = sink.wait_for(1)
    assert span.status.status_code == trace.StatusCode.ERROR
    assert "RuntimeError: tool broke" in (span.status.description or "")
    [exc_event] = span.events
    assert exc_event.name == "exception"
    assert exc_event.attributes["exception.type"] == "RuntimeError"
    bus.flush(timeout=WAIT)
    assert bus.metrics().dead_letters == 1
    assert bus.publish("tool.call", 2).get(timeout=WAIT).sequence is not None


def test_an_async_handler_gets_a_span_current_while_it_awaits(
    traced: tuple[EventBus, Any],
) -> None:
    bus, sink = traced
    seen: list[int] = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(trace.get_current_span().get_span_context().span_id)

    bus.subscribe("a.*", handler)
    published = bus.publish("a.b", None, correlation_id=uuid.uuid4()).get(timeout=WAIT)
    [span] = sink.wait_for(1)
    assert seen == [span_id_of(published.id)] == [span.context.span_id]


@pytest.mark.parametrize("dedicated", [False, True], ids=["pool", "dedicated"])
def test_a_sync_handler_found_past_its_timeout_records_the_timeout_on_its_span(
    traced: tuple[EventBus, Any], dedicated: bool
) -> None:
    # It cannot be cut off: it is counted in ``timeouts`` while it runs, and
    # its span says so once it returns (its status was left UNSET).
    bus, sink = traced
    counted = threading.Event()

    def slow(event: Event) -> None:
        if event.data == "slow":
            counted.wait(WAIT)  # returns once the timer has counted it late

    sub = bus.subscribe("wf.*", slow, timeout=0.05, retries=0, dedicated_thread=dedicated)
    bus.publish("wf.a", "slow").get(timeout=WAIT)
    assert wait_for(lambda: sub.statistics().timeouts == 1)
    counted.set()
    [late] = sink.wait_for(1)
    bus.publish("wf.b", "fast").get(timeout=WAIT)
    bus.flush(timeout=WAIT)
    [_, fast] = sink.wait_for(2)
    assert late.status.status_code == trace.StatusCode.ERROR
    assert late.status.description == "TimeoutError: handler ran longer than its timeout of 0.05 s"
    assert fast.status.status_code == trace.StatusCode.UNSET  # nothing left over for the next call
    assert sub.statistics().timeouts == 1
    assert sub.statistics().delivered == 2  # its outcome counts as usual
    assert bus.dead_letters() == []


def test_an_async_handler_cut_off_at_its_timeout_records_the_timeout_on_its_span(
    traced: tuple[EventBus, Any],
) -> None:
    # It sees a CancelledError; the span says what happened, as the dead letter does.
    bus, sink = traced

    async def stuck(event: Event) -> None:
        await asyncio.Event().wait()  # never set

    bus.subscribe("wf.slow", stuck, timeout=0.05, retries=0)
    bus.publish("wf.slow", None).get(timeout=WAIT)
    [span] = sink.wait_for(1)
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "TimeoutError: handler ran longer than its timeout of 0.05 s"
    assert [e.attributes["exception.type"] for e in span.events] == ["TimeoutError"]
    bus.flush(timeout=WAIT)
    [letter] = bus.dead_letters()
    assert (letter.error_type, letter.error) == ("TimeoutError", span.status.description)


def test_uninstrument_stops_new_spans_in_every_subscription() -> None:
    provider, sink = tracer_provider()
    with EventBus() as bus:
        instrumentation = instrument(bus, provider)
        got = Collector()
        bus.subscribe("x", got)
        bus.publish("x", 1)
        bus.flush(timeout=WAIT)
        sink.wait_for(1)
        instrumentation.uninstrument()
        bus.publish("x", 2)
        bus.flush(timeout=WAIT)
        assert got.data == [1, 2]
        assert len(sink.spans) == 1
        assert bus.handler_wrappers == []


def test_instrument_refuses_what_is_not_a_bus() -> None:
    with pytest.raises(TypeError, match="EventBus"):
        instrument(object())  # type: ignore[arg-type]


def test_an_uninstrumented_provider_default_is_the_global_one() -> None:
    # Without an SDK provider set globally, spans are no-ops and nothing breaks.
    with EventBus() as bus:
        instrumentation = instrument(bus)
        got = Collector(1)
        bus.subscribe("x", got)
        bus.publish("x", 1)
        assert got.done.wait(WAIT)
        instrumentation.uninstrument()


@pytest.mark.slow
def test_a_three_step_workflow_across_two_processes_is_one_trace() -> None:
    """a publishes wf.start; b handles it and publishes wf.step; a handles that and
    publishes wf.done, which b handles.  Spans: b's wf.start -> a's wf.step -> b's wf.done."""
    child = subprocess.Popen(
        [sys.executable, CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None
    assert child.stdout is not None

    def ask(command: str | None, answer: str) -> str:
        assert child.stdin is not None
        assert child.stdout is not None
        if command is not None:
            child.stdin.write(command + "\n")
            child.stdin.flush()
        line = child.stdout.readline().strip()
        assert line.startswith(answer), f"expected {answer!r}, got {line!r}"
        return line

    try:
        endpoint = ask(None, "ready").split()[1]
        provider, sink = tracer_provider()
        node = NodeConfig(name="a", listen="tcp://127.0.0.1:*", peers=(endpoint,))
        with EventBus(node=node) as bus:
            instrument(bus, provider)

            def step(event: Event) -> None:
                bus.publish("wf.done", {"step": 3}, source="a", target="b")

            bus.subscribe("wf.step", step)
            assert bus.wait_for_peers(["b"], WAIT)
            ask("sync a", "synced")
            cid = uuid.uuid4()
            start = bus.publish_correlated("wf.start", {"step": 1}, cid, source="a")
            start_event = start.get(timeout=WAIT)
            [ours] = [span_dict(s) for s in sink.wait_for(1)]
            theirs = json.loads(ask("spans 2", "spans").split(" ", 1)[1])
            ask("close", "closed")
        by_name = {s["name"]: s for s in [ours, *theirs]}
        assert set(by_name) == {"wf.start", "wf.step", "wf.done"}
        assert {s["trace_id"] for s in by_name.values()} == {cid.int}
        assert by_name["wf.start"]["parent"] is None
        assert by_name["wf.start"]["span_id"] == span_id_of(start_event.id)
        assert by_name["wf.step"]["parent"] == by_name["wf.start"]["span_id"]
        assert by_name["wf.done"]["parent"] == by_name["wf.step"]["span_id"]
        assert by_name["wf.start"]["attributes"]["llmspell.event.origin"] == "a"
        assert by_name["wf.step"]["attributes"]["llmspell.event.origin"] == "b"
        assert by_name["wf.done"]["attributes"]["llmspell.event.origin"] == "a"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=WAIT)


def test_trace_to_otel_exports_a_journaled_workflow_with_its_timestamps(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    cid = uuid.uuid4()
    with PersistentEventBus(EventConfig(persistence_path=path)) as bus:
        done = threading.Event()
        bus.subscribe("wf.start", lambda e: bus.publish("wf.a", 1) and None)
        bus.subscribe("wf.a", lambda e: bus.publish("wf.b", 2) and None)
        bus.subscribe("wf.b", lambda e: done.set())
        bus.publish_correlated("wf.start", 0, cid).get(timeout=WAIT)
        bus.publish_correlated("wf.other", 0, cid).get(timeout=WAIT)
        # A flush covers what was published before it, not what handlers
        # publish later: wait for the end of the chain first.
        assert done.wait(WAIT)
        bus.flush(timeout=WAIT)
    # A later process: the trace comes from the journal alone.
    with PersistentEventBus(EventConfig(persistence_path=path)) as bus:
        found = bus.trace(cid)
    provider, sink = tracer_provider()
    assert found.to_otel(provider) == 4
    spans = {s.name: s for s in sink.wait_for(4)}
    events = {e.event_type: e for e in found.events}
    for name, span in spans.items():
        assert span.context.trace_id == cid.int
        assert span.context.span_id == span_id_of(events[name].id)
        assert span.start_time == int(events[name].timestamp.timestamp() * 1_000_000) * 1000
    assert spans["wf.start"].parent is None
    assert spans["wf.other"].parent is None
    assert spans["wf.a"].parent.span_id == spans["wf.start"].context.span_id
    assert spans["wf.b"].parent.span_id == spans["wf.a"].context.span_id
    # A parent lasts until its last descendant.
    assert spans["wf.start"].end_time == spans["wf.b"].start_time == spans["wf.b"].end_time
    assert spans["wf.start"].start_time <= spans["wf.a"].start_time <= spans["wf.b"].start_time


class _OtlpReceiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: decodes each protobuf export request."""

    received: list[Any]
    got: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.server.received.extend(scope.spans)  # type: ignore[attr-defined]
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        self.server.got.set()  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_spans_reach_an_otlp_http_receiver_through_the_real_exporter() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    server.received = []  # type: ignore[attr-defined]
    server.got = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        provider = TracerProvider()
        endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        cid = uuid.uuid4()
        with EventBus() as bus:
            instrumentation = instrument(bus, provider)
            bus.subscribe("wf.start", lambda e: bus.publish("wf.next", 1) and None)
            nexts = Collector(expected=1)
            bus.subscribe("wf.next", nexts)
            start = bus.publish_correlated("wf.start", 0, cid).get(timeout=WAIT)
            # flush() covers wf.start; wf.next is published by its handler
            # meanwhile: wait for it, then flush again so its turn (and span) ended.
            assert nexts.done.wait(WAIT)
            bus.flush(timeout=WAIT)
            instrumentation.uninstrument()
        assert provider.force_flush(int(WAIT * 1000))
        assert server.got.wait(WAIT)  # type: ignore[attr-defined]
        spans = {s.name: s for s in server.received}  # type: ignore[attr-defined]
        assert set(spans) == {"wf.start", "wf.next"}
        assert spans["wf.start"].trace_id == cid.bytes
        assert spans["wf.start"].span_id == span_id_of(start.id).to_bytes(8, "big")
        assert spans["wf.next"].parent_span_id == spans["wf.start"].span_id
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
