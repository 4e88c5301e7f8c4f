"""Salvage what a damaged record table hides: keep the readable rows aside, repair, put them back.

RocksDB refuses every read that starts below an unreadable block of a recent
(level-0) record table, whatever table holds the record asked for, so the
journal's reads skip the intact records of older tables with the damaged ones
(docs/persistence.md, "A damaged table file").  RocksDB's own repair sets the
damaged table aside: the older records read again, but the damaged table's
readable records go with it.  So ``repair()`` first copies every record it
can read into a side database next to the journal, runs RocksDB's repair,
and writes back the rows the repair took away; the indexes and the count are
then rebuilt from the records, and what is still missing is reported lost.

The side database lives in a folder beside the journal (never inside it,
where RocksDB's repair would take its files for the journal's own).  It is
removed once the rows are back; if anything fails on the way it is left
there, named in the error, with every row it saved.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from typing import cast

import rocksdict

from actors._errors import JournalError
from actors._journal.rocks import Recover, RocksStorage, repair_files

__all__ = ["salvage_hidden"]

logger = logging.getLogger("actors.journal")

_SEQ = struct.Struct(">Q")
_CHUNK = 10_000


def salvage_hidden(storage: RocksStorage, path: str, recover: Recover) -> RocksStorage | None:
    """Repair a record space a damaged table hides in part; return the reopened storage.

    Returns None (``storage`` left open and untouched) when every record
    reads.  Otherwise ``storage`` is closed, and the storage returned is
    the repaired journal with the saved rows back in it.
    """
    first = storage.first_unreadable()
    if first is None:
        return None
    side = tempfile.mkdtemp(prefix=".salvage-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        saved = _save(storage, side)
        storage.close()
        repair_files(path)
        repaired = RocksStorage(path, create=False, recover=recover)
        try:
            restored = repaired.restore_rows(_rows(side))
        except BaseException:
            repaired.close()
            raise
    except Exception as exc:
        msg = f"salvage of {path!r} failed ({exc}); the rows read before it are kept in {side!r}"
        raise JournalError(msg) from exc
    shutil.rmtree(side, ignore_errors=True)
    logger.warning(
        "journal %s: a damaged table (unreadable from sequence %d) was set aside by RocksDB's "
        "repair; %d of the %d record(s) read before it were put back",
        path,
        first,
        restored,
        saved,
    )
    return repaired


def _save(storage: RocksStorage, side: str) -> int:
    # Every readable row, those before the damage too: the table RocksDB sets
    # aside may hold them (one table of all the records, damaged in its middle).
    db = rocksdict.Rdict(side, options=rocksdict.Options(raw_mode=True))
    saved = 0
    try:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for seq, row in storage.readable_rows(0):
            batch.put(_SEQ.pack(seq), row)
            saved += 1
            if saved % _CHUNK == 0:
                db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        db.write(batch)
        db.flush_wal(True)
    finally:
        db.close()
    return saved


def _rows(side: str) -> Iterator[tuple[int, bytes]]:
    db = rocksdict.Rdict(side, options=rocksdict.Options(raw_mode=True))
    try:
        for key, row in db.items():
            yield _SEQ.unpack(cast("bytes", key))[0], cast("bytes", row)  # raw mode: bytes
    finally:
        db.close()
