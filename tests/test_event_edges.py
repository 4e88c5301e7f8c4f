"""Edge cases of the event model, its codec and the wire's JSON bodies.

Each test holds the code to a documented promise; see the docstrings.
"""

from __future__ import annotations

import copy
import enum
import random
import struct
import uuid
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest

from actors import Event, EventBus, EventConfig, EventQuery, PersistentEventBus
from actors._cluster import wire
from actors._codec import events as codec
from actors._errors import FrameError, InvalidEventError
from actors._model.event import MAX_SOURCE_BYTES, wire_of
from actors._model.event_checks import (
    FAST_WALK,
    MAX_DATA_DEPTH,
    MAX_DATA_VALUES,
    json_room,
    shared_room,
)

_ID = uuid.UUID(int=0x1234)
_STAMP = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


# -- determinism: "equal events encode to equal bytes" ------------------------------------


def test_the_same_event_encodes_to_the_same_bytes_and_data_keeps_its_key_order() -> None:
    """actors/_codec/events.py: metadata entries are sorted (the same event gives the
    same bytes however its metadata was built); ``data`` is written as held, so a
    dict's key order survives a round trip, and equal events whose data keys come
    in another order encode differently (the promise says so)."""
    a = Event(event_type="a", id=_ID, timestamp=_STAMP, metadata={"m": "1", "n": "2"})
    b = Event(event_type="a", id=_ID, timestamp=_STAMP, metadata={"n": "2", "m": "1"})
    assert a.to_bytes() == b.to_bytes()
    data = {"y": {"q": 2, "p": 1}, "x": 1}
    back = Event.from_bytes(Event(event_type="a", id=_ID, timestamp=_STAMP, data=data).to_bytes())
    assert list(back.data) == ["y", "x"]
    assert list(back.data["y"]) == ["q", "p"]


# -- decoded events must be valid events ---------------------------------------------------


def test_from_bytes_refuses_a_source_the_constructor_refuses() -> None:
    """``Event.from_bytes``: "Raise InvalidEventError if they are malformed, ... or
    describe an invalid event"; ``Event``: "source is at most MAX_SOURCE_BYTES
    (65,535) bytes in UTF-8".  The codec never checks the source size, so the
    decoded event is one ``Event(...)`` refuses, and its dict round trip fails."""
    message = codec.event_to_message(Event(event_type="a", id=_ID, timestamp=_STAMP))
    message.source = "x" * (MAX_SOURCE_BYTES + 1)
    raw = message.SerializeToString(deterministic=True)
    with pytest.raises(InvalidEventError, match="source"):
        Event.from_bytes(raw)
    with pytest.raises(InvalidEventError, match="source"):
        codec.decode_batch(b"\x0a" + _varint(len(raw)) + raw)


# -- data: "dict (str keys) ... (subclasses allowed)" ---------------------------------------


class _Key(enum.StrEnum):
    USER = "user"


class _S(str):
    pass


@pytest.mark.parametrize("key", [_Key.USER, _S("user")], ids=["StrEnum", "str-subclass"])
def test_a_plain_dict_with_str_subclass_keys_is_json_data(key: str) -> None:
    """event_checks.py: data is built from "dict (str keys), ... (subclasses allowed)".
    A dict *subclass* with such keys is accepted, a plain dict is refused with the
    fallback reason "data is not a JSON value" (explain_json finds nothing wrong):
    ``is_json``'s dict fast path tests ``key.__class__ is not str``."""
    from actors._model.event_checks import explain_json, is_json  # noqa: PLC0415

    class D(dict):  # type: ignore[type-arg]
        pass

    assert is_json(D({key: 1}), 0)  # the subclass path accepts it
    assert explain_json({key: 1}) == "data is not a JSON value"  # nothing to explain
    event = Event(event_type="a", data={key: 1})
    assert Event.from_bytes(event.to_bytes()) == event


# -- validation raises InvalidEventError, nothing else --------------------------------------


class _OffsetTooLarge(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)

    def dst(self, dt: datetime | None) -> None:
        return None


class _OffsetNotATimedelta(tzinfo):
    def utcoffset(self, dt: datetime | None) -> Any:
        return 3600

    def dst(self, dt: datetime | None) -> None:
        return None


@pytest.mark.parametrize("tz", [_OffsetTooLarge(), _OffsetNotATimedelta()], ids=["30h", "int"])
def test_a_timestamp_with_a_broken_tzinfo_raises_invalid_event_error(tz: tzinfo) -> None:
    """SPEC section 2: an invalid field "raises InvalidEventError (a ValueError) with
    the reason"; event.py: "Raise InvalidEventError if any field is invalid".
    ``check_timestamp`` calls ``value.utcoffset()`` outside its try, so a tzinfo
    whose offset is out of range or not a timedelta leaks ValueError/TypeError."""
    stamp = datetime(2024, 1, 1, tzinfo=tz)
    with pytest.raises(InvalidEventError):
        Event(event_type="a", timestamp=stamp)
    with pytest.raises(InvalidEventError):
        Event.from_dict({"event_type": "a", "timestamp": stamp})


# -- data_json is "UTF-8 JSON" (proto), whitespace included ----------------------------------


@pytest.mark.parametrize("text", [b'{"a":1}\n', b' {"a":1}', b'\t{"a": 1}\r\n'])
def test_data_json_surrounded_by_json_whitespace_decodes(text: bytes) -> None:
    """events.proto: ``data_json`` is "The data as UTF-8 JSON"; docs/wire.md is "Enough
    to write a node in another language".  RFC 8259 JSON text is ``ws value ws``
    (Go's json.Encoder, for one, ends with a newline), but ``_loads`` runs the raw
    scanner from offset 0 and refuses anything after the value, so such an event is
    refused as "data_json is not JSON" / "extra characters"."""
    message = codec.event_to_message(Event(event_type="a", id=_ID, timestamp=_STAMP))
    message.data_json = text
    event = Event.from_bytes(message.SerializeToString(deterministic=True))
    assert event.data == {"a": 1}


# -- wire JSON bodies: a lone surrogate refuses the message ---------------------------------

_SURROGATE_BODIES = [
    pytest.param(b'{"node":"\xed\xa0\x80"}', id="utf8-encoded-surrogate-value"),
    pytest.param(b'{"\xed\xb0\x80":1}', id="utf8-encoded-surrogate-key"),
    pytest.param('{"node":"\\ud800"}'.encode("utf-16-le"), id="utf16le-escape"),
    pytest.param('{"node":"\\udc00"}'.encode("utf-32"), id="utf32-escape"),
]


@pytest.mark.parametrize("body", _SURROGATE_BODIES)
def test_a_body_holding_a_lone_surrogate_is_refused_however_it_is_spelled(body: bytes) -> None:
    """wire.py: "text that is not Unicode (a lone surrogate escape) refuse[s] the whole
    message"; docs/wire.md section 4: drop a JSON body with "text that is not Unicode";
    "All text is UTF-8".  ``_json_object`` passes bytes to ``json.loads``, which
    guesses UTF-16/32 and decodes with ``surrogatepass``; the surrogate walk only runs
    when the raw bytes hold a UTF-8 backslash-u, so these bodies come through holding
    a lone surrogate."""
    with pytest.raises(FrameError):
        wire.decode_stream([wire.HEARTBEAT_TOPIC, bytes((wire.VERSION, 2)), body], 1 << 20)
    with pytest.raises(FrameError):
        wire.decode_request([bytes((wire.VERSION, 16)), b"", b"peer", b"hello", body], 1 << 20)


# -- decoding a protobuf with wrong wire types and unknown fields ---------------------------


def _varint(value: int) -> bytes:
    """The codec's varint of ``value`` as 64 bits (negative numbers as protobuf writes them)."""
    return codec._varint(value & ((1 << 64) - 1))  # noqa: SLF001 - the codec's own


def _random_field(rng: random.Random, base: bytes) -> bytes:
    number = rng.choice([*range(1, 18), 1000, (1 << 29) - 1])
    kind = rng.choice([0, 1, 2, 3, 4, 5])
    tag = _varint(number << 3 | kind)
    if kind == 0:
        return tag + _varint(rng.choice([0, 1, 2**63, 2**64 - 1, rng.getrandbits(64)]))
    if kind == 1:
        value = rng.choice([float("nan"), float("inf"), -1.0, -0.0, 1e308])
        return tag + struct.pack("<d", value)
    if kind == 5:
        return tag + rng.randbytes(4)
    if kind == 2:
        body = rng.choice(
            [b"", b"null", b'{"a":1}', b"\xff", b"\x00" * 16, b"a.b", base, rng.randbytes(12)]
        )
        return tag + _varint(len(body)) + body
    return tag  # a group start or end, unpaired


def test_fields_of_the_wrong_wire_type_decode_to_valid_events_or_invalid_event_error() -> None:
    """Decoding never raises anything but InvalidEventError, and what it returns is a
    valid event: its bytes and dict forms round-trip, and its kept bytes decode to it."""
    base = Event(
        event_type="a.b", data={"k": [1, 2.5]}, source="s", tags=["t"], ttl=3.0,
        metadata={"m": "n"}, sequence=4, origin="o",
    ).to_bytes()  # fmt: skip
    rng = random.Random(20240506)
    for _ in range(4000):
        parts = [base] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 6)):
            parts.insert(rng.randint(0, len(parts)), _random_field(rng, base))
        raw = b"".join(parts)
        for decode in (codec.decode_event, codec.decode_batch):
            try:
                decoded = decode(raw)
            except InvalidEventError:
                continue
            for event in decoded if isinstance(decoded, list) else [decoded]:
                assert Event.from_bytes(event.to_bytes()) == event
                assert Event.from_dict(event.to_dict()) == event
                assert Event.from_bytes(codec.encode_shared(event)) == event


# -- one Event object published on several buses ------------------------------------------


def test_one_event_object_published_on_two_buses_gets_a_sequence_on_each(tmp_path: Path) -> None:
    """SPEC 4: publish "resolves to the published Event with sequence set", one sequence
    per bus; the caller's (immutable) event, here one decoded with its bytes kept, is
    never stamped, and each bus journals its own sequence."""
    original = Event(event_type="user.login", data={"k": 1}, sequence=77, origin="far")
    event = Event.from_bytes(original.to_bytes())
    before = copy.copy(event)
    kept = wire_of(event)
    config = EventConfig(persistence_path=str(tmp_path / "j"))
    with EventBus() as plain, PersistentEventBus(config) as persistent:
        plain.publish("user.other").get(timeout=10)
        futures = [plain.publish(event), persistent.publish(event)]
        futures += persistent.publish_many([event, event])
        published = [f.get(timeout=10) for f in futures]
        plain.flush(timeout=10)
        persistent.flush(timeout=10)
        journaled = persistent.query(EventQuery())
    assert [e.sequence for e in published] == [2, 1, 2, 3]
    assert all(e.origin is None and e.id == event.id for e in published)
    assert len({id(e) for e in published} | {id(event)}) == 5
    assert event == before == original
    assert event.sequence == 77
    assert wire_of(event) == kept
    assert [e.sequence for e in journaled] == [1, 2, 3]
    assert all(e.data == {"k": 1} for e in journaled)


def _shared(levels: int) -> list[object]:
    """Return two references to one list, ``levels`` times over (2**levels leaves)."""
    value: list[object] = [0]
    for _ in range(levels):
        value = [value, value]
    return value


def test_data_that_shares_its_parts_is_refused_by_its_size_not_walked_forever() -> None:
    """Forty levels of ``[a, a]``: 2**40 values once written out (terabytes of JSON).

    Before the bound, the check walked every path through the shared lists
    and never returned; now it counts values as the JSON text would hold
    them and stops at ``MAX_DATA_VALUES``."""
    from actors._model.event import MAX_DATA_VALUES  # noqa: PLC0415

    with pytest.raises(InvalidEventError, match=r"more than 10,000,000 values"):
        Event(event_type="a.b", data=_shared(40))
    with pytest.raises(InvalidEventError, match=r"more than 10,000,000 values"):
        Event(event_type="a.b", data={"k": _shared(40)})
    assert MAX_DATA_VALUES == 10_000_000


def test_shared_data_within_the_bound_is_accepted_and_encodes_as_written_out() -> None:
    """Sharing is not refused as such: ten levels (2,046 values) pass and round-trip."""
    data = _shared(10)
    event = Event(event_type="a.b", data=data)
    assert Event.from_bytes(event.to_bytes()).data == data


def test_the_bound_counts_every_value_of_every_list_and_dict() -> None:
    """Exactly ``MAX_DATA_VALUES`` values pass; one more is refused (a list of lists)."""
    row = [0] * 1000
    rows = MAX_DATA_VALUES // 1000 - 1
    data = [row] * rows  # rows lists plus rows * 1000 ints: MAX_DATA_VALUES - 1000 + rows
    used = rows + rows * 1000
    assert json_room(data, 0, used) == 0
    assert json_room(data, 0, used - 1) == -1
    assert json_room({"a": [1, 2], "b": {"c": None}}, 0, 5) == 0
    assert json_room({"a": [1, 2], "b": {"c": None}}, 0, 4) == -1
    # The walk that counts a shared part without walking it again agrees.
    assert shared_room(data, 0, used) == 0
    assert shared_room(data, 0, used - 1) == -1
    assert shared_room({"a": [1, 2], "b": {"c": None}}, 0, 5) == 0
    assert shared_room({"a": [1, 2], "b": {"c": None}}, 0, 4) == -1
    # And so does the event: data at the bound passes, one value more is refused.
    assert Event(event_type="a.b", data=[row] * (MAX_DATA_VALUES // 1001)).data is not None
    with pytest.raises(InvalidEventError, match=r"more than 10,000,000 values"):
        Event(event_type="a.b", data=[row] * (MAX_DATA_VALUES // 1001 + 1))


class _Walked(list):  # type: ignore[type-arg]
    """A list that counts how often the checks walk it."""

    walks = 0

    def __iter__(self) -> Any:
        _Walked.walks += 1
        return super().__iter__()


def test_shared_data_is_refused_without_walking_its_parts_again() -> None:
    """The refusal comes from counting: past the plain walk's first ``FAST_WALK``
    values, each shared list is walked once, not once per place it appears
    (2**40 places here; the bound alone would walk 10,000,000 values)."""
    value: list[object] = _Walked([0])
    for _ in range(40):
        value = _Walked([value, value])
    _Walked.walks = 0
    with pytest.raises(InvalidEventError, match=r"more than 10,000,000 values"):
        Event(event_type="a.b", data=value)
    assert _Walked.walks < FAST_WALK


def test_a_shared_part_placed_deeper_is_held_to_the_depth_bound_there() -> None:
    deep: list[object] = [0]
    for _ in range(MAX_DATA_DEPTH - 5):
        deep = [deep]
    assert Event(event_type="a.b", data=[deep, deep]).data is not None  # depth 196: fits
    with pytest.raises(InvalidEventError, match="nested deeper than"):
        Event(event_type="a.b", data=[deep, [[[[[deep]]]]]])  # the same list, 5 deeper
