"""llmspell-events: an event bus for agent systems, built as actors."""

from __future__ import annotations

import logging

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

__all__ = [
    "BackpressureError",
    "BridgeError",
    "BusClosedError",
    "CorruptRecordError",
    "EventBusError",
    "InvalidEventError",
    "InvalidPatternError",
    "JournalError",
    "JournalLockedError",
    "RateLimitedError",
]

logging.getLogger("actors").addHandler(logging.NullHandler())
