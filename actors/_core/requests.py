"""Requests and replies over the bus: the pending-reply table and the responder.

A request is an ordinary event; its answer is another one, of type
``<request type>.reply`` (or ``.error`` when the responder raised), with
``causation_id`` = the request's id, the request's ``correlation_id`` and
``target`` = the request's ``source``.  So replies are journaled, traced
(parent -> child) and cross nodes like any event.

Who holds what (the facade wires it; nothing here starts a thread):

- ``PendingTable`` maps request ids to the ``Pending`` entries of callers
  still waiting.  Written by requesting threads (open, close) and by whoever
  delivers a reply (offer); one lock guards it.  Bounded by ``limit``;
  an entry leaves when its last reply arrived or its caller gave up.
- ``Requester`` owns the table and one long-lived reply subscription per
  request type (pattern ``<type>.{reply,error}``, filtered in the router to
  the ids in the table), made through the ``ReplyPort`` it is given.
- ``Responder`` turns a handler's return value (or exception) into the reply
  event and publishes it through a ``publish`` callable.  When the reply's
  request is waiting on the same bus, the responder hands the published reply
  to the table as soon as the router has sequenced it, skipping the
  subscription's hop.

The caller waits on a ``ReplyFuture``: a ``BusFuture`` whose waiter is one
plain lock made with it, so neither the wait nor the wake-up builds a
``threading.Event`` (a condition, its lock and a waiter lock each time).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from actors._codec.events import NotTextError, encode_shared
from actors._core.handling import current_timeout
from actors._core.pending import DEFAULT_LIMIT, Pending, PendingTable, ReplyFuture
from actors._core.policies import handler_timeout_error
from actors._errors import (
    BusClosedError,
    EventTooLargeError,
    FutureTimeoutError,
    InvalidEventError,
    RemoteHandlerError,
    RequestTimeoutError,
)
from actors._model.event import Event, JsonValue
from actors._model.topics import MAX_EVENT_TYPE_LENGTH, validate_event_type
from actors._runtime.future import BusFuture

__all__ = [
    "ERROR",
    "REPLY",
    "Pending",
    "PendingTable",
    "ReplyFuture",
    "ReplyPort",
    "Requester",
    "Responder",
    "check_request_type",
    "error_event",
    "is_reply",
    "reply_event",
    "reply_pattern",
    "reply_result",
    "timeout_error",
]

logger = logging.getLogger("actors.requests")

answer_errors: contextvars.ContextVar[list[BaseException] | None] = contextvars.ContextVar(
    "actors_answer_errors", default=None
)
"""Where a responder notes what its function raised (it answers instead of raising).

A handler wrapper (``actors.otel``) sets a list here around the call and finds
the exception in it, so the call's span records it.
"""


def _note_error(exc: BaseException) -> None:
    seen = answer_errors.get()
    if seen is not None:
        seen.append(exc)


REPLY = "reply"
ERROR = "error"
_SUFFIXES = (f".{REPLY}", f".{ERROR}")
# The longest request type whose ``.reply``/``.error`` is still a valid type.
MAX_REQUEST_TYPE_LENGTH = MAX_EVENT_TYPE_LENGTH - len(f".{ERROR}")
MAX_ERROR_MESSAGE = 4_096
"""The longest exception message an error reply carries, in characters (the rest is cut)."""


def reply_pattern(request_type: str) -> str:
    """Return the pattern of the replies (and errors) to ``request_type``."""
    return f"{request_type}.{{{REPLY},{ERROR}}}"


def is_reply(event: Event) -> bool:
    """Return whether ``event`` is a reply or an error reply (responders never answer those)."""
    return event.causation_id is not None and event.event_type.endswith(_SUFFIXES)


def check_request_type(event_type: object) -> str:
    """Return ``event_type`` if a reply to it can be typed (else raise a ``ValueError``)."""
    text = validate_event_type(event_type)
    if text.endswith(_SUFFIXES):
        # Inside a handler it would inherit a causation id and look like a
        # reply, which no responder answers.
        raise ValueError(
            f"event_type: a request type cannot end in '.{REPLY}' or '.{ERROR}' "
            f"(those are replies): {text!r}"
        )
    if len(text) > MAX_REQUEST_TYPE_LENGTH:
        raise ValueError(
            f"event_type: a request type has at most {MAX_REQUEST_TYPE_LENGTH} characters "
            f"(its '.{ERROR}' reply must fit in {MAX_EVENT_TYPE_LENGTH})"
        )
    return text


def reply_event(request: Event, data: Any, *, source: str | None = None) -> Event:
    """Return the reply to ``request`` carrying ``data`` (``InvalidEventError`` if not JSON)."""
    return Event(
        event_type=f"{request.event_type}.{REPLY}",
        data=data,
        causation_id=request.id,
        correlation_id=request.correlation_id,
        target=request.source,
        source=source,
    )


def _encodable(text: str) -> str:
    """Return ``text`` with what UTF-8 cannot carry (a lone surrogate) as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_message(exc: BaseException) -> str:
    """Return ``exc``'s message, cut to ``MAX_ERROR_MESSAGE`` characters; never raises.

    A lone surrogate (a file name decoded with ``surrogateescape``, say) is
    escaped: the error reply must be encodable, or it would reach no
    journal and no other node, and its caller would wait out its timeout.
    """
    try:
        text = str(exc)
    except BaseException:  # its __str__ raised (even SystemExit): the answer must still go
        return f"(a {error_type(exc)} whose message could not be built)"
    if len(text) > MAX_ERROR_MESSAGE:
        text = f"{text[:MAX_ERROR_MESSAGE]}... ({len(text) - MAX_ERROR_MESSAGE} characters cut)"
    return _encodable(text)


def error_type(exc: BaseException) -> str:
    """Return the name of ``exc``'s type, encodable (see ``error_message``)."""
    return _encodable(type(exc).__name__)


def error_data(exc: BaseException) -> dict[str, JsonValue]:
    """Return the ``data`` of an error reply for ``exc``."""
    return {"error_type": error_type(exc), "error": error_message(exc)}


def error_event(request: Event, exc: BaseException, *, source: str | None = None) -> Event:
    """Return the error reply to ``request``: the exception's type name and message."""
    return Event(
        event_type=f"{request.event_type}.{ERROR}",
        data=error_data(exc),
        causation_id=request.id,
        correlation_id=request.correlation_id,
        target=request.source,
        source=source,
    )


def reply_result(reply: Event) -> Event:
    """Return ``reply``, or raise ``RemoteHandlerError`` if it is an error reply."""
    if reply.event_type.endswith(f".{ERROR}"):
        data = reply.data if isinstance(reply.data, dict) else {}
        raise RemoteHandlerError(
            str(data.get("error_type", "Exception")), str(data.get("error", "")), reply
        )
    return reply


# -- the requesting side ---------------------------------------------------------------------


# ``subscribe_replies(pattern, handler, wanted)``: subscribe ``handler`` to
# ``pattern``, filtered in the router by ``wanted``; returns the subscription.
ReplyPort = Callable[[str, Callable[[Event], Any], Callable[[Event], bool]], object]


class Requester:
    """The requesting side of one bus: the table plus one reply route per request type."""

    def __init__(self, subscribe_replies: ReplyPort, limit: int = DEFAULT_LIMIT) -> None:
        self.table = PendingTable(limit)
        self._subscribe = subscribe_replies
        self._routes: dict[str, object] = {}
        self._synced: set[str] = set()
        self._lock = threading.Lock()

    def route(self, request_type: str) -> bool:
        """Make sure replies to ``request_type`` reach the table.

        Return True until ``synced(request_type)`` was called: until then a
        caller on a node waits for the peers to acknowledge the route.
        """
        if request_type in self._synced:
            return False
        if request_type not in self._routes:
            with self._lock:
                if request_type not in self._routes:
                    self._routes[request_type] = self._subscribe(
                        reply_pattern(request_type), self.table.offer, self.table.wanted
                    )
        return True

    def is_synced(self, request_type: str) -> bool:
        """Return whether replies to ``request_type`` have a route the peers acknowledged."""
        return request_type in self._synced

    def synced(self, request_type: str) -> None:
        """Record that the peers acknowledged the reply route of ``request_type``."""
        self._synced.add(request_type)

    @property
    def routes(self) -> int:
        """Return how many reply routes exist (one per request type asked so far)."""
        return len(self._routes)

    def route_ids(self) -> frozenset[str]:
        """Return the subscription ids of the reply routes."""
        with self._lock:
            return frozenset(getattr(sub, "id", "") for sub in self._routes.values())

    def send(
        self,
        request: Event,
        publish: Callable[[Event], BusFuture[Event]],
        max_replies: int | None = 1,
        *,
        gathers: bool = False,
        timeout: float | None = None,
        inside: bool = False,
    ) -> Pending:
        """Open an entry for ``request``, then publish it; return the entry.

        A publish that fails at once closes the entry and raises; one whose
        future fails later (``REJECT`` backpressure, a journal error) fails
        the entry's future with that error.
        """
        pending = self.table.open(
            request.id,
            max_replies,
            gathers=gathers,
            timeout=timeout,
            inside=inside,
            answers=(f"{request.event_type}.{REPLY}", f"{request.event_type}.{ERROR}"),
        )
        try:
            future = publish(request)
        except BaseException:
            self.table.close(pending)
            raise

        def published(done: BusFuture[Event]) -> None:
            exc = done.exception()
            if exc is not None and self.table.close(pending) is not None:
                pending.future.set_exception(exc)

        future.add_done_callback(published)
        return pending

    def wait(self, pending: Pending, timeout: float | None) -> list[Event]:
        """Block until ``pending`` is complete or ``timeout`` passed; return its replies.

        Leaves the table without the entry, whatever happens.
        """
        try:
            replies: list[Event] = pending.future.get(timeout=timeout)
        except FutureTimeoutError:
            late = self.table.close(pending)
            if late is None:
                # Taken from the table just as the time ran out: whoever took
                # it (a reply, a failure, the close) completes the future now.
                return pending.future.get()
            return late
        finally:
            self.table.close(pending)
        return replies


def timeout_error(request: Event, timeout: float | None) -> RequestTimeoutError:
    """Return the error for a request that got no reply within ``timeout``."""
    return RequestTimeoutError(
        f"no reply to {request.event_type!r} (request {request.id}) within {timeout} s"
    )


# -- the responding side ---------------------------------------------------------------------


class Responder:
    """Wrap a responder function into a subscription handler.

    ``publish`` publishes the reply and returns its future.  A reply to a
    request waiting in ``table`` (the same bus) is handed to it directly once
    published.  Replies (events ending in ``.reply``/``.error`` with a
    causation id) are never answered, so a broad pattern cannot answer its
    own replies forever.
    """

    def __init__(
        self,
        fn: Callable[[Event], Any],
        publish: Callable[[Event], BusFuture[Event]],
        table: PendingTable | None = None,
        *,
        source: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {fn!r}")
        if source is not None:
            Event(event_type="respond.source", source=source)  # every reply must carry it
        self.fn = fn
        self._publish = publish
        self._table = table
        self._source = source

    @property
    def handler(self) -> Callable[[Event], Any]:
        """Return the subscription handler: ``answer_async`` for an ``async def`` fn, else self."""
        fn = self.fn
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
        ):
            return self.answer_async
        return self

    def __call__(self, request: Event) -> None:
        """Answer ``request`` (the synchronous handler)."""
        if is_reply(request):
            return
        try:
            result = self.fn(request)
        except BaseException as exc:  # whatever it raises is its answer (as for handlers)
            self._fail(request, exc)
        else:
            self._answer(request, result)

    async def answer_async(self, request: Event) -> None:
        """Answer ``request`` with an ``async def`` function (the asynchronous handler)."""
        if is_reply(request):
            return
        watched = current_timeout.get()
        if watched is not None:
            await self._answer_within(request, *watched)
            return
        try:
            result = await self.fn(request)
        except asyncio.CancelledError as exc:
            watched = current_timeout.get()
            if watched is not None and watched[0].expired():
                # Cancelled at the subscription's timeout: the requester learns
                # it now; the subscription counts the timeout (no retry, no
                # dead letter).
                self._fail(request, handler_timeout_error(watched[1]))
                return
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the batch itself is cancelled (its loop is closing)
            # Something fn awaited was cancelled under it: that is its answer.
            self._fail(request, exc)
        except BaseException as exc:  # whatever it raises is its answer (as for handlers)
            self._fail(request, exc)
        else:
            self._answer(request, result)

    async def _answer_within(self, request: Event, scope: asyncio.Timeout, seconds: float) -> None:
        """Answer ``request`` under the subscription's timeout, at its deadline at the latest.

        ``fn`` runs as a task of its own, so a responder that catches its
        cancellation and goes on does not hold the reply back: at the
        deadline the requester gets the ``TimeoutError`` reply, ``fn`` is
        cancelled and whatever it returns later is dropped.  What ``fn`` raises
        is its outcome, a ``KeyboardInterrupt`` or ``SystemExit`` included,
        which a task would otherwise raise out of the loop (``_outcome``).
        """
        call = asyncio.ensure_future(_outcome(self.fn(request)))
        try:
            result = _result(await asyncio.shield(call))
        except asyncio.CancelledError:
            if call.done():  # it ended as the cancellation came: its own outcome answers
                self._answer_done(request, call)
                return
            call.cancel()
            call.add_done_callback(_drop_late)
            if scope.expired():
                # Cancelled at the subscription's timeout: the requester learns
                # it now; the subscription counts the timeout (no retry, no
                # dead letter).
                self._fail(request, handler_timeout_error(seconds))
                return
            raise  # the batch itself is cancelled (its loop is closing)
        except BaseException as exc:  # whatever it raises is its answer (as for handlers)
            self._fail(request, exc)
        else:
            self._answer(request, result)

    def _answer_done(self, request: Event, call: asyncio.Future[Any]) -> None:
        """Answer ``request`` with the outcome of ``call`` (done)."""
        try:
            result = _result(call.result())
        except BaseException as exc:  # raised, or cancelled under it: that is its answer
            self._fail(request, exc)
        else:
            self._answer(request, result)

    def _answer(self, request: Event, result: Any) -> None:
        try:
            reply = reply_event(request, result, source=self._source)
            # Encoded now (kept on it for the journal and the bridge): a reply
            # no node could carry (a surrogate in its text) is an error reply,
            # never one left out on its way to a caller elsewhere.
            encode_shared(reply)
        except NotTextError as exc:  # told by its public class: the remote knows no other
            self._fail(request, InvalidEventError(str(exc)))
        except BaseException as exc:  # not JSON (InvalidEventError), or its check broke
            self._fail(request, exc)
        else:
            self._send(request, reply)

    def _fail(self, request: Event, exc: BaseException) -> None:
        """Answer ``request`` with an error reply; the call's span (``actors.otel``) records it."""
        _note_error(exc)
        self._send(request, error_event(request, exc, source=self._source))

    def _send(self, request: Event, reply: Event) -> None:
        """Publish ``reply``; one the bus cannot carry (too large) is answered by an error.

        Any other failure to publish it (no room, the bus closed) is raised:
        the handler's retries and dead letters apply to it.
        """
        try:
            self._publish_reply(request, reply)
        except EventTooLargeError as exc:  # raised by this one if not even the error fits
            _note_error(exc)
            self._publish_reply(request, error_event(request, exc, source=self._source))

    def _publish_reply(self, request: Event, reply: Event) -> None:
        table = self._table
        if table is None or not table.waiting(request.id):
            self._publish(reply).add_done_callback(functools.partial(_refused, reply))
            return
        # Marked before the publish can route it (the reply route skips it);
        # handed to the caller once sequenced, without the route's hop.
        reply_id = reply.id
        table.expect(reply_id)
        try:
            published = self._publish(reply)
        except BaseException as exc:
            table.unexpect(reply_id)
            if isinstance(exc, BusClosedError):
                # Closing: its caller learns it now, not after close()'s
                # flush, which may be waiting for that very caller.
                table.refuse(request.id, exc, gathering=True)
            raise
        published.add_done_callback(functools.partial(_refused, reply))
        published.add_done_callback(functools.partial(table.delivered, reply_id, request.id))


async def _outcome(call: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Await ``call`` as a task's body: (True, its result), or (False, what it raised).

    A task whose body raises ``KeyboardInterrupt`` or ``SystemExit`` raises
    it out of its loop's ``run_forever``: the caller's application would
    stop for its responder's failure.  A cancellation stays one.
    """
    try:
        return True, await call
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # whatever it raises is its answer (as for handlers)
        return False, exc


def _result(outcome: tuple[bool, Any]) -> Any:
    """Return the result of an ``_outcome``, or raise what the call raised."""
    ok, value = outcome
    if not ok:
        raise value
    return value


def _drop_late(call: asyncio.Future[tuple[bool, Any]]) -> None:
    """Take the outcome of a responder's call its timeout answered for (nobody waits for it)."""
    if call.cancelled():
        return
    error = call.exception()
    if error is None and not call.result()[0]:
        error = call.result()[1]
    if error is not None:
        logger.debug("a responder past its timeout ended with %r", error)


def _refused(reply: Event, published: BusFuture[Event]) -> None:
    """Log a reply the bus refused once it was published (a done callback)."""
    exc = published.exception()
    if exc is not None:
        logger.warning(
            "the reply %s to request %s was refused: %s", reply.id, reply.causation_id, exc
        )
