"""Handlers and constants the behaviour tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from actors import Event

WAIT = 10.0
"""Upper bound for every wait in a test: reaching it means the test failed."""


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Return True once ``condition()`` holds, False if it still does not after ``timeout``.

    For states that only a clock can bring about (the dispatcher's watchdog
    notices a blocked handler after ``blocking_threshold``): the condition is
    what the test waits for, re-checked every few milliseconds, never a
    guessed duration.
    """
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.005)
    return True


class Collector:
    """A handler that records events and can signal once it saw ``expected`` of them."""

    def __init__(self, expected: int | None = None) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.expected = expected
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if self.expected is not None and len(self.events) >= self.expected:
                self.done.set()

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e.event_type for e in self.events]


class Gate:
    """A handler that blocks inside each event until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.entered.set()
        if not self.release.wait(WAIT):
            raise AssertionError("the test never released the gate")
        self.events.append(event)

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]


class SpanSink:
    """An OpenTelemetry span exporter that keeps finished spans and wakes waiters.

    Used with ``SimpleSpanProcessor``, so a span is here once it has ended.
    """

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.cond = threading.Condition()

    def export(self, spans: Any) -> Any:
        with self.cond:
            self.spans.extend(spans)
            self.cond.notify_all()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Any]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.spans) >= count, timeout):
                raise AssertionError(f"{len(self.spans)} spans after {timeout}s, not {count}")
            return list(self.spans)


def tracer_provider() -> tuple[Any, SpanSink]:
    """Return an SDK tracer provider exporting every span to a new ``SpanSink``."""
    sink = SpanSink()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(sink))
    return provider, sink


def span_dict(span: Any) -> dict[str, Any]:
    """Return a finished SDK span as plain JSON-able data."""
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": span.context.trace_id,
        "span_id": span.context.span_id,
        "parent": parent.span_id if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "start": span.start_time,
        "end": span.end_time,
        "events": [e.name for e in span.events],
    }
