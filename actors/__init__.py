"""llmspell-events: an event bus for agent systems, built as actors.

Start with ``EventBus`` (or ``AsyncEventBus``), ``Event`` and ``subscribe``;
``docs/architecture.md`` shows how the actors fit together.
"""

from __future__ import annotations

import logging
import typing

from actors._async import AsyncEventBus, EventStream
from actors._bus import EventBus, PersistentEventBus
from actors._config import EventConfig, NodeConfig
from actors._dispatcher import DispatchedActor, Dispatcher
from actors._errors import (
    BackpressureError,
    BridgeError,
    BusClosedError,
    CorruptRecordError,
    EventBusError,
    InvalidEventError,
    InvalidPatternError,
    JournalError,
    JournalLockedError,
    RateLimitedError,
)
from actors._event import Event
from actors._filter import EventFilter
from actors._future import BusFuture, FutureTimeoutError
from actors._mailbox import OverflowStrategy
from actors._metrics import BusMetrics, SubscriptionStatistics
from actors._query import EventQuery
from actors._subscriber import DeadLetter, Subscription
from actors._topics import Pattern
from actors._trace import Trace

if typing.TYPE_CHECKING:
    from actors._bridge import generate_keypair
    from actors._broker import Broker

__all__ = [
    "AsyncEventBus",
    "BackpressureError",
    "BridgeError",
    "Broker",
    "BusClosedError",
    "BusFuture",
    "BusMetrics",
    "CorruptRecordError",
    "DeadLetter",
    "DispatchedActor",
    "Dispatcher",
    "Event",
    "EventBus",
    "EventBusError",
    "EventConfig",
    "EventFilter",
    "EventQuery",
    "EventStream",
    "FutureTimeoutError",
    "InvalidEventError",
    "InvalidPatternError",
    "JournalError",
    "JournalLockedError",
    "NodeConfig",
    "OverflowStrategy",
    "Pattern",
    "PersistentEventBus",
    "RateLimitedError",
    "Subscription",
    "SubscriptionStatistics",
    "Trace",
    "generate_keypair",
]

logging.getLogger("actors").addHandler(logging.NullHandler())


def __getattr__(name: str) -> typing.Any:
    # The ZeroMQ parts load on first use: ``import actors`` never imports zmq.
    if name == "Broker":
        from actors._broker import Broker  # noqa: PLC0415

        return Broker
    if name == "generate_keypair":
        from actors._bridge import generate_keypair  # noqa: PLC0415

        return generate_keypair
    raise AttributeError(f"module 'actors' has no attribute {name!r}")
