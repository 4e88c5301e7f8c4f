"""OpenTelemetry spans for handled events (the ``[otel]`` extra).

::

    from actors.otel import instrument
    instrumentation = instrument(bus)        # or instrument(bus, tracer_provider)
    ...
    instrumentation.uninstrument()

Every event a handler runs for becomes a CONSUMER span named after its type,
current while the handler runs (so spans the handler makes are its
children).  Its trace id is the event's correlation id, so one workflow is one
trace across every node; its parent is the span of the event that caused it,
found by id: span ids derive from event ids (``actors._model.otelspans``), so
a parent made on another node links up with nothing carried in the event.  A
handler's exception is recorded on its span (status ERROR) and re-raised to
the bus, which retries it or makes it a dead letter as usual.  A failure of
the tracing itself (a processor that raises) never changes the outcome.

Subscriptions made after ``instrument`` are instrumented; those made before
are not.  ``uninstrument`` stops new spans at once, in every subscription.
Deterministic ids need the SDK's tracer (``opentelemetry-sdk``); with another
tracer, spans get that tracer's ids and link only within a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

from actors._model.otelspans import OTEL_MISSING

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError as exc:  # the [otel] extra
    raise ImportError(OTEL_MISSING) from exc

from actors._async import AsyncEventBus
from actors._bus import EventBus
from actors._core.handling import current_timeout
from actors._core.policies import handler_timeout_error, settle_current_call
from actors._core.requests import answer_errors
from actors._model.event import Event
from actors._model.otelspans import (
    PinnedIds,
    event_attributes,
    pinned_tracer,
    start_event_span,
    waits_for_a_provider,
)

__all__ = ["Instrumentation", "instrument"]

logger = logging.getLogger("actors.otel")


class Instrumentation:
    """A bus's OpenTelemetry instrumentation; ``uninstrument()`` ends it.

    Held by the application; the bus holds only its handler wrapper.
    """

    def __init__(
        self, bus: EventBus, tracer: Any, pinner: PinnedIds | None, *, late: bool = False
    ) -> None:
        self.bus = bus
        self.tracer = tracer
        self._pinner = pinner
        # The global provider was OpenTelemetry's stand-in: the SDK's tracer is
        # taken once the application has set its provider (``_start``).
        self._late = late
        self._warned = False  # a failure of the tracing itself was logged at WARNING
        self.active = True
        bus.handler_wrappers.append(self.wrap)

    def uninstrument(self) -> None:
        """Stop making spans (handlers already wrapped run unwrapped from now on).  Idempotent."""
        self.active = False
        if self.wrap in self.bus.handler_wrappers:
            self.bus.handler_wrappers.remove(self.wrap)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstrument()

    def wrap(
        self, handler: Callable[[Event], Any], subscription: str, pattern: str
    ) -> Callable[[Event], Any]:
        """Return ``handler`` wrapped so each call is a span (an ``async def`` stays one).

        Tracing never changes what the handler does: a span that cannot be
        started, recorded or ended (a failing processor or exporter, an
        exception whose ``str()`` raises) is logged and given up, and the
        handler's own result or exception reaches the bus unchanged.
        """
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        ):

            async def traced_async(event: Event) -> Any:
                span = self._start(event, subscription, pattern) if self.active else None
                if span is None:
                    return await handler(event)
                with self._around(span):
                    return await handler(event)

            return functools.update_wrapper(traced_async, handler)

        def traced(event: Event) -> Any:
            span = self._start(event, subscription, pattern) if self.active else None
            if span is None:
                return handler(event)
            with self._around(span, watched=True):
                return handler(event)

        try:
            return functools.update_wrapper(traced, handler)
        except AttributeError:  # e.g. a callable without __dict__
            return traced

    @contextlib.contextmanager
    def _around(self, span: Any, *, watched: bool = False) -> Iterator[None]:
        """Run the handler call in the block with ``span`` current; then record and end it.

        An error reply a responder answered with (``answer_errors``) is
        recorded like an exception; the block's own exception goes on as it is.
        A synchronous call (``watched``) that returned after its subscription's
        ``timeout`` was noticed (counted in ``timeouts``) records the timeout.
        """
        answered: list[BaseException] = []
        token = answer_errors.set(answered)
        error: BaseException | None = None
        try:
            with _current(span):
                yield
            late = settle_current_call() if watched else None
            if late is not None:
                error = handler_timeout_error(late)
        except BaseException as exc:
            error = _as_recorded(exc)
            raise
        finally:
            answer_errors.reset(token)
            self._end(span, error, answered)

    def _start(self, event: Event, subscription: str, pattern: str) -> Any:
        """Start ``event``'s span; None (the handler runs untraced) if tracing fails."""
        try:
            if self._late and not waits_for_a_provider(None, None):
                self.tracer, self._pinner = pinned_tracer(None)
                self._late = False
            attrs = event_attributes(event, subscription=subscription, pattern=pattern)
            return start_event_span(self.tracer, self._pinner, event, attrs)
        except Exception:
            self._tracing_failed("start a span")
            return None

    def _end(self, span: Any, error: BaseException | None, answered: list[BaseException]) -> None:
        """Record the handler's error (or its error reply) on ``span`` and end it; never raise."""
        try:
            if error is None and answered:  # a responder answered with an error reply
                error = answered[-1]
            if error is not None:
                _record(span, error)
        except Exception:
            self._tracing_failed("record an error")
        try:
            span.end()
        except Exception:
            self._tracing_failed("end a span")

    def _tracing_failed(self, what: str) -> None:
        """Log a failure of the tracing itself: once at WARNING, then at DEBUG."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        logger.log(
            level, "OpenTelemetry: could not %s; the handler is unaffected", what, exc_info=True
        )


def _current(span: Any) -> Any:
    """Make ``span`` current while the handler runs; its end and status are ``_end``'s."""
    return trace.use_span(span, record_exception=False, set_status_on_exception=False)


def _as_recorded(exc: BaseException) -> BaseException:
    """The error a span records for ``exc``: the timeout, for a cancellation at one.

    An ``async def`` handler cut off at its ``timeout`` sees the cancellation
    (``CancelledError``); the dead letter records a ``TimeoutError``, and so
    does its span.
    """
    if isinstance(exc, asyncio.CancelledError):
        scoped = current_timeout.get()
        if scoped is not None and scoped[0].expired():
            return handler_timeout_error(scoped[1])
    return exc


def _record(span: Any, exc: BaseException) -> None:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose str() raises
        text = f"{type(exc).__name__} (unprintable)"
    span.set_status(Status(StatusCode.ERROR, text))
    span.record_exception(exc)


def instrument(bus: EventBus | AsyncEventBus, tracer_provider: Any = None) -> Instrumentation:
    """Make a span of every event handled by ``bus``'s subscriptions made from now on.

    ``tracer_provider`` defaults to OpenTelemetry's global provider, which
    may be set after this call (spans follow it from then on).  Raises
    ``TypeError`` when ``bus`` is not an ``EventBus`` or ``AsyncEventBus``.
    """
    if isinstance(bus, AsyncEventBus):
        bus = bus.sync
    if not isinstance(bus, EventBus):
        raise TypeError(f"bus must be an EventBus or AsyncEventBus, not {bus!r}")
    tracer, pinner = pinned_tracer(tracer_provider)
    late = waits_for_a_provider(tracer_provider, pinner)
    return Instrumentation(bus, tracer, pinner, late=late)
