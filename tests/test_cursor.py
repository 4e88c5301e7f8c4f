"""Checked walks over a real RocksDB with a damaged table block (``actors._journal.cursor``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import rocksdict

from actors._errors import JournalError
from actors._journal.cursor import walk, walk_sequences
from actors._journal.records import SEQ

N = 5000


@pytest.fixture
def damaged(tmp_path: Path) -> Iterator[rocksdict.Rdict]:
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    for seq in range(1, N + 1):
        db[SEQ.pack(seq)] = b"v" * 100
    db.close()
    (table,) = Path(path).glob("*.sst")
    with table.open("r+b") as f:
        f.seek(table.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    yield db
    db.close()


def test_forward_walk_skips_one_block_and_says_which(damaged: rocksdict.Rdict) -> None:
    skipped: list[tuple[int, int]] = []
    seqs = [
        s for s, _ in walk_sequences(damaged, start=1, on_skip=lambda a, b: skipped.append((a, b)))
    ]
    assert len(skipped) == 1
    first, resume = skipped[0]
    assert 1 < first < resume <= N
    assert seqs == [*range(1, first), *range(resume, N + 1)]


def test_backward_walk_skips_and_stays_in_order(damaged: rocksdict.Rdict) -> None:
    skipped: list[tuple[int, int]] = []
    seqs = [
        s
        for s, _ in walk_sequences(
            damaged,
            start=N,
            backwards=True,
            values=False,
            on_skip=lambda a, b: skipped.append((a, b)),
        )
    ]
    assert len(skipped) == 1
    first, resume = skipped[0]
    assert seqs == [*range(N, resume - 1, -1), *range(first - 1, 0, -1)]


def test_a_plain_walk_raises_instead_of_ending_early(damaged: rocksdict.Rdict) -> None:
    with pytest.raises(JournalError, match="journal read failed"):
        for _ in walk(damaged):
            pass
