"""The bridge's per-origin stream logic (``_cluster.streams``), without sockets or threads."""

from __future__ import annotations

from actors import Event
from actors._cluster.outbound import Outbound
from actors._cluster.streams import Inbound
from actors._cluster.wire import DataFrame, decode_stream

MAX = 1 << 20


def local(seq: int, event_type: str = "user.login", origin: str = "a") -> Event:
    return Event(event_type=event_type, data=seq)._stamped(seq, origin)


def decode(parts: list[bytes]) -> DataFrame:
    frame = decode_stream(parts, MAX)
    assert isinstance(frame, DataFrame)
    return frame


def feed(inbound: Inbound, frame: DataFrame) -> list[Event]:
    return inbound.on_data(
        frame.origin,
        epoch=frame.epoch,
        first=frame.first,
        last=frame.last,
        chains=frame.chains,
        events=frame.events,
        now=0.0,
    )


def synced_pair(patterns: list[str]) -> tuple[Outbound, Inbound]:
    out = Outbound("a", epoch=1, batch_size=100, ring_size=100)
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(patterns, 0.0)
    for prefix in inbound.prefixes:
        out.add_prefix(prefix)
    assert inbound.on_sync("a", 1, 1, out.head, 0.0) == []
    return out, inbound


def test_only_events_under_an_active_prefix_are_framed() -> None:
    out = Outbound("a", epoch=1, batch_size=100, ring_size=100)
    assert out.frames([local(1)]) == []
    out.add_prefix(b"user.")
    frames = [decode(f) for f in out.frames([local(2), local(3, "tool.x"), local(4)])]
    # An event no peer can match does not break a batch.
    assert [[e.sequence for e in f.events] for f in frames] == [[2, 4]]
    assert frames[0].topic == b"user."
    assert out.head == 4
    # Events of other origins advance the head but are never sent.
    assert out.frames([local(5, origin="z")]) == []
    assert out.head == 5


def test_runs_are_batched_up_to_batch_size_and_split_by_class() -> None:
    out = Outbound("a", epoch=1, batch_size=2, ring_size=100)
    out.add_prefix(b"user.")
    out.add_prefix(b"")
    parts = out.frames([local(1), local(2), local(3), local(4, "tool.x"), local(5)])
    frames = [decode(f) for f in parts]
    assert [[e.sequence for e in f.events] for f in frames] == [[1, 2], [3], [4], [5]]
    assert [f.topic for f in frames] == [b"user.", b"user.", b"", b"user."]
    # Each frame points at the previous frame sent under each of its prefixes.
    assert dict(frames[1].chains) == {b"": 2, b"user.": 2}
    assert dict(frames[3].chains) == {b"": 4, b"user.": 3}


def test_in_order_frames_are_delivered_at_once() -> None:
    out, inbound = synced_pair(["user.*"])
    for seq in (1, 3):
        (parts,) = out.frames([local(seq), local(seq + 1, "tool.x")])
        assert [e.sequence for e in feed(inbound, decode(parts))] == [seq]
    assert inbound.gaps == 0


def test_a_lost_frame_is_requested_and_order_is_kept() -> None:
    out, inbound = synced_pair(["user.*"])
    first, lost, third = (out.frames([local(i)])[0] for i in (1, 2, 3))
    assert [e.sequence for e in feed(inbound, decode(first))] == [1]
    assert feed(inbound, decode(third)) == []  # held until the gap is filled
    (request,) = inbound.requests
    assert (request.origin, request.after, request.upto) == ("a", 1, 2)
    events, complete, lost_flag = out.from_ring(request.after, request.upto, request.prefixes, 10)
    assert complete
    assert not lost_flag
    released = inbound.on_recovered(request.rid, events, complete, request.upto, lost_flag)
    assert [e.sequence for e in released] == [2, 3]
    assert inbound.recovered == 1
    del lost


def test_a_lost_tail_is_found_by_the_heartbeat() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    out.frames([local(2)])  # lost
    chains = {p.encode(): s for p, s in out.chains()}  # type: ignore[union-attr]
    inbound.on_heartbeat("a", epoch=1, base=1, head=out.head, chains=chains, now=0.0)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (1, 2)


def test_duplicates_are_dropped_by_id() -> None:
    out, inbound = synced_pair(["user.*"])
    parts = out.frames([local(1)])[0]
    assert len(feed(inbound, decode(parts))) == 1
    assert feed(inbound, decode(parts)) == []
    assert inbound.duplicates == 1


def test_frames_before_the_sync_reply_are_held_then_backfilled_in_order() -> None:
    out = Outbound("a", epoch=1, batch_size=100, ring_size=100)
    out.frames([local(1), local(2)])
    inbound = Inbound("b", dedupe=1000)
    inbound.loaded("a", 0, 0.0)  # a watermark saved earlier: resume from there
    inbound.set_patterns(["user.*"], 0.0)
    out.add_prefix(b"user.")
    early = decode(out.frames([local(3)])[0])
    assert feed(inbound, early) == []
    assert inbound.on_sync("a", 1, 1, 3, 0.0) == []
    (request,) = inbound.requests
    assert (request.after, request.upto) == (0, 3)
    events, complete, lost = out.from_ring(0, 3, request.prefixes, 10)
    released = inbound.on_recovered(request.rid, events, complete, 3, lost)
    assert [e.sequence for e in released] == [1, 2, 3]
    assert inbound.watermarks() == {"a": 3}


def test_a_new_incarnation_without_a_journal_starts_over() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1), local(2)])[0]))
    reborn = Outbound("a", epoch=2, batch_size=100, ring_size=100)
    reborn.add_prefix(b"user.")
    assert feed(inbound, decode(reborn.frames([local(1)])[0])) == []  # held: new epoch
    released = inbound.on_sync("a", 2, 1, 1, 0.0)
    assert [e.sequence for e in released] == [1]
    assert inbound.requests == []


def test_the_ring_reports_what_it_no_longer_holds() -> None:
    out = Outbound("a", epoch=1, batch_size=100, ring_size=2)
    out.frames([local(i) for i in range(1, 6)])
    events, complete, lost = out.from_ring(0, 5, ["user."], 10)
    assert [e.sequence for e in events] == [4, 5]
    assert complete
    assert lost
