"""A damaged write-ahead log after a kill -9: refused by default, or a warned, counted,
sequence-safe open with ``recover="truncate"``; never a silently shorter journal.

A child process writes N events with ``durability="sync"`` (every future
resolved: all N acknowledged) and is killed with SIGKILL, so the events are
in RocksDB's WAL only.  The parent then flips a byte in the middle of the WAL,
or cuts it short, and reopens.
"""

from __future__ import annotations

import logging
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors import Event, EventBus, EventConfig, EventQuery, JournalDamagedError
from actors._journal import repair
from actors._journal.rocks import RocksStorage
from tests._support import Child, flip_byte

pytestmark = pytest.mark.slow

N = 3000


@pytest.fixture
def killed_writer(tmp_path: Path) -> Path:
    """Return a journal whose writer acknowledged N events and was killed -9."""
    path = tmp_path / "journal"
    child = Child(tmp_path, "write-n", str(path), str(N))
    try:
        assert child.line() == f"acked {N}"
        child.kill9()
    finally:
        child.close()
    return path


def wal_of(path: Path) -> Path:
    logs = sorted(path.glob("*.log"))
    assert len(logs) == 1, logs
    assert logs[0].stat().st_size > 100_000  # the N events are in it
    return logs[0]


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.name not in {"LOCK"}}


def test_an_undamaged_wal_after_a_kill_opens_with_everything(killed_writer: Path) -> None:
    with EventBus(EventConfig(persistence_path=killed_writer)) as bus:
        assert len(bus.query(EventQuery())) == N
        assert bus.metrics().journal_lost_events == 0
        assert bus.publish("after.kill", {}).get(timeout=30).sequence == N + 1


def test_a_flipped_wal_byte_refuses_to_open_and_changes_nothing(killed_writer: Path) -> None:
    wal = wal_of(killed_writer)
    flip_byte(wal, wal.stat().st_size // 2)
    before = snapshot(killed_writer)
    with pytest.raises(JournalDamagedError, match="write-ahead log") as info:
        EventBus(EventConfig(persistence_path=killed_writer))
    assert "acknowledged event(s), sequences" in str(info.value)
    assert f"..{N}." in str(info.value)
    assert "recover='truncate'" in str(info.value)
    assert "repair" in str(info.value)
    after = snapshot(killed_writer)
    assert {k: v for k, v in after.items() if not k.startswith("LOG")} == {
        k: v for k, v in before.items() if not k.startswith("LOG")
    }
    # Read-only refuses the same way.
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=killed_writer, read_only=True))


def _truncate_open(path: Path, caplog: pytest.LogCaptureFixture) -> tuple[int, int, int]:
    """Open with recover='truncate'; return (events kept, lost, next sequence)."""
    with caplog.at_level(logging.WARNING, logger="actors.journal"):
        bus = EventBus(EventConfig(persistence_path=path, recover="truncate"))
    try:
        kept = len(bus.query(EventQuery()))
        lost = bus.metrics().journal_lost_events
        following = bus.publish("after.loss", {}).get(timeout=30).sequence or 0
    finally:
        bus.close()
    return kept, lost, following


def test_a_flipped_wal_byte_with_truncate_warns_counts_and_keeps_sequences_safe(
    killed_writer: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = wal_of(killed_writer)
    flip_byte(wal, wal.stat().st_size // 2)
    kept, lost, following = _truncate_open(killed_writer, caplog)
    assert 0 < kept < N
    assert lost == N - kept
    assert f"{lost} acknowledged event(s), sequences {kept + 1}..{N}" in caplog.text
    assert following == N + 1  # above every acknowledged sequence: none reused
    # The loss was accepted once: the next open is clean and sequences go on.
    with EventBus(EventConfig(persistence_path=killed_writer)) as bus:
        assert len(bus.query(EventQuery())) == kept + 1
        assert bus.publish("again", {}).get(timeout=30).sequence == N + 2


def test_a_truncated_wal_refuses_then_opens_with_truncate(
    killed_writer: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = wal_of(killed_writer)
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size * 2 // 3 + 5)  # cut inside a record
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=killed_writer))
    kept, lost, following = _truncate_open(killed_writer, caplog)
    assert 0 < kept < N
    assert lost == N - kept
    assert following == N + 1


def test_an_emptied_wal_is_caught_by_the_acknowledged_mark(
    killed_writer: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # RocksDB sees a clean, empty log here; only the side file knows better.
    wal = wal_of(killed_writer)
    with killed_writer.joinpath("ACKNOWLEDGED").open("rb") as f:
        assert int.from_bytes(f.read(8), "big") == N
    with wal.open("r+b") as f:
        f.truncate(0)
    with pytest.raises(JournalDamagedError, match=f"{N} acknowledged event.*1..{N}"):
        EventBus(EventConfig(persistence_path=killed_writer))
    kept, lost, following = _truncate_open(killed_writer, caplog)
    assert (kept, lost) == (0, N)
    assert following == N + 1


def test_repair_accepts_the_loss_and_reports_it(killed_writer: Path) -> None:
    wal = wal_of(killed_writer)
    flip_byte(wal, wal.stat().st_size // 2)
    report = repair(killed_writer)
    assert report.wal_damaged
    assert report.acknowledged == N
    assert report.lost_range == (report.last_sequence + 1, N)
    assert report.lost == N - report.last_sequence
    with EventBus(EventConfig(persistence_path=killed_writer)) as bus:
        assert len(bus.query(EventQuery())) == report.last_sequence
        assert bus.publish("after.repair", {}).get(timeout=30).sequence == N + 1


def test_a_wal_cut_inside_its_last_unacknowledged_write_opens_with_a_warning(
    killed_writer: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process killed while RocksDB appended a large write leaves it cut short.

    That write was never acknowledged (the mark is advanced after it): the
    journal opens with everything before it, warns, and refuses nothing.
    Regression: such a tail was taken for damage, and a node killed while
    journaling a large batch could not be restarted without a repair.
    """
    wal = wal_of(killed_writer)
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 7)  # inside the last write
    view = RocksStorage(str(killed_writer), read_only=True, recover="truncate")
    try:
        kept = view.last_sequence()
    finally:
        view.close()
    assert 0 < kept < N
    # The mark as the kill left it: the cut write was never acknowledged.
    packed = struct.pack(">Q", kept)
    (killed_writer / "ACKNOWLEDGED").write_bytes(packed + struct.pack(">I", zlib.crc32(packed)))
    with caplog.at_level(logging.WARNING, logger="actors.storage"):
        bus = EventBus(EventConfig(persistence_path=killed_writer))
    try:
        assert [e.sequence for e in bus.query(EventQuery())] == list(range(1, kept + 1))
        assert bus.metrics().journal_lost_events == 0
        assert bus.publish("after.kill", {}).get(timeout=30).sequence == kept + 1
    finally:
        bus.close()
    assert any("incomplete write" in r.getMessage() for r in caplog.records)


def test_a_cut_last_write_opens_when_retention_had_taken_every_event_before_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The mark is held against what retention spoke for, not only what is stored.

    Regression: retention had deleted every stored event (its high-water
    checkpoint spoke for them), so the mark (5) stood above the last stored
    sequence (none) and a cut last write was refused as damage.
    """
    path = tmp_path / "journal"
    old = datetime.now(UTC) - timedelta(days=10)
    with EventBus(EventConfig(persistence_path=path, durability="sync")) as bus:
        for i in range(5):
            bus.publish(Event(event_type="old.e", data={"i": i}, timestamp=old)).get(timeout=30)
    child = Child(tmp_path, "write-big", str(path), "3000000", "1")
    try:
        assert child.line() == "acked 6"
        child.kill9()
    finally:
        child.close()
    wal = max(path.glob("*.log"), key=lambda p: p.stat().st_size)
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 7)  # inside the large last write
    packed = struct.pack(">Q", 5)  # the mark as before the cut write
    (path / "ACKNOWLEDGED").write_bytes(packed + struct.pack(">I", zlib.crc32(packed)))
    with caplog.at_level(logging.WARNING, logger="actors.storage"):
        bus = EventBus(EventConfig(persistence_path=path))
    try:
        assert bus.query(EventQuery()) == []
        assert bus.metrics().journal_lost_events == 0
        assert bus.publish("after.kill", {}).get(timeout=30).sequence == 6
    finally:
        bus.close()
    assert any("incomplete write" in r.getMessage() for r in caplog.records)


def test_a_wal_damaged_before_its_last_write_is_still_refused_whatever_the_mark(
    killed_writer: Path,
) -> None:
    """Damage anywhere but in the last write is damage, even with nothing acknowledged lost."""
    wal = wal_of(killed_writer)
    flip_byte(wal, wal.stat().st_size // 2)
    (killed_writer / "ACKNOWLEDGED").unlink()  # no mark: nothing counts as acknowledged
    with pytest.raises(JournalDamagedError, match="damaged write-ahead log"):
        EventBus(EventConfig(persistence_path=killed_writer))
