"""The checks of ``Event``'s fields; each raises ``InvalidEventError`` with the reason.

``Event.__init__`` runs an inline fast path for the common case and calls
these to normalise or refuse anything else; the codec calls the few it
needs.  Decisions where the spec is silent:

- ``data`` is a JSON value built from ``dict`` (``str`` keys), ``list``, ``str``,
  ``int``, ``float``, ``bool`` and ``None`` (subclasses allowed), nested at most
  ``MAX_DATA_DEPTH`` deep, its lists and dicts holding at most
  ``MAX_DATA_VALUES`` (10,000,000) values in all, a list or dict counted once
  for every place it appears (so shared parts cannot make the check, or the
  encoding, take exponential time).  Tuples, sets, bytes, non-finite floats (NaN, inf)
  and ints of more than 14,000 bits (about 4,200 digits, under Python's
  int-to-str limit) are rejected, because they would not round-trip exactly.
  ``data`` is *not* copied: the event shares it, so do not mutate it afterwards.
- ``id``, ``correlation_id`` and ``causation_id`` must be ``uuid.UUID``
  instances; strings are rejected (``from_dict`` parses strings).
- ``timestamp`` must be timezone-aware; it is converted to UTC (``datetime.UTC``).
  Passing ``id=None`` or ``timestamp=None`` means "new" / "now".
- ``tags`` accepts any iterable of ``str`` except a bare ``str``; stored as a tuple.
- ``priority`` is an ``int`` (not ``bool``) that fits a signed 64-bit integer;
  ``sequence`` an ``int`` in ``[0, 2**64)``.
- ``ttl`` is a finite number ``>= 0`` (stored as ``float``); an event is expired
  once strictly more than ``ttl`` seconds have passed since ``timestamp``.
- ``metadata`` is copied into a read-only ``types.MappingProxyType``; keys and
  values must be ``str``.
- Strings must be encodable as UTF-8 (no lone surrogates), since protobuf
  requires it.
- Equality compares every field; the hash is the hash of ``id``.
"""

from __future__ import annotations

import math
import types
import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from actors._errors import InvalidEventError
from actors._model.patterns import validate_event_type

__all__ = [
    "EMPTY_METADATA",
    "FAST_WALK",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DATA_DEPTH",
    "MAX_DATA_VALUES",
    "TYPE_CACHE",
    "UINT64_LIMIT",
    "check_data",
    "check_event_type",
    "check_new_event_type",
    "check_priority",
    "check_sequence",
    "check_tags",
    "check_text",
    "check_timestamp",
    "check_ttl",
    "check_uuid_field",
    "event_kwargs",
    "explain_json",
    "freeze_metadata",
    "is_json",
    "json_room",
    "parse_uuid",
    "shared_room",
]

MAX_DATA_DEPTH = 200
"""How deeply ``Event.data`` may nest containers (guards against cycles)."""

MAX_DATA_VALUES = 10_000_000
"""How many values ``Event.data``'s lists and dicts may hold in all.

A list or dict counts once for every place it appears, as it would in the
JSON text: shared parts are no way around the limit.
"""

_INT_LIMIT = 1 << 14_000
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_LIMIT = 1 << 64
EMPTY_METADATA: Mapping[str, str] = types.MappingProxyType({})
"""The shared, empty, read-only ``metadata`` of events without any."""

# Validated event types (plain ``str`` only); cleared when it grows too large.
TYPE_CACHE: dict[str, None] = {}
TYPE_CACHE_MAX = 4096

_datetime = datetime


def check_event_type(event_type: object) -> str:
    """Return ``event_type`` as a valid plain ``str``; raise ``InvalidEventError`` if invalid."""
    if event_type.__class__ is str and event_type in TYPE_CACHE:
        return event_type
    return check_new_event_type(event_type)


def check_data(data: object) -> None:
    """Raise ``InvalidEventError`` with the reason if ``data`` is not a JSON value."""
    if data is not None and json_room(data, 0, FAST_WALK) < 0 and shared_room(data) < 0:
        raise InvalidEventError(explain_json(data))


# -- field checks (slow paths) ------------------------------------------------


def check_new_event_type(event_type: object) -> str:
    """Validate an event type not yet in the cache; return it as a plain str."""
    checked = validate_event_type(event_type)
    if checked.__class__ is not str:
        checked = str.__str__(checked)
    check_text("event_type", checked)
    if len(TYPE_CACHE) >= TYPE_CACHE_MAX:
        TYPE_CACHE.clear()
    TYPE_CACHE[checked] = None
    return checked


def check_text(name: str, value: object) -> None:
    if value.__class__ is not str and not isinstance(value, str):
        raise InvalidEventError(f"{name} must be a str, not {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEventError(f"{name} is not valid Unicode: {exc}") from None


def check_uuid_field(name: str, value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    raise InvalidEventError(f"{name} must be a uuid.UUID, not {type(value).__name__}")


def parse_uuid(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidEventError(f"{name} is not a UUID: {value!r}") from None


def check_timestamp(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidEventError(f"timestamp must be a datetime, not {type(value).__name__}")
    try:
        offset = value.utcoffset()
    except (TypeError, ValueError) as exc:  # a tzinfo that breaks datetime's rules
        raise InvalidEventError(f"timestamp has an invalid time zone: {exc}") from None
    if offset is None:
        raise InvalidEventError(f"timestamp must be timezone-aware: {value!r}")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise InvalidEventError(f"timestamp is out of range in UTC: {value!r}") from None
    # Drop subclasses (and anything they carry beyond microseconds) and ``fold``.
    return _datetime(
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
        tzinfo=UTC,
    )


def check_tags(tags: object) -> tuple[str, ...]:
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise InvalidEventError(f"tags must be an iterable of str, not {type(tags).__name__}")
    result = tuple(tags)
    for tag in result:
        check_text("tag", tag)
    return result


def check_priority(priority: object) -> None:
    if priority.__class__ is bool or not isinstance(priority, int):
        raise InvalidEventError(f"priority must be an int, not {type(priority).__name__}")
    if not INT64_MIN <= priority <= INT64_MAX:
        raise InvalidEventError(f"priority must fit a signed 64-bit integer: {priority}")


def check_ttl(ttl: object) -> float:
    """Return ``ttl`` as a float; raise ``InvalidEventError`` unless finite and ``>= 0``."""
    if ttl.__class__ is bool or not isinstance(ttl, int | float):
        raise InvalidEventError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    try:
        value = float(ttl)
    except OverflowError:
        raise InvalidEventError(f"ttl is too large: {ttl}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidEventError(f"ttl must be finite and >= 0: {ttl}")
    return value


def check_sequence(sequence: object) -> None:
    if sequence.__class__ is bool or not isinstance(sequence, int):
        raise InvalidEventError(f"sequence must be an int, not {type(sequence).__name__}")
    if not 0 <= sequence < UINT64_LIMIT:
        raise InvalidEventError(f"sequence must be in [0, 2**64): {sequence}")


def freeze_metadata(metadata: object) -> Mapping[str, str]:
    if not isinstance(metadata, Mapping):
        raise InvalidEventError(f"metadata must be a mapping, not {type(metadata).__name__}")
    copy = dict(metadata)
    if not copy:
        return EMPTY_METADATA
    for key, value in copy.items():
        check_text("metadata key", key)
        check_text(f"metadata[{key!r}]", value)
    return types.MappingProxyType(copy)


def event_kwargs(d: object, names: Collection[str]) -> dict[str, Any]:
    """Return ``Event`` keyword arguments from a dict like ``Event.to_dict`` returns.

    Parse ids given as strings and an ISO 8601 ``timestamp``; drop a None
    ``metadata`` or ``tags``.  Raise ``InvalidEventError`` for a non-mapping,
    unknown keys (not in ``names``), or no ``event_type``.
    """
    if not isinstance(d, Mapping):
        raise InvalidEventError(f"event dict must be a mapping, not {type(d).__name__}")
    unknown = d.keys() - set(names)
    if unknown:
        raise InvalidEventError(f"unknown event fields: {sorted(map(str, unknown))}")
    if "event_type" not in d:
        raise InvalidEventError("event dict has no 'event_type'")
    kwargs = dict(d)
    for name in ("id", "correlation_id", "causation_id"):
        value = kwargs.get(name)
        if isinstance(value, str):
            kwargs[name] = parse_uuid(name, value)
    stamp = kwargs.get("timestamp")
    if isinstance(stamp, str):
        try:
            kwargs["timestamp"] = datetime.fromisoformat(stamp)
        except ValueError as exc:
            raise InvalidEventError(f"timestamp is not ISO 8601: {stamp!r}") from exc
    for name in ("metadata", "tags"):
        if kwargs.get(name, ...) is None:
            del kwargs[name]
    return kwargs


# -- JSON data ------------------------------------------------------------------


def is_json(value: Any, depth: int = 0) -> bool:
    """Return whether ``value`` is an exactly round-tripping JSON value (no reason)."""
    return json_room(value, depth, FAST_WALK) >= 0 or shared_room(value, depth) >= 0


FAST_WALK = 100_000
"""The values ``json_room`` walks before ``shared_room`` takes over.

Data of up to this many values (nearly all) is checked by the plain walk
alone; beyond it, or if it finds a fault, the walk that counts a shared part
once per place without walking it again decides (and the bound is
``MAX_DATA_VALUES``).
"""


def shared_room(value: Any, depth: int = 0, room: int = MAX_DATA_VALUES) -> int:
    """Return ``room`` less the values inside ``value``, or -1 (``json_room``'s answer).

    A list or dict met again costs what it cost the first time, without a
    second walk: ``a = [a, a]`` forty times over is refused in forty steps,
    where the plain walk would take ``MAX_DATA_VALUES`` of them.  Slower
    than ``json_room`` per value (a dict lookup per list or dict).
    """
    memo: dict[int, tuple[int, int]] = {}  # id -> (values inside, levels of nesting)
    return _shared(value, depth, room, memo)[0]


def _shared(  # noqa: PLR0911 - one return per fault
    value: Any, depth: int, room: int, memo: dict[int, tuple[int, int]]
) -> tuple[int, int]:
    """Return (room left or -1, levels of list/dict nesting in ``value``, 0 for a scalar)."""
    if not isinstance(value, dict | list):
        return json_room(value, depth, room), 0
    if depth >= MAX_DATA_DEPTH:
        return -1, 0
    key = id(value)  # stable: ``value`` is alive for the whole check
    known = memo.get(key)
    if known is not None:
        cost, height = known
        room -= cost
        if room < 0 or depth + height > MAX_DATA_DEPTH:
            return -1, 0
        return room, height
    before = room
    room -= len(value)
    if room < 0:
        return -1, 0
    height = 1
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return -1, 0
        items: Iterable[Any] = value.values()
    else:
        items = value
    for item in items:
        room, inner = _shared(item, depth + 1, room, memo)
        if room < 0:
            return -1, 0
        height = max(height, inner + 1)
    memo[key] = (before - room, height)
    return room, height


def json_room(value: Any, depth: int, room: int) -> int:  # noqa: PLR0911 - flat dispatch
    """Return ``room`` less the values inside ``value``, or -1 if it is not JSON data.

    -1 too when ``value`` holds more than ``room`` values, counting a list or
    dict once for every place it appears: a structure that shares its parts
    (``a = [a, a]`` over and over) is small in memory but its JSON text, and
    a walk of it, grow exponentially with its depth.
    """
    cls = value.__class__
    if cls is str or cls is bool or value is None:
        return room
    if cls is int:
        return room if -_INT_LIMIT < value < _INT_LIMIT else -1
    if cls is float:
        return room if value - value == 0.0 else -1  # NaN and inf: not 0.0
    if depth >= MAX_DATA_DEPTH:
        return -1
    if cls is dict:
        room -= len(value)
        if room < 0:
            return -1
        for key, item in value.items():
            if key.__class__ is not str and not isinstance(key, str):
                return -1
            cls = item.__class__
            if cls is str or cls is bool or item is None:
                continue
            if cls is int and -_INT_LIMIT < item < _INT_LIMIT:
                continue
            room = json_room(item, depth + 1, room)
            if room < 0:
                return -1
        return room
    if cls is list:
        room -= len(value)
        if room < 0:
            return -1
        for item in value:
            room = json_room(item, depth + 1, room)
            if room < 0:
                return -1
        return room
    return _subclass_room(value, depth, room)


def _subclass_room(value: object, depth: int, room: int) -> int:  # noqa: PLR0911
    if isinstance(value, str):
        return room
    if isinstance(value, int):
        return room if -_INT_LIMIT < value < _INT_LIMIT else -1
    if isinstance(value, float):
        return room if math.isfinite(value) else -1
    if isinstance(value, dict):
        room -= len(value)
        for key, item in value.items():
            if room < 0 or not isinstance(key, str):
                return -1
            room = json_room(item, depth + 1, room)
        return room
    if isinstance(value, list):
        room -= len(value)
        for item in value:
            if room < 0:
                return -1
            room = json_room(item, depth + 1, room)
        return room
    return -1


def explain_json(data: object) -> str:  # noqa: PLR0911 - one return per kind of fault
    """Return why ``data`` is not a JSON value, naming the first offending path.

    A list or dict met again is walked again only deeper than before (where
    it may nest too deep), so shared parts cost one walk each; if no value
    is at fault, what is left is the count (see ``shared_room``).
    """
    too_many = (
        f"data holds more than {MAX_DATA_VALUES:,} values (a list or dict "
        "counts once for every place it appears)"
    )
    stack: list[tuple[str, object, int]] = [("data", data, 0)]
    room = MAX_DATA_VALUES
    walked: dict[int, int] = {}  # id of a list or dict -> the deepest it was walked at
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, dict | list):
            if walked.get(id(value), -1) >= depth:
                continue  # checked already, at this depth or deeper
            walked[id(value)] = depth
            room -= len(value)
            if room < 0:
                return too_many
        if isinstance(value, str | bool) or value is None:
            continue
        if isinstance(value, int):
            if not -_INT_LIMIT < value < _INT_LIMIT:
                return f"{path}: int of {value.bit_length()} bits is too large"
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                return f"{path}: {value!r} is not a finite float"
            continue
        if isinstance(value, dict | list) and depth >= MAX_DATA_DEPTH:
            return f"{path}: nested deeper than {MAX_DATA_DEPTH} (or cyclic)"
        if isinstance(value, dict):
            children: list[tuple[str, object, int]] = []
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{path}: dict key {key!r} is not a str"
                children.append((f"{path}[{key!r}]", item, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", value[i], depth + 1) for i in reversed(range(len(value))))
        elif isinstance(value, tuple):
            return f"{path}: tuple is not a JSON value; use a list"
        else:
            return f"{path}: {type(value).__name__} is not a JSON value"
    if shared_room(data) < 0:  # each value is JSON: the count, shared parts counted per place
        return too_many
    return "data is not a JSON value"  # pragma: no cover - the checks and this disagree
