"""How big an event may be to cross between nodes (``docs/wire.md``, "Size limit").

An event crosses in a frame of its own if it must; a frame is at most
``NodeConfig.max_frame_bytes``.  ``EventSizeCheck`` refuses, at ``publish``,
an event that could not fit: it bounds the encoded size from above by a walk
of the data (cheap for the usual small event) and encodes only an event whose
bound is over the limit, to be exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors._codec.events import encode_event
from actors._errors import EventTooLargeError
from actors._model.event import Event

__all__ = ["FRAME_OVERHEAD", "EventSizeCheck", "upper_bound"]

FRAME_OVERHEAD = 64 * 1024
"""Bytes of a frame kept for its header, topic and origin (a frame of one event)."""

_FIXED = 512  # ids, timestamp, numbers and field tags of one encoded event
_SCALAR = 32


def upper_bound(value: Any, limit: int) -> int:
    """Return an upper bound of the JSON text of ``value``, or more than ``limit`` early."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            total += 6 * len(item) + 2  # every character escaped as \\uXXXX at worst
        elif kind is dict or isinstance(item, Mapping):
            total += 2
            for key, inner in item.items():
                total += 6 * len(str(key)) + 4
                stack.append(inner)
        elif kind is list or kind is tuple:
            total += 2 + len(item)
            stack.extend(item)
        elif kind is bytes:
            total += 2 * len(item) + 2
        else:
            total += _SCALAR + (item.bit_length() // 3 if kind is int else 0)
        if total > limit:
            return total
    return total


class EventSizeCheck:
    """Raise ``EventTooLargeError`` for an event that cannot fit in one frame."""

    __slots__ = ("limit", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.limit = max(1, max_frame_bytes - FRAME_OVERHEAD)

    def __call__(self, event: Event) -> None:
        """Pass ``event`` if it fits; raise ``EventTooLargeError`` naming the limit otherwise."""
        limit = self.limit
        bound = _FIXED + 6 * len(event.event_type)
        bound += upper_bound(event.data, limit)
        if bound <= limit:
            bound += upper_bound(dict(event.metadata), limit) + upper_bound(list(event.tags), limit)
            for text in (event.source, event.target):
                bound += 0 if text is None else 6 * len(text)
            if bound <= limit:
                return
        size = len(encode_event(event))
        if size > limit:
            raise EventTooLargeError(
                f"event {event.event_type!r} is {size} bytes encoded; a node sends events of "
                f"at most {limit} bytes (NodeConfig.max_frame_bytes={self.max_frame_bytes} "
                f"less {FRAME_OVERHEAD} for the frame)"
            )
