"""The checkpoints a persistent node keeps of the origins it receives (``_cluster.checkpoints``).

What one delivery changed of them is saved in one write, so a crash never
leaves a watermark without the numbering it counts in, nor a numbering left
without its own watermark.  Real RocksDB journals in a temporary folder.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from actors._cluster.checkpoints import left_items, load_left
from actors._cluster.origins import LEFT_NUMBERINGS
from actors._errors import JournalError
from actors._journal.rocks import RocksStorage
from actors._model.event import Event
from actors._model.query import EventQuery
from tests._support import WAIT


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


# A writer of checkpoint sets killed -9 at an arbitrary point of its loop: each
# set (two origins' watermarks, epochs, numberings and numberings left, 22 in
# all, what one delivery may change) was saved in one write, so
# whatever the kill interrupted, the reopened journal holds one whole set.
_WRITER = """
import sys
from actors._journal.rocks import RocksStorage
storage = RocksStorage(sys.argv[1])
names = [f"bridge{k}{o}" for o in "ab" for k in ":~#"]
names += [f"bridge{k}{o}#{i}" for o in "ab" for k in ":#" for i in range(4)]
i = storage.get_checkpoint(names[0]) or 0
while True:
    i += 1
    storage.set_checkpoints([(name, i) for name in names])
    if i % 200 == 0:
        print(i, flush=True)
"""


def test_a_writer_killed_between_any_two_checkpoint_sets_leaves_one_whole_set(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "j")
    names = [f"bridge{k}{o}" for o in "ab" for k in ":~#"]
    names += [f"bridge{k}{o}#{i}" for o in "ab" for k in ":#" for i in range(4)]
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            for _ in range(3):  # killed while it goes on writing, at no chosen point
                line = child.stdout.readline()
                assert line, "the writer ended"
                written = int(line)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(WAIT)
        storage = RocksStorage(path, read_only=True)
        try:
            saved = [storage.get_checkpoint(name) for name in names]
        finally:
            storage.close()
        assert saved == [saved[0]] * len(names), saved
        # Not fsynced, but written to the log before the kill: nothing printed is lost.
        assert saved[0] is not None
        assert saved[0] >= written
