"""The RocksDB layout: records, indexes, checkpoints, over handles ``rocks.py`` opens.

Layout (``docs/storage.md``): the default column family maps the 8-byte
big-endian sequence to header + payload; ``by_type``, ``by_time`` and
``by_cid`` hold empty-valued index keys; ``meta`` holds the type registry,
checkpoints and counters.  Every method blocks the calling thread for its
I/O.  This module never imports rocksdict: ``rocks.py`` opens the database
and hands its handles over; reads go through ``cursor.py`` so that a read
error is never mistaken for the end of the data.
"""

from __future__ import annotations

import functools
import logging
import random
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from actors._errors import JournalDamagedError, JournalError
from actors._journal.cursor import forget_frames, walk, walk_sequences
from actors._journal.highwater import HighWaterMark
from actors._journal.native import without_gil
from actors._journal.planner import IndexedStorage
from actors._journal.rebuild import META_NEXT_TYPE, RebuildMixin
from actors._journal.records import (
    CID_LEN,
    FLAG_CID,
    FLAG_SOURCE,
    HEADER,
    HEADER_VERSION,
    MAX_SEQ,
    SEQ,
    TIME_KEY,
    TS_BIAS,
    TYPE_KEY,
    Row,
    StoredRecord,
    check_record,
    encode_source,
    parse_value,
)
from actors._journal.rocks_retention import RetentionMixin

__all__ = ["RocksTables"]

logger = logging.getLogger("actors.storage")

_T = TypeVar("_T")
_FORMAT = 1  # meta "s:format"; bump when the layout changes
META_TYPE = b"t:"  # t:<event type utf-8> -> type id (u32)
META_COUNT = b"s:count"
_META_SKEW = b"s:skew"
_META_FORMAT = b"s:format"
_META_NUMBERING = b"s:numbering"  # the numbering's identity (``Storage.numbering``), u64


def _corruption(exc: BaseException) -> bool:
    """Return whether RocksDB reported ``exc`` (or what caused it) as damaged data."""
    seen: BaseException | None = exc
    while seen is not None:
        if "Corruption" in str(seen):
            return True
        seen = seen.__cause__
    return False


def read(call: Callable[[], _T]) -> _T:
    """Run one driver read; turn its failure into ``JournalError``."""
    try:
        return call()
    except Exception as exc:
        msg = f"journal read failed: {exc}"
        raise JournalError(msg) from exc


class RocksTables(RebuildMixin, RetentionMixin, IndexedStorage):
    """Records, indexes and checkpoints in RocksDB column families (module docstring)."""

    _path: str

    def _init_counters(self, path: str, *, read_only: bool) -> None:
        self.corrupt_records = 0
        self.written = 0
        self.read_only = read_only
        self.numbering: int | None = None  # read at open (``_load_meta``)
        self._closed = True
        self._path = path
        self._corrupt_seen: set[int] = set()
        self._unsettled = 0  # index entries deleted since the indexes were last flushed
        self._skipped_blocks: set[tuple[int, int]] = set()
        self._source_cache: dict[str, bytes] = {}
        self._mark: HighWaterMark | None = None
        # Set when a batch reached the database but its fsync (or the mark's)
        # failed: the state on disk is no longer known to match what was
        # acknowledged, so every later write fails too (docs/persistence.md).
        # Kept as text: an exception's traceback would keep frames alive.
        self._failure: str | None = None
        # One thread fsyncs the mark while the journal's thread fsyncs the WAL.
        self._fsyncer = ThreadPoolExecutor(1, thread_name_prefix="journal-fsync")

    def _new_batch(self) -> Any:
        raise NotImplementedError

    def _new_write_options(self) -> Any:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _attach(self, db: Any, path: str, mark: HighWaterMark | None) -> None:
        """Take the handles of an opened database and load the meta data.

        ``mark`` is the acknowledged mark read before the open (read-only
        opens: a live writer may advance it meanwhile); None to open it here.
        """
        self._db = db
        try:
            self._type_cf = db.get_column_family("by_type")
            self._time_cf = db.get_column_family("by_time")
            self._cid_cf = db.get_column_family("by_cid")
            self._meta = db.get_column_family("meta")
            self._type_h = db.get_column_family_handle("by_type")
            self._time_h = db.get_column_family_handle("by_time")
            self._cid_h = db.get_column_family_handle("by_cid")
            self._meta_h = db.get_column_family_handle("meta")
            self._plain = self._new_write_options()
            self._load_meta()
            self._mark = mark or HighWaterMark(path, writable=not self.read_only)
        except Exception as exc:
            # The frames below hold iterators over the database (and its lock)
            # for as long as the traceback lives: cleared, the release is real.
            forget_frames(exc)
            self._release()
            if _corruption(exc):  # a damaged table file: repair salvages it
                msg = (
                    f"journal {self._path!r} is damaged: {exc}. To salvage what its files "
                    "still hold, run actors._journal.repair(path) or open it with "
                    "EventConfig(recover='truncate')"
                )
                raise JournalDamagedError(msg) from exc
            if isinstance(exc, JournalError):
                raise
            msg = f"cannot open journal {self._path!r}: {exc}"
            raise JournalError(msg) from exc
        except BaseException as exc:  # a Ctrl-C: the lock must not live on in the traceback
            forget_frames(exc)
            self._release()
            raise

    def _load_meta(self) -> None:
        fmt = self._meta.get(_META_FORMAT)
        if fmt is None and not self.read_only:
            self._meta.put(_META_FORMAT, SEQ.pack(_FORMAT))
        elif fmt is not None and fmt != SEQ.pack(_FORMAT):
            msg = f"journal {self._path!r} has an unknown layout version {fmt!r}"
            raise JournalError(msg)
        self._type_ids: dict[str, int] = {}
        self._type_names: dict[int, str] = {}
        for key, value in walk(self._meta, from_key=META_TYPE, values=True):
            if not key.startswith(META_TYPE) or value is None:
                break
            name = key[len(META_TYPE) :].decode()
            (tid,) = struct.unpack(">I", value)
            self._type_ids[name] = tid
            self._type_names[tid] = name
        # Ids are never reused: a rebuilt registry may have gaps, and records
        # of a type no payload could name keep theirs (META_NEXT_TYPE).
        next_type = self._meta.get(META_NEXT_TYPE)
        self._next_tid = max(
            max(self._type_names, default=0) + 1,
            0 if next_type is None else struct.unpack(">I", next_type)[0],
        )
        numbering = self._meta.get(_META_NUMBERING)
        if numbering is None and not self.read_only:
            # A new journal, or one made before it was kept (its records' peers
            # saved no identity: they cannot mistake this one for another).
            numbering = SEQ.pack(random.getrandbits(63))
            self._meta.put(_META_NUMBERING, numbering)
        self.numbering = None if numbering is None else SEQ.unpack(numbering)[0]
        count = self._meta.get(META_COUNT)
        self._count = 0 if count is None else SEQ.unpack(count)[0]
        skew = self._meta.get(_META_SKEW)
        self._skew = 0 if skew is None else SEQ.unpack(skew)[0]
        self._last = 0
        for seq, _ in self._sequences(MAX_SEQ, backwards=True, values=False):
            self._last = seq
            break
        self._max_ts = None
        for key, _ in walk(self._time_cf, backwards=True):
            self._max_ts = TIME_KEY.unpack(key)[0] - TS_BIAS
            break

    # -- the acknowledged mark ---------------------------------------------------

    def acknowledged(self) -> int:
        """Return the highest sequence this journal ever acknowledged (its side file)."""
        return 0 if self._mark is None else self._mark.value

    def mark_missing(self) -> bool:
        """Return True if the journal's folder had no acknowledged mark file when opened."""
        return self._mark is not None and self._mark.missing

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            msg = f"journal {self._path!r} is open read-only"
            raise JournalError(msg)
        if self._failure is not None:
            msg = (
                f"journal {self._path!r} takes no more writes until it is reopened: "
                f"a write reached it but could not be made durable ({self._failure})"
            )
            raise JournalError(msg)

    # -- writing ---------------------------------------------------------------

    def _write(self, batch: Any, sync: bool) -> None:
        # Measured (docs/storage.md): Rdict.write holds the GIL for its whole
        # duration, so write(batch, sync=True) stalls every Python thread for
        # the fsync too.  Rdict.flush_wal(True) releases the GIL while it
        # fsyncs, so a synced write is an unsynced write (WAL appended, still
        # atomic) followed by an fsync of the WAL: same durability, other
        # threads run during the fsync.
        try:
            self._db.write(batch, self._plain)
        except Exception as exc:
            msg = f"journal write failed: {exc}"
            raise JournalError(msg) from exc
        if sync:
            self._sync_wal()

    def _sync_wal(self) -> None:
        """Fsync the WAL after a write that reached the database; a failure latches."""
        try:
            synced = without_gil(functools.partial(self._db.flush_wal, True))
        except Exception as exc:
            raise self._fail(f"journal write failed: {exc}", exc) from exc
        if not synced:  # on a daemon thread of an exiting interpreter (``native``)
            gone = JournalError("the interpreter is exiting")
            raise self._fail("journal write not synced: the interpreter is exiting", gone)

    def _fail(self, msg: str, cause: BaseException) -> JournalError:
        """Latch a failure that came after a batch reached the database."""
        self._failure = f"{type(cause).__name__}: {cause}"
        return JournalError(msg)

    def append(self, records: Sequence[StoredRecord], *, sync: bool = False) -> None:
        """Store records and their index entries in one atomic WriteBatch.

        Sequences must rise above ``last_sequence()``; an invalid record
        raises ``ValueError`` and stores nothing.  Blocks for the write, and
        with ``sync`` until the WAL and the acknowledged mark are fsynced.
        Raises ``JournalError`` if the write fails or the journal is read-only.
        """
        self._check_writable()
        if not records:
            return
        batch = self._new_batch()
        new_types: dict[str, int] = {}
        type_ids = self._type_ids
        sources = self._source_cache
        last = self._last
        skew, max_ts = self._skew, self._max_ts
        next_tid = self._next_tid
        pack_header, pack_seq = HEADER.pack, SEQ.pack
        type_key, time_key = TYPE_KEY.pack, TIME_KEY.pack
        put = batch.put
        type_h, time_h, cid_h = self._type_h, self._time_h, self._cid_h
        # Hot loop (about half of append's cost is here): locals, no calls
        # that can be avoided; struct.error covers out-of-range numbers.
        try:
            for r in records:
                seq = r.sequence
                if seq <= last:
                    check_record(r, last)  # raises with the reason
                last = seq
                event_type = r.event_type
                tid = type_ids.get(event_type) or new_types.get(event_type)
                if tid is None:
                    tid = new_types[event_type] = next_tid
                    next_tid += 1
                    put(META_TYPE + event_type.encode(), struct.pack(">I", tid), self._meta_h)
                ts = r.timestamp_us
                src = r.source
                if src is None:
                    flags, tail = 0, b""
                else:
                    flags = FLAG_SOURCE
                    tail = sources.get(src) or self._encode_source(src)
                key = pack_seq(seq)
                cid = r.correlation_id
                if cid is None:
                    put(key, pack_header(HEADER_VERSION, flags, tid, ts) + tail + r.payload)
                else:
                    if len(cid) != CID_LEN:
                        msg = f"correlation_id must be {CID_LEN} bytes, got {len(cid)}"
                        raise ValueError(msg)
                    head = pack_header(HEADER_VERSION, flags | FLAG_CID, tid, ts)
                    put(key, head + cid + tail + r.payload)
                    put(cid + key, b"", cid_h)
                put(type_key(tid, seq), b"", type_h)
                put(time_key(ts + TS_BIAS, seq), b"", time_h)
                if max_ts is None or ts > max_ts:
                    max_ts = ts
                elif max_ts - ts > skew:
                    skew = max_ts - ts
        except struct.error as exc:
            msg = f"record cannot be stored (sequence or timestamp out of range): {exc}"
            raise ValueError(msg) from exc
        put(META_COUNT, pack_seq(self._count + len(records)), self._meta_h)
        if skew != self._skew:
            put(_META_SKEW, pack_seq(skew), self._meta_h)
        # Column-family handles keep the database (and its LOCK) alive: drop
        # them before a write error's traceback can capture this frame.
        del type_h, time_h, cid_h
        self._write(batch, False)  # atomic: if it fails, nothing was stored
        # The batch is in the database: what this object knows follows it
        # before anything else can fail (a type id is never handed out twice).
        for name, tid in new_types.items():
            self._type_ids[name] = tid
            self._type_names[tid] = name
        self._last, self._skew, self._max_ts = last, skew, max_ts
        self._next_tid = next_tid
        self._count += len(records)
        self.written += len(records)
        if self._mark is None:
            if sync:
                self._sync_wal()
        elif sync:
            self._sync_both(last)
        else:
            try:
                self._mark.advance(last, sync=False)  # survives a kill; fsynced at close
            except OSError as exc:
                raise self._fail(f"journal high-water mark not written: {exc}", exc) from exc

    def _sync_both(self, last: int) -> None:
        """Advance the mark to ``last``, then fsync the WAL and the mark at the same time.

        Both fsyncs release the GIL; run side by side they cost one fsync's
        time, not two.  Returns once both are on disk; a failure latches
        (the batch is already in the database).
        """
        assert self._mark is not None
        try:
            self._mark.advance(last, sync=False)
            synced = self._fsyncer.submit(self._mark.fsync)
        except (OSError, RuntimeError) as exc:
            raise self._fail(f"journal high-water mark not written: {exc}", exc) from exc
        try:
            self._sync_wal()
        finally:
            error = synced.exception()
        if error is not None:
            raise self._fail(f"journal high-water mark not synced: {error}", error) from error

    def _encode_source(self, source: str) -> bytes:
        encoded = encode_source(source)
        if len(self._source_cache) < 1024:  # sources are few (agent names)
            self._source_cache[source] = encoded
        return encoded

    # -- reading ---------------------------------------------------------------

    def last_sequence(self) -> int:
        """Return the highest sequence stored, 0 if the journal was always empty.

        Kept in memory (read once at open), so it is cheap.
        """
        self._check_open()
        return self._last

    def first_sequence(self) -> int | None:
        """Return the lowest stored sequence, or None if empty."""
        self._check_open()
        for seq, _ in self._sequences(0, values=False):
            return seq
        return None

    def count(self) -> int:
        """Return the number of stored records (a counter kept in ``meta``)."""
        self._check_open()
        return self._count

    def _sequences(
        self, start: int, *, backwards: bool = False, values: bool = True
    ) -> Iterator[tuple[int, bytes | None]]:
        return walk_sequences(
            self._db, start=start, backwards=backwards, values=values, on_skip=self._skipped
        )

    def _skipped(self, first: int, resume: int) -> None:
        """Count and report a damaged block of the primary space: [first, resume) unread."""
        if (first, resume) in self._skipped_blocks:
            return
        self._skipped_blocks.add((first, resume))
        unread = self._indexed_between(first, resume)
        fresh = [seq for seq in unread if seq not in self._corrupt_seen]
        self._corrupt_seen.update(fresh)
        self.corrupt_records += len(fresh)
        logger.warning(
            "journal %s: a damaged block was skipped: %d record(s) in sequences %d..%d "
            "cannot be read",
            self._path,
            len(unread),
            first,
            resume - 1,
        )

    def _indexed_between(self, first: int, resume: int) -> list[int]:
        """Return the sequences the type index lists in [first, resume); the gap if unreadable."""
        try:
            return sorted(
                seq
                for name in self._type_ids
                for seq in self._type_seqs(name, first, resume, False)
            )
        except JournalError:
            return list(range(first, max(min(resume, self._last + 1), first)))

    def _row(self, seq: int, value: bytes) -> Row | None:
        try:
            tid, ts, cid, source, pos = parse_value(value)
            event_type = self._type_names[tid]
        except (ValueError, KeyError) as exc:
            self._report_corrupt(seq, exc)
            return None
        return event_type, ts, cid, source, value[pos:]

    def _report_corrupt(self, seq: int, exc: BaseException) -> None:
        if seq in self._corrupt_seen:
            return
        self._corrupt_seen.add(seq)
        self.corrupt_records += 1
        logger.error("journal record %d is corrupt and skipped: %r", seq, exc)

    def get(self, sequence: int) -> bytes | None:
        """Return the payload stored under ``sequence``, or None if absent or corrupt."""
        self._check_open()
        if not 0 <= sequence <= MAX_SEQ:
            return None
        value = read(lambda: self._db.get(SEQ.pack(sequence)))
        if value is None:
            return None
        row = self._row(sequence, value)
        return None if row is None else row[4]

    def _known_types(self) -> Iterable[str]:
        return self._type_ids.keys()

    def _primary_rows(self, low: int, high: int, descending: bool) -> Iterator[tuple[int, Row]]:
        start = min(high - 1, MAX_SEQ) if descending else low
        for seq, value in self._sequences(start, backwards=descending):
            if not low <= seq < high:
                return
            row = self._row(seq, value or b"")
            if row is not None:
                yield seq, row

    def _fetch_rows(self, seqs: list[int]) -> list[Row | None]:
        values = self._multi_get(seqs)
        return [None if v is None else self._row(s, v) for s, v in zip(seqs, values, strict=True)]
