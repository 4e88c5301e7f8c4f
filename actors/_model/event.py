"""The event envelope: ``Event``, an immutable, slotted dataclass (SPEC section 2).

Construction validates every field and raises ``InvalidEventError`` (a
``ValueError``) with the reason; ``event_checks`` holds the checks and lists
the decisions where the spec is silent.  ``source`` is at most
``MAX_SOURCE_BYTES`` (65,535) bytes in UTF-8, the most the journal stores.
Equality compares every field; the hash is the hash of ``id``.

``_SETTERS`` is the one table of the fifteen fields' slot setters: ``_fill``
(used by the constructor, the internal copies and the codec's
``build_unchecked``), ``__setstate__`` and ``with_fields`` all go through it.
The functions at the bottom (``stamped``, ``with_fields``, ``expired_unix``,
``build_unchecked``, the two in-place setters) are the layers above's way to
copy, stamp and decode events without re-validating; they are not public API.
"""

from __future__ import annotations

import dataclasses
import time
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

from actors._errors import InvalidEventError
from actors._model.event_checks import (
    EMPTY_METADATA,
    FAST_WALK,
    INT64_MAX,
    INT64_MIN,
    MAX_DATA_DEPTH,
    MAX_DATA_VALUES,
    TYPE_CACHE,
    UINT64_LIMIT,
    check_new_event_type,
    check_priority,
    check_sequence,
    check_tags,
    check_text,
    check_timestamp,
    check_ttl,
    check_uuid_field,
    event_kwargs,
    explain_json,
    freeze_metadata,
    json_room,
    shared_room,
)
from actors._model.uuid7 import uuid7

__all__ = ["EMPTY_METADATA", "MAX_DATA_DEPTH", "MAX_DATA_VALUES", "Event", "JsonValue"]

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"
"""The values ``Event.data`` may hold."""


MAX_SOURCE_BYTES = 0xFFFF
"""The longest ``source`` in UTF-8 bytes: the journal stores its length in 16 bits."""
_SOURCE_CHARS_FIT = MAX_SOURCE_BYTES // 4  # 4 UTF-8 bytes per character at most

_UUID = uuid.UUID
_datetime = datetime
_now = datetime.now
_new = object.__new__


def _check_source_size(source: str) -> None:
    size = len(source.encode("utf-8"))
    if size > MAX_SOURCE_BYTES:
        msg = f"source is {size} bytes in UTF-8; at most {MAX_SOURCE_BYTES} are allowed"
        raise InvalidEventError(msg)


def _empty_metadata() -> Mapping[str, str]:
    return EMPTY_METADATA


class _Wire:
    """The slot where an event keeps its encoded bytes once encoded (not a field).

    Set by the codec's ``encode_shared`` (so the journal and the bridge share
    one encoding) and by the decoder (the bytes that arrived); reset by every
    copy and in-place stamp.  Outside ``dataclasses.fields``, equality and repr.
    """

    __slots__ = ("_wire",)


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Event(_Wire):
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
        metadata: Mapping[str, str] = EMPTY_METADATA,
        sequence: int | None = None,
        origin: str | None = None,
    ) -> None:
        """Validate and store the fields; raise ``InvalidEventError`` on bad input."""
        # Each check has an inline fast path for the common case and a helper
        # that normalises or raises otherwise; construction is on the hot path.
        if event_type.__class__ is not str or event_type not in TYPE_CACHE:
            event_type = check_new_event_type(event_type)
        if data is not None and json_room(data, 0, FAST_WALK) < 0 and shared_room(data) < 0:
            raise InvalidEventError(explain_json(data))
        if id is None:
            id = uuid7()
        elif id.__class__ is not _UUID:
            id = check_uuid_field("id", id)
        if timestamp is None:
            timestamp = _now(UTC)
        elif timestamp.__class__ is not _datetime or timestamp.tzinfo is not UTC or timestamp.fold:
            timestamp = check_timestamp(timestamp)
        if correlation_id is not None and correlation_id.__class__ is not _UUID:
            correlation_id = check_uuid_field("correlation_id", correlation_id)
        if causation_id is not None and causation_id.__class__ is not _UUID:
            causation_id = check_uuid_field("causation_id", causation_id)
        if source is not None:
            check_text("source", source)
            if len(source) > _SOURCE_CHARS_FIT:
                _check_source_size(source)
        if target is not None:
            check_text("target", target)
        if tags.__class__ is not tuple or tags:
            tags = check_tags(tags)
        if priority.__class__ is not int or not INT64_MIN <= priority <= INT64_MAX:
            check_priority(priority)
        if ttl is not None:
            ttl = check_ttl(ttl)
        if language != "python":
            check_text("language", language)
        if metadata is not EMPTY_METADATA:
            metadata = freeze_metadata(metadata)
        if sequence is not None and (
            sequence.__class__ is not int or not 0 <= sequence < UINT64_LIMIT
        ):
            check_sequence(sequence)
        if origin is not None:
            check_text("origin", origin)
        _fill(
            self,
            event_type,
            data,
            id,
            timestamp,
            correlation_id,
            causation_id,
            source,
            target,
            tags,
            priority,
            ttl,
            language,
            metadata,
            sequence,
            origin,
        )

    def __hash__(self) -> int:
        """Hash by ``id``."""
        return hash(self.id)

    def __getstate__(self) -> tuple[Any, ...]:
        """Return the fields for pickle and ``copy`` (metadata as a plain dict)."""
        state = [getattr(self, name) for name in FIELD_NAMES]
        state[12] = dict(state[12])
        return tuple(state)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        """Restore the fields from ``__getstate__`` without re-validating."""
        for setter, value in zip(_SETTERS.values(), state, strict=True):
            setter(self, value)
        _set_wire(self, None)
        metadata = state[12]
        _set_metadata(self, types.MappingProxyType(dict(metadata)) if metadata else EMPTY_METADATA)

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
        kwargs = event_kwargs(d, FIELD_NAMES)
        return cls(**kwargs)

    # -- expiry ---------------------------------------------------------------

    def expired(self, now: datetime | None = None) -> bool:
        """Return whether more than ``ttl`` seconds passed between ``timestamp`` and ``now``.

        ``now`` defaults to the current time and must be timezone-aware (a naive
        one raises ``TypeError``).  Events without ``ttl`` never expire.
        """
        if now is not None and (not isinstance(now, datetime) or now.utcoffset() is None):
            raise TypeError(f"now must be None or a timezone-aware datetime, not {now!r}")
        ttl = self.ttl
        if ttl is None:
            return False
        if now is None:
            return time.time() - self.timestamp.timestamp() > ttl
        return (now - self.timestamp).total_seconds() > ttl


# Slot descriptors' setters: they bypass the frozen ``__setattr__`` and are
# faster than ``object.__setattr__`` (no attribute lookup by name).
_SETTERS = {f.name: Event.__dict__[f.name].__set__ for f in dataclasses.fields(Event)}
FIELD_NAMES = tuple(_SETTERS)
_WIRE_SLOT: Any = _Wire.__dict__["_wire"]
_set_wire: Callable[[Event, bytes | None], None] = _WIRE_SLOT.__set__
_get_wire: Callable[[Event], bytes | None] = _WIRE_SLOT.__get__
(  # in field order: the dataclass keeps it
    _set_event_type,
    _set_data,
    _set_id,
    _set_timestamp,
    _set_correlation_id,
    _set_causation_id,
    _set_source,
    _set_target,
    _set_tags,
    _set_priority,
    _set_ttl,
    _set_language,
    _set_metadata,
    _set_sequence,
    _set_origin,
) = _SETTERS.values()


def _fill(  # noqa: PLR0917 - positional on purpose: the hot path
    new: Event,
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
) -> None:
    """Set the fields of ``new``, taken as they are: no validation, no copies."""
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
    _set_wire(new, None)


def build_unchecked(*fields: Any) -> Event:
    """Return an ``Event`` of the fifteen fields, in field order, taken as they are.

    No validation, no copies: for decoders that already guarantee every
    field's type and range (the codec); ``metadata`` must be a read-only
    mapping nobody else holds.
    """
    new: Event = _new(Event)
    _fill(new, *fields)
    return new


# -- internal copies and stamps (no validation) -------------------------------------------
# For the layers above (the router, the publishing path, subscribers): each
# takes an Event that is already valid and keeps it so.


def set_sequence_in_place(event: Event, sequence: int) -> None:
    """Set ``sequence`` of an event nobody else holds yet (the router's own copies)."""
    _set_sequence(event, sequence)
    _set_wire(event, None)


def stamp_in_place(event: Event, sequence: int, origin: str | None) -> None:
    """Set ``sequence`` and ``origin`` of an event nobody else holds yet (the router's own)."""
    _set_sequence(event, sequence)
    _set_origin(event, origin)
    _set_wire(event, None)


wire_of = _get_wire
"""Return the bytes ``event`` was encoded to or decoded from, or None (the codec's cache)."""
keep_wire = _set_wire
"""Remember ``event``'s bytes (the codec only: they must be exactly ``event`` encoded)."""


def stamped(event: Event, sequence: int | None, origin: str | None) -> Event:
    """Return a copy of ``event`` with ``sequence`` and ``origin`` set, without re-validating."""
    new: Event = _new(Event)
    _fill(
        new,
        event.event_type,
        event.data,
        event.id,
        event.timestamp,
        event.correlation_id,
        event.causation_id,
        event.source,
        event.target,
        event.tags,
        event.priority,
        event.ttl,
        event.language,
        event.metadata,
        sequence,
        origin,
    )
    return new


def with_fields(event: Event, **changes: Any) -> Event:
    """Return a copy of ``event`` with the given fields replaced, without validating them.

    Raise ``TypeError`` for a name that is not a field.
    """
    new = stamped(event, event.sequence, event.origin)
    for name, value in changes.items():
        try:
            setter = _SETTERS[name]
        except KeyError:
            raise TypeError(f"Event has no field {name!r}") from None
        setter(new, value)
    return new


def expired_unix(event: Event, now: float) -> bool:
    """Return ``event.expired()`` for ``now`` given as ``time.time()``; the cheap variant."""
    ttl = event.ttl
    return ttl is not None and now - event.timestamp.timestamp() > ttl


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
