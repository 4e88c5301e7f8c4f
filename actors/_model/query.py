"""``EventQuery``: what to read back from the journal."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from actors._model.topics import Pattern

__all__ = ["EventQuery"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Return ``moment`` as integer microseconds since the epoch (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _US


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Select stored events.

    ``event_types`` takes patterns (``"agent.*"``); ``time_range`` is
    ``(start, end)``, start inclusive, end exclusive, either may be None;
    ``after_sequence`` returns only later events; ``limit`` caps the count;
    ``descending`` returns the newest first.  Invalid patterns raise
    ``InvalidPatternError`` when the query is built.
    """

    event_types: Sequence[str] | None = None
    time_range: tuple[datetime | None, datetime | None] | None = None
    correlation_id: uuid.UUID | None = None
    source: str | None = None
    after_sequence: int | None = None
    limit: int | None = None
    descending: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.event_types, str):
            object.__setattr__(self, "event_types", (self.event_types,))
        if self.event_types is not None:
            object.__setattr__(self, "event_types", tuple(self.event_types))
            for text in self.event_types:
                Pattern.parse(text)
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")

    def type_matcher(self) -> Callable[[str], bool] | None:
        """Return a predicate over event types, or None for every type."""
        if self.event_types is None:
            return None
        patterns = [Pattern.parse(t) for t in self.event_types]
        return lambda event_type: any(p.matches(event_type) for p in patterns)

    def scan_arguments(self) -> dict[str, Any]:
        """Return the keyword arguments of ``Storage.scan`` for this query."""
        time_range_us = None
        if self.time_range is not None:
            start, end = self.time_range
            time_range_us = (
                to_us(start) if start is not None else -(2**62),
                to_us(end) if end is not None else 2**62,
            )
        return {
            "type_matcher": self.type_matcher(),
            "time_range_us": time_range_us,
            "correlation_id": self.correlation_id.bytes if self.correlation_id else None,
            "source": self.source,
            "after_sequence": self.after_sequence,
            "limit": self.limit,
            "descending": self.descending,
        }
