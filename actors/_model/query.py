"""``EventQuery``: what to read back from the journal."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from actors._model.guards import check_bool, check_int, check_str, check_strings, check_uuid
from actors._model.patterns import Pattern

__all__ = ["EventQuery"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Return ``moment`` as integer microseconds since the epoch (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _US


def _check_time_range(value: object) -> tuple[datetime | None, datetime | None]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"time_range must be a (start, end) pair, not {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"time_range must be a (start, end) pair, not {len(value)} items")
    start, end = value
    for name, moment in (("time_range start", start), ("time_range end", end)):
        if moment is not None and not isinstance(moment, datetime):
            raise TypeError(f"{name} must be None or a datetime, not {type(moment).__name__}")
    if start is not None and end is not None and to_us(start) > to_us(end):
        raise ValueError(f"time_range start {start} is after its end {end}")
    return (start, end)


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Select stored events.

    ``event_types`` takes patterns (``"agent.*"``); ``time_range`` is
    ``(start, end)``, start inclusive, end exclusive, either may be None;
    ``after_sequence`` returns only later events; ``limit`` caps the count;
    ``descending`` returns the newest first.  Invalid patterns raise
    ``InvalidPatternError`` when the query is built; a field of the wrong
    type raises ``TypeError`` and one out of range (a negative ``limit``, a
    ``time_range`` whose start is after its end) ``ValueError``, naming it.
    A naive ``datetime`` in ``time_range`` means UTC.
    """

    event_types: Sequence[str] | None = None
    time_range: tuple[datetime | None, datetime | None] | None = None
    correlation_id: uuid.UUID | None = None
    source: str | None = None
    after_sequence: int | None = None
    limit: int | None = None
    descending: bool = False

    def __post_init__(self) -> None:
        if self.event_types is not None:
            types = check_strings("event_types", self.event_types, bare=True)
            object.__setattr__(self, "event_types", types)
            for text in types:
                Pattern.parse(text)
        if self.time_range is not None:
            object.__setattr__(self, "time_range", _check_time_range(self.time_range))
        check_uuid("correlation_id", self.correlation_id, optional=True)
        check_str("source", self.source, optional=True, empty=True)
        check_int("after_sequence", self.after_sequence, minimum=0, optional=True)
        check_int("limit", self.limit, minimum=0, optional=True)
        check_bool("descending", self.descending)

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
