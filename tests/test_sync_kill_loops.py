"""A journal writer killed with SIGKILL again and again, stopped with SIGSTOP, restarted.

``docs/persistence.md``: with ``durability="sync"`` (and ``"async"``) every
resolved publish survives a killed process, with its sequence and id;
everything published before a ``flush()`` that returned survives it too;
sequences continue across restarts (never handed out twice); a second
process opening a held journal gets ``JournalLockedError`` naming the
holder's pid, and the holder keeps working; a read-only open takes no lock.

The child (``tests/_sync_kill_child.py``) publishes from four threads waiting
on their futures plus a thread publishing bursts without waiting, and prints
``ack SEQ ID RUN`` for every resolved future, flushed at once.  The parent
reads those lines through a reader thread (every wait is bounded), kills the
child at varied points (right as it starts opening, after the first
acknowledgement, after hundreds, in the middle of a 256-event burst), restarts
it on the same journal, and at the end checks the journal against every line
it had read.  Unlike ``tests/test_durability.py`` (one kill, one reopen) the
journal here goes through many kill/restart cycles, including kills during the
open itself and during large batches.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors import EventConfig, EventQuery, PersistentEventBus
from tests._support import pause

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "_sync_kill_child.py"
WAIT = 60.0
"""Upper bound for any one wait on a child: reaching it fails the test."""


# -- a child process read line by line, every wait bounded ------------------------------------


class Proc:
    """A child running ``_sync_kill_child.py``; its stdout lines go to a queue."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.stderr_path = tmp_path / f"child-{len(list(tmp_path.glob('child-*')))}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                cwd=ROOT,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            if text.endswith("\n"):  # a line cut by a kill was never acknowledged to us
                self.lines.put(text[:-1])
        self.lines.put(None)

    def line(self, timeout: float = WAIT) -> str:
        """Return the next line; fail if the child ended or said nothing within ``timeout``."""
        try:
            text = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"child {self.args} printed nothing for {timeout} s:\n{self.stderr()}")
        if text is None:
            self.lines.put(None)
            rc = self.proc.wait(timeout=WAIT)
            pytest.fail(f"child {self.args} ended (rc={rc}):\n{self.stderr()}")
        return text

    def pending(self) -> list[str]:
        """Return the lines already read from the child, without waiting."""
        out: list[str] = []
        while True:
            try:
                text = self.lines.get_nowait()
            except queue.Empty:
                return out
            if text is None:
                self.lines.put(None)
                return out
            out.append(text)

    def rest(self) -> list[str]:
        """Once the child is gone: every complete line it printed that was not read yet."""
        self.reader.join(WAIT)
        assert not self.reader.is_alive(), "the child's stdout never reached its end"
        return self.pending()

    def kill9(self) -> list[str]:
        """SIGKILL the child; return the complete lines it printed that were not read yet."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=WAIT) == -signal.SIGKILL
        return self.rest()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        self.reader.join(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        child = Proc(tmp_path, *args, env=env)
        started.append(child)
        return child

    yield start
    for child in started:
        child.close()


# -- what the parent saw ----------------------------------------------------------------


@dataclass
class Seen:
    """Everything the children acknowledged, as read from their stdout."""

    acks: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (sequence, run)
    by_run: dict[int, list[int]] = field(default_factory=dict)  # run -> acknowledged sequences
    opened_last: dict[int, int] = field(default_factory=dict)  # run -> last stored at its open
    flushed: dict[tuple[int, int], int] = field(default_factory=dict)  # (run, burst) -> count
    kills: int = 0

    def take(self, lines: list[str]) -> None:
        for text in lines:
            kind, *rest = text.split()
            if kind == "ack":
                seq, event_id, run = int(rest[0]), rest[1], int(rest[2])
                assert event_id not in self.acks, f"id {event_id} acknowledged twice"
                self.acks[event_id] = (seq, run)
                self.by_run.setdefault(run, []).append(seq)
            elif kind == "flushed":
                self.flushed[int(rest[0]), int(rest[1])] = int(rest[2])
            elif kind == "open-error":
                pytest.fail(f"a restart on a journal that was only killed raised: {text}")


def is_ack(text: str) -> bool:
    return text.startswith("ack ")


def is_kill_point(kill_at: str, text: str, acks: int) -> bool:
    """Return whether ``text`` (after ``acks`` acknowledgements) is where ``kill_at`` strikes."""
    if kill_at == "burst":  # as it starts publishing a 256-event burst
        return text.startswith("burst ") and text.endswith(" 256")
    if kill_at == "bigwrite":  # as a batch of 200+ events goes to RocksDB's WAL
        return text.startswith("wal-write ") and int(text.split()[1]) >= 200
    if kill_at == "flushed":  # right after a flush() returned
        return text.startswith("flushed ")
    return acks >= int(kill_at)


def run_cycle(
    spawn: Callable[..., Proc],
    journal: Path,
    durability: str,
    run: int,
    kill_at: str,
    seen: Seen,
    env: dict[str, str] | None = None,
) -> None:
    """Start a writer on ``journal``, kill it -9 at ``kill_at``, record what it acknowledged.

    ``kill_at``: ``"opening"`` (as soon as it says it starts opening), ``"burst"``
    (as it starts publishing a 256-event burst), ``"flushed"`` (right after a
    ``flush()`` returned) or a number of acknowledgements.
    """
    child = spawn("writer", str(journal), durability, str(run), "4", env=env)
    lines: list[str] = []
    assert child.line() == "opening"
    if kill_at.startswith("step:"):
        steps = 0
        while steps < int(kill_at[5:]) and not (text := child.line()).startswith("opened"):
            lines.append(text)
            steps += text.startswith("step ")
    elif kill_at != "opening":
        while (first := child.line()).startswith("step "):
            pass
        kind, *rest = first.split()
        if kind == "open-error":
            seen.take([first])
        assert kind == "opened", first
        last = int(rest[0])
        # Every acknowledged event is there at the open, and the journal never got shorter.
        prior = max((s for s, _ in seen.acks.values()), default=0)
        assert last >= prior, f"run {run} opened with last sequence {last} < acknowledged {prior}"
        assert last >= max(seen.opened_last.values(), default=0)
        seen.opened_last[run] = last
        acks = 0
        while True:
            lines.append(text := child.line())
            acks += is_ack(text)
            if is_kill_point(kill_at, text, acks):
                break
    lines += child.kill9()
    seen.kills += 1
    seen.take(lines)
    if run in seen.opened_last:
        below = [s for s in seen.by_run.get(run, []) if s <= seen.opened_last[run]]
        assert not below, f"run {run} acknowledged sequences {below[:5]} at or below its start"


def check_journal(journal: Path, seen: Seen) -> list[Any]:
    """Reopen writable (a restart must not raise) and check every promise; return the events."""
    with PersistentEventBus(EventConfig(persistence_path=str(journal), durability="sync")) as bus:
        events = bus.query(EventQuery(), timeout=WAIT)
        metrics = bus.metrics()
        assert metrics.journal_lost_events == 0
        assert metrics.journal_corrupt_records == 0
        n = len(events)
        seqs = [e.sequence or 0 for e in events]
        after = bus.publish("kill.after", {}).get(timeout=WAIT)
        assert after.sequence == (seqs[-1] if seqs else 0) + 1
    stored = {str(e.id): e for e in events}
    assert len(stored) == n, "the journal holds an event id twice"
    assert seqs == sorted(set(seqs)), "sequences are not strictly increasing"
    assert seqs == list(range(1, n + 1)), "the journal has a hole in its sequences"
    missing = {i: a for i, a in seen.acks.items() if i not in stored}
    assert not missing, (
        f"{len(missing)} acknowledged event(s) lost, e.g. {list(missing.items())[:5]}"
    )
    moved = {
        i: (s, stored[i].sequence) for i, (s, _) in seen.acks.items() if stored[i].sequence != s
    }
    assert not moved, (
        f"acknowledged events stored under another sequence: {list(moved.items())[:5]}"
    )
    # Sequences never go back across restarts: runs follow each other in sequence order.
    runs = [int(str(e.data["run"])) for e in events if isinstance(e.data, dict) and "run" in e.data]
    back = [(a, b) for a, b in itertools.pairwise(runs) if b < a]
    assert not back, f"a later run's event sits before an earlier run's: {back[:5]}"
    acked_runs = sorted(seen.by_run)
    for a, b in itertools.pairwise(acked_runs):
        assert max(seen.by_run[a]) < min(seen.by_run[b]), f"run {b} reused run {a}'s sequences"
    return events


# -- the kill loops ------------------------------------------------------------------------

# The child's profile hooks print ``step NAME`` per journal-layer call while it
# opens and ``wal-write N`` as a batch goes to RocksDB; the bursts' events are
# ~30 KB, so a 256-event batch takes RocksDB several writes and a kill there
# can leave the WAL's last write cut short.
HOOKED = {"KILL_HOOK": "1", "KILL_PAD": "30000"}

# (kill point, see ``run_cycle``).  ``step:K`` kills at the K-th call of the
# journal layer during the open: the lock probe, the read-only view, RocksDB's
# writable open (WAL recovery), the reconciliation with the mark.
SYNC_KILLS = [
    "1", "300", "bigwrite", "opening", "step:20", "bigwrite", "800", "step:45",
    "burst", "bigwrite", "step:58", "step:75", "40", "bigwrite", "step:100", "1",
]  # fmt: skip


def test_sync_writer_killed_in_a_loop_keeps_every_acknowledged_event(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    journal = tmp_path / "journal"
    seen = Seen()
    for run, kill_at in enumerate(SYNC_KILLS, start=1):
        run_cycle(spawn, journal, "sync", run, kill_at, seen, env=HOOKED)
    assert seen.kills == len(SYNC_KILLS)
    assert len(seen.acks) >= 1 + 300 + 800 + 40 + 1
    events = check_journal(journal, seen)
    assert len(events) >= len(seen.acks)


ASYNC_KILLS = [
    "flushed", "1", "300", "opening", "bigwrite", "flushed", "step:45", "burst",
    "bigwrite", "flushed", "step:75", "100",
]  # fmt: skip


def test_async_writer_killed_in_a_loop_keeps_acknowledged_and_flushed_events(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """``async``: every resolved publish and everything before a returned ``flush()`` survives."""
    journal = tmp_path / "journal"
    seen = Seen()
    for run, kill_at in enumerate(ASYNC_KILLS, start=1):
        run_cycle(spawn, journal, "async", run, kill_at, seen, env=HOOKED)
    assert seen.kills == len(ASYNC_KILLS)
    assert len(seen.flushed) >= 3
    events = check_journal(journal, seen)
    bursts: dict[tuple[int, int], set[int]] = {}
    for e in events:
        if e.event_type == "kill.burst":
            bursts.setdefault((e.data["run"], e.data["burst"]), set()).add(e.data["k"])
    short = {
        key: (len(bursts.get(key, ())), n)
        for key, n in seen.flushed.items()
        if bursts.get(key) != set(range(n))
    }
    assert not short, f"events published before a returned flush() were lost: {short}"


# -- SIGSTOP: the journal stays locked, readable, and intact ------------------------------------


def folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.mark.parametrize("stop_at", ["burst", "bigwrite"])
def test_stopped_writer_keeps_its_lock_and_loses_nothing(
    tmp_path: Path, spawn: Callable[..., Proc], stop_at: str
) -> None:
    journal = tmp_path / "journal"
    seen = Seen()
    run_cycle(spawn, journal, "sync", 1, "bigwrite", seen, env=HOOKED)  # history and a kill
    writer = spawn("writer", str(journal), "sync", "2", "4", env=HOOKED)
    assert writer.line() == "opening"
    while (text := writer.line()).startswith("step "):
        pass
    assert text.startswith("opened "), text
    lines = []
    # Stop it as it starts a 256-event burst, or as a batch of 200+ goes to the WAL.
    while True:
        text = writer.line()
        lines.append(text)
        if stop_at == "burst" and text.startswith("burst ") and text.endswith(" 256"):
            break
        if stop_at == "bigwrite" and text.startswith("wal-write ") and int(text.split()[1]) >= 200:
            break
    pause(writer.proc)
    lines += writer.pending()
    seen.take(lines)
    before = {i: s for i, (s, r) in seen.acks.items() if r == 2}
    assert len(before) >= 64
    files = folder(journal)

    probe = spawn("probe", str(journal))
    kind, name, *message = probe.line().split()
    assert (kind, name) == ("error", "JournalLockedError"), (kind, name, message)
    assert f"pid {writer.pid}" in " ".join(message)
    # A read-only open takes no lock and sees every event acknowledged so far.
    readable: dict[str, int] = {}
    while (text := probe.line()) != "ro-done":
        kind, *rest = text.split()
        assert kind == "ro", text
        readable[rest[1]] = int(rest[0])
    assert probe.proc.wait(timeout=WAIT) == 0, probe.stderr()
    assert "Traceback" not in probe.stderr()
    for i, (s, _) in seen.acks.items():
        assert readable.get(i) == s, f"acknowledged {i} at {s} not seen read-only"
    # Neither the refused open nor the read-only one changed a byte of the folder.
    assert folder(journal) == files

    # Resumed, the writer goes on where it stopped.
    os.kill(writer.pid, signal.SIGCONT)
    resumed = 0
    lines = []
    while resumed < 300:
        text = writer.line()
        lines.append(text)
        resumed += is_ack(text)
    lines += writer.kill9()
    seen.take(lines)
    seen.kills += 1
    assert len([1 for _, r in seen.acks.values() if r == 2]) >= len(before) + 300
    check_journal(journal, seen)


# -- retention at every open: trimmed, never reused ---------------------------------------


def test_sync_writer_with_retention_killed_in_a_loop_never_reuses_a_sequence(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """``max_events=50`` trims at every open (kills land in it): sequences still only rise."""
    journal = tmp_path / "journal"
    seen = Seen()
    env = {**HOOKED, "KILL_PAD": "3000", "KILL_MAX_EVENTS": "50"}
    kills = ["300", "step:60", "step:80", "bigwrite", "step:100", "step:120", "100", "1"]
    for run, kill_at in enumerate(kills, start=1):
        run_cycle(spawn, journal, "sync", run, kill_at, seen, env=env)
    top = max(s for s, _ in seen.acks.values())
    config = EventConfig(persistence_path=str(journal), durability="sync", max_events=50)
    with PersistentEventBus(config) as bus:
        events = bus.query(EventQuery(), timeout=WAIT)
        assert bus.metrics().journal_lost_events == 0
        after = bus.publish("kill.after", {}).get(timeout=WAIT)
    assert (after.sequence or 0) > top, (
        f"sequence {after.sequence} handed out again (acknowledged {top})"
    )
    assert 0 < len(events) <= 50
    seqs = [e.sequence or 0 for e in events]
    assert seqs == sorted(set(seqs))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "retention left a hole"
    assert seqs[-1] >= top  # the newest are kept, the acknowledged newest among them
    for e in events:
        acked = seen.acks.get(str(e.id))
        assert acked is None or acked[0] == e.sequence
    acked_runs = sorted(seen.by_run)
    for a, b in itertools.pairwise(acked_runs):
        assert max(seen.by_run[a]) < min(seen.by_run[b]), f"run {b} reused run {a}'s sequences"
