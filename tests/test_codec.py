"""The protobuf codec and the dict form: exact round trips, and garbage never crashes."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors._codec import events as _codec
from actors._codec._pb.llmspell.events.v1 import events_pb2
from actors._errors import InvalidEventError
from actors._model.event import Event, with_fields

PbEvent: Any = events_pb2.Event
PbBatch: Any = events_pb2.EventBatch

# -- strategies -------------------------------------------------------------------------

segments = st.text(
    alphabet=st.characters(
        blacklist_characters=".*?[]{}", blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")
    ),
    min_size=1,
    max_size=8,
).filter(lambda s: not any(c.isspace() for c in s))
event_types = (
    st.lists(segments, min_size=1, max_size=4).map(".".join).filter(lambda t: len(t) <= 255)
)
# Every character but surrogates, which data refuses (a pair of them written
# as two JSON escapes reads back as one character: no exact round trip).
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
    lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1)))
)
timestamps = st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.just(UTC) | offsets,
)
texts = st.text(max_size=12)
uuids = st.uuids()


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        event_type=draw(event_types),
        data=draw(json_values),
        id=draw(uuids),
        timestamp=draw(timestamps),
        correlation_id=draw(st.none() | uuids),
        causation_id=draw(st.none() | uuids),
        source=draw(st.none() | texts),
        target=draw(st.none() | texts),
        tags=draw(st.lists(texts, max_size=3)),
        priority=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        ttl=draw(st.none() | st.floats(min_value=0, allow_infinity=False) | st.integers(0, 10**6)),
        language=draw(st.sampled_from(["python", "rust", "", "lua"])),
        metadata=draw(st.dictionaries(texts, texts, max_size=3)),
        sequence=draw(st.none() | st.integers(min_value=0, max_value=2**64 - 1)),
        origin=draw(st.none() | texts),
    )


class _Text(str):
    pass


@pytest.mark.parametrize(
    "data",
    [
        "\ud83d\ude00",  # a high and a low surrogate: JSON would read back one character
        "\ud800",
        {"k": "ok \udfff"},
        {"\udc80": 1},
        ["fine", ["deeper", "x\ud800"]],
        _Text("\ud800"),
        {_Text("\ud800"): 1},
    ],
)
def test_data_holding_a_surrogate_cannot_be_encoded(data: object) -> None:
    # Built (a check of every non-ASCII string on the publish path would cost
    # more than the event), but never written: no JSON gives it back exactly.
    event = Event(event_type="t.x", data=data)
    with pytest.raises(InvalidEventError, match="surrogate"):
        event.to_bytes()


def test_data_with_any_other_character_round_trips_exactly() -> None:
    text = "".join(map(chr, range(0xD000, 0xD800))) + "\U0001f600\uffff\U0010ffff"
    event = Event(event_type="t.x", data={text: [text]})
    assert Event.from_bytes(event.to_bytes()).data == {text: [text]}


def test_a_backslash_before_u_d800_in_text_is_only_text() -> None:
    event = Event(event_type="t.x", data="\\ud800")  # six characters, no surrogate
    assert Event.from_bytes(event.to_bytes()).data == "\\ud800"


# -- round trips --------------------------------------------------------------------------


@given(events())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_bytes_round_trip_is_exact(event: Event) -> None:
    data = event.to_bytes()
    assert isinstance(data, bytes)
    back = Event.from_bytes(data)
    assert back == event
    assert back.to_bytes() == data
    assert back.timestamp.tzinfo is UTC


@given(events())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_dict_round_trip_is_exact_even_through_json(event: Event) -> None:
    d = event.to_dict()
    assert Event.from_dict(d) == event
    assert Event.from_dict(json.loads(json.dumps(d))) == event


@given(st.lists(events(), max_size=5))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_batch_round_trip(batch: list[Event]) -> None:
    data = _codec.encode_batch(batch)
    assert _codec.decode_batch(data) == batch
    # The hand-framed batch is a valid EventBatch message.
    assert len(PbBatch.FromString(data).events) == len(batch)


def test_batch_framing_matches_protobuf() -> None:
    batch = [Event(event_type="a", data="x" * size) for size in (0, 100, 200, 20_000)]
    expected = PbBatch(events=[_codec.event_to_message(e) for e in batch]).SerializeToString()
    assert _codec.encode_batch(batch) == expected
    assert _codec.encode_batch([]) == b""
    assert _codec.decode_batch(b"") == []


def test_int_and_float_stay_distinct() -> None:
    event = Event(event_type="a", data={"i": 1, "f": 1.0, "big": 2**70, "neg": -0.0})
    back = Event.from_bytes(event.to_bytes())
    assert type(back.data["i"]) is int  # type: ignore[index,call-overload]
    assert type(back.data["f"]) is float  # type: ignore[index,call-overload]
    assert back.data["big"] == 2**70  # type: ignore[index,call-overload]
    assert str(back.data["neg"]) == "-0.0"  # type: ignore[index,call-overload]


def test_encoding_is_deterministic_across_metadata_order() -> None:
    keys = [f"key{i}" for i in range(40)]
    a = Event(event_type="a", metadata={k: k for k in keys})
    b = with_fields(a, metadata=MappingProxyType({k: k for k in reversed(keys)}))
    assert a == b
    assert a.to_bytes() == b.to_bytes()


def test_accepts_bytearray_and_memoryview() -> None:
    event = Event(event_type="a", data=[1])
    data = event.to_bytes()
    assert Event.from_bytes(bytearray(data)) == event  # type: ignore[arg-type]
    assert Event.from_bytes(memoryview(data)) == event  # type: ignore[arg-type]


def test_data_mutated_after_construction_fails_to_encode_cleanly() -> None:
    data: dict[str, Any] = {"k": 1}
    event = Event(event_type="a", data=data)
    data["bad"] = {1, 2}
    with pytest.raises(InvalidEventError, match="cannot encode"):
        event.to_bytes()
    data["bad"] = float("nan")
    with pytest.raises(InvalidEventError):
        event.to_bytes()


# -- malformed input -------------------------------------------------------------------------


def _message(**overrides: Any) -> bytes:
    event = Event(event_type="a.b", data={"k": 1})
    message = _codec.event_to_message(event)
    for name, value in overrides.items():
        if value is None:
            message.ClearField(name)
        else:
            setattr(message, name, value)
    return message.SerializeToString(deterministic=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"schema_version": 2}, "schema_version 2"),
        ({"schema_version": None}, "schema_version 0"),
        ({"id": b"\x01" * 5}, "id must be 16 bytes"),
        ({"id": None}, "id must be 16 bytes"),
        ({"correlation_id": b"\x01" * 3}, "correlation_id"),
        ({"causation_id": b"\x01" * 17}, "causation_id"),
        ({"event_type": ""}, "event_type"),
        ({"event_type": "a..b"}, "event_type"),
        ({"data_json": b"{"}, "invalid event"),
        ({"data_json": b"NaN"}, "NaN"),
        ({"data_json": b"[Infinity]"}, "Infinity"),
        ({"data_json": b"1e999"}, "finite"),
        ({"data_json": b"\xff"}, "invalid event"),
        ({"data_json": b"1 2"}, "extra"),
        ({"data_json": b"[" * 100_000}, "invalid event"),
        ({"data_json": b"[" * 201 + b"]" * 201}, "nested deeper"),
        ({"data_json": b'{"a":[1e999]}'}, "finite"),
        ({"data_json": b"9" * 4250}, "too large"),
        ({"timestamp_us": 2**62}, "invalid event"),
        ({"ttl": -1.0}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
    ],
)
def test_invalid_content_raises_invalid_event_error(overrides: dict[str, Any], reason: str) -> None:
    data = _message(**overrides)
    with pytest.raises(InvalidEventError) as info:
        Event.from_bytes(data)
    assert reason in str(info.value)


def test_empty_data_json_means_none() -> None:
    assert Event.from_bytes(_message(data_json=None)).data is None


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff",
        b"\x12\x02\xff\xfe",  # event_type with bad UTF-8
        b"\x0a",  # truncated
        b"\x08\x01" + b"\x1a\x10" + b"\x00" * 5,  # truncated id
    ],
)
def test_malformed_bytes(data: bytes) -> None:
    with pytest.raises(InvalidEventError):
        Event.from_bytes(data)
    with pytest.raises(InvalidEventError):
        _codec.decode_batch(b"\x0a" + bytes([len(data)]) + data)


@pytest.mark.parametrize("data", ["text", None, 5, [1]])
def test_non_bytes_input(data: object) -> None:
    with pytest.raises(InvalidEventError, match="expected bytes"):
        Event.from_bytes(data)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="expected bytes"):
        _codec.decode_batch(data)  # type: ignore[arg-type]


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_random_bytes_decode_or_raise_invalid_event_error(data: bytes) -> None:
    try:
        event = Event.from_bytes(data)
    except InvalidEventError:
        return
    assert Event.from_bytes(event.to_bytes()) == event


@given(events(), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_corrupted_bytes_decode_or_raise_invalid_event_error(
    event: Event, draw: st.DataObject
) -> None:
    data = bytearray(event.to_bytes())
    for _ in range(draw.draw(st.integers(1, 4))):
        index = draw.draw(st.integers(0, len(data) - 1))
        data[index] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(data)))
    for candidate in (bytes(data), bytes(data[:cut])):
        try:
            decoded = Event.from_bytes(candidate)
        except InvalidEventError:
            continue
        assert Event.from_bytes(decoded.to_bytes()) == decoded


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_batches_decode_or_raise_invalid_event_error(data: bytes) -> None:
    with contextlib.suppress(InvalidEventError):
        _codec.decode_batch(data)


# -- the dict form rejects bad input ------------------------------------------------------


@given(
    st.dictionaries(
        st.sampled_from(["event_type", "data", "id", "timestamp", "tags", "ttl", "priority"]),
        st.none() | st.integers() | st.text() | st.lists(st.integers()) | st.floats(),
    )
)
@settings(max_examples=300)
def test_from_dict_never_raises_anything_but_invalid_event_error(d: dict[str, Any]) -> None:
    try:
        event = Event.from_dict(d)
    except InvalidEventError:
        return
    assert Event.from_dict(event.to_dict()) == event


def test_schema_field_numbers_are_stable() -> None:
    numbers = {f.name: f.number for f in PbEvent.DESCRIPTOR.fields}
    assert numbers == {
        "schema_version": 1,
        "event_type": 2,
        "id": 3,
        "timestamp_us": 4,
        "data_json": 5,
        "correlation_id": 6,
        "causation_id": 7,
        "source": 8,
        "target": 9,
        "tags": 10,
        "priority": 11,
        "ttl": 12,
        "language": 13,
        "metadata": 14,
        "sequence": 15,
        "origin": 16,
    }
    assert PbEvent.DESCRIPTOR.full_name == "llmspell.events.v1.Event"
    assert PbBatch.DESCRIPTOR.fields_by_name["events"].number == 1


def test_timestamps_keep_microseconds_at_the_extremes() -> None:
    for stamp in (
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        event = Event(event_type="a", timestamp=stamp, id=uuid.UUID(int=1))
        assert Event.from_bytes(event.to_bytes()).timestamp == stamp
        assert Event.from_dict(event.to_dict()).timestamp == stamp
