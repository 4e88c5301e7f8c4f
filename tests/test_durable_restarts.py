"""Durable and catch-up subscriptions, checkpoints and retention, under kills and damage.

Real RocksDB journals in ``tmp_path``, real child processes killed with
SIGKILL and a journal reopened on the same folder.  Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import actors._journal.actor as journal_actor
from actors import (
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    JournalError,
    PersistentEventBus,
    SubscriptionStatistics,
)
from actors._journal.rocks import RocksStorage
from tests._support import WAIT, Recorder, flip_byte, publish_all, wait_for

ROOT = Path(__file__).resolve().parent.parent

# -- a child process, written to tmp_path at test time -----------------------------

CHILD = r"""
import sys, threading
from actors import Event, EventConfig, PersistentEventBus

def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

mode, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
durability = sys.argv[4] if len(sys.argv) > 4 else "async"
bus = PersistentEventBus(EventConfig(persistence_path=path, durability=durability))

def handler(event):
    say(f"h {event.sequence}")

if mode == "history":
    # Journal COUNT events first, then read them through a durable catch-up.
    futures = bus.publish_many([Event(event_type="job.run", data=i) for i in range(count)])
    last = max(f.get(timeout=60).sequence for f in futures)
    say(f"published {last}")
    bus.subscribe("job.*", handler, durable="w", from_sequence=1)
    say("subscribed")
    threading.Event().wait()
elif mode == "live":
    # A new durable subscription (live), then publish in batches for ever.
    bus.subscribe("job.*", handler, durable="w")
    say("subscribed")
    i = 0
    while True:
        for f in bus.publish_many([Event(event_type="job.run", data=i + k) for k in range(50)]):
            f.get(timeout=60)
        i += 50
elif mode == "retry":
    # A durable catch-up whose handler fails the first attempt of every 3rd event.
    futures = bus.publish_many([Event(event_type="job.run", data=i) for i in range(count)])
    last = max(f.get(timeout=60).sequence for f in futures)
    say(f"published {last}")
    failed = set()
    def flaky(event):
        if event.sequence % 3 == 0 and event.sequence not in failed:
            failed.add(event.sequence)
            raise RuntimeError("transient")
        say(f"h {event.sequence}")
    bus.subscribe("job.*", flaky, durable="w", from_sequence=1, retries=3, retry_backoff=0.001)
    say("subscribed")
    threading.Event().wait()
"""


class KillableChild:
    """A child that prints lines; the parent reads them and kills it with SIGKILL."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        script = tmp_path / "durable_child.py"
        script.write_text(CHILD)
        self.err = tmp_path / f"child-{os.getpid()}-{id(self)}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                cwd=ROOT,
            )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            chunk = self.proc.stdout.readline()
            if not chunk or not chunk.endswith("\n"):  # a line cut by the kill: not acknowledged
                break
            with self._cond:
                self.lines.append(chunk.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 60.0) -> str:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._eof or any(predicate(line) for line in self.lines), timeout
            )
            found = [line for line in self.lines if predicate(line)]
        if not ok or not found:
            raise AssertionError(f"child never printed the line; stderr:\n{self.err.read_text()}")
        return found[0]

    def kill9(self) -> list[str]:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL
        with self._cond:
            assert self._cond.wait_for(lambda: self._eof, 60)
            return list(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def kids() -> Iterator[list[KillableChild]]:
    started: list[KillableChild] = []
    yield started
    for child in started:
        child.close()


def handled_of(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("h ")]


def checkpoint_and_last(path: Path, name: str = "w") -> tuple[int | None, int]:
    storage = RocksStorage(str(path), read_only=True)
    try:
        return storage.get_checkpoint(f"sub:{name}"), storage.last_sequence()
    finally:
        storage.close()


def stats_add_up(s: SubscriptionStatistics) -> bool:
    return s.accepted == (
        s.delivered + s.expired + s.dead_letters + s.dropped + s.queued + s.in_flight
    )


def finished(s: SubscriptionStatistics) -> bool:
    return stats_add_up(s) and s.queued == 0 and s.in_flight == 0


def resume_and_check(path: Path, handled_before: list[int], checkpoint: int | None) -> None:
    """Reopen the journal, resume durable ``w``; check at least once, in order, no gap."""
    bus = PersistentEventBus(EventConfig(persistence_path=str(path)))
    try:
        stored = [e.sequence or 0 for e in bus.query(EventQuery(event_types=["job.*"]))]
        assert stored, "the journal lost every event"
        rec = Recorder()
        # from_sequence as the child gave it: used only without a checkpoint.
        bus.subscribe("job.*", rec, durable="w", from_sequence=1)
        marker = bus.publish("job.end", {"marker": True}).get(timeout=WAIT)
        rec.wait_for(marker, timeout=60)
        resumed = [s for s in rec.sequences if s != marker.sequence]
        start = (checkpoint or 0) + 1
        # Resumes exactly at the checkpoint plus one, in order, no gap, no duplicate.
        assert resumed == [s for s in stored if s >= start]
        # Every journaled event reached a handler at least once.
        missing = sorted(set(stored) - set(handled_before) - set(resumed))
        assert missing == [], f"never delivered: {missing[:10]}... ({len(missing)})"
    finally:
        bus.close(timeout=30)


# -- SIGKILL of a process with a durable subscription ----------------------------------


@pytest.mark.parametrize("kill_at", [5, 600, 1500])
def test_kill9_mid_history_checkpoint_never_passes_an_unhandled_event(
    tmp_path: Path, kids: list[KillableChild], kill_at: int
) -> None:
    """A durable catch-up killed mid-page resumes after its last saved checkpoint.

    The checkpoint on disk never covers an event the child did not print as
    handled, and the restart delivers every journaled event after it.
    """
    path = tmp_path / "journal"
    child = KillableChild(tmp_path, "history", str(path), "2000")
    kids.append(child)
    child.wait_line(lambda line: line == f"h {kill_at}")
    lines = child.kill9()
    handled = handled_of(lines)
    # In order, no duplicate, starting at 1.
    assert handled == list(range(1, len(handled) + 1))
    checkpoint, last = checkpoint_and_last(path)
    assert last == 2000
    if checkpoint is not None:
        assert checkpoint <= handled[-1], (checkpoint, handled[-1])
    resume_and_check(path, handled, checkpoint)


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_kill9_mid_live_batches_resumes_without_a_gap(
    tmp_path: Path, kids: list[KillableChild], durability: str
) -> None:
    """A new durable subscription (live) killed while events stream in."""
    path = tmp_path / "journal"
    child = KillableChild(tmp_path, "live", str(path), "0", durability)
    kids.append(child)
    child.wait_line(lambda line: line.startswith("h ") and int(line.split()[1]) >= 700)
    lines = child.kill9()
    handled = handled_of(lines)
    assert handled == list(range(1, len(handled) + 1))
    checkpoint, _ = checkpoint_and_last(path)
    # The new durable subscription saved its starting point (0) at once.
    assert checkpoint is not None
    assert checkpoint <= handled[-1]
    resume_and_check(path, handled, checkpoint)


def test_kill9_during_retries_resumes_at_or_before_the_failing_event(
    tmp_path: Path, kids: list[KillableChild]
) -> None:
    """Retries park the batch; a kill then must not have moved the checkpoint past it."""
    path = tmp_path / "journal"
    child = KillableChild(tmp_path, "retry", str(path), "1500")
    kids.append(child)
    child.wait_line(lambda line: line.startswith("h ") and int(line.split()[1]) >= 800)
    lines = child.kill9()
    handled = handled_of(lines)
    assert handled == list(range(1, len(handled) + 1))
    checkpoint, _ = checkpoint_and_last(path)
    if checkpoint is not None:
        assert checkpoint <= handled[-1]
    resume_and_check(path, handled, checkpoint)


def test_restart_twice_after_kill_keeps_the_checkpoint(
    tmp_path: Path, kids: list[KillableChild]
) -> None:
    """Kill, resume cleanly, close; a third open delivers nothing old again."""
    path = tmp_path / "journal"
    child = KillableChild(tmp_path, "history", str(path), "800")
    kids.append(child)
    child.wait_line(lambda line: line == "h 300")
    handled = handled_of(child.kill9())
    checkpoint, _ = checkpoint_and_last(path)
    resume_and_check(path, handled, checkpoint)
    # resume_and_check closed cleanly after handling the marker: exactly after it now.
    bus = PersistentEventBus(EventConfig(persistence_path=str(path)))
    try:
        rec = Recorder()
        bus.subscribe("job.*", rec, durable="w")
        new = bus.publish("job.new", 1).get(timeout=WAIT)
        rec.wait_for(new)
        assert rec.sequences == [new.sequence]
    finally:
        bus.close(timeout=30)


# -- in-process faults ---------------------------------------------------------------


def jobs(n: int, start: int = 0) -> list[Event]:
    return [Event(event_type="job.run", data=start + i) for i in range(n)]


def test_clean_close_resumes_exactly_after_the_last_handled_event(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, jobs(1300))
    rec = Recorder()
    sub = bus.subscribe("job.*", rec, durable="d", from_sequence=1)
    live = publish_all(bus, jobs(40, 1300))
    rec.wait_for(live[-1])
    assert rec.sequences == list(range(1, 1341))
    bus.flush(WAIT)
    assert finished(sub.statistics()), sub.statistics()
    assert sub.statistics().delivered == 1340
    bus.close(timeout=WAIT)

    bus = open_bus()
    rec2 = Recorder()
    bus.subscribe("job.*", rec2, durable="d", from_sequence=1)
    new = bus.publish("job.run", -1).get(timeout=WAIT)
    rec2.wait_for(new)
    assert rec2.sequences == [new.sequence]


def test_catch_up_from_zero_beyond_the_end_and_inside_the_history(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, jobs(10))
    zero, inside, beyond = Recorder(), Recorder(), Recorder()
    subs = [
        bus.subscribe("job.*", zero, from_sequence=0),
        bus.subscribe("job.*", inside, from_sequence=7),
        bus.subscribe("job.*", beyond, from_sequence=15),
    ]
    live = publish_all(bus, jobs(10, 10))  # sequences 11..20
    for rec in (zero, inside):
        rec.wait_for(live[-1])
    bus.flush(WAIT)
    beyond.wait_for(live[-1])
    assert zero.sequences == list(range(1, 21))
    assert inside.sequences == list(range(7, 21))
    assert beyond.sequences == list(range(15, 21))
    for sub in subs:
        assert finished(sub.statistics()), sub.statistics()
    assert [s.statistics().accepted for s in subs] == [20, 14, 6]


def test_catch_up_into_a_range_retention_deleted(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    publish_all(bus, jobs(300))
    bus.close(timeout=WAIT)
    bus = open_bus(max_events=50)  # retention at open keeps 251..300
    rec = Recorder()
    sub = bus.subscribe("job.*", rec, from_sequence=10)
    new = bus.publish("job.run", 300).get(timeout=WAIT)
    assert new.sequence == 301
    rec.wait_for(new)
    bus.flush(WAIT)
    assert rec.sequences == list(range(251, 302))
    assert finished(sub.statistics())


@pytest.fixture
def fast_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention at every journal turn instead of every 60 s."""
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)


def test_retention_while_a_durable_subscriber_lags(
    open_bus: Callable[..., EventBus], fast_retention: None, journal: str
) -> None:
    """Retention trims under a lagging durable reader: order holds, the checkpoint stays,
    and nothing published after ``subscribe`` returned is trimmed before it is read."""
    bus = open_bus(max_events=100)
    publish_all(bus, jobs(100))
    gate = threading.Event()
    entered = threading.Event()
    seen: list[int] = []

    def slow(event: Event) -> None:
        entered.set()
        assert gate.wait(WAIT)
        seen.append(event.sequence or 0)

    sub = bus.subscribe("job.*", slow, durable="lag", from_sequence=1)
    assert entered.wait(WAIT)
    # While it holds its first history page (1-100), 1,000 more arrive; retention
    # trims what it read already, and keeps what it has yet to read from the journal.
    for start in range(100, 1100, 100):
        publish_all(bus, jobs(100, start))
    assert bus.query(EventQuery(event_types=["job.*"], limit=1))[0].sequence == 101
    gate.set()
    assert wait_for(lambda: bool(seen) and seen[-1] == 1100, 60)
    bus.flush(WAIT)
    assert seen == list(range(1, 1101))
    assert finished(sub.statistics()), sub.statistics()
    bus.close(timeout=WAIT)
    checkpoint, _ = checkpoint_and_last(Path(journal), "lag")
    assert checkpoint == 1100


def test_unsubscribe_and_resubscribe_a_durable_name_during_catch_up(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, jobs(2000))
    gate = threading.Event()
    entered = threading.Event()
    first: list[int] = []

    def blocked_at_100(event: Event) -> None:
        if event.sequence == 100:
            entered.set()
            assert gate.wait(WAIT)
        first.append(event.sequence or 0)

    sub_a = bus.subscribe("job.*", blocked_at_100, durable="d", from_sequence=1)
    assert entered.wait(WAIT)
    sub_a.unsubscribe()
    assert not sub_a.active
    gate.set()
    assert wait_for(lambda: finished(sub_a.statistics()))
    stats_a = sub_a.statistics()
    assert stats_a.delivered == len(first)
    assert first == list(range(1, len(first) + 1))
    assert len(first) <= 100  # nothing after the event in hand once unsubscribe returned

    rec = Recorder()
    sub_b = bus.subscribe("job.*", rec, durable="d", from_sequence=1)
    last = bus.publish("job.run", -1).get(timeout=WAIT)
    rec.wait_for(last, timeout=60)
    # Resumes past the events A handled, never past one it did not handle.
    assert rec.sequences == list(range(len(first) + 1, 2002)), rec.sequences[:5]
    bus.flush(WAIT)
    assert finished(sub_b.statistics())


def test_two_live_subscriptions_of_one_durable_name_each_get_everything(
    open_bus: Callable[..., EventBus],
) -> None:
    """Not recommended by the docs, but each subscription still delivers its events."""
    bus = open_bus()
    publish_all(bus, jobs(600))
    a, b = Recorder(), Recorder()
    bus.subscribe("job.*", a, durable="same", from_sequence=1)
    bus.subscribe("job.*", b, durable="same", from_sequence=1)
    last = publish_all(bus, jobs(10, 600))[-1]
    a.wait_for(last)
    b.wait_for(last)
    assert a.sequences == b.sequences == list(range(1, 611))


def test_close_during_catch_up_then_resume_loses_nothing(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, jobs(3000))
    gate = threading.Event()
    entered = threading.Event()
    first: list[int] = []

    def blocked(event: Event) -> None:
        if event.sequence == 700:
            entered.set()
            gate.wait(WAIT)
        first.append(event.sequence or 0)

    bus.subscribe("job.*", blocked, durable="d", from_sequence=1)
    assert entered.wait(WAIT)
    bus.close(timeout=0.2)  # gives up on the blocked subscription
    gate.set()

    bus2 = open_bus()
    rec = Recorder()
    bus2.subscribe("job.*", rec, durable="d")
    last = bus2.publish("job.run", -1).get(timeout=WAIT)
    rec.wait_for(last, timeout=60)
    assert rec.sequences, "nothing resumed"
    start = rec.sequences[0]
    assert start <= 700  # 700 was never acknowledged as handled before close gave up
    assert rec.sequences == list(range(start, 3002))


def test_retries_with_dead_letters_and_checkpoint(open_bus: Callable[..., EventBus]) -> None:
    """Failing events retry then become dead letters; both count as handled; counters add up."""
    bus = open_bus()
    publish_all(bus, jobs(700))
    attempts: dict[int, int] = {}
    handled: list[int] = []

    def flaky(event: Event) -> None:
        seq = event.sequence or 0
        attempts[seq] = attempts.get(seq, 0) + 1
        if seq % 50 == 0:
            raise RuntimeError("always")
        if seq % 7 == 0 and attempts[seq] == 1:
            raise RuntimeError("once")
        handled.append(seq)

    sub = bus.subscribe("job.*", flaky, durable="r", from_sequence=1, retries=2, retry_backoff=0)
    tail = publish_all(bus, jobs(100, 700))
    assert wait_for(lambda: attempts.get(tail[-1].sequence or 0, 0) >= 1, 60)
    bus.flush(WAIT)
    failing = [s for s in range(1, 801) if s % 50 == 0]
    assert handled == [s for s in range(1, 801) if s % 50 != 0]
    assert all(attempts[s] == 3 for s in failing)
    stats = sub.statistics()
    assert finished(stats), stats
    assert stats.dead_letters == len(failing)
    assert stats.delivered == 800 - len(failing)
    assert stats.accepted == 800
    letters = bus.dead_letters()
    assert sorted(d.event.sequence or 0 for d in letters) == failing
    bus.close(timeout=WAIT)

    bus = open_bus()
    rec = Recorder()
    bus.subscribe("job.*", rec, durable="r")
    new = bus.publish("job.run", -1).get(timeout=WAIT)
    rec.wait_for(new)
    # The dead letters were handled: nothing before them comes back.
    assert rec.sequences == [new.sequence]


# A batch parked for a retry, then cut by unsubscribe() or close(timeout), moves
# the checkpoint past the events it handled and no further: a restart starts
# again at the failed event.  Before, the handled part was never saved, so the
# restart began at the batch's start (and a live one without from_sequence
# skipped the rest); after a close the save could also reach the router after
# it stopped.
@pytest.mark.parametrize("how", ["unsubscribe", "close"])
@pytest.mark.parametrize("where", ["history", "live"])
def test_cut_retry_wait_restarts_at_the_failed_event(
    open_bus: Callable[..., EventBus], how: str, where: str
) -> None:
    """A batch parked for a retry and then cut restarts at the failed event."""
    bus = open_bus()
    failing = threading.Event()
    seen: list[int] = []

    def fails_at_19(event: Event) -> None:
        if event.data == 19:
            failing.set()
            raise RuntimeError("not now")
        seen.append(event.data)

    if where == "history":
        published = publish_all(bus, jobs(50))
        sub = bus.subscribe(
            "job.*", fails_at_19, durable="p", from_sequence=1, retries=5, retry_backoff=30
        )
    else:
        sub = bus.subscribe("job.*", fails_at_19, durable="p", retries=5, retry_backoff=30)
        bus.flush(WAIT)  # its starting point is saved
        published = publish_all(bus, jobs(50))
    failed_seq = published[19].sequence or 0
    assert failing.wait(WAIT)
    if how == "unsubscribe":
        sub.unsubscribe()
        assert wait_for(lambda: finished(sub.statistics()))
        stats = sub.statistics()
        assert (stats.delivered, stats.dead_letters, stats.dropped) == (19, 0, 31), stats
    else:
        bus.close(timeout=0.2)
        bus = open_bus()
    assert seen == list(range(19))
    rec = Recorder()
    bus.subscribe("job.*", rec, durable="p", from_sequence=1)
    new = bus.publish("job.run", -1).get(timeout=WAIT)
    rec.wait_for(new)
    assert rec.sequences == list(range(failed_seq, (new.sequence or 0) + 1))


def test_concurrent_publishers_during_durable_catch_up_exactly_once(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, jobs(1500))
    stop = threading.Event()
    published: list[Event] = []
    lock = threading.Lock()

    def publisher(k: int) -> None:
        i = 0
        while not stop.is_set() and i < 60:
            got = publish_all(bus, jobs(10, 10_000 * (k + 1) + i * 10))
            with lock:
                published.extend(got)
            i += 1

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    rec = Recorder()
    sub = bus.subscribe("job.*", rec, durable="c", from_sequence=1)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    last = bus.publish("job.run", -1).get(timeout=WAIT)
    rec.wait_for(last, timeout=60)
    bus.flush(WAIT)
    assert rec.sequences == list(range(1, (last.sequence or 0) + 1))
    stats = sub.statistics()
    assert finished(stats), stats
    assert stats.delivered == stats.accepted == last.sequence


def test_flush_waits_for_durable_catch_up_and_stats_add_up_meanwhile(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, jobs(1200))
    gate = threading.Event()
    entered = threading.Event()
    snapshots: list[SubscriptionStatistics] = []
    count = [0]

    def slow(event: Event) -> None:
        count[0] += 1
        if event.sequence == 600:
            entered.set()
            assert gate.wait(WAIT)

    sub = bus.subscribe("job.*", slow, durable="f", from_sequence=1)
    assert entered.wait(WAIT)
    done = threading.Event()
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            bus.flush(WAIT)
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=flusher, daemon=True).start()
    for _ in range(20):
        snapshots.append(sub.statistics())
    assert not done.is_set()
    gate.set()
    assert done.wait(WAIT)
    assert errors == []
    assert count[0] == 1200
    for s in snapshots:
        assert stats_add_up(s), s
    assert finished(sub.statistics())


def test_replay_after_retention_and_a_raising_handler(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    publish_all(bus, jobs(200))
    bus.close(timeout=WAIT)
    bus = open_bus(max_events=60)
    got: list[int] = []
    n = bus.replay(
        EventQuery(event_types=["job.*"]), lambda e: got.append(e.sequence or 0), page_size=7
    )
    assert n == 60
    assert got == list(range(141, 201))

    def boom(event: Event) -> None:
        if event.sequence == 150:
            raise KeyError("stop")

    with pytest.raises(KeyError):
        bus.replay(EventQuery(event_types=["job.*"]), boom)
    # Replayed events are not journaled again.
    assert len(bus.query(EventQuery(event_types=["job.*"]))) == 60


def test_async_durable_handler_checkpoint_after_close(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    publish_all(bus, jobs(700))
    seen: list[int] = []

    async def handler(event: Event) -> None:
        seen.append(event.sequence or 0)

    sub = bus.subscribe("job.*", handler, durable="a", from_sequence=1)
    assert wait_for(lambda: len(seen) == 700, 60)
    bus.flush(WAIT)
    assert seen == list(range(1, 701))
    assert finished(sub.statistics())
    bus.close(timeout=WAIT)
    bus = open_bus()
    rec = Recorder()
    bus.subscribe("job.*", rec, durable="a")
    new = bus.publish("job.run", -1).get(timeout=WAIT)
    rec.wait_for(new)
    assert rec.sequences == [new.sequence]


# A durable name's checkpoint belongs to its latest subscription: one that was
# unsubscribed while its handler ran, finishing after a successor of the name
# handled more, must not move the checkpoint back (before, it saved 100 over
# 1001 and the next open delivered 900 events again).
def test_an_unsubscribed_durable_never_moves_the_checkpoint_back(
    open_bus: Callable[..., EventBus],
) -> None:
    """After unsubscribe() returned, the old subscription's late batch end must not
    overwrite the checkpoint of the subscription that took the name over."""
    bus = open_bus()
    publish_all(bus, jobs(1000))
    gate = threading.Event()
    entered = threading.Event()

    def blocked_at_100(event: Event) -> None:
        if event.sequence == 100:
            entered.set()
            assert gate.wait(WAIT)

    old = bus.subscribe("job.*", blocked_at_100, durable="d", from_sequence=1)
    assert entered.wait(WAIT)
    old.unsubscribe()  # returns; its handler still runs event 100
    rec = Recorder()
    bus.subscribe("job.*", rec, durable="d", from_sequence=1)
    last = bus.publish("job.run", -1).get(timeout=WAIT)
    rec.wait_for(last, timeout=60)
    bus.flush(WAIT)
    gate.set()  # the old handler returns now
    assert wait_for(lambda: finished(old.statistics()))
    bus.close(timeout=WAIT)  # clean close: resumes exactly after the last handled event

    bus = open_bus()
    again = Recorder()
    bus.subscribe("job.*", again, durable="d", from_sequence=1)
    new = bus.publish("job.run", -2).get(timeout=WAIT)
    again.wait_for(new, timeout=60)
    assert again.sequences == [new.sequence], again.sequences[:3]


def test_small_capacity_durable_catch_up_counters_add_up(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, jobs(2000))
    stop = threading.Event()
    snapshots: list[SubscriptionStatistics] = []
    seen: list[Event] = []
    sub = bus.subscribe("job.*", seen.append, durable="s", from_sequence=1, capacity=8)

    def watcher() -> None:
        while not stop.is_set():
            snapshots.append(sub.statistics())
            stop.wait(0.001)

    w = threading.Thread(target=watcher)
    w.start()
    for k in range(20):
        publish_all(bus, jobs(50, 10_000 + 50 * k))
    bus.flush(WAIT)
    stop.set()
    w.join(WAIT)
    bad = [s for s in snapshots if not stats_add_up(s)]
    assert bad == [], bad[:3]
    stats = sub.statistics()
    assert finished(stats), stats
    assert stats.accepted == 3000
    assert stats.delivered + stats.dropped == 3000
    assert len(seen) == stats.delivered
    assert [e.sequence for e in seen] == sorted({e.sequence for e in seen})


# A failed history read is not the end of history.  Here the type index is
# damaged: the catch-up reads on by sequence and delivers every stored event,
# then the live ones.  Before, the failure read as a short page: it went live,
# lost the event published while it joined, and its checkpoint passed the
# whole unread history for good.
def test_a_failed_history_read_never_lets_the_checkpoint_skip_history(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    n = 20_000
    with EventBus(EventConfig(persistence_path=path)) as bus:
        futures = [
            bus.publish("t.a" if i % 2 else "t.b", {"i": i, "pad": "x" * 100}) for i in range(n)
        ]
        futures[-1].get(timeout=60)
    files = sorted(path.glob("*.sst"), key=lambda p: p.stat().st_size, reverse=True)
    assert len(files) == 4, files
    type_index = files[2]  # records, time index, type index, meta
    flip_byte(type_index, type_index.stat().st_size // 2)

    bus = PersistentEventBus(EventConfig(persistence_path=str(path)))
    try:
        stored = [e.sequence or 0 for e in bus.query(EventQuery()) if e.event_type == "t.a"]
        assert len(stored) == n // 2  # the records themselves are intact
        rec = Recorder()
        bus.subscribe("t.a", rec, durable="w", from_sequence=1)
        first = bus.publish("t.a", "live-1").get(timeout=WAIT)
        bus.flush(WAIT)
        second = bus.publish("t.a", "live-2").get(timeout=WAIT)
        rec.wait_for(second)
        bus.flush(WAIT)
    finally:
        bus.close(timeout=WAIT)
    checkpoint, _ = checkpoint_and_last(path)
    delivered = set(rec.sequences)
    skipped = [s for s in stored if s <= (checkpoint or 0) and s not in delivered]
    assert skipped == [], f"checkpoint {checkpoint} passes {len(skipped)} undelivered events"
    assert first.sequence in delivered, "a live event published during the join was lost"
    assert rec.sequences == [*stored, first.sequence, second.sequence]  # all, in order, once


def test_a_history_read_that_keeps_failing_is_asked_again_until_it_answers(
    open_bus: Callable[..., EventBus],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the fallback to reading by sequence, a read that still fails is retried
    (with a growing wait): the subscription stalls there, then delivers all, in order."""
    bus = open_bus()
    published = publish_all(bus, jobs(1200))
    failures = {"left": 4}  # the indexed read, then three by sequence
    real = journal_actor.JournalActor._read  # noqa: SLF001 - where the failure is injected

    def flaky(self: journal_actor.JournalActor, query: EventQuery) -> list[Event]:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise JournalError("the read failed (injected)")
        return real(self, query)

    monkeypatch.setattr(journal_actor.JournalActor, "_read", flaky)
    rec = Recorder()
    with caplog.at_level("ERROR", logger="actors.subscriber"):
        bus.subscribe("job.*", rec, durable="f", from_sequence=1)
        bus.flush(WAIT)
    assert failures["left"] == 0
    assert rec.sequences == [e.sequence for e in published]
    retries = [r for r in caplog.records if "asking again" in r.getMessage()]
    assert len(retries) == 3
    assert any("without the type index" in r.getMessage() for r in caplog.records)
