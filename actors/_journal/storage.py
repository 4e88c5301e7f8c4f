"""The journal's storage layout: records, indexes, retention and checkpoints.

Pure, thread-free classes under the journal actor.  Events arrive already
encoded (opaque protobuf bytes); the caller passes the fields the indexes need
alongside, so nothing here ever decodes a payload.  ``docs/storage.md``
describes the on-disk layout.

Two backends pass one conformance suite: ``RocksStorage`` (RocksDB through
rocksdict) and ``MemoryStorage`` (sorted in memory, for non-persistent buses).
Neither is thread-safe: one owner (the journal actor) calls them.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import NamedTuple, Protocol, Self, TypeVar, cast

import rocksdict

from actors._errors import JournalError, JournalLockedError

__all__ = ["MemoryStorage", "RocksStorage", "Storage", "StoredRecord"]

logger = logging.getLogger("actors.storage")

TypeMatcher = Callable[[str], bool]
_T = TypeVar("_T")

#: What a scan needs of one record: (event_type, timestamp_us, correlation_id,
#: source, payload).  A plain tuple: scans build one per candidate.
_Row = tuple[str, int, bytes | None, str | None, bytes]

_SEQ = struct.Struct(">Q")  # primary key; big-endian so byte order is numeric order
_HEADER = struct.Struct(">BBIq")  # version, flags, type id, timestamp_us
_U16 = struct.Struct(">H")
_TYPE_KEY = struct.Struct(">IQ")  # type id, sequence
_TIME_KEY = struct.Struct(">QQ")  # timestamp_us + 2**63, sequence
_HEADER_VERSION = 1
_FLAG_CID = 0x01
_FLAG_SOURCE = 0x02
_TS_BIAS = 1 << 63  # maps signed microseconds onto unsigned, order kept
_MAX_SEQ = (1 << 64) - 1
_CID_LEN = 16
_TS_MIN = -_TS_BIAS
_TS_MAX = _TS_BIAS - 1
_WINDOW_PROBE = 10_000  # time-index reads spent narrowing a query to a sequence window
_FORMAT = 1  # meta "s:format"; bump when the layout changes

_CF_TYPE = "by_type"
_CF_TIME = "by_time"
_CF_CID = "by_cid"
_CF_META = "meta"
_META_TYPE = b"t:"  # t:<event type utf-8> -> type id (u32)
_META_CHECKPOINT = b"c:"  # c:<name utf-8> -> sequence (u64)
_META_COUNT = b"s:count"
_META_SKEW = b"s:skew"
_META_FORMAT = b"s:format"

_RETENTION_CHUNK = 50_000  # records per retention WriteBatch: bounds memory and batch size
_FETCH_CHUNK = 64  # index hits fetched per multi-get


class StoredRecord(NamedTuple):
    """One encoded event plus the fields the journal indexes.

    ``correlation_id`` is the 16 raw bytes of the UUID; ``payload`` the
    protobuf-encoded event, stored and returned untouched.  A named tuple, not
    a frozen dataclass: one is built per event on the journal's hot path, and
    a tuple costs a fifth as much.
    """

    sequence: int
    event_type: str
    timestamp_us: int
    correlation_id: bytes | None
    source: str | None
    payload: bytes


class Storage(Protocol):
    """What the journal actor needs of a storage backend.

    ``corrupt_records`` counts distinct records skipped because their stored
    value could not be parsed; ``written`` counts records appended since open.
    """

    corrupt_records: int
    written: int

    def append(self, records: Sequence[StoredRecord], *, sync: bool = False) -> None: ...
    def last_sequence(self) -> int: ...
    def first_sequence(self) -> int | None: ...
    def count(self) -> int: ...
    def get(self, sequence: int) -> bytes | None: ...
    def scan(
        self,
        *,
        type_matcher: TypeMatcher | None = None,
        time_range_us: tuple[int, int] | None = None,
        correlation_id: bytes | None = None,
        source: str | None = None,
        after_sequence: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> Iterator[tuple[int, bytes]]: ...
    def delete_before(self, timestamp_us: int) -> int: ...
    def trim_to(self, max_events: int) -> int: ...
    def get_checkpoint(self, name: str) -> int | None: ...
    def set_checkpoint(self, name: str, sequence: int, *, sync: bool = False) -> None: ...
    def size_bytes(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _in_sequence_order(
    entries: Iterable[tuple[int, int]], skew: int, descending: bool
) -> Iterator[int]:
    """Turn (timestamp, sequence) pairs arriving in timestamp order into sequences in order.

    ``skew`` bounds how far timestamps run backwards: for sequences a < b,
    ts(a) <= ts(b) + skew.  So once the stream has reached timestamp t, every
    entry with ts + skew < t precedes everything still to come, and buffered
    sequences up to the largest such entry can be emitted.  The buffer holds
    only the entries within ``skew`` of the current timestamp, so a limited
    query stops early instead of reading the whole time range.
    """
    heap: list[int] = []
    pending: deque[tuple[int, int]] = deque()
    if not descending:
        bound = -1
        for ts, seq in entries:
            while pending and pending[0][0] + skew < ts:
                bound = max(bound, pending.popleft()[1])
            while heap and heap[0] <= bound:
                yield heapq.heappop(heap)
            heapq.heappush(heap, seq)
            pending.append((ts, seq))
        while heap:
            yield heapq.heappop(heap)
    else:
        low = _MAX_SEQ + 1
        for ts, seq in entries:
            while pending and pending[0][0] - skew > ts:
                low = min(low, pending.popleft()[1])
            while heap and -heap[0] >= low:
                yield -heapq.heappop(heap)
            heapq.heappush(heap, -seq)
            pending.append((ts, seq))
        while heap:
            yield -heapq.heappop(heap)


def _check_record(record: StoredRecord, last: int) -> None:
    if record.sequence <= last:
        msg = f"sequence {record.sequence} is not above the last stored sequence {last}"
        raise ValueError(msg)
    if record.sequence > _MAX_SEQ:
        msg = f"sequence {record.sequence} does not fit in 64 bits"
        raise ValueError(msg)
    if record.correlation_id is not None and len(record.correlation_id) != _CID_LEN:
        msg = f"correlation_id must be {_CID_LEN} bytes, got {len(record.correlation_id)}"
        raise ValueError(msg)
    if not -_TS_BIAS <= record.timestamp_us < _TS_BIAS:
        msg = f"timestamp_us {record.timestamp_us} does not fit in 64 bits"
        raise ValueError(msg)


class _IndexedStorage:
    """The query planner shared by both backends; subclasses supply index reads."""

    corrupt_records: int
    written: int
    _closed: bool
    _skew: int
    _max_ts: int | None

    # -- primitives each backend implements ------------------------------------

    def _known_types(self) -> Iterable[str]:
        raise NotImplementedError

    def _type_seqs(self, event_type: str, low: int, high: int, descending: bool) -> Iterator[int]:
        """Yield the sequences in [low, high) of one type, in order."""
        raise NotImplementedError

    def _cid_seqs(self, cid: bytes, low: int, high: int, descending: bool) -> Iterator[int]:
        raise NotImplementedError

    def _time_entries(self, start: int, end: int, descending: bool) -> Iterator[tuple[int, int]]:
        """Yield (timestamp, sequence) with start <= timestamp < end, in timestamp order."""
        raise NotImplementedError

    def _primary_rows(self, low: int, high: int, descending: bool) -> Iterator[tuple[int, _Row]]:
        """Yield (sequence, row) for sequences in [low, high), skipping corrupt records."""
        raise NotImplementedError

    def _fetch_rows(self, seqs: list[int]) -> list[_Row | None]:
        """Return the rows of these sequences; None where missing or corrupt."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            msg = "journal storage is closed"
            raise JournalError(msg)

    def _track_skew(self, timestamp_us: int) -> None:
        """Widen the recorded timestamp disorder if this record runs backwards."""
        if self._max_ts is None or timestamp_us > self._max_ts:
            self._max_ts = timestamp_us
        elif self._max_ts - timestamp_us > self._skew:
            self._skew = self._max_ts - timestamp_us

    def scan(
        self,
        *,
        type_matcher: TypeMatcher | None = None,
        time_range_us: tuple[int, int] | None = None,
        correlation_id: bytes | None = None,
        source: str | None = None,
        after_sequence: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> Iterator[tuple[int, bytes]]:
        """Yield (sequence, payload) of the records matching every given filter.

        ``time_range_us`` is (start, end): start inclusive, end exclusive.
        ``type_matcher`` is resolved against the types ever stored, then the
        matching types' index ranges are merged.  The index used is the most
        selective given (correlation > types > time > sequence); the other
        filters are checked against each record's header.  Results come in
        sequence order, newest first if ``descending``.  The scan reads lazily,
        so records appended or deleted while it is consumed may or may not
        appear.  Corrupt records are counted and skipped.  Raises
        ``JournalError`` if the storage is closed or a read fails.
        """
        self._check_open()
        if limit is not None and limit <= 0:
            return iter(())
        types: frozenset[str] | None = None
        if type_matcher is not None:
            known = list(self._known_types())
            matched = frozenset(t for t in known if type_matcher(t))
            if not matched:
                return iter(())
            if len(matched) < len(known):
                types = matched  # else every stored record matches: no filter
        if time_range_us is not None and time_range_us[0] >= time_range_us[1]:
            return iter(())
        low = 0 if after_sequence is None else max(after_sequence + 1, 0)
        high = _MAX_SEQ + 1
        if time_range_us is not None and (correlation_id is not None or types is not None):
            # Narrow the chosen index to the sequences the time range can hold.
            win_low, high = self._seq_window(*time_range_us)
            low = max(low, win_low)
        if low >= high:
            return iter(())
        rows: Iterator[tuple[int, _Row]]
        if correlation_id is not None:
            rows = self._rows_for(self._cid_seqs(correlation_id, low, high, descending), limit)
        elif types is not None:
            streams = [self._type_seqs(t, low, high, descending) for t in sorted(types)]
            merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, reverse=descending)
            rows = self._rows_for(merged, limit)
        elif time_range_us is not None:
            entries = self._time_entries(time_range_us[0], time_range_us[1], descending)
            ordered = _in_sequence_order(entries, self._skew, descending)
            rows = self._rows_for((s for s in ordered if s >= low), limit)
        else:
            rows = self._primary_rows(low, high, descending)
        return self._filter(
            rows,
            types=types,
            time_range_us=time_range_us,
            correlation_id=correlation_id,
            source=source,
            limit=limit,
        )

    def _seq_window(self, start: int, end: int) -> tuple[int, int]:
        """Return [low, high): a sequence range holding every record with start <= ts < end.

        By the skew bound (ts(a) <= ts(b) + skew for a < b), every entry with
        ts < start - skew precedes the range and every entry with
        ts >= end + skew follows it; the extreme sequence of each side lies
        within ``skew`` of the timestamp nearest the range, so a few index
        reads find it.  Gives up (whole range) past ``_WINDOW_PROBE`` reads.
        """
        skew = self._skew
        low, nearest = 0, None
        for n, (ts, seq) in enumerate(self._time_entries(_TS_MIN, start - skew, True)):
            if nearest is None:
                nearest = ts
            elif ts < nearest - skew:
                break
            if n >= _WINDOW_PROBE:
                low = 0
                break
            low = max(low, seq + 1)
        high, nearest = _MAX_SEQ + 1, None
        for n, (ts, seq) in enumerate(self._time_entries(end + skew, _TS_MAX, False)):
            if nearest is None:
                nearest = ts
            elif ts > nearest + skew:
                break
            if n >= _WINDOW_PROBE:
                high = _MAX_SEQ + 1
                break
            high = min(high, seq)
        return low, high

    def _rows_for(self, seqs: Iterator[int], limit: int | None) -> Iterator[tuple[int, _Row]]:
        # Fetch index hits in growing chunks: a small limit costs few reads, a
        # large result amortises the multi-get.
        size = min(limit or _FETCH_CHUNK, _FETCH_CHUNK)
        chunk: list[int] = []
        for seq in seqs:
            chunk.append(seq)
            if len(chunk) >= size:
                yield from self._fetched(chunk)
                chunk = []
                size = min(size * 2, 4 * _FETCH_CHUNK)
        if chunk:
            yield from self._fetched(chunk)

    def _fetched(self, seqs: list[int]) -> Iterator[tuple[int, _Row]]:
        for seq, row in zip(seqs, self._fetch_rows(seqs), strict=True):
            if row is not None:  # missing: deleted since the index was read
                yield seq, row

    @staticmethod
    def _filter(
        rows: Iterator[tuple[int, _Row]],
        *,
        types: frozenset[str] | None,
        time_range_us: tuple[int, int] | None,
        correlation_id: bytes | None,
        source: str | None,
        limit: int | None,
    ) -> Iterator[tuple[int, bytes]]:
        remaining = -1 if limit is None else limit
        for seq, (event_type, ts, cid, src, payload) in rows:
            if types is not None and event_type not in types:
                continue
            if time_range_us is not None and not time_range_us[0] <= ts < time_range_us[1]:
                continue
            if correlation_id is not None and cid != correlation_id:
                continue
            if source is not None and src != source:
                continue
            yield seq, payload
            remaining -= 1
            if remaining == 0:
                return

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemoryStorage(_IndexedStorage):
    """Keep the journal in sorted in-memory indexes; same semantics as ``RocksStorage``.

    Nothing persists; ``sync`` is accepted and ignored.  Never blocks.
    """

    def __init__(self) -> None:
        self.corrupt_records = 0
        self.written = 0
        self._closed = False
        self._skew = 0
        self._max_ts = None
        self._rows: dict[int, _Row] = {}
        self._seqs: list[int] = []  # sorted: appends are increasing
        self._by_type: dict[str, list[int]] = {}  # registry too: never shrinks
        self._by_cid: dict[bytes, list[int]] = {}
        self._by_time: list[tuple[int, int]] = []
        self._checkpoints: dict[str, int] = {}
        self._last = 0

    def append(self, records: Sequence[StoredRecord], *, sync: bool = False) -> None:
        """Store records atomically; raise ``ValueError`` (storing none) if one is invalid."""
        self._check_open()
        last = self._last
        for record in records:
            _check_record(record, last)
            last = record.sequence
        for r in records:
            self._rows[r.sequence] = (
                r.event_type,
                r.timestamp_us,
                r.correlation_id,
                r.source,
                r.payload,
            )
            self._seqs.append(r.sequence)
            self._by_type.setdefault(r.event_type, []).append(r.sequence)
            if r.correlation_id is not None:
                self._by_cid.setdefault(r.correlation_id, []).append(r.sequence)
            entry = (r.timestamp_us, r.sequence)
            if not self._by_time or self._by_time[-1] < entry:
                self._by_time.append(entry)
            else:
                bisect.insort(self._by_time, entry)
            self._track_skew(r.timestamp_us)
        self._last = last
        self.written += len(records)

    def last_sequence(self) -> int:
        """Return the highest sequence ever stored (kept after retention), 0 if none."""
        self._check_open()
        return self._last

    def first_sequence(self) -> int | None:
        """Return the lowest stored sequence, or None if empty."""
        self._check_open()
        return self._seqs[0] if self._seqs else None

    def count(self) -> int:
        """Return the number of stored records."""
        self._check_open()
        return len(self._seqs)

    def get(self, sequence: int) -> bytes | None:
        """Return the payload stored under ``sequence``, or None."""
        self._check_open()
        row = self._rows.get(sequence)
        return None if row is None else row[4]

    def _known_types(self) -> Iterable[str]:
        return self._by_type.keys()

    @staticmethod
    def _slice(seqs: list[int], low: int, high: int, descending: bool) -> Iterator[int]:
        start = bisect.bisect_left(seqs, low)
        stop = bisect.bisect_left(seqs, high)
        if descending:
            return (seqs[i] for i in range(stop - 1, start - 1, -1))
        return (seqs[i] for i in range(start, stop))

    def _type_seqs(self, event_type: str, low: int, high: int, descending: bool) -> Iterator[int]:
        return self._slice(self._by_type.get(event_type, []), low, high, descending)

    def _cid_seqs(self, cid: bytes, low: int, high: int, descending: bool) -> Iterator[int]:
        return self._slice(self._by_cid.get(cid, []), low, high, descending)

    def _time_entries(self, start: int, end: int, descending: bool) -> Iterator[tuple[int, int]]:
        lo = bisect.bisect_left(self._by_time, (start, -1))
        hi = bisect.bisect_left(self._by_time, (end, -1))
        idx = range(hi - 1, lo - 1, -1) if descending else range(lo, hi)
        return (self._by_time[i] for i in idx)

    def _primary_rows(self, low: int, high: int, descending: bool) -> Iterator[tuple[int, _Row]]:
        return ((s, self._rows[s]) for s in self._slice(self._seqs, low, high, descending))

    def _fetch_rows(self, seqs: list[int]) -> list[_Row | None]:
        return [self._rows.get(s) for s in seqs]

    def delete_before(self, timestamp_us: int) -> int:
        """Delete every record with timestamp < ``timestamp_us``; return how many."""
        self._check_open()
        cut = bisect.bisect_left(self._by_time, (timestamp_us, -1))
        doomed = {seq for _, seq in self._by_time[:cut]}
        del self._by_time[:cut]
        return self._forget(doomed, time_done=True)

    def trim_to(self, max_events: int) -> int:
        """Delete the oldest records (by sequence) until at most ``max_events`` remain."""
        self._check_open()
        if max_events < 0:
            msg = f"max_events must be >= 0, got {max_events}"
            raise ValueError(msg)
        excess = len(self._seqs) - max_events
        if excess <= 0:
            return 0
        return self._forget(set(self._seqs[:excess]), time_done=False)

    def _forget(self, doomed: set[int], *, time_done: bool) -> int:
        if not doomed:
            return 0
        self._seqs = [s for s in self._seqs if s not in doomed]
        touched_types: set[str] = set()
        touched_cids: set[bytes] = set()
        for seq in doomed:
            event_type, _, cid, _, _ = self._rows.pop(seq)
            touched_types.add(event_type)
            if cid is not None:
                touched_cids.add(cid)
        for t in touched_types:
            self._by_type[t] = [s for s in self._by_type[t] if s not in doomed]
        for c in touched_cids:
            kept = [s for s in self._by_cid[c] if s not in doomed]
            if kept:
                self._by_cid[c] = kept
            else:
                del self._by_cid[c]
        if not time_done:
            self._by_time = [e for e in self._by_time if e[1] not in doomed]
        return len(doomed)

    def get_checkpoint(self, name: str) -> int | None:
        """Return the sequence saved under ``name``, or None."""
        self._check_open()
        return self._checkpoints.get(name)

    def set_checkpoint(self, name: str, sequence: int, *, sync: bool = False) -> None:
        """Save ``sequence`` under ``name``, replacing any earlier value."""
        self._check_open()
        self._checkpoints[name] = sequence

    def size_bytes(self) -> int:
        """Return the payload bytes held (a rough figure: indexes not counted)."""
        return sum(len(row[4]) for row in self._rows.values())

    def close(self) -> None:
        """Drop everything; later calls raise ``JournalError``.  Idempotent."""
        self._closed = True
        self._rows.clear()
        self._seqs.clear()


def _options() -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.set_compression_type(rocksdict.DBCompressionType.lz4())
    opts.set_write_buffer_size(64 << 20)  # fewer, larger L0 files under bursts
    return opts


def _index_options() -> rocksdict.Options:
    opts = _options()
    # Retention deletes index entries one by one; let RocksDB compact files
    # that fill up with tombstones instead of dragging them along.
    opts.add_compact_on_deletion_collector_factory(128 * 1024, 32 * 1024, 0.5)
    return opts


# rocksdict's stubs type keys and values loosely; in raw mode they are bytes.
def _keys(
    cf: rocksdict.Rdict, *, backwards: bool = False, from_key: bytes | None = None
) -> Iterator[bytes]:
    return cast("Iterator[bytes]", cf.keys(backwards=backwards, from_key=from_key))


def _items(
    cf: rocksdict.Rdict, *, backwards: bool = False, from_key: bytes | None = None
) -> Iterator[tuple[bytes, bytes]]:
    return cast("Iterator[tuple[bytes, bytes]]", cf.items(backwards=backwards, from_key=from_key))


def _multi_get(cf: rocksdict.Rdict, seqs: list[int]) -> list[bytes | None]:
    return cast("list[bytes | None]", cf.get([_SEQ.pack(s) for s in seqs]))


def _is_lock_error(message: str) -> bool:
    # RocksDB: "IO error: While lock file: <path>/LOCK: Resource temporarily
    # unavailable" (other process) or "lock hold by current process" (this one).
    return "/LOCK" in message or "lock hold by" in message or "While lock file" in message


class RocksStorage(_IndexedStorage):
    """Store the journal in RocksDB (rocksdict), WAL always on.

    Layout (``docs/storage.md``): the default column family maps the 8-byte
    big-endian sequence to header + payload; ``by_type``, ``by_time`` and
    ``by_cid`` hold empty-valued index keys; ``meta`` holds the type registry,
    checkpoints and counters.  Every method blocks the calling thread for its
    I/O, holding the GIL (rocksdict does not release it).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        """Open (or create) the journal at ``path``.

        Raises ``JournalLockedError`` if another process (or another open in
        this one) holds the journal, ``JournalError`` for any other failure:
        missing and ``create`` false, unreadable, or an unknown layout version.
        """
        self.corrupt_records = 0
        self.written = 0
        self._closed = True
        self._path = os.fspath(path)
        self._corrupt_seen: set[int] = set()
        self._source_cache: dict[str, bytes] = {}
        opts = _options()
        opts.create_if_missing(create)
        opts.create_missing_column_families(True)
        families = {
            _CF_TYPE: _index_options(),
            _CF_TIME: _index_options(),
            _CF_CID: _index_options(),
            _CF_META: _options(),
        }
        try:
            self._db = rocksdict.Rdict(self._path, opts, column_families=families)
        except Exception as exc:
            message = str(exc)
            if _is_lock_error(message):
                msg = f"journal {self._path!r} is locked by another process: {message}"
                raise JournalLockedError(msg) from exc
            msg = f"cannot open journal {self._path!r}: {message}"
            raise JournalError(msg) from exc
        try:
            self._type_cf = self._db.get_column_family(_CF_TYPE)
            self._time_cf = self._db.get_column_family(_CF_TIME)
            self._cid_cf = self._db.get_column_family(_CF_CID)
            self._meta = self._db.get_column_family(_CF_META)
            self._type_h = self._db.get_column_family_handle(_CF_TYPE)
            self._time_h = self._db.get_column_family_handle(_CF_TIME)
            self._cid_h = self._db.get_column_family_handle(_CF_CID)
            self._meta_h = self._db.get_column_family_handle(_CF_META)
            self._plain = rocksdict.WriteOptions()
            self._load_meta()
        except JournalError:
            self._release()
            raise
        except Exception as exc:
            self._release()
            msg = f"cannot open journal {self._path!r}: {exc}"
            raise JournalError(msg) from exc
        self._closed = False

    def _load_meta(self) -> None:
        fmt = self._meta.get(_META_FORMAT)
        if fmt is None:
            self._meta.put(_META_FORMAT, _SEQ.pack(_FORMAT))
        elif fmt != _SEQ.pack(_FORMAT):
            msg = f"journal {self._path!r} has an unknown layout version {fmt!r}"
            raise JournalError(msg)
        self._type_ids: dict[str, int] = {}
        self._type_names: dict[int, str] = {}
        for key, value in _items(self._meta, from_key=_META_TYPE):
            if not key.startswith(_META_TYPE):
                break
            name = key[len(_META_TYPE) :].decode()
            (tid,) = struct.unpack(">I", value)
            self._type_ids[name] = tid
            self._type_names[tid] = name
        count = self._meta.get(_META_COUNT)
        self._count = 0 if count is None else _SEQ.unpack(count)[0]
        skew = self._meta.get(_META_SKEW)
        self._skew = 0 if skew is None else _SEQ.unpack(skew)[0]
        self._last = 0
        for key in _keys(self._db, backwards=True):
            self._last = _SEQ.unpack(key)[0]
            break
        self._max_ts = None
        for key in _keys(self._time_cf, backwards=True):
            self._max_ts = _TIME_KEY.unpack(key)[0] - _TS_BIAS
            break

    # -- writing ---------------------------------------------------------------

    def _write(self, batch: rocksdict.WriteBatch, sync: bool) -> None:
        # Measured (docs/storage.md): Rdict.write holds the GIL for its whole
        # duration, so write(batch, sync=True) stalls every Python thread for
        # the fsync too.  Rdict.flush_wal(True) releases the GIL while it
        # fsyncs, so a synced write is an unsynced write (WAL appended, still
        # atomic) followed by an fsync of the WAL: same durability, other
        # threads run during the fsync.
        try:
            self._db.write(batch, self._plain)
            if sync:
                self._db.flush_wal(True)
        except Exception as exc:
            msg = f"journal write failed: {exc}"
            raise JournalError(msg) from exc

    def append(self, records: Sequence[StoredRecord], *, sync: bool = False) -> None:
        """Store records and their index entries in one atomic WriteBatch.

        Sequences must rise above ``last_sequence()``; an invalid record
        raises ``ValueError`` and stores nothing.  Blocks for the write, and
        with ``sync`` until the WAL is fsynced (the records are on disk when
        it returns).  Raises ``JournalError`` if the write fails.
        """
        self._check_open()
        if not records:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        new_types: dict[str, int] = {}
        type_ids = self._type_ids
        sources = self._source_cache
        last = self._last
        skew, max_ts = self._skew, self._max_ts
        next_tid = len(type_ids) + 1
        pack_header, pack_seq = _HEADER.pack, _SEQ.pack
        type_key, time_key = _TYPE_KEY.pack, _TIME_KEY.pack
        put = batch.put
        type_h, time_h, cid_h = self._type_h, self._time_h, self._cid_h
        # Hot loop (about half of append's cost is here): locals, no calls
        # that can be avoided; struct.error covers out-of-range numbers.
        try:
            for r in records:
                seq = r.sequence
                if seq <= last:
                    _check_record(r, last)  # raises with the reason
                last = seq
                event_type = r.event_type
                tid = type_ids.get(event_type) or new_types.get(event_type)
                if tid is None:
                    tid = new_types[event_type] = next_tid
                    next_tid += 1
                    put(_META_TYPE + event_type.encode(), struct.pack(">I", tid), self._meta_h)
                ts = r.timestamp_us
                src = r.source
                if src is None:
                    flags, tail = 0, b""
                else:
                    flags = _FLAG_SOURCE
                    tail = sources.get(src) or self._encode_source(src)
                key = pack_seq(seq)
                cid = r.correlation_id
                if cid is None:
                    put(key, pack_header(_HEADER_VERSION, flags, tid, ts) + tail + r.payload)
                else:
                    if len(cid) != _CID_LEN:
                        msg = f"correlation_id must be {_CID_LEN} bytes, got {len(cid)}"
                        raise ValueError(msg)
                    head = pack_header(_HEADER_VERSION, flags | _FLAG_CID, tid, ts)
                    put(key, head + cid + tail + r.payload)
                    put(cid + key, b"", cid_h)
                put(type_key(tid, seq), b"", type_h)
                put(time_key(ts + _TS_BIAS, seq), b"", time_h)
                if max_ts is None or ts > max_ts:
                    max_ts = ts
                elif max_ts - ts > skew:
                    skew = max_ts - ts
        except struct.error as exc:
            msg = f"record cannot be stored (sequence or timestamp out of range): {exc}"
            raise ValueError(msg) from exc
        put(_META_COUNT, pack_seq(self._count + len(records)), self._meta_h)
        if skew != self._skew:
            put(_META_SKEW, pack_seq(skew), self._meta_h)
        # Column-family handles keep the database (and its LOCK) alive: drop
        # them before a write error's traceback can capture this frame.
        del type_h, time_h, cid_h
        self._write(batch, sync)
        for name, tid in new_types.items():
            self._type_ids[name] = tid
            self._type_names[tid] = name
        self._last, self._skew, self._max_ts = last, skew, max_ts
        self._count += len(records)
        self.written += len(records)

    def _encode_source(self, source: str) -> bytes:
        raw = source.encode()
        if len(raw) > 0xFFFF:
            msg = f"source is {len(raw)} bytes in UTF-8; at most 65535 are stored"
            raise ValueError(msg)
        encoded = _U16.pack(len(raw)) + raw
        if len(self._source_cache) < 1024:  # sources are few (agent names)
            self._source_cache[source] = encoded
        return encoded

    # -- reading ---------------------------------------------------------------

    def last_sequence(self) -> int:
        """Return the highest sequence stored, 0 if the journal was always empty.

        Kept in memory (read once at open), so it is cheap.  Retention never
        lowers it below a sequence already handed out while open; after a
        reopen of a fully trimmed journal it restarts from the highest record
        left (0 if none) -- the bus keeps its own high-water mark if it needs
        more.
        """
        self._check_open()
        return self._last

    def first_sequence(self) -> int | None:
        """Return the lowest stored sequence, or None if empty.  Reads one key."""
        self._check_open()
        for key in _keys(self._db):
            return int(_SEQ.unpack(key)[0])
        return None

    def count(self) -> int:
        """Return the number of stored records (a counter kept in ``meta``)."""
        self._check_open()
        return self._count

    def _parse(self, seq: int, value: bytes) -> tuple[int, int, bytes | None, str | None, int]:
        """Return (type id, timestamp, cid, source, payload offset); raise ValueError."""
        if len(value) < _HEADER.size:
            msg = "value shorter than the header"
            raise ValueError(msg)
        version, flags, tid, ts = _HEADER.unpack_from(value)
        if version != _HEADER_VERSION or flags & ~(_FLAG_CID | _FLAG_SOURCE):
            msg = f"unknown header version {version} or flags {flags:#x}"
            raise ValueError(msg)
        pos = _HEADER.size
        cid = None
        if flags & _FLAG_CID:
            cid = value[pos : pos + _CID_LEN]
            pos += _CID_LEN
        source = None
        if flags & _FLAG_SOURCE:
            if len(value) < pos + 2:
                msg = "truncated source"
                raise ValueError(msg)
            (n,) = _U16.unpack_from(value, pos)
            pos += 2
            source = value[pos : pos + n].decode()
            pos += n
        if pos > len(value):
            msg = "truncated header"
            raise ValueError(msg)
        return tid, ts, cid, source, pos

    def _row(self, seq: int, value: bytes) -> _Row | None:
        try:
            tid, ts, cid, source, pos = self._parse(seq, value)
            event_type = self._type_names[tid]
        except (ValueError, KeyError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
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
        if not 0 <= sequence <= _MAX_SEQ:
            return None
        value = self._read(lambda: self._db.get(_SEQ.pack(sequence)))
        if value is None:
            return None
        row = self._row(sequence, value)
        return None if row is None else row[4]

    @staticmethod
    def _read(call: Callable[[], _T]) -> _T:
        try:
            return call()
        except Exception as exc:
            msg = f"journal read failed: {exc}"
            raise JournalError(msg) from exc

    def _known_types(self) -> Iterable[str]:
        return self._type_ids.keys()

    def _type_seqs(self, event_type: str, low: int, high: int, descending: bool) -> Iterator[int]:
        tid = self._type_ids[event_type]
        return self._index_seqs(self._type_cf, struct.pack(">I", tid), low, high, descending)

    def _cid_seqs(self, cid: bytes, low: int, high: int, descending: bool) -> Iterator[int]:
        return self._index_seqs(self._cid_cf, cid, low, high, descending)

    @staticmethod
    def _index_seqs(
        cf: rocksdict.Rdict, prefix: bytes, low: int, high: int, descending: bool
    ) -> Iterator[int]:
        """Yield the sequences of ``prefix + sequence`` keys with low <= sequence < high."""
        # Bounds are checked here: rocksdict 0.3.29 ignores iterate_lower_bound.
        first = prefix + _SEQ.pack(low)
        size = len(prefix)
        if descending:
            for key in _keys(cf, backwards=True, from_key=prefix + _SEQ.pack(high - 1)):
                if key < first:
                    return
                yield _SEQ.unpack_from(key, size)[0]
        else:
            stop = prefix + _SEQ.pack(high) if high <= _MAX_SEQ else None
            for key in _keys(cf, from_key=first):
                if key[:size] != prefix or (stop is not None and key >= stop):
                    return
                yield _SEQ.unpack_from(key, size)[0]

    def _time_entries(self, start: int, end: int, descending: bool) -> Iterator[tuple[int, int]]:
        first = _TIME_KEY.pack(max(start + _TS_BIAS, 0), 0)
        stop = _TIME_KEY.pack(min(end + _TS_BIAS, _MAX_SEQ), 0)
        if descending:
            # seek_for_prev lands on the last key <= from_key; stop is exclusive.
            for key in _keys(self._time_cf, backwards=True, from_key=stop):
                if key >= stop:
                    continue
                if key < first:
                    return
                ts, seq = _TIME_KEY.unpack(key)
                yield ts - _TS_BIAS, seq
        else:
            for key in _keys(self._time_cf, from_key=first):
                if key >= stop:
                    return
                ts, seq = _TIME_KEY.unpack(key)
                yield ts - _TS_BIAS, seq

    def _primary_rows(self, low: int, high: int, descending: bool) -> Iterator[tuple[int, _Row]]:
        if descending:
            items = _items(self._db, backwards=True, from_key=_SEQ.pack(high - 1))
        else:
            items = _items(self._db, from_key=_SEQ.pack(low))
        for key, value in items:
            seq = _SEQ.unpack(key)[0]
            if not low <= seq < high:
                return
            row = self._row(seq, value)
            if row is not None:
                yield seq, row

    def _fetch_rows(self, seqs: list[int]) -> list[_Row | None]:
        values = self._read(lambda: _multi_get(self._db, seqs))
        return [None if v is None else self._row(s, v) for s, v in zip(seqs, values, strict=True)]

    # -- retention -------------------------------------------------------------

    def delete_before(self, timestamp_us: int) -> int:
        """Delete every record with timestamp < ``timestamp_us``; return how many.

        Walks the time index in chunks of 50,000; each chunk is one WriteBatch
        holding a range delete of its time-index span, range deletes of runs
        of consecutive sequences in the primary space, and point deletes of
        the type and correlation index keys.  Blocks for the reads and writes;
        raises ``JournalError`` if one fails.
        """
        self._check_open()
        stop = _TIME_KEY.pack(min(max(timestamp_us + _TS_BIAS, 0), _MAX_SEQ), 0)
        deleted = 0
        while True:
            keys: list[bytes] = []
            for key in _keys(self._time_cf):
                if key >= stop or len(keys) >= _RETENTION_CHUNK:
                    break
                keys.append(key)
            if not keys:
                return deleted
            seqs = sorted(_TIME_KEY.unpack(k)[1] for k in keys)
            batch = rocksdict.WriteBatch(raw_mode=True)
            # All time keys between the first and last read are in this chunk.
            batch.delete_range(keys[0], keys[-1] + b"\x00", self._time_h)
            deleted += self._delete_records(batch, seqs, time_done=True)
            if len(keys) < _RETENTION_CHUNK:
                return deleted

    def trim_to(self, max_events: int) -> int:
        """Delete the oldest records (by sequence) until at most ``max_events`` remain.

        Returns how many were deleted.  One range delete per chunk of 50,000
        in the primary space plus point deletes of their index keys.  Blocks;
        raises ``JournalError`` if a read or write fails.
        """
        self._check_open()
        if max_events < 0:
            msg = f"max_events must be >= 0, got {max_events}"
            raise ValueError(msg)
        deleted = 0
        while (excess := self._count - max_events) > 0:
            seqs: list[int] = []
            for key in _keys(self._db):
                if len(seqs) >= min(excess, _RETENTION_CHUNK):
                    break
                seqs.append(_SEQ.unpack(key)[0])
            if not seqs:
                self._count = 0  # the counter drifted; the store is empty
                break
            batch = rocksdict.WriteBatch(raw_mode=True)
            deleted += self._delete_records(batch, seqs, time_done=False)
        return deleted

    def _delete_records(
        self, batch: rocksdict.WriteBatch, seqs: list[int], *, time_done: bool
    ) -> int:
        """Add deletes of these sorted sequences and their index keys to ``batch``; write it."""
        values = self._read(lambda: _multi_get(self._db, seqs))
        present = [(s, v) for s, v in zip(seqs, values, strict=True) if v is not None]
        # Runs of consecutive integers hold no other key: range-delete them.
        run_start = prev = -2
        for seq, _ in present:
            if seq != prev + 1:
                if run_start >= 0:
                    self._delete_run(batch, run_start, prev)
                run_start = seq
            prev = seq
        if run_start >= 0:
            self._delete_run(batch, run_start, prev)
        for seq, value in present:
            try:
                tid, ts, cid, _, _ = self._parse(seq, value)
            except (ValueError, struct.error) as exc:
                # Its index entries cannot be located; scans skip them as missing.
                self._report_corrupt(seq, exc)
                continue
            batch.delete(_TYPE_KEY.pack(tid, seq), self._type_h)
            if not time_done:
                batch.delete(_TIME_KEY.pack(ts + _TS_BIAS, seq), self._time_h)
            if cid is not None:
                batch.delete(cid + _SEQ.pack(seq), self._cid_h)
        count = max(self._count - len(present), 0)
        batch.put(_META_COUNT, _SEQ.pack(count), self._meta_h)
        self._write(batch, False)
        self._count = count
        self._corrupt_seen.difference_update(s for s, _ in present)
        return len(present)

    def _delete_run(self, batch: rocksdict.WriteBatch, first: int, last: int) -> None:
        if first == last:
            batch.delete(_SEQ.pack(first))
        else:
            batch.delete_range(_SEQ.pack(first), _SEQ.pack(last + 1))

    # -- checkpoints and figures -------------------------------------------------

    def get_checkpoint(self, name: str) -> int | None:
        """Return the sequence saved under ``name``, or None.  Reads one key."""
        self._check_open()
        value = self._read(lambda: self._meta.get(_META_CHECKPOINT + name.encode()))
        return None if value is None else int(_SEQ.unpack(value)[0])

    def set_checkpoint(self, name: str, sequence: int, *, sync: bool = False) -> None:
        """Save ``sequence`` under ``name``; with ``sync``, block until it is on disk.

        Raises ``JournalError`` if the write fails.
        """
        self._check_open()
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(_META_CHECKPOINT + name.encode(), _SEQ.pack(sequence), self._meta_h)
        self._write(batch, sync)

    def size_bytes(self) -> int:
        """Return the bytes of the journal's folder (SST files, WAL, manifest)."""
        total = 0
        try:
            with os.scandir(self._path) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            return total
        return total

    def close(self) -> None:
        """Flush the memtables and release the journal's lock.  Idempotent.

        Blocks for the flush.  Later calls raise ``JournalError``.
        """
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        # Column-family Rdicts and handles keep RocksDB (and its LOCK) alive
        # until they are closed or dropped.  Drop every reference first, then
        # close each one even if an earlier close fails (after a write error
        # RocksDB refuses to close cleanly), so the LOCK is always released.
        handles = [
            self.__dict__.pop(name, None)
            for name in ("_type_cf", "_time_cf", "_cid_cf", "_meta", "_db")
        ]
        for name in ("_type_h", "_time_h", "_cid_h", "_meta_h"):
            self.__dict__.pop(name, None)
        first: Exception | None = None
        while handles:
            handle = handles.pop()
            if handle is None:
                continue
            try:
                handle.close()
            except Exception as exc:
                # Keep no traceback: its frames would keep the handle (and the
                # LOCK) alive for as long as anyone holds the error.
                first = first or exc.with_traceback(None)
            del handle
        gc.collect()  # rocksdict releases the LOCK when the last reference goes
        if first is not None:
            msg = f"journal close failed: {first}"
            raise JournalError(msg) from first
