"""Subscriber actors and the ``Subscription`` handle users hold.

Each subscription is one ``SubscriberActor``: a bounded ``EventMailbox`` plus
the user's handler.  On its turn it takes a batch of events and runs the
handler for each, in order, on the dispatcher thread (no extra hop).  An
``async def`` handler runs on the event loop it was subscribed from; the actor
hands a whole batch to the loop and takes the next batch only when it is
done, so order holds and the handler never runs twice at once.  A
``pykka.ActorRef`` handler gets each event as a ``tell``.

A handler that raises is retried ``handler_retries`` times; then the event
becomes a dead letter.  Nothing a handler does stops the subscription.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from actors._dispatcher import DispatchedActor, Dispatcher
from actors._mailbox import EventMailbox, OverflowStrategy
from actors._messages import Relieved
from actors._metrics import SubscriptionStatistics

if TYPE_CHECKING:
    from actors._bus import EventBus
    from actors._event import Event

__all__ = ["DeadLetter", "Handler", "SubscriberActor", "Subscription", "current_event"]

logger = logging.getLogger("actors.subscriber")

Handler = Callable[["Event"], Any] | pykka.ActorRef[Any]

# The event whose handler is running: publishes made inside a handler inherit
# its correlation id and take its id as their causation id.
current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "actors_current_event", default=None
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a subscription gave up on, with the error of its last attempt."""

    subscription_id: str
    pattern: str
    event: Event
    error_type: str
    error: str
    attempts: int
    letter: Event | None = None  # the ``$bus.deadletter`` event that announced it


class SubscriberActor(DispatchedActor):
    """Run one subscription's handler over its mailbox (see the module docstring)."""

    actor_inbox: EventMailbox

    def __init__(
        self,
        *,
        bus: EventBus,
        sub_id: str,
        pattern: str,
        handler: Handler,
        capacity: int,
        overflow: OverflowStrategy,
        retries: int,
        dispatcher: Dispatcher,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self._capacity = capacity
        self._overflow = overflow
        super().__init__(dispatcher=dispatcher)
        self.bus = bus
        self.sub_id = sub_id
        self.pattern = pattern
        self.retries = retries
        self.delivered = 0
        self.errors = 0
        self.expired = 0
        self.dead = 0
        self._inflight = False
        self._loop = loop
        self._call: Callable[[Event], Any]
        self._async_handler: Callable[[Event], Coroutine[Any, Any, Any]] | None = None
        if isinstance(handler, pykka.ActorRef):
            self._call = handler.tell
        elif inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        ):
            if loop is None:
                raise ValueError("an async handler needs an event loop")
            self._async_handler = handler
            self._call = handler
        else:
            self._call = handler

    def _create_actor_inbox(self) -> EventMailbox:  # type: ignore[override]
        return EventMailbox(self._capacity, self._overflow)

    # -- the turn ---------------------------------------------------------------

    def _drain(self, throughput: int) -> None:
        if self._inflight:
            return
        mailbox = self.actor_inbox
        batch, relieved = mailbox.take_events(throughput)
        if relieved:
            self.bus._router_mailbox.put(
                Relieved(self.sub_id, self.pattern, mailbox.queued, self._capacity)
            )
        if not batch:
            mailbox.check_barriers()
            return
        if self._async_handler is not None:
            self._inflight = True
            assert self._loop is not None
            try:
                fut = asyncio.run_coroutine_threadsafe(self._run_async(batch), self._loop)
            except RuntimeError:  # the loop is closed: nothing can run these
                self._inflight = False
                self._give_up(batch, RuntimeError("the handler's event loop is closed"))
                return
            fut.add_done_callback(self._async_done)
            return
        self._run_sync(batch)

    def _run_sync(self, batch: list[tuple[Event, float]]) -> None:
        call = self._call
        mailbox = self.actor_inbox
        samples = self.bus._latency.samples
        perf = time.perf_counter
        now_wall = time.time()
        for event, published_at in batch:
            if event.ttl is not None and event._expired_unix(now_wall):
                self.expired += 1
                mailbox.finished_by_owner += 1
                continue
            samples.append(perf() - published_at)
            token = current_event.set(event)
            try:
                call(event)
                self.delivered += 1
            except Exception as exc:
                self._failed(event, exc, call)
            finally:
                current_event.reset(token)
            mailbox.finished_by_owner += 1
        mailbox.check_barriers()

    def _failed(self, event: Event, exc: Exception, call: Callable[[Event], Any]) -> None:
        self.errors += 1
        attempts = 1
        while attempts <= self.retries:
            attempts += 1
            try:
                call(event)
            except Exception as again:
                self.errors += 1
                exc = again
            else:
                self.delivered += 1
                return
        self._dead_letter(event, exc, attempts)

    async def _run_async(self, batch: list[tuple[Event, float]]) -> None:
        handler = self._async_handler
        assert handler is not None
        samples = self.bus._latency.samples
        mailbox = self.actor_inbox
        now_wall = time.time()
        for event, published_at in batch:
            if event.ttl is not None and event._expired_unix(now_wall):
                self.expired += 1
                mailbox.finished_by_owner += 1
                continue
            samples.append(time.perf_counter() - published_at)
            token = current_event.set(event)
            try:
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        await handler(event)
                    except Exception as exc:
                        self.errors += 1
                        if attempts > self.retries:
                            self._dead_letter(event, exc, attempts)
                            break
                    else:
                        self.delivered += 1
                        break
            finally:
                current_event.reset(token)
            mailbox.finished_by_owner += 1

    def _async_done(self, fut: Any) -> None:
        if fut.exception() is not None:  # pragma: no cover - _run_async catches everything
            logger.error("async batch of %s failed", self.sub_id, exc_info=fut.exception())
        self._inflight = False
        self.actor_inbox.check_barriers()
        self.actor_inbox.wake()

    def _on_turn_end(self) -> bool:
        return self._inflight

    def _after_park(self) -> None:
        if not self._inflight:
            self.actor_inbox.wake()

    def _give_up(self, batch: list[tuple[Event, float]], exc: Exception) -> None:
        for event, _ in batch:
            self.errors += 1
            self._dead_letter(event, exc, 0)
            self.actor_inbox.finished_by_owner += 1
        self.actor_inbox.check_barriers()

    def _dead_letter(self, event: Event, exc: BaseException, attempts: int) -> None:
        self.dead += 1
        logger.warning(
            "handler of %s (%r) failed on %s after %d attempt(s): %r",
            self.sub_id,
            self.pattern,
            event.event_type,
            attempts,
            exc,
        )
        self.bus._dead_letter(
            DeadLetter(
                subscription_id=self.sub_id,
                pattern=self.pattern,
                event=event,
                error_type=type(exc).__name__,
                error="".join(traceback.format_exception_only(exc)).strip(),
                attempts=attempts,
            )
        )

    # -- stopping -----------------------------------------------------------------

    def _on_stopped(self) -> None:
        self.actor_inbox.clear_events()
        self.actor_inbox.release_barriers()

    def statistics(self) -> SubscriptionStatistics:
        """Return a snapshot of this subscription's figures."""
        mailbox = self.actor_inbox
        return SubscriptionStatistics(
            id=self.sub_id,
            pattern=self.pattern,
            delivered=self.delivered,
            dropped=mailbox.dropped,
            errors=self.errors,
            queued=mailbox.queued,
            capacity=self._capacity,
            expired=self.expired,
            dead_letters=self.dead,
        )


class Subscription:
    """A live subscription: ``id``, ``pattern``, ``unsubscribe()``, ``statistics()``.

    Use it as a context manager to unsubscribe on exit.
    """

    __slots__ = ("_actor", "_bus", "id", "pattern")

    def __init__(self, bus: EventBus, actor: SubscriberActor) -> None:
        self._bus = bus
        self._actor = actor
        self.id = actor.sub_id
        self.pattern = actor.pattern

    def unsubscribe(self) -> None:
        """Stop delivery; queued events are discarded.  Idempotent; never blocks long."""
        self._bus._unsubscribe(self)

    def statistics(self) -> SubscriptionStatistics:
        """Return ``delivered``, ``dropped``, ``errors``, ``queued`` and ``capacity``."""
        return self._actor.statistics()

    @property
    def active(self) -> bool:
        """Return whether the subscription still receives events."""
        return self._actor.actor_ref.is_alive()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return f"Subscription(id={self.id!r}, pattern={self.pattern!r})"
