"""Opening a damaged journal: the decision comes before any writable open.

A refused open changes nothing in the folder; ``recover="truncate"`` and
``repair()`` salvage with RocksDB's repair what a point-in-time open cannot
read; an I/O problem is a ``JournalError``, never damage.  Real RocksDB in
temporary folders.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from actors import (
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    InvalidEventError,
    JournalDamagedError,
    JournalError,
)
from actors._journal import repair
from actors._journal import rocks as rocks_module
from actors._journal.records import StoredRecord
from actors._journal.rocks import RocksStorage
from actors._model.event import with_fields

N = 300


def _journal(path: Path, n: int = N) -> Path:
    with EventBus(EventConfig(persistence_path=path, durability="sync")) as bus:
        futures = [bus.publish("d.e", {"i": i}) for i in range(n)]
        for future in futures:
            future.get(timeout=30)
    return path


def _snapshot(path: Path, *, info_log: bool = True) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.iterdir())
        if p.is_file() and (info_log or not p.name.startswith("LOG"))
    }


def _manifest(path: Path) -> Path:
    return next(p for p in path.iterdir() if p.name.startswith("MANIFEST-"))


def _flip_middle(file: Path) -> None:
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))


def _stored(path: Path) -> list[int]:
    with EventBus(EventConfig(persistence_path=path, read_only=True)) as bus:
        return [e.sequence or 0 for e in bus.query(EventQuery(), timeout=60)]


def _cut_manifest(path: Path) -> None:
    manifest = _manifest(path)
    os.truncate(manifest, manifest.stat().st_size // 2)


def _delete_current(path: Path) -> None:
    (path / "CURRENT").unlink()


@pytest.mark.parametrize("damage", [_cut_manifest, _delete_current])
def test_a_refused_open_changes_nothing_and_repair_salvages_every_event(
    tmp_path: Path, damage: object
) -> None:
    path = _journal(tmp_path / "j")
    damage(path)  # type: ignore[operator]
    before = _snapshot(path)
    for _ in range(2):  # a second refusal sees the same folder
        with pytest.raises(JournalDamagedError, match="repair"):
            EventBus(EventConfig(persistence_path=path))
        assert _snapshot(path) == before
    report = repair(path)
    assert (report.repaired, report.lost, report.acknowledged) == (True, 0, N)
    assert _stored(path) == list(range(1, N + 1))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed journal whose indexes fill table files of their own (3 types, correlation ids)."""
    path = tmp_path_factory.mktemp("indexed") / "j"
    cid = uuid.UUID(int=7)
    with EventBus(EventConfig(persistence_path=path)) as bus:
        futures = [
            bus.publish(f"t.{'abc'[i % 3]}", {"i": i, "pad": "x" * 50}, correlation_id=cid)
            for i in range(3000)
        ]
        futures[-1].get(timeout=60)
    return path


@pytest.mark.parametrize("kept", [0.5, 0.75, 0.85, 0.95])
def test_a_cut_manifest_that_drops_only_the_indexes_is_refused_without_a_change(
    indexed: Path, tmp_path: Path, kept: float
) -> None:
    # The records are still listed, the index tables no longer: the open's
    # check of the indexes refuses it, and RocksDB's writable open (which
    # deletes the files a MANIFEST does not list) must not have run first.
    path = tmp_path / "j"
    shutil.copytree(indexed, path)
    manifest = _manifest(path)
    os.truncate(manifest, int(manifest.stat().st_size * kept))
    before = _snapshot(path)
    try:
        EventBus(EventConfig(persistence_path=path)).close()
    except JournalDamagedError:
        assert _snapshot(path) == before
        report = repair(path)
        assert report.lost == 0
        assert len(_stored(path)) == 3000
    else:  # the cut kept every table listed: a journal that opens whole
        assert kept > 0.5
        assert len(_stored(path)) == 3000


def test_truncate_salvages_a_journal_without_current(tmp_path: Path) -> None:
    path = _journal(tmp_path / "j")
    _delete_current(path)
    with EventBus(EventConfig(persistence_path=path, recover="truncate")) as bus:
        assert len(bus.query(EventQuery(), timeout=60)) == N
        assert bus.publish("d.e", {}).get(timeout=30).sequence == N + 1
        assert bus.metrics().journal_lost_events == 0


def test_a_folder_with_tables_but_no_current_is_not_a_new_journal(tmp_path: Path) -> None:
    path = _journal(tmp_path / "j")
    _delete_current(path)
    with pytest.raises(JournalDamagedError):
        RocksStorage(path)
    assert not (path / "CURRENT").exists()
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=path, read_only=True))


def _flip_current(path: Path) -> None:
    current = path / "CURRENT"
    raw = bytearray(current.read_bytes())
    raw[3] ^= 0xFF
    current.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: _flip_middle(_manifest(p)),
        lambda p: _manifest(p).unlink(),
        _flip_current,
    ],
    ids=["manifest-flipped", "manifest-deleted", "current-flipped"],
)
def test_repair_runs_rocksdb_repair_when_nothing_else_reads_the_journal(
    tmp_path: Path, damage: object
) -> None:
    path = _journal(tmp_path / "j")
    damage(path)  # type: ignore[operator]
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=path))
    report = repair(path)
    assert (report.repaired, report.lost) == (True, 0)
    assert _stored(path) == list(range(1, N + 1))


def test_an_unwritable_folder_is_an_error_not_damage(tmp_path: Path) -> None:
    path = _journal(tmp_path / "j")
    (path / "LOCK").unlink()
    (path / "LOCK").mkdir()  # RocksDB cannot take its lock: an I/O error
    before = _snapshot(path, info_log=False)
    for recover in ("refuse", "truncate"):
        with pytest.raises(JournalError) as info:
            EventBus(EventConfig(persistence_path=path, recover=recover))  # type: ignore[arg-type]
        assert not isinstance(info.value, JournalDamagedError)
        assert "LOCK" in str(info.value)
    with pytest.raises(JournalError) as info:
        repair(path)
    assert not isinstance(info.value, JournalDamagedError)
    assert _snapshot(path, info_log=False) == before  # the write-ahead log is still there
    assert _stored(path) == list(range(1, N + 1))


def _my_views() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), f"actors-journal-ro-{os.getpid()}-*")))


def test_failed_opens_leave_no_view_behind(tmp_path: Path) -> None:
    path = _journal(tmp_path / "j", 10)
    _flip_middle(_manifest(path))
    before = _my_views()
    for read_only in (False, True, False):
        with pytest.raises(JournalError):
            EventBus(EventConfig(persistence_path=path, read_only=read_only))
    assert _my_views() == before


def test_an_acknowledged_mark_that_is_a_folder_is_a_journal_error(tmp_path: Path) -> None:
    path = _journal(tmp_path / "j", 10)
    (path / "ACKNOWLEDGED").unlink()
    (path / "ACKNOWLEDGED").mkdir()
    for read_only in (True, False):
        with pytest.raises(JournalError, match="ACKNOWLEDGED"):
            EventBus(EventConfig(persistence_path=path, read_only=read_only))


def test_a_journal_whose_acknowledged_mark_was_deleted_opens_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without its mark a journal cannot tell acknowledged events lost before
    # the open; that check went off without a word.  A new journal, which
    # has no mark yet either, opens quietly, and the first write restores it.
    path = tmp_path / "j"
    with caplog.at_level(logging.WARNING, logger="actors.storage"):
        _journal(path, 10)
        assert not caplog.records, caplog.text
        (path / "ACKNOWLEDGED").unlink()
        for read_only in (True, False):  # the writable open makes the file, empty
            with EventBus(EventConfig(persistence_path=path, read_only=read_only)) as bus:
                assert len(bus.query(EventQuery())) == 10
            [record] = caplog.records
            assert record.name == "actors.storage"  # as docs/persistence.md says
            assert "no acknowledged mark (ACKNOWLEDGED)" in record.getMessage()
            assert "up to sequence 10" in record.getMessage()
            caplog.clear()
        # An empty mark is a writer's that has acknowledged nothing yet (one
        # killed between its first write and its mark's looks the same): quiet.
        with EventBus(EventConfig(persistence_path=path)) as bus:
            bus.publish("d.e", {}).get(timeout=30)
        with EventBus(EventConfig(persistence_path=path)):
            pass
        assert not caplog.records, caplog.text


def test_a_read_only_open_whose_mark_a_writer_made_meanwhile_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only open reads the mark before it opens its view; a writer
    # opening beside it in between makes the file (empty) and writes: its
    # events are in the view, and the mark was "missing" (9 of 40 opens warned).
    path = _journal(tmp_path / "j", 10)
    (path / "ACKNOWLEDGED").unlink()
    real = rocks_module.HighWaterMark

    def then_a_writer_opens(folder: str, *, writable: bool) -> Any:
        mark = real(folder, writable=writable)
        (path / "ACKNOWLEDGED").touch()  # what a writer's open does first
        return mark

    monkeypatch.setattr(rocks_module, "HighWaterMark", then_a_writer_opens)
    with (
        caplog.at_level(logging.WARNING, logger="actors.storage"),
        EventBus(EventConfig(persistence_path=path, read_only=True)) as bus,
    ):
        assert len(bus.query(EventQuery())) == 10
    assert not caplog.records, caplog.text


def test_a_source_the_journal_cannot_store_is_refused_by_event() -> None:
    Event(event_type="a.b", source="s" * 65535)
    Event(event_type="a.b", source="\u00e9" * 32767)  # 65,534 bytes
    for source in ("s" * 65536, "\u00e9" * 32768, "\u2603" * 21846):
        with pytest.raises(InvalidEventError, match="65535"):
            Event(event_type="a.b", source=source)


def test_an_unstorable_source_fails_only_its_own_publish(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        # An event built without checks (as one decoded from elsewhere).
        bad = with_fields(Event(event_type="d.bad"), source="s" * 70000)
        good_a, bad_f, good_b = bus.publish_many(
            [Event(event_type="d.a"), bad, Event(event_type="d.b")]
        )
        assert good_a.get(timeout=30).event_type == "d.a"
        assert good_b.get(timeout=30).event_type == "d.b"
        with pytest.raises(JournalError, match="source"):
            bad_f.get(timeout=30)
        assert bus.publish("d.c", {}).get(timeout=30).event_type == "d.c"
        stored = [e.event_type for e in bus.query(EventQuery(), timeout=30)]
    assert stored == ["d.a", "d.b", "d.c"]


def test_a_filtered_scan_from_the_earliest_time_with_skew(tmp_path: Path) -> None:
    with RocksStorage(tmp_path / "j") as s:
        s.append(
            [
                StoredRecord(1, "a.x", 1_000, None, None, b"1"),
                StoredRecord(2, "a.x", 0, None, None, b"2"),  # 1,000 us of skew
                StoredRecord(3, "b.y", 2_000, None, None, b"3"),
            ]
        )
        rows = s.scan(type_matcher=lambda t: t == "a.x", time_range_us=(-(2**63), 2**63 - 1))
        assert [seq for seq, _ in list(rows)] == [1, 2]


def test_retention_of_the_newest_records_keeps_their_sequences_spoken_for(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    with RocksStorage(path) as s:
        s.append([StoredRecord(i, "a.x", i, None, None, b"") for i in (1, 2, 3)])
        assert s.delete_before(10) == 3
    with RocksStorage(path) as s:  # the acknowledged 3 are accounted for, not lost
        assert s.get_checkpoint("$bus.high_water") == 3


def test_a_read_only_open_beside_a_writer_that_replaces_its_table_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    real = rocksdict.Rdict
    with RocksStorage(path) as writer:
        writer.append([StoredRecord(i, "a.x", i, None, None, b"x" * 100) for i in range(1, 101)])
        writer._db.flush()  # noqa: SLF001 - the writer's own table files
        replaced: list[bool] = []

        def racing(where: str, *args: Any, **kwargs: Any) -> Any:
            if "access_type" in kwargs and not replaced:
                # The writer writes, flushes and compacts after the view listed the folder.
                replaced.append(True)
                writer.append([StoredRecord(101, "a.x", 101, None, None, b"y")])
                writer._db.flush()  # noqa: SLF001
                writer._db.compact_range(None, None)  # noqa: SLF001
            return real(where, *args, **kwargs)

        racing.list_cf = real.list_cf  # type: ignore[attr-defined]
        monkeypatch.setattr(rocksdict, "Rdict", racing)
        with RocksStorage(path, read_only=True) as reader:
            assert reader.last_sequence() >= 100
        assert replaced
