"""The in-memory backend: sorted indexes in dicts and lists, nothing persists.

Used by a bus without a journal path where a ``Storage`` is needed, and by the
conformance suite as the reference the RocksDB backend must agree with.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Sequence

from actors._journal.planner import IndexedStorage
from actors._journal.records import Row, StoredRecord, check_record

__all__ = ["MemoryStorage"]


class MemoryStorage(IndexedStorage):
    """Keep the journal in sorted in-memory indexes; same semantics as ``RocksStorage``.

    Nothing persists; ``sync`` is accepted and ignored.  Never blocks.
    """

    def __init__(self) -> None:
        self.corrupt_records = 0
        self.written = 0
        self.read_only = False
        self.numbering = random.getrandbits(63)  # nothing persists: a new numbering each time
        self._closed = False
        self._skew = 0
        self._max_ts = None
        self._rows: dict[int, Row] = {}
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
            check_record(record, last)
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

    def _primary_rows(self, low: int, high: int, descending: bool) -> Iterator[tuple[int, Row]]:
        return ((s, self._rows[s]) for s in self._slice(self._seqs, low, high, descending))

    def _fetch_rows(self, seqs: list[int]) -> list[Row | None]:
        return [self._rows.get(s) for s in seqs]

    def delete_before(self, timestamp_us: int, below: int | None = None) -> int:
        """Delete every record with timestamp < ``timestamp_us`` (and sequence < ``below``)."""
        self._check_open()
        cut = bisect.bisect_left(self._by_time, (timestamp_us, -1))
        if below is None:
            doomed = {seq for _, seq in self._by_time[:cut]}
            del self._by_time[:cut]
            return self._forget(doomed, time_done=True)
        doomed = {seq for _, seq in self._by_time[:cut] if seq < below}
        return self._forget(doomed, time_done=False)

    def trim_to(self, max_events: int, below: int | None = None) -> int:
        """Delete the oldest records (by sequence) until at most ``max_events`` remain.

        With ``below``, none at or above that sequence goes.
        """
        self._check_open()
        if max_events < 0:
            msg = f"max_events must be >= 0, got {max_events}"
            raise ValueError(msg)
        excess = len(self._seqs) - max_events
        if excess <= 0:
            return 0
        oldest = self._seqs[:excess]
        if below is not None:
            oldest = [s for s in oldest if s < below]
        return self._forget(set(oldest), time_done=False)

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

    def set_checkpoints(self, items: Sequence[tuple[str, int]], *, sync: bool = False) -> None:
        """Save each ``(name, sequence)`` of ``items``."""
        self._check_open()
        self._checkpoints.update(items)

    def size_bytes(self) -> int:
        """Return the payload bytes held (a rough figure: indexes not counted)."""
        return sum(len(row[4]) for row in self._rows.values())

    def close(self) -> None:
        """Drop everything; later calls raise ``JournalError``.  Idempotent."""
        self._closed = True
        self._rows.clear()
        self._seqs.clear()
