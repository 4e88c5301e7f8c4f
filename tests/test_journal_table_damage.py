"""A flipped byte in a table (.sst) file after a clean close: every read either skips the
damaged block with a count and a warning, resuming in order, or raises ``JournalError``;
no forward read stops early in silence.
"""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors import Event, EventBus, EventConfig, EventQuery, JournalError
from actors._journal import repair
from tests._support import WAIT, flip_byte

N = 20_000


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed journal of N events (the memtables flushed to table files at close)."""
    path = tmp_path_factory.mktemp("tables") / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        futures = [bus.publish("t.event", {"i": i, "pad": "x" * 100}) for i in range(N)]
        futures[-1].get(timeout=60)
    return path


def tables(path: Path) -> list[Path]:
    """The table files, largest first: records, time index, type index, meta."""
    files = sorted(path.glob("*.sst"), key=lambda p: p.stat().st_size, reverse=True)
    assert len(files) == 4, files
    return files


@pytest.fixture
def damaged_records(written: Path, tmp_path: Path) -> Path:
    path = tmp_path / "journal"
    shutil.copytree(written, path)
    records = tables(path)[0]
    flip_byte(records, records.stat().st_size // 2)
    return path


def test_forward_reads_skip_the_damaged_block_with_a_count_and_a_warning(
    damaged_records: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="actors.storage"),
        EventBus(EventConfig(persistence_path=damaged_records)) as bus,
    ):
        events = bus.query(EventQuery())
        lost = N - len(events)
        assert 0 < lost < 1000  # one block, not the rest of the journal
        sequences = [e.sequence for e in events]
        assert sequences == sorted(sequences)
        assert sequences[-1] == N  # read on past the damage
        present = set(sequences)
        gap = [s for s in range(1, N + 1) if s not in present]
        assert gap == list(range(gap[0], gap[0] + lost))  # one contiguous block
        assert f"{lost} record(s) in sequences {gap[0]}..{gap[-1]}" in caplog.text
        assert bus.metrics().journal_corrupt_records == lost
        # Counted once, however often read; replay and pages see the same.
        assert bus.replay(EventQuery(), lambda e: None, page_size=500) == N - lost
        assert bus.metrics().journal_corrupt_records == lost
        # Backwards, the same records (RocksDB's reverse step fails one record
        # early, which is then read on its own), counted once.
        newest = [e.sequence or 0 for e in bus.query(EventQuery(descending=True))]
        assert newest == sequences[::-1]
        assert bus.metrics().journal_corrupt_records == lost
        after = bus.query(EventQuery(after_sequence=gap[0] - 2, limit=3))
        assert [e.sequence for e in after] == [gap[0] - 1, gap[-1] + 1, gap[-1] + 2]


@pytest.mark.parametrize("keep", [10, 100, N // 2 + 2000])
def test_retention_keeps_the_newest_events_whatever_block_is_damaged(
    damaged_records: Path, keep: int
) -> None:
    # docs/persistence.md: "max_events: keep the newest max_events events by
    # sequence".  The unreadable records of the damaged block are as old as
    # their sequences: they go in their turn.  Before, they counted towards
    # max_events and could not be deleted: newer readable events went in
    # their place (with max_events=10, every readable one).
    config = EventConfig(persistence_path=damaged_records, max_events=keep)
    with EventBus(config) as bus:
        # The journal's first turn enforces retention: every read comes after it.
        events = [e.sequence for e in bus.query(EventQuery())]
        lost = bus.metrics().journal_corrupt_records
        assert 0 < lost < 1000
        if keep < N // 2:
            assert events == list(range(N - keep + 1, N + 1))
        else:  # the damaged block is among the newest kept: kept, unreadable
            assert events[-1] == N
            assert len(events) == keep - lost
            assert events[0] == N - keep + 1
        assert [e.sequence for e in bus.query(EventQuery(descending=True))] == events[::-1]
        published = bus.publish("t.event", {"after": True}).get(timeout=WAIT)
        assert [e.sequence for e in bus.query(EventQuery(descending=True, limit=1))] == [
            published.sequence
        ]
    with EventBus(EventConfig(persistence_path=damaged_records)) as reopened:
        assert reopened.query(EventQuery(descending=True, limit=1))[0].sequence == N + 1


def test_a_catch_up_subscription_reads_past_the_damage_and_goes_live(
    damaged_records: Path,
) -> None:
    seen: list[int] = []
    live = threading.Event()

    def handler(event: Event) -> None:
        seen.append(event.sequence or 0)
        if event.event_type == "t.live":
            live.set()

    with EventBus(EventConfig(persistence_path=damaged_records)) as bus:
        bus.subscribe("t.*", handler, from_sequence=1)
        bus.publish("t.live", {}).get(timeout=WAIT)
        assert live.wait(WAIT)
        bus.flush(timeout=WAIT)
        assert seen[-1] == N + 1
        assert len(seen) == N + 1 - bus.metrics().journal_corrupt_records
        assert seen == sorted(seen)


def test_a_damaged_index_block_raises_instead_of_ending_early(
    written: Path, tmp_path: Path
) -> None:
    path = tmp_path / "journal"
    shutil.copytree(written, path)
    time_index = tables(path)[1]
    flip_byte(time_index, time_index.stat().st_size // 2)
    with EventBus(EventConfig(persistence_path=path)) as bus:
        with pytest.raises(JournalError, match="journal read failed"):
            bus.query(EventQuery(time_range=(datetime(2000, 1, 1, tzinfo=UTC), None)))
        # The record space is intact: unindexed reads still see everything.
        assert len(bus.query(EventQuery())) == N


@pytest.mark.parametrize("index", ["by_type", "by_time"])
@pytest.mark.parametrize("where", [0.0, 0.5])
def test_repair_rebuilds_an_index_whatever_block_of_it_is_damaged(
    written: Path, tmp_path: Path, index: str, where: float
) -> None:
    # A damaged first block used to outlive the rebuild under its range
    # delete: repair() failed its own check and left the journal refused.
    path = tmp_path / "journal"
    shutil.copytree(written, path)
    (table,) = [t for t in tables(path) if index.encode() in t.read_bytes()]
    flip_byte(table, int(table.stat().st_size * where))
    report = repair(path)
    assert index in report.rebuilt
    assert report.lost == 0
    with EventBus(EventConfig(persistence_path=path)) as bus:  # opens, refusing nothing
        since = datetime(2000, 1, 1, tzinfo=UTC)
        assert len(bus.query(EventQuery(time_range=(since, None)))) == N
        assert len(bus.query(EventQuery(event_types=["t.event"]))) == N
    assert repair(path).rebuilt == ()  # nothing left to rebuild


def test_a_read_error_kept_by_its_caller_does_not_keep_the_journal_locked(
    written: Path, tmp_path: Path
) -> None:
    # The error's frames held iterators over the database: closed, the bus
    # still could not be opened again while the caller kept the error.
    path = tmp_path / "journal"
    shutil.copytree(written, path)
    (table,) = [t for t in tables(path) if b"by_time" in t.read_bytes()]
    flip_byte(table, 0)
    kept: list[JournalError] = []
    with EventBus(EventConfig(persistence_path=path)) as bus:
        try:
            bus.query(EventQuery(time_range=(datetime(2000, 1, 1, tzinfo=UTC), None)))
        except JournalError as exc:
            kept.append(exc)
    assert kept
    with EventBus(EventConfig(persistence_path=path)) as bus:  # the error is still held
        assert len(bus.query(EventQuery())) == N
