"""Requests and replies on a bus: ``respond``, ``request``, ``request_all`` (``docs/requests.md``).

``EventBus`` takes these methods from ``RequestReply``; the logic is the
bus's ``RequestClient`` (``actors._core.request_client``), built on ordinary
events, so requests and replies are journaled, traced and cross nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors._core.publishing import check_not_reserved
from actors._core.request_client import RequestClient
from actors._core.subscriber import Subscription
from actors._core.wiring import Core
from actors._model import checks
from actors._model.event import Event
from actors._runtime.future import BusFuture

__all__ = ["RequestReply"]


class RequestReply:
    """The request/reply methods of ``EventBus`` (its ``_requests`` does the work)."""

    _requests: RequestClient
    _core: Core
    _closed: bool
    _read_only: bool
    _size_check: Callable[[Event], None] | None

    def _check_open(self) -> None:
        raise NotImplementedError

    def publish(
        self, event_or_type: Event | str, data: Any = None, **fields: Any
    ) -> BusFuture[Event]:
        raise NotImplementedError

    def _publish_built(self, event: Event, wait: float | None = None) -> BusFuture[Event]:
        """Publish a request or a reply the bus built itself (the request client's port).

        The checks of ``publish`` (closed, read-only, reserved type, size on a
        node), without its preparing again an event prepared already: the
        event is the bus's own, so the router stamps it in place instead of
        copying it.
        """
        if self._closed or self._read_only:
            return self.publish(event)  # raises as publish does
        check_not_reserved(event)
        if self._size_check is not None:
            self._size_check(event)
        if wait is not None:
            return self._core.publisher.publish_within(event, owned=True, wait=wait)
        return self._core.publisher.publish(event, owned=True)

    @property
    def request_client(self) -> RequestClient:
        """Return the bus's requesting side (for ``AsyncEventBus``; not a stable API)."""
        return self._requests

    def respond(
        self,
        pattern: str,
        fn: Callable[[Event], Any],
        *,
        source: str | None = None,
        **subscribe_options: Any,
    ) -> Subscription:
        """Subscribe ``fn`` as a responder: its return value becomes the reply event.

        The reply is ``<request type>.reply`` (``.error`` with the exception's
        type and message if ``fn`` raises; no retry, no dead letter), caused by
        the request, in its correlation, targeted at its source, with
        ``source``.  ``async def`` works as for handlers.  Takes the options of
        ``subscribe``, handler policies too: an ``async def`` responder past its
        ``timeout`` is cancelled and replies ``.error`` (``TimeoutError``).
        """
        return self._requests.respond(pattern, fn, source, subscribe_options)

    def request(
        self,
        event_type: str,
        data: Any = None,
        *,
        timeout: float | None = 5.0,
        node: str | None = None,
        **fields: Any,
    ) -> Event:
        """Publish a request and return the first reply event.

        Blocks up to ``timeout`` seconds, then raises ``RequestTimeoutError``;
        an error reply raises ``RemoteHandlerError``.  ``node`` has that
        connected node publish the request (``publish_remote``).  Also raises
        what ``publish`` raises, and ``BackpressureError`` when too many
        requests wait at once.
        """
        checks.check_request(timeout, None, node)
        self._check_open()
        return self._requests.request(event_type, data, fields, timeout, node)

    def request_all(
        self,
        event_type: str,
        data: Any = None,
        *,
        timeout: float = 5.0,
        max_replies: int | None = None,
        node: str | None = None,
        **fields: Any,
    ) -> list[Event]:
        """Publish a request; return every reply (``.error`` ones too) within ``timeout``.

        Returns as soon as ``max_replies`` arrived, else after ``timeout``
        (never raises ``RequestTimeoutError``: no reply is an empty list).
        """
        checks.check_request(timeout, max_replies, node)
        self._check_open()
        return self._requests.request_all(event_type, data, fields, timeout, max_replies, node)

    def pending_requests(self) -> int:
        """Return how many requests wait for replies now (bounded; see ``docs/requests.md``)."""
        return len(self._requests.requester.table)
