"""How big an event may be to cross between nodes (``docs/wire.md``, "Size limit").

An event crosses in a frame of its own if it must; a frame is at most
``NodeConfig.max_frame_bytes``.  ``EventSizeCheck`` refuses, at ``publish``,
an event that could not fit once the node stamped it (its origin and
sequence) and framed it: it bounds the encoded size from above by a walk of
the data (cheap for the usual small event) and encodes only an event whose
bound is over the limit, to be exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zmq

from actors._codec.events import NotTextError, encode_event
from actors._errors import EventTooLargeError
from actors._model.event import Event

__all__ = [
    "FRAME_OVERHEAD",
    "INBOUND_FACTOR",
    "INBOUND_FLOOR",
    "EventSizeCheck",
    "cap_inbound",
    "inbound_cap",
    "stamp_bytes",
    "upper_bound",
]

FRAME_OVERHEAD = 64 * 1024
"""Bytes of a frame kept for its header, topic and origin (a frame of one event)."""

INBOUND_FACTOR = 2
"""A message part over this many times ``max_frame_bytes`` makes ZeroMQ drop its connection."""
INBOUND_FLOOR = 64 * 1024 * 1024
"""... or over this many bytes, whichever is larger (a peer with a much larger limit is told)."""


def inbound_cap(max_frame_bytes: int) -> int:
    """Return the largest message part a socket of a node with ``max_frame_bytes`` reads."""
    return max(INBOUND_FACTOR * max_frame_bytes, INBOUND_FLOOR)


def cap_inbound(sock: zmq.Socket[bytes], max_frame_bytes: int) -> zmq.Socket[bytes]:
    """Have ZeroMQ disconnect a peer that sends ``sock`` a part over ``inbound_cap``.

    ZeroMQ reads a whole message before the node sees it: without this, one
    forged length prefix makes a node buffer gigabytes.  Smaller parts still
    reach the node, which drops a frame over its own limit, and answers a
    request over it, with a count (``docs/cluster.md``, "Size limit"): a
    peer configured with a larger limit is told why.  Return ``sock``.
    """
    sock.setsockopt(zmq.MAXMSGSIZE, inbound_cap(max_frame_bytes))
    return sock


_FIXED = 512  # ids, timestamp, numbers and field tags of one encoded event
_SCALAR = 32


def upper_bound(value: Any, limit: int) -> int:  # noqa: PLR0911 - flat dispatch is the fast path
    """Return an upper bound of the JSON text of ``value`` (more than ``limit``: stops early).

    A character costs at most 6 bytes (``\\uXXXX``), an int at most one
    digit per 3 bits, any other scalar ``_SCALAR``.  Scalars inside a
    container are sized inline: the walk is on ``publish``'s path.
    """
    kind = type(value)
    if kind is dict or isinstance(value, Mapping):
        total = 2
        for key, item in value.items():
            t = type(item)
            if t is str:
                total += 6 * (len(key) + len(item)) + 8
            elif t is int:
                total += 6 * len(key) + 6 + item.bit_length() // 3
            elif item is None or t is float or t is bool:
                total += 6 * len(key) + 4 + _SCALAR
            else:
                total += 6 * len(str(key)) + 4 + upper_bound(item, limit)
            if total > limit:
                return total
        return total
    if kind is list or kind is tuple:
        total = 2
        for item in value:
            t = type(item)
            if t is str:
                total += 6 * len(item) + 3
            elif t is int:
                total += item.bit_length() // 3 + 3
            elif item is None or t is float or t is bool:
                total += _SCALAR
            else:
                total += 1 + upper_bound(item, limit)
            if total > limit:
                return total
        return total
    if kind is str:
        return 6 * len(value) + 2
    if kind is int:
        return int(value.bit_length()) // 3 + 2
    if kind is bytes:
        return 2 * len(value) + 2
    return _SCALAR


def stamp_bytes(origin: str) -> int:
    """Return the most bytes sending adds to an event's encoding, for a node named ``origin``.

    The bridge sends the event stamped (its ``origin`` and ``sequence``
    fields) as a chunk (a tag and a length before it): what ``publish``
    accepts must still fit the frame's budget once so (``Outbound``).
    """
    name = len(origin.encode())
    origin_field = 2 + _varint_size(name) + name  # field 16: a two-byte tag
    sequence_field = 1 + 10  # field 15, a 64-bit varint
    chunk = 1 + 5  # the batch's tag and the event's length (under 2**35)
    return origin_field + sequence_field + chunk


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


class EventSizeCheck:
    """Raise ``EventTooLargeError`` for an event that cannot fit in one frame.

    With ``origin`` (the node's name), an event passes only if it still fits
    once the bridge stamped and framed it (``stamp_bytes``): whatever
    ``publish`` accepts is sent.
    """

    __slots__ = ("limit", "max_frame_bytes", "stamp")

    def __init__(self, max_frame_bytes: int, origin: str | None = None) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.stamp = 0 if origin is None else stamp_bytes(origin)
        self.limit = max(1, max_frame_bytes - FRAME_OVERHEAD - self.stamp)

    def __call__(self, event: Event) -> None:
        """Pass ``event`` if it fits; raise ``EventTooLargeError`` naming the limit otherwise."""
        limit = self.limit
        data = event.data
        bound = _FIXED + 6 * len(event.event_type)
        bound += _SCALAR if data is None else upper_bound(data, limit)
        if event.metadata:
            bound += sum(6 * (len(k) + len(v)) + 8 for k, v in event.metadata.items())
        if event.tags:
            bound += sum(6 * len(t) + 3 for t in event.tags)
        for text in (event.source, event.target):
            if text is not None:
                bound += 6 * len(text)
        if bound <= limit:
            return
        try:
            size = len(encode_event(event))
        except NotTextError:
            return  # a surrogate: delivered here, left out (and counted) by the bridge
        # Past protobuf's 2 GiB, or data changed after it was built: raised.
        if size > limit:
            stamp = f" and {self.stamp} for its origin and sequence" if self.stamp else ""
            raise EventTooLargeError(
                f"event {event.event_type!r} is {size} bytes encoded; a node sends events of "
                f"at most {limit} bytes (NodeConfig.max_frame_bytes={self.max_frame_bytes} "
                f"less {FRAME_OVERHEAD} for the frame{stamp})"
            )
