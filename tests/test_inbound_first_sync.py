"""A node new to an origin, step by step on ``Inbound``: what follows its first frames is owed.

``docs/cluster.md``, "No hole after the first event": the frames a node holds
for its first sync reply are delivered at it, so it follows their chains per
prefix meanwhile; a hole among them, and what the reply's chains (or, after
a timed-out wait, a heartbeat's chain or the next frame) show the origin
sent after them, is fetched, never skipped, and nothing that was not lost
is fetched.  Each test failed on the code before its fix.
"""

from __future__ import annotations

from collections.abc import Callable

from actors import Event
from actors._cluster.checkpoints import SavedMark
from actors._cluster.streams import Inbound
from tests.test_inbound_steps import Got, _answer_all, ring_of


def _frame(
    inbound: Inbound, ring: dict[int, Event], n: int, prefix: bytes, prev: int
) -> list[Event]:
    """b's frame of ``n`` alone, chained under ``prefix`` to ``prev``."""
    chains = [(prefix, prev)]
    return inbound.on_data("b", epoch=1, first=n, last=n, chains=chains, events=[ring[n]], now=n)


def _held_then_paused(
    inbound: Inbound, ring: dict[int, Event], take: Callable[[list[Event]], None]
) -> None:
    """c, new to b, holds b's frames 1..3 (``job.run``) for its sync reply; 4..10 are lost."""
    inbound.set_patterns(["job.*"], 0)
    for n in (1, 2, 3):
        take(_frame(inbound, ring, n, b"job.", n - 1))


def _sync_lost(inbound: Inbound, take: Callable[[list[Event]], None]) -> None:
    """b's heartbeat shows head 3; the first sync reply is lost and the wait times out."""
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=3, chains={b"job.": 3}, now=4))
    take(inbound.expire_syncs(now=10, timeout=5))


# Found by the fault harness (a live subscriber, paused right after it first heard the origin):
# it delivered 38,500..38,649, then 40,400 on, and never fetched the 1,750 between.
def test_a_sync_reply_past_the_frames_held_for_it_fetches_what_lies_between() -> None:
    """The frames held for a first sync reply are delivered: what follows them is owed too.

    c holds b's frames 1..3 for its first sync reply; it is paused, and b's
    frames 4..10 are lost on the way (a high-water mark).  The reply says
    head 10.  It used to be the baseline: 1..3 were delivered, then 11 on,
    and 4..10 were never fetched, with no loss counted or announced.
    """
    ring = ring_of(dict.fromkeys(range(1, 12), "job.run"))
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    _held_then_paused(inbound, ring, take)
    take(inbound.on_sync("b", 1, 1, 10, 5, 10, {b"job.": 10}))
    take(_frame(inbound, ring, 11, b"job.", 10))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 12)), f"b's events at c: {got}"
    assert inbound.gaps == inbound.recovered + inbound.unrecovered + inbound.gaps_open() == 1


def test_after_a_timed_out_first_sync_a_chain_past_the_held_frames_fetches_what_lies_between() -> (
    None
):
    """As above, with the sync reply lost: the baseline comes from a heartbeat's chain."""
    ring = ring_of(dict.fromkeys(range(1, 12), "job.run"))
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    _held_then_paused(inbound, ring, take)
    _sync_lost(inbound, take)
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=10, chains={b"job.": 10}, now=11))
    take(_frame(inbound, ring, 11, b"job.", 10))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 12)), f"b's events at c: {got}"


def test_after_a_timed_out_first_sync_a_frame_past_the_held_frames_fetches_what_lies_between() -> (
    None
):
    """As above, the first word after the timeout being a frame chained past the held ones."""
    ring = ring_of(dict.fromkeys(range(1, 12), "job.run"))
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    _held_then_paused(inbound, ring, take)
    _sync_lost(inbound, take)
    take(_frame(inbound, ring, 11, b"job.", 10))
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=11, chains={b"job.": 11}, now=12))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 12)), f"b's events at c: {got}"


def test_a_hole_among_the_frames_held_for_a_first_sync_reply_is_fetched() -> None:
    """c holds 1..3, then 11 chained to 10 (4..10 lost on the way), then the reply comes."""
    ring = ring_of(dict.fromkeys(range(1, 13), "job.run"))
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*"], 0)
    for n in (1, 2, 3):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    got.take(_frame(inbound, ring, 11, b"job.", 10))
    got.take(inbound.on_sync("b", 1, 1, 11, 20, 11, {b"job.": 11}))
    got.take(_frame(inbound, ring, 12, b"job.", 11))
    _answer_all(inbound, ring, got.take)
    assert got == list(range(1, 13)), f"b's events at c: {got}"
    assert inbound.gaps == inbound.recovered + inbound.unrecovered + inbound.gaps_open() == 1


def test_a_frame_held_under_another_prefix_does_not_hide_a_loss_under_this_one() -> None:
    """Held: 1..3 (``job.``) and 10 (``x``); ``job.`` 4..9 lost; the reply's chains show it."""
    types = dict.fromkeys(range(1, 12), "job.run")
    types[10] = "x"
    ring = ring_of(types)
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*", "x"], 0)
    for n in (1, 2, 3):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    got.take(_frame(inbound, ring, 10, b"x", 0))
    got.take(inbound.on_sync("b", 1, 1, 10, 20, 10, {b"job.": 9, b"x": 10}))
    got.take(_frame(inbound, ring, 11, b"job.", 9))
    _answer_all(inbound, ring, got.take)
    assert got == list(range(1, 12)), f"b's events at c: {got}"


def test_after_a_timed_out_first_sync_each_prefix_is_followed_from_its_own_held_frames() -> None:
    """Held: 1..3 (``job.``) then, after the timeout, 10 (``x``); ``job.`` 4..9 and 11 lost."""
    types = dict.fromkeys(range(1, 13), "job.run")
    types[10] = "x"
    ring = ring_of(types)
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*", "x"], 0)
    for n in (1, 2, 3):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    take = got.take
    _sync_lost(inbound, take)
    take(_frame(inbound, ring, 10, b"x", 0))
    take(
        inbound.on_heartbeat("b", epoch=1, base=1, head=11, chains={b"job.": 11, b"x": 10}, now=12)
    )
    take(_frame(inbound, ring, 12, b"job.", 11))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 13)), f"b's events at c: {got}"


def test_events_of_other_types_after_the_held_frames_are_no_gap() -> None:
    """Held: 1 (``job.run``); b then published 2..10 of other types: nothing is fetched.

    Asked, an origin without a ring would answer "lost", and a loss would be
    announced that never was.
    """
    types = dict.fromkeys(range(1, 11), "other")
    types[1] = "job.run"
    ring = ring_of(types)
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*"], 0)
    got.take(_frame(inbound, ring, 1, b"job.", 0))
    got.take(inbound.on_sync("b", 1, 1, 10, 5, 10, {b"job.": 1}))
    assert not inbound.requests
    assert got == [1]
    assert inbound.gaps == 0


def test_held_frames_cut_for_room_before_a_first_sync_are_fetched_again_as_no_gap() -> None:
    """With a window of 4, 5 and 6 are cut while held; nothing was lost on the way."""
    ring = ring_of(dict.fromkeys(range(1, 7), "job.run"))
    inbound = Inbound("c", 10_000)
    inbound.window = 4
    got = Got()
    inbound.set_patterns(["job.*"], 0)
    for n in range(1, 7):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    got.take(inbound.on_sync("b", 1, 1, 6, 5, 6, {b"job.": 6}))
    while inbound.requests:
        _answer_all(inbound, ring, got.take)
        inbound.on_handled(inbound.delivered_counts())
    assert got == list(range(1, 7)), got
    assert inbound.gaps == 0, f"{inbound.gaps} gaps (cut {inbound.cut}) though nothing was lost"


def _lost_to_all(inbound: Inbound, take: Callable[[list[Event]], None]) -> None:
    """Answer every request as an origin without a ring does: "no longer held"."""
    while inbound.requests:
        request = inbound.requests.pop(0)
        take(inbound.on_recovered(request.rid, [], True, request.upto, True))


def _gaps_add_up(inbound: Inbound) -> None:
    assert inbound.gaps == inbound.recovered + inbound.unrecovered + inbound.gaps_open()


def test_a_hole_past_a_stale_head_at_a_timed_out_first_sync_is_still_fetched() -> None:
    """The last heartbeat's head (3) is older than the held frame (11) whose chain shows 4..10."""
    ring = ring_of(dict.fromkeys(range(1, 13), "job.run"))
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*"], 0)
    for n in (1, 2, 3):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    got.take(inbound.on_heartbeat("b", epoch=1, base=1, head=3, chains={b"job.": 3}, now=4))
    got.take(_frame(inbound, ring, 11, b"job.", 10))
    got.take(inbound.expire_syncs(now=10, timeout=5))
    got.take(_frame(inbound, ring, 12, b"job.", 11))
    got.take(inbound.on_heartbeat("b", epoch=1, base=1, head=12, chains={b"job.": 12}, now=13))
    _answer_all(inbound, ring, got.take)
    _gaps_add_up(inbound)
    assert got == list(range(1, 13)), f"b's events at c: {got}"


def _timed_out_then_delivered(inbound: Inbound, ring: dict[int, Event], got: Got) -> None:
    inbound.set_patterns(["job.*"], 0)
    for n in (1, 2, 3):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    _sync_lost(inbound, got.take)
    got.take(inbound.on_heartbeat("b", epoch=1, base=1, head=3, chains={b"job.": 3}, now=11))
    for n in range(4, 21):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    assert got == list(range(1, 21))


def test_the_held_frames_of_a_first_sync_say_nothing_after_it() -> None:
    """Once followed, a pattern dropped and added again does not fetch its old held frames' sequel.

    Remembered, they fetched 4..20 again: a second delivery past a small id
    window, and from an origin without a ring a loss announced that never was.
    """
    for dedupe, ringless in ((10_000, False), (4, False), (10_000, True)):
        ring = ring_of(dict.fromkeys(range(1, 22), "job.run"))
        inbound = Inbound("c", dedupe)
        got = Got()
        _timed_out_then_delivered(inbound, ring, got)
        inbound.set_patterns([], 30)
        inbound.set_patterns(["job.*"], 31)
        got.take(inbound.on_sync("b", 1, 1, 20, 32, 20, {b"job.": 20}))
        assert not inbound.requests, inbound.requests
        if ringless:
            _lost_to_all(inbound, got.take)
        got.take(_frame(inbound, ring, 21, b"job.", 20))
        _gaps_add_up(inbound)
        assert got == list(range(1, 22)), got
        assert (inbound.gaps, inbound.losses) == (0, [])


def test_a_sync_reply_taken_while_the_watermark_loads_keeps_its_chains() -> None:
    """Replayed after the load, the reply still shows that only other types followed."""
    types = dict.fromkeys(range(1, 11), "other")
    types[1] = "job.run"
    ring = ring_of(types)
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*"], 0)
    inbound.start_loading("b", 0)
    got.take(_frame(inbound, ring, 1, b"job.", 0))
    got.take(inbound.on_sync("b", 1, 1, 10, 5, 10, {b"job.": 1}))  # stashed
    got.take(inbound.loaded("b", SavedMark(None, None, None), 6))
    assert not inbound.requests, inbound.requests
    assert got == [1]


def test_frames_held_below_a_loaded_watermark_are_no_baseline() -> None:
    """Delivered before the restart (53..100), they are not fetched again."""
    ring = ring_of(dict.fromkeys(range(1, 122), "job.run"))
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*"], 0)
    inbound.start_loading("b", 0)
    for n in (50, 51, 52):  # a second path's backlog, say
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    got.take(inbound.loaded("b", SavedMark(100, 1, None), 1, journaled=[]))
    got.take(inbound.on_sync("b", 1, 1, 120, 2, 120, {b"job.": 120}))
    _answer_all(inbound, ring, got.take)
    got.take(_frame(inbound, ring, 121, b"job.", 120))
    _gaps_add_up(inbound)
    assert [n for n in got if 52 < n <= 100] == [], got
    assert got[-21:] == list(range(101, 122)), got


def test_a_held_frame_out_of_range_does_not_hide_a_loss_after_the_others() -> None:
    ring = ring_of(dict.fromkeys(range(1, 12), "job.run"))
    far = 1 << 40
    forged = Event(event_type="job.run", data=0, origin="b", sequence=far)
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["job.*"], 0)
    for n in (1, 2, 3):
        got.take(_frame(inbound, ring, n, b"job.", n - 1))
    chains = [(b"job.", far - 1)]
    got.take(
        inbound.on_data("b", epoch=1, first=far, last=far, chains=chains, events=[forged], now=4)
    )
    got.take(inbound.on_sync("b", 1, 1, 10, 5, 10, {b"job.": 10}))
    got.take(_frame(inbound, ring, 11, b"job.", 10))
    _answer_all(inbound, ring, got.take)
    _gaps_add_up(inbound)
    assert inbound.rejected == 1
    assert got == list(range(1, 12)), got
