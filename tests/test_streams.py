"""The bridge's per-origin stream logic (``_cluster.streams``), without sockets or threads."""

from __future__ import annotations

from collections.abc import Sequence

from actors import Event
from actors._cluster.checkpoints import SavedMark
from actors._cluster.origins import LEFT_NUMBERINGS
from actors._cluster.outbound import Outbound
from actors._cluster.streams import MAX_AHEAD, Inbound
from actors._cluster.wire import DataFrame, decode_stream
from actors._codec.events import decode_batch

MAX = 1 << 20


def ring_events(
    out: Outbound, after: int, upto: int, prefixes: Sequence[str], limit: int
) -> tuple[list[Event], bool, bool]:
    """``out.from_ring`` with its entries decoded (as a recovery answer is)."""
    entries, complete, lost = out.from_ring(after, upto, prefixes, limit)
    return decode_batch(b"".join(chunk for _, _, chunk in entries)), complete, lost


def local(seq: int, event_type: str = "user.login", origin: str = "a") -> Event:
    return Event(event_type=event_type, data=seq, sequence=seq, origin=origin)


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
    events, complete, lost_flag = ring_events(
        out, request.after, request.upto, request.prefixes, 10
    )
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
    inbound.loaded("a", SavedMark(0, None, None), 0.0)  # saved earlier: resume from there
    inbound.set_patterns(["user.*"], 0.0)
    out.add_prefix(b"user.")
    early = decode(out.frames([local(3)])[0])
    assert feed(inbound, early) == []
    assert inbound.on_sync("a", 1, 1, 3, 0.0) == []
    (request,) = inbound.requests
    assert (request.after, request.upto) == (0, 3)
    events, complete, lost = ring_events(out, 0, 3, request.prefixes, 10)
    released = inbound.on_recovered(request.rid, events, complete, 3, lost)
    assert [e.sequence for e in released] == [1, 2, 3]
    assert inbound.watermarks() == {"a": 3}


def test_a_new_incarnation_without_a_journal_is_followed_from_its_start() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1), local(2)])[0]))
    reborn = Outbound("a", epoch=2, batch_size=100, ring_size=100)
    first = local(1)
    reborn.frames([first])  # published before our subscription reached it
    reborn.add_prefix(b"user.")
    second = local(2)
    assert feed(inbound, decode(reborn.frames([second])[0])) == []  # held: new epoch
    assert inbound.on_sync("a", 2, 1, 2, 0.0) == []
    (request,) = inbound.requests
    assert (request.after, request.upto) == (0, 2)
    events, complete, lost = ring_events(reborn, 0, 2, request.prefixes, 10)
    released = inbound.on_recovered(request.rid, events, complete, 2, lost)
    assert released == [first, second]
    assert inbound.watermarks() == {"a": 2}


def test_an_origin_whose_journal_lost_a_tail_is_followed_from_its_base() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(i) for i in range(1, 6)])[0]))
    # It died before journaling 4 and 5; it restarts at 4 with new events.
    inbound.on_heartbeat("a", epoch=2, base=4, head=6, chains={}, now=0.0)
    inbound.on_sync("a", 2, 4, 6, 0.0)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (3, 6)


def test_the_ring_reports_what_it_no_longer_holds() -> None:
    out = Outbound("a", epoch=1, batch_size=100, ring_size=2)
    out.frames([local(i) for i in range(1, 6)])
    events, complete, lost = ring_events(out, 0, 5, ["user."], 10)
    assert [e.sequence for e in events] == [4, 5]
    assert complete
    assert lost


# -- sequences out of range (forged or garbage) -----------------------------------------


def test_a_forged_sequence_past_int64_is_rejected_and_never_a_watermark() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    forged = Event(event_type="user.login", sequence=(1 << 63) + 5, origin="a")
    got = inbound.on_data(
        "a", epoch=1, first=(1 << 63) + 5, last=(1 << 63) + 5, chains=(), events=[forged], now=0.0
    )
    assert got == []
    assert inbound.rejected == 1
    assert inbound.watermarks() == {"a": 1}
    # The real stream goes on.
    assert [e.sequence for e in feed(inbound, decode(out.frames([local(2)])[0]))] == [2]


def test_a_sequence_far_past_the_announced_head_is_rejected() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    far = MAX_AHEAD + 10
    event = local(far)
    got = inbound.on_data(
        "a", epoch=1, first=far, last=far, chains=((b"user.", 1),), events=[event], now=0.0
    )
    assert got == []
    assert inbound.rejected == 1
    assert inbound.requests == []  # no recovery of a forged range either
    assert inbound.watermarks() == {"a": 1}


def test_the_range_is_measured_from_the_announced_head_and_never_ratchets() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    inbound.on_heartbeat("a", epoch=1, base=1, head=1, chains={b"user.": 1}, now=0.0)
    seq, delivered = 1, []
    for _ in range(5):  # each step just inside the bound past the previous one
        seq += MAX_AHEAD - 10
        event = local(seq)
        delivered += inbound.on_data(
            "a", epoch=1, first=seq, last=seq, chains=(), events=[event], now=0.0
        )
    assert [e.sequence for e in delivered] == [1 + MAX_AHEAD - 10]  # the first step only
    assert inbound.rejected == 4
    assert inbound.watermarks() == {"a": 1 + MAX_AHEAD - 10}
    # The next heartbeat's head is the bound again, whatever the frames said.
    inbound.on_heartbeat("a", epoch=1, base=1, head=2, chains={b"user.": 1}, now=0.0)
    far = 2 + MAX_AHEAD + 1
    assert (
        inbound.on_data("a", epoch=1, first=far, last=far, chains=(), events=[local(far)], now=0.0)
        == []
    )
    assert inbound.rejected == 5


def test_frames_held_before_any_head_are_range_checked_at_release() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    far = 5 * MAX_AHEAD
    # No sync reply, no heartbeat yet: the frames wait (nothing to check them against).
    assert feed_at(inbound, far) == []
    assert feed_at(inbound, 2) == []
    assert inbound.expire_syncs(5.0, 1.0) == []  # no head announced: keeps waiting
    inbound.on_heartbeat("a", epoch=1, base=1, head=1, chains={b"user.": 1}, now=5.0)
    assert inbound.expire_syncs(5.0, 1.0) == []  # released at the next heartbeat's chains
    released = inbound.on_heartbeat("a", epoch=1, base=1, head=2, chains={b"user.": 2}, now=6.0)
    assert [e.sequence for e in released] == [2]
    assert inbound.rejected == 1
    assert inbound.watermarks() == {"a": 2}


def feed_at(inbound: Inbound, seq: int) -> list[Event]:
    return inbound.on_data(
        "a", epoch=1, first=seq, last=seq, chains=(), events=[local(seq)], now=0.0
    )


def test_recovered_events_outside_the_asked_range_are_rejected() -> None:
    out, inbound = synced_pair(["user.*"])
    frames = [out.frames([local(i)])[0] for i in (1, 2, 3)]
    feed(inbound, decode(frames[0]))
    feed(inbound, decode(frames[2]))
    (request,) = inbound.requests
    forged = local(1 << 40)
    released = inbound.on_recovered(request.rid, [local(2), forged], True, request.upto, False)
    assert [e.sequence for e in released] == [2, 3]
    assert inbound.rejected == 1
    assert inbound.watermarks() == {"a": 3}


# -- gap accounting and what recovery fetches ----------------------------------------------


def _counts(inbound: Inbound) -> tuple[int, int, int, int]:
    return inbound.gaps, inbound.recovered, inbound.unrecovered, inbound.gaps_open()


def test_gaps_found_while_a_request_is_out_are_fetched_alone_and_all_counted() -> None:
    out, inbound = synced_pair(["user.*"])
    frames = [out.frames([local(i)])[0] for i in range(1, 11)]
    feed(inbound, decode(frames[0]))  # 1
    feed(inbound, decode(frames[2]))  # 3: gap (1, 2]
    feed(inbound, decode(frames[5]))  # 6: gap (3, 5]
    feed(inbound, decode(frames[8]))  # 9: gap (6, 8]
    assert _counts(inbound) == (3, 0, 0, 3)
    fetched: list[int] = []
    delivered: list[int] = [1]
    while inbound.requests:
        request = inbound.requests.pop(0)
        events, complete, lost = ring_events(
            out, request.after, request.upto, request.prefixes, 100
        )
        fetched.extend(e.sequence or 0 for e in events)
        released = inbound.on_recovered(request.rid, events, complete, request.upto, lost)
        delivered.extend(e.sequence or 0 for e in released)
    # Only what was missing was asked for: 2, 4, 5, 7, 8 (not 3, 6 again).
    assert fetched == [2, 4, 5, 7, 8]
    assert delivered == list(range(1, 10))
    assert _counts(inbound) == (3, 3, 0, 0)


def test_overlapping_gaps_merge_and_end_together() -> None:
    out, inbound = synced_pair(["user.*", "tool.*"])
    frames = [out.frames([local(i, t)])[0] for i, t in ((1, "user.a"), (2, "user.a"))]
    feed(inbound, decode(frames[0]))
    out.frames([local(3, "user.a")])  # lost
    feed(inbound, decode(out.frames([local(4, "user.a")])[0]))  # gap (2, 3] ... asked
    del frames
    out.frames([local(5, "tool.x"), local(6, "user.a")])  # both lost
    chains = {p.encode(): s for p, s in out.chains()}  # type: ignore[union-attr]
    inbound.on_heartbeat("a", epoch=1, base=1, head=out.head, chains=chains, now=0.0)
    gaps, recovered, unrecovered, still_open = _counts(inbound)
    assert gaps == recovered + unrecovered + still_open
    while inbound.requests:
        request = inbound.requests.pop(0)
        inbound.on_recovery_failed(request.rid, "given up")
    gaps, recovered, unrecovered, still_open = _counts(inbound)
    assert still_open == 0
    assert gaps == recovered + unrecovered
    assert unrecovered == gaps


def test_a_range_reported_lost_counts_once_as_unrecovered() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    out.frames([local(2)])
    feed(inbound, decode(out.frames([local(3)])[0]))
    (request,) = inbound.requests
    inbound.on_recovered(request.rid, [], True, request.upto, True)
    assert _counts(inbound) == (1, 0, 1, 0)


# -- restarts -------------------------------------------------------------------------------


def test_a_restarted_persistent_origin_is_backfilled_from_the_watermark() -> None:
    out, inbound = synced_pair(["user.*"])
    ev = {i: local(i) for i in range(1, 7)}
    feed(inbound, decode(out.frames([ev[1], ev[2]])[0]))
    out.frames([ev[3]])  # sent just before the crash: lost
    # The origin restarts on its journal: new epoch, sequences go on from 4.
    reborn = Outbound("a", epoch=2, batch_size=100, ring_size=100)
    reborn.frames([ev[4], ev[5]])  # published before our subscription reached it
    reborn.add_prefix(b"user.")
    early = decode(reborn.frames([ev[6]])[0])
    assert feed(inbound, early) == []  # held: a new incarnation
    assert inbound.on_sync("a", 2, 4, 6, 0.0) == []
    (request,) = inbound.requests
    assert (request.after, request.upto) == (2, 6)
    history = [ev[3], ev[4], ev[5], ev[6]]
    released = inbound.on_recovered(request.rid, history, True, 6, False)
    assert [e.sequence for e in released] == [3, 4, 5, 6]
    assert inbound.watermarks() == {"a": 6}


def test_a_restart_seen_first_in_a_heartbeat_still_backfills() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    inbound.on_heartbeat("a", epoch=2, base=3, head=5, chains={}, now=0.0)
    assert inbound.on_sync("a", 2, 3, 5, 0.0) == []
    (request,) = inbound.requests
    assert (request.after, request.upto) == (1, 5)


def test_a_sync_reply_before_any_subscription_does_not_move_the_watermark() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.start_loading("a", 0.0)
    inbound.on_sync("a", 7, 1, 500, 0.0)  # stashed until the saved watermark is known
    inbound.loaded("a", SavedMark(100, None, None), 0.0)  # the node was down after 100
    assert inbound.watermarks() == {"a": 100}
    inbound.on_heartbeat("a", epoch=7, base=1, head=600, chains={}, now=0.0)
    assert inbound.watermarks() == {"a": 100}
    # The durable subscription comes back: its downtime is fetched.
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 7, 1, 600, 0.0)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 600)


def test_a_subscription_before_the_sync_reply_fetches_the_downtime() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.start_loading("a", 0.0)
    inbound.on_sync("a", 7, 1, 500, 0.0)
    inbound.loaded("a", SavedMark(100, None, None), 0.0)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 500)
    assert inbound.watermarks() == {"a": 100}  # kept (and saved) while the range is fetched


def test_a_repeated_sync_reply_does_not_move_the_watermark_past_a_loss() -> None:
    # A stream that reconnected (a broker restarted) is answered again: its
    # head says nothing of what was lost meanwhile.
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1), local(2)])[0]))
    out.frames([local(3), local(4), local(5)])  # lost on the way
    assert inbound.on_sync("a", 1, 1, out.head, 0.0) == []
    assert inbound.watermarks() == {"a": 2}
    inbound.on_heartbeat("a", epoch=1, base=1, head=5, chains=dict(out.prev), now=0.0)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (2, 5)
    assert inbound.watermarks() == {"a": 2}  # saved while the range is fetched
    events, complete, lost = ring_events(out, 2, 5, request.prefixes, 10)
    released = inbound.on_recovered(request.rid, events, complete, 5, lost)
    assert [e.sequence for e in released] == [3, 4, 5]
    assert inbound.watermarks() == {"a": 5}


def test_a_lost_sync_reply_still_backfills_from_the_watermark() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.start_loading("a", 0.0)
    inbound.loaded("a", SavedMark(100, None, None), 0.0)  # a restarted durable node, down after 100
    # The sync reply never comes (the origin was paused when it should have).
    assert inbound.expire_syncs(5.0, 1.0) == []
    assert inbound.requests == []  # nothing heard yet: nothing to fetch up to
    inbound.on_heartbeat("a", epoch=7, base=1, head=300, chains={b"user.": 300}, now=5.0)
    assert inbound.expire_syncs(5.0, 1.0) == []
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 300)
    assert inbound.watermarks() == {"a": 100}


def restarted_receiver(saved: SavedMark) -> Inbound:
    """A durable node restarted with what it saved of ``a``, subscribed to ``user.*``."""
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.start_loading("a", 0.0)
    inbound.loaded("a", saved, 0.0)
    return inbound


# Regression: a persistent origin moved to a fresh journal and restarted on it again while the
# receiver was down starts past the receiver's old watermark; the receiver fetched only above it and
# lost the fresh journal's events below it.  Expected: a new numbering is fetched from its start.
def test_an_origin_on_a_fresh_journal_is_fetched_from_its_start_however_far_it_went() -> None:
    inbound = restarted_receiver(SavedMark(100, 5, numbering=11))
    inbound.on_sync("a", 7, 151, 250, 0.0, numbering=22)  # its second run on the fresh journal
    (request,) = inbound.requests
    assert (request.after, request.upto) == (0, 250)
    assert inbound.watermarks() == {"a": 0}


def test_an_origin_restarted_on_its_own_journal_is_fetched_from_the_watermark() -> None:
    inbound = restarted_receiver(SavedMark(100, 5, numbering=11))
    inbound.on_sync("a", 7, 151, 250, 0.0, numbering=11)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 250)


def test_a_new_numbering_heard_by_a_live_receiver_is_fetched_from_its_start() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 5, 1, 100, 0.0, numbering=11)
    assert inbound.watermarks() == {"a": 100}
    # Moved to a fresh journal and restarted on it before this node heard the first run.
    inbound.on_heartbeat("a", epoch=7, base=151, head=250, chains={}, now=1.0, numbering=22)
    inbound.on_sync("a", 7, 151, 250, 1.0, numbering=22)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (0, 250)


def test_a_watermark_saved_without_its_numbering_is_judged_by_the_first_sequence() -> None:
    inbound = restarted_receiver(SavedMark(100, 5, numbering=None))
    inbound.on_sync("a", 7, 151, 250, 0.0, numbering=22)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 250)


# Regression (of the numbering above): an origin moved back to a journal this node followed before
# was taken for a fresh one and fetched from its start, its events delivered and journaled twice.
def test_an_origin_moved_back_to_a_journal_followed_before_resumes_where_it_was() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 5, 1, 100, 0.0, numbering=11)
    inbound.on_heartbeat("a", epoch=6, base=1, head=40, chains={}, now=1.0, numbering=22)
    inbound.on_sync("a", 6, 1, 40, 1.0, numbering=22)  # a fresh journal: from its start
    (request,) = inbound.requests
    assert (request.after, request.upto) == (0, 40)
    inbound.requests.clear()
    delivered = inbound.on_recovered(request.rid, [local(q) for q in range(1, 41)], True, 40, False)
    assert [e.sequence for e in delivered] == list(range(1, 41))
    inbound.on_heartbeat("a", epoch=7, base=101, head=120, chains={}, now=2.0, numbering=11)
    inbound.on_sync("a", 7, 101, 120, 2.0, numbering=11)  # back on the first journal
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 120)
    assert inbound.origins["a"].left == {22: 40}


def test_a_restarted_receiver_resumes_a_numbering_it_left_where_it_was() -> None:
    inbound = restarted_receiver(SavedMark(40, 6, numbering=22, left=((11, 100),)))
    inbound.on_sync("a", 7, 101, 120, 0.0, numbering=11)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 120)


def test_a_numbering_left_resumes_no_higher_than_the_journal_it_came_back_with() -> None:
    inbound = restarted_receiver(SavedMark(40, 6, numbering=22, left=((11, 100),)))
    inbound.on_sync("a", 7, 81, 90, 0.0, numbering=11)  # the journal lost its tail past 80
    (request,) = inbound.requests
    assert (request.after, request.upto) == (80, 90)


def test_only_the_last_numberings_left_are_remembered() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 100, 1, 10, 0.0, numbering=100)
    for n in range(101, 101 + LEFT_NUMBERINGS + 2):
        inbound.on_sync("a", n, 1, 10, 0.0, numbering=n)
    left = inbound.origins["a"].left
    assert list(left) == list(range(101 + 1, 101 + LEFT_NUMBERINGS + 1))


def test_events_journaled_past_the_saved_watermark_are_not_delivered_again() -> None:
    # A crash fell between the write of 101..103 and the write of the
    # watermark that covers them: the restarted node fetches them again.
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.start_loading("a", 0.0)
    inbound.on_sync("a", 7, 1, 105, 0.0)
    fetched = [local(seq) for seq in range(101, 106)]
    inbound.loaded("a", SavedMark(100, None, None), 0.0, [e.id.int for e in fetched[:3]])
    (request,) = inbound.requests
    assert (request.after, request.upto) == (100, 105)
    delivered = inbound.on_recovered(request.rid, fetched, True, 105, False)
    assert [e.sequence for e in delivered] == [104, 105]
    assert inbound.duplicates == 3
    assert inbound.watermarks() == {"a": 105}


def test_a_long_recovery_delivers_answer_by_answer() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    out.frames([local(seq) for seq in range(2, 10)])  # lost
    assert feed(inbound, decode(out.frames([local(10)])[0])) == []  # held
    (request,) = inbound.requests
    assert (request.after, request.upto) == (1, 9)
    inbound.requests.clear()
    # The origin answers in parts (RECOVER_LIMIT): each part is delivered,
    # and moves the watermark, while the rest is fetched.
    part = inbound.on_recovered(request.rid, [local(2), local(3), local(4)], False, 4, False)
    assert [e.sequence for e in part] == [2, 3, 4]
    assert inbound.watermarks() == {"a": 4}
    (rest,) = inbound.requests
    assert (rest.after, rest.upto) == (4, 9)
    events = [local(seq) for seq in range(5, 10)]
    assert [e.sequence for e in inbound.on_recovered(rest.rid, events, True, 9, False)] == [
        5,
        6,
        7,
        8,
        9,
        10,
    ]
    assert inbound.watermarks() == {"a": 10}
    assert (inbound.gaps, inbound.recovered) == (1, 1)


def test_a_gap_inside_the_range_being_fetched_is_not_asked_twice() -> None:
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    out.frames([local(seq) for seq in range(2, 8)])  # lost
    feed(inbound, decode(out.frames([local(8)])[0]))
    (request,) = inbound.requests
    assert (request.after, request.upto) == (1, 7)
    inbound.requests.clear()
    # The origin restarts meanwhile and announces head 12: only 7..12 is new.
    inbound.on_heartbeat("a", epoch=2, base=13, head=12, chains={}, now=0.0)
    inbound.on_sync("a", 2, 13, 12, 0.0)
    assert inbound.requests == []  # waits its turn: (7, 12], not (1, 12]
    events = [local(seq) for seq in range(2, 8)]
    inbound.on_recovered(request.rid, events, True, 7, False)
    (rest,) = inbound.requests
    assert (rest.after, rest.upto) == (7, 12)
    stats = (inbound.gaps, inbound.recovered, inbound.unrecovered, inbound.gaps_open())
    assert stats == (2, 1, 0, 1)


# Regression: data of a new incarnation, with neither its sync reply nor its heartbeat within
# heartbeat_timeout, was followed at once: its events were delivered before the range the old
# incarnation sent last and this node missed, and that range came after them.
def test_a_silent_new_incarnation_waits_for_its_head_before_anything_is_released() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 1, 1, 0, 0.0)
    for seq in range(1, 11):
        assert [e.sequence for e in feed_at(inbound, seq)] == [seq]
    # 11..20 of epoch 1 never arrive; epoch 2 (the same journal) sends 21..30.
    events = [local(seq) for seq in range(21, 31)]
    assert (
        inbound.on_data(
            "a", epoch=2, first=21, last=30, chains=[(b"user.", 20)], events=events, now=0.0
        )
        == []
    )
    # A heartbeat epoch 1 sent before it died, late (through a broker, another connection).
    inbound.on_heartbeat("a", epoch=1, base=1, head=10, chains={b"user.": 10}, now=0.1)
    # No word from epoch 2 within the timeout: it stays held, nothing is fetched yet.
    assert inbound.expire_syncs(2.0, 0.6) == []
    assert inbound.requests == []
    # Its first heartbeat: a restart, so everything past the watermark is fetched first.
    inbound.on_heartbeat("a", epoch=2, base=21, head=30, chains={b"user.": 30}, now=2.0)
    assert inbound.expire_syncs(3.0, 0.6) == []
    (request,) = inbound.requests
    assert (request.after, request.upto) == (10, 30)
    missed = [local(seq) for seq in range(11, 21)] + events
    assert inbound.on_recovered(request.rid, missed, True, 30, False) == []
    # The sync wait timed out: what is held goes once a heartbeat's chains are checked.
    released = inbound.on_heartbeat("a", epoch=2, base=21, head=30, chains={b"user.": 30}, now=3.1)
    assert [e.sequence for e in released] == list(range(11, 31))
    assert inbound.watermarks() == {"a": 30}


# A frame of another epoch, then heartbeats of the current one for longer than the timeout
# (a stale frame on a second path): the current incarnation is followed again, nothing is
# lost and nothing is delivered twice.
def test_a_frame_of_another_epoch_does_not_hold_a_heartbeating_origin_for_ever() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 2, 1, 0, 0.0)
    first = local(1)
    chain = [(b"user.", 0)]
    assert inbound.on_data(
        "a", epoch=2, first=1, last=1, chains=chain, events=[first], now=0.0
    ) == [first]
    # The same frame as sent by the incarnation before, late on a second path.
    assert inbound.on_data("a", epoch=1, first=1, last=1, chains=(), events=[first], now=0.0) == []
    for seq in (2, 3):
        held = inbound.on_data(
            "a",
            epoch=2,
            first=seq,
            last=seq,
            chains=[(b"user.", seq - 1)],
            events=[local(seq)],
            now=0.0,
        )
        assert held == []  # held behind the unknown epoch
    inbound.on_heartbeat("a", epoch=2, base=1, head=3, chains={b"user.": 3}, now=1.0)
    assert inbound.expire_syncs(2.0, 0.6) == []  # released at the next heartbeat's chains
    released = inbound.on_heartbeat("a", epoch=2, base=1, head=3, chains={b"user.": 3}, now=2.1)
    assert [e.sequence for e in released] == [2, 3]
    assert inbound.watermarks() == {"a": 3}


def restarted_and_followed(inbound: Inbound) -> None:
    """``a`` (epoch 1) delivered 1..10, then restarted as epoch 2 (the same journal), followed."""
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 1, 1, 0, 0.0)
    for seq in range(1, 11):
        feed_at(inbound, seq)
    inbound.on_heartbeat("a", epoch=2, base=11, head=10, chains={b"user.": 10}, now=1.0)
    assert inbound.on_sync("a", 2, 11, 10, 1.0) == []
    assert inbound.requests == []
    assert inbound.watermarks() == {"a": 10}


# Regression: a heartbeat of the incarnation already replaced, late on a second path (a
# broker that was stopped), was taken as one more restart whose numbering went back: the
# receiver switched back to the dead epoch, then forward again, and fetched the origin's
# whole history again (every event twice once it was past the duplicate window).
def test_a_late_heartbeat_or_sync_reply_of_a_replaced_incarnation_changes_nothing() -> None:
    inbound = Inbound("b", dedupe=1000)
    restarted_and_followed(inbound)
    assert inbound.on_heartbeat("a", epoch=1, base=1, head=10, chains={b"user.": 10}, now=2.0) == []
    assert inbound.on_sync("a", 1, 1, 10, 2.0) == []
    assert inbound.is_retired("a", 1)
    inbound.on_heartbeat("a", epoch=2, base=11, head=12, chains={b"user.": 12}, now=3.0)
    (request,) = inbound.requests  # only what epoch 2 sent since
    assert (request.after, request.upto) == (10, 12)
    assert inbound.expire_syncs(10.0, 0.6) == []
    assert inbound.watermarks() == {"a": 10}


def test_a_late_frame_of_a_replaced_incarnation_is_delivered_once_and_in_order() -> None:
    inbound = Inbound("b", dedupe=1000)
    restarted_and_followed(inbound)
    late = local(11)
    # Nothing of the origin is being fetched: delivered (once) as it comes.
    assert inbound.on_data("a", epoch=1, first=11, last=11, chains=(), events=[late], now=2.0) == [
        late
    ]
    assert inbound.on_data("a", epoch=1, first=11, last=11, chains=(), events=[late], now=2.0) == []
    # While a range is fetched from the current incarnation, which covers it, it is left to
    # that fetch (delivered now it would come before the events below it).
    inbound.on_heartbeat("a", epoch=2, base=11, head=14, chains={b"user.": 14}, now=3.0)
    (request,) = inbound.requests
    assert (request.after, request.upto) == (10, 14)
    stale = local(13)
    assert (
        inbound.on_data("a", epoch=1, first=13, last=13, chains=(), events=[stale], now=3.0) == []
    )
    fetched = [late, local(12), stale, local(14)]
    released = inbound.on_recovered(request.rid, fetched, True, 14, False)
    assert [e.sequence for e in released] == [12, 13, 14]


def test_a_sync_reply_whose_chains_pass_its_head_is_rejected() -> None:
    """A chain past the reply's own head is forged or garbage: the reply is dropped, counted."""
    out, inbound = synced_pair(["user.*"])
    feed(inbound, decode(out.frames([local(1)])[0]))
    inbound.set_patterns(["user.*", "tool.*"], 1.0)
    for chains in ({b"user.": (1 << 63) + 5}, {b"user.": 3}):
        assert inbound.on_sync("a", 1, 1, 2, 1.0, 2, chains) == []
    assert inbound.rejected == 2
    assert inbound.requests == []  # no recovery of a forged range
    # The honest reply still syncs the new prefix.
    inbound.on_sync("a", 1, 1, 1, 1.0, 1, {b"user.": 1, b"tool.": 1})
    assert inbound.synced_with(["a"])
    assert [e.sequence for e in feed(inbound, decode(out.frames([local(2)])[0]))] == [2]


def test_a_second_paths_backlog_past_the_id_window_is_not_delivered_again() -> None:
    # docs/cluster.md (per-origin order, duplicates removed): a node that
    # follows an origin directly and through a broker gets every frame twice;
    # a broker stalled for a while sends its backlog late, older than the ids
    # the window remembers (here 50), and none of it may be delivered again
    # (up to the head the origin's heartbeats announced: frames that run
    # ahead of it, forged, hold back nothing, test_cluster_identity.py).
    out = Outbound("a", epoch=1, batch_size=10, ring_size=1000)
    inbound = Inbound("b", dedupe=50)
    inbound.set_patterns(["user.*"], 0.0)
    for prefix in inbound.prefixes:
        out.add_prefix(prefix)
    assert inbound.on_sync("a", 1, 1, out.head, 0.0) == []
    frames = [decode(f) for f in out.frames([local(n) for n in range(1, 301)])]
    direct = [e.sequence for f in frames for e in feed(inbound, f)]
    assert direct == list(range(1, 301))
    chains = {p.encode(): s for p, s in out.chains()}  # type: ignore[union-attr]
    inbound.on_heartbeat("a", epoch=1, base=1, head=out.head, chains=chains, now=0.0)
    late = [e.sequence for f in frames for e in feed(inbound, f)]  # the broker's backlog
    assert late == []
    assert inbound.duplicates == 300
    # Overlapping a frame: only what is past the last delivered goes on.
    more = [decode(f) for f in out.frames([local(n) for n in range(301, 321)])]
    assert [e.sequence for e in feed(inbound, more[0])] == list(range(301, 311))
    inbound.on_heartbeat("a", epoch=1, base=1, head=310, chains={}, now=0.0)
    assert [e.sequence for f in more for e in feed(inbound, f)] == list(range(311, 321))


def test_a_new_origin_gone_before_any_head_has_its_held_frames_delivered() -> None:
    # A node that published and closed before its next heartbeat: no head,
    # no sync reply will ever come.  Its frames were held for ever.
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    assert feed_at(inbound, 1) == []
    assert feed_at(inbound, 2) == []
    assert feed_at(inbound, 5 * MAX_AHEAD) == []  # range-checked from the lowest frame
    assert inbound.expire_syncs(5.0, 1.0, alive=lambda _name: True) == []  # alive: it waits
    released = inbound.expire_syncs(5.0, 1.0, alive=lambda _name: False)
    assert [e.sequence for e in released] == [1, 2]
    assert inbound.rejected == 1
    assert inbound.watermarks() == {"a": 2}


def test_a_known_origin_gone_before_any_head_still_waits_for_it() -> None:
    # With a watermark, releasing would skip what lies between it and the
    # frames held: the origin is waited for, to backfill from where it was.
    inbound = Inbound("b", dedupe=1000)
    inbound.loaded("a", SavedMark(1, None, None), 0.0)  # the node saw up to 1 before
    inbound.set_patterns(["user.*"], 0.0)
    assert feed_at(inbound, 5) == []
    assert inbound.expire_syncs(5.0, 1.0, alive=lambda _name: False) == []
    assert inbound.watermarks() == {"a": 1}
