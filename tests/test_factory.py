"""Opening through the factory, and repair (``actors._journal.factory``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import EventBus, EventConfig, JournalLockedError, JournalNotFoundError
from actors._journal import open_journal, repair


def test_no_path_no_journal() -> None:
    assert open_journal(EventConfig()) is None


def test_an_open_reports_a_clean_journal_and_the_next_sequence(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        for i in range(5):
            bus.publish("f.e", i).get(timeout=30)
    opened = open_journal(EventConfig(persistence_path=path))
    assert opened is not None
    try:
        assert opened.first_sequence == 6
        report = opened.recovery
        assert (report.acknowledged, report.last_sequence, report.lost) == (5, 5, 0)
        assert report.lost_range is None
        assert not report.wal_damaged
    finally:
        opened.storage.close()


def test_repair_of_a_clean_journal_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        bus.publish("f.e", 1).get(timeout=30)
    report = repair(path)
    assert (report.lost, report.repaired, report.wal_damaged) == (0, False, False)
    assert report.last_sequence == 1


def test_repair_refuses_what_is_not_a_journal_or_is_open(tmp_path: Path) -> None:
    with pytest.raises(JournalNotFoundError):
        repair(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)), pytest.raises(JournalLockedError):
        repair(path)
