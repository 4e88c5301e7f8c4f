"""A stateful model of the persistent journal: random interleavings against a reference list.

A Hypothesis ``RuleBasedStateMachine`` drives one real ``PersistentEventBus``
over a RocksDB journal in a pytest ``tmp_path`` folder through random
sequences of ``publish`` / ``publish_many`` (random types, sources,
correlation and causation ids, timestamps old, recent and in the future, out
of order; one thread or two at once), queries with random filters, ``replay``
(a handler publishing from inside it included), catch-up subscriptions,
``get_correlated`` of earlier sessions' traces, close and reopen of the same
folder with either durability mode, read-only opens, a close straight after
unanswered publishes, and retention by age and count (at open, and after
every journal turn).

The reference model is a plain list: every event whose publish future
resolved, minus what the documented retention removed (docs/persistence.md
"Retention": every event stamped before now - ``retention_days``, then all
but the newest ``max_events`` by sequence). After every step the whole
journal must read back as that list, sequences and all, and every publish must
take the next sequence after every acknowledged one, across reopens and
retention that emptied the journal (docs/persistence.md "Opening").

``test_query_differential.py`` pins one query / retention / replay at a time
on a fresh journal, ``test_persistence.py`` and ``test_retention_replay_edges.py``
targeted cases; what is added here is the random interleaving.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from actors import Event, EventConfig, EventQuery, JournalError, PersistentEventBus
from actors._journal import actor as journal_actor
from tests._support import WAIT, finished, in_background
from tests.test_query_differential import (
    CIDS,
    PATTERNS,
    SOURCES,
    TYPES,
    UNKNOWN_CID,
    describe,
    model_matches,
    model_query,
    same,
)

# -- the reference ---------------------------------------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
RETENTION_DAYS = 30.0
# Far from the retention cut-off on either side, so "now" moving during the run changes nothing.
ANCHORS = {
    "old": NOW - timedelta(days=400),
    "recent": NOW - timedelta(days=1),
    "future": NOW + timedelta(days=1),
}
MAX_REOPENS = 3
CAUSES = (uuid.UUID(int=7001), uuid.UUID(int=7002))


def retained(events: list[Event], days: float | None, max_events: int | None) -> list[Event]:
    """What documented retention keeps of ``events`` (in sequence order)."""
    if days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        events = [e for e in events if e.timestamp >= cutoff]
    if max_events is not None:
        events = events[-max_events:]
    return events


@dataclass(frozen=True)
class Session:
    """How the bus is opened: durability, retention, when retention runs, read-only."""

    durability: Literal["async", "sync"]
    retention_days: float | None
    max_events: int | None
    periodic: bool  # retention after every journal turn, not only at open
    read_only: bool

    @property
    def retains(self) -> bool:
        return not self.read_only and (
            self.retention_days is not None or self.max_events is not None
        )


DURABILITIES: tuple[Literal["async", "sync"], ...] = ("async", "sync")
sessions = st.builds(
    Session,
    durability=st.sampled_from(DURABILITIES),
    retention_days=st.sampled_from([None, None, RETENTION_DAYS]),
    max_events=st.sampled_from([None, None, 1, 3, 10]),
    periodic=st.booleans(),
    read_only=st.sampled_from([False, False, False, True]),
)


@dataclass(frozen=True)
class Spec:
    type_index: int
    cid_index: int | None
    source_index: int | None
    cause: int | None  # None; < len(CAUSES): a fixed id; else an acknowledged event's id
    age: str
    offset_us: int


specs = st.builds(
    Spec,
    st.integers(0, len(TYPES) - 1),
    st.one_of(st.none(), st.integers(0, len(CIDS) - 1)),
    st.one_of(st.none(), st.integers(0, len(SOURCES) - 1)),
    st.one_of(st.none(), st.integers(0, 40)),
    st.sampled_from(["old", "recent", "recent", "future"]),
    st.one_of(
        st.integers(0, 20).map(lambda s: s * 1_000_000),  # ties
        st.integers(0, 20_000_000),
    ),
)
batches = st.lists(specs, min_size=1, max_size=6)


@st.composite
def moments(draw: st.DrawFn) -> datetime | None:
    if draw(st.integers(0, 4)) == 0:
        return None
    anchor = ANCHORS[draw(st.sampled_from(sorted(ANCHORS)))]
    return anchor + timedelta(microseconds=draw(st.integers(-1_000_000, 21_000_000)))


@st.composite
def queries(draw: st.DrawFn) -> EventQuery:
    types: Any = draw(
        st.one_of(
            st.none(),
            st.sampled_from(PATTERNS),
            st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
        )
    )
    time_range = None
    if draw(st.booleans()):
        a, b = draw(moments()), draw(moments())
        if a is not None and b is not None and a > b:
            a, b = b, a
        time_range = (a, b)
    return EventQuery(
        event_types=types,
        time_range=time_range,
        correlation_id=draw(st.one_of(st.none(), st.sampled_from((*CIDS, UNKNOWN_CID)))),
        source=draw(st.one_of(st.none(), st.sampled_from((*SOURCES, "nobody")))),
        after_sequence=draw(st.one_of(st.none(), st.integers(0, 60))),
        limit=draw(st.one_of(st.none(), st.integers(0, 12))),
        descending=draw(st.booleans()),
    )


# -- the machine -----------------------------------------------------------------------------


class JournalMachine(RuleBasedStateMachine):
    """One journal folder per run; ``model`` is what the journal must hold."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.path = tempfile.mkdtemp(dir=root, prefix="m") + "/events"
        self.monkeypatch = monkeypatch
        self.bus: PersistentEventBus | None = None
        self.session = Session("async", None, None, False, False)
        self.model: list[Event] = []  # acknowledged, minus what retention removed
        self.acknowledged: list[Event] = []  # every acknowledged event, for causation ids
        self.session_events: list[Event] = []  # acknowledged since the bus opened
        self.next_sequence = 1
        self.counter = 0
        self.reopens = 0  # RocksDB open and close are the slow steps: bounded per run

    # -- helpers ------------------------------------------------------------------------------

    def open(self, session: Session) -> None:
        assert self.bus is None
        # Read by the journal actor when built: 0 runs retention after every turn,
        # a huge interval only at open.
        interval = 0.0 if session.periodic else 1e9
        self.monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", interval)
        self.bus = PersistentEventBus(
            EventConfig(
                persistence_path=self.path,
                durability=session.durability,
                retention_days=session.retention_days,
                max_events=session.max_events,
                read_only=session.read_only,
                threads=2,
            )
        )
        self.session = session
        self.session_events = []
        if session.retains:  # retention runs once at open
            self.model = retained(self.model, session.retention_days, session.max_events)

    def close(self) -> None:
        if self.bus is not None:
            bus, self.bus = self.bus, None
            bus.close(timeout=WAIT)

    def make(self, spec: Spec) -> Event:
        self.counter += 1
        cause: uuid.UUID | None = None
        if spec.cause is not None:
            if spec.cause < len(CAUSES):
                cause = CAUSES[spec.cause]
            elif self.acknowledged:
                cause = self.acknowledged[spec.cause % len(self.acknowledged)].id
        return Event(
            event_type=TYPES[spec.type_index],
            data={"n": self.counter},
            timestamp=ANCHORS[spec.age] + timedelta(microseconds=spec.offset_us),
            correlation_id=None if spec.cid_index is None else CIDS[spec.cid_index],
            causation_id=cause,
            source=None if spec.source_index is None else SOURCES[spec.source_index],
        )

    def acknowledge(self, sent: list[Event], got: list[Event]) -> None:
        """The futures resolved: each event took the next sequence, stored as sent."""
        want = list(range(self.next_sequence, self.next_sequence + len(sent)))
        assert [e.sequence for e in got] == want, (
            f"sequences {[e.sequence for e in got]}, expected {want} (acknowledged so far: "
            f"{self.next_sequence - 1})"
        )
        for s, g in zip(sent, got, strict=True):
            assert g.to_dict() | {"sequence": None, "origin": None} == s.to_dict() | {
                "sequence": None,
                "origin": None,
            }
        self.next_sequence += len(got)
        self.model += got
        self.acknowledged += got
        self.session_events += got
        if self.session.retains and self.session.periodic:
            # It ran at the end of the turn that wrote them, before any later read.
            self.model = retained(self.model, self.session.retention_days, self.session.max_events)

    def check(self, q: EventQuery) -> None:
        assert self.bus is not None
        got = self.bus.query(q, timeout=WAIT)
        want = model_query(self.model, q)
        assert same(got, want), f"query {q}\n got  {describe(got)}\n want {describe(want)}"

    @property
    def writable(self) -> bool:
        return self.bus is not None and not self.session.read_only

    @property
    def catch_up_is_exact(self) -> bool:
        # Periodic retention is held back while a catch-up is not yet live, and
        # when it resumes is not something the test can observe.
        return self.bus is not None and not (self.session.retains and self.session.periodic)

    # -- rules --------------------------------------------------------------------------------

    @initialize(session=sessions)
    def first_open(self, session: Session) -> None:
        self.open(replace(session, read_only=False))  # read-only needs a journal to exist

    @precondition(lambda self: self.writable)
    @rule(batch=batches)
    def publish(self, batch: list[Spec]) -> None:
        assert self.bus is not None
        sent = [self.make(s) for s in batch]
        futures = [self.bus.publish(e) for e in sent]  # pipelined: several in one turn
        self.acknowledge(sent, [f.get(WAIT) for f in futures])

    @precondition(lambda self: self.writable)
    @rule(batch=batches)
    def publish_many(self, batch: list[Spec]) -> None:
        assert self.bus is not None
        sent = [self.make(s) for s in batch]
        futures = self.bus.publish_many(sent)
        self.acknowledge(sent, [f.get(WAIT) for f in futures])

    @precondition(lambda self: self.writable)
    @rule(first=batches, second=batches)
    def publish_from_two_threads(self, first: list[Spec], second: list[Spec]) -> None:
        """Two publishers at once: one contiguous run of sequences, each thread's in its own
        publish order; the journal reads back in sequence order (timestamps interleave)."""
        bus = self.bus
        assert bus is not None
        sent = [[self.make(s) for s in first], [self.make(s) for s in second]]
        start = threading.Barrier(2, timeout=WAIT)

        def publisher(events: list[Event]) -> list[Event]:
            start.wait()
            futures = [bus.publish(e) for e in events]
            return [f.get(WAIT) for f in futures]

        runs = [in_background(partial(publisher, events)) for events in sent]
        results = [finished(thread, outcome, WAIT) for thread, outcome in runs]
        for events, result in zip(sent, results, strict=True):
            assert isinstance(result, list), result
            assert [e.id for e in result] == [e.id for e in events]
            sequences = [e.sequence or 0 for e in result]
            assert sequences == sorted(sequences)
        by_id = {e.id: e for e in sent[0] + sent[1]}
        got = sorted(results[0] + results[1], key=lambda e: e.sequence or 0)
        self.acknowledge([by_id[e.id] for e in got], got)

    @precondition(lambda self: self.bus is not None and self.session.read_only)
    @rule(batch=batches)
    def publish_read_only_is_refused(self, batch: list[Spec]) -> None:
        assert self.bus is not None
        sent = [self.make(s) for s in batch]
        with pytest.raises(JournalError, match="read-only"):
            self.bus.publish(sent[0])
        with pytest.raises(JournalError, match="read-only"):
            self.bus.publish_many(sent)

    @precondition(lambda self: self.bus is not None)
    @rule(qs=st.lists(queries(), min_size=1, max_size=4))
    def query(self, qs: list[EventQuery]) -> None:
        for q in qs:
            self.check(q)

    @precondition(lambda self: self.bus is not None)
    @rule(q=queries(), page_size=st.integers(1, 6))
    def replay(self, q: EventQuery, page_size: int) -> None:
        assert self.bus is not None
        seen: list[Event] = []
        count = self.bus.replay(q, seen.append, page_size=page_size)
        want = model_query(self.model, q)
        assert count == len(want)
        assert same(seen, want), f"replay {q}\n got  {describe(seen)}\n want {describe(want)}"

    @precondition(
        lambda self: self.writable and not (self.session.retains and self.session.periodic)
    )
    @rule(q=queries(), page_size=st.integers(1, 6), every=st.integers(1, 3))
    def replay_publishing_from_the_handler(self, q: EventQuery, page_size: int, every: int) -> None:
        """A publish from the handler inherits the replayed event's cid, takes its id as
        causation id, and is a new journaled event; the replayed ones are not journaled again."""
        assert self.bus is not None
        bus = self.bus
        # With ``descending`` (or a ``limit``) the query is read in one go, so the new
        # events cannot join the replay (paged, they would according to page edges).
        if q.limit is None and not q.descending:
            q = replace(q, descending=True)
        replayed: list[Event] = []
        futures: list[Any] = []

        def handler(event: Event) -> None:
            replayed.append(event)
            if len(replayed) % every == 0:
                self.counter += 1
                futures.append(bus.publish("tool.stop", {"n": self.counter, "r": event.sequence}))

        want = model_query(self.model, q)
        assert bus.replay(q, handler, page_size=page_size) == len(want)
        assert same(replayed, want)
        got = [f.get(WAIT) for f in futures]
        causes = replayed[every - 1 :: every]
        for new, cause in zip(got, causes, strict=True):
            assert new.causation_id == cause.id
            assert new.correlation_id == cause.correlation_id
        sent = [
            Event(
                event_type=e.event_type,
                data=e.data,
                id=e.id,
                timestamp=e.timestamp,
                correlation_id=e.correlation_id,
                causation_id=e.causation_id,
            )
            for e in got
        ]
        self.acknowledge(sent, got)

    @precondition(lambda self: self.bus is not None)
    @rule(index=st.integers(0, len(CIDS)))
    def get_correlated_of_an_earlier_session(self, index: int) -> None:
        """A correlation with no event since the bus opened comes from the journal: what
        retention kept of it, in sequence order. (One continued in this session: see
        the regression test at the end.)"""
        assert self.bus is not None
        cid = (*CIDS, UNKNOWN_CID)[index]
        if any(e.correlation_id == cid for e in self.session_events):
            return
        want = [e for e in self.model if e.correlation_id == cid]
        got = self.bus.get_correlated(cid, timeout=WAIT)
        assert same(got, want), f"get_correlated\n got  {describe(got)}\n want {describe(want)}"

    @precondition(lambda self: self.catch_up_is_exact)
    @rule(
        pattern=st.sampled_from(PATTERNS),
        start=st.integers(1, 60),
        live=st.lists(specs, max_size=3),
    )
    def catch_up(self, pattern: str, start: int, live: list[Spec]) -> None:
        """Stored matching events from ``start`` on, then live ones: once each, in order."""
        assert self.bus is not None
        seen: list[Event] = []
        subscription = self.bus.subscribe(pattern, seen.append, from_sequence=start)
        history = list(self.model)
        later: list[Event] = []
        if live and self.writable:
            sent = [self.make(s) for s in live]
            later = [f.get(WAIT) for f in self.bus.publish_many(sent)]
            self.acknowledge(sent, later)
        self.bus.flush(timeout=WAIT)
        subscription.unsubscribe()
        want = [
            e
            for e in history + later
            if (e.sequence or 0) >= start and model_matches(pattern, e.event_type)
        ]
        assert same(seen, want), (
            f"catch-up {pattern!r} from {start}\n got  {describe(seen)}\n want {describe(want)}"
        )

    @precondition(lambda self: self.reopens < MAX_REOPENS)
    @rule(session=sessions)
    def reopen(self, session: Session) -> None:
        """Close (if open) and open the same folder again: nothing acknowledged is lost."""
        self.reopens += 1
        self.close()
        self.open(session)
        self.check(EventQuery())
        self.check(EventQuery(descending=True, limit=2))

    @precondition(
        lambda self: (
            self.writable
            and self.reopens < MAX_REOPENS
            and not (self.session.retains and self.session.periodic)
        )
    )
    @rule(batch=batches, many=st.booleans(), session=sessions)
    def publish_then_close_at_once(self, batch: list[Spec], many: bool, session: Session) -> None:
        """``close()`` right behind unanswered publishes: each future resolves (it is then
        stored, with its sequence) or fails (then it is not); close drains first."""
        assert self.bus is not None
        sent = [self.make(s) for s in batch]
        futures = self.bus.publish_many(sent) if many else [self.bus.publish(e) for e in sent]
        self.reopens += 1
        self.close()
        self.acknowledge(sent, [f.get(WAIT) for f in futures])
        self.open(session)
        self.check(EventQuery())

    # -- after every step -----------------------------------------------------------------------

    @invariant()
    def journal_reads_back_as_the_model(self) -> None:
        if self.bus is not None:
            self.check(EventQuery())

    def teardown(self) -> None:
        self.close()


MACHINE = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_journal_matches_the_model_through_reopens_retention_and_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Machine(JournalMachine):
        def __init__(self) -> None:
            super().__init__(tmp_path, monkeypatch)

    run_state_machine_as_test(Machine, settings=MACHINE)


# Regression: get_correlated asks the correlation actor first, and takes a trace it
# holds as the whole correlation (``TraceStore.is_complete``): after a restart, the
# first event of an old correlation id started a fresh trace that looked complete, so
# the journal's earlier events of that id were never merged in.  A bus that reopens a
# journal holding events now marks every trace it starts as partial.
def test_get_correlated_after_a_restart_keeps_the_journaled_events_of_a_continued_trace(
    tmp_path: Path,
) -> None:
    """The minimal case of the machine above: one event before the restart, one after."""
    path = str(tmp_path / "events")
    cid = CIDS[0]
    bus = PersistentEventBus(EventConfig(persistence_path=path))
    before = bus.publish("user.login", 1, correlation_id=cid).get(WAIT)
    bus.close(timeout=WAIT)
    bus = PersistentEventBus(EventConfig(persistence_path=path))
    try:
        assert same(bus.get_correlated(cid, timeout=WAIT), [before])  # nothing new: the journal
        after = bus.publish("user.logout", 2, correlation_id=cid).get(WAIT)
        assert same(bus.query(EventQuery(correlation_id=cid)), [before, after])
        assert same(bus.get_correlated(cid, timeout=WAIT), [before, after])
    finally:
        bus.close(timeout=WAIT)
