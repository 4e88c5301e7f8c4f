"""The checkpoints a persistent node keeps of the origins it receives (``_cluster.checkpoints``).

What one delivery changed of them is saved in one write, so a crash never
leaves a watermark without the numbering it counts in, nor a numbering left
without its own watermark.  Real RocksDB journals in a temporary folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from actors._cluster.checkpoints import left_items, load_left
from actors._cluster.origins import LEFT_NUMBERINGS
from actors._errors import JournalError
from actors._journal.rocks import RocksStorage
from actors._model.event import Event
from actors._model.query import EventQuery


class StorageJournal:
    """The checkpoint part of ``JournalPort`` straight over a storage (no actors)."""

    def __init__(self, storage: RocksStorage) -> None:
        self.storage = storage

    def read(self, query: EventQuery, timeout: float | None) -> list[Event]:
        return []

    def load_checkpoint(self, name: str, timeout: float | None) -> int | None:
        return self.storage.get_checkpoint(name)

    def save_checkpoints(self, items: Sequence[tuple[str, int]]) -> None:
        self.storage.set_checkpoints(items)

    def after_written(self, callback: Callable[[], None]) -> None:
        callback()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[StorageJournal]:
    storage = RocksStorage(str(tmp_path / "j"))
    yield StorageJournal(storage)
    storage.close()


def test_the_numberings_left_read_back_as_saved(journal: StorageJournal) -> None:
    assert load_left(journal, "a", 1.0) == ()
    for left in ({11: 100, 22: 40, 33: 7, 44: 9}, {22: 40, 55: 3}, {}, {77: 5}):
        journal.save_checkpoints(left_items("a", left))
        assert load_left(journal, "a", 1.0) == tuple(left.items())
        assert len(left) <= LEFT_NUMBERINGS


def test_checkpoints_saved_together_are_all_there_after_a_reopen(tmp_path: Path) -> None:
    storage = RocksStorage(str(tmp_path / "j"))
    storage.set_checkpoints([("bridge:a", 7), ("bridge~a", 9), ("bridge#a", 11)], sync=True)
    storage.close()
    again = RocksStorage(str(tmp_path / "j"), read_only=True)
    try:
        assert [again.get_checkpoint(n) for n in ("bridge:a", "bridge~a", "bridge#a")] == [7, 9, 11]
        with pytest.raises(JournalError):
            again.set_checkpoints([("bridge:a", 8), ("bridge~a", 10)])
        assert [again.get_checkpoint(n) for n in ("bridge:a", "bridge~a")] == [7, 9]
    finally:
        again.close()
