"""llmspell-events: an event bus for agent systems, built as actors.

Start with ``EventBus`` (or ``AsyncEventBus``), ``Event`` and ``subscribe``;
``docs/architecture.md`` shows how the actors fit together.
"""

from __future__ import annotations

import logging
import typing

from actors._async import AsyncEventBus, EventStream
from actors._bus import EventBus, PersistentEventBus
from actors._core.subscriber import DeadLetter, Subscription
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
from actors._model.config import EventConfig, NodeConfig
from actors._model.event import Event
from actors._model.filter import EventFilter
from actors._model.metrics import BusMetrics, SubscriptionStatistics
from actors._model.query import EventQuery
from actors._model.topics import Pattern
from actors._model.trace import Trace
from actors._runtime.dispatcher import DispatchedActor, Dispatcher
from actors._runtime.future import BusFuture, FutureTimeoutError
from actors._runtime.mailbox import OverflowStrategy

if typing.TYPE_CHECKING:
    from actors._cluster.bridge import generate_keypair
    from actors._cluster.broker import Broker

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
        from actors._cluster.broker import Broker  # noqa: PLC0415

        return Broker
    if name == "generate_keypair":
        from actors._cluster.bridge import generate_keypair  # noqa: PLC0415

        return generate_keypair
    raise AttributeError(f"module 'actors' has no attribute {name!r}")
