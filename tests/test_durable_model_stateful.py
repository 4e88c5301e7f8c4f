"""A stateful model of durable (named) and catch-up subscriptions on a real journal.

A Hypothesis ``RuleBasedStateMachine`` drives one ``PersistentEventBus`` over a
RocksDB journal in a pytest ``tmp_path`` folder through random interleavings of
``publish`` / ``publish_many`` (types some names match and others do not),
``subscribe(..., durable=name)`` with a random pattern, start point and handler
(fine; failing once, then fine, with a retry; failing every attempt, so each
event becomes a dead letter), ``unsubscribe`` (at rest, or right behind a burst
it matches), catch-up subscriptions (``from_sequence``), close and reopen of the
folder with either durability mode and count retention at open, a close that
gives up on a handler held on a ``threading.Event``, and a name subscribed
again with its pattern or with another one.

What is checked is what docs/persistence.md "Durable subscriptions" promises:

- a name resumes at its checkpoint plus one, the checkpoint being the last
  event it handled (a dead letter counts as handled); without one, at
  ``from_sequence``, else live (its starting point saved at once); a
  ``from_sequence`` given with a checkpoint changes nothing; a name subscribed
  with another pattern resumes at the same sequence with that pattern;
- so after a flush every subscription has had exactly the matching events after
  its start point, once each (retries aside), in sequence order, except where
  retention at open removed them first ("it resumes at the first event still
  kept after its checkpoint");
- where the docs allow redelivery (a batch ``unsubscribe()`` cut, a batch
  ``close(timeout)`` gave up on), the next subscription of the name starts
  somewhere between the last checkpoint known saved and the last event handled,
  and never skips; a handler that returns after ``close`` returned saves
  nothing (the journal has stopped), so its event comes again;
- the figures: ``accepted == delivered + expired + dead_letters + dropped +
  queued + in_flight`` at every step; at rest, delivered / dead letters /
  errors as the handler's behaviour implies; the bus's ``metrics()`` the sum of
  its subscriptions, ended ones included; ``published`` (dead letters included)
  equal to ``journal_written``; ``dead_letters()`` read from the journal.

``test_durable_restarts.py``, ``test_durable_retention_attacks.py`` and
``test_durable_policies_edges.py`` pin single cases (kills, damage, backoff
edges); ``test_bus_model_stateful.py`` and ``test_journal_model_stateful.py``
model the bus and the journal without durable names.  What is added here is the
random interleaving of names, restarts, retention and handler outcomes.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from actors import Event, EventConfig, EventQuery, PersistentEventBus, Subscription
from actors._journal import actor as journal_actor
from tests._support import WAIT, wait_for
from tests.test_bus_model_stateful import FAST, at_rest, model_matches
from tests.test_journal_model_stateful import DURABILITIES, MAX_REOPENS

TYPES = ("job.start", "job.end", "tool.run", "tool.end", "misc.note")
PATTERNS = ("job.*", "tool.*", "*.end", "job.{start,end}", "t?ol.run", "**", "misc.*")
NAMES = ("alpha", "beta", "gamma")
GIVE_UP = 0.3  # close(timeout) while a handler is held: it gives up on that one for sure

Behaviour = Literal["ok", "flaky", "poison"]
Durability = Literal["async", "sync"]


class Probe:
    """A handler: notes every call; fails as its behaviour says; can hold one call."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.order: list[Event] = []  # first call of each event
        self.attempts: dict[uuid.UUID, int] = {}
        self.hold = False  # the next call waits for ``release``
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def __call__(self, event: Event) -> None:
        with self.lock:
            n = self.attempts.get(event.id, 0) + 1
            self.attempts[event.id] = n
            if n == 1:
                self.order.append(event)
            held, self.hold = self.hold, False
        if held:
            self.entered.set()
            try:
                assert self.release.wait(WAIT), "the test never released the handler"
            finally:
                self.returned.set()
        if self.behaviour == "poison" or (self.behaviour == "flaky" and n == 1):
            raise RuntimeError(f"{self.behaviour} {event.data}")

    def seen(self) -> tuple[list[Event], dict[uuid.UUID, int]]:
        with self.lock:
            return list(self.order), dict(self.attempts)


@dataclass
class Tracked:
    """One subscription: it owes every matching event after some ``c`` in [low, high]."""

    sub: Subscription
    probe: Probe
    pattern: str
    name: str | None  # its durable name; None for a plain catch-up subscription
    low: int
    high: int
    cut: int  # retention at open deleted every sequence up to this one
    retries: int
    sure: int = 0  # how many of its deliveries were checked at rest (checkpoint saved)
    ended: bool = False

    @property
    def attempts(self) -> int:
        return {"ok": 1, "flaky": 2, "poison": self.retries + 1}[self.probe.behaviour]


@dataclass
class Name:
    """What the journal holds for a durable name: its checkpoint is in [low, high]."""

    pattern: str
    low: int = 0
    high: int = 0
    saved: bool | None = False  # a checkpoint exists: yes, no, perhaps
    fallback: int = 1  # the from_sequence it started from without a checkpoint
    live: Tracked | None = None


handlers = st.tuples(
    st.sampled_from(["ok", "ok", "flaky", "poison"]),
    st.integers(0, 1),  # retries of a poison handler (a flaky one gets 1)
    st.sampled_from([0.0, 0.001]),  # retry_backoff of a flaky one: at once, or a parked retry
)
starts = st.one_of(st.none(), st.none(), st.integers(1, 60))


class DurableMachine(RuleBasedStateMachine):
    """One journal folder per run; ``events`` is every event published, in sequence order."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        # Retention at open only: when a later pass would run is a clock's business.
        monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 1e9)
        self.path = tempfile.mkdtemp(dir=root, prefix="d") + "/events"
        self.bus: PersistentEventBus | None = None
        self.events: list[Event] = []
        self.names: dict[str, Name] = {}
        self.tracked: list[Tracked] = []  # the subscriptions of the open bus
        self.cut = 0
        self.top: int | None = 0  # the last sequence handed out, when known
        self.published = 0  # events this test published on the open bus
        self.reopens = 0
        self.counter = 0

    # -- helpers ------------------------------------------------------------------------------

    def open(self, durability: Durability, max_events: int | None) -> None:
        if max_events is not None and self.top is not None:
            self.cut = max(self.cut, self.top - max_events)
        else:
            max_events = None
        self.bus = PersistentEventBus(
            EventConfig(
                persistence_path=self.path, durability=durability, max_events=max_events, threads=2
            )
        )
        self.tracked, self.published = [], 0
        if max_events is not None:  # retention at open kept the newest max_events
            oldest = self.bus.query(EventQuery(limit=1), timeout=WAIT)
            assert [e.sequence for e in oldest] in ([], [self.cut + 1]), (oldest, self.cut)

    def last(self) -> int:
        return (self.events[-1].sequence or 0) if self.events else 0

    def publish_types(self, types: list[str], many: bool) -> list[Event]:
        assert self.bus is not None
        sent = []
        for t in types:
            self.counter += 1
            sent.append(Event(event_type=t, data=self.counter))
        futures = self.bus.publish_many(sent) if many else [self.bus.publish(e) for e in sent]
        got = [f.get(WAIT) for f in futures]
        sequences = [e.sequence or 0 for e in got]
        assert sequences == sorted(sequences), sequences
        assert sequences[0] > self.last(), (sequences, self.last())
        self.events += got
        self.published += len(got)
        return got

    def settle(self) -> None:
        assert self.bus is not None
        self.bus.flush(WAIT)
        self.bus.flush(WAIT)  # the dead letters the first flush's handlers announced

    def owed(self, t: Tracked, c: int) -> list[Event]:
        return [
            e
            for e in self.events
            if (e.sequence or 0) > max(c, t.cut) and model_matches(t.pattern, e.event_type)
        ]

    def check_start(self, t: Tracked, got: list[Event], *, whole: bool) -> None:
        """``got`` is every owed event after some ``c`` in [low, high] (a prefix of it)."""
        points = {t.low} | {
            e.sequence or 0
            for e in self.events
            if t.low < (e.sequence or 0) <= t.high and model_matches(t.pattern, e.event_type)
        }
        ids = [e.id for e in got]
        for c in sorted(points):
            want = [e.id for e in self.owed(t, c)]
            if ids == (want if whole else want[: len(ids)]):
                return
        seqs = [e.sequence for e in got]
        want_seqs = [e.sequence for e in self.owed(t, t.low)]
        raise AssertionError(
            f"{t.name or 'catch-up'} {t.pattern!r} (start after {t.low}..{t.high}, cut "
            f"{t.cut}, ended={t.ended}) got {seqs}, owed from {t.low}: {want_seqs}"
        )

    def check_live(self, t: Tracked, *, journal: bool) -> None:
        """At rest: exactly what is owed, each tried as often as its behaviour says."""
        got, attempts = t.probe.seen()
        self.check_start(t, got, whole=True)
        assert [attempts[e.id] for e in got] == [t.attempts] * len(got), (t.name, attempts)
        s = t.sub.statistics()
        assert (s.queued, s.in_flight, s.dropped, s.expired) == (0, 0, 0, 0), s
        poison = t.probe.behaviour == "poison"
        assert (s.delivered, s.dead_letters) == ((0, len(got)) if poison else (len(got), 0)), s
        assert s.errors == len(got) * (t.attempts - (0 if poison else 1)), s
        assert s.accepted == s.delivered + s.dead_letters, s
        t.sure = len(got)
        if journal and poison:
            assert self.bus is not None
            letters = [d for d in self.bus.dead_letters() if d.subscription_id == t.sub.id]
            assert [d.event.id for d in letters] == [e.id for e in got], (t.name, letters)
            assert {(d.attempts, d.error_type) for d in letters} <= {(t.attempts, "RuntimeError")}

    def check(self) -> None:
        assert self.bus is not None
        self.settle()
        for t in self.tracked:
            if not t.ended:
                self.check_live(t, journal=True)
                continue
            got, _ = t.probe.seen()
            self.check_start(t, got, whole=False)
            assert wait_for(lambda: at_rest(t.sub.statistics())), t.sub.statistics()  # noqa: B023
        stats = [t.sub.statistics() for t in self.tracked]
        m = self.bus.metrics()
        dead = sum(s.dead_letters for s in stats)
        assert m.published == m.journal_written == self.published + dead, (m, self.published)
        assert m.dead_letters == dead, m
        assert m.delivered == sum(s.delivered for s in stats), m
        assert m.handler_errors == sum(s.errors for s in stats), m
        assert m.dropped == sum(s.dropped for s in stats), m
        assert (m.rejected, m.expired) == (0, 0), m
        live = {t.sub.id for t in self.tracked if not t.ended}
        assert m.subscriptions == len(live), (m.subscriptions, live)
        assert {s.id for s in m.per_subscription} == live
        assert {s.id for s in self.bus.subscriptions()} == live

    def subscribe(
        self, name: str | None, pattern: str, how: tuple[str, int, float], start: int | None
    ) -> Tracked:
        assert self.bus is not None
        behaviour, retries, backoff = how
        retries = {"ok": 0, "flaky": 1, "poison": retries}[behaviour]
        backoff = backoff if behaviour == "flaky" else 0.0
        probe = Probe(cast("Behaviour", behaviour))
        live_start = False
        if name is None:
            low = high = (start or 1) - 1
        else:
            n = self.names.setdefault(name, Name(pattern))
            assert n.live is None
            pattern = n.pattern
            if n.saved is None:  # perhaps no checkpoint: the same fallback either way
                start = n.fallback
                low, high = start - 1, n.high
            elif n.saved:  # a from_sequence given beside a checkpoint changes nothing
                low, high = n.low, n.high
            elif start is None:  # a new name without a starting point starts live
                low = high = n.low = n.high = self.last()
                n.saved, live_start = True, True
            else:
                low = high = start - 1
                n.fallback = start
        sub = self.bus.subscribe(
            pattern,
            probe,
            durable=name,
            from_sequence=start,
            retries=retries,
            retry_backoff=backoff,
        )
        assert sub.pattern == pattern
        assert sub.active
        t = Tracked(sub, probe, pattern, name, low, high, self.cut, retries)
        self.tracked.append(t)
        if name is not None:
            self.names[name].live = t
        if live_start:
            # Its starting point is saved once the router took the subscription (a
            # resubscribe racing that is pinned by the test at the end); the model
            # knows that starting point once the router took it.
            self.bus.flush(WAIT)
        return t

    def end(self, t: Tracked, *, exact: bool, saved_late: bool = True) -> None:
        """``t`` ended: what its name's checkpoint can be now.

        ``exact``: it ended at rest, every delivery checked.  Else its handled
        events past the last check may or may not be saved (``saved_late=False``:
        they cannot be, the journal had stopped before its handler returned).
        """
        t.ended = True
        if t.name is None:
            return
        n = self.names[t.name]
        n.live = None
        got, _ = t.probe.seen()
        sure = got if exact else got[: t.sure]
        if sure:
            n.saved = True
        low = (sure[-1].sequence or 0) if sure else t.low
        high = low if sure else t.high  # the checkpoint if nothing more was saved
        if saved_late and len(got) > len(sure):
            high = got[-1].sequence or 0
            if not n.saved:  # a checkpoint past ``fallback`` or none: both resume in range
                n.saved = None
                low = n.fallback - 1
        n.low, n.high = low, high

    def live_durables(self, behaviour: str | None = None) -> list[Tracked]:
        """The live durable subscriptions (with ``behaviour``: owed the next event too)."""
        return [
            t
            for t in self.tracked
            if not t.ended
            and t.name is not None
            and (behaviour is None or (behaviour == t.probe.behaviour and t.high <= self.last()))
        ]

    def close(self, *, settled: bool, timeout: float = WAIT) -> set[str]:
        """Close the bus; return the ids it gave up on."""
        assert self.bus is not None
        if settled:
            self.check()
            top = self.bus.query(EventQuery(descending=True, limit=1), timeout=WAIT)
            self.top = (top[0].sequence or 0) if top else self.top
        else:
            self.top = None  # dead letters announced during close: retention cannot be modelled
        bus, self.bus = self.bus, None
        gave_up = {s.id for s in bus.close(timeout=timeout)}
        for t in self.tracked:
            if not t.ended and t.sub.id not in gave_up:
                self.check_live(t, journal=False)  # close handled everything first
                self.end(t, exact=True)
            assert not t.sub.active
        return gave_up

    # -- rules --------------------------------------------------------------------------------

    @initialize(durability=st.sampled_from(DURABILITIES))
    def first_open(self, durability: Durability) -> None:
        self.open(durability, None)

    @precondition(lambda self: self.bus is not None)
    @rule(types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=12), many=st.booleans())
    def publish(self, types: list[str], many: bool) -> None:
        self.publish_types(types, many)

    @precondition(lambda self: self.bus is not None)
    @rule(data=st.data(), pattern=st.sampled_from(PATTERNS), how=handlers, start=starts)
    def subscribe_durable(
        self, data: st.DataObject, pattern: str, how: tuple[str, int, float], start: int | None
    ) -> None:
        """A new name, or a name again with its pattern (``from_sequence`` as drawn)."""
        free = [name for name in NAMES if name not in self.names or self.names[name].live is None]
        if free:
            self.subscribe(data.draw(st.sampled_from(free)), pattern, how, start)

    @precondition(lambda self: self.bus is not None and bool(self.names))
    @rule(data=st.data(), pattern=st.sampled_from(PATTERNS), how=handlers)
    def resubscribe_with_another_pattern(
        self, data: st.DataObject, pattern: str, how: tuple[str, int, float]
    ) -> None:
        """The checkpoint is a sequence: the name resumes there with the new pattern."""
        known = [name for name, n in self.names.items() if n.live is None]
        if known:
            name = data.draw(st.sampled_from(known))
            self.names[name].pattern = pattern
            self.subscribe(name, pattern, how, data.draw(starts))

    @precondition(
        lambda self: (
            self.bus is not None
            and sum(1 for t in self.tracked if t.name is None and not t.ended) < 2
        )
    )
    @rule(pattern=st.sampled_from(PATTERNS), how=handlers, start=st.integers(1, 60))
    def catch_up(self, pattern: str, how: tuple[str, int, float], start: int) -> None:
        self.subscribe(None, pattern, how, start)

    @precondition(lambda self: any(not t.ended for t in self.tracked))
    @rule(data=st.data())
    def unsubscribe_at_rest(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from([t for t in self.tracked if not t.ended]))
        self.check()
        t.sub.unsubscribe()
        self.end(t, exact=True)

    @precondition(lambda self: bool(self.live_durables()))
    @rule(data=st.data(), size=st.integers(1, 40), many=st.booleans())
    def unsubscribe_behind_a_burst(self, data: st.DataObject, size: int, many: bool) -> None:
        """A batch ``unsubscribe()`` cut: the checkpoint moves past what was handled only."""
        assert self.bus is not None
        t = data.draw(st.sampled_from(self.live_durables()))
        self.check()
        fitting = [x for x in TYPES if model_matches(t.pattern, x)]
        sent = [Event(event_type=data.draw(st.sampled_from(fitting)), data=0) for _ in range(size)]
        futures = self.bus.publish_many(sent) if many else [self.bus.publish(e) for e in sent]
        t.sub.unsubscribe()
        got = [f.get(WAIT) for f in futures]
        self.events += got
        self.published += len(got)
        assert not t.sub.active
        assert wait_for(lambda: at_rest(t.sub.statistics())), t.sub.statistics()
        self.end(t, exact=False)

    @precondition(lambda self: self.bus is not None)
    @rule()
    def flush(self) -> None:
        self.check()

    @precondition(lambda self: self.bus is not None and self.reopens < MAX_REOPENS)
    @rule(
        settled=st.booleans(),
        durability=st.sampled_from(DURABILITIES),
        max_events=st.sampled_from([None, None, 1, 4, 12]),
    )
    def close_and_reopen(
        self, settled: bool, durability: Durability, max_events: int | None
    ) -> None:
        """A clean close (flushed first, or straight behind the last publishes)."""
        self.reopens += 1
        assert self.close(settled=settled) == set(), "close gave up on a cheap handler"
        self.open(durability, max_events)

    @precondition(lambda self: self.reopens < MAX_REOPENS and bool(self.live_durables("ok")))
    @rule(data=st.data(), size=st.integers(1, 3), durability=st.sampled_from(DURABILITIES))
    def close_giving_up_on_a_held_handler(
        self, data: st.DataObject, size: int, durability: Durability
    ) -> None:
        """``close(timeout)`` gives up on a held handler, released only once it returned:
        that batch's checkpoint is never saved, so the name starts at it again."""
        assert self.bus is not None
        self.reopens += 1
        t = data.draw(st.sampled_from(self.live_durables("ok")))
        self.check()
        t.probe.hold = True
        fitting = [x for x in TYPES if model_matches(t.pattern, x)]
        self.publish_types([data.draw(st.sampled_from(fitting)) for _ in range(size)], True)
        assert t.probe.entered.wait(WAIT), "the held handler was never called"
        try:
            gave_up = self.close(settled=False, timeout=GIVE_UP)
        finally:
            t.probe.release.set()
        assert t.sub.id in gave_up, gave_up
        assert t.probe.returned.wait(WAIT)
        for other in self.tracked:
            if not other.ended:
                other.ended = True  # checked below, as a prefix of what it was owed
                got, _ = other.probe.seen()
                self.check_start(other, got, whole=False)
                other.ended = False
                self.end(other, exact=False, saved_late=other is not t)
        self.open(durability, None)

    # -- after every step -----------------------------------------------------------------------

    @invariant()
    def every_subscription_balances(self) -> None:
        for t in self.tracked:
            s = t.sub.statistics()
            placed = s.delivered + s.expired + s.dead_letters + s.dropped + s.queued + s.in_flight
            assert s.accepted == placed, s

    def teardown(self) -> None:
        for t in self.tracked:
            t.probe.release.set()
        if self.bus is not None:
            self.bus.close(timeout=WAIT)


MACHINE = settings(FAST, max_examples=30, stateful_step_count=30)


def test_durable_names_match_the_model_through_restarts_retention_and_handler_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Machine(DurableMachine):
        def __init__(self) -> None:
            super().__init__(tmp_path, monkeypatch)

    run_state_machine_as_test(Machine, settings=MACHINE)


# Regression: the starting point of a new durable name that starts live was saved
# through the router's inbox, and dropped once a newer subscription of the name took
# the name (before its load even reached the journal).  So a name subscribed again
# at once found no checkpoint, started live, and never got what was published in
# between.  The router now sends that save as it adds the route (``Core._start_saver``).
def test_a_new_live_name_resubscribed_at_once_still_gets_what_was_published_meanwhile(
    tmp_path: Path,
) -> None:
    """The machine's minimal case, which it avoids by flushing after a live start."""
    bus = PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "events"), threads=2))
    try:
        first, second = Probe("ok"), Probe("ok")
        sub = bus.subscribe("job.*", first, durable="alpha")  # new: starts live
        future = bus.publish("job.start", 1)  # published while the name exists
        sub.unsubscribe()  # before it handled it: the checkpoint stays before it
        bus.subscribe("job.*", second, durable="alpha")
        event = future.get(WAIT)
        bus.flush(WAIT)
        handled = [e.id for e in first.seen()[0] + second.seen()[0]]
        assert event.id in handled, "the name never got an event published while it existed"
    finally:
        bus.close(timeout=WAIT)
