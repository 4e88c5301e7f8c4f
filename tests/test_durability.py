"""Durability across real OS processes: kill -9, journal locks, a full disk, durable resume.

The child processes run ``tests/_journal_child.py``; each prints what it had
acknowledged, line by line and flushed, before the parent kills it.  Then the
parent reopens the journal and checks that nothing acknowledged is missing.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import EventBus, EventConfig, EventQuery, JournalError, JournalLockedError
from tests._support import WAIT, Child

pytestmark = pytest.mark.slow


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def spawn(children: list[Child], tmp_path: Path, *args: str) -> Child:
    child = Child(tmp_path, *args)
    children.append(child)
    return child


def acks(lines: list[str]) -> dict[int, str]:
    """Map each acknowledged sequence to its event id."""
    out = {}
    for line in lines:
        kind, *rest = line.split()
        if kind == "ack":
            out[int(rest[0])] = rest[1]
    return out


def stored(path: Path, pattern: str) -> dict[int, str]:
    with EventBus(EventConfig(persistence_path=str(path))) as bus:
        return {e.sequence or 0: str(e.id) for e in bus.query(EventQuery(event_types=[pattern]))}


# -- kill -9 ---------------------------------------------------------------------------


def test_sync_writer_killed_loses_no_acknowledged_event(
    tmp_path: Path, children: list[Child]
) -> None:
    journal = tmp_path / "journal"
    child = spawn(children, tmp_path, "sync-writer", str(journal), "4")
    lines = [child.line() for _ in range(400)]
    lines += child.kill9()
    acknowledged = acks(lines)
    assert len(acknowledged) >= 400
    on_disk = stored(journal, "load.sync")
    missing = {s: i for s, i in acknowledged.items() if on_disk.get(s) != i}
    assert not missing, f"{len(missing)} acknowledged event(s) lost, e.g. {list(missing)[:5]}"
    # Sequences stay dense: nothing acknowledged sits after a hole.
    assert sorted(on_disk) == list(range(1, len(on_disk) + 1))


def test_async_writer_killed_after_flush_loses_nothing_flushed(
    tmp_path: Path, children: list[Child]
) -> None:
    journal = tmp_path / "journal"
    n = 3000
    child = spawn(children, tmp_path, "async-writer", str(journal), str(n))
    first = child.line()
    kind, last = first.split()
    assert kind == "flushed"
    lines = [child.line() for _ in range(50)]
    lines += child.kill9()
    on_disk = stored(journal, "load.async")
    assert set(range(1, int(last) + 1)) <= set(on_disk), "flushed events lost"
    assert int(last) == n
    # A publish future of a persistent bus resolves only once the journal
    # wrote the event (WAL in the OS's page cache), so acknowledged events
    # after the flush survive a killed process too.
    acknowledged = acks(lines)
    assert acknowledged
    assert all(on_disk.get(s) == i for s, i in acknowledged.items())


def test_reopen_after_kill_continues_sequences(tmp_path: Path, children: list[Child]) -> None:
    journal = tmp_path / "journal"
    child = spawn(children, tmp_path, "sync-writer", str(journal), "2")
    lines = [child.line() for _ in range(100)]
    lines += child.kill9()
    with EventBus(EventConfig(persistence_path=str(journal))) as bus:
        last = max(e.sequence or 0 for e in bus.query(EventQuery(descending=True, limit=1)))
        assert last >= max(acks(lines))
        assert bus.publish("after.restart").get(timeout=10).sequence == last + 1


# -- locks -------------------------------------------------------------------------------


def test_second_process_gets_journal_locked_and_the_first_keeps_working(
    tmp_path: Path, children: list[Child]
) -> None:
    journal = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=str(journal), durability="sync")) as bus:
        before = bus.publish("lock.e", 1).get(timeout=10)
        child = spawn(children, tmp_path, "try-open", str(journal))
        kind, name, *_ = child.line().split()
        assert (kind, name) == ("error", "JournalLockedError")
        assert child.proc.wait(timeout=30) == 0
        after = bus.publish("lock.e", 2).get(timeout=10)
        assert [e.id for e in bus.query(EventQuery(event_types=["lock.e"]))] == [
            before.id,
            after.id,
        ]
    # Closed: another process may open it now.
    child = spawn(children, tmp_path, "try-open", str(journal))
    assert child.line() == "opened"


def test_journal_held_by_another_process_fails_the_constructor(
    tmp_path: Path, children: list[Child]
) -> None:
    journal = tmp_path / "journal"
    child = spawn(children, tmp_path, "hold", str(journal))
    assert child.line() == "opened"
    with pytest.raises(JournalLockedError, match="locked"):
        EventBus(EventConfig(persistence_path=str(journal)))
    child.send("publish")
    assert child.line() == "ack 1"
    child.send("close")
    assert child.line() == "closed"
    assert child.proc.wait(timeout=30) == 0
    with EventBus(EventConfig(persistence_path=str(journal))) as bus:
        assert [e.data for e in bus.query(EventQuery())] == [{"from": "child"}]


# -- write errors (a full tmpfs) --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """Mount a 4 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_fails_publishes_with_journal_error_and_loses_nothing_acknowledged(
    small_disk: Path, tmp_path: Path, children: list[Child]
) -> None:
    journal = small_disk / "journal"
    child = spawn(children, tmp_path, "fill", str(journal), "20000", "1000")
    lines = []
    while (line := child.line()) != "closed":
        lines.append(line)
    assert child.proc.wait(timeout=30) == 0, child.stderr()
    assert lines[-1] == "closing"
    outcomes = lines[:-1]
    errors = [line.split(maxsplit=3) for line in outcomes if line.startswith("error")]
    acknowledged = acks(outcomes)
    # Every publish either resolved or failed; none went silently missing.
    assert len(errors) + len(acknowledged) == len(outcomes)
    assert acknowledged, "the disk was full from the start"
    assert errors, "the disk never filled up"
    assert {name for _, _, name, _ in errors} == {JournalError.__name__}
    assert all("No space left on device" in message for *_, message in errors)
    # Once it failed, later publishes fail too: no success after a lost write.
    first_error = outcomes.index(next(line for line in outcomes if line.startswith("error")))
    assert all(line.startswith("error") for line in outcomes[first_error:])

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    on_disk = stored(journal, "fill.event")
    assert all(on_disk.get(s) == i for s, i in acknowledged.items())


def test_close_after_a_write_error_releases_the_journal(small_disk: Path) -> None:
    journal = small_disk / "journal"
    config = EventConfig(persistence_path=str(journal), durability="sync")
    bus = EventBus(config)
    payload = "x" * 20000
    with pytest.raises(JournalError):  # noqa: PT012 - publish until the disk is full
        for i in range(1000):
            bus.publish("fill.event", {"i": i, "p": payload}).get(timeout=30)
    bus.close(timeout=30)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    EventBus(config).close()


# -- durable subscriptions across a kill -----------------------------------------------------------


def test_durable_subscriber_killed_resumes_after_its_checkpoint(
    tmp_path: Path, children: list[Child]
) -> None:
    journal = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=str(journal))) as bus:
        for i in range(5):
            bus.publish("job.setup", {"i": i})
    # Run 1: handles the 5 stored events, then 20 live ones one by one; the
    # handler of the 12th blocks, and the child is killed there.
    first = spawn(children, tmp_path, "durable", str(journal), "worker", "12", "20")
    lines = []
    while not (line := first.line()).startswith("barrier"):
        lines.append(line)
    lines += first.kill9()
    handled1 = [int(x.split()[1]) for x in lines if x.startswith("handled")]
    blocked = [int(x.split()[1]) for x in lines if x.startswith("blocking")]
    assert len(blocked) == 1
    assert handled1 == list(range(1, blocked[0]))

    # Run 2: the same name resumes after the checkpoint and publishes 3 more.
    second = spawn(children, tmp_path, "durable", str(journal), "worker", "0", "3")
    lines = []
    while (line := second.line()) != "done":
        lines.append(line)
    assert second.proc.wait(timeout=30) == 0
    handled2 = [int(x.split()[1]) for x in lines if x.startswith("handled")]
    all_jobs = sorted(stored(journal, "job.*"))
    # At least once: nothing missing.  Only the batch in flight at the kill
    # (the one blocked event) is delivered again.
    assert set(handled1) | set(handled2) == set(all_jobs)
    assert handled2 == [s for s in all_jobs if s >= blocked[0]]


# Regression: accepted on a read-only bus, it never saved its checkpoint, without a word.
def test_a_durable_subscription_on_a_read_only_bus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        bus.publish("a.b", 1).get(timeout=30)
    with EventBus(EventConfig(persistence_path=path, read_only=True)) as reader:
        with pytest.raises(JournalError, match="durable subscription is refused"):
            reader.subscribe("a.*", lambda e: None, durable="w")
        got: list[object] = []
        reader.subscribe("a.*", lambda e: got.append(e.data), from_sequence=1)  # still works
        reader.flush(30)
        assert got == [1]


def test_a_sync_publish_is_acknowledged_only_once_the_wal_is_fsynced(
    journal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``durability="sync"``: a publish's future resolves after the WAL's fsync.  With
    the fsync taken out, every other test of sync durability still passed."""
    from actors._journal.rocks_store import RocksTables  # noqa: PLC0415

    syncing, release = threading.Event(), threading.Event()
    fsync = RocksTables._sync_wal  # noqa: SLF001

    def held(self: RocksTables) -> None:
        syncing.set()
        assert release.wait(WAIT), "the test never released the fsync"
        fsync(self)

    with EventBus(EventConfig(persistence_path=journal, durability="sync")) as bus:
        monkeypatch.setattr(RocksTables, "_sync_wal", held)
        future = bus.publish("sync.x", 1)
        assert syncing.wait(WAIT)  # the WAL's fsync is asked for...
        assert not future.done()  # ...and the publish waits for it
        release.set()
        assert future.get(timeout=WAIT).sequence is not None
