"""The journal's damage promises at their edges (docs/persistence.md, *Damage*).

"A damaged journal is never silently shorter: every kind of damage ends in a
clear error or in a warned, counted, sequence-safe open."  Real RocksDB in
temporary folders; a child process killed with SIGKILL where the events must
be in the write-ahead log only.  Each table file is told apart by the shape of
its first key, as in ``tests/test_journal_rebuild.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from actors import EventBus, EventConfig, EventQuery, JournalDamagedError
from actors._journal import repair
from tests._support import Child, flip_byte
from tests.test_journal_rebuild import table_files

pytestmark = pytest.mark.slow

N1 = 1000  # events of the first session, closed cleanly: in table files
N2 = 1000  # events of the second session: see each fixture
TOTAL = N1 + N2


def _publish_closed(path: Path, n: int) -> None:
    with EventBus(EventConfig(persistence_path=path)) as bus:
        futures = [bus.publish("t.event", {"i": i, "pad": "x" * 50}) for i in range(n)]
        for future in futures:
            future.get(timeout=30)


def _sequences(path: Path, **config: object) -> list[int]:
    with EventBus(EventConfig(persistence_path=path, **config)) as bus:  # type: ignore[arg-type]
        return [e.sequence or 0 for e in bus.query(EventQuery())]


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sequences 1..N1 in one record table, N1+1..TOTAL in a second one (two clean closes)."""
    path = tmp_path_factory.mktemp("two") / "journal"
    _publish_closed(path, N1)
    _publish_closed(path, N2)
    assert len(table_files(path)["default"]) == 2
    return path


@pytest.fixture(scope="module")
def tables_then_wal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sequences 1..N1 in table files; N1+1..TOTAL acknowledged (sync) in the WAL only."""
    folder = tmp_path_factory.mktemp("wal")
    path = folder / "journal"
    _publish_closed(path, N1)
    child = Child(folder, "write-n", str(path), str(N2))
    try:
        assert child.line() == f"acked {TOTAL}"
        child.kill9()
    finally:
        child.close()
    return path


@pytest.fixture
def copy_of(tmp_path: Path):
    def make(template: Path) -> Path:
        path = tmp_path / "journal"
        shutil.copytree(template, path)
        return path

    return make


def test_repair_of_an_unreadable_older_record_table_reports_what_it_lost(
    two_tables: Path, copy_of
) -> None:
    """The footer of the older record table is flipped: RocksDB cannot read the journal.

    Documented: the default open refuses (it does), and ``repair()`` "accepts the
    loss and reports it": ``lost`` must count every acknowledged event that is gone.
    """
    path = copy_of(two_tables)
    older = table_files(path)["default"][0]
    flip_byte(older, older.stat().st_size - 20)  # the table's footer
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=path))
    report = repair(path)
    present = _sequences(path)
    missing = TOTAL - len(present)
    assert missing == N1  # RocksDB's repair set the whole table aside in lost/
    # Observed: lost=0, lost_range=None (only a missing *tail* is ever counted).
    assert report.lost == missing, report


def test_a_truncate_open_of_an_unreadable_older_record_table_counts_the_loss(
    two_tables: Path, copy_of
) -> None:
    path = copy_of(two_tables)
    older = table_files(path)["default"][0]
    os.truncate(older, older.stat().st_size // 2)
    with EventBus(EventConfig(persistence_path=path, recover="truncate")) as bus:
        present = bus.query(EventQuery())
        lost = bus.metrics().journal_lost_events
    assert len(present) == N2
    # Observed: journal_lost_events == 0 although sequences 1..N1 are gone.
    assert lost == N1


def test_a_damaged_first_record_block_is_skipped_and_counted_and_repair_leaves_it_open(
    two_tables: Path, copy_of
) -> None:
    """A flipped byte in the first block of the record table.

    As for a flipped byte in the middle of a record table: the journal opens,
    the unreadable block is skipped and counted (``journal_corrupt_records``),
    and ``repair()`` leaves a journal that opens with the default settings.
    (It used to refuse for ever: the check on open counted the records from
    the first readable one, the survey from the unreadable block.)
    """
    path = copy_of(two_tables)
    flip_byte(table_files(path)["default"][0], 0)
    with EventBus(EventConfig(persistence_path=path)) as bus:
        present = [e.sequence for e in bus.query(EventQuery())]
        corrupt = bus.metrics().journal_corrupt_records
    assert present[-1] == TOTAL
    assert corrupt > 0
    assert len(present) < TOTAL
    repair(path)
    assert _sequences(path)[-1] == TOTAL


def test_a_flipped_byte_at_the_start_of_the_meta_table_is_damage_that_repair_salvages(
    two_tables: Path, copy_of
) -> None:
    """Observed: ``JournalError`` ("cannot open journal: Corruption: block checksum
    mismatch"), documented as the error for I/O failures "never
    JournalDamagedError, and nothing is repaired"; and ``repair()`` raises the
    same ``JournalError`` instead of salvaging: the journal cannot be opened by
    any documented means although every record is intact.
    """
    path = copy_of(two_tables)
    flip_byte(table_files(path)["meta"][0], 0)
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=path))
    report = repair(path)
    assert report.lost == 0
    assert _sequences(path) == list(range(1, TOTAL + 1))


@pytest.mark.parametrize("keep", [1, 91])
def test_a_manifest_cut_near_its_start_is_a_damaged_journal_not_a_foreign_one(
    two_tables: Path, copy_of, keep: int
) -> None:
    """Documented: "A damaged CURRENT or MANIFEST (cut, flipped byte, deleted): the
    default open raises JournalDamagedError ... repair() run[s] RocksDB's repair".
    Observed: ``JournalNotFoundError`` ("a RocksDB but not a journal (no 'meta'
    column family)") from the open and from ``repair()``, which never tries.
    """
    path = copy_of(two_tables)
    (manifest,) = path.glob("MANIFEST-*")
    os.truncate(manifest, keep)
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=path))
    report = repair(path)
    assert report.lost == 0
    assert _sequences(path) == list(range(1, TOTAL + 1))


@pytest.mark.parametrize("family", ["by_type", "by_time", "meta"])
def test_repair_of_a_lost_index_or_meta_table_keeps_the_events_in_the_wal(
    tables_then_wal: Path, copy_of, family: str
) -> None:
    """A table file lost while the newest acknowledged events are only in the WAL.

    RocksDB's repair drops the rest of every WAL batch after a write to the
    column family that lost its table (by_type or by_time: 984 of the 1000
    logged events; meta: sequences 1001..1064).  That loss must be reported:
    ``repair()`` used to report lost=39 and lost=0.
    """
    path = copy_of(tables_then_wal)
    for table in table_files(path)[family]:
        table.unlink()
    report = repair(path)
    present = _sequences(path)
    # RocksDB's repair keeps only part of the log's batches that touched the
    # family that lost its table (docs/persistence.md, "A lost table file"):
    # whatever it keeps, the loss is reported, never silently shorter.
    assert report.lost == TOTAL - len(present), report
    assert present == sorted(present)
    with EventBus(EventConfig(persistence_path=path)) as bus:  # opens clean
        assert bus.publish("t.after", None).get(timeout=30).sequence == TOTAL + 1


def test_a_damaged_last_block_of_the_time_index_is_rebuilt_by_repair(
    two_tables: Path, copy_of
) -> None:
    """Documented: "In an index (by_type, by_time, by_cid), a read error raises
    JournalError from the query that needed it; reads that do not use that index
    still work ... repair() finds the index unreadable and rebuilds it from the
    records."  Observed: every open walks ``by_time`` backwards (``_load_meta``),
    so the open itself raises ``JournalError`` ("journal read failed:
    Corruption"), and so does ``repair()``: no documented way opens the journal.
    """
    path = copy_of(two_tables)
    newest = table_files(path)["by_time"][-1]
    flip_byte(newest, newest.stat().st_size * 9 // 10)  # the last data block
    report = repair(path)
    assert report.lost == 0
    assert "by_time" in report.rebuilt
    assert _sequences(path) == list(range(1, TOTAL + 1))
