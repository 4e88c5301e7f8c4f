"""Read-only opens write nothing; a folder that is not a journal is refused untouched;
the info log stays bounded; bad retention settings are refused at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import rocksdict

from actors import (
    EventBus,
    EventConfig,
    EventQuery,
    JournalError,
    JournalLockedError,
    JournalNotFoundError,
)
from actors._journal import repair
from actors._journal.rocks import RocksStorage
from actors._journal.rocks_views import sweep_stale_views
from tests._support import Child


def state(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file's size, mtime and bytes."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(path.iterdir())
    }


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        for i in range(3):
            bus.publish("ro.event", {"i": i}).get(timeout=30)
    return path


def test_read_only_reads_and_writes_nothing_into_the_folder(journal: Path) -> None:
    before = state(journal)
    for _ in range(10):
        with EventBus(EventConfig(persistence_path=journal, read_only=True)) as bus:
            assert [e.data for e in bus.query(EventQuery())] == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert bus.dead_letters() == []
    assert state(journal) == before


def test_read_only_refuses_publishing_with_a_journal_error(journal: Path) -> None:
    with EventBus(EventConfig(persistence_path=journal, read_only=True)) as bus:
        with pytest.raises(JournalError, match="read-only"):
            bus.publish("ro.more", {})
        with pytest.raises(JournalError, match="read-only"):
            bus.publish_many([])
    with EventBus(EventConfig(persistence_path=journal)) as bus:
        assert len(bus.query(EventQuery())) == 3


def test_a_folder_that_is_not_a_journal_is_refused_and_left_alone(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "app.py").write_text("print('hello')\n")
    before = state(project)
    with pytest.raises(JournalNotFoundError, match="holds no journal"):
        EventBus(EventConfig(persistence_path=project, read_only=True))
    assert state(project) == before
    missing = tmp_path / "missing"
    with pytest.raises(JournalNotFoundError):
        EventBus(EventConfig(persistence_path=missing, read_only=True))
    assert not missing.exists()


def test_a_rocksdb_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    db = rocksdict.Rdict(str(other))
    db[b"k"] = b"v"
    db.close()
    with pytest.raises(JournalNotFoundError, match="not a journal"):
        RocksStorage(other, read_only=True)


def test_read_only_opens_beside_a_live_writer(journal: Path, tmp_path: Path) -> None:
    holder = Child(tmp_path, "hold", str(journal))
    try:
        assert holder.line() == "opened"
        holder.send("publish")
        assert holder.line() == "ack 4"
        with EventBus(EventConfig(persistence_path=journal, read_only=True)) as bus:
            assert [e.sequence for e in bus.query(EventQuery())] == [1, 2, 3, 4]
        holder.send("close")
        assert holder.line() == "closed"
    finally:
        holder.close()


def test_the_info_log_stays_bounded(journal: Path) -> None:
    for _ in range(10):
        EventBus(EventConfig(persistence_path=journal)).close()
    logs = [p.name for p in journal.iterdir() if p.name.startswith("LOG")]
    assert len(logs) <= 2, logs


def test_a_journal_open_in_this_process_says_so(journal: Path) -> None:
    with (
        EventBus(EventConfig(persistence_path=journal)),
        pytest.raises(JournalLockedError, match="this process"),
    ):
        EventBus(EventConfig(persistence_path=journal))


@pytest.mark.parametrize(
    ("field", "value"),
    [("retention_days", 0), ("retention_days", -1), ("max_events", 0), ("max_events", -5)],
)
def test_bad_retention_settings_are_refused_naming_the_argument(
    tmp_path: Path, field: str, value: int
) -> None:
    with pytest.raises(ValueError, match=field):
        EventConfig(persistence_path=tmp_path / "j", **{field: value})  # type: ignore[arg-type]
    assert not (tmp_path / "j").exists()


def test_views_left_by_killed_readers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    # A reader killed before it closed leaves its view: a real process, now dead.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f"actors-journal-ro-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "CURRENT").symlink_to(tmp_path / "elsewhere")
    live = tmp_path / f"actors-journal-ro-{os.getpid()}-def"
    live.mkdir()
    unrelated = tmp_path / "actors-journal-ro-notapid"
    unrelated.mkdir()
    assert sweep_stale_views(str(tmp_path)) == 1
    assert not stale.exists()
    assert live.exists()
    assert unrelated.exists()


def test_a_read_only_bus_removes_its_view_when_closed(journal: Path) -> None:
    mine = f"actors-journal-ro-{os.getpid()}-"
    before = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mine)}
    with EventBus(EventConfig(persistence_path=journal, read_only=True)) as bus:
        assert bus.query(EventQuery(limit=1))
        during = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mine)}
        assert len(during - before) == 1
    after = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mine)}
    assert after == before


def test_a_journal_named_by_a_relative_path_opens_read_only_and_is_not_repaired(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(journal.parent)
    before = state(journal)
    with EventBus(EventConfig(persistence_path=journal.name, read_only=True)) as bus:
        assert [e.data for e in bus.query(EventQuery())] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert state(journal) == before
    # repair opens writable (RocksDB may write its log into a table): what
    # matters is that it finds nothing to repair.
    report = repair(journal.name)
    assert (report.repaired, report.lost, report.last_sequence) == (False, 0, 3)
    cli = [sys.executable, "-m", "actors", "query", "--journal", journal.name, "--json"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.count('"ro.event"') == 3
