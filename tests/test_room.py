"""A recovery obeys the credit window (``_cluster.room``, ``Inbound`` with a ``window``).

The state machine first (no sockets), then two node buses in one process:
a persistent receiver restarted far behind (a backlog many times its
window), at a default (``DROP_OLDEST``) subscription of ``capacity ==
credit_window`` behind a handler held shut: nothing is dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from actors import Event, EventBus
from actors._cluster import wire
from actors._cluster.origins import OriginState
from actors._cluster.room import cut_held, excess, page_size
from actors._cluster.streams import Inbound
from tests._support import WAIT


def local(seq: int, event_type: str = "user.login") -> Event:
    return Event(event_type=event_type, data=seq, sequence=seq, origin="a")


def held(*seqs: int) -> OriginState:
    return OriginState(held=[local(s) for s in seqs])


# -- the arithmetic ---------------------------------------------------------------------


def test_a_page_is_at_most_half_the_window_and_what_the_range_can_hold() -> None:
    assert page_size(200, OriginState(), 10_000) == (100, 0)
    assert page_size(200, OriginState(), 7) == (7, 0)


def test_a_page_waits_until_a_quarter_of_the_window_is_handled() -> None:
    st = OriginState(delivered=160, handled=0)
    assert page_size(200, st, 10_000) == (0, 0)  # 40 free: under a quarter
    st.handled = 10
    assert page_size(200, st, 10_000) == (50, 0)
    # A small range needs less than a quarter: it goes as soon as it fits.
    assert page_size(200, OriginState(delivered=195), 3) == (3, 0)


def test_held_events_make_room_for_a_page_by_being_dropped() -> None:
    st = held(*range(10, 190))  # 180 held, nothing unhandled
    limit, trim = page_size(200, st, 10_000)
    assert (limit, trim) == (50, 30)  # 20 free: drop 30 held for a quarter
    assert cut_held(st, trim) == (159, 189)  # the newest go: (after, upto]
    assert [e.sequence for e in st.held] == list(range(10, 160))


def test_excess_counts_held_events_over_the_window() -> None:
    st = held(*range(1, 81))
    st.delivered, st.asked = 100, 50
    assert excess(200, st) == 30
    st.asked = 0
    assert excess(200, st) == 0
    assert excess(10, OriginState(delivered=100)) == 0  # nothing held to drop


# -- Inbound with a window ----------------------------------------------------------------


def synced(window: int) -> Inbound:
    inbound = Inbound("b", dedupe=100_000)
    inbound.window = window
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 1, 1, 1, 0.0)
    return inbound


def frame(inbound: Inbound, first: int, last: int, prev: int) -> list[Event]:
    return inbound.on_data(
        "a",
        epoch=1,
        first=first,
        last=last,
        chains=[(b"user.", prev)],
        events=[local(s) for s in range(first, last + 1)],
        now=0.0,
    )


def test_a_long_recovery_asks_page_by_page_as_the_bus_handles() -> None:
    inbound = synced(200)
    assert [e.sequence for e in frame(inbound, 1, 1, 0)] == [1]
    assert frame(inbound, 1001, 1001, 1000) == []  # 2..1000 lost: held
    (request,) = inbound.requests
    assert (request.after, request.upto, request.limit) == (1, 1000, 100)
    inbound.requests.clear()
    page = [local(s) for s in range(2, 102)]
    assert len(inbound.on_recovered(request.rid, page, False, 101, False)) == 100
    (second,) = inbound.requests  # 101 unhandled, 1 held: 98 free
    assert (second.after, second.limit) == (101, 98)
    inbound.requests.clear()
    page = [local(s) for s in range(102, 200)]
    assert len(inbound.on_recovered(second.rid, page, False, 199, False)) == 98
    assert inbound.requests == []  # the window is full: wait for the bus
    assert inbound.waiting_room()
    inbound.on_handled(inbound.delivered_counts())  # a flush: all handled
    (third,) = inbound.requests
    assert (third.after, third.upto, third.limit) == (199, 1000, 100)
    assert not inbound.waiting_room()
    assert inbound.recovering("a")  # the bridge grants "a" half its window meanwhile
    assert not inbound.recovering("z")
    stats = (inbound.gaps, inbound.recovered, inbound.unrecovered, inbound.gaps_open())
    assert stats == (1, 0, 0, 1)


def test_frames_held_past_the_window_are_dropped_and_fetched_again_in_order() -> None:
    inbound = synced(200)
    frame(inbound, 1, 1, 0)
    frame(inbound, 11, 11, 10)  # 2..10 lost
    (request,) = inbound.requests
    assert request.limit == 9
    inbound.requests.clear()
    for seq in range(12, 400):  # the live stream goes on meanwhile
        assert frame(inbound, seq, seq, seq - 1) == []
    # 1 unhandled + 9 asked + 190 held fill the window; the newest went.
    assert inbound.cut == 389 - 190
    out = inbound.on_recovered(request.rid, [local(s) for s in range(2, 11)], True, 10, False)
    # What is held below the dropped range goes; the dropped range is asked for.
    assert [e.sequence for e in out] == list(range(2, 201))
    assert inbound.requests == []  # 200 unhandled: the window is full
    inbound.on_handled(inbound.delivered_counts())
    (again,) = inbound.requests
    assert (again.after, again.upto) == (200, 399)
    inbound.requests.clear()
    refetched = [local(s) for s in range(201, 400)]
    out = inbound.on_recovered(again.rid, refetched[:100], False, 300, False)
    assert [e.sequence for e in out] == list(range(201, 301))
    inbound.on_handled(inbound.delivered_counts())
    (rest,) = inbound.requests
    out = inbound.on_recovered(rest.rid, refetched[100:], True, 399, False)
    assert [e.sequence for e in out] == list(range(301, 400))
    # Dropping for room is no loss: the counters still add up.
    stats = (inbound.gaps, inbound.recovered, inbound.unrecovered, inbound.gaps_open())
    assert stats == (1, 1, 0, 0)
    assert inbound.duplicates == 0
    assert inbound.watermarks() == {"a": 399}


def test_frames_dropped_while_the_sync_reply_is_awaited_are_fetched_after_it() -> None:
    inbound = synced(200)
    frame(inbound, 1, 1, 0)
    inbound.set_patterns(["user.*", "tool.*"], 0.0)  # a new round: frames held
    for seq in range(2, 402):
        frame(inbound, seq, seq, seq - 1)
    assert inbound.cut == 400 - 199
    assert inbound.requests == []
    assert inbound.on_sync("a", 1, 1, 401, 0.0) == []
    (backfill,) = inbound.requests  # the new prefix's backfill first
    assert (backfill.after, backfill.upto, backfill.prefixes) == (1, 401, ("tool.",))
    inbound.requests.clear()
    out = inbound.on_recovered(backfill.rid, [], True, 401, False)
    # Its page of 50 needed room: 50 more held events went.  What is held
    # below the dropped range is delivered.
    assert inbound.cut == 400 - 199 + 50
    assert [e.sequence for e in out] == list(range(2, 151))
    inbound.on_handled(inbound.delivered_counts())
    (again,) = inbound.requests
    assert (again.after, again.upto, again.prefixes) == (150, 401, ("tool.", "user."))
    assert inbound.gaps == 1  # the backfill; dropping for room is no gap


def test_held_events_dropped_for_room_and_no_longer_held_count_as_a_loss() -> None:
    inbound = synced(20)
    frame(inbound, 1, 1, 0)
    frame(inbound, 3, 3, 2)  # 2 lost
    (request,) = inbound.requests
    inbound.requests.clear()
    for seq in range(4, 40):
        frame(inbound, seq, seq, seq - 1)
    assert inbound.cut > 0
    inbound.on_recovered(request.rid, [local(2)], True, 2, False)
    inbound.on_handled(inbound.delivered_counts())
    (again,) = inbound.requests  # the dropped range
    inbound.on_recovered(again.rid, [], True, again.upto, True)  # the origin lost it
    stats = (inbound.gaps, inbound.recovered, inbound.unrecovered, inbound.gaps_open())
    assert stats == (2, 1, 1, 0)  # counted, never silent


def test_without_a_window_nothing_is_paced() -> None:
    inbound = Inbound("b", dedupe=1000)
    inbound.set_patterns(["user.*"], 0.0)
    inbound.on_sync("a", 1, 1, 1, 0.0)
    frame(inbound, 1, 1, 0)
    frame(inbound, 100_001, 100_001, 100_000)
    (request,) = inbound.requests
    assert request.limit == 0  # the origin's own limit


# -- two node buses ---------------------------------------------------------------------------


BACKLOG = 3000
WINDOW = 200


class Gated:
    """A handler that handles nothing until ``gate`` opens, then records the events' data."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.got: list[int] = []
        self.done = threading.Event()  # set at the event whose data is BACKLOG

    def __call__(self, event: Event) -> None:
        self.gate.wait(WAIT)
        self.got.append(event.data)
        if event.data == BACKLOG:
            self.done.set()


def test_a_restarted_receiver_far_behind_drops_nothing_at_a_default_subscription(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    endpoint = f"ipc://{tmp_path}/a.sock"
    fast = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}
    a = nodes("a", listen=endpoint, persistent=True, **fast)
    b = nodes("b", peers=(endpoint,), persistent=True, credit_window=WINDOW, **fast)
    b.subscribe("job.*", lambda _: None)
    assert b.wait_for_peers(["a"], WAIT)
    a.publish("job.run", 0).get(timeout=WAIT)
    assert b.node is not None
    assert b.node.wait(lambda s: s.events_delivered >= 1, WAIT)
    b.close(WAIT)  # its watermark is saved: it comes back for what it missed
    futures = a.publish_many([Event(event_type="job.run", data=n) for n in range(1, BACKLOG + 1)])
    futures[-1].get(timeout=WAIT)

    handler = Gated()

    b = nodes("b", peers=(endpoint,), persistent=True, credit_window=WINDOW, **fast)
    assert b.node is not None
    sub = b.subscribe("job.*", handler, capacity=WINDOW)  # DROP_OLDEST, the default
    assert b.node.wait(lambda s: s.events_recovered >= WINDOW, WAIT)
    # Everything the bridge injected so far is routed once this is.
    b.publish("marker", None).get(timeout=WAIT)
    stats = sub.statistics()
    assert stats.dropped == 0
    assert stats.queued + stats.in_flight <= WINDOW
    assert b.node.statistics().events_delivered <= WINDOW
    handler.gate.set()
    assert handler.done.wait(WAIT)
    assert handler.got == list(range(1, BACKLOG + 1))  # every one, in order, once
    assert sub.statistics().dropped == 0
    bridge = b.node.statistics()
    assert bridge.events_recovered == BACKLOG  # nothing fetched twice
    assert bridge.gaps_unrecovered == 0
    assert bridge.gaps == bridge.gaps_recovered


BATCH = 50  # the origin's frames: a subscription needs the window plus one


def test_a_restarted_origins_first_burst_drops_nothing_at_a_default_subscription(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    """The origin learns the receiver's window only from its first ``CREDIT`` after the
    restart; until then it sends one run (``credit.SendQueue.pending``)."""
    endpoint = f"ipc://{tmp_path}/a.sock"
    fast = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}
    origin = {"listen": endpoint, "persistent": True, "batch_size": BATCH, **fast}
    a = nodes("a", **origin)
    b = nodes("b", peers=(endpoint,), credit_window=WINDOW, **fast)
    handler = Gated()

    sub = b.subscribe("job.*", handler, capacity=WINDOW + BATCH)  # DROP_OLDEST, the default
    assert b.wait_for_peers(["a"], WAIT)
    a.publish("job.run", 0).get(timeout=WAIT)
    assert b.node is not None
    assert b.node.wait(lambda s: s.events_delivered >= 1, WAIT)
    a.close(WAIT)
    a = nodes("a", **origin)  # the same journal and endpoint: a new epoch
    futures = a.publish_many([Event(event_type="job.run", data=n) for n in range(1, BACKLOG + 1)])
    futures[-1].get(timeout=WAIT)
    assert b.node.wait(lambda s: s.events_delivered >= WINDOW, WAIT)
    b.publish("marker", None).get(timeout=WAIT)  # what the bridge injected so far is routed
    stats = sub.statistics()
    assert stats.dropped == 0
    assert stats.queued + stats.in_flight <= WINDOW + BATCH
    handler.gate.set()
    assert handler.done.wait(WAIT)
    assert handler.got == list(range(BACKLOG + 1))  # every one, in order, once
    assert sub.statistics().dropped == 0


def test_a_subscriber_that_never_grants_holds_publishers_only_until_heartbeat_timeout(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    """A prefix subscribed on the stream by no receiver that grants (a raw ZeroMQ SUB
    here, or a node that died before its first ``CREDIT``) gets one run in flight,
    then, ``heartbeat_timeout`` later, no limit: the publishers behind it go on."""
    endpoint = f"ipc://{tmp_path}/a.sock"
    fast = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}
    a = nodes("a", listen=endpoint, send_queue=100, batch_size=10, **fast)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.connect(endpoint + ".pub")
    sub.setsockopt(zmq.SUBSCRIBE, b"t.")
    got: list[object] = []
    try:
        # The subscription reaches a's XPUB in its own time: probe until one arrives.
        while not sub.poll(100):
            a.publish("t.probe", -1).get(timeout=WAIT)
        probes = len(wire.decode_stream(sub.recv_multipart(), 1 << 24).events)  # type: ignore[union-attr]
        # Ten times the send queue: held past it, publishers wait for room
        # (up to block_timeout, 10 s) and would fail if the hold never ended.
        for first in range(0, 1000, 100):
            batch = [Event(event_type="t.x", data=n) for n in range(first, first + 100)]
            futures = a.publish_many(batch)
        futures[-1].get(timeout=WAIT)
        while len(got) < 1000:
            assert sub.poll(int(WAIT * 1000)), f"{len(got)} of 1000 arrived"
            frame = wire.decode_stream(sub.recv_multipart(), 1 << 24)
            assert isinstance(frame, wire.DataFrame)
            got += [e.data for e in frame.events if e.event_type == "t.x"]
    finally:
        sub.close(linger=0)
        context.term()
    assert probes >= 1
    assert got == list(range(1000))
