"""Topic grammar: event types, patterns, and the segment trie (placeholder)."""

from __future__ import annotations

from actors._errors import InvalidEventError

_FORBIDDEN = set(".*?[]{}")


def validate_event_type(event_type: object) -> str:
    """Return ``event_type`` if it is a valid topic, else raise ``InvalidEventError``."""
    if not isinstance(event_type, str):
        raise InvalidEventError(f"event_type must be a str, not {type(event_type).__name__}")
    if not event_type or len(event_type) > 255:
        raise InvalidEventError(f"event_type must be 1-255 characters: {event_type!r}")
    for seg in event_type.split("."):
        if not seg or any(c in _FORBIDDEN or c.isspace() for c in seg):
            raise InvalidEventError(f"invalid segment {seg!r} in event_type {event_type!r}")
    return event_type
