"""OpenTelemetry identities of events: trace and span ids derived, never propagated.

A workflow's trace id is its correlation id (128 bits, as OpenTelemetry's);
an event's span id is the first 8 bytes of a BLAKE2b hash of its id.  So the
span of an event's cause has a known id on every node, and a span made on
one node links to its parent made on another with nothing carried in the
event.  ``actors.otel`` (live spans) and ``Trace.to_otel`` (a finished trace)
both use these, so the two give the same ids for the same events.

``opentelemetry`` is imported only inside the functions that need it (the
``[otel]`` extra): the ids and attributes are plain integers and strings.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from actors._model.event import Event

__all__ = [
    "MESSAGING_SYSTEM",
    "OTEL_MISSING",
    "PinnedIds",
    "event_attributes",
    "export_spans",
    "otel_trace",
    "parent_span_id",
    "pinned_tracer",
    "span_id_of",
    "start_event_span",
    "trace_id_of",
    "waits_for_a_provider",
]

#: The value of ``messaging.system`` on every span.
MESSAGING_SYSTEM = "llmspell-events"
_SCOPE = "actors.otel"


def span_id_of(event_id: uuid.UUID) -> int:
    """Return the 64-bit span id of the event ``event_id`` (never 0, which is invalid)."""
    value = int.from_bytes(hashlib.blake2b(event_id.bytes, digest_size=8).digest(), "big")
    return value or 1


def trace_id_of(event: Event) -> int:
    """Return the trace id of ``event``: its correlation id, else one derived from its id.

    An uncorrelated event is a trace of its own.
    """
    if event.correlation_id is not None and event.correlation_id.int:
        return event.correlation_id.int
    digest = hashlib.blake2b(event.id.bytes, digest_size=16, person=b"llmspell-trace").digest()
    return int.from_bytes(digest, "big") or 1


def parent_span_id(event: Event) -> int | None:
    """Return the span id of the event that caused ``event``, or None for a root.

    Only within a correlation: an uncorrelated event's trace is its own.
    """
    if event.causation_id is None or event.correlation_id is None:
        return None
    return span_id_of(event.causation_id)


def event_attributes(
    event: Event, *, subscription: str | None = None, pattern: str | None = None
) -> dict[str, str | int]:
    """Return the span attributes of ``event`` (OpenTelemetry messaging conventions)."""
    attrs: dict[str, str | int] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": event.event_type,
        "messaging.message.id": str(event.id),
    }
    if event.correlation_id is not None:
        attrs["messaging.message.conversation_id"] = str(event.correlation_id)
    if event.causation_id is not None:
        attrs["llmspell.event.causation_id"] = str(event.causation_id)
    if event.sequence is not None:
        attrs["llmspell.event.sequence"] = event.sequence
    if event.source is not None:
        attrs["llmspell.event.source"] = event.source
    if event.target is not None:
        attrs["llmspell.event.target"] = event.target
    if event.origin is not None:
        attrs["llmspell.event.origin"] = event.origin
    if subscription is not None:
        attrs["llmspell.subscription.id"] = subscription
    if pattern is not None:
        attrs["messaging.destination.subscription.name"] = pattern
    return attrs


class PinnedIds:
    """An id generator (duck-typed ``IdGenerator``) that returns pinned ids when set.

    Installed on a tracer's public ``id_generator`` attribute (the SDK's
    ``Tracer`` has one); pins are per thread, so concurrent handlers on the
    dispatcher threads never see each other's.  Without a pin it asks the
    generator it replaced.
    """

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self._pins = threading.local()

    @contextmanager
    def pinned(self, trace_id: int, span_id: int) -> Iterator[None]:
        """Make the next ids generated in this thread ``trace_id`` and ``span_id``."""
        self._pins.ids = (trace_id, span_id)
        try:
            yield
        finally:
            self._pins.ids = None

    def generate_span_id(self) -> int:
        ids = getattr(self._pins, "ids", None)
        return int(ids[1]) if ids else int(self.fallback.generate_span_id())

    def generate_trace_id(self) -> int:
        ids = getattr(self._pins, "ids", None)
        return int(ids[0]) if ids else int(self.fallback.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        if getattr(self._pins, "ids", None):
            return False
        return bool(self.fallback.is_trace_id_random())


OTEL_MISSING = (
    "OpenTelemetry is not installed: pip install 'llmspell-events[otel]' "
    "(opentelemetry-api and opentelemetry-sdk)"
)


def otel_trace() -> Any:
    """Return ``opentelemetry.trace``; an ``ImportError`` naming the extra if it is missing."""
    try:
        from opentelemetry import trace  # noqa: PLC0415 - the [otel] extra
    except ImportError as exc:
        raise ImportError(OTEL_MISSING) from exc
    return trace


def waits_for_a_provider(tracer_provider: Any, pinner: PinnedIds | None) -> bool:
    """Whether the global provider was still OpenTelemetry's stand-in when asked.

    Its tracer is a proxy: once the application sets the SDK's provider, the
    proxy's spans come from it, but not with the derived ids, which only the
    SDK's own tracer takes (``pinned_tracer`` asked again then).
    """
    if tracer_provider is not None or pinner is not None:
        return False
    trace = otel_trace()
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def pinned_tracer(tracer_provider: Any = None) -> tuple[Any, PinnedIds | None]:
    """Return a tracer of ``tracer_provider`` (default: the global one) and its pinner.

    The pinner is None when the tracer has no ``id_generator`` (not the SDK's):
    its spans then get the ids it chooses, and parent links hold only within
    a process.
    """
    trace = otel_trace()

    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    tracer: Any = provider.get_tracer(_SCOPE)
    current = getattr(tracer, "id_generator", None)
    if current is None:
        return tracer, None
    if not isinstance(current, PinnedIds):
        current = PinnedIds(current)
        tracer.id_generator = current
    return tracer, current


def root_sampled(tracer: Any, trace_id: int, name: str) -> bool:
    """Whether the tracer's sampler samples the root of trace ``trace_id``.

    The parent of an event's span is known by its ids alone (it may have
    ended in another process), not by the decision taken for it; the flag
    given to it is the one the sampler takes for a root of the same trace,
    so ``ParentBased`` children follow their root: with a sampler that
    decides by the trace id (``ALWAYS_ON``, ``ALWAYS_OFF``,
    ``TraceIdRatioBased``), every span of a workflow is kept or none is, in
    every process.  A tracer without a sampler (not the SDK's) samples all.
    """
    sampler = getattr(tracer, "sampler", None)
    if sampler is None:
        return True
    try:  # a sampler of its own may want what a root would bring (attributes, links)
        result = sampler.should_sample(
            parent_context=None, trace_id=trace_id, name=name, attributes={}
        )
        return bool(result.decision.is_sampled())
    except Exception:
        return True  # as before the probe: the child is sampled


def start_event_span(
    tracer: Any,
    pinner: PinnedIds | None,
    event: Event,
    attributes: dict[str, str | int],
    start_time: int | None = None,
    *,
    root: bool = False,
) -> Any:
    """Start the CONSUMER span of ``event`` with its derived ids; return it (not current).

    ``root``: a span without a parent whatever the event's cause (the event
    that closes a causation cycle, which ``Trace`` treats as a root).
    """
    trace = otel_trace()

    trace_id, span_id = trace_id_of(event), span_id_of(event.id)
    parent = None if root else parent_span_id(event)
    context = None
    if parent is not None:
        flags = trace.TraceFlags(
            trace.TraceFlags.SAMPLED
            if root_sampled(tracer, trace_id, event.event_type)
            else trace.TraceFlags.DEFAULT
        )
        remote = trace.SpanContext(trace_id, parent, is_remote=True, trace_flags=flags)
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    else:
        # An empty context: a root, whatever span is current in this thread.
        from opentelemetry.context import Context  # noqa: PLC0415

        context = Context()
    pinned = nullcontext() if pinner is None else pinner.pinned(trace_id, span_id)
    with pinned:
        return tracer.start_span(
            event.event_type,
            context=context,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            start_time=start_time,
        )


def export_spans(
    items: Sequence[tuple[Event, datetime.datetime]],
    tracer_provider: Any = None,
    roots: Collection[uuid.UUID] = (),
) -> int:
    """Emit one finished span per ``(event, end time)``, starting at the event's timestamp.

    The events whose ids are in ``roots`` get no parent (see ``start_event_span``).
    Returns the number of spans emitted.  Used by ``Trace.to_otel``.
    """
    tracer, pinner = pinned_tracer(tracer_provider)
    for event, end in items:
        span = start_event_span(
            tracer,
            pinner,
            event,
            event_attributes(event),
            start_time=_ns(event.timestamp),
            root=event.id in roots,
        )
        span.end(end_time=_ns(end))
    return len(items)


def _ns(moment: datetime.datetime) -> int:
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta // datetime.timedelta(microseconds=1)) * 1000
