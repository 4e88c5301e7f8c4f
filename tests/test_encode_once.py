"""Each event is encoded at most once per process, and kept as bytes where it waits.

The journal and the bridge share one encoding (``encode_shared``); a
received event keeps the bytes that arrived and is journaled from them; the
recovery ring holds bytes the garbage collector never walks.  Two buses
joined over 127.0.0.1 in one process; encodings are counted by wrapping the
codec's encoder (the real one still does the work).
"""

from __future__ import annotations

import copy
import gc
import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest

from actors import (
    Event,
    EventBus,
    EventQuery,
    InvalidEventError,
)
from actors._cluster.outbound import Outbound
from actors._codec import events as codec
from actors._codec.events import (
    chunk_of,
    decode_batch,
    decode_event,
    encode_batch,
    encode_shared,
    restamp_in_place,
    restamp_wire,
)
from actors._model.event import keep_wire, set_sequence_in_place, stamped, wire_of, with_fields

WAIT = 30.0


def event(seq: int | None = 7, origin: str | None = "a") -> Event:
    return Event(event_type="enc.x", data={"i": seq}, sequence=seq, origin=origin)


# -- the codec ------------------------------------------------------------------------


def test_encode_shared_encodes_once_and_keeps_the_bytes() -> None:
    e = event()
    first = encode_shared(e)
    assert first == e.to_bytes()
    assert encode_shared(e) is first
    assert wire_of(e) is first


def test_copies_and_stamps_forget_the_bytes() -> None:
    e = event()
    encode_shared(e)
    assert wire_of(stamped(e, 8, "a")) is None
    assert wire_of(with_fields(e, data=1)) is None
    assert wire_of(copy.copy(e)) is None
    assert wire_of(pickle.loads(pickle.dumps(e))) is None
    set_sequence_in_place(e, 9)
    assert wire_of(e) is None
    assert decode_event(encode_shared(e)).sequence == 9


def test_to_bytes_always_encodes_afresh() -> None:
    e = event()
    keep_wire(e, b"not these")
    assert e.to_bytes() != b"not these"
    assert Event.from_bytes(e.to_bytes()) == e


def _with_unknown_field(e: Event) -> bytes:
    # Field 99, varint 1: kept by protobuf's parser, never written by this codec.
    return e.to_bytes() + b"\x98\x06\x01"


def test_a_decoded_batch_keeps_each_events_bytes_as_they_arrived() -> None:
    bodies = [_with_unknown_field(event(i)) for i in (1, 2)]
    bodies.append(event(3).to_bytes())
    big = Event(event_type="enc.big", data="y" * 300, sequence=4, origin="a").to_bytes()
    bodies.append(big)  # a length of two varint bytes
    batch = b"".join(b"\x0a" + codec._varint(len(b)) + b for b in bodies)  # noqa: SLF001
    decoded = decode_batch(batch)
    assert [e.sequence for e in decoded] == [1, 2, 3, 4]
    assert [wire_of(e) for e in decoded] == bodies
    assert encode_shared(decoded[0]) == bodies[0] != decoded[0].to_bytes()
    assert encode_batch(decoded) == batch


def test_a_batch_framed_otherwise_still_decodes() -> None:
    original = event(1)
    body = original.to_bytes()
    batch = b"\x10\x05" + b"\x0a" + bytes((len(body),)) + body  # an unknown field first
    (decoded,) = decode_batch(batch)
    assert decoded == original


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a",
        b"\x0a\x05abc",
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        b"\x0a\x02\xff\xff",
    ],
)
def test_a_malformed_batch_is_refused_with_a_typed_error(raw: bytes) -> None:
    with pytest.raises(InvalidEventError):
        decode_batch(raw)


def test_a_restamped_copy_keeps_the_arrived_bytes_with_its_new_sequence() -> None:
    arrived = _with_unknown_field(event(5, "remote"))
    received = decode_event(arrived)
    local = stamped(received, 1234567, received.origin)
    restamp_wire(received, local)
    wire = wire_of(local)
    assert wire is not None
    assert wire.startswith(arrived)
    assert decode_event(wire) == local
    assert decode_event(wire).sequence == 1234567
    other = stamped(received, 9, "elsewhere")
    restamp_wire(received, other)  # more than the sequence changed: no bytes
    assert wire_of(other) is None


def test_a_received_event_stamped_in_place_keeps_the_arrived_bytes() -> None:
    arrived = _with_unknown_field(event(5, "remote"))
    received = decode_event(arrived)
    restamp_in_place(received, 77)
    assert received.sequence == 77
    wire = wire_of(received)
    assert wire is not None
    assert wire.startswith(arrived)
    assert decode_event(wire) == received
    unencoded = event(5, "remote")
    restamp_in_place(unencoded, 78)
    assert (unencoded.sequence, wire_of(unencoded)) == (78, None)


def test_chunk_of_frames_the_shared_bytes() -> None:
    e = event()
    assert chunk_of(e) == encode_batch([e])
    assert chunk_of(e).endswith(wire_of(e) or b"-")


# -- the recovery ring ----------------------------------------------------------------


def test_the_ring_holds_bytes_the_collector_does_not_track() -> None:
    out = Outbound("a", epoch=1, batch_size=10, ring_size=100)
    published = [event(i) for i in range(1, 51)]
    out.frames(published)
    gc.collect()
    assert out.ring is not None
    assert len(out.ring) == 50
    assert not any(gc.is_tracked(entry) for entry in out.ring)
    entries, complete, lost = out.from_ring(10, 20, ["enc."], 100)
    assert [seq for seq, _, _ in entries] == list(range(11, 21))
    assert (complete, lost) == (True, False)
    assert decode_batch(b"".join(chunk for _, _, chunk in entries)) == published[10:20]


def test_a_bus_with_a_journal_keeps_no_ring() -> None:
    out = Outbound("a", epoch=1, batch_size=10, ring_size=0)
    out.add_prefix(b"enc.")
    (frame,) = out.frames([event(i) for i in range(1, 4)])
    assert frame  # still sent
    assert out.ring is None
    assert out.from_ring(0, 3, ["enc."], 10) == ([], True, True)


# -- two buses in one process ---------------------------------------------------------


class Counting:
    """Wraps the codec's encoder and counts its calls for events of type ``enc.*``."""

    def __init__(self, real: Callable[[Event], Any]) -> None:
        self.real = real
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, e: Event) -> Any:
        if e.event_type.startswith("enc."):
            with self._lock:
                self.count += 1
        return self.real(e)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Counting:
    spy = Counting(codec.event_to_message)
    monkeypatch.setattr(codec, "event_to_message", spy)
    return spy


def _pair(
    nodes: Callable[..., EventBus], origin_persistent: bool, receiver_persistent: bool
) -> tuple[EventBus, EventBus, list[Event], threading.Event]:
    a = nodes("a", persistent=origin_persistent, listen="tcp://127.0.0.1:0")
    endpoint = a.node.endpoints["request"]
    assert endpoint is not None
    b = nodes("b", persistent=receiver_persistent, peers=(endpoint,))
    got: list[Event] = []
    done = threading.Event()

    def handler(e: Event) -> None:
        got.append(e)
        if len(got) == 200:
            done.set()

    b.subscribe("enc.*", handler)
    assert b.node.wait_for_peers(["a"], WAIT)
    b.flush(WAIT)
    return a, b, got, done


@pytest.mark.parametrize(
    ("origin_persistent", "receiver_persistent"), [(True, True), (False, True), (False, False)]
)
def test_each_event_is_encoded_once_in_the_whole_cluster(
    nodes: Callable[..., EventBus],
    counting: Counting,
    origin_persistent: bool,
    receiver_persistent: bool,
) -> None:
    a, b, got, done = _pair(nodes, origin_persistent, receiver_persistent)
    before = counting.count
    a.publish_many([Event(event_type="enc.x", data={"i": i}) for i in range(200)])
    assert done.wait(WAIT), f"got {len(got)} of 200"
    a.flush(WAIT)
    b.flush(WAIT)
    # The origin: one encoding shared by its journal (if any) and its bridge
    # (frame and ring).  The receiver: none, its journal takes what arrived.
    assert counting.count - before == 200
    assert [e.data["i"] for e in got] == list(range(200))  # type: ignore[index]
    if receiver_persistent:
        stored = b.query(EventQuery(event_types=["enc.x"], limit=1000))
        assert [e.data["i"] for e in stored] == list(range(200))  # type: ignore[index]
        assert [e.origin for e in stored] == ["a"] * 200
        assert [e.sequence for e in stored] == [e.sequence for e in got]
