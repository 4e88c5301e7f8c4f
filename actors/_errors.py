"""The bus's one exception hierarchy.

::

    EventBusError
    ├── InvalidEventError      (also ValueError)     bad event type, data or bytes
    ├── InvalidPatternError    (also ValueError)     bad subscription pattern
    ├── BusClosedError                                you closed the bus
    ├── BackpressureError                             a mailbox is full (REJECT, BLOCK timeout)
    ├── RateLimitedError                              the bus's token bucket is empty
    ├── FutureTimeoutError     (also TimeoutError)    a future's get(timeout=...) ran out
    │   └── RequestTimeoutError                       no reply to a request in time
    ├── RemoteHandlerError                            a responder raised; its reply says what
    ├── JournalError                                  the journal broke
    │   ├── JournalLockedError                        a process holds the journal open
    │   ├── JournalNotFoundError (also FileNotFoundError)  a folder holds no journal
    │   ├── JournalDamagedError                       files are damaged; opening would lose events
    │   └── CorruptRecordError (also ValueError)      a stored record cannot be decoded
    └── BridgeError                                   the ZeroMQ bridge broke
        ├── FrameError         (also ValueError)      a frame is garbage, truncated or oversized
        ├── EventTooLargeError (also ValueError)      an event cannot cross: over the size limit
        ├── NotConnectedError                         no link to the named node
        ├── NoAnswerError      (also TimeoutError)    a node did not answer in time
        └── PeerRefusedError                          a node refused us (key, name, request)

``BusClosedError`` means *you* closed it; ``JournalError`` and ``BridgeError``
mean something broke underneath.  Errors of pykka, zmq and RocksDB are
translated at the boundary with ``raise ... from exc``, by type, in the one
module of each backend that imports the driver.
"""

from __future__ import annotations

from typing import Any

import pykka

__all__ = [
    "BackpressureError",
    "BridgeError",
    "BusClosedError",
    "CorruptRecordError",
    "EventBusError",
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
    "NotConnectedError",
    "PeerRefusedError",
    "RateLimitedError",
    "RemoteHandlerError",
    "RequestTimeoutError",
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


class FutureTimeoutError(EventBusError, pykka.Timeout, TimeoutError):
    """``get(timeout=...)`` ran out of time (also a ``pykka.Timeout`` and a ``TimeoutError``)."""


class RequestTimeoutError(FutureTimeoutError):
    """No reply to a request arrived within its timeout."""


class RemoteHandlerError(EventBusError):
    """A responder raised; ``remote_type`` and ``remote_message`` say what it raised."""

    def __init__(self, remote_type: str, remote_message: str, reply: object = None) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.reply = reply

    def __reduce__(
        self,
    ) -> tuple[type[RemoteHandlerError], tuple[str, str, object], dict[str, Any]]:
        # Pickled (a process pool, multiprocessing) and copied whole, as exceptions
        # are: its arguments, and what was added to it (``__notes__``, attributes).
        return type(self), (self.remote_type, self.remote_message, self.reply), self.__dict__


class JournalError(EventBusError):
    """The journal failed to read or write."""


class JournalLockedError(JournalError):
    """A process (this one or another) holds the journal open."""


class JournalNotFoundError(JournalError, FileNotFoundError):
    """A folder opened for reading holds no journal."""


class JournalDamagedError(JournalError):
    """The journal's files are damaged; opening it as it is would lose events.

    The message names the damage and how to accept the loss (``recover=...``).
    """


class CorruptRecordError(JournalError, ValueError):
    """A stored record cannot be decoded."""


class BridgeError(EventBusError):
    """The ZeroMQ bridge failed."""


class FrameError(BridgeError, ValueError):
    """A frame is garbage, truncated, oversized or of an unknown version."""


class EventTooLargeError(BridgeError, ValueError):
    """An event is larger than the bridge can carry (its limit is in the message)."""


class NotConnectedError(BridgeError):
    """No link to the named node (not configured, not yet joined, or declared dead)."""


class NoAnswerError(BridgeError, TimeoutError):
    """A node did not answer a request in time."""


class PeerRefusedError(BridgeError):
    """A node refused us: an unknown key, a duplicate name, or a refused request."""
