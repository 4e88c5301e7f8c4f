"""The requesting side of a bus: one ``RequestClient`` per bus, for both facades.

It owns the ``Requester`` (the bounded pending-reply table and one reply
subscription per request type) and knows how to make a new reply route take
effect on the peers before a request goes out.  It reaches the bus only
through the callables and the small ``ReplyRouteSync`` port it is given.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from actors._core.messages import Barrier
from actors._core.publishing import prepare_event
from actors._core.requests import (
    Pending,
    Requester,
    Responder,
    check_request_type,
    reply_result,
    timeout_error,
)
from actors._core.subscriber import Subscription
from actors._errors import (
    BackpressureError,
    EventBusError,
    FutureTimeoutError,
    InvalidPatternError,
    NoAnswerError,
    RequestTimeoutError,
)
from actors._model.event import Event
from actors._model.metrics import BridgeStatistics
from actors._model.topics import is_reserved
from actors._runtime.dispatcher import FifoMailbox
from actors._runtime.future import BusFuture

__all__ = ["ReplyRouteSync", "RequestClient"]

logger = logging.getLogger("actors.requests")

Publish = Callable[[Event], BusFuture[Event]]

ROUTE_SHARE = 0.5
"""The part of a request's timeout the first request of a type may spend on its reply route."""


class PublishWithin(Protocol):
    """The bus's publish of an event it built, waiting at most ``wait`` s for room."""

    def __call__(self, event: Event, wait: float | None = None) -> BusFuture[Event]: ...


class ReplyRouteSync(Protocol):
    """What the client needs of a node's bridge (absent on a bus that is not a node)."""

    @property
    def recorder(self) -> FifoMailbox:
        """The bridge's inbox for recorded events (FIFO behind the router's records)."""
        ...

    def statistics(self) -> BridgeStatistics:
        """Return the bridge's figures now."""
        ...

    def wait(self, predicate: Callable[[BridgeStatistics], bool], timeout: float | None) -> bool:
        """Wait until ``predicate`` holds for the bridge's figures (False after ``timeout``)."""
        ...


class RequestClient:
    """Prepare, route and publish requests; wait for their replies."""

    def __init__(
        self,
        *,
        subscribe: Callable[..., Subscription],
        prepare: Callable[[Event | str, Any, dict[str, Any]], Event],
        publish: PublishWithin,
        publish_remote: Callable[..., Event],
        router: FifoMailbox,
        bridge: Callable[[], ReplyRouteSync | None],
        inside: Callable[[], bool] = lambda: False,
    ) -> None:
        self._prepare = prepare
        self._publish = publish
        self._publish_remote = publish_remote
        self._router = router
        self._bridge = bridge
        self._subscribe = subscribe
        self.inside = inside  # the caller is a handler of the bus: its close fails it early
        self.requester = Requester(lambda p, h, w: subscribe(p, h, filter=w))
        self._lock = threading.Lock()

    def prepare(
        self, event_type: str, data: Any, fields: dict[str, Any], node: str | None = None
    ) -> tuple[Event, bool]:
        """Return the request event, and whether its reply route must first reach the peers.

        A request to ``node`` is sized by ``publish_remote``, as that node stamps it.
        """
        check_request_type(event_type)
        prepare = self._prepare if node is None else prepare_event
        event = prepare(event_type, data, fields)
        requester = self.requester
        if requester.is_synced(event.event_type):
            return event, False  # the common case: no lock
        with self._lock:  # one reply subscription per type, even with racing callers
            new = requester.route(event.event_type)
        has_peers = self._bridge() is not None
        if new and not has_peers:
            self.requester.synced(event.event_type)  # no peers: nothing to wait for
        return event, new and has_peers

    def respond(
        self, pattern: str, fn: Callable[[Event], Any], source: str | None, options: dict[str, Any]
    ) -> Subscription:
        """Subscribe ``fn`` as a responder (see ``EventBus.respond``).

        ``InvalidPatternError`` for a pattern of reserved (``$``) types: a
        reply to one would be reserved too, which only the bus publishes.
        """
        if isinstance(pattern, str) and is_reserved(pattern):
            raise InvalidPatternError(
                f"{pattern!r}: a responder cannot answer events reserved for the bus "
                "('$' types): its replies would be reserved too"
            )
        responder = Responder(fn, self._publish, self.requester.table, source=source)
        return self._subscribe(pattern, responder.handler, **options)

    def request(
        self,
        event_type: str,
        data: Any,
        fields: dict[str, Any],
        timeout: float | None,
        node: str | None,
    ) -> Event:
        """Publish a request; return the first reply (see ``EventBus.request``)."""
        event, pending, left = self.send(event_type, data, fields, 1, timeout, node, gathers=False)
        replies = self.requester.wait(pending, left)
        if not replies:
            raise timeout_error(event, timeout)
        return reply_result(replies[0])

    def request_all(  # noqa: PLR0917 - the public form's arguments, in their order
        self,
        event_type: str,
        data: Any,
        fields: dict[str, Any],
        timeout: float | None,
        max_replies: int | None,
        node: str | None,
    ) -> list[Event]:
        """Publish a request; return every reply within ``timeout`` (``EventBus.request_all``)."""
        try:
            _, pending, left = self.send(
                event_type, data, fields, max_replies, timeout, node, gathers=True
            )
            return self.requester.wait(pending, left)
        except RequestTimeoutError:
            # Its time ran out waiting for room, or for the node that was to
            # publish it: no reply (it was not published).
            return []

    def send(  # noqa: PLR0917 - the public forms' arguments, in their order
        self,
        event_type: str,
        data: Any,
        fields: dict[str, Any],
        max_replies: int | None,
        timeout: float | None,
        node: str | None,
        *,
        gathers: bool,
    ) -> tuple[Event, Pending, float | None]:
        """Prepare, route and publish a request; return it with the time left to wait."""
        started = time.monotonic()
        event, new_route = self.prepare(event_type, data, fields, node)
        if new_route:
            self.sync_reply_route(event.event_type, timeout, node)
        deadline = None if timeout is None else started + timeout
        publish = self.publisher(node, deadline, timeout)
        pending = self.requester.send(
            event, publish, max_replies, gathers=gathers, timeout=timeout, inside=self.inside()
        )
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return event, pending, left

    def _publish_within(self, event: Event, *, deadline: float, timeout: float) -> BusFuture[Event]:
        """Publish ``event``, waiting for room no longer than the request's own deadline.

        A request whose time ran out while it waited for room (a full
        ``BLOCK`` responder) raises ``RequestTimeoutError``: it was not
        published.  A refusal within the deadline (``block_timeout`` is
        shorter) stays the ``BackpressureError`` that ``publish`` raises.
        """
        try:
            return self._publish(event, max(0.0, deadline - time.monotonic()))
        except BackpressureError as exc:
            if time.monotonic() >= deadline:
                raise timeout_error(event, timeout) from exc
            raise

    def _publish_through(
        self,
        node: str,
        event: Event,
        *,
        deadline: float | None = None,
        timeout: float | None = None,
    ) -> BusFuture[Event]:
        """Have ``node`` publish ``event``; return a done future of the result.

        With a ``deadline`` (the request's, ``timeout`` long) its answer is
        awaited no longer than that: ``node`` silent until then (paused, cut
        off) is the request's own timeout, ``RequestTimeoutError``, as for a
        reply that never came.  Without one, ``publish_remote``'s own wait.
        """
        try:
            if deadline is None:
                return BusFuture.completed(self._publish_remote(node, event))
            left = max(0.0, deadline - time.monotonic())
            return BusFuture.completed(self._publish_remote(node, event, timeout=left))
        except NoAnswerError as exc:
            if deadline is None:
                return BusFuture.failed(exc)
            error = timeout_error(event, timeout)
            error.__cause__ = exc
            return BusFuture.failed(error)
        except EventBusError as exc:
            return BusFuture.failed(exc)

    def publisher(
        self, node: str | None, deadline: float | None = None, timeout: float | None = None
    ) -> Publish:
        """Return how a request is published: here, or by the connected node ``node``.

        With a ``deadline`` (the request's, ``timeout`` long, on
        ``time.monotonic``) a local publish waits for room no longer than it,
        and through ``node`` its answer is awaited until it.
        """
        if node is None:
            if deadline is None or timeout is None:
                return self._publish
            return functools.partial(self._publish_within, deadline=deadline, timeout=timeout)
        return functools.partial(self._publish_through, node, deadline=deadline, timeout=timeout)

    def sync_reply_route(self, event_type: str, timeout: float | None, node: str | None) -> None:
        """Wait until a new reply route reached the peers (and ``node``).

        The route must reach them before the request does, or a fast reply
        could be published before they forward it.  No flush (a handler may
        ask): a barrier through the router, then the bridge, which applies its
        new prefixes before it takes mail; then the peers' acknowledgements.
        Waits at most ``ROUTE_SHARE`` of the request's ``timeout``: the rest
        is the responders' (a peer that never acknowledges, paused and not
        yet declared dead, would otherwise take all of it and leave none for
        the replies).
        """
        bridge = self._bridge()
        if bridge is None:
            return
        timeout = None if timeout is None else timeout * ROUTE_SHARE
        names = set(bridge.statistics().peers_alive) | ({node} if node else set())
        if not names:
            return  # (no peer yet: the next request of this type tries again)
        applied: BusFuture[None] = BusFuture()
        recorder = bridge.recorder
        self._router.put(Barrier(lambda: recorder.put(Barrier(lambda: applied.set(None)))))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            applied.get(timeout=timeout)
        except FutureTimeoutError:
            logger.warning("reply route not applied within %ss", timeout)
            return
        left = None if deadline is None else max(0.0, deadline - time.monotonic())

        def acknowledged(s: BridgeStatistics) -> bool:
            # A peer declared dead meanwhile is not waited for (it learns the
            # route with the rest of the subscriptions when it comes back).
            alive, synced = set(s.peers_alive), set(s.synced_peers)
            return all(n in synced or n not in alive for n in names)

        if bridge.wait(acknowledged, left):
            self.requester.synced(event_type)
        else:
            stats = bridge.statistics()
            silent = sorted(names - set(stats.synced_peers))
            logger.warning("reply route not acknowledged by %s within %ss", silent, timeout)
