"""One call of an ``async def`` handler under its timeout (part of ``HandlerRuns``).

The timeout cancels the call (``asyncio.timeout``).  A call that ran past it
is counted in ``timeouts`` and logged once: when it ends (cancelled, or its
own ``TimeoutError``, or a loop it blocked past the deadline), or, if it
has not ended two turns of the loop after the deadline (it caught the
cancellation and goes on, or its clean-up awaits: a ``gather``, a task),
then: a handler that never returns is counted too, not only when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from actors._core.policies import HandlerPolicy, handler_timeout_error

if TYPE_CHECKING:
    from actors._model.event import Event

__all__ = ["AsyncCalls", "current_timeout"]

logger = logging.getLogger("actors.subscriber")

# While an ``async def`` handler with a timeout runs: its timeout scope and the
# timeout in seconds.  A handler that catches its cancellation can tell the
# timeout from other cancellations (``scope.expired()``); the responder of a
# request does, to reply with a timeout error (``actors._core.requests``).
current_timeout: contextvars.ContextVar[tuple[asyncio.Timeout, float] | None] = (
    contextvars.ContextVar("actors_current_timeout", default=None)
)


_NOT_RETURNED = (
    "cancelled, it had not returned two turns of its loop later "
    "(it caught the cancellation and goes on, or its clean-up awaits)"
)


class _Call:
    """One call past whose deadline the loop looks: has it ended, was it counted."""

    __slots__ = ("counted", "ended")

    def __init__(self) -> None:
        self.ended = False
        self.counted = False


class AsyncCalls:
    """Call an ``async def`` handler once under the subscription's timeout."""

    # Provided by SubscriberActor.
    sub_id: str
    pattern: str
    policy: HandlerPolicy
    timeouts: int

    async def _await_handler(
        self, handler: Callable[[Event], Coroutine[Any, Any, Any]], event: Event
    ) -> None:
        timeout = self.policy.timeout
        if timeout is None:
            await handler(event)
            return
        loop = asyncio.get_running_loop()
        call = _Call()
        when = loop.time() + timeout
        scope = asyncio.timeout_at(when)
        token = current_timeout.set((scope, timeout))
        # Two turns after the deadline: the cancellation's own turn comes first.
        hop = loop.call_soon
        timer = loop.call_at(when, hop, hop, self._overdue, event, scope, call)
        try:
            async with scope:
                await handler(event)
        except TimeoutError as exc:
            if not scope.expired():
                self._timed_out(event, scope, call, "")  # its own TimeoutError (late, if blocked)
                raise
            self._timed_out(event, scope, call, "cancelled")
            raise handler_timeout_error(timeout) from exc
        except BaseException as exc:
            # Cancelled at its timeout and raised something else on the way, or blocked
            # its loop past the deadline (not known of one closed with its loop).
            if scope.expired() or not isinstance(exc, GeneratorExit):
                self._timed_out(event, scope, call, "cancelled")
            raise
        finally:
            call.ended = True
            timer.cancel()
            with contextlib.suppress(ValueError):  # closed from another context (its loop gone)
                current_timeout.reset(token)
        self._timed_out(event, scope, call, "it caught the cancellation and returned")

    def _overdue(self, event: Event, scope: asyncio.Timeout, call: _Call) -> None:
        """Just past the deadline: a call cancelled and still running caught its cancellation."""
        if not call.ended and scope.expired():
            self._timed_out(event, scope, call, _NOT_RETURNED)

    def _timed_out(self, event: Event, scope: asyncio.Timeout, call: _Call, how: str) -> None:
        """Count and report a call that ran past its timeout (if it did), once."""
        if call.counted:
            return
        deadline = scope.when()
        if not scope.expired():
            if deadline is None or asyncio.get_running_loop().time() <= deadline:
                return  # in time
            how = "it blocked its loop, so it could not be cancelled"
        call.counted = True
        self.timeouts += 1  # on the loop's thread, the writer of an async subscription's counters
        logger.warning(
            "handler of %s (%r) ran on %s for longer than its timeout of %s s; %s",
            self.sub_id,
            self.pattern,
            event.event_type,
            self.policy.timeout,
            how,
        )
