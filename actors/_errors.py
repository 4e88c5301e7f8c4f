"""The bus's one exception hierarchy.

::

    EventBusError
    ├── InvalidEventError      (also ValueError)   bad event type, data or bytes
    ├── InvalidPatternError    (also ValueError)   bad subscription pattern
    ├── BusClosedError                              you closed the bus
    ├── BackpressureError                           a mailbox is full (REJECT, BLOCK timeout)
    ├── RateLimitedError                            the bus's token bucket is empty
    ├── JournalError                                the journal broke
    │   ├── JournalLockedError                      another process holds the journal
    │   └── CorruptRecordError (also ValueError)    a stored record cannot be decoded
    └── BridgeError                                 the ZeroMQ bridge broke

``BusClosedError`` means *you* closed it; ``JournalError`` and ``BridgeError``
mean something broke underneath.  Errors of pykka, zmq and RocksDB are
translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

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


class EventBusError(Exception):
    """Base class of every error the bus raises."""


class InvalidEventError(EventBusError, ValueError):
    """An event has a bad type, non-JSON data, or its bytes are malformed."""


class InvalidPatternError(EventBusError, ValueError):
    """A subscription pattern does not follow the topic grammar."""


class BusClosedError(EventBusError):
    """The bus was closed by its owner; no further calls are accepted."""


class BackpressureError(EventBusError):
    """A subscription's mailbox is full (``REJECT``, or ``BLOCK`` past its timeout)."""


class RateLimitedError(EventBusError):
    """The bus's token-bucket rate limit rejected a publish."""


class JournalError(EventBusError):
    """The journal failed to read or write."""


class JournalLockedError(JournalError):
    """Another process holds the journal open."""


class CorruptRecordError(JournalError, ValueError):
    """A stored record cannot be decoded."""


class BridgeError(EventBusError):
    """The ZeroMQ bridge failed."""
