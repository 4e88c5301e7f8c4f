"""``EventMailbox``: the bounded event lane, its overflow strategies and flush barriers.

A mailbox with no actor bound schedules nothing, so every test here runs on
one thread: the test plays both the router (``offer``) and the subscriber
(``take_events``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from actors._model.config import OverflowStrategy
from actors._runtime.mailbox import DROPPED, STARTED, EventMailbox


def _fill(mailbox: EventMailbox, n: int) -> list[int]:
    return [mailbox.offer(i) for i in range(n)]


def test_drop_oldest_keeps_the_newest_and_counts_drops() -> None:
    mailbox = EventMailbox(3, OverflowStrategy.DROP_OLDEST)
    flags = _fill(mailbox, 5)
    assert [f & DROPPED for f in flags] == [0, 0, 0, DROPPED, DROPPED]
    batch, _ = mailbox.take_events(10)
    assert batch == [2, 3, 4]
    assert mailbox.dropped == 2
    assert mailbox.accepted == 5


def test_drop_newest_keeps_the_oldest() -> None:
    mailbox = EventMailbox(3, OverflowStrategy.DROP_NEWEST)
    _fill(mailbox, 5)
    assert mailbox.take_events(10)[0] == [0, 1, 2]
    assert mailbox.dropped == 2


def test_block_never_drops_it_goes_over_capacity() -> None:
    mailbox = EventMailbox(2, OverflowStrategy.BLOCK)
    _fill(mailbox, 4)
    assert not mailbox.has_room()
    assert mailbox.queued == 4
    assert mailbox.dropped == 0
    assert mailbox.take_events(10)[0] == [0, 1, 2, 3]


def test_room_waiter_is_called_once_there_is_room() -> None:
    mailbox = EventMailbox(2, OverflowStrategy.BLOCK)
    _fill(mailbox, 4)
    calls: list[str] = []
    assert mailbox.wait_for_room(lambda: calls.append("room"))
    mailbox.take_events(1)  # 3 left: still full
    assert calls == []
    mailbox.take_events(2)  # 1 left: room
    assert calls == ["room"]
    mailbox.take_events(1)
    assert calls == ["room"]  # called once


def test_wait_for_room_says_so_when_there_is_room_already() -> None:
    mailbox = EventMailbox(2, OverflowStrategy.BLOCK)
    mailbox.offer(0)
    assert not mailbox.wait_for_room(lambda: None)


def test_backpressure_starts_at_80_and_is_relieved_under_20_percent() -> None:
    mailbox = EventMailbox(10, OverflowStrategy.DROP_OLDEST)
    flags = _fill(mailbox, 9)
    assert [i for i, f in enumerate(flags) if f & STARTED] == [7]  # the 8th event: 80%
    _, relieved = mailbox.take_events(6)  # 3 left: not under 20%
    assert not relieved
    _, relieved = mailbox.take_events(2)  # 1 left
    assert relieved


def test_a_barrier_fires_once_everything_accepted_before_it_is_finished() -> None:
    mailbox = EventMailbox(10, OverflowStrategy.DROP_OLDEST)
    _fill(mailbox, 3)
    fired: list[int] = []
    mailbox.add_barrier(lambda: fired.append(1))
    mailbox.offer(99)  # after the barrier: not waited for
    batch, _ = mailbox.take_events(2)
    mailbox.finished_by_owner += len(batch)
    mailbox.check_barriers()
    assert fired == []
    batch, _ = mailbox.take_events(1)
    mailbox.finished_by_owner += len(batch)
    mailbox.check_barriers()
    mailbox.check_barriers()
    assert fired == [1]


def test_drops_count_as_finished_for_barriers() -> None:
    mailbox = EventMailbox(1, OverflowStrategy.DROP_NEWEST)
    _fill(mailbox, 3)  # two dropped
    fired: list[int] = []
    mailbox.add_barrier(lambda: fired.append(1))
    batch, _ = mailbox.take_events(5)
    mailbox.finished_by_owner += len(batch)
    mailbox.check_barriers()
    assert fired == [1]


@pytest.mark.parametrize("overflow", [OverflowStrategy.DROP_NEWEST, OverflowStrategy.DROP_OLDEST])
def test_a_barrier_waits_for_the_events_before_it_whatever_is_dropped_after_it(
    overflow: OverflowStrategy,
) -> None:
    mailbox = EventMailbox(2, overflow)
    _fill(mailbox, 2)
    batch, _ = mailbox.take_events(1)  # event 0 in the handler, 1 queued
    fired: list[int] = []
    mailbox.add_barrier(lambda: fired.append(1))  # waits for 0 and 1
    for i in range(10):
        mailbox.offer(100 + i)  # after the barrier: dropped, the newest or the oldest
    assert mailbox.dropped == 9
    mailbox.add_barrier(lambda: fired.append(2))  # a second flush looks at the first again
    mailbox.check_barriers()
    assert fired == []  # event 0 is not finished
    mailbox.finished_by_owner += len(batch)
    mailbox.check_barriers()
    if overflow is OverflowStrategy.DROP_NEWEST:
        assert fired == []  # event 1 is still queued
    else:
        assert fired == [1]  # event 1 was dropped: nothing before the barrier is left
    batch, _ = mailbox.take_events(5)
    mailbox.finished_by_owner += len(batch)
    mailbox.check_barriers()
    assert fired == [1, 2]


class _RouterBetween(deque[Any]):
    """A lane whose next ``popleft`` lets ``router`` run right after it (the owner preempted)."""

    def __init__(self) -> None:
        super().__init__()
        self.router: Callable[[], None] | None = None

    def popleft(self) -> Any:
        item = super().popleft()
        router, self.router = self.router, None
        if router is not None:
            router()
        return item


@pytest.mark.parametrize("take", ["take_events", "clear_events"])
def test_a_barrier_never_passes_while_the_owner_is_taking_events(take: str) -> None:
    # The owner took "a" from the lane; before it counted it, the router
    # dropped the oldest events behind it (b and c) and a second flush
    # checked the barriers.  The first barrier (a and b) must not pass: "a"
    # is in the owner's hands, not finished.
    mailbox = EventMailbox(2, OverflowStrategy.DROP_OLDEST)
    lane = _RouterBetween()
    mailbox._events = lane  # noqa: SLF001 - the interleaving under test
    fired: list[str] = []
    mailbox.offer("a")
    mailbox.offer("b")
    mailbox.add_barrier(lambda: fired.append("first"))

    during: list[str] = []

    def router() -> None:
        for item in ("c", "d", "e"):
            mailbox.offer(item)  # b and c dropped as the oldest
        mailbox.add_barrier(lambda: fired.append("second"))
        during.extend(fired)  # what passed while "a" was in the owner's hands

    lane.router = router
    if take == "take_events":
        batch, _ = mailbox.take_events(1)
        assert batch == ["a"]
        assert fired == []
        mailbox.finished_by_owner += 1
        mailbox.check_barriers()
        assert fired == ["first"]
    else:
        assert mailbox.clear_events() == 3  # a, d, e
        assert fired == ["first", "second"]
    assert during == []
    assert (mailbox.popped, mailbox.taken) == (2, mailbox.finished_by_owner)


def test_clear_events_finishes_them_and_releases_the_room_waiter() -> None:
    mailbox = EventMailbox(1, OverflowStrategy.BLOCK)
    _fill(mailbox, 2)
    calls: list[str] = []
    mailbox.wait_for_room(lambda: calls.append("room"))
    fired: list[int] = []
    mailbox.add_barrier(lambda: fired.append(1))
    assert mailbox.clear_events() == 2
    assert calls == ["room"]
    assert fired == [1]
    assert mailbox.finished() == mailbox.accepted


def _lane(overflow: OverflowStrategy, queued: int) -> EventMailbox:
    """A lane of capacity 5 holding ``queued`` events, more than 5 if asked.

    A catch-up lane that just went live holds more than its capacity.
    """
    mailbox = EventMailbox(20, overflow)
    _fill(mailbox, queued)
    mailbox.capacity = 5
    return mailbox


def test_offer_many_keeps_and_counts_exactly_what_offers_one_by_one_would() -> None:
    # (queued before, offered together) around a capacity of 5: room for all,
    # room for some, none, more offered than the lane holds at all, and a
    # lane already over its capacity.
    cases = [(0, 3), (2, 3), (3, 4), (5, 2), (0, 8), (4, 12), (8, 3), (8, 12), (10, 0)]
    for overflow in (OverflowStrategy.DROP_OLDEST, OverflowStrategy.DROP_NEWEST):
        for queued, offered in cases:
            expected = _lane(overflow, queued)
            for i in range(queued, queued + offered):
                expected.offer(i)
            got = _lane(overflow, queued)
            got.offer_many(list(range(queued, queued + offered)))
            where = f"{overflow.name}, {queued} queued, {offered} offered"
            assert got.take_events(100)[0] == expected.take_events(100)[0], where
            assert (got.accepted, got.dropped) == (expected.accepted, expected.dropped), where


def test_offer_many_says_what_happened_once_for_the_whole_run() -> None:
    mailbox = EventMailbox(10, OverflowStrategy.DROP_OLDEST)
    assert mailbox.offer_many(list(range(7))) == 0
    assert mailbox.offer_many(list(range(2))) == STARTED  # 9 of 10: over 80%
    assert mailbox.offer_many(list(range(3))) == DROPPED  # 2 displaced; started already
    assert mailbox.dropped == 2
    mailbox.take_events(100)
    assert mailbox.offer_many([]) == 0
    assert mailbox.finished() == mailbox.dropped  # nothing handled yet, dropped ones finished


class _Shrinking(deque[int]):
    """A lane whose length, once read, is already out of date: the router
    dropped the oldest events (``DROP_OLDEST``) between the read and the takes."""

    def __len__(self) -> int:
        return super().__len__() + 3


def test_taking_events_tolerates_the_router_dropping_some_meanwhile() -> None:
    mailbox = EventMailbox(10, OverflowStrategy.DROP_OLDEST)
    mailbox._events = _Shrinking(range(5))  # noqa: SLF001 - the race, made to happen
    batch, _ = mailbox.take_events(100)
    assert batch == [0, 1, 2, 3, 4]


def test_clearing_events_tolerates_the_router_dropping_some_meanwhile() -> None:
    mailbox = EventMailbox(10, OverflowStrategy.DROP_OLDEST)
    mailbox._events = _Shrinking(range(5))  # noqa: SLF001 - the race, made to happen
    assert mailbox.clear_events() == 5
    assert mailbox.finished() == 5
