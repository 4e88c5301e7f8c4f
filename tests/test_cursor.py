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
    # The same records as forward: none next to the damage is given up.
    forward = [
        s for s, _ in walk_sequences(damaged, start=1, values=False, on_skip=lambda a, b: None)
    ]
    assert seqs == forward[::-1]


def test_backward_walk_ends_cleanly_over_a_damaged_lowest_block(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    for seq in range(1, N + 1):
        db[SEQ.pack(seq)] = b"v" * 100
    db.close()
    (table,) = Path(path).glob("*.sst")
    with table.open("r+b") as f:  # the first data block starts the file
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    try:
        ahead: list[tuple[int, int]] = []
        forward = [
            s
            for s, _ in walk_sequences(
                db, start=1, values=False, on_skip=lambda a, b: ahead.append((a, b))
            )
        ]
        back: list[tuple[int, int]] = []
        backward = [
            s
            for s, _ in walk_sequences(
                db, start=N, backwards=True, values=False, on_skip=lambda a, b: back.append((a, b))
            )
        ]
    finally:
        db.close()
    assert forward[-1] == N
    assert forward[0] > 1  # the lowest block is unread
    assert backward == forward[::-1]
    assert [(max(1, a), b) for a, b in back] == [(max(1, a), b) for a, b in ahead]


def test_a_plain_walk_raises_instead_of_ending_early(damaged: rocksdict.Rdict) -> None:
    with pytest.raises(JournalError, match="journal read failed"):
        for _ in walk(damaged):
            pass
