"""``RouterActor`` driven through its inbox: sequencing, routing, BLOCK marks, figures.

The router runs on a real one-thread dispatcher; the subscriber mailboxes and
recorders are unbound mailboxes that the test reads itself (nothing runs
their handlers).  A ``Barrier`` through the router's FIFO inbox is the
synchronisation point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from actors import BackpressureError, Event
from actors._core.backpressure import BlockGuard
from actors._core.messages import (
    Barrier,
    DeadLetter,
    DeadLettered,
    Flush,
    GetDeadLetters,
    GetRouterFigures,
    Publish,
    PublishBatch,
    Record,
    RouterFigures,
    Subscribe,
    Unsubscribe,
)
from actors._core.router import RouterActor
from actors._core.routes import Route
from actors._core.wiring import start_actor
from actors._model.config import OverflowStrategy
from actors._runtime.dispatcher import Dispatcher, FifoMailbox
from actors._runtime.future import BusFuture
from actors._runtime.mailbox import EventMailbox
from tests._support import WAIT


class Rig:
    """A started router with one recorder, and helpers to talk to it."""

    def __init__(self) -> None:
        self.dispatcher = Dispatcher(1, name="router-test")
        self.recorder = FifoMailbox()
        self.guard = BlockGuard()
        self.router = RouterActor(
            dispatcher=self.dispatcher,
            capacity=1024,
            origin="here",
            first_sequence=5,
            recorders=[self.recorder],
            guard=self.guard,
        )
        start_actor(self.router)
        self.inbox = self.router.actor_inbox

    def publish(self, event_type: str, data: Any = None) -> BusFuture[Event]:
        future: BusFuture[Event] = BusFuture()
        self.inbox.put(
            Publish(Event(event_type=event_type, data=data), future, time.perf_counter())
        )
        return future

    def subscribe(
        self, sub_id: str, pattern: str, overflow: OverflowStrategy, capacity: int = 10
    ) -> EventMailbox:
        mailbox = EventMailbox(capacity, overflow)
        strict = overflow in (OverflowStrategy.REJECT, OverflowStrategy.BLOCK)
        route = Route(sub_id, pattern, mailbox, None, strict)
        if overflow is OverflowStrategy.BLOCK:
            self.guard.add(route)
        self.inbox.put(Subscribe(route))
        return mailbox

    def barrier(self) -> None:
        done = threading.Event()
        self.inbox.put(Barrier(done.set))
        assert done.wait(WAIT)

    def figures(self) -> RouterFigures:
        future: BusFuture[RouterFigures] = BusFuture()
        self.inbox.put(GetRouterFigures(future))
        return future.get(WAIT)

    def close(self) -> None:
        self.router.actor_ref.stop(block=False).get(timeout=WAIT)
        self.dispatcher.shutdown(WAIT)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_sequences_start_where_told_and_carry_the_origin(rig: Rig) -> None:
    events = [rig.publish("a.b", i).get(WAIT) for i in range(3)]
    assert [e.sequence for e in events] == [5, 6, 7]
    assert {e.origin for e in events} == {"here"}
    rig.barrier()
    records = [m for m in rig.recorder.take(100) if type(m) is Record]
    assert [e.sequence for r in records for e in r.events] == [5, 6, 7]


def test_events_reach_only_matching_routes(rig: Rig) -> None:
    a = rig.subscribe("s-a", "a.*", OverflowStrategy.DROP_OLDEST)
    b = rig.subscribe("s-b", "b.**", OverflowStrategy.DROP_OLDEST)
    rig.publish("a.x", 1).get(WAIT)
    rig.publish("b.x.y", 2).get(WAIT)
    rig.publish("c", 3).get(WAIT)
    assert [e.data for e, _ in a.take_events(10)[0]] == [1]
    assert [e.data for e, _ in b.take_events(10)[0]] == [2]


def test_a_full_reject_route_fails_the_publish_and_takes_no_sequence(rig: Rig) -> None:
    rig.subscribe("s-r", "r.*", OverflowStrategy.REJECT, capacity=1)
    rig.publish("r.x", 1).get(WAIT)
    with pytest.raises(BackpressureError):
        rig.publish("r.x", 2).get(WAIT)
    rig.publish("other", 3).get(WAIT)
    rig.barrier()
    recorded = [e for m in rig.recorder.take(100) if type(m) is Record for e in m.events]
    assert 2 not in [e.data for e in recorded]
    assert [e.sequence for e in recorded] == list(range(5, 5 + len(recorded)))  # no gap
    figures = rig.figures()
    assert figures.published == len(recorded)
    assert figures.rejected == 1


def test_a_full_block_route_is_marked_and_freed_without_the_router_waiting(rig: Rig) -> None:
    mailbox = rig.subscribe("s-b", "b.*", OverflowStrategy.BLOCK, capacity=2)
    for i in range(3):  # the router never waits: the third goes over capacity
        rig.publish("b.x", i).get(WAIT)
    (gate,) = rig.guard.full
    assert gate.route.id == "s-b"
    assert not gate.room.is_set()
    assert rig.publish("other", 9).get(WAIT).data == 9  # others flow meanwhile
    batch, _ = mailbox.take_events(10)  # the subscriber's side frees room
    assert [e.data for e, _ in batch] == [0, 1, 2]
    assert gate.room.is_set()
    rig.barrier()  # RoomFreed has been handled
    assert rig.guard.full == ()


def test_unsubscribing_a_full_block_route_releases_its_gate(rig: Rig) -> None:
    rig.subscribe("s-b", "b.*", OverflowStrategy.BLOCK, capacity=1)
    rig.publish("b.x", 0).get(WAIT)
    (gate,) = rig.guard.full
    rig.inbox.put(Unsubscribe("s-b"))
    rig.barrier()
    assert gate.room.is_set()
    assert rig.guard.full == ()


def test_a_dead_letter_is_announced_and_kept(rig: Rig) -> None:
    notices = rig.subscribe("s-d", "$bus.deadletter", OverflowStrategy.DROP_OLDEST)
    failed = rig.publish("job.run", "x").get(WAIT)
    letter = DeadLetter("s-1", "job.*", failed, "RuntimeError", "boom", 1)
    rig.inbox.put(DeadLettered(letter))
    future: BusFuture[list[DeadLetter]] = BusFuture()
    rig.inbox.put(GetDeadLetters(future))
    (kept,) = future.get(WAIT)
    assert kept.event == failed
    assert kept.letter is not None
    assert kept.letter.causation_id == failed.id
    (announced,) = [e for e, _ in notices.take_events(10)[0]]
    assert announced.id == kept.letter.id
    assert rig.figures().dead_letters == 1


def test_flush_resolves_once_every_route_has_finished(rig: Rig) -> None:
    mailbox = rig.subscribe("s-a", "a.*", OverflowStrategy.DROP_OLDEST)
    rig.publish("a.x").get(WAIT)
    flushed: BusFuture[None] = BusFuture()
    rig.inbox.put(Flush(flushed))
    rig.barrier()
    for message in rig.recorder.take(100):  # the recorder's barrier, answered by hand
        if type(message) is Barrier:
            message.callback()
    assert not flushed.done()
    batch, _ = mailbox.take_events(10)
    mailbox.finished_by_owner += len(batch)
    mailbox.check_barriers()
    flushed.get(WAIT)


def test_a_burst_reaches_a_dropping_lane_whole_in_order_and_announced_once(rig: Rig) -> None:
    # The router may offer a turn's events to such a lane together: the lane
    # ends up as if offered one by one, each resolved publish has its event
    # queued, and crossing 80% is announced once, after the event that did it.
    mailbox = rig.subscribe("s-d", "d.*", OverflowStrategy.DROP_OLDEST, capacity=10)
    futures = [rig.publish("d.x", i) for i in range(25)]
    futures[0].get(WAIT)
    assert mailbox.accepted >= 1  # resolved: already in the lane
    events = [f.get(WAIT) for f in futures]
    assert mailbox.accepted == 25
    rig.barrier()
    assert [e.data for e, _ in mailbox.take_events(100)[0]] == list(range(15, 25))
    assert mailbox.dropped == 15
    recorded = [e for m in rig.recorder.take(100) if type(m) is Record for e in m.events]
    started = [e for e in recorded if e.event_type == "$bus.backpressure.started"]
    assert len(started) == 1
    announced = started[0].data
    assert isinstance(announced, dict)
    assert announced["subscription"] == "s-d"
    sequences = [e.sequence or 0 for e in events]
    assert (started[0].sequence or 0) > sequences[7]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 25


class _Recording(EventMailbox):
    """A lane that notes how many events each ``offer_many`` brought."""

    def __init__(self, capacity: int, overflow: OverflowStrategy) -> None:
        super().__init__(capacity, overflow)
        self.runs: list[int] = []

    def offer_many(self, items: list[Any]) -> int:
        self.runs.append(len(items))
        return super().offer_many(items)


def test_a_long_batch_is_offered_in_runs_of_at_most_256(rig: Rig) -> None:
    # However large a publish_many, a lane's pending events stay few: the
    # router offers them every 256 events of the batch.
    lane = _Recording(10, OverflowStrategy.DROP_OLDEST)
    rig.inbox.put(Subscribe(Route("s-l", "l.*", lane, None, False)))
    events = [Event(event_type="l.x", data=i) for i in range(1000)]
    futures: list[BusFuture[Event] | None] = [BusFuture() for _ in events]
    rig.inbox.put(PublishBatch(events, futures, time.perf_counter()))
    rig.barrier()
    assert sum(lane.runs) == 1000
    assert max(lane.runs) <= 256
    assert [e.data for e, _ in lane.take_events(100)[0]] == list(range(990, 1000))
    assert lane.dropped == 990


def _hold(rig: Rig) -> threading.Event:
    """Hold the router inside a turn until the returned event is set."""
    release = threading.Event()
    holding = threading.Event()

    def wait() -> None:
        holding.set()
        release.wait(WAIT)

    rig.inbox.put(Barrier(wait))
    assert holding.wait(WAIT)
    return release


def test_many_short_batches_in_one_turn_are_offered_in_short_runs(rig: Rig) -> None:
    lane = _Recording(100_000, OverflowStrategy.DROP_NEWEST)
    rig.inbox.put(Subscribe(Route("s-l", "l.*", lane, None, False)))
    release = _hold(rig)
    for b in range(200):  # one router turn takes them all
        events = [Event(event_type="l.x", data=b * 255 + i) for i in range(255)]
        rig.inbox.put(PublishBatch(events, [None] * 255, time.perf_counter()))
    release.set()
    rig.barrier()
    assert sum(lane.runs) == 200 * 255
    assert max(lane.runs) < 2 * 256
    assert lane.dropped == 0


@pytest.mark.parametrize("raised", [RuntimeError, SystemExit, KeyboardInterrupt])
def test_publish_futures_resolve_in_sequence_order_and_a_raising_callback_stops_none(
    rig: Rig, raised: type[BaseException]
) -> None:
    # Whatever a callback raises on the router's thread, SystemExit and
    # KeyboardInterrupt included, the turn goes on and later publishes resolve.
    rig.subscribe("s-a", "a.*", OverflowStrategy.DROP_OLDEST)
    resolved: list[Any] = []

    def boom(_: BusFuture[Event]) -> None:
        raise raised("callback failed")

    release = _hold(rig)
    first = rig.publish("a.x", 1)  # routed to a lane: offered at the end of the turn
    first.add_done_callback(boom)
    first.add_done_callback(lambda f: resolved.append(f.get().data))
    second = rig.publish("nowhere", 2)  # no lane at all
    second.add_done_callback(lambda f: resolved.append(f.get().data))
    third = rig.publish("a.x", 3)
    third.add_done_callback(lambda f: resolved.append(f.get().data))
    release.set()
    assert third.get(WAIT).data == 3
    assert resolved == [1, 2, 3]
    assert rig.publish("a.x", 4).get(WAIT).data == 4


def test_a_refused_publish_resolves_after_the_accepted_ones_published_before_it(
    rig: Rig,
) -> None:
    rig.subscribe("s-a", "a.*", OverflowStrategy.DROP_OLDEST)
    rig.subscribe("s-r", "r.*", OverflowStrategy.REJECT, capacity=1)
    rig.publish("r.x", 0).get(WAIT)  # fills the REJECT lane
    outcomes: list[str] = []
    release = _hold(rig)
    accepted = rig.publish("a.x", 1)
    accepted.add_done_callback(lambda f: outcomes.append("accepted"))
    refused = rig.publish("r.x", 2)
    refused.add_done_callback(lambda f: outcomes.append(type(f.exception()).__name__))
    release.set()
    with pytest.raises(BackpressureError):
        refused.get(WAIT)
    assert outcomes == ["accepted", "BackpressureError"]
