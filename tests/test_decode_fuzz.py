"""Fuzzing every decoder that takes bytes (or dicts) from outside the process.

Targets: ``Event.from_bytes``, ``decode_batch`` (``EventBatch``), the cluster
wire's ``decode_stream`` / ``decode_request`` and the body readers, the
broker's ``_stream_origin``, ``query_from_json``, and ``Event.from_dict``.
A decoder may only raise its documented typed error (``InvalidEventError`` for
events, ``FrameError`` for frames); whatever it accepts must be an event that
``Event(...)`` itself accepts, and must survive a second round trip unchanged.
One test speaks to a live node over ipc with forged frames.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import Event, EventBus, EventQuery
from actors._cluster.bridge_io import query_from_json, query_to_json
from actors._cluster.broker import _stream_origin
from actors._cluster.wire import (
    CREDIT,
    DATA_HEADER,
    EVENTS,
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    HELLO,
    METRICS,
    PUBLISH,
    SYNC,
    VERSION,
    WELCOME,
    ControlFrame,
    DataFrame,
    FrameError,
    Request,
    bool_field,
    chains_field,
    decode_events,
    decode_request,
    decode_stream,
    encode_batch,
    encode_control,
    encode_data,
    encode_request,
    parse_sync_topic,
    text_field,
    texts_field,
    uint_field,
)
from actors._codec._pb.llmspell.events.v1 import events_pb2
from actors._codec.events import decode_batch
from actors._errors import InvalidEventError
from tests._cluster_support import WAIT, Collector, fake_sockets, ipc, node, request_endpoint

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX = 1 << 22

# -- helpers ---------------------------------------------------------------------------------


def pb_event(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "schema_version": 1,
        "event_type": "user.login",
        "id": uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF).bytes,
        "data_json": b"null",
    }
    base.update(fields)
    return events_pb2.Event(**base).SerializeToString()


def check_valid(event: Event) -> None:
    """``event`` is one ``Event(...)`` accepts, and both round trips give it back exactly."""
    assert type(event) is Event
    again = Event.from_dict(event.to_dict())  # re-validated by the constructor
    assert again == event
    wire = event.to_bytes()
    decoded = Event.from_bytes(wire)
    assert decoded == event
    assert decoded.to_bytes() == wire  # a second round trip changes nothing
    assert json.loads(json.dumps(event.data)) == event.data or event.data != event.data


def decode_or_refuse(raw: bytes) -> Event | None:
    try:
        event = Event.from_bytes(raw)
    except InvalidEventError:
        return None
    check_valid(event)
    return event


def sample_events(n: int, origin: str = "fake", start: int = 1, step: int = 1) -> list[Event]:
    return [
        Event(
            event_type=f"user.e{i}",
            data={"i": i, "s": "é\u2028", "f": 1.5, "l": [1, None, True]},
            tags=("t",),
            metadata={"k": "v"},
            source="src",
            ttl=3.0,
            priority=-2,
            sequence=start + i * step,
            origin=origin,
        )
        for i in range(n)
    ]


def mutations(raw: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Flipped, dropped, inserted, duplicated and truncated variants of ``raw``."""
    out: list[bytes] = []
    for _ in range(count):
        b = bytearray(raw)
        op = rng.randrange(6)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            b[rng.randrange(len(b) + 1) : 0] = bytes(
                rng.randrange(256) for _ in range(rng.randrange(1, 6))
            )
        elif op == 3 and b:
            i = rng.randrange(len(b))
            b[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x78])
        elif op == 4 and b:
            i, j = sorted((rng.randrange(len(b)), rng.randrange(len(b))))
            b[j:j] = b[i:j]
        elif b:
            i = rng.randrange(len(b))
            del b[i : i + rng.randrange(1, 8)]
        out.append(bytes(b))
    return out


# -- Event.from_bytes -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_decode_to_a_valid_event_or_invalid_event_error(raw: bytes) -> None:
    decode_or_refuse(raw)


@FUZZ
@given(st.randoms(use_true_random=False))
def test_mutated_event_bytes_decode_to_a_valid_event_or_invalid_event_error(
    rng: random.Random,
) -> None:
    raw = sample_events(1)[0].to_bytes()
    for variant in mutations(raw, rng, 20):
        decode_or_refuse(variant)


_texts = st.text(max_size=20)
_u64_edges = st.sampled_from([0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1])
_i64_edges = st.sampled_from([-(1 << 63), -1, 0, (1 << 63) - 1])
_JSON_SAMPLES = [
    b"",
    b"null",
    b" null ",
    b'\t{"a" : [1 , 2.5e3,-0, -0.0 ,"\\u00e9"]}\r\n',
    b'{"a":1,"a":2}',
    b'"\\ud800"',
    b'{"\\udc00":"\\ud83d\\ude00"}',
    b"1e308",
    b"1e309",
    b"-1e400",
    b"NaN",
    b"[Infinity]",
    b"1" * 4300,
    b"1" * 4301,
    b"[" * 200 + b"]" * 200,
    b"[" * 201 + b"]" * 201,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'"\xff"',
    b'"\xed\xa0\x80"',
    "\ufeff{}".encode(),
    '{"a":1}'.encode("utf-16"),
    b"[1,]",
    b"[1] [2]",
    b"   ",
    b"\x00",
    b"0.0000000000000000000000000000000000000000000001e-400",
    b"[" + b"[]," * 5000 + b"[]]",
]


@FUZZ
@given(
    event_type=st.one_of(
        st.sampled_from(["a", "a.b", "$x.y", "a..b", "", "a.*", "a b", "é.ü"]), _texts
    ),
    data_json=st.one_of(st.sampled_from(_JSON_SAMPLES), st.binary(max_size=30)),
    id_=st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20)),
    timestamp_us=st.one_of(
        st.integers(-(1 << 63), (1 << 63) - 1),
        st.sampled_from(
            [-62135596800000000, -62135596800000001, 253402300799999999, 253402300800000000]
        ),
    ),
    cid=st.binary(max_size=17),
    source=st.one_of(st.none(), _texts),
    target=st.one_of(st.none(), _texts),
    tags=st.lists(_texts, max_size=3),
    priority=_i64_edges,
    ttl=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    language=_texts,
    metadata=st.dictionaries(_texts, _texts, max_size=3),
    sequence=st.one_of(st.none(), _u64_edges),
    origin=st.one_of(st.none(), _texts),
    schema=st.sampled_from([0, 1, 1, 1, 2, (1 << 32) - 1]),
)
def test_any_protobuf_event_decodes_to_a_valid_event_or_is_refused(
    event_type: str,
    data_json: bytes,
    id_: bytes,
    timestamp_us: int,
    cid: bytes,
    source: str | None,
    target: str | None,
    tags: list[str],
    priority: int,
    ttl: float | None,
    language: str,
    metadata: dict[str, str],
    sequence: int | None,
    origin: str | None,
    schema: int,
) -> None:
    fields: dict[str, Any] = {
        "schema_version": schema,
        "event_type": event_type,
        "id": id_,
        "timestamp_us": timestamp_us,
        "data_json": data_json,
        "correlation_id": cid,
        "causation_id": cid[::-1],
        "tags": tags,
        "priority": priority,
        "language": language,
        "metadata": metadata,
    }
    for name, value in (
        ("source", source),
        ("target", target),
        ("ttl", ttl),
        ("sequence", sequence),
        ("origin", origin),
    ):
        if value is not None:
            fields[name] = value
    event = decode_or_refuse(pb_event(**fields))
    if event is not None:
        assert event.sequence == sequence
        assert event.priority == priority


@pytest.mark.parametrize("data_json", _JSON_SAMPLES, ids=range(len(_JSON_SAMPLES)))
def test_hand_made_data_json_decodes_to_valid_data_or_is_refused(data_json: bytes) -> None:
    decode_or_refuse(pb_event(data_json=data_json))


@pytest.mark.parametrize("data_json", [b'"\\ud800"', b'["\\uDBFF"]', b'{"\\udc00":1}'])
def test_short_data_json_that_spells_a_lone_surrogate_is_refused(data_json: bytes) -> None:
    # Short JSON skips the data walk; one spelling a surrogate is walked anyway.
    with pytest.raises(InvalidEventError, match="surrogate"):
        Event.from_bytes(pb_event(data_json=data_json))


def test_an_escaped_surrogate_pair_is_one_character_and_decodes() -> None:
    event = Event.from_bytes(pb_event(data_json=b'["\\uD83D\\uDE00"]'))
    assert event.data == ["\U0001f600"]
    check_valid(event)


def test_duplicated_fields_take_the_last_value_and_the_bytes_kept_agree() -> None:
    raw = pb_event(data_json=b"1", sequence=5) + pb_event(data_json=b"[2]", sequence=(1 << 64) - 1)
    event = Event.from_bytes(raw)
    assert event.data == [2]
    assert event.sequence == (1 << 64) - 1
    check_valid(event)
    # the batch framing keeps the bytes that arrived; they must decode to the same event
    batch = b"\x0a" + bytes([len(raw)]) + raw
    (from_batch,) = decode_batch(batch)
    assert from_batch == event
    assert decode_batch(encode_batch([from_batch])) == [event]


def test_sequence_at_the_edges_round_trips() -> None:
    for seq in (0, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        event = Event.from_bytes(pb_event(sequence=seq))
        assert event.sequence == seq
        check_valid(event)
    # 10-byte varints: the decoder reads them exactly as protobuf does (or refuses them)
    for tail in (b"\xff" * 9 + b"\x01", b"\xff" * 9 + b"\x7f", b"\xff" * 10 + b"\x01"):
        raw = pb_event() + b"\x78" + tail
        try:
            expected = events_pb2.Event.FromString(raw).sequence
        except Exception:
            with pytest.raises(InvalidEventError):
                Event.from_bytes(raw)
            continue
        event = Event.from_bytes(raw)
        assert event.sequence == expected
        check_valid(event)


def test_non_bytes_input_is_invalid_event_error() -> None:
    for value in (None, "text", 5, [1], object()):
        with pytest.raises(InvalidEventError):
            Event.from_bytes(value)  # type: ignore[arg-type]
    assert Event.from_bytes(bytearray(pb_event())) == Event.from_bytes(memoryview(pb_event()))


# -- EventBatch ------------------------------------------------------------------------------


def batch_or_refuse(raw: bytes) -> list[Event] | None:
    try:
        events = decode_batch(raw)
    except InvalidEventError:
        return None
    for event in events:
        check_valid(event)
    # the batch's own bytes, re-encoded, decode to the same events (kept wire included)
    assert decode_batch(encode_batch(events)) == events
    return events


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_decode_as_a_batch_or_invalid_event_error(raw: bytes) -> None:
    batch_or_refuse(raw)


@FUZZ
@given(st.randoms(use_true_random=False))
def test_mutated_batches_decode_or_invalid_event_error(rng: random.Random) -> None:
    raw = encode_batch(sample_events(3))
    for variant in mutations(raw, rng, 20):
        batch_or_refuse(variant)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a",
        b"\x0a\x80",
        b"\x0a" + b"\xff" * 9 + b"\x01",
        b"\x0a" + b"\xff" * 10 + b"\x01",
        b"\x0a" + b"\x80" * 10 + b"\x00",
        b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 10,
        b"\x0a\x00",
    ],
)
def test_malformed_batch_framing_is_invalid_event_error(raw: bytes) -> None:
    with pytest.raises(InvalidEventError):
        decode_batch(raw)


@pytest.mark.parametrize(
    "raw", [b"\x12\x00", b"\x08\x01", b"\x0b\x0c", b"\x0b\x0a\x00\x0c", b"\x0c"]
)
def test_other_framings_decode_as_protobuf_does(raw: bytes) -> None:
    try:
        expected = len(events_pb2.EventBatch.FromString(raw).events)
    except Exception:
        with pytest.raises(InvalidEventError):
            decode_batch(raw)
        return
    assert len(batch_or_refuse(raw) or []) == expected


def test_a_batch_with_an_unknown_field_decodes_like_the_plain_batch() -> None:
    events = sample_events(3)
    raw = encode_batch(events)
    plain = decode_batch(raw)
    odd = decode_batch(raw + b"\x10\x05")  # field 2 varint: not this schema's, skipped
    assert odd == plain == events
    # non-minimal length varint: the fast path and protobuf agree
    body = events[0].to_bytes()
    padded = b"\x0a" + bytes([(len(body) & 0x7F) | 0x80, len(body) >> 7 | 0x80, 0x00]) + body
    assert decode_batch(padded) == [events[0]]


# -- the stream (XPUB -> SUB) ------------------------------------------------------------------


def stream_or_refuse(parts: list[bytes]) -> DataFrame | ControlFrame | None:
    try:
        frame = decode_stream(parts, MAX)
    except FrameError:
        return None
    if isinstance(frame, DataFrame):
        assert frame.origin
        assert frame.first <= frame.last
        assert frame.events, "a data frame has events"
        previous = frame.first - 1
        for event in frame.events:
            check_valid(event)
            assert event.origin == frame.origin
            assert event.sequence is not None
            assert previous < event.sequence <= frame.last
            assert event.event_type.encode().startswith(frame.topic)
            previous = event.sequence
        assert frame.events[0].sequence == frame.first
        assert frame.events[-1].sequence == frame.last
        assert len(frame.chains) <= 1024
    else:
        assert isinstance(frame.body, dict)
        json.dumps(frame.body).encode()  # text is real Unicode (no lone surrogate)
    return frame


def data_parts(start: int = 1, step: int = 1, n: int = 3) -> list[bytes]:
    events = sample_events(n, start=start, step=step)
    return encode_data(b"user.", "fake", 42, [(b"user.", start - 1), (b"", 7)], events)


@FUZZ
@given(st.randoms(use_true_random=False), st.integers(0, 2))
def test_mutated_data_frames_decode_consistently_or_raise_frame_error(
    rng: random.Random, which: int
) -> None:
    parts = data_parts()
    for variant in mutations(parts[which], rng, 15):
        mutated = list(parts)
        mutated[which] = variant
        stream_or_refuse(mutated)


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_random_stream_parts_raise_only_frame_error(parts: list[bytes]) -> None:
    stream_or_refuse(parts)
    if len(parts) == 3:
        stream_or_refuse([HEARTBEAT_TOPIC, bytes((VERSION, HEARTBEAT)), parts[2]])
        stream_or_refuse([parts[0], DATA_HEADER.pack(1, 1, 1, 1, 1, 1, 0, 0), parts[2]])


@pytest.mark.parametrize(
    ("start", "step"), [(1 << 63, 1), ((1 << 64) - 3, 1), ((1 << 63) - 2, 1), (1, 1 << 61)]
)
def test_data_frames_with_sequences_at_the_64_bit_edges_decode_exactly(
    start: int, step: int
) -> None:
    frame = stream_or_refuse(data_parts(start, step))
    assert isinstance(frame, DataFrame)
    assert frame.first == start
    assert frame.last == start + 2 * step


def test_data_header_lies_are_frame_errors() -> None:
    topic, header, payload = data_parts()
    fixed = DATA_HEADER.size
    _, _, epoch, first, last, count, nlen, nch = DATA_HEADER.unpack_from(header)
    rest = header[fixed:]
    lies = [
        DATA_HEADER.pack(1, 1, epoch, first, last, count + 1, nlen, nch) + rest,
        DATA_HEADER.pack(1, 1, epoch, first, last, 0, nlen, nch) + rest,
        DATA_HEADER.pack(1, 1, epoch, first + 1, last, count, nlen, nch) + rest,
        DATA_HEADER.pack(1, 1, epoch, first, last - 1, count, nlen, nch) + rest,
        DATA_HEADER.pack(1, 1, epoch, last, first, count, nlen, nch) + rest,
        DATA_HEADER.pack(1, 1, epoch, first, last, count, 255, nch) + rest,
        DATA_HEADER.pack(1, 1, epoch, first, last, count, nlen, 0xFFFF) + rest,
        DATA_HEADER.pack(1, 1, epoch, first, last, count, nlen, nch + 1) + rest,
        DATA_HEADER.pack(1, 1, epoch, first, last, count, nlen, nch) + rest + b"\x00",
        DATA_HEADER.pack(1, 1, epoch, first, last, count, 0, 0),
        DATA_HEADER.pack(2, 1, epoch, first, last, count, nlen, nch) + rest,
        DATA_HEADER.pack(1, 9, epoch, first, last, count, nlen, nch) + rest,
        header[:-1],
        header[: fixed - 1],
        DATA_HEADER.pack(1, 1, epoch, first, last, count, 4, 0) + b"\xff\xfe\xfd\xfc",
    ]
    for lie in lies:
        with pytest.raises(FrameError):
            decode_stream([topic, lie, payload], MAX)
    with pytest.raises(FrameError):
        decode_stream([b"other.", header, payload], MAX)  # types outside the topic
    with pytest.raises(FrameError):
        decode_stream([topic, header, payload], len(topic) + len(header) + len(payload) - 1)


_BODIES = [
    b"{}",
    b"[]",
    b"null",
    b'"x"',
    b'{"node": "a", "epoch": 18446744073709551615, "base": 1, "head": 9223372036854775808}',
    b'{"node": "a", "epoch": 18446744073709551616, "base": 1, "head": 1}',
    b'{"node": "a", "epoch": -1, "base": 1, "head": 1}',
    b'{"node": "a", "epoch": 1.0, "base": 1, "head": 1}',
    b'{"node": "a", "epoch": true, "base": 1, "head": 1}',
    b'{"node": "a", "epoch": 1, "base": 1, "head": 1, "chains": [["x", 1], ["x", 2]]}',
    b'{"node": "a", "epoch": 1, "base": 1, "head": 1, "chains": [["x", -1]]}',
    b'{"node": "a", "epoch": 1, "base": 1, "head": 1, "chains": {"x": 1}}',
    b'{"node": "a", "for": 5, "round": 1, "epoch": 1, "base": 1, "head": 1}',
    b'{"node": "a", "node": "b"}',
    b' \n {"node": "a"} \t',
    b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"a": ' + b"[" * 1_000_000,
    b'{"a": 1' + b"0" * 100_000 + b"}",
    b'{"a": 1.' + b"0" * 100_000 + b"}",
    b'{"a": 1e' + b"9" * 100_000 + b"}",
    b'{"a": -1e-' + b"9" * 100_000 + b"}",
    b'{"a": "\\ud800"}',
    b'{"\\udfff": 1}',
    b'{"a": "\xed\xa0\x80"}',
    b'{"a": "\xff"}',
    '\ufeff{"a": 1}'.encode(),
    '{"a": 1}'.encode("utf-16-le"),
    '{"a": 1}'.encode("utf-32"),
    b'{"a": NaN}',
    b'{"a": -Infinity}',
    b'{"a": 1e400}',
    b'{"a": 4.9e-324}',
    b'{"a": [' + b"{}," * 10_000 + b"{}]}",
]


def check_fields(body: dict[str, Any]) -> None:
    """The typed readers raise only FrameError and return the typed values."""
    for key in ("node", "for", "epoch", "base", "head", "round", "a", "prefixes", "drop"):
        for reader in (uint_field, text_field, bool_field, texts_field):
            try:
                value = reader(body, key)
            except FrameError:
                continue
            if reader is uint_field:
                assert type(value) is int
                assert 0 <= value < 1 << 64
    try:
        chains = chains_field(body, "chains")
    except FrameError:
        return
    assert all(type(k) is bytes and type(v) is int and 0 <= v < 1 << 64 for k, v in chains.items())


@pytest.mark.parametrize("body", _BODIES, ids=range(len(_BODIES)))
def test_hostile_json_bodies_raise_only_frame_error(body: bytes) -> None:
    for kind, topic in ((HEARTBEAT, HEARTBEAT_TOPIC), (SYNC, HEARTBEAT_TOPIC)):
        frame = stream_or_refuse([topic, bytes((VERSION, kind)), body])
        if frame is not None:
            assert isinstance(frame, ControlFrame)
            check_fields(frame.body)
    try:
        message = decode_request([bytes((VERSION, CREDIT)), b"", b"x", b"r", body], MAX)
    except FrameError:
        return
    json.dumps(message.body).encode()  # no lone surrogate slipped through
    check_fields(message.body)


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_any_json_value_as_a_body_is_checked_or_frame_error(value: Any) -> None:
    try:
        raw = json.dumps(value).encode()
    except ValueError:
        return
    try:
        message = decode_request([bytes((VERSION, CREDIT)), b"", b"x", b"r", raw], MAX)
    except FrameError:
        return
    check_fields(message.body)


# -- the request channel (DEALER -> ROUTER) ----------------------------------------------------


def request_or_refuse(parts: list[bytes]) -> Request | None:
    try:
        message = decode_request(parts, MAX)
    except FrameError:
        return None
    assert isinstance(message.body, dict)
    for text in (message.to, message.sender, message.rid):
        text.encode()
    if message.payload is not None:
        try:
            events = decode_events(message.payload)
        except FrameError:
            return message
        for event in events:
            check_valid(event)
    return message


@FUZZ
@given(st.randoms(use_true_random=False), st.integers(0, 5))
def test_mutated_requests_raise_only_frame_error(rng: random.Random, which: int) -> None:
    parts = encode_request(
        Request(
            PUBLISH,
            "a",
            "fake",
            "r1",
            {"epoch": 1, "n": [1.5, "é"]},
            encode_batch(sample_events(2)),
        )
    )
    for variant in mutations(parts[which], rng, 15):
        mutated = list(parts)
        mutated[which] = variant
        request_or_refuse(mutated)


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_random_request_parts_raise_only_frame_error(parts: list[bytes]) -> None:
    request_or_refuse(parts)


# -- other decoders of outside input -----------------------------------------------------------


@FUZZ
@given(
    st.binary(max_size=60), st.binary(max_size=60), st.sampled_from([*_BODIES[:15], b"", b"\x00"])
)
def test_the_brokers_origin_reader_returns_a_name_or_none(
    topic: bytes, header: bytes, body: bytes
) -> None:
    for t in (topic, HEARTBEAT_TOPIC + topic):
        found = _stream_origin(t, header, body)
        assert found is None or type(found) is str


# A QUERY body (what a peer sends) with a field of the wrong JSON type is a
# FrameError (a ValueError), never a TypeError or AttributeError from deeper in,
# and nothing is coerced: the string "false" is not a boolean.
@pytest.mark.parametrize(
    "body",
    [
        {"time_range": 5},
        {"time_range": [1, 2]},
        {"correlation_id": 5},
        {"correlation_id": ["x"]},
        {"limit": "10"},
        {"event_types": 5},
        {"after_sequence": "1"},
        {"source": 5},
        {"descending": "false"},
        {"limit": -1},
        {"time_range": ["2024-01-01T00:00:00+00:00"]},
        {"time_range": ["not a time", None]},
        {"correlation_id": "not a uuid"},
    ],
    ids=str,
)
def test_query_bodies_of_the_wrong_type_raise_value_error(body: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        query_from_json(body)


def test_a_query_crosses_as_json_unchanged() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    query = EventQuery(
        event_types=["agent.*", "tool.error"],
        time_range=(start, None),
        correlation_id=uuid.UUID(int=7),
        source="planner",
        after_sequence=12,
        limit=50,
        descending=True,
    )
    assert query_from_json(json.loads(json.dumps(query_to_json(query)))) == query
    assert query_from_json({}) == EventQuery()


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
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
                "other",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=12),
            st.binary(max_size=4),
            st.lists(st.text(max_size=3), max_size=3),
            st.dictionaries(
                st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()), max_size=2
            ),
            st.sampled_from(
                [
                    "a.b",
                    "$x",
                    "2024-01-01T00:00:00+00:00",
                    "0001-01-01T00:00:00+01:00",
                    "9999-12-31T23:59:59-01:00",
                    "2024-01-01",
                    str(uuid.UUID(int=1)),
                    "\u0660" * 32,  # Arabic-Indic zeros: digits to str.isdigit, not to a UUID
                    (1 << 64) - 1,
                    1 << 64,
                    -(1 << 63),
                    1 << 63,
                    10**400,
                    float("nan"),
                    (1,),
                    {1: 2},
                ]
            ),
        ),
    )
)
def test_hostile_dicts_give_a_valid_event_or_invalid_event_error(d: dict[str, Any]) -> None:
    try:
        event = Event.from_dict(d)
    except InvalidEventError:
        return
    check_valid(event)


# -- a live node receiving forged frames ------------------------------------------------------


def still_works(tmp_path: Path, nodes: Callable[..., EventBus], a: EventBus) -> None:
    """``a`` still receives (a new real peer's event) and sends (its own event back)."""
    got_a, got_b = Collector(1), Collector(1)
    a.subscribe("real.*", got_a)
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),))
    b.subscribe("back.*", got_b)
    assert node(a).wait_for_peers(["b"], WAIT)
    assert node(b).wait_for_peers(["a"], WAIT)
    b.publish("real.thing", "in").get(timeout=WAIT)
    assert got_a.wait()[0].data == "in"
    a.publish("back.thing", "out").get(timeout=WAIT)
    assert got_b.wait()[0].data == "out"


def forged_requests() -> list[list[bytes]]:
    """Request-channel messages ``decode_request`` refuses: each must be counted and dropped."""
    rng = random.Random(1234)
    good = encode_request(
        Request(CREDIT, "a", "fake", "credit", {"epoch": 1, "acked": 0, "window": 8})
    )
    forged: list[list[bytes]] = [
        [b""],
        [b"\x01"],
        [b"\x02\x19", b"a", b"fake", b"r", b"{}"],
        [b"\x01\x63", b"a", b"fake", b"r", b"{}"],
        [b"\x01\x19\x00", b"a", b"fake", b"r", b"{}"],
        [b"\x01\x19", b"a", b"\xff", b"r", b"{}"],
        [b"\x01\x19", b"a", b"fake", b"r", b"{}", b"", b"extra"],
        [b"\x01\x19", b"a", b"fake", b"r", b'{"a": ' + b"[" * 200_000 + b"}"],
        [b"\x01\x19", b"a", b"fake", b"r", b'{"a": 1' + b"0" * 50_000 + b"}"],
        [b"\x01\x19", b"a", b"fake", b"r", b'{"a": "\\ud800"}'],
        [b"\x01\x19", b"a", b"fake", b"r", '{"a": 1}'.encode("utf-16")],
    ]
    while len(forged) < 80:
        which = rng.randrange(len(good))
        (variant,) = mutations(good[which], rng, 1)
        parts = list(good)
        parts[which] = variant
        if rng.random() < 0.2:
            parts = parts[: rng.randrange(1, len(parts))]
        try:
            decode_request(parts, MAX)
        except FrameError:
            forged.append(parts)
    return forged


def test_a_node_drops_and_counts_forged_frames_and_keeps_serving(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # The fake origin never sends a heartbeat: a load that stretches the test past
    # heartbeat_timeout must not make a declare it dead before the last frame.
    a = nodes("a", listen=ipc(tmp_path, "a"), heartbeat_timeout=3600.0)
    got = Collector(1)
    a.subscribe("user.**", got)
    with fake_sockets(tmp_path, a) as (fake_pub, dealer):
        hello = {"kind": "node", "pub": ipc(tmp_path, "fake"), "epoch": 42, "base": 1}
        dealer.send_multipart(encode_request(Request(HELLO, "", "fake", "hello", hello)))
        assert dealer.poll(int(WAIT * 1000))
        assert decode_request(dealer.recv_multipart(), MAX).kind == WELCOME
        # Answer each sync subscription of a's (the fake origin's head is 0: a new round
        # starts when a's patterns reach its stream) until a took one, and until the fake
        # publisher has a's "user" subscription (a publisher drops what no one takes).
        # Its head known, a frame far past it is out of range, not a gap to fetch.
        subscribed = False
        deadline = time.monotonic() + WAIT
        while not (subscribed and "fake" in node(a).statistics().synced_peers):
            assert time.monotonic() < deadline, "a never took a sync reply"
            if not fake_pub.poll(20):
                continue
            message = fake_pub.recv()
            subscribed = subscribed or message == b"\x01user"
            sync = parse_sync_topic(message[1:])
            if message[:1] == b"\x01" and sync is not None:
                body = {
                    "node": "fake",
                    "epoch": 42,
                    "base": 1,
                    "head": 0,
                    "for": sync[0],
                    "round": sync[1],
                }
                fake_pub.send_multipart(encode_control(message[1:], SYNC, body))
        before = node(a).statistics()
        forged = forged_requests()
        for parts in forged:
            dealer.send_multipart(parts)
        # the stream: garbage, then data frames whose sequences are at or past 2**63
        garbage = [
            [b"user.", b"\x01\x01" + b"\x00" * 10, b""],
            [b"user.", b"\x01", b"\x0a\x05"],
            [b"user."],
            [b"user.", data_parts()[1], b"\x0a\x05"],
            [HEARTBEAT_TOPIC, b"\x01\x02", b'{"node": "fake", "epoch": 42, "base": 1, "head": -1}'],
            [
                HEARTBEAT_TOPIC,
                b"\x01\x02",
                b'{"node": "fake", "epoch": 42, "base": 1, "head": 1e400}',
            ],
        ]
        for parts in garbage:
            fake_pub.send_multipart(parts)
        for parts in (data_parts(1 << 63), data_parts((1 << 64) - 3), data_parts(1 << 40)):
            fake_pub.send_multipart(parts)
        expected_dropped = before.frames_dropped + len(forged) + len(garbage)
        assert node(a).wait(lambda s: s.frames_dropped >= expected_dropped, WAIT)
        assert node(a).wait(lambda s: s.sequences_rejected >= before.sequences_rejected + 9, WAIT)
        # a legitimate request on the same connection is still answered
        dealer.send_multipart(encode_request(Request(METRICS, "a", "fake", "m1", {})))
        assert dealer.poll(int(WAIT * 1000))
        reply = decode_request(dealer.recv_multipart(), MAX)
        while reply.rid != "m1":  # a's own requests (credit) share the connection
            assert dealer.poll(int(WAIT * 1000))
            reply = decode_request(dealer.recv_multipart(), MAX)
        assert reply.kind == EVENTS
        (metrics,) = decode_events(reply.payload)
        assert metrics.event_type == "node.metrics"
        # and a good data frame of the same origin after all that is delivered
        ok = sample_events(1, start=1)
        fake_pub.send_multipart(encode_data(b"user.", "fake", 42, [], ok))
        events = got.wait()
        assert [e.id for e in events] == [ok[0].id]
        assert node(a).statistics().frames_dropped == expected_dropped
    still_works(tmp_path, nodes, a)
