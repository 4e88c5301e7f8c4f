"""The bridge's frames: pure encoding and decoding, no sockets (``docs/wire.md``).

Two channels join nodes (and brokers):

- the *stream*, XPUB -> SUB, carries multipart frames ``[topic, header, payload]``:

  - data: ``topic`` is a prefix of every event type in the frame (ZeroMQ
    filters on it), ``header`` is ``DATA_HEADER`` (below) followed by the
    origin name and the chain pointers, ``payload`` is a protobuf
    ``llmspell.events.v1.EventBatch``;
  - control: ``topic`` starts with ``0xFF`` (never the first byte of UTF-8
    text), ``header`` is ``[VERSION, kind]``, ``payload`` UTF-8 JSON.

- the *request channel*, DEALER -> ROUTER, carries
  ``[VERSION|kind, to, sender, rid, body, payload?]``: ``to`` and ``sender``
  are node names (``to`` empty: whoever receives it), ``rid`` pairs a reply
  with its request, ``body`` is UTF-8 JSON, ``payload`` an ``EventBatch``.

Every decoding failure raises ``FrameError``, nothing else.  A JSON body is
checked once, here: ``NaN``, ``Infinity`` and numbers that overflow a float,
integers beyond 64 bits and text that is not Unicode (a lone surrogate escape)
refuse the whole message; ``uint_field``, ``text_field``, ``bool_field`` (and
the like) read a body's fields and refuse, the same way, a missing field or
one of the wrong type, so a handler gets checked values or drops the message.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from actors._codec.events import decode_batch, encode_batch
from actors._errors import FrameError, InvalidEventError
from actors._model.config import MAX_NODE_NAME_BYTES
from actors._model.event import Event

__all__ = [
    "ANSWER_TOO_LARGE",
    "ANSWERED",
    "CONTROL",
    "CREDIT",
    "HEARTBEAT_TOPIC",
    "VERSION",
    "ControlFrame",
    "DataFrame",
    "FrameError",
    "Request",
    "RequestTooLargeError",
    "bool_field",
    "chains_field",
    "decode_request",
    "decode_stream",
    "encode_control",
    "encode_data",
    "encode_data_payload",
    "encode_request",
    "sync_topic",
    "parse_sync_topic",
    "text_field",
    "texts_field",
    "uint_field",
]

VERSION = 1
"""The only frame version this module writes and reads."""

CONTROL = b"\xff"
HEARTBEAT_TOPIC = CONTROL + b"hb"
_SYNC = CONTROL + b"sync\x00"

# Stream kinds.
DATA, HEARTBEAT, SYNC = 1, 2, 3
# Request-channel kinds.
HELLO, WELCOME, RECOVER, QUERY, CORRELATED, EVENTS, ERROR = 16, 17, 18, 19, 20, 21, 22
PUBLISH, METRICS, CREDIT = 23, 24, 25
REQUEST_KINDS = frozenset(
    {HELLO, WELCOME, RECOVER, QUERY, CORRELATED, EVENTS, ERROR, PUBLISH, METRICS, CREDIT}
)
ANSWERED = frozenset((RECOVER, QUERY, CORRELATED, PUBLISH, METRICS))
"""The request kinds whose asker waits for an answer (EVENTS or ERROR)."""

# version u8, kind u8, epoch u64, first u64, last u64, count u32, origin length u8,
# chain count u16; then the origin (UTF-8), then per chain: prev u64, prefix
# length u16, prefix bytes.  Big-endian.
DATA_HEADER = struct.Struct(">BBQQQIBH")
_CHAIN = struct.Struct(">QH")
_MAX_CHAINS = 1024

MAX_UINT = (1 << 64) - 1
"""The largest integer a JSON body may hold (sequences and epochs are 64-bit)."""
_MAX_INT_DIGITS = len(str(MAX_UINT)) + 1  # a sign


@dataclass(frozen=True, slots=True)
class DataFrame:
    """Events of one origin, in its sequence order.

    ``chains`` pairs each subscription prefix the events match (as the sender
    knew them) with the origin sequence of the previous event it sent that
    matched that prefix: a receiver that last saw an older one lost frames.
    """

    topic: bytes
    origin: str
    epoch: int
    first: int
    last: int
    chains: tuple[tuple[bytes, int], ...]
    events: list[Event]


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """A heartbeat or a sync reply: ``kind`` and its JSON ``body``."""

    topic: bytes
    kind: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Request:
    """One message of the request channel (requests and replies alike)."""

    kind: int
    to: str
    sender: str
    rid: str
    body: dict[str, Any]
    payload: bytes | None = None


# -- stream ------------------------------------------------------------------


def encode_data(
    topic: bytes,
    origin: str,
    epoch: int,
    chains: Sequence[tuple[bytes, int]],
    events: Sequence[Event],
) -> list[bytes]:
    """Return the parts of a data frame; ``events`` are of ``origin``, in order.

    Raise ``InvalidEventError`` if an event cannot be encoded.
    """
    span = (events[0].sequence or 0, events[-1].sequence or 0, len(events))
    return encode_data_payload(topic, origin, epoch, chains, span, encode_batch(events))


def encode_data_payload(  # noqa: PLR0917 - the header's fields, one call site each
    topic: bytes,
    origin: str,
    epoch: int,
    chains: Sequence[tuple[bytes, int]],
    span: tuple[int, int, int],
    payload: bytes,
) -> list[bytes]:
    """Return the parts of a data frame around ``payload`` (an encoded ``EventBatch``).

    ``span`` is ``(first sequence, last sequence, number of events)``.
    """
    name = origin.encode()
    first, last, count = span
    head = DATA_HEADER.pack(VERSION, DATA, epoch, first, last, count, len(name), len(chains))
    parts = [head, name]
    for prefix, prev in chains:
        parts.append(_CHAIN.pack(prev, len(prefix)))
        parts.append(prefix)
    return [topic, b"".join(parts), payload]


def encode_control(topic: bytes, kind: int, body: dict[str, Any]) -> list[bytes]:
    """Return the parts of a control frame (heartbeat or sync reply)."""
    return [topic, bytes((VERSION, kind)), json.dumps(body, separators=(",", ":")).encode()]


def sync_topic(node: str, round_: int) -> bytes:
    """Return the topic a node subscribes to ask every publisher for a sync reply."""
    return _SYNC + node.encode() + b"\x00" + str(round_).encode()


def parse_sync_topic(topic: bytes) -> tuple[str, int] | None:
    """Return ``(node, round)`` of a sync topic, or None if ``topic`` is not one."""
    if not topic.startswith(_SYNC):
        return None
    name, sep, number = topic[len(_SYNC) :].partition(b"\x00")
    if not sep or not name or not number.isdigit() or len(number) > 18:
        return None
    try:
        return name.decode(), int(number)
    except UnicodeDecodeError:
        return None


def decode_stream(parts: Sequence[bytes], max_bytes: int) -> DataFrame | ControlFrame:
    """Decode the parts of a stream frame.

    Raise ``FrameError`` if it is not three parts, larger than ``max_bytes``
    in all, of another version or kind, or if any part is malformed.
    """
    if len(parts) != 3:
        raise FrameError(f"a stream frame has 3 parts, not {len(parts)}")
    topic, header, payload = (bytes(p) for p in parts)
    if len(topic) + len(header) + len(payload) > max_bytes:
        raise FrameError(f"frame larger than {max_bytes} bytes")
    if len(header) < 2:
        raise FrameError("truncated header")
    if header[0] != VERSION:
        raise FrameError(f"unknown frame version {header[0]}")
    kind = header[1]
    if kind in (HEARTBEAT, SYNC):
        if not topic.startswith(CONTROL) or len(header) != 2:
            raise FrameError("malformed control frame")
        return ControlFrame(topic, kind, _json_object(payload))
    if kind != DATA:
        raise FrameError(f"unknown stream frame kind {kind}")
    return _decode_data(topic, header, payload)


def _decode_data(topic: bytes, header: bytes, payload: bytes) -> DataFrame:
    size = DATA_HEADER.size
    if len(header) < size:
        raise FrameError("truncated data header")
    _, _, epoch, first, last, count, name_len, n_chains = DATA_HEADER.unpack_from(header)
    if n_chains > _MAX_CHAINS:
        raise FrameError(f"too many chains ({n_chains})")
    pos = size + name_len
    if len(header) < pos:
        raise FrameError("truncated origin")
    origin = _text(header[size:pos], "origin")
    chains = []
    for _ in range(n_chains):
        if len(header) < pos + _CHAIN.size:
            raise FrameError("truncated chain")
        prev, plen = _CHAIN.unpack_from(header, pos)
        pos += _CHAIN.size
        if len(header) < pos + plen:
            raise FrameError("truncated chain prefix")
        chains.append((header[pos : pos + plen], prev))
        pos += plen
    if pos != len(header):
        raise FrameError("trailing bytes after the header")
    if not origin or count == 0 or first > last:
        raise FrameError("empty or inconsistent data frame")
    try:
        events = decode_batch(payload)
    except InvalidEventError as exc:
        raise FrameError(f"bad payload: {exc}") from exc
    if len(events) != count:
        raise FrameError(f"header says {count} events, payload holds {len(events)}")
    previous = first - 1
    for event in events:
        seq = event.sequence
        if event.origin != origin or seq is None or seq <= previous or seq > last:
            raise FrameError("event origin or sequence disagrees with the header")
        if not event.event_type.encode().startswith(topic):
            raise FrameError("event type outside the frame's topic")
        previous = seq
    if events[0].sequence != first or events[-1].sequence != last:
        raise FrameError("first/last disagree with the events")
    return DataFrame(topic, origin, epoch, first, last, tuple(chains), events)


# -- request channel ------------------------------------------------------------


def encode_request(message: Request) -> list[bytes]:
    """Return the parts of a request-channel message."""
    parts = [
        bytes((VERSION, message.kind)),
        message.to.encode(),
        message.sender.encode(),
        message.rid.encode(),
        json.dumps(message.body, separators=(",", ":")).encode(),
    ]
    if message.payload is not None:
        parts.append(message.payload)
    return parts


ANSWER_TOO_LARGE = "the answer is larger than"
"""How a node's or a broker's refusal of an answer past a frame begins (the asker pages on it)."""


class RequestTooLargeError(FrameError):
    """A well-formed request over ``max_bytes``: its header says whom to tell."""

    def __init__(self, max_bytes: int, kind: int, to: str, sender: str, rid: str) -> None:
        super().__init__(f"request larger than {max_bytes} bytes")
        self.max_bytes, self.kind, self.to, self.sender, self.rid = max_bytes, kind, to, sender, rid


def decode_request(parts: Sequence[bytes], max_bytes: int) -> Request:
    """Decode a request-channel message (without any routing identity).

    Raise ``FrameError`` if it is malformed, oversized or of another version;
    ``RequestTooLargeError`` if only its size is at fault.
    """
    if len(parts) not in (5, 6):
        raise FrameError(f"a request has 5 or 6 parts, not {len(parts)}")
    raw = [bytes(p) for p in parts]
    head = raw[0]
    if len(head) != 2:
        raise FrameError("malformed request header")
    if head[0] != VERSION:
        raise FrameError(f"unknown frame version {head[0]}")
    if head[1] not in REQUEST_KINDS:
        raise FrameError(f"unknown request kind {head[1]}")
    if len(raw[1]) > MAX_NODE_NAME_BYTES or len(raw[2]) > MAX_NODE_NAME_BYTES:
        raise FrameError(f"a node name is at most {MAX_NODE_NAME_BYTES} bytes")  # see fits_name
    if sum(len(p) for p in raw) > max_bytes:
        if len(raw[2]) + len(raw[3]) > 4096:  # no header of ours is that long
            raise FrameError(f"request larger than {max_bytes} bytes")
        raise RequestTooLargeError(
            max_bytes, head[1], _text(raw[1], "to"), _text(raw[2], "sender"), _text(raw[3], "rid")
        )
    return Request(
        kind=head[1],
        to=_text(raw[1], "to"),
        sender=_text(raw[2], "sender"),
        rid=_text(raw[3], "rid"),
        body=_json_object(raw[4]),
        payload=raw[5] if len(raw) == 6 else None,
    )


def decode_events(payload: bytes | None) -> list[Event]:
    """Decode a request payload; raise ``FrameError`` if it is not an ``EventBatch``."""
    if payload is None:
        return []
    try:
        return decode_batch(payload)
    except InvalidEventError as exc:
        raise FrameError(f"bad payload: {exc}") from exc


def fits_name(name: str) -> bool:
    """Return whether ``name`` can name a node (a request to or from it is not malformed)."""
    try:
        return len(name.encode()) <= MAX_NODE_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate: no frame can carry it
        return False


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise FrameError(f"{what} is not UTF-8") from exc


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        # Strict UTF-8 first: ``json.loads`` of bytes would take UTF-16/32 and
        # encoded surrogates too.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(f"body is not UTF-8: {exc.reason}") from None
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except FrameError:
        raise
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FrameError("body is not a JSON object")
    if b"\\u" in raw:
        _check_text(value)  # an escape may spell a lone surrogate
    return value


def _no_constant(name: str) -> NoReturn:
    raise FrameError(f"body holds {name}, not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FrameError(f"body holds a number out of range ({text[:32]})")
    return value


def _bounded_int(text: str) -> int:
    if len(text) <= _MAX_INT_DIGITS:
        value = int(text)
        if -MAX_UINT <= value <= MAX_UINT:
            return value
    raise FrameError(f"body holds an integer out of range ({text[:32]})")


def _check_text(value: object) -> None:
    """Raise ``FrameError`` if a key or a string in ``value`` is not encodable Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError as exc:
                raise FrameError("body holds text that is not Unicode") from exc
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


_MISSING: Any = object()


def _field(
    body: dict[str, Any], key: str, default: Any, fits: Callable[[Any], bool], what: str
) -> Any:
    """Return ``body[key]`` if ``fits`` it, ``default`` if missing (or null) and given.

    Raise ``FrameError`` otherwise: a missing field without a default is an error too.
    """
    value = body.get(key)
    if value is None and default is not _MISSING:
        return default
    if not fits(value):
        raise FrameError(f"field {key!r} is not {what}: {value!r:.40}")
    return value


def uint_field(body: dict[str, Any], key: str, default: int = _MISSING) -> int:
    """Return ``body[key]``, an integer in ``[0, MAX_UINT]``; raise ``FrameError`` otherwise."""
    value: int = _field(body, key, default, _is_uint, "an unsigned 64-bit integer")
    return value


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_UINT


def text_field(body: dict[str, Any], key: str, default: str = _MISSING) -> str:
    """Return ``body[key]``, a string; raise ``FrameError`` otherwise (see ``uint_field``)."""
    value: str = _field(body, key, default, lambda v: type(v) is str, "a string")
    return value


def bool_field(body: dict[str, Any], key: str, default: bool = _MISSING) -> bool:
    """Return ``body[key]``, a boolean; raise ``FrameError`` otherwise (see ``uint_field``)."""
    value: bool = _field(body, key, default, lambda v: type(v) is bool, "a boolean")
    return value


def texts_field(body: dict[str, Any], key: str, default: list[str] = _MISSING) -> list[str]:
    """Return ``body[key]``, a list of strings; raise ``FrameError`` otherwise."""
    value: list[str] = _field(
        body,
        key,
        default,
        lambda v: type(v) is list and all(type(item) is str for item in v),
        "a list of strings",
    )
    return value


def chains_field(body: dict[str, Any], key: str) -> dict[bytes, int]:
    """Return a heartbeat's ``[[prefix, sequence], ...]`` (empty if missing) as a dict.

    Raise ``FrameError`` unless each item is a string and an unsigned 64-bit integer.
    """
    value = body.get(key)
    if value is None:
        return {}
    if type(value) is not list:
        raise FrameError(f"field {key!r} is not a list: {value!r:.40}")
    out: dict[bytes, int] = {}
    for item in value:
        if type(item) is not list or len(item) != 2 or type(item[0]) is not str:
            raise FrameError(f"field {key!r} holds {item!r:.40}, not [prefix, sequence]")
        seq = item[1]
        if type(seq) is not int or not 0 <= seq <= MAX_UINT:
            raise FrameError(f"field {key!r} holds {item!r:.40}, not [prefix, sequence]")
        out[item[0].encode()] = seq
    return out
