"""The event envelope: ``Event``, an immutable, slotted dataclass (SPEC section 2).

Construction validates every field and raises ``InvalidEventError`` (a
``ValueError``) with the reason.  Decisions where the spec is silent:

- ``data`` is a JSON value built from ``dict`` (``str`` keys), ``list``, ``str``,
  ``int``, ``float``, ``bool`` and ``None`` (subclasses allowed), nested at most
  ``MAX_DATA_DEPTH`` deep.  Tuples, sets, bytes, non-finite floats (NaN, inf)
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

import dataclasses
import math
import time
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

from actors._errors import InvalidEventError
from actors._model.patterns import validate_event_type
from actors._model.uuid7 import uuid7

__all__ = ["EMPTY_METADATA", "MAX_DATA_DEPTH", "Event", "JsonValue"]

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"
"""The values ``Event.data`` may hold."""

MAX_DATA_DEPTH = 200
"""How deeply ``Event.data`` may nest containers (guards against cycles)."""

_INT_LIMIT = 1 << 14_000
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_LIMIT = 1 << 64
_EMPTY_METADATA: Mapping[str, str] = types.MappingProxyType({})
EMPTY_METADATA = _EMPTY_METADATA
"""The shared, empty, read-only ``metadata`` of events without any."""
_FIELD_NAMES = (
    "event_type",
    "data",
    "id",
    "timestamp",
    "correlation_id",
    "causation_id",
    "source",
    "target",
    "tags",
    "priority",
    "ttl",
    "language",
    "metadata",
    "sequence",
    "origin",
)

# Validated event types (plain ``str`` only); cleared when it grows too large.
_TYPE_CACHE: dict[str, None] = {}
_TYPE_CACHE_MAX = 4096

_UUID = uuid.UUID
_datetime = datetime
_now = datetime.now
_new = object.__new__


def _empty_metadata() -> Mapping[str, str]:
    return _EMPTY_METADATA


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Event:
    """One event: a topic, JSON data, and the envelope the bus needs to route it.

    Construct with keywords, e.g. ``Event(event_type="user.login", data={"user_id": "123"})``.
    Raise ``InvalidEventError`` if any field is invalid (see the module docstring).
    """

    event_type: str
    data: JsonValue = None
    id: uuid.UUID = field(default_factory=uuid7)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    source: str | None = None
    target: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    ttl: float | None = None
    language: str = "python"
    metadata: Mapping[str, str] = field(default_factory=_empty_metadata)
    sequence: int | None = None
    origin: str | None = None

    def __init__(
        self,
        *,
        event_type: str,
        data: JsonValue = None,
        id: uuid.UUID | None = None,
        timestamp: datetime | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        source: str | None = None,
        target: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
        ttl: float | None = None,
        language: str = "python",
        metadata: Mapping[str, str] = _EMPTY_METADATA,
        sequence: int | None = None,
        origin: str | None = None,
    ) -> None:
        """Validate and store the fields; raise ``InvalidEventError`` on bad input."""
        # Each check has an inline fast path for the common case and a helper
        # that normalises or raises otherwise; construction is on the hot path.
        if event_type.__class__ is not str or event_type not in _TYPE_CACHE:
            event_type = _check_event_type(event_type)
        if data is not None and not _is_json(data, 0):
            raise InvalidEventError(_explain_json(data))
        if id is None:
            id = uuid7()
        elif id.__class__ is not _UUID:
            id = _check_uuid("id", id)
        if timestamp is None:
            timestamp = _now(UTC)
        elif timestamp.__class__ is not _datetime or timestamp.tzinfo is not UTC or timestamp.fold:
            timestamp = _check_timestamp(timestamp)
        if correlation_id is not None and correlation_id.__class__ is not _UUID:
            correlation_id = _check_uuid("correlation_id", correlation_id)
        if causation_id is not None and causation_id.__class__ is not _UUID:
            causation_id = _check_uuid("causation_id", causation_id)
        if source is not None:
            _check_text("source", source)
        if target is not None:
            _check_text("target", target)
        if tags.__class__ is not tuple or tags:
            tags = _check_tags(tags)
        if priority.__class__ is not int or not _INT64_MIN <= priority <= _INT64_MAX:
            _check_priority(priority)
        if ttl is not None:
            ttl = _check_ttl(ttl)
        if language != "python":
            _check_text("language", language)
        if metadata is not _EMPTY_METADATA:
            metadata = _freeze_metadata(metadata)
        if sequence is not None and (
            sequence.__class__ is not int or not 0 <= sequence < _UINT64_LIMIT
        ):
            _check_sequence(sequence)
        if origin is not None:
            _check_text("origin", origin)
        _set_event_type(self, event_type)
        _set_data(self, data)
        _set_id(self, id)
        _set_timestamp(self, timestamp)
        _set_correlation_id(self, correlation_id)
        _set_causation_id(self, causation_id)
        _set_source(self, source)
        _set_target(self, target)
        _set_tags(self, tags)
        _set_priority(self, priority)
        _set_ttl(self, ttl)
        _set_language(self, language)
        _set_metadata(self, metadata)
        _set_sequence(self, sequence)
        _set_origin(self, origin)

    def __hash__(self) -> int:
        """Hash by ``id``."""
        return hash(self.id)

    def __getstate__(self) -> tuple[Any, ...]:
        """Return the fields for pickle and ``copy`` (metadata as a plain dict)."""
        state = [getattr(self, name) for name in _FIELD_NAMES]
        state[12] = dict(state[12])
        return tuple(state)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        """Restore the fields from ``__getstate__`` without re-validating."""
        for setter, value in zip(_SETTERS.values(), state, strict=True):
            setter(self, value)
        metadata = state[12]
        _set_metadata(self, types.MappingProxyType(dict(metadata)) if metadata else _EMPTY_METADATA)

    # -- serialisation --------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Encode as a protobuf ``llmspell.events.v1.Event``.

        Raise ``InvalidEventError`` if ``data`` was mutated into a non-JSON value.
        """
        return _Codec.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Event:
        """Decode bytes made by ``to_bytes``.

        Raise ``InvalidEventError`` if they are malformed, of another schema
        version, or describe an invalid event.
        """
        return _Codec.decode(data)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain JSON-able dict of every field.

        Ids are strings, ``timestamp`` is ISO 8601, ``tags`` a list, ``metadata``
        a dict.  ``data`` is shared with the event, not copied.
        """
        cid = self.correlation_id
        caid = self.causation_id
        return {
            "event_type": self.event_type,
            "data": self.data,
            "id": str(self.id),
            "timestamp": self.timestamp.isoformat(),
            "correlation_id": None if cid is None else str(cid),
            "causation_id": None if caid is None else str(caid),
            "source": self.source,
            "target": self.target,
            "tags": list(self.tags),
            "priority": self.priority,
            "ttl": self.ttl,
            "language": self.language,
            "metadata": dict(self.metadata),
            "sequence": self.sequence,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """Build an event from a dict like ``to_dict`` returns.

        Missing keys take their defaults (only ``event_type`` is required); ids
        may be strings or UUIDs, ``timestamp`` an ISO 8601 string or a datetime.
        Raise ``InvalidEventError`` on unknown keys or any invalid value.
        """
        if not isinstance(d, Mapping):
            raise InvalidEventError(f"event dict must be a mapping, not {type(d).__name__}")
        unknown = d.keys() - _SETTERS.keys()
        if unknown:
            raise InvalidEventError(f"unknown event fields: {sorted(map(str, unknown))}")
        if "event_type" not in d:
            raise InvalidEventError("event dict has no 'event_type'")
        kwargs = dict(d)
        for name in ("id", "correlation_id", "causation_id"):
            value = kwargs.get(name)
            if isinstance(value, str):
                kwargs[name] = _parse_uuid(name, value)
        stamp = kwargs.get("timestamp")
        if isinstance(stamp, str):
            try:
                kwargs["timestamp"] = datetime.fromisoformat(stamp)
            except ValueError as exc:
                raise InvalidEventError(f"timestamp is not ISO 8601: {stamp!r}") from exc
        metadata = kwargs.get("metadata")
        if metadata is None:
            kwargs.pop("metadata", None)
        tags = kwargs.get("tags")
        if tags is None:
            kwargs.pop("tags", None)
        return cls(**kwargs)

    # -- expiry ---------------------------------------------------------------

    def expired(self, now: datetime | None = None) -> bool:
        """Return whether more than ``ttl`` seconds passed between ``timestamp`` and ``now``.

        ``now`` defaults to the current time and must be timezone-aware (a naive
        one raises ``TypeError``).  Events without ``ttl`` never expire.
        """
        ttl = self.ttl
        if ttl is None:
            return False
        if now is None:
            return time.time() - self.timestamp.timestamp() > ttl
        return (now - self.timestamp).total_seconds() > ttl

    def _expired_unix(self, now: float) -> bool:
        """Return ``expired()`` for ``now`` given as ``time.time()``; the cheap variant."""
        ttl = self.ttl
        return ttl is not None and now - self.timestamp.timestamp() > ttl

    # -- internal copies (no validation) ---------------------------------------

    def _stamped(self, sequence: int | None, origin: str | None) -> Event:
        """Return a copy with ``sequence`` and ``origin`` set, without re-validating."""
        new: Event = _new(Event)
        _set_event_type(new, self.event_type)
        _set_data(new, self.data)
        _set_id(new, self.id)
        _set_timestamp(new, self.timestamp)
        _set_correlation_id(new, self.correlation_id)
        _set_causation_id(new, self.causation_id)
        _set_source(new, self.source)
        _set_target(new, self.target)
        _set_tags(new, self.tags)
        _set_priority(new, self.priority)
        _set_ttl(new, self.ttl)
        _set_language(new, self.language)
        _set_metadata(new, self.metadata)
        _set_sequence(new, sequence)
        _set_origin(new, origin)
        return new

    def _with(self, **changes: Any) -> Event:
        """Return a copy with the given fields replaced, without validating them.

        Raise ``TypeError`` for a name that is not a field.
        """
        new = self._stamped(self.sequence, self.origin)
        for name, value in changes.items():
            try:
                setter = _SETTERS[name]
            except KeyError:
                raise TypeError(f"Event has no field {name!r}") from None
            setter(new, value)
        return new


# Slot descriptors' setters: they bypass the frozen ``__setattr__`` and are
# faster than ``object.__setattr__`` (no attribute lookup by name).
_SETTERS = {f.name: Event.__dict__[f.name].__set__ for f in dataclasses.fields(Event)}
assert tuple(_SETTERS) == _FIELD_NAMES
_set_event_type = _SETTERS["event_type"]
_set_data = _SETTERS["data"]
_set_id = _SETTERS["id"]
_set_timestamp = _SETTERS["timestamp"]
_set_correlation_id = _SETTERS["correlation_id"]
_set_causation_id = _SETTERS["causation_id"]
_set_source = _SETTERS["source"]
_set_target = _SETTERS["target"]
_set_tags = _SETTERS["tags"]
_set_priority = _SETTERS["priority"]
_set_ttl = _SETTERS["ttl"]
_set_language = _SETTERS["language"]
_set_metadata = _SETTERS["metadata"]
_set_sequence = _SETTERS["sequence"]
_set_origin = _SETTERS["origin"]


def _build(  # noqa: PLR0917 - positional on purpose: the decoder's hot path
    event_type: str,
    data: JsonValue,
    id: uuid.UUID,
    timestamp: datetime,
    correlation_id: uuid.UUID | None,
    causation_id: uuid.UUID | None,
    source: str | None,
    target: str | None,
    tags: tuple[str, ...],
    priority: int,
    ttl: float | None,
    language: str,
    metadata: Mapping[str, str],
    sequence: int | None,
    origin: str | None,
) -> Event:
    """Return an ``Event`` of these fields, taken as they are: no validation, no copies.

    For decoders that already guarantee every field's type and range (the
    codec); ``metadata`` must be a read-only mapping nobody else holds.
    """
    new: Event = _new(Event)
    _set_event_type(new, event_type)
    _set_data(new, data)
    _set_id(new, id)
    _set_timestamp(new, timestamp)
    _set_correlation_id(new, correlation_id)
    _set_causation_id(new, causation_id)
    _set_source(new, source)
    _set_target(new, target)
    _set_tags(new, tags)
    _set_priority(new, priority)
    _set_ttl(new, ttl)
    _set_language(new, language)
    _set_metadata(new, metadata)
    _set_sequence(new, sequence)
    _set_origin(new, origin)
    return new


def check_event_type(event_type: object) -> str:
    """Return ``event_type`` as a valid plain ``str``; raise ``InvalidEventError`` if invalid."""
    if event_type.__class__ is str and event_type in _TYPE_CACHE:
        return event_type
    return _check_event_type(event_type)


def check_data(data: object) -> None:
    """Raise ``InvalidEventError`` with the reason if ``data`` is not a JSON value."""
    if data is not None and not _is_json(data, 0):
        raise InvalidEventError(_explain_json(data))


def check_ttl(ttl: object) -> float:
    """Return ``ttl`` as a float; raise ``InvalidEventError`` unless finite and ``>= 0``."""
    return _check_ttl(ttl)


# -- field checks (slow paths) ------------------------------------------------


def _check_event_type(event_type: object) -> str:
    """Validate an event type not yet in the cache; return it as a plain str."""
    checked = validate_event_type(event_type)
    if checked.__class__ is not str:
        checked = str.__str__(checked)
    _check_text("event_type", checked)
    if len(_TYPE_CACHE) >= _TYPE_CACHE_MAX:
        _TYPE_CACHE.clear()
    _TYPE_CACHE[checked] = None
    return checked


def _check_text(name: str, value: object) -> None:
    if value.__class__ is not str and not isinstance(value, str):
        raise InvalidEventError(f"{name} must be a str, not {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEventError(f"{name} is not valid Unicode: {exc}") from None


def _check_uuid(name: str, value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    raise InvalidEventError(f"{name} must be a uuid.UUID, not {type(value).__name__}")


def _parse_uuid(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidEventError(f"{name} is not a UUID: {value!r}") from None


def _check_timestamp(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidEventError(f"timestamp must be a datetime, not {type(value).__name__}")
    if value.utcoffset() is None:
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


def _check_tags(tags: object) -> tuple[str, ...]:
    if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
        raise InvalidEventError(f"tags must be an iterable of str, not {type(tags).__name__}")
    result = tuple(tags)
    for tag in result:
        _check_text("tag", tag)
    return result


def _check_priority(priority: object) -> None:
    if priority.__class__ is bool or not isinstance(priority, int):
        raise InvalidEventError(f"priority must be an int, not {type(priority).__name__}")
    if not _INT64_MIN <= priority <= _INT64_MAX:
        raise InvalidEventError(f"priority must fit a signed 64-bit integer: {priority}")


def _check_ttl(ttl: object) -> float:
    if ttl.__class__ is bool or not isinstance(ttl, int | float):
        raise InvalidEventError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    try:
        value = float(ttl)
    except OverflowError:
        raise InvalidEventError(f"ttl is too large: {ttl}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidEventError(f"ttl must be finite and >= 0: {ttl}")
    return value


def _check_sequence(sequence: object) -> None:
    if sequence.__class__ is bool or not isinstance(sequence, int):
        raise InvalidEventError(f"sequence must be an int, not {type(sequence).__name__}")
    if not 0 <= sequence < _UINT64_LIMIT:
        raise InvalidEventError(f"sequence must be in [0, 2**64): {sequence}")


def _freeze_metadata(metadata: object) -> Mapping[str, str]:
    if not isinstance(metadata, Mapping):
        raise InvalidEventError(f"metadata must be a mapping, not {type(metadata).__name__}")
    copy = dict(metadata)
    if not copy:
        return _EMPTY_METADATA
    for key, value in copy.items():
        _check_text("metadata key", key)
        _check_text(f"metadata[{key!r}]", value)
    return types.MappingProxyType(copy)


# -- JSON data ------------------------------------------------------------------


def _is_json(value: Any, depth: int) -> bool:  # noqa: PLR0911 - flat dispatch is the fast path
    """Return whether ``value`` is an exactly round-tripping JSON value (no reason)."""
    cls = value.__class__
    if cls is str or cls is bool or value is None:
        return True
    if cls is int:
        return -_INT_LIMIT < value < _INT_LIMIT  # type: ignore[no-any-return]
    if cls is float:
        return value - value == 0.0  # type: ignore[no-any-return] # False for inf and NaN
    if depth >= MAX_DATA_DEPTH:
        return False
    if cls is dict:
        for key, item in value.items():
            if key.__class__ is not str:
                return False
            cls = item.__class__
            if cls is str or cls is bool or item is None:
                continue
            if cls is int and -_INT_LIMIT < item < _INT_LIMIT:
                continue
            if not _is_json(item, depth + 1):
                return False
        return True
    if cls is list:
        for item in value:  # noqa: SIM110 - a loop is faster than all() over a generator
            if not _is_json(item, depth + 1):
                return False
        return True
    return _is_json_subclass(value, depth)


def _is_json_subclass(value: object, depth: int) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, int):
        return -_INT_LIMIT < value < _INT_LIMIT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _is_json(item, depth + 1) for key, item in value.items()
        )
    if isinstance(value, list):
        return all(_is_json(item, depth + 1) for item in value)
    return False


def _explain_json(data: object) -> str:  # noqa: PLR0911 - one return per kind of fault
    """Return why ``data`` is not a JSON value, naming the first offending path."""
    stack: list[tuple[str, object, int]] = [("data", data, 0)]
    while stack:
        path, value, depth = stack.pop()
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
    return "data is not a JSON value"  # pragma: no cover - _is_json and this disagree


# At the bottom: the codec imports this module's names to build events.


def _no_codec(_value: object) -> Any:
    raise RuntimeError("no event codec installed: import actors first")


class _Codec:
    """The protobuf codec, installed by ``actors._codec`` when it is imported.

    The codec lives a layer above the model (it builds Events), and ``import
    actors`` always imports it; this slot keeps the model free of an upward
    import.
    """

    encode: Callable[[Event], bytes] = _no_codec
    decode: Callable[[bytes], Event] = _no_codec


def install_codec(encode: Callable[[Event], bytes], decode: Callable[[bytes], Event]) -> None:
    """Give ``Event.to_bytes``/``from_bytes`` their codec (called by ``actors._codec``)."""
    _Codec.encode = staticmethod(encode)
    _Codec.decode = staticmethod(decode)
