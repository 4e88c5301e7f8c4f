"""Frame encoding and decoding (``_cluster.wire``): round trips, and garbage never crashes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import Event
from actors._cluster.wire import (
    CORRELATED,
    DATA_HEADER,
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    HELLO,
    RECOVER,
    SYNC,
    VERSION,
    ControlFrame,
    DataFrame,
    FrameError,
    Request,
    RequestTooLargeError,
    decode_request,
    decode_stream,
    encode_control,
    encode_data,
    encode_request,
    parse_sync_topic,
    sync_topic,
)

MAX = 1 << 20


def events(origin: str = "a", start: int = 10, n: int = 3) -> list[Event]:
    return [
        Event(event_type=f"user.login{i}", data={"i": i}, sequence=start + 2 * i, origin=origin)
        for i in range(n)
    ]


def valid_frame() -> list[bytes]:
    return encode_data(b"user.", "a", 42, [(b"user.", 7), (b"", 9)], events())


def test_data_frame_round_trip() -> None:
    sent = events()
    frame = decode_stream(encode_data(b"user.", "a", 42, [(b"user.", 7), (b"", 9)], sent), MAX)
    assert isinstance(frame, DataFrame)
    assert frame.origin == "a"
    assert frame.epoch == 42
    assert (frame.first, frame.last) == (10, 14)
    assert frame.chains == ((b"user.", 7), (b"", 9))
    assert frame.events == sent
    assert [e.sequence for e in frame.events] == [10, 12, 14]


def test_control_frame_round_trip() -> None:
    body = {"node": "a", "epoch": 1, "base": 1, "head": 5, "chains": [["user.", 4]]}
    frame = decode_stream(encode_control(HEARTBEAT_TOPIC, HEARTBEAT, body), MAX)
    assert frame == ControlFrame(HEARTBEAT_TOPIC, HEARTBEAT, body)


def test_request_round_trip() -> None:
    message = Request(RECOVER, "b", "a", "r1", {"after": 1, "upto": 9, "prefixes": ["x."]})
    assert decode_request(encode_request(message), MAX) == message
    with_payload = Request(CORRELATED, "", "a", "r2", {}, b"\x0a\x00")
    assert decode_request(encode_request(with_payload), MAX) == with_payload


def test_a_request_naming_a_node_no_node_can_have_is_refused() -> None:
    # NodeConfig refuses names over 255 bytes; a HELLO under such a name was
    # taken, and the node answered it (CREDIT) as a peer.
    longest = "n" * 255
    fits = Request(HELLO, longest, longest, "r1", {})
    assert decode_request(encode_request(fits), MAX) == fits
    for too_long in (
        Request(HELLO, "", "n" * 256, "r1", {}),
        Request(HELLO, "é" * 128, "a", "r", {}),
    ):
        with pytest.raises(FrameError, match="at most 255 bytes"):
            decode_request(encode_request(too_long), MAX)


def test_a_request_too_large_to_read_still_says_whom_to_refuse() -> None:
    big = Request(CORRELATED, "b", "a", "r3", {}, b"x" * 2000)
    with pytest.raises(RequestTooLargeError) as caught:
        decode_request(encode_request(big), 1000)
    assert (caught.value.kind, caught.value.sender, caught.value.rid) == (CORRELATED, "a", "r3")
    # A malformed one over the limit is only dropped: nothing in it can be trusted.
    parts = encode_request(big)
    for broken in ([b"\x09\x01", *parts[1:]], [*parts[:2], b"\xff" * 3, *parts[3:]]):
        with pytest.raises(FrameError) as dropped:
            decode_request(broken, 1000)
        assert not isinstance(dropped.value, RequestTooLargeError)


def test_sync_topic_round_trip() -> None:
    topic = sync_topic("node-1", 12)
    assert parse_sync_topic(topic) == ("node-1", 12)
    assert parse_sync_topic(b"user.") is None
    assert parse_sync_topic(topic + b"x") is None


def test_oversized_frame_is_refused() -> None:
    parts = valid_frame()
    size = sum(len(p) for p in parts)
    decode_stream(parts, size)
    with pytest.raises(FrameError, match="larger"):
        decode_stream(parts, size - 1)


def test_unknown_version_is_refused() -> None:
    topic, header, payload = valid_frame()
    with pytest.raises(FrameError, match="version"):
        decode_stream([topic, bytes([VERSION + 1]) + header[1:], payload], MAX)
    control = encode_control(HEARTBEAT_TOPIC, SYNC, {})
    with pytest.raises(FrameError, match="version"):
        decode_stream([control[0], b"\x07\x03", control[2]], MAX)


def test_header_must_agree_with_the_payload() -> None:
    topic, header, payload = valid_frame()
    fields = list(DATA_HEADER.unpack_from(header))
    fields[5] = 4  # count
    forged = DATA_HEADER.pack(*fields) + header[DATA_HEADER.size :]
    with pytest.raises(FrameError, match="events"):
        decode_stream([topic, forged, payload], MAX)
    with pytest.raises(FrameError, match="topic"):
        decode_stream([b"tool.", header, payload], MAX)
    other_origin = encode_data(b"user.", "b", 42, [], events(origin="a"))
    with pytest.raises(FrameError, match="origin"):
        decode_stream(other_origin, MAX)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=5))
def test_garbage_stream_frames_raise_only_frame_error(parts: list[bytes]) -> None:
    with contextlib.suppress(FrameError):
        decode_stream(parts, MAX)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_truncated_or_flipped_frames_raise_only_frame_error(data: st.DataObject) -> None:
    parts = valid_frame()
    which = data.draw(st.integers(0, 2))
    part = parts[which]
    if data.draw(st.booleans()) and part:
        cut = data.draw(st.integers(0, len(part) - 1))
        parts[which] = part[:cut]
    elif part:
        i = data.draw(st.integers(0, len(part) - 1))
        flipped = bytearray(part)
        flipped[i] ^= data.draw(st.integers(1, 255))
        parts[which] = bytes(flipped)
    try:
        frame = decode_stream(parts, MAX)
    except FrameError:
        return
    # Whatever decodes is self-consistent.
    assert isinstance(frame, DataFrame | ControlFrame)
    if isinstance(frame, DataFrame):
        assert all(e.origin == frame.origin for e in frame.events)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=48), min_size=0, max_size=7))
def test_garbage_requests_raise_only_frame_error(parts: list[bytes]) -> None:
    with contextlib.suppress(FrameError):
        decode_request(parts, MAX)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_request_bodies_raise_only_frame_error(body: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_request([bytes((VERSION, RECOVER)), b"b", b"a", b"1", body], MAX)


def test_chain_count_is_bounded() -> None:
    header = DATA_HEADER.pack(VERSION, 1, 0, 1, 1, 1, 1, 5000) + b"a"
    with pytest.raises(FrameError, match="chains"):
        decode_stream([b"", header, b""], MAX)
    truncated = DATA_HEADER.pack(VERSION, 1, 0, 1, 1, 1, 1, 2) + b"a" + struct.pack(">QH", 1, 9)
    with pytest.raises(FrameError, match="truncated"):
        decode_stream([b"", truncated, b""], MAX)
