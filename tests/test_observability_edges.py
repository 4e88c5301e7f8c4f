"""Observability at its edges: counters across unsubscribe and close, both
Prometheus forms, the metrics endpoint under odd requests, spans of responders."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

from actors import Event, EventBus, EventConfig, RemoteHandlerError
from actors._metrics_http import MetricsServer
from actors._model.otelspans import span_id_of
from actors.otel import instrument
from tests._support import WAIT, Collector, Gate, tracer_provider, wait_for

COUNTERS = ("published", "delivered", "dropped", "handler_errors", "dead_letters")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def _status(reply: bytes) -> int:
    return int(reply.split(b"\r\n", 1)[0].split()[1])


# -- counters are counters ------------------------------------------------------------------


def test_counters_do_not_go_backwards_when_the_bus_closes() -> None:
    """``*_total`` counters must be monotonic; ``serve_metrics`` keeps serving after
    ``close`` ("closing the bus does not stop it"), so a scrape after close must not
    report a counter reset."""
    bus = EventBus(EventConfig(threads=2, handler_retries=0))

    def picky(event: Event) -> None:
        if event.data == "bad":
            raise ValueError("bad")

    bus.subscribe("c.*", picky)
    for data in (1, 2, "bad", 3):
        bus.publish("c.e", data)
    bus.flush(WAIT)
    bus.flush(WAIT)
    server = bus.serve_metrics(0)
    try:
        before = bus.metrics()
        scraped_before = _families(_get(server.url)[1])
        assert before.delivered == 3  # "bad" failed: an error, not a delivery
        assert before.handler_errors == 1
        bus.close(timeout=WAIT)
        after = bus.metrics()
        scraped_after = _families(_get(server.url)[1])
    finally:
        server.close()
    regressions = {
        name: (getattr(before, name), getattr(after, name))
        for name in COUNTERS
        if getattr(after, name) < getattr(before, name)
    }
    assert regressions == {}, f"counters went backwards across close(): {regressions}"
    for name in ("delivered", "handler_errors"):
        metric = f"llmspell_events_{name}"
        v0 = scraped_before[metric].samples[0].value
        v1 = scraped_after[metric].samples[0].value
        assert v1 >= v0, f"{metric}_total scraped {v0} before close, {v1} after"


def test_an_unsubscribed_subscriptions_late_delivery_and_discards_reach_the_bus_totals() -> None:
    """``unsubscribe`` while the handler runs: the running event is still handed to the
    handler and finishes (subscription ``delivered`` 1), the queued ones are discarded
    "and counted in ``dropped``" (docs/architecture.md).  The bus totals must include
    what the subscription counted, once it finished."""
    with EventBus(EventConfig(threads=2)) as bus:
        gate = Gate()
        sub = bus.subscribe("u.*", gate, dedicated_thread=True)
        bus.publish("u.e", 0).get(timeout=WAIT)
        assert gate.entered.wait(WAIT)
        for i in (1, 2, 3):
            bus.publish("u.e", i).get(timeout=WAIT)
        sub.unsubscribe()
        gate.release.set()

        # An unsubscribed subscription is no longer flushed: wait until it finished.
        def finished() -> bool:
            stats = sub.statistics()
            return stats.queued == 0 and stats.in_flight == 0

        assert wait_for(finished)
        final = sub.statistics()
        assert (final.delivered, final.dropped, final.queued, final.in_flight) == (1, 3, 0, 0)
        m = bus.metrics()
        assert (m.delivered, m.dropped) == (final.delivered, final.dropped), (
            f"bus delivered/dropped {(m.delivered, m.dropped)}, "
            f"the finished subscription counted {(final.delivered, final.dropped)}"
        )


# -- the two Prometheus forms -----------------------------------------------------------------


def test_both_forms_export_the_same_metric_names() -> None:
    """docs/observability.md: with prometheus-client, ``llmspell_events_latency_seconds``
    is a summary "(``llmspell_events_latency_max_seconds`` beside it); without it,
    ``bus.prometheus()``'s text renders the same figures" and "Both forms ... export
    the same figures".  A dashboard on ``latency_max_seconds`` must work with either."""
    with EventBus(EventConfig(threads=2)) as bus:
        bus.subscribe("é.*", Collector())
        bus.publish("é.x").get(timeout=WAIT)
        bus.flush(WAIT)
        names = {}
        for use_client in (True, False):
            with MetricsServer(bus, 0, use_client=use_client) as server:
                status, text = _get(server.url)
                assert status == 200
                names[use_client] = set(_families(text))
        assert names[True] - names[False] == set(), "only in the prometheus_client form"
        assert names[False] - names[True] == set(), "only in the text form"
        assert "llmspell_events_latency_max_seconds" in names[False]


@pytest.mark.parametrize("use_client", [True, False], ids=["prometheus_client", "text"])
def test_awkward_patterns_survive_a_strict_parse_in_both_forms(use_client: bool) -> None:
    # Every character a pattern may hold that means something in the exposition
    # format: quotes, backslashes (also before n and "), braces, commas, '=', '#', non-ASCII.
    patterns = ["é.*", 'a"b', "a\\b", 'x\\"y', "tab\\n", "a{b}", "#x", "a,b=c", "日本.**"]
    with EventBus(EventConfig(threads=2)) as bus:
        subs = {bus.subscribe(p, Collector()).id: p for p in patterns}
        bus.publish('a"b').get(timeout=WAIT)
        bus.flush(WAIT)
        with MetricsServer(bus, 0, use_client=use_client) as server:
            text = _get(server.url)[1]
        fams = _families(text)
        for stat in ("delivered", "queued", "capacity"):
            samples = fams[f"llmspell_events_subscription_{stat}"].samples
            assert {s.labels["id"]: s.labels["pattern"] for s in samples} == subs
        delivered = {
            s.labels["pattern"]: s.value
            for s in fams["llmspell_events_subscription_delivered"].samples
        }
        assert delivered['a"b'] == 1
        assert sum(delivered.values()) == 1
        # No family is declared twice.
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(types) == len(set(types))


# -- the endpoint -----------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[EventBus, MetricsServer]]:
    bus = EventBus()
    server = bus.serve_metrics(0)
    yield bus, server
    server.close()
    bus.close(timeout=WAIT)


def test_head_is_a_get_without_its_body_and_other_methods_are_refused(
    served: tuple[EventBus, MetricsServer],
) -> None:
    """docs/observability.md: HEAD answers as GET without the body (RFC 9110 says every
    general-purpose server supports it); another method is a 405 naming GET and HEAD."""
    _, server = served
    got = {}
    for method in ("HEAD", "POST", "PUT"):
        reply = _raw(
            server.port,
            f"{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Content-Length: 0\r\n\r\n".encode(),
        )
        got[method] = _status(reply)
        if method == "HEAD":
            assert reply.split(b"\r\n\r\n", 1)[1] == b""
        else:
            assert b"Allow: GET, HEAD" in reply
    assert got == {"HEAD": 200, "POST": 405, "PUT": 405}


def test_a_stalled_client_and_oversized_requests_leave_scrapes_answered(
    served: tuple[EventBus, MetricsServer],
) -> None:
    _, server = served
    # A client that sends half a request line and never finishes it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as stalled:
        stalled.sendall(b"GET /metr")
        big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        assert _status(_raw(server.port, big)) == 431
        many = b"".join(b"X-%d: a\r\n" % i for i in range(150))
        assert _status(_raw(server.port, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n")) == 431
        assert _raw(server.port, b"\x16\x03\x01 not http\r\n\r\n")  # an error page, no crash
        results: list[int] = []
        lock = threading.Lock()

        def scrape() -> None:
            status, text = _get(server.url)
            _families(text)
            with lock:
                results.append(status)

        threads = [threading.Thread(target=scrape) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert results == [200] * 16
        assert _get(server.url.replace("/metrics", "/healthz")) == (200, "ok\n")


# -- spans ------------------------------------------------------------------------------------


def test_a_request_made_in_a_handler_is_its_child_span_and_a_retry_is_a_span_each() -> None:
    provider, sink = tracer_provider()
    with EventBus(EventConfig(threads=2), name="a") as bus:
        instrumentation = instrument(bus, provider)
        bus.respond("tool.invoke", lambda req: {"ok": True}, source="tools")
        replies: list[Event] = []
        bus.subscribe("wf.start", lambda e: replies.append(bus.request("tool.invoke", 1)))
        attempts = 0

        def flaky(event: Event) -> None:
            nonlocal attempts
            attempts += 1
            raise RuntimeError(f"attempt {attempts}")

        bus.subscribe("wf.flaky", flaky, retries=2, retry_backoff=0.001)
        cid = uuid.uuid4()
        start = bus.publish_correlated("wf.start", None, cid).get(timeout=WAIT)
        bus.publish("wf.flaky", None)
        spans = sink.wait_for(5)
        bus.flush(WAIT)
        instrumentation.uninstrument()
    by_name: dict[str, list[Any]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    [tool] = by_name["tool.invoke"]
    assert tool.parent.span_id == span_id_of(start.id)
    assert tool.context.trace_id == cid.int
    assert [r.data for r in replies] == [{"ok": True}]
    assert "tool.invoke.reply" not in by_name  # the reply is taken by the table, not a handler
    flaky_spans = by_name["wf.flaky"]
    assert len(flaky_spans) == 3
    assert {s.status.status_code for s in flaky_spans} == {trace.StatusCode.ERROR}


def test_a_responder_that_raises_has_an_error_span() -> None:
    """docs/observability.md, Errors: "A handler's exception is recorded on its span (an
    ``exception`` event, status ERROR with the type and message)".  A responder's ``fn``
    is the handler of its subscription (docs/requests.md); when it raises, the caller
    gets ``RemoteHandlerError``, but the span says nothing went wrong."""
    provider, sink = tracer_provider()
    with EventBus(EventConfig(threads=2)) as bus:
        instrumentation = instrument(bus, provider)

        def tool(request: Event) -> Any:
            raise KeyError("no such tool")

        bus.respond("tool.invoke", tool)
        with pytest.raises(RemoteHandlerError):
            bus.request("tool.invoke", 1, timeout=WAIT)
        [span] = sink.wait_for(1)
        instrumentation.uninstrument()
    assert span.status.status_code == trace.StatusCode.ERROR, span.status
    assert "KeyError" in (span.status.description or "")
    assert [e.name for e in span.events] == ["exception"]
