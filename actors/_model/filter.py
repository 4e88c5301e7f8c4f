"""Declarative event filters (they can cross processes) and predicates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from actors._model.event_checks import is_json
from actors._model.guards import check_int, check_mapping, check_str, check_strings

if TYPE_CHECKING:
    from actors._model.event import Event

__all__ = ["EventFilter", "FilterLike", "as_predicate"]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Match events by source, tags, priority and top-level data values.

    Every given condition must hold: ``source`` equals, at least one of
    ``tags_any`` is among the event's tags, ``priority >= min_priority``, and
    ``data`` is a dict whose items include every item of ``data_equals``
    (compared as JSON values: ``true`` is not ``1``, ``1`` is ``1.0``).
    ``tags_any`` takes an iterable of tags or one tag as a bare ``str``.
    Raise ``TypeError`` naming the field for a value of the wrong type
    (``min_priority="5"``, a ``data_equals`` that is not a str-keyed mapping)
    and ``ValueError`` for a ``data_equals`` value that is not JSON (a set,
    NaN: no event's data could hold it, and the filter could not cross).
    ``data_equals`` is kept as a read-only copy: a filter cannot change
    behind the subscriptions that use it.
    """

    source: str | None = None
    tags_any: tuple[str, ...] | None = None
    min_priority: int | None = None
    data_equals: Mapping[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        check_str("source", self.source, optional=True, empty=True)
        if self.tags_any is not None:
            # A bare str is one tag (as EventQuery takes one pattern), never its letters.
            object.__setattr__(
                self, "tags_any", check_strings("tags_any", self.tags_any, bare=True)
            )
        check_int("min_priority", self.min_priority, optional=True)
        if self.data_equals is not None:
            check_mapping("data_equals", self.data_equals, keys=str)
            wanted = dict(self.data_equals)
            for key, value in wanted.items():
                if not is_json(value, 1):
                    raise ValueError(
                        f"data_equals[{key!r}] is not a JSON value: {type(value).__name__}"
                    )
            object.__setattr__(self, "data_equals", MappingProxyType(wanted))

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only view does not pickle: the filter travels as its fields.
        wanted = dict(self.data_equals) if self.data_equals is not None else None
        return (EventFilter, (self.source, self.tags_any, self.min_priority, wanted))

    def __call__(self, event: Event) -> bool:
        """Return whether ``event`` passes every condition."""
        if self.source is not None and event.source != self.source:
            return False
        if self.tags_any is not None and not any(t in event.tags for t in self.tags_any):
            return False
        if self.min_priority is not None and event.priority < self.min_priority:
            return False
        if self.data_equals:
            return _includes(event.data, self.data_equals)
        return True

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (to send the filter to another process)."""
        return {
            "source": self.source,
            "tags_any": list(self.tags_any) if self.tags_any is not None else None,
            "min_priority": self.min_priority,
            "data_equals": dict(self.data_equals) if self.data_equals is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EventFilter:
        """Build a filter from ``to_dict`` output; ``ValueError`` names a key it does not know."""
        if not isinstance(d, Mapping):
            raise TypeError(f"d must be a mapping, not {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:
            raise ValueError(f"not fields of an EventFilter: {', '.join(unknown)}")
        return cls(
            source=d.get("source"),
            tags_any=d.get("tags_any"),
            min_priority=d.get("min_priority"),
            data_equals=d.get("data_equals"),
        )


_FIELDS = frozenset({"source", "tags_any", "min_priority", "data_equals"})


def _includes(data: Any, wanted: Mapping[str, Any]) -> bool:
    """Return whether ``data`` is a dict holding every item of ``wanted`` (as JSON values)."""
    if not isinstance(data, dict):
        return False
    missing = object()
    for key, value in wanted.items():
        got = data.get(key, missing)
        if got != value:
            return False
        # True == 1 in Python, not in JSON: look closer where they may differ.
        if (type(got) is not type(value) or isinstance(value, dict | list)) and not _json_equal(
            got, value
        ):
            return False
    return True


def _json_equal(a: Any, b: Any) -> bool:
    """Return whether ``a`` and ``b`` are the same JSON value.

    Python's ``==`` holds ``True == 1`` and ``False == 0.0``; JSON's
    ``true`` is not the number 1.  Numbers compare by value (``1 == 1.0``,
    as every JSON decoder may read either), containers item by item.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_json_equal(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


FilterLike = EventFilter | Callable[["Event"], bool]


def as_predicate(flt: FilterLike | None) -> Callable[[Event], bool] | None:
    """Return ``flt`` as a callable (``EventFilter`` is one already), or None."""
    if flt is None:
        return None
    if not callable(flt):
        raise TypeError(f"filter must be an EventFilter or a callable, not {type(flt).__name__}")
    return flt
