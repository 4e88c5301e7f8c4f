"""The small ports the core's parts are given instead of the bus.

A subscriber never holds the bus: it is given a ``SubscriberPorts`` (the
router's inbox, where it sends ``Relieved`` and ``DeadLettered``; the latency
window it samples into; its id).  A ``Subscription`` handle holds its
subscriber and an ``Unsubscriber``.  These are ``Protocol``s, so the facade
(or a test) passes whatever object fits, as pykka's ``ActorInbox`` and
httpx's transports are passed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Inbox", "LatencySink", "SubscriberPorts", "Unsubscriber"]


class Inbox(Protocol):
    """Where messages for an actor go; ``put`` never blocks."""

    def put(self, item: object, /) -> None:
        """Append ``item`` and schedule its actor."""


class LatencySink(Protocol):
    """A window of publish-to-handler latencies (seconds); appends are thread-safe."""

    @property
    def samples(self) -> deque[float]:
        """Return the deque samples are appended to."""


class Unsubscriber(Protocol):
    """Remove a subscription by id; idempotent, never blocks long."""

    def __call__(self, sub_id: str, /) -> None:
        """Stop delivery to ``sub_id``."""


@dataclass(frozen=True, slots=True)
class SubscriberPorts:
    """What a subscriber actor may reach outside itself."""

    sub_id: str
    router: Inbox
    latency: LatencySink
