"""Fault injection on journal retention, replay/query ranges and journal ownership.

Real RocksDB in ``tmp_path``; real OS processes (``sys.executable``) for the
cross-process cases.  Promises checked come from docs/persistence.md
("Opening", "Retention", "Replay", "Catch-up", "Read-only"), docs/storage.md
("Retention", "Faults and locking") and SPEC sections 4 and 6.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors import (
    AsyncEventBus,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    JournalError,
    JournalLockedError,
    PersistentEventBus,
)
from actors._journal import actor as journal_actor
from actors._journal import repair
from tests._support import Gate, Recorder, publish_all, wait_for

WAIT = 30.0
ROOT = Path(__file__).resolve().parent.parent

# -- a child process of our own ------------------------------------------------------------

CHILD = r"""
import sys, threading
from actors import EventBus, EventConfig, EventQuery

def say(*parts):
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()

mode, path, *rest = sys.argv[1:]

def attempt(config):
    try:
        bus = EventBus(config)
    except Exception as exc:
        say("error", type(exc).__name__, str(exc).replace("\n", " "))
        return None
    return bus

if mode == "race-open":
    # Wait for the parent's "go", then try to take the journal; hold it until "close".
    sys.stdin.readline()
    bus = attempt(EventConfig(persistence_path=path, durability="sync"))
    if bus is not None:
        say("opened")
        sys.stdin.readline()
        bus.close()
        say("closed")
elif mode == "try":
    kind = rest[0]
    if kind == "repair":
        from actors._journal import repair
        try:
            report = repair(path)
        except Exception as exc:
            say("error", type(exc).__name__, str(exc).replace("\n", " "))
        else:
            say("repaired", report.lost)
    else:
        settings = {
            "plain": {},
            "truncate": {"recover": "truncate"},
            "retention": {"max_events": 1, "retention_days": 0.000001},
        }[kind]
        bus = attempt(EventConfig(persistence_path=path, **settings))
        if bus is not None:
            say("opened", len(bus.query(EventQuery())))
            bus.close()
elif mode == "retain-writer":
    # A sync writer whose retention runs after every journal turn.
    from actors._journal import actor as journal_actor
    journal_actor.RETENTION_INTERVAL = 0.0
    bus = EventBus(
        EventConfig(persistence_path=path, durability="sync", max_events=int(rest[0]))
    )
    say("opened")
    lock = threading.Lock()

    def loop(worker):
        i = 0
        while True:
            i += 1
            event = bus.publish("keep.e", {"w": worker, "i": i}).get(timeout=30)
            with lock:
                say("ack", event.sequence, event.id)

    workers = [threading.Thread(target=loop, args=(w,), daemon=True) for w in range(3)]
    for w in workers:
        w.start()
    threading.Event().wait()
else:
    raise SystemExit("unknown mode " + mode)
"""


class Proc:
    """A child running ``CHILD``; its stdout lines are read by a thread into a queue."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.err_path = tmp_path / f"proc-{uuid.uuid4().hex[:8]}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                cwd=ROOT,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout: float = WAIT) -> str:
        try:
            text = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"child said nothing for {timeout}s:\n{self.err_path.read_text()}")
        if text is None:
            self.proc.wait(timeout=WAIT)
            pytest.fail(f"child ended (rc={self.proc.returncode}):\n{self.err_path.read_text()}")
        self.seen.append(text)
        return text

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill9(self) -> list[str]:
        """SIGKILL; return every complete line it printed (seen or still queued)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT)
        rest: list[str] = []
        while True:
            text = self.lines.get(timeout=WAIT)
            if text is None:
                break
            rest.append(text)
        return self.seen + rest

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def spawn(*args: str) -> Proc:
        child = Proc(tmp_path, *args)
        started.append(child)
        return child

    yield spawn
    for child in started:
        child.close()


def ids(events: list[Event]) -> list[uuid.UUID]:
    return [e.id for e in events]


def seqs(events: list[Event]) -> list[int]:
    return [e.sequence or 0 for e in events]


NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)


# -- retention: counts, queries, replay, sequences -----------------------------------------


def test_max_events_at_open_query_replay_and_ranges_agree(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    stored = publish_all(bus, [Event(event_type=f"m.t{i % 3}", data=i) for i in range(60)])
    bus.close()
    bus = open_bus(max_events=10)
    kept = stored[-10:]
    assert ids(bus.query(EventQuery())) == ids(kept)
    got: list[Event] = []
    assert bus.replay(EventQuery(), got.append, page_size=3) == 10
    assert ids(got) == ids(kept)
    # Ranges across the cut: an after_sequence below the first survivor starts there.
    assert ids(bus.query(EventQuery(after_sequence=5))) == ids(kept)
    assert ids(bus.query(EventQuery(after_sequence=5, limit=2))) == ids(kept[:2])
    assert ids(bus.query(EventQuery(descending=True, limit=4))) == ids(kept[::-1][:4])
    assert ids(bus.query(EventQuery(after_sequence=55, descending=True))) == ids(
        [e for e in kept[::-1] if (e.sequence or 0) > 55]
    )
    # By type: the types survive in the registry, their trimmed events do not.
    t0 = [e for e in kept if e.event_type == "m.t0"]
    assert ids(bus.query(EventQuery(event_types=["m.t0"]))) == ids(t0)
    assert ids(bus.query(EventQuery(event_types=["m.t0"], descending=True, limit=1))) == ids(
        t0[-1:]
    )
    nxt = bus.publish("m.t0", "next").get(timeout=WAIT)
    assert nxt.sequence == (stored[-1].sequence or 0) + 1


def test_empty_and_past_the_end_ranges_return_nothing_and_replay_nothing(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    stored = publish_all(bus, [Event(event_type="r.e", data=i, timestamp=NOW) for i in range(5)])
    last = stored[-1].sequence or 0
    cid = uuid.uuid4()
    empty_queries = [
        EventQuery(after_sequence=last),
        EventQuery(after_sequence=last + 1000),
        EventQuery(after_sequence=2**64 + 7),
        EventQuery(after_sequence=last, descending=True, limit=3),
        EventQuery(after_sequence=2**64 + 7, event_types=["r.*"], descending=True),
        EventQuery(after_sequence=2**64 + 7, correlation_id=cid),
        EventQuery(limit=0),
        EventQuery(limit=0, descending=True),
        EventQuery(time_range=(NOW, NOW)),
        EventQuery(time_range=(None, NOW - timedelta(days=1))),
        EventQuery(time_range=(NOW + timedelta(days=1), None), event_types=["r.e"]),
        EventQuery(event_types=["nope.*"]),
        EventQuery(correlation_id=cid),
        EventQuery(source="nobody"),
    ]
    for q in empty_queries:
        assert bus.query(q) == [], q
        got: list[Event] = []
        assert bus.replay(q, got.append, page_size=2) == 0, q
        assert got == []
    # An inclusive start on the exact timestamp finds all; its exclusive end none.
    assert len(bus.query(EventQuery(time_range=(NOW, NOW + timedelta(microseconds=1))))) == 5


def test_replay_pages_exactly_on_the_page_boundary(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    stored = publish_all(bus, [Event(event_type="p.e", data=i) for i in range(12)])
    for page_size in (1, 3, 4, 6, 12, 13):
        got: list[Event] = []
        assert bus.replay(EventQuery(), got.append, page_size=page_size) == 12
        assert ids(got) == ids(stored)
        got = []
        after = stored[5].sequence
        assert bus.replay(EventQuery(after_sequence=after), got.append, page_size=page_size) == 6
        assert ids(got) == ids(stored[6:])


def test_retention_days_with_caller_timestamps_out_of_order(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    cid = uuid.uuid4()
    stamps = [NOW, OLD, NOW - timedelta(days=1), OLD, NOW + timedelta(days=3), OLD]
    events = [
        Event(
            event_type=f"o.{'a' if i % 2 else 'b'}",
            data=i,
            timestamp=ts,
            correlation_id=cid,
            source=f"s{i % 2}",
        )
        for i, ts in enumerate(stamps)
    ]
    stored = publish_all(bus, events)
    bus.close()
    # The newest event (by sequence) is an old one: retention deletes it too.
    bus = open_bus(retention_days=30)
    kept = [e for e in stored if e.timestamp > NOW - timedelta(days=30)]
    assert [e.data for e in kept] == [0, 2, 4]
    assert ids(bus.query(EventQuery())) == ids(kept)
    assert ids(bus.query(EventQuery(correlation_id=cid))) == ids(kept)
    assert ids(bus.query(EventQuery(descending=True, limit=1))) == ids(kept[-1:])
    window = (NOW - timedelta(days=2), NOW + timedelta(seconds=1))
    assert ids(bus.query(EventQuery(time_range=window))) == ids(kept[:2])
    assert ids(bus.query(EventQuery(time_range=window, event_types=["o.b"]))) == ids(kept[:2])
    assert ids(
        bus.query(EventQuery(time_range=(None, None), event_types=["o.*"], descending=True))
    ) == ids(kept[::-1])
    assert ids(bus.query(EventQuery(source="s0", correlation_id=cid, after_sequence=1))) == ids(
        kept[1:]
    )
    assert bus.query(EventQuery(event_types=["o.a"])) == []
    # The deleted newest sequence is never handed out again, however often it reopens.
    highest = stored[-1].sequence or 0
    assert (bus.publish("o.b", "after").get(timeout=WAIT).sequence or 0) == highest + 1
    bus.close()
    bus = open_bus(retention_days=30)
    assert (bus.publish("o.b", "again").get(timeout=WAIT).sequence or 0) == highest + 2


def test_periodic_retention_deleting_the_newest_event_keeps_its_sequence_spoken_for(
    open_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)
    bus = open_bus(retention_days=1)
    fresh = bus.publish("d.e", "fresh").get(timeout=WAIT)
    old = [bus.publish(Event(event_type="d.e", data=i, timestamp=OLD)) for i in range(3)]
    last = old[-1].get(timeout=WAIT)
    bus.flush(timeout=WAIT)  # the turn that wrote them ended: retention ran
    assert ids(bus.query(EventQuery())) == [fresh.id]
    assert ids(bus.query(EventQuery(descending=True, limit=5))) == [fresh.id]
    bus.close()
    for _ in range(2):  # reopened without retention: still no reuse
        bus = open_bus()
        assert ids(bus.query(EventQuery())) == [fresh.id]
        bus.close()
    bus = open_bus()
    assert (bus.publish("d.e", "next").get(timeout=WAIT).sequence or 0) == (last.sequence or 0) + 1


def test_age_and_count_retention_combined_then_reopen_continues(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    stamps = [OLD, NOW, NOW, OLD, NOW, NOW, NOW, OLD, NOW]
    stored = publish_all(
        bus, [Event(event_type="c.e", data=i, timestamp=t) for i, t in enumerate(stamps)]
    )
    bus.close()
    bus = open_bus(retention_days=10, max_events=3)
    young = [e for e in stored if e.timestamp == NOW]
    assert ids(bus.query(EventQuery())) == ids(young[-3:])
    more = publish_all(bus, [Event(event_type="c.e", data=f"n{i}") for i in range(4)])
    assert [e.sequence for e in more] == [(stored[-1].sequence or 0) + i for i in range(1, 5)]
    bus.close()
    bus = open_bus(max_events=3)
    assert ids(bus.query(EventQuery())) == ids(more[-3:])
    assert ids(bus.query(EventQuery(after_sequence=0, limit=100))) == ids(more[-3:])
    assert bus.publish("c.e").get(timeout=WAIT).sequence == (more[-1].sequence or 0) + 1


def test_periodic_count_retention_while_open_keeps_queries_and_correlation_consistent(
    open_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)
    bus = open_bus(max_events=20, max_traces=1)
    cid = uuid.uuid4()
    stored: list[Event] = []
    for round_ in range(5):
        stored += publish_all(
            bus,
            [Event(event_type="w.e", data=[round_, i], correlation_id=cid) for i in range(15)],
        )
        bus.flush(timeout=WAIT)
        kept = stored[-20:]
        assert ids(bus.query(EventQuery())) == ids(kept)
        assert ids(bus.query(EventQuery(correlation_id=cid, descending=True))) == ids(kept[::-1])
        assert ids(bus.query(EventQuery(event_types=["w.*"], limit=7))) == ids(kept[:7])
    bus.close()
    bus = open_bus()
    assert ids(bus.query(EventQuery())) == ids(stored[-20:])
    # Restarted: the trace comes from the journal, and only the survivors are there.
    assert ids(bus.get_correlated(cid)) == ids(stored[-20:])


# -- retention racing readers ----------------------------------------------------------------


# Regression: a catch-up still reading history lost live events (published after
# subscribe returned) that retention trimmed before it read on; SPEC 4 says every such
# event reaches the handler. Retention keeps them until the subscription is live.
def test_catch_up_in_history_loses_no_event_published_after_subscribe_returned(
    open_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)
    bus = open_bus(max_events=1000)
    publish_all(bus, [Event(event_type="h.e", data=i) for i in range(1000)])
    gate = Gate()
    seen = Recorder()

    def handler(event: Event) -> None:
        if event.data == 0:
            gate(event)
        seen(event)

    bus.subscribe("h.*", handler, from_sequence=1)
    assert gate.entered.wait(WAIT)  # still in its first history page (512 of 1000)
    live = publish_all(bus, [Event(event_type="h.e", data=f"live{i}") for i in range(1500)])
    bus.query(EventQuery(limit=1))  # a journal turn after those writes: retention has run
    gate.release.set()
    seen.wait_for(live[-1])
    got = seqs(seen.events)
    assert got == sorted(set(got)), "out of order or duplicated"
    missing = [e.sequence for e in live if e.sequence not in set(got)]
    assert not missing, f"{len(missing)} live event(s) never delivered, e.g. {missing[:3]}"


def stored(bus: EventBus) -> list[int]:
    return [e.sequence or 0 for e in bus.query(EventQuery())]


def test_retention_trims_again_once_the_catch_up_is_live_or_gone(
    open_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The floor a catch-up sets is lifted when it goes live, and when it is unsubscribed."""
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)
    bus = open_bus(max_events=100)
    publish_all(bus, [Event(event_type="h.e", data=i) for i in range(100)])
    for ending in ("live", "unsubscribed"):
        gate = Gate()
        seen = Recorder()

        def handler(event: Event, gate: Gate = gate, seen: Recorder = seen) -> None:
            if not gate.entered.is_set():
                gate(event)
            seen(event)

        sub = bus.subscribe("h.*", handler, from_sequence=1)
        assert gate.entered.wait(WAIT)
        live = publish_all(bus, [Event(event_type="h.e", data=f"live{i}") for i in range(300)])
        kept = stored(bus)  # a journal turn: retention ran with the floor in place
        assert {e.sequence for e in live} <= set(kept)
        assert len(kept) > 100
        if ending == "live":
            gate.release.set()
            seen.wait_for(live[-1])
            assert seen.events[-1].sequence == live[-1].sequence
            # It may have read them all from history before going live (the floor goes
            # then): flush waits for that.
            bus.flush(WAIT)
        else:
            sub.unsubscribe()
            gate.release.set()
        last = publish_all(bus, [Event(event_type="h.e", data="after")])[-1]
        # Released before this publish reached the journal: trimmed back to 100 at its turn.
        assert stored(bus) == list(range(last.sequence - 99, last.sequence + 1))
        if ending == "live":
            sub.unsubscribe()


def test_catch_up_and_replay_racing_count_retention_stay_ordered_without_duplicates(
    open_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)
    bus = open_bus(max_events=300)
    publish_all(bus, [Event(event_type="x.e", data=i) for i in range(2000)])
    published: list[Event] = []

    def publisher() -> None:  # 40 batches of 50, each trimmed back to 300 at its turn end
        for i in range(40):
            published.extend(
                publish_all(bus, [Event(event_type="x.e", data=f"p{i}-{k}") for k in range(50)])
            )

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(published) >= 300)
        seen = Recorder()
        bus.subscribe("x.*", seen, from_sequence=1)
        replayed: list[Event] = []
        bus.replay(EventQuery(event_types=["x.*"]), replayed.append, page_size=40)
    finally:
        thread.join(WAIT)
    assert not thread.is_alive()
    marker = bus.publish("x.e", "marker").get(timeout=WAIT)
    seen.wait_for(marker)
    for got in (seqs(seen.events), seqs(replayed)):
        assert got, "nothing read"
        assert all(a < b for a, b in itertools.pairwise(got)), "order/duplicates"
    assert seqs(seen.events)[-1] == marker.sequence


def test_durable_subscription_resumes_at_the_first_survivor_after_retention(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    seen = Recorder()
    first = publish_all(bus, [Event(event_type="j.e", data=i) for i in range(5)])
    bus.subscribe("j.*", seen, durable="worker", from_sequence=1)
    seen.wait_for(first[-1])
    bus.close()
    bus = open_bus()
    missed = publish_all(bus, [Event(event_type="j.e", data=f"m{i}") for i in range(30)])
    bus.close()
    bus = open_bus(max_events=10)  # 20 of the 30 it never handled are trimmed
    again = Recorder()
    bus.subscribe("j.*", again, durable="worker", from_sequence=1)
    tail = bus.publish("j.e", "tail").get(timeout=WAIT)
    again.wait_for(tail)
    assert ids(again.events) == ids([*missed[-10:], tail])


# -- ownership across processes ----------------------------------------------------------------


def test_every_kind_of_second_process_open_is_refused_and_the_owner_loses_nothing(
    journal: str, procs: Callable[..., Proc]
) -> None:
    with EventBus(EventConfig(persistence_path=journal, durability="sync")) as bus:
        before = publish_all(bus, [Event(event_type="own.e", data=i) for i in range(20)])
        for kind in ("plain", "truncate", "retention", "repair"):
            child = procs("try", journal, kind)
            words = child.line().split()
            assert words[:2] == ["error", "JournalLockedError"], (kind, words)
            assert f"pid {os.getpid()}" in " ".join(words), words
            assert child.proc.wait(timeout=WAIT) == 0
        assert not (Path(journal) / "lost").exists()
        after = bus.publish("own.e", "after").get(timeout=WAIT)
        assert ids(bus.query(EventQuery())) == ids([*before, after])
    with EventBus(EventConfig(persistence_path=journal)) as bus:
        assert ids(bus.query(EventQuery())) == ids([*before, after])


def test_in_process_readers_and_refused_repairs_do_not_release_the_owners_lock(
    journal: str, procs: Callable[..., Proc]
) -> None:
    with EventBus(EventConfig(persistence_path=journal, durability="sync")) as bus:
        bus.publish("lk.e", 1).get(timeout=WAIT)
        for _ in range(2):
            with EventBus(EventConfig(persistence_path=journal, read_only=True)) as reader:
                assert len(reader.query(EventQuery())) == 1
            with pytest.raises(JournalLockedError):
                repair(journal)
            with pytest.raises(JournalLockedError):
                EventBus(EventConfig(persistence_path=journal, recover="truncate"))
        child = procs("try", journal, "plain")
        assert child.line().split()[:2] == ["error", "JournalLockedError"]
        assert bus.publish("lk.e", 2).get(timeout=WAIT).sequence == 2


def test_processes_racing_to_create_one_journal_get_one_owner(
    journal: str, procs: Callable[..., Proc]
) -> None:
    racers = [procs("race-open", journal) for _ in range(4)]
    for racer in racers:
        racer.send("go")
    answers = [racer.line() for racer in racers]
    owners = [r for r, a in zip(racers, answers, strict=True) if a == "opened"]
    refused = [a for a in answers if a != "opened"]
    assert len(owners) == 1, answers
    assert all(a.split()[:2] == ["error", "JournalLockedError"] for a in refused), answers
    owners[0].send("close")
    assert owners[0].line() == "closed"
    with EventBus(EventConfig(persistence_path=journal)) as bus:
        assert bus.publish("made.e").get(timeout=WAIT).sequence == 1


def test_owner_killed_with_retention_running_reopens_with_every_kept_acknowledged_event(
    journal: str, procs: Callable[..., Proc]
) -> None:
    keep = 50
    child = procs("retain-writer", journal, str(keep))
    assert child.line() == "opened"
    while len([x for x in child.seen if x.startswith("ack ")]) < 600:
        child.line()
    lines = child.kill9()
    acked = {int(parts[1]): parts[2] for parts in (x.split() for x in lines) if parts[0] == "ack"}
    top = max(acked)
    with EventBus(EventConfig(persistence_path=journal)) as bus:
        on_disk = {e.sequence or 0: str(e.id) for e in bus.query(EventQuery())}
        last = max(on_disk)
        assert last >= top, f"the journal ends at {last}, {top} was acknowledged"
        # Retention keeps the newest `keep` stored by sequence (some stored
        # ones had not printed their ack yet): every acknowledged one among them.
        must_have = {s: i for s, i in acked.items() if s > last - keep}
        missing = {s for s, i in must_have.items() if on_disk.get(s) != i}
        assert not missing, f"acknowledged events lost: {sorted(missing)[:5]}"
        assert len(on_disk) <= keep + 3  # at most one turn's worth beyond the bound
        nxt = bus.publish("keep.e", "after").get(timeout=WAIT)
        assert (nxt.sequence or 0) > max(on_disk)
        assert (nxt.sequence or 0) > top
    # Reopened with its retention: the newest `keep` stay, the sequence goes on.
    with EventBus(EventConfig(persistence_path=journal, max_events=keep)) as bus:
        stored = bus.query(EventQuery())
        assert len(stored) == keep
        assert seqs(stored)[-1] == nxt.sequence
        assert bus.publish("keep.e").get(timeout=WAIT).sequence == (nxt.sequence or 0) + 1


def test_read_only_beside_a_live_writer_sees_its_snapshot_and_never_trims(
    journal: str, procs: Callable[..., Proc], tmp_path: Path
) -> None:
    child = procs("retain-writer", journal, "100000")
    assert child.line() == "opened"
    while len([x for x in child.seen if x.startswith("ack ")]) < 200:
        child.line()
    snapshot_floor = max(int(x.split()[1]) for x in child.seen if x.startswith("ack "))
    config = EventConfig(persistence_path=journal, read_only=True, max_events=1, retention_days=1)
    with EventBus(config) as reader:
        seen = seqs(reader.query(EventQuery()))
        # Everything acknowledged before the open, dense from 1, read-only and untrimmed.
        assert seen[:snapshot_floor] == list(range(1, snapshot_floor + 1))
        assert seen == list(range(1, len(seen) + 1))
        with pytest.raises(JournalError, match="read-only"):
            reader.publish("ro.e")
        got: list[Event] = []
        assert reader.replay(EventQuery(descending=True, limit=3), got.append) == 3
        assert seqs(got) == seen[::-1][:3]
    lines = child.kill9()
    acked = {int(p[1]): p[2] for p in (x.split() for x in lines) if p[0] == "ack"}
    with EventBus(EventConfig(persistence_path=journal)) as bus:
        on_disk = {e.sequence: str(e.id) for e in bus.query(EventQuery())}
        assert all(on_disk.get(s) == i for s, i in acked.items())
        assert min(on_disk) == 1  # the read-only bus deleted nothing


def test_read_only_open_of_a_journal_retention_emptied_reads_nothing_and_reuses_nothing(
    open_bus: Callable[..., EventBus], journal: str
) -> None:
    bus = open_bus()
    old = publish_all(bus, [Event(event_type="e.e", data=i, timestamp=OLD) for i in range(4)])
    bus.close()
    open_bus(retention_days=30).close()  # trims everything
    with EventBus(EventConfig(persistence_path=journal, read_only=True)) as reader:
        assert reader.query(EventQuery()) == []
        assert reader.replay(EventQuery(), lambda e: None) == 0
    bus = open_bus()
    assert (bus.publish("e.e").get(timeout=WAIT).sequence or 0) == (old[-1].sequence or 0) + 1


def test_replay_whose_history_is_trimmed_under_it_ends_cleanly_in_order(
    open_bus: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)
    bus = open_bus(max_events=100)
    stored = publish_all(bus, [Event(event_type="x.e", data=i) for i in range(100)])
    replayed: list[Event] = []

    def handler(event: Event) -> None:
        replayed.append(event)
        if len(replayed) == 1:
            # Published from the replay (a new live event each): the journal
            # trims every x.e the replay has not read yet.
            publish_all(bus, [Event(event_type="y.e", data=i) for i in range(150)])
            bus.query(EventQuery(limit=1))  # a journal turn after the writes

    assert bus.replay(EventQuery(event_types=["x.*"]), handler, page_size=10) == 10
    assert ids(replayed) == ids(stored[:10])
    assert bus.query(EventQuery(event_types=["x.*"])) == []
    assert len(bus.query(EventQuery())) == 100


def test_retention_by_age_handles_timestamps_before_the_epoch_and_extreme_settings(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    ancient = datetime(1, 1, 1, tzinfo=UTC)
    stamps = [NOW, ancient, datetime(1900, 6, 1, tzinfo=UTC), NOW, ancient]
    stored = publish_all(
        bus, [Event(event_type="a.e", data=i, timestamp=t) for i, t in enumerate(stamps)]
    )
    before_1950 = (None, datetime(1950, 1, 1, tzinfo=UTC))
    assert [e.data for e in bus.query(EventQuery(time_range=before_1950))] == [1, 2, 4]
    bus.close()
    # A retention reaching before the year 1 keeps everything (nothing is older).
    for days in (10**6, 999_999_999):
        bus = open_bus(retention_days=days)
        assert ids(bus.query(EventQuery())) == ids(stored)
        bus.close()
    bus = open_bus(retention_days=30)
    assert [e.data for e in bus.query(EventQuery())] == [0, 3]
    assert bus.query(EventQuery(time_range=before_1950)) == []
    assert bus.publish("a.e").get(timeout=WAIT).sequence == (stored[-1].sequence or 0) + 1


def test_after_kill_9_of_the_owner_readers_and_a_new_owner_see_every_acknowledged_event(
    journal: str, procs: Callable[..., Proc]
) -> None:
    child = procs("retain-writer", journal, "100000")
    assert child.line() == "opened"
    while len([x for x in child.seen if x.startswith("ack ")]) < 300:
        child.line()
    config = EventConfig(persistence_path=journal, read_only=True)
    early = EventBus(config)  # opened beside the live writer, kept across its death
    try:
        early_seen = seqs(early.query(EventQuery()))
        lines = child.kill9()
        acked = {int(p[1]): p[2] for p in (x.split() for x in lines) if p[0] == "ack"}
        with EventBus(config) as late:  # no lock holder now; its WAL was never flushed
            late_disk = {e.sequence: str(e.id) for e in late.query(EventQuery())}
        assert all(late_disk.get(s) == i for s, i in acked.items())
        with EventBus(EventConfig(persistence_path=journal, durability="sync")) as owner:
            on_disk = {e.sequence: str(e.id) for e in owner.query(EventQuery())}
            assert all(on_disk.get(s) == i for s, i in acked.items())
            nxt = owner.publish("keep.e", "new owner").get(timeout=WAIT)
            assert (nxt.sequence or 0) == max(on_disk) + 1
            # The reader opened before the kill still reads its snapshot.
            assert seqs(early.query(EventQuery())) == early_seen
    finally:
        early.close(timeout=WAIT)


def _hour_apart(bus: EventBus) -> None:
    now = datetime.now(UTC)
    publish_all(
        bus, [Event(event_type="r.e", data=i, timestamp=now + timedelta(hours=i)) for i in range(3)]
    )
    bus.flush(WAIT)


# Regression: close() neither stopped nor woke a paced replay; its handler ran after the close.
def test_a_paced_replay_ends_with_bus_closed_error_when_the_bus_closes(tmp_path: Path) -> None:
    """SPEC 4: after ``close`` calls raise ``BusClosedError``.  A replay waiting
    an hour for its next event slept on, then called its handler after the close
    and returned as if it had succeeded."""
    bus = PersistentEventBus(EventConfig(persistence_path=tmp_path / "j"))
    _hour_apart(bus)
    calls: list[tuple[int, bool]] = []
    first = threading.Event()
    outcome: queue.Queue[BaseException | int] = queue.Queue()

    def handler(event: Event) -> None:
        calls.append((event.data, bus.closed))
        first.set()

    def run() -> None:
        try:
            outcome.put(bus.replay(EventQuery(), handler, speed=1.0))
        except BaseException as exc:
            outcome.put(exc)

    threading.Thread(target=run, daemon=True).start()
    assert first.wait(WAIT)
    bus.close(timeout=WAIT)
    result = outcome.get(timeout=WAIT)  # at once: it waited out the hour before
    assert isinstance(result, BusClosedError), result
    assert calls == [(0, False)]


def test_a_replay_whose_handler_closes_the_bus_calls_it_no_more(tmp_path: Path) -> None:
    with PersistentEventBus(EventConfig(persistence_path=tmp_path / "j")) as bus:
        _hour_apart(bus)
        calls: list[int] = []

        def handler(event: Event) -> None:
            calls.append(event.data)
            bus.close()

        with pytest.raises(BusClosedError, match="during the replay"):
            bus.replay(EventQuery(), handler)
        assert calls == [0]


def test_an_async_paced_replay_ends_with_bus_closed_error_when_the_bus_closes(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[BaseException | int, list[int]]:
        bus = AsyncEventBus(EventConfig(persistence_path=tmp_path / "j"))
        _hour_apart(bus.sync)
        calls: list[int] = []
        first = asyncio.Event()

        def handler(event: Event) -> None:
            calls.append(event.data)
            first.set()

        replaying = asyncio.ensure_future(bus.replay(EventQuery(), handler, speed=1.0))
        await asyncio.wait_for(first.wait(), WAIT)
        await bus.aclose(timeout=WAIT)
        try:
            result: BaseException | int = await asyncio.wait_for(replaying, WAIT)
        except BusClosedError as exc:
            result = exc
        return result, calls

    result, calls = asyncio.run(main())
    assert isinstance(result, BusClosedError), result
    assert calls == [0]


def test_an_async_paced_replay_ends_when_a_close_gave_up_on_a_held_router(
    tmp_path: Path,
) -> None:
    """A close that gives up on the router (a filter holds it) never has it stop,
    so the bus's holds are never ended: the replay's wait for the spacing must
    look at the close itself (it slept out the whole gap)."""
    gate = threading.Event()
    held = threading.Event()

    def holding(event: Event) -> bool:
        if event.data == "hold":
            held.set()
            gate.wait(3 * WAIT)
        return True

    async def main() -> BaseException | int:
        bus = AsyncEventBus(EventConfig(persistence_path=tmp_path / "j"))
        _hour_apart(bus.sync)
        first = asyncio.Event()
        replaying = asyncio.ensure_future(
            bus.replay(EventQuery(), lambda e: first.set(), speed=1.0)
        )
        await asyncio.wait_for(first.wait(), WAIT)
        bus.sync.subscribe("h.*", lambda e: None, filter=holding)
        bus.sync.publish("h.x", "hold")
        assert await asyncio.to_thread(held.wait, WAIT)
        await asyncio.to_thread(bus.sync.close, 0.2)  # gives up on the router
        try:
            return await asyncio.wait_for(replaying, WAIT)
        except BusClosedError as exc:
            return exc
        finally:
            gate.set()

    result = asyncio.run(main())
    assert isinstance(result, BusClosedError), result
