"""A journal slower than its publishers holds them back; it never falls behind without bound.

Regression: the router sent the journal one ``Record`` per turn and went on,
so a journal that lagged (a slow disk, a flood) queued every event published
meanwhile: memory grew for as long as the flood lasted, and nothing ever
held a publisher back.  Now the router parks once ``JOURNAL_BACKLOG`` events
are unwritten, its mailbox fills, and ``publish`` waits for room
(``block_timeout``, then ``BackpressureError``); nothing accepted is lost.

The journal is a real RocksDB one whose writes are held at a gate, as a
stalled device would hold them.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors import BackpressureError, BusFuture, Event, EventBus, EventConfig, EventQuery
from actors._core.publishing import ROUTER_CAPACITY
from actors._runtime.backlog import JOURNAL_BACKLOG, Backlog
from actors._runtime.pool import Dispatcher
from tests._support import WAIT

# A router turn takes at most this many messages: the most it may route
# past the limit before it parks at the end of the turn.
TURN: int = inspect.signature(Dispatcher).parameters["throughput"].default


class HeldWrites:
    """Hold every journal write at a gate until ``release``; count the writes entered."""

    def __init__(self, bus: EventBus) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        storage = bus._journal.storage  # type: ignore[union-attr]  # noqa: SLF001 - the fault's seam
        self._append: Callable[..., None] = storage.append
        storage.append = self._held  # an instance attribute: this bus only

    def _held(self, records: Any, **kwargs: Any) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT * 4), "journal write held past the test"
        self._append(records, **kwargs)

    def release(self) -> None:
        self.gate.set()


def _flood(bus: EventBus, most: int) -> tuple[list[BusFuture[Event]], bool]:
    """Publish ``t.n`` events until one is refused (or ``most``); return the accepted ones."""
    accepted: list[BusFuture[Event]] = []
    for i in range(most):
        try:
            accepted.append(bus.publish("t.n", i))
        except BackpressureError:
            return accepted, True
    return accepted, False


def test_a_held_journal_holds_publishers_back_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j"
    bus = EventBus(EventConfig(persistence_path=path, block_timeout=0.2))
    held = HeldWrites(bus)
    try:
        bus.publish("t.first", 0)
        assert held.entered.wait(WAIT)
        most = JOURNAL_BACKLOG + ROUTER_CAPACITY + 4 * TURN + 10_000
        accepted, refused = _flood(bus, most)
        assert refused, f"{most} events queued behind a held journal without a refusal"
        # Unwritten: up to the limit, the turn that crossed it, the router's mailbox.
        assert JOURNAL_BACKLOG <= len(accepted) <= JOURNAL_BACKLOG + TURN + ROUTER_CAPACITY
        held.release()
        got = [f.get(timeout=WAIT).data for f in accepted]
        assert got == list(range(len(accepted)))
        bus.flush(timeout=WAIT)
        stored = bus.query(EventQuery(event_types=["t.*"]))
        assert [e.data for e in stored] == [0, *range(len(accepted))]
        assert [e.sequence for e in stored] == list(range(1, len(accepted) + 2))
    finally:
        held.release()
        bus.close(timeout=WAIT)


def test_a_close_behind_a_held_journal_writes_every_accepted_event(tmp_path: Path) -> None:
    path = tmp_path / "j"
    bus = EventBus(EventConfig(persistence_path=path, block_timeout=0.2))
    held = HeldWrites(bus)
    closed: list[Any] = []
    try:
        bus.publish("t.first", 0)
        assert held.entered.wait(WAIT)
        accepted, refused = _flood(bus, JOURNAL_BACKLOG + ROUTER_CAPACITY + 4 * TURN + 10_000)
        assert refused
        closing = threading.Thread(target=lambda: closed.append(bus.close(timeout=WAIT * 2)))
        closing.start()
        held.release()
        closing.join(WAIT * 3)
        assert not closing.is_alive()
        assert closed == [()]
    finally:
        held.release()
        bus.close(timeout=WAIT)
    with EventBus(EventConfig(persistence_path=path, read_only=True)) as again:
        assert len(again.query(EventQuery(event_types=["t.*"]))) == len(accepted) + 1


def test_a_done_callback_that_publishes_while_the_router_waits_for_the_journal_goes_through(
    tmp_path: Path,
) -> None:
    """A publish future resolves on the journal's thread and runs its callbacks there.

    Regression: a callback that published while the router waited for the
    journal waited for room in the router's full mailbox, holding the one
    thread that could make room: the bus stood still for ``block_timeout``
    and the callback's publish was refused.
    """
    bus = EventBus(EventConfig(persistence_path=tmp_path / "j", block_timeout=0.5))
    held = HeldWrites(bus)
    outcome: list[object] = []
    fired = threading.Event()

    def follow_up(_future: BusFuture[Event]) -> None:
        try:
            outcome.append(bus.publish("t.followup", -1))
        except BackpressureError as exc:
            outcome.append(exc)
        fired.set()

    try:
        bus.publish("t.first", 0).add_done_callback(follow_up)
        assert held.entered.wait(WAIT)
        accepted, refused = _flood(bus, JOURNAL_BACKLOG + ROUTER_CAPACITY + 4 * TURN + 10_000)
        assert refused  # the router waits for the journal now
        held.release()
        assert fired.wait(WAIT)
        assert isinstance(outcome[0], BusFuture), outcome
        assert outcome[0].get(timeout=WAIT).event_type == "t.followup"
        assert [f.get(timeout=WAIT).data for f in accepted] == list(range(len(accepted)))
    finally:
        held.release()
        bus.close(timeout=WAIT)


def test_a_done_callback_publishing_to_a_block_subscription_does_not_wait_for_the_routing(
    tmp_path: Path,
) -> None:
    """A publish a ``BLOCK`` pattern matches waits until the router routed it, except here.

    Regression: made on the journal's thread (a publish future's callback)
    while the router waited for that journal, the wait could only end at
    ``block_timeout``; the journal, and every persistent publish, stood
    still meanwhile.
    """
    bus = EventBus(EventConfig(persistence_path=tmp_path / "j", block_timeout=WAIT * 4))
    held = HeldWrites(bus)
    seen: list[int] = []
    bus.subscribe("b.*", lambda e: seen.append(e.data), overflow="block", capacity=100_000)
    fired = threading.Event()
    outcome: list[object] = []

    def follow_up(_future: BusFuture[Event]) -> None:
        outcome.append(bus.publish("b.followup", -1))
        fired.set()

    try:
        bus.publish("t.first", 0).add_done_callback(follow_up)
        assert held.entered.wait(WAIT)
        # Past the journal's limit: the router parks behind the held journal.
        backlog = bus._journal.backlog  # type: ignore[union-attr]  # noqa: SLF001 - the state under test
        futures = [bus.publish("t.n", i) for i in range(JOURNAL_BACKLOG + TURN)]
        held.release()
        assert fired.wait(WAIT), f"callback held; journal lag {backlog.lag()}"
        assert isinstance(outcome[0], BusFuture)
        assert outcome[0].get(timeout=WAIT).event_type == "b.followup"
        assert [f.get(timeout=WAIT).data for f in futures] == list(range(len(futures)))
        bus.flush(timeout=WAIT)
        assert seen == [-1]
    finally:
        held.release()
        bus.close(timeout=WAIT)


def test_past_the_limit_the_feeder_parks_and_resumes_under_half() -> None:
    backlog = Backlog(10)
    calls: list[str] = []

    def park() -> None:
        calls.append("park")

    def resume() -> None:
        calls.append("resume")

    backlog.add(10, park, resume)
    assert calls == []
    assert backlog.lag() == 10
    backlog.add(1, park, resume)
    assert calls == ["park"]
    backlog.taken(5)  # 6 unwritten: above half
    assert calls == ["park"]
    backlog.taken(1)  # 5: half
    assert calls == ["park", "resume"]
    backlog.taken(5)
    assert calls == ["park", "resume"]  # resumed once


def test_a_feeder_resumes_itself_when_the_taker_caught_up_before_it_armed() -> None:
    backlog = Backlog(10)
    calls: list[str] = []

    def park() -> None:
        calls.append("park")
        backlog.taken(11)  # the taker writes everything between the park and the arming

    backlog.add(11, park, lambda: calls.append("resume"))
    assert calls == ["park", "resume"]


def test_a_stopped_taker_resumes_a_parked_feeder_and_holds_no_one_back() -> None:
    backlog = Backlog(10)
    calls: list[str] = []
    backlog.add(11, lambda: calls.append("park"), lambda: calls.append("resume"))
    backlog.close()
    assert calls == ["park", "resume"]
    backlog.add(100, lambda: calls.append("park"), lambda: calls.append("resume"))
    assert calls == ["park", "resume"]
