"""Event <-> protobuf (``llmspell.events.v1``), the byte form of ``actors.Event``.

Pure functions; the schema is ``proto/llmspell/events/v1/events.proto``.

- ``id``, ``correlation_id`` and ``causation_id`` are 16 big-endian bytes (empty
  means None); ``timestamp`` is integer microseconds since the Unix epoch, so
  every ``datetime`` round-trips exactly.
- ``data`` is compact, ASCII-escaped JSON (``null`` for None).  JSON keeps ints
  and floats distinct and exact.  An empty ``data_json`` decodes as None.
- Bytes are deterministic (``metadata`` entries sorted by key): the same
  event encodes to the same bytes.  ``data`` is written as it is held, so
  events equal in Python whose data differs in ways JSON tells apart (the
  order of a dict's keys, ``1`` and ``1.0``) encode to different bytes.
- ``EventBatch`` bytes are the concatenation of each event's bytes behind a
  field tag and length, so a batch encodes every event exactly once.
- Encoded once per process: ``encode_shared`` keeps an event's bytes on the
  event (a slot outside its fields), so the journal and the bridge share one
  encoding; the decoders keep the bytes that arrived the same way, and
  ``restamp_wire`` carries them to the router's re-sequenced copy by
  appending the new ``sequence`` (protobuf: the last value of a scalar field
  wins).  ``encode_event`` (``Event.to_bytes``) always encodes afresh.

Every decoding failure raises ``InvalidEventError`` with the reason: malformed
protobuf, another ``schema_version``, bad JSON or an invalid field value.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from actors._codec._pb.llmspell.events.v1 import events_pb2
from actors._errors import InvalidEventError
from actors._model.event import (
    EMPTY_METADATA,
    MAX_SOURCE_BYTES,
    Event,
    build_unchecked,
    keep_wire,
    set_sequence_in_place,
    wire_of,
)
from actors._model.event_checks import MAX_DATA_DEPTH
from actors._model.event_checks import check_data as _check_data
from actors._model.event_checks import check_event_type as _check_event_type
from actors._model.event_checks import check_ttl as _check_ttl
from actors._model.uuid7 import uuid_from_int

__all__ = [
    "SCHEMA_VERSION",
    "NotTextError",
    "chunk_of",
    "decode_batch",
    "decode_event",
    "encode_batch",
    "encode_event",
    "encode_shared",
    "event_to_message",
    "finite_float",
    "message_to_event",
    "restamp_in_place",
    "restamp_wire",
]

SCHEMA_VERSION = 1
"""The ``schema_version`` this module writes and the only one it reads."""

_PbEvent: Any = events_pb2.Event
_PbBatch: Any = events_pb2.EventBatch
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_timedelta = timedelta
_NULL = b"null"


def _refuse_default(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


class NotTextError(InvalidEventError):
    """An event cannot be encoded because a string of it is not Unicode text (a surrogate).

    Apart from the other encoding failures (data changed after the event
    was built, a message past protobuf's 2 GiB): the event is fine in its
    own process, and only what must carry its bytes refuses it.
    """


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in event data")


# A reusable C encoder / scanner: ``json.dumps`` and ``json.loads`` rebuild
# theirs on every call, which costs more than the encoding of a small event.
# Text is written as it is, not as ``\uXXXX`` escapes, and the UTF-8 encoding
# that follows is strict: a surrogate in ``data``, which JSON could not give
# back exactly (an escaped high and low surrogate read back as the one
# character they spell), fails the encoding with ``InvalidEventError``.
_dumps: Callable[[object], str]
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    _c_encode = _c_make_encoder(
        None,  # markers: no cycle check, validation bounds the depth
        _refuse_default,
        json.encoder.encode_basestring,
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    def _dumps(value: object) -> str:
        return "".join(_c_encode(value, 0))

else:  # pragma: no cover - interpreters without the C accelerator
    _dumps = json.JSONEncoder(
        separators=(",", ":"),
        allow_nan=False,
        check_circular=False,
        ensure_ascii=False,
        default=_refuse_default,
    ).encode


def finite_float(text: str) -> float:
    """Read a JSON number as a float; ``ValueError`` for one past the float range (``1e999``,
    which Python's json reads as infinity and no event's data can hold)."""
    value = float(text)
    if value - value != 0.0:  # inf: a literal like 1e999
        raise ValueError(f"{text} is out of the range of a finite number")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=finite_float)
# Shorter JSON text cannot nest MAX_DATA_DEPTH deep nor hold an int past the
# model's limit, and floats are finite by the hook above: it needs no check.
_UNCHECKED_BELOW = 2 * MAX_DATA_DEPTH
# JSON text may spell a surrogate (``"\ud800"``, from another writer or an
# older journal), which this codec cannot write back: such text (or a literal
# backslash before ``ud8``, looked at in vain) is walked for one.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_surrogates(value: Any) -> None:
    """Raise ``InvalidEventError`` if a string of ``value`` (a key too) holds a surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item) is not None:
                raise InvalidEventError("invalid event: data holds a surrogate (not Unicode text)")
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


_make_scanner: Any = json.scanner.make_scanner
_scan: Callable[[str, int], tuple[Any, int]] = _make_scanner(_decoder)


_JSON_SPACE = frozenset(" \t\n\r")


def _loads(text: str) -> Any:
    """Parse one JSON value filling all of ``text``; raise ``ValueError`` otherwise.

    JSON's whitespace may surround the value (RFC 8259; other encoders add a
    newline).
    """
    if text and (text[0] in _JSON_SPACE or text[-1] in _JSON_SPACE):
        text = text.strip(" \t\n\r")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("data_json is not JSON") from None
    if end != len(text):
        raise ValueError(f"data_json has extra characters at {end}")
    return value


def event_to_message(event: Event) -> Any:
    """Return the protobuf message for ``event``.

    Raise ``InvalidEventError`` if a field cannot be encoded (``data`` mutated
    into a non-JSON value, or an unvalidated ``_with`` change).
    """
    value: Any
    try:
        data = event.data
        stamp = event.timestamp - _EPOCH
        # Defaults stay unset: fewer upb calls, and proto3 omits them anyway.
        message = _PbEvent(
            schema_version=SCHEMA_VERSION,
            event_type=event.event_type,
            id=event.id.int.to_bytes(16),
            timestamp_us=(stamp.days * 86_400 + stamp.seconds) * 1_000_000 + stamp.microseconds,
            data_json=_NULL if data is None else _dumps(data).encode(),
            language=event.language,
        )
        if (value := event.correlation_id) is not None:
            message.correlation_id = value.int.to_bytes(16)
        if (value := event.causation_id) is not None:
            message.causation_id = value.int.to_bytes(16)
        if (value := event.source) is not None:
            message.source = value
        if (value := event.target) is not None:
            message.target = value
        if value := event.tags:
            message.tags.extend(value)
        if value := event.priority:
            message.priority = value
        if (value := event.ttl) is not None:
            message.ttl = value
        if value := event.metadata:
            message.metadata.update(value)
        if (value := event.sequence) is not None:
            message.sequence = value
        if (value := event.origin) is not None:
            message.origin = value
    except UnicodeEncodeError as exc:  # before ValueError, its base
        raise NotTextError(f"cannot encode event {event.id}: {exc}") from exc
    except (TypeError, ValueError, OverflowError, RecursionError, AttributeError) as exc:
        raise InvalidEventError(f"cannot encode event {event.id}: {exc}") from exc
    return message


def encode_event(event: Event) -> bytes:
    """Return the protobuf bytes of ``event``; raise ``InvalidEventError`` if it cannot."""
    # deterministic: map entries sorted by key, so the same event gives the same bytes.
    return _serialize(event_to_message(event), event)


def _serialize(message: Any, event: Event) -> bytes:
    """Return ``message``'s bytes; ``InvalidEventError`` past protobuf's 2 GiB message limit."""
    try:
        return message.SerializeToString(deterministic=True)  # type: ignore[no-any-return]
    except Exception as exc:  # protobuf's EncodeError (or ValueError): the message is too large
        raise InvalidEventError(f"cannot encode event {event.id}: {exc}") from exc


def encode_shared(event: Event) -> bytes:
    """Return ``event``'s bytes, encoding it only the first time (kept on the event).

    For the bus's own paths (journal, bridge), which never mutate ``data``;
    raise ``InvalidEventError`` if it cannot be encoded.
    """
    wire = wire_of(event)
    if wire is None:
        wire = _serialize(event_to_message(event), event)
        keep_wire(event, wire)
    return wire


def chunk_of(event: Event) -> bytes:
    """Return ``event`` as a one-event ``EventBatch`` (tag, length, bytes): a frame's piece."""
    body = encode_shared(event)
    size = len(body)
    return (b"\x0a" + bytes((size,)) if size < 0x80 else b"\x0a" + _varint(size)) + body


_SEQUENCE_TAG = b"\x78"  # field 15 (sequence), varint


def restamp_wire(source: Event, copy: Event) -> None:
    """Give ``copy`` (``source`` with a new ``sequence``) bytes derived from ``source``'s.

    Nothing if ``source`` has none or the copy differs in more than the
    sequence.  The appended field overrides the one inside.
    """
    wire = wire_of(source)
    sequence = copy.sequence
    if wire is not None and sequence is not None and copy.origin == source.origin:
        keep_wire(copy, _with_sequence(wire, sequence))


def restamp_in_place(event: Event, sequence: int) -> None:
    """Set ``sequence`` of an event nobody else holds, keeping its bytes (as ``restamp_wire``)."""
    wire = wire_of(event)
    set_sequence_in_place(event, sequence)
    if wire is not None:
        keep_wire(event, _with_sequence(wire, sequence))


def _with_sequence(wire: bytes, sequence: int) -> bytes:
    return wire + _SEQUENCE_TAG + _varint(sequence)  # the last value of a field wins


def message_to_event(message: Any) -> Event:
    """Return the event a protobuf ``Event`` message describes.

    Raise ``InvalidEventError`` if the schema version is not ``SCHEMA_VERSION``
    or any field is invalid.  Fields whose type and range protobuf already
    guarantees (UTF-8 strings, 64-bit integers) are not checked again.
    """
    version = message.schema_version
    if version != SCHEMA_VERSION:
        raise InvalidEventError(f"unsupported schema_version {version}")
    raw_id = message.id
    if len(raw_id) != 16:
        raise InvalidEventError(f"id must be 16 bytes, not {len(raw_id)}")
    try:
        data_json = message.data_json
        data = _loads(data_json.decode()) if data_json and data_json != _NULL else None
        timestamp = _EPOCH + _timedelta(0, 0, message.timestamp_us)
    except (ValueError, OverflowError, RecursionError) as exc:  # bad JSON, timestamp
        raise InvalidEventError(f"invalid event: {exc}") from exc
    if len(data_json) >= _UNCHECKED_BELOW:
        _check_data(data)
    if b"\\u" in data_json and _MAYBE_SURROGATE.search(data_json) is not None:
        _refuse_surrogates(data)
    tags = message.tags
    metadata = message.metadata
    which = message.WhichOneof  # proto3 ``optional`` fields are synthetic oneofs
    return build_unchecked(
        _check_event_type(message.event_type),
        data,
        uuid_from_int(int.from_bytes(raw_id)),
        timestamp,
        _optional_uuid("correlation_id", message.correlation_id),
        _optional_uuid("causation_id", message.causation_id),
        _check_source(message.source) if which("_source") else None,
        message.target if which("_target") else None,
        tuple(tags) if tags else (),
        message.priority,
        _check_ttl(message.ttl) if which("_ttl") else None,
        message.language,
        MappingProxyType(dict(metadata)) if metadata else EMPTY_METADATA,
        message.sequence if which("_sequence") else None,
        message.origin if which("_origin") else None,
    )


def _check_source(source: str) -> str:
    """Return ``source`` if the journal can store it (at most ``MAX_SOURCE_BYTES`` in UTF-8)."""
    if len(source) > MAX_SOURCE_BYTES // 4 and len(source.encode("utf-8", "surrogatepass")) > (
        MAX_SOURCE_BYTES
    ):
        raise InvalidEventError(f"source is over {MAX_SOURCE_BYTES} bytes in UTF-8")
    return source


def _optional_uuid(name: str, raw: bytes) -> Any:
    if not raw:
        return None
    if len(raw) != 16:
        raise InvalidEventError(f"{name} must be 16 bytes or empty, not {len(raw)}")
    return uuid_from_int(int.from_bytes(raw))


def decode_event(data: bytes) -> Event:
    """Decode the bytes of one event.

    Raise ``InvalidEventError`` if they are malformed, of another schema
    version, or describe an invalid event.
    """
    raw = _as_bytes(data)
    event = message_to_event(_parse(_PbEvent, raw))
    keep_wire(event, raw)
    return event


def encode_batch(events: Iterable[Event]) -> bytes:
    """Return the ``EventBatch`` bytes of ``events``, in order.

    Raise ``InvalidEventError`` if an event cannot be encoded.
    """
    return b"".join([chunk_of(event) for event in events])


def decode_batch(data: bytes) -> list[Event]:
    """Decode ``EventBatch`` bytes into events, in order.

    Raise ``InvalidEventError`` if the bytes or any event in them are invalid.
    """
    raw = _as_bytes(data)
    out: list[Event] = []
    append = out.append
    end = len(raw)
    pos = 0
    # The batch's framing by hand (field 1, length-delimited, and nothing else
    # this schema writes), so each event keeps the bytes that arrived.
    while pos < end:
        if raw[pos] != 0x0A:
            return _decode_batch_slowly(raw)
        size = raw[pos + 1] if pos + 1 < end else 0x80
        pos += 2
        if size >= 0x80:
            size, pos = _read_varint(raw, pos - 1)
        body = raw[pos : pos + size]
        if len(body) != size:
            raise InvalidEventError("malformed event bytes: truncated batch")
        pos += size
        event = message_to_event(_parse(_PbEvent, body))
        keep_wire(event, body)
        append(event)
    return out


def _decode_batch_slowly(raw: bytes) -> list[Event]:
    """Decode a batch framed otherwise (unknown fields): events keep no bytes."""
    batch = _parse(_PbBatch, raw)
    return [message_to_event(message) for message in batch.events]


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """Return the varint at ``pos`` and the position after it."""
    value = 0
    shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise InvalidEventError("malformed event bytes: bad length in batch")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _as_bytes(data: object) -> bytes:
    """Return ``data`` as ``bytes``; raise ``InvalidEventError`` if it is no bytes-like."""
    if data.__class__ is bytes:
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidEventError(f"expected bytes, not {type(data).__name__}")
    return bytes(data)


def _parse(message_type: Any, raw: bytes) -> Any:
    """Parse ``raw`` as ``message_type``; raise ``InvalidEventError`` on any failure."""
    try:
        return message_type.FromString(raw)
    except Exception as exc:  # DecodeError, and whatever else upb raises
        raise InvalidEventError(f"malformed event bytes: {exc}") from exc


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
