"""llmspell-events: an event bus for agent systems, built as actors.

Start with ``EventBus`` (or ``AsyncEventBus``), ``Event`` and ``subscribe``;
``docs/architecture.md`` shows how the actors fit together.
"""

from __future__ import annotations

import logging
import typing

import actors._codec  # noqa: F401 - installs the codec behind Event.to_bytes/from_bytes
from actors._async import AsyncEventBus, EventStream
from actors._bus import EventBus, PersistentEventBus
from actors._core.subscriber import DeadLetter, Subscription
from actors._errors import (
    BackpressureError,
    BridgeError,
    BusClosedError,
    CorruptRecordError,
    EventBusError,
    EventTooLargeError,
    FrameError,
    FutureTimeoutError,
    InvalidEventError,
    InvalidPatternError,
    JournalDamagedError,
    JournalError,
    JournalLockedError,
    JournalNotFoundError,
    NoAnswerError,
    NotConnectedError,
    PeerRefusedError,
    RateLimitedError,
    RemoteHandlerError,
    RequestTimeoutError,
)
from actors._model.config import EventConfig, NodeConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.filter import EventFilter
from actors._model.metrics import BusMetrics, SubscriptionStatistics
from actors._model.patterns import Pattern
from actors._model.query import EventQuery
from actors._model.trace import Trace
from actors._runtime.dispatcher import DispatchedActor, Dispatcher
from actors._runtime.future import BusFuture

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
    "EventTooLargeError",
    "FrameError",
    "FutureTimeoutError",
    "InvalidEventError",
    "InvalidPatternError",
    "JournalDamagedError",
    "JournalError",
    "JournalLockedError",
    "JournalNotFoundError",
    "NoAnswerError",
    "NodeConfig",
    "NotConnectedError",
    "OverflowStrategy",
    "Pattern",
    "PeerRefusedError",
    "PersistentEventBus",
    "RateLimitedError",
    "RemoteHandlerError",
    "RequestTimeoutError",
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
