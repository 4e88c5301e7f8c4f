"""What the lossy-link simulation found, step by step on ``Inbound`` (no sockets, no threads).

Each test replays one case ``tests/test_inbound_lossy_model.py`` found, as
the shortest sequence of calls the bridge makes (``stream_io``,
``recovery_io``), with origin ``b``'s events in a ring that answers every
recovery request in full.  Each failed before its fix
(``docs/cluster.md``, "What is not guaranteed").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from actors import Event
from actors._cluster.room import GONE, RENUMBERED, Loss
from actors._cluster.streams import Inbound


class Got(list[int]):
    """The sequences ``Inbound`` returned, in order."""

    def take(self, events: list[Event]) -> None:
        self.extend(e.sequence or 0 for e in events)


def ring_of(types: dict[int, str]) -> dict[int, Event]:
    """Origin ``b``'s events: sequence -> an event of that type."""
    return {n: Event(event_type=t, data=n, origin="b", sequence=n) for n, t in types.items()}


def _in_a_row(
    inbound: Inbound,
    ring: dict[int, Event],
    take: Callable[[list[Event]], None],
    numbers: Iterable[int],
) -> None:
    """Give ``inbound`` b's frames of ``numbers``, each chained under ``""`` to the one before."""
    for n in numbers:
        chains = [(b"", n - 1)]
        take(inbound.on_data("b", epoch=1, first=n, last=n, chains=chains, events=[ring[n]], now=n))


def _answer_all(
    inbound: Inbound, ring: dict[int, Event], take: Callable[[list[Event]], None]
) -> None:
    """Answer every recovery request ``inbound`` asks, from ``ring``, in full."""
    while inbound.requests:
        request = inbound.requests.pop(0)
        fetched = [
            e
            for n, e in ring.items()
            if request.after < n <= request.upto and e.event_type.startswith(request.prefixes)
        ]
        take(inbound.on_recovered(request.rid, fetched, True, request.upto, False))


def test_sync_timeout_with_a_stale_head_keeps_per_origin_order() -> None:
    """The shortest run the random test found, step by step on ``Inbound`` (no sockets).

    c follows b with ``a.b`` (synced at head 0).  b publishes 1 (``a.c``, not
    for c) and 2 (``a.b``, sent).  c subscribes ``a.*`` (prefix ``a.``): it
    waits for a sync reply and holds frame 2.  The reply is lost (HWM); the
    sync wait times out while the last head c heard is still 0.  It used to
    baseline ``a.`` at 0, backfill nothing (``(watermark 0, head 0]`` is
    empty) and release 2; b's next heartbeat showed ``a.`` at 2 (its chain
    starts at the head when the prefix arrived), and c fetched ``(0, 2]``
    under ``a.`` and delivered 1 after 2.  The backfill now reaches the
    frames held too.
    """
    ring = {
        1: Event(event_type="a.c", data=1, origin="b", sequence=1),
        2: Event(event_type="a.b", data=2, origin="b", sequence=2),
    }
    inbound = Inbound("c", 10_000)
    star: list[int] = []  # what the subscription ``a.*`` gets

    def take(events: list[Event]) -> None:
        star.extend(e.sequence or 0 for e in events if e.event_type.startswith("a."))

    inbound.set_patterns(["a.b"], 0)
    take(inbound.on_sync("b", 1, 1, 0, 0))
    inbound.set_patterns(["a.b", "a.*"], 1)
    take(
        inbound.on_data(
            "b", epoch=1, first=2, last=2, chains=[(b"a.b", 0)], events=[ring[2]], now=2
        )
    )
    take(inbound.expire_syncs(now=10, timeout=5))  # the sync reply was lost
    _answer_all(inbound, ring, take)
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=2, chains={b"a.b": 2, b"a.": 2}, now=11))
    _answer_all(inbound, ring, take)
    assert star == [1, 2], f"b's events reached a.* out of order: {star}"


def test_a_backfill_waits_for_the_runs_the_origin_still_had_queued() -> None:
    """A sync reply overtakes the origin's queued runs; the backfill must not overtake them.

    c follows b with ``**`` and has 1..5.  b queues 6 (``a.b``) and 7 (``xy``)
    (out of credit).  c adds ``x*``; b's sync reply says head 7 and sent 5.
    The backfill of ``x`` over ``(5, 7]`` brings 7; 6 is still in b's queue
    and comes on the stream next.  7 used to be released with the answer and
    6 after it; now what the backfill fetched past ``sent`` waits for the
    stream to pass it.
    """
    types = {1: "a", 2: "y", 3: "a", 4: "y", 5: "a", 6: "a.b", 7: "xy"}
    ring = ring_of(types)
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    inbound.set_patterns(["**"], 0)
    take(inbound.on_sync("b", 1, 1, 0, 0, 0))
    _in_a_row(inbound, ring, take, range(1, 6))
    inbound.set_patterns(["**", "x*"], 6)
    take(inbound.on_sync("b", 1, 1, 7, 7, sent=5, chains={b"": 5, b"x": 7}))
    _answer_all(inbound, ring, take)
    assert got == [1, 2, 3, 4, 5], "7 was released ahead of 6, still queued at b"
    _in_a_row(inbound, ring, take, (6, 7))
    assert got == [1, 2, 3, 4, 5, 6, 7]
    assert inbound.duplicates == 1  # 7 came twice: fetched, then on the stream


def test_a_loss_found_in_a_frame_held_for_a_sync_reply_is_fetched_before_it_is_released() -> None:
    """The chains of the prefixes synced already are checked while a sync reply is awaited.

    c follows b with ``a*`` and has 1.  c adds ``x*`` and waits for its sync
    reply.  2 (``ab``) is lost; 3 (``ac``, chain ``a`` at 2) comes and is
    held.  Its chain used to be ignored while the reply was awaited: 3 was
    released with the reply, and b's next heartbeat (``a`` at 3) fetched 2
    after it.  Now the loss is asked for as the frame comes.
    """
    types = {1: "a", 2: "ab", 3: "ac"}
    ring = ring_of(types)
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    inbound.set_patterns(["a*"], 0)
    take(inbound.on_sync("b", 1, 1, 0, 0, 0))
    take(
        inbound.on_data("b", epoch=1, first=1, last=1, chains=[(b"a", 0)], events=[ring[1]], now=1)
    )
    inbound.set_patterns(["a*", "x*"], 2)
    take(
        inbound.on_data("b", epoch=1, first=3, last=3, chains=[(b"a", 2)], events=[ring[3]], now=3)
    )
    take(inbound.on_sync("b", 1, 1, 3, 4, 3))
    _answer_all(inbound, ring, take)
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=3, chains={b"a": 3, b"x": 3}, now=5))
    _answer_all(inbound, ring, take)
    assert got == [1, 2, 3], f"b's events reached c out of order: {got}"


def test_a_late_sync_reply_gives_the_baseline_a_timed_out_wait_left_out() -> None:
    """A sync reply that comes after the wait for it timed out still baselines the prefixes.

    c has no watermark for b.  c subscribes ``a.**``, then ``a.b``; the sync
    reply of the first round is lost and the wait times out, which marks both
    prefixes synced without a baseline (nothing to fetch from).  The reply of
    the second round comes (head 23) but found no new prefix, so they stayed
    without one: 24 (``a.b``), lost after it, was never asked for, since a
    heartbeat checks only the prefixes with a baseline.  Found by the random
    runs (58 of 4,000 seeds missed an event this way).
    """
    ring = {24: Event(event_type="a.b", data=24, origin="b", sequence=24)}
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    take(inbound.on_sync("b", 1, 1, 1, 0, 1))  # round 0: no pattern yet
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=1, chains={}, now=1))
    inbound.set_patterns(["a.**"], 2)  # round 1: its reply is lost
    inbound.set_patterns(["a.**", "a.b"], 3)  # round 2
    take(inbound.expire_syncs(now=10, timeout=5))
    take(inbound.on_sync("b", 1, 1, 23, 11, 23))  # round 2's reply, late
    chains = {b"a": 24, b"a.b": 24}  # 24 was lost on the way
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=24, chains=chains, now=12))
    _answer_all(inbound, ring, take)
    assert got == [24], "a loss after the late sync reply was never fetched"


def test_a_range_given_up_is_not_fetched_again_under_a_narrower_prefix() -> None:
    """A range whose fetch failed is given up for the prefixes under its own too.

    c follows b with ``**`` and ``x*``, baselined at 5.  6 (``xy``) is lost;
    7 (``y``, chain ``""`` at 6) shows it and ``(5, 6]`` is asked for under
    ``""``; the request fails (counted unrecovered) and 7 is released.  b's
    next heartbeat shows ``x`` at 6: that chain used to fetch 6 again, and
    deliver it after 7.
    """
    ring = ring_of({6: "xy"})
    seven = Event(event_type="y", data=7, origin="b", sequence=7)
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    inbound.set_patterns(["**", "x*"], 0)
    take(inbound.on_sync("b", 1, 1, 5, 0, 5))
    take(inbound.on_data("b", epoch=1, first=7, last=7, chains=[(b"", 6)], events=[seven], now=1))
    (request,) = inbound.requests
    inbound.requests.clear()
    take(inbound.on_recovery_failed(request.rid, "given up"))
    assert got == [7]
    chains = {b"": 7, b"x": 6}
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=7, chains=chains, now=2))
    _answer_all(inbound, ring, take)
    assert got == [7], f"6, given up, came after 7: {got}"
    assert (inbound.gaps, inbound.unrecovered, inbound.gaps_open()) == (1, 1, 0)
    assert inbound.losses == [Loss("b", 6, 6, "given up")]  # announced by the bridge


def test_each_page_the_origin_no_longer_holds_is_kept_as_a_loss() -> None:
    """A range fetched in pages: each answer that says "lost" names its own page.

    c follows b (``**``), baselined at 1; 2..9 are lost and 10 shows it.  The
    first answer covers ``(1, 5]``, says part of it is gone and holds 5; the
    second covers the rest in full; the third (the range's end) says lost
    again.  Only the two lossy pages are kept, each with its own bounds, and
    nothing is kept for the page that came whole.
    """
    ring = ring_of(dict.fromkeys(range(2, 11), "a"))
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take
    inbound.set_patterns(["**"], 0)
    take(inbound.on_sync("b", 1, 1, 1, 0, 1))
    _in_a_row(inbound, ring, take, (10,))
    (request,) = inbound.requests
    inbound.requests.clear()
    assert (request.after, request.upto) == (1, 9)
    take(inbound.on_recovered(request.rid, [ring[5]], False, 5, True))
    (second,) = inbound.requests
    inbound.requests.clear()
    assert second.after == 5
    take(inbound.on_recovered(second.rid, [ring[6]], False, 6, False))
    (third,) = inbound.requests
    inbound.requests.clear()
    take(inbound.on_recovered(third.rid, [ring[9]], True, 9, True))
    assert got == [5, 6, 9, 10]
    assert inbound.losses == [Loss("b", 2, 5, GONE), Loss("b", 7, 9, GONE)]
    assert (inbound.gaps, inbound.unrecovered, inbound.gaps_open()) == (1, 1, 0)


def test_after_a_timed_out_sync_nothing_is_released_before_a_heartbeat_s_chains() -> None:
    """A timed-out sync wait baselines at the last heartbeat's head; the chains say more.

    c has 1..4 of b (``y``).  c subscribes ``a.**`` (prefix ``a``); the sync
    reply is lost and the wait times out at head 4: ``a`` is baselined at 4.
    b had sent 5 and 6 under ``a`` (lost), and 7 (``a.b``) was a run built
    before b took the prefix, so its frame carries no chain of ``a``.  7
    used to be released at once; the next heartbeat (``a`` at 6) fetched 5
    and 6 after it.  Now the held frames wait for that heartbeat.
    """
    types = {5: "a", 6: "a.c"}
    ring = ring_of(types)
    seven = Event(event_type="a.b", data=7, origin="b", sequence=7)
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    inbound.set_patterns(["y"], 0)
    take(inbound.on_sync("b", 1, 1, 4, 0, 4))
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=4, chains={b"y": 4}, now=1))
    inbound.set_patterns(["y", "a.**"], 2)  # its sync reply is lost
    take(inbound.expire_syncs(now=10, timeout=5))
    take(inbound.on_data("b", epoch=1, first=7, last=7, chains=[], events=[seven], now=11))
    chains = {b"y": 4, b"a": 6}
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=7, chains=chains, now=12))
    _answer_all(inbound, ring, take)
    assert got == [5, 6, 7], f"b's events reached c out of order: {got}"


def test_an_event_no_pattern_took_is_not_delivered_when_fetched_again_later() -> None:
    """An event filtered out is remembered like a delivered one.

    c follows b with ``*`` and ``a.*`` (prefixes ``""`` and ``a.``), baselined
    at 9, and has 10.  11 (``a.b.c``) is lost; 12's chain shows it under
    ``""``, it is fetched and no pattern takes it.  c adds ``**`` (no new
    prefix) and gets 13.  A heartbeat then shows 11 under ``a.`` too: it
    used to be fetched again and delivered to ``**`` after 12 and 13.
    """
    ring = ring_of({10: "xy", 11: "a.b.c", 12: "ab", 13: "y"})
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    inbound.set_patterns(["*", "a.*"], 0)
    take(inbound.on_sync("b", 1, 1, 9, 0, 9))
    for n, prev in ((10, 9), (12, 11)):
        chains = [(b"", prev)]
        take(inbound.on_data("b", epoch=1, first=n, last=n, chains=chains, events=[ring[n]], now=n))
    _answer_all(inbound, ring, take)  # 11, which no pattern takes
    assert got == [10, 12]
    inbound.set_patterns(["*", "a.*", "**"], 13)
    take(
        inbound.on_data(
            "b", epoch=1, first=13, last=13, chains=[(b"", 12)], events=[ring[13]], now=13
        )
    )
    chains = {b"": 13, b"a.": 11}
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=13, chains=chains, now=14))
    _answer_all(inbound, ring, take)
    assert got == [10, 12, 13], f"11 reached ** after newer events: {got}"
    assert inbound.duplicates == 1


def test_a_range_given_up_is_not_fetched_again_by_a_chain_that_was_behind_it() -> None:
    """The same for a prefix whose chain was last checked below the range given up.

    c follows b with ``**`` and ``x*``, baselined at 1, and has 2..4.  5
    (``xy``) is lost; 6's chain shows it under ``""``, and the fetch of
    ``(4, 5]`` fails.  ``x``'s chain was last seen at 1: its unchecked part
    ``(1, 4]`` is fetched at once and the rest is given up with the range,
    where the next heartbeat (``x`` at 5) used to fetch ``(1, 5]`` and
    deliver 5 after 6.
    """
    ring = ring_of({2: "a", 3: "a", 4: "a", 5: "xy", 6: "a.c"})
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    inbound.set_patterns(["**", "x*"], 0)
    take(inbound.on_sync("b", 1, 1, 1, 0, 1))
    _in_a_row(inbound, ring, take, (2, 3, 4, 6))
    (request,) = inbound.requests
    inbound.requests.clear()
    take(inbound.on_recovery_failed(request.rid, "given up"))  # (4, 5] given up
    _answer_all(inbound, ring, take)
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=6, chains={b"": 6, b"x": 5}, now=7))
    _answer_all(inbound, ring, take)
    assert got == [2, 3, 4, 6], f"5, given up, came after 6: {got}"
    assert (inbound.gaps, inbound.unrecovered, inbound.gaps_open()) == (1, 1, 0)


def _following_all_then_zz() -> tuple[Inbound, dict[int, Event], Got]:
    """c follows b with ``**`` and has 1..10 (``y``); 11 (``a``) is lost; c adds ``zz``."""
    ring = ring_of(dict.fromkeys(range(1, 11), "y") | {11: "a", 12: "zz"})
    inbound = Inbound("c", 10_000)
    got = Got()
    inbound.set_patterns(["**"], 0)
    got.take(inbound.on_sync("b", 1, 1, 0, 0, 0))
    _in_a_row(inbound, ring, got.take, range(1, 11))
    inbound.set_patterns(["**", "zz"], 11)
    return inbound, ring, got


def test_a_loss_under_an_old_chain_is_fetched_before_a_new_prefix_s_backfill_is_released() -> None:
    """A new prefix's backfill must not pass a loss under a chain synced before.

    c follows b with ``**`` and has 1..10; 11 (``a``) is lost.  c adds
    ``zz``; b's sync reply says head 12.  The backfill of ``zz`` over
    ``(10, 12]`` brings 12 (``zz``), which ``**`` used to get ahead of 11,
    found missing only at b's next heartbeat.  The reply now carries b's
    chains, and ``""`` at 11 is fetched first.
    """
    inbound, ring, got = _following_all_then_zz()
    take = got.take
    take(inbound.on_sync("b", 1, 1, 12, 12, sent=12, chains={b"": 12, b"zz": 12}))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 13)), f"b's events reached ** out of order: {got}"


def test_without_chains_in_the_sync_reply_its_release_waits_for_a_heartbeat() -> None:
    """The same, from a peer whose sync replies carry no chains: a heartbeat's show the loss."""
    inbound, ring, got = _following_all_then_zz()
    take = got.take
    take(inbound.on_sync("b", 1, 1, 12, 12, sent=12))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 11)), "12 was released before b's chains were heard"
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=12, chains={b"zz": 12}, now=13))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 11)), "a heartbeat without the chain of '' ended the wait"
    chains = {b"": 12, b"zz": 12}
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=12, chains=chains, now=14))
    _answer_all(inbound, ring, take)
    assert got == list(range(1, 13)), f"b's events reached ** out of order: {got}"


def test_after_a_timed_out_sync_without_a_watermark_a_heartbeat_s_chain_is_the_baseline() -> None:
    """A prefix a timed-out wait left without a baseline takes it from a heartbeat's chain.

    c (no watermark yet) follows b with ``**``; the sync reply is lost and
    the wait times out.  b's heartbeat shows ``""`` at 16; 17 is lost and
    18 comes chained to it.  18 used to give the baseline and be delivered,
    17 left unfetched (or fetched later under another chain, after 18).
    """
    ring = ring_of({16: "a", 17: "ab", 18: "x"})
    inbound = Inbound("c", 10_000)
    got = Got()
    take = got.take

    inbound.set_patterns(["**"], 0)
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=15, chains={}, now=1))
    take(inbound.expire_syncs(now=10, timeout=5))  # the sync reply was lost
    take(inbound.on_heartbeat("b", epoch=1, base=1, head=16, chains={b"": 16}, now=11))
    take(
        inbound.on_data(
            "b", epoch=1, first=18, last=18, chains=[(b"", 17)], events=[ring[18]], now=12
        )
    )
    _answer_all(inbound, ring, take)
    assert got == [17, 18], f"b's events after the heartbeat: {got}"


def test_ranges_of_an_origins_earlier_run_end_lost_when_it_restarts_renumbered() -> None:
    """b, without a journal, loses 6..10 on the wire (11 shows it), then is killed.

    Its new run (a new numbering) used to get the request for ``(5, 10]`` and
    answer it from its own ring, empty: the range counted as recovered, nothing
    was announced, and the held 11 came after the new run's events.  The range
    now ends unrecovered and is announced, up to the held frame, which goes too.
    """
    inbound = Inbound("a", 1000)
    got = Got()
    take = got.take

    def old(n: int) -> Event:
        return Event(event_type="x.y", data=n, origin="b", sequence=n)

    inbound.set_patterns(["x.*"], 0.0)
    take(inbound.on_sync("b", 1, 1, 0, 0.0, 0, {}, numbering=1))
    for n in [*range(1, 6), 11]:
        chains = [(b"x.", 10 if n == 11 else n - 1)]
        take(inbound.on_data("b", epoch=1, first=n, last=n, chains=chains, events=[old(n)], now=1))
    (request,) = inbound.requests
    inbound.requests.clear()
    heard = {"epoch": 2, "base": 1, "head": 3, "chains": {b"x.": 3}, "now": 2.0}
    take(inbound.on_heartbeat("b", **heard, numbering=2))  # type: ignore[arg-type]
    assert not inbound.is_pending(request.rid)
    take(inbound.on_recovered(request.rid, [], True, request.upto, False))  # too late: ignored
    assert inbound.losses == [Loss("b", 6, 11, RENUMBERED)]
    assert (inbound.gaps, inbound.unrecovered, inbound.gaps_open()) == (1, 1, 0)
    assert got == [1, 2, 3, 4, 5]  # 11, of the old numbering, is not delivered among the new
