"""Frames from local events (``_cluster.outbound``): batching by count and by bytes."""

from __future__ import annotations

import json

from actors import Event
from actors._cluster.limits import FRAME_OVERHEAD
from actors._cluster.outbound import MAX_PREFIX_BYTES, Outbound
from actors._cluster.wire import DataFrame, decode_stream

MAX = FRAME_OVERHEAD + 100_000


def local(seq: int, size: int) -> Event:
    return Event(event_type="blob.put", data="x" * size, sequence=seq, origin="a")


def decode(parts: list[bytes]) -> DataFrame:
    assert sum(len(p) for p in parts) <= MAX
    frame = decode_stream(parts, MAX)
    assert isinstance(frame, DataFrame)
    return frame


def test_frames_stay_under_the_byte_limit_and_big_events_go_alone() -> None:
    out = Outbound("a", epoch=1, batch_size=1000, ring_size=100, max_frame_bytes=MAX)
    out.add_prefix(b"blob.")
    sizes = [1_000, 60_000, 60_000, 10, 99_000, 10]
    frames = [decode(f) for f in out.frames([local(i + 1, s) for i, s in enumerate(sizes)])]
    assert [[e.sequence for e in f.events] for f in frames] == [[1, 2], [3, 4], [5, 6]]
    # The chain pointers go from frame to frame: a receiver sees no gap.
    assert [dict(f.chains)[b"blob."] for f in frames] == [0, 2, 4]
    assert out.take_oversized() == []


def test_an_event_over_the_limit_is_set_aside_without_breaking_the_chain() -> None:
    out = Outbound("a", epoch=1, batch_size=1000, ring_size=100, max_frame_bytes=MAX)
    out.add_prefix(b"blob.")
    frames = [decode(f) for f in out.frames([local(1, 10), local(2, 200_000), local(3, 10)])]
    assert [[e.sequence for e in f.events] for f in frames] == [[1, 3]]
    ((event, size),) = out.take_oversized()
    assert event.sequence == 2
    assert size > 200_000
    assert out.take_oversized() == []


def test_chains_that_do_not_fit_one_heartbeat_take_turns_and_each_list_fits() -> None:
    out = Outbound("a", epoch=1, batch_size=1000, ring_size=100, max_frame_bytes=MAX)
    prefixes = {f"p{i:03d}." + "\u00e9" * 200 for i in range(60)}  # ~400 bytes each
    for p in prefixes:
        assert out.add_prefix(p.encode())
    assert not out.add_prefix(b"x" * (MAX_PREFIX_BYTES + 1))  # no event type is that long
    assert {c[0] for c in out.chains()} == prefixes
    room = 5_000
    seen: set[object] = set()
    for _ in range(len(prefixes)):
        listed = out.chains(room)
        assert listed  # each heartbeat announces some
        assert len(json.dumps(listed, separators=(",", ":"))) <= room
        seen.update(c[0] for c in listed)
    assert seen == prefixes
    assert {c[0] for c in out.chains(10**9)} == prefixes  # all fit: all at once


def test_a_run_cut_before_a_prefix_was_taken_again_neither_joins_nor_moves_back_its_chain() -> None:
    """A queued run built after its prefix left and came back is not part of the new chain.

    The prefix's chain starts again at the head when it comes back, past the
    run; building the run used to move the chain back to it, so a
    heartbeat announced a chain that skipped events sent since.
    """
    out = Outbound("a", epoch=1, batch_size=1, ring_size=100, max_frame_bytes=MAX)
    out.add_prefix(b"blob.")
    queued = out.runs([local(n, 10) for n in (1, 2)])  # waiting for credit
    out.remove_prefix(b"blob.")
    out.runs([local(3, 10)])  # no one holds the prefix: not sent
    out.add_prefix(b"blob.")  # its chain starts at 3
    frames = [decode(out.build(run)) for run in queued]
    assert [f.chains for f in frames] == [(), ()]
    assert out.chains() == [["blob.", 3]]
    (run,) = out.runs([local(4, 10)])
    assert decode(out.build(run)).chains == ((b"blob.", 3),)


def test_a_ring_answer_cut_short_still_says_what_left_the_ring() -> None:
    """The ring holds 16..20 of 1..20; a recovery of (0, 20] cut to 3 events said
    ``lost=False`` (so did one cut to fit the asker's bytes): the receiver went on
    after 18, and 1..15 were lost without a count or an announcement."""
    from actors._cluster.bridge_io import fit_answer  # noqa: PLC0415

    out = Outbound("a", epoch=1, batch_size=1000, ring_size=5, max_frame_bytes=MAX)
    out.add_prefix(b"blob.")
    out.frames([local(i, 10) for i in range(1, 21)])
    entries, complete, lost = out.from_ring(0, 20, ("blob.",), limit=3)
    assert ([e[0] for e in entries], complete, lost) == ([16, 17, 18], False, True)
    entries, complete, lost = out.from_ring(0, 20, ("blob.",), limit=100)
    assert ([e[0] for e in entries], complete, lost) == ([16, 17, 18, 19, 20], True, True)
    assert out.from_ring(16, 20, ("blob.",), limit=3)[2] is False  # nothing before 17 asked
    pieces = [(seq, chunk) for seq, _, chunk in entries]
    budget = 2 * len(pieces[0][1]) + 1
    kept, body = fit_answer(pieces, {"complete": True, "scanned": 20, "lost": True}, budget)
    assert ([seq for seq, _ in kept], body) == (
        [16, 17],
        {"complete": False, "scanned": 17, "lost": True},
    )


def test_the_ring_letting_go_of_other_types_is_no_loss_to_the_asker() -> None:
    """1..15 are ``other.x``, 16..20 ``blob.put``; the ring keeps 16..20.  Asked for
    ``blob.`` from 0, nothing of it left the ring: the answer said lost (any eviction
    past ``after`` did), so the receiver announced, and counted, a loss it had not."""
    out = Outbound("a", epoch=1, batch_size=1000, ring_size=5, max_frame_bytes=MAX)
    out.add_prefix(b"blob.")
    others = [Event(event_type="other.x", data=i, sequence=i, origin="a") for i in range(1, 16)]
    out.frames([*others, *(local(i, 10) for i in range(16, 21))])
    entries, complete, lost = out.from_ring(0, 20, ("blob.",), limit=100)
    assert ([e[0] for e in entries], complete, lost) == ([16, 17, 18, 19, 20], True, False)
    assert out.from_ring(0, 20, ("other.",), limit=100)[2] is True  # 1..15 went
    assert out.from_ring(15, 20, ("other.",), limit=100)[2] is False  # none after 15
