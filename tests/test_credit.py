"""The origin's side of flow control (``_cluster.credit``): credit, the queue, drops, dead peers.

Plain state: runs are built by a real ``Outbound`` and every figure is read
off the ``SendQueue`` itself; the processes are in ``test_credit_procs.py``.
"""

from __future__ import annotations

import threading

import pytest

from actors import BackpressureError, Event, EventBus, EventConfig
from actors._cluster.credit import MAX_WINDOW, SendQueue
from actors._cluster.outbound import Outbound, Run
from actors._cluster.wire import DataFrame, decode_stream
from actors._core.backpressure import Allowance, BlockGuard, Hold
from actors._core.publishing import Publisher
from actors._runtime.dispatcher import FifoMailbox
from actors._runtime.pool import Dispatcher
from tests._support import WAIT

EPOCH = 7


def runs(out: Outbound, kind: str, first: int, count: int) -> list[Run]:
    events = [
        Event(event_type=kind, data=i, sequence=i, origin="a") for i in range(first, first + count)
    ]
    return out.runs(events)


def outbound(batch: int = 1, *prefixes: bytes) -> Outbound:
    out = Outbound("a", epoch=EPOCH, batch_size=batch, ring_size=1000)
    for prefix in prefixes or (b"t.",):
        out.add_prefix(prefix)
    return out


def sequences(taken: list[Run]) -> list[int]:
    return [e.sequence or 0 for run in taken for e in run.events]


def test_a_receiver_gets_at_most_its_window_until_it_acknowledges() -> None:
    out = outbound()
    q = SendQueue(EPOCH, limit=100)
    q.on_credit("b", EPOCH, 0, 3, [b"t."], False, now=0.0)
    q.add(runs(out, "t.x", 1, 10))
    sent, dropped = q.take()
    assert sequences(sent) == [1, 2, 3]
    assert dropped == []
    assert q.stalled
    assert q.stalls == 1
    assert q.queued == 7
    assert q.left == 3  # what left the queue (the publishers' allowance counts it out)
    assert q.lagging() == ["b"]
    # Taking again while nothing changed sends nothing and is the same stall.
    assert q.take() == ([], [])
    assert q.stalls == 1
    # An acknowledgement of sequence 2 frees two events of credit.
    q.on_credit("b", EPOCH, 2, 3, [b"t."], False, now=0.1)
    sent, _ = q.take()
    assert sequences(sent) == [4, 5]
    assert q.stalls == 2
    # A grant about another incarnation of the origin acknowledges nothing.
    q.on_credit("b", EPOCH + 1, 10, 3, [b"t."], False, now=0.2)
    assert q.take() == ([], [])
    # An acknowledgement past what was sent counts up to what was sent (5).
    q.on_credit("b", EPOCH, 10, 3, [b"t."], False, now=0.3)
    assert q.receivers["b"].acked == 5
    sent, _ = q.take()
    assert sequences(sent) == [6, 7, 8]


def test_a_receiver_that_does_not_want_a_run_does_not_hold_it() -> None:
    out = outbound(1, b"t.", b"u.")
    q = SendQueue(EPOCH, limit=100)
    q.on_credit("b", EPOCH, 0, 1, [b"t."], False, now=0.0)
    q.add(runs(out, "u.x", 1, 5))
    sent, _ = q.take()
    assert sequences(sent) == [1, 2, 3, 4, 5]
    assert not q.stalled


def test_the_queue_keeps_order_behind_a_held_run() -> None:
    # b lags on t.; c wants only u.: u. events wait behind the held t. run
    # (one multicast stream: a receiver of both must see them in order).
    out = outbound(1, b"t.", b"u.")
    q = SendQueue(EPOCH, limit=100)
    q.on_credit("b", EPOCH, 0, 1, [b"t."], False, now=0.0)
    q.on_credit("c", EPOCH, 0, 100, [b"u.", b"t."], False, now=0.0)
    q.add(runs(out, "t.x", 1, 2))
    q.add(runs(out, "u.x", 3, 2))
    sent, _ = q.take()
    assert sequences(sent) == [1]
    assert q.sent_head(4) == 1
    q.on_credit("b", EPOCH, 1, 1, [b"t."], False, now=0.1)
    sent, _ = q.take()
    assert sequences(sent) == [2, 3, 4]
    assert q.sent_head(4) == 4


def test_a_run_bigger_than_the_window_goes_when_nothing_is_in_flight() -> None:
    out = outbound(100)
    q = SendQueue(EPOCH, limit=1000)
    q.on_credit("b", EPOCH, 0, 10, [b"t."], False, now=0.0)
    q.add(runs(out, "t.x", 1, 50) + runs(out, "t.x", 51, 1))
    sent, _ = q.take()
    assert sequences(sent) == list(range(1, 51))
    assert q.queued == 1


def test_a_dead_receiver_holds_no_one_back() -> None:
    out = outbound()
    q = SendQueue(EPOCH, limit=4)
    q.on_credit("b", EPOCH, 0, 2, [b"t."], False, now=0.0)
    q.add(runs(out, "t.x", 1, 6))
    q.take()
    assert q.full
    assert q.expire(now=0.5, timeout=1.0) == []
    assert q.expire(now=1.5, timeout=1.0) == ["b"]
    sent, _ = q.take()
    assert sequences(sent) == [3, 4, 5, 6]
    assert q.relieved
    assert q.receivers == {}


def test_a_receiver_that_asked_to_be_dropped_loses_runs_only_it_wants() -> None:
    out = outbound(1, b"t.", b"u.")
    q = SendQueue(EPOCH, limit=100)
    q.on_credit("b", EPOCH, 0, 2, [b"t.", b"u."], True, now=0.0)
    q.on_credit("c", EPOCH, 0, 100, [b"u."], False, now=0.0)
    q.add(runs(out, "t.x", 1, 4) + runs(out, "u.x", 5, 2))
    sent, dropped = q.take()
    # t.3 and t.4 only b wants: dropped for it; u. events c wants too: sent.
    assert sequences(sent) == [1, 2, 5, 6]
    assert [sequences([run]) for run, _ in dropped] == [[3], [4]]
    assert all([r.name for r in who] == ["b"] for _, who in dropped)
    assert q.receivers["b"].dropped == 2
    assert q.dropped == 2
    assert q.left == 6  # sent and dropped alike
    assert not q.stalled


def test_dropped_runs_break_no_chain() -> None:
    out = outbound()
    q = SendQueue(EPOCH, limit=100)
    q.on_credit("b", EPOCH, 0, 1, [b"t."], True, now=0.0)
    q.add(runs(out, "t.x", 1, 3))
    sent, dropped = q.take()
    assert len(dropped) == 2
    q.on_credit("b", EPOCH, 1, 1, [b"t."], True, now=0.1)
    q.add(runs(out, "t.x", 4, 1))
    sent += q.take()[0]
    frames = [decode_stream(out.build(run), 1 << 20) for run in sent]
    assert all(isinstance(f, DataFrame) for f in frames)
    # Built at send time: event 4's chain points at event 1, the last one sent.
    assert [dict(f.chains)[b"t."] for f in frames if isinstance(f, DataFrame)] == [0, 1]


def test_a_prefix_no_subscriber_announced_is_not_limited_and_empty_prefixes_forget_one() -> None:
    out = outbound(1, b"t.", b"u.")
    q = SendQueue(EPOCH, limit=100)
    q.on_credit("b", EPOCH, 0, 1, [b"t."], True, now=0.0)
    # u. has no known receiver and no subscription was announced for it: not held.
    q.add(runs(out, "u.x", 1, 3))
    assert sequences(q.take()[0]) == [1, 2, 3]
    q.on_credit("b", EPOCH, 0, 1, [], True, now=0.1)
    assert q.receivers == {}


def test_a_new_subscriber_gets_one_run_until_its_first_credit_which_counts_it() -> None:
    out = outbound(2, b"t.", b"u.")
    q = SendQueue(EPOCH, limit=100)
    q.expect(b"t.", now=0.0)  # a subscription arrived; its receiver's window is unknown
    q.add(runs(out, "t.x", 1, 6) + runs(out, "u.x", 7, 2))
    assert sequences(q.take()[0]) == [1, 2]  # one run, then it waits
    assert q.stalled
    assert q.take() == ([], [])
    # Its first CREDIT (window 3, nothing acknowledged) takes over the run in flight.
    q.on_credit("b", EPOCH, 0, 3, [b"t."], False, now=0.5)
    assert q.pending is None
    assert q.receivers["b"].in_flight == 2
    assert q.take() == ([], [])  # 2 + 2 > 3
    q.on_credit("b", EPOCH, 2, 3, [b"t."], False, now=0.6)
    assert sequences(q.take()[0]) == [3, 4]
    q.on_credit("b", EPOCH, 4, 3, [b"t."], False, now=0.7)
    assert sequences(q.take()[0]) == [5, 6, 7, 8]  # u. no one announced: not limited


def test_a_new_subscriber_that_never_grants_holds_the_queue_only_until_the_timeout() -> None:
    out = outbound(1)
    q = SendQueue(EPOCH, limit=100)
    q.on_credit("c", EPOCH, 0, 100, [b"u."], False, now=0.0)
    q.expect(b"t.", now=1.0)
    q.expect(b"u.", now=1.0)  # c holds u. already: nothing to wait for
    assert q.pending is not None
    assert q.pending.prefixes == {b"t."}
    q.add(runs(out, "t.x", 1, 3))
    assert sequences(q.take()[0]) == [1]
    q.on_credit("c", EPOCH, 0, 100, [b"u."], False, now=5.0)  # c lives; t. stays pending
    assert q.pending is not None
    assert q.expire(now=5.0, timeout=5.0) == []
    assert q.expire(now=6.5, timeout=5.0) == [""]  # named "" in the log's place
    assert q.pending is None
    assert sequences(q.take()[0]) == [2, 3]
    # A CREDIT from a known receiver that now holds the prefix ends the wait too.
    q.expect(b"v.", now=7.0)
    q.on_credit("c", EPOCH, 0, 100, [b"u.", b"v."], False, now=7.1)
    assert q.pending is None


@pytest.mark.parametrize("window", [0, -5, 1 << 40])
def test_a_window_is_clamped(window: int) -> None:
    q = SendQueue(EPOCH, limit=10)
    q.on_credit("b", EPOCH, 0, window, [b"t."], False, now=0.0)
    assert 1 <= q.receivers["b"].window <= MAX_WINDOW


def test_a_window_is_cut_to_what_the_origin_can_recover() -> None:
    # An origin without a journal recovers from its ring: no receiver may have
    # more in flight than the ring keeps, or a lost frame could not be fetched.
    out = outbound()
    q = SendQueue(EPOCH, limit=100, max_window=5)
    q.on_credit("b", EPOCH, 0, 1_000, [b"t."], False, now=0.0)
    assert q.receivers["b"].window == 5
    q.add(runs(out, "t.x", 1, 12))  # one event per run (the outbound helper's batch)
    sent, _ = q.take()
    assert sum(r.count for r in sent) == 5
    assert q.stalled


def test_take_all_empties_the_queue_whatever_the_credit() -> None:
    out = outbound()
    q = SendQueue(EPOCH, limit=2)
    q.on_credit("b", EPOCH, 0, 1, [b"t."], False, now=0.0)
    q.add(runs(out, "t.x", 1, 5))
    q.take()
    assert q.full
    assert sequences(q.take_all()) == [2, 3, 4, 5]
    assert q.queued == 0
    assert q.peak == 5
    assert q.left == 5
    q.skip(1)  # an event too large to send never joined it, and left
    assert q.left == 6


def test_a_hold_makes_publishers_of_the_events_it_wants_wait() -> None:
    guard = BlockGuard()
    hold = Hold("node a: send queue full", frozenset({"t."}))
    guard.set_holds((hold,))
    wanted = [Event(event_type="t.x")]
    other = [Event(event_type="u.x")]
    assert hold.wants(wanted[0])
    assert not hold.wants(other[0])
    assert guard.wait_for_room(other, timeout=0.0) is None
    assert guard.wait_for_room(wanted, timeout=0.0) is hold
    assert hold.refusal(0.5) == "node a: send queue full for 0.5s; event not published"
    hold.room.set()  # the bridge's queue drained
    assert guard.wait_for_room(wanted, timeout=0.0) is None
    guard.set_holds(())
    assert guard.holds == ()


def test_a_pacing_hold_lets_publishers_go_once_the_bridge_took_their_events() -> None:
    # Past its allowance, a publish of an event the queue would take waits
    # until the bridge took it from its mailbox (counted): nothing piles up
    # uncounted when the hold goes up.  Without an allowance every one paces.
    guard = BlockGuard()
    drained = threading.Event()
    pace = Hold("pacing", frozenset({"t."}), drained=drained)
    pace.room.set()
    guard.set_holds((pace,))
    wanted = [Event(event_type="u.x"), Event(event_type="t.x")]
    other = [Event(event_type="u.x")]
    assert guard.wait_for_room(wanted, timeout=0.0) is None
    assert guard.paces(wanted)
    assert not guard.paces(other)
    assert guard.may_hold()
    assert guard.wait_drained(other, timeout=None)  # never paced
    assert not guard.wait_drained(wanted, timeout=0.0)  # the bridge has not taken it yet
    drained.set()
    assert guard.wait_drained(wanted, timeout=0.0)
    guard.set_holds(())
    assert not guard.paces(wanted)
    assert not guard.may_hold()


def test_an_allowance_lets_publishes_go_unpaced_until_spent_and_counts_what_left() -> None:
    allowance = Allowance(3)
    pace = Hold("pacing", frozenset({"t."}), drained=threading.Event(), allowance=allowance)
    pace.room.set()
    guard = BlockGuard()
    guard.set_holds((pace,))
    two = [Event(event_type="t.a"), Event(event_type="u.b"), Event(event_type="t.c")]
    assert not guard.paces(two)  # 2 of the 3 events are the hold's: 2 in flight
    assert allowance.in_flight == 2
    assert not guard.may_hold()
    assert not guard.paces([Event(event_type="t.d")])  # 3: the allowance is spent
    assert guard.may_hold()
    assert guard.paces([Event(event_type="t.e")])  # past it: paced, and counted
    assert allowance.in_flight == 4
    guard.refund([Event(event_type="t.e")])  # that publish was refused: not in flight
    assert allowance.in_flight == 3
    allowance.release(3)  # the bridge sent them
    assert allowance.in_flight == 0
    assert not guard.paces(two)
    allowance.release(10)  # more left than was counted (sent before the allowance): no debt
    assert allowance.in_flight == 0
    assert not guard.paces([Event(event_type="t.f")] * 3)
    allowance.release(3)
    assert guard.paces([Event(event_type="t.g")] * 4)  # never fits: paced even when idle
    # The quick check of one publish counts only what fits, and only what the hold wants.
    allowance.release(4)
    assert guard.lets_through(Event(event_type="u.x"))
    passed = [guard.lets_through(Event(event_type="t.x")) for _ in range(4)]
    assert passed == [True, True, True, False]
    assert allowance.in_flight == 3
    spare = Allowance(3)
    guard.set_holds((Hold("full", frozenset({"t."}), allowance=spare),))  # room not set: held
    assert not guard.lets_through(Event(event_type="t.x"))
    assert spare.in_flight == 0


class Watched(threading.Event):
    """A bridge's ``drained`` event that says when a publisher starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


@pytest.mark.parametrize("many", [False, True])
def test_a_publish_past_the_allowance_returns_only_once_the_bridge_took_it(many: bool) -> None:
    # However the threads are scheduled: the bridge here never runs at all,
    # and the publisher stops at the allowance instead of piling up events.
    drained = Watched()
    allowance = Allowance(2)
    pace = Hold("pacing", frozenset({"t."}), drained=drained, allowance=allowance)
    pace.room.set()
    with EventBus(EventConfig(block_timeout=10 * WAIT)) as bus:
        bus.core.guard.set_holds((pace,))
        if many:
            bus.publish_many([Event(event_type="t.a"), Event(event_type="t.b")])
        else:
            bus.publish("t.a", 1)
            bus.publish("t.b", 2)
        bus.publish("u.x", 0).get(timeout=WAIT)  # not the hold's: never counted, never paced
        assert allowance.in_flight == 2
        assert not drained.waiting.is_set()
        returned = threading.Event()

        def third() -> None:
            if many:
                bus.publish_many([Event(event_type="t.c"), Event(event_type="u.y")])
            else:
                bus.publish("t.c", 3)
            returned.set()

        publisher = threading.Thread(target=third)
        publisher.start()
        assert drained.waiting.wait(WAIT)  # routed, and waiting for the bridge's take
        assert not returned.is_set()
        assert allowance.in_flight == 3
        drained.set()  # the bridge took it
        assert returned.wait(WAIT)
        publisher.join(WAIT)


def send(publisher: Publisher, events: list[Event]) -> None:
    """``publish_batch`` for several events, ``publish`` (its quick path) for one."""
    if len(events) > 1:
        publisher.publish_batch(events)
    else:
        publisher.publish(events[0], owned=True)


@pytest.mark.parametrize("many", [False, True])
def test_a_publish_the_router_refused_is_taken_off_the_allowance(many: bool) -> None:
    router = FifoMailbox(capacity=1)
    router.put("a message that nobody takes: the router's mailbox stays full")
    allowance = Allowance(10)
    pace = Hold("pacing", frozenset({"t."}), drained=threading.Event(), allowance=allowance)
    pace.room.set()
    guard = BlockGuard()
    guard.set_holds((pace,))
    dispatcher = Dispatcher(1, name="test")
    try:
        publisher = Publisher(
            router=router, guard=guard, block_timeout=0.0, bucket=None, dispatcher=dispatcher
        )
        events = [Event(event_type="t.a"), Event(event_type="t.b")]
        with pytest.raises(BackpressureError, match="router's mailbox stayed full"):
            send(publisher, events if many else events[:1])
        assert allowance.in_flight == 0  # refused: nothing of it is on its way
        assert publisher.counts() == (2 if many else 1, 0)
    finally:
        dispatcher.shutdown(WAIT)
