"""Retention, checkpoints and index walks of the RocksDB layout (a mixin of ``RocksTables``).

Deletes go in WriteBatches of at most 50,000 records: range deletes over runs
of consecutive sequences in the primary space, point deletes of index keys.
No driver import: batches come from ``_new_batch`` (``rocks.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from actors._errors import JournalError
from actors._journal.cursor import walk
from actors._journal.native import without_gil
from actors._journal.records import (
    HIGH_WATER,
    MAX_SEQ,
    SEQ,
    TIME_KEY,
    TS_BIAS,
    TYPE_KEY,
    parse_value,
)

__all__ = ["RetentionMixin"]

_RETENTION_CHUNK = 50_000  # records per retention WriteBatch: bounds memory and batch size
_SETTLE_AFTER = 10_000  # records deleted after which the indexes' memtables are flushed
_META_COUNT = b"s:count"
META_CHECKPOINT = b"c:"  # c:<name utf-8> -> sequence (u64)


class RetentionMixin:
    """``delete_before``, ``trim_to`` and the index walks, over ``RocksTables`` state."""

    _db: Any
    _type_cf: Any
    _time_cf: Any
    _cid_cf: Any
    _type_h: Any
    _time_h: Any
    _cid_h: Any
    _meta_h: Any
    _count: int
    _type_ids: dict[str, int]
    _corrupt_seen: set[int]
    _unsettled: int
    _meta: Any
    _last: int

    # Supplied by RocksTables / rocks.py.
    if TYPE_CHECKING:  # IndexedStorage's; a stub here would shadow it in the MRO

        def _check_open(self) -> None: ...

    def _check_writable(self) -> None:
        raise NotImplementedError

    def _new_batch(self) -> Any:
        raise NotImplementedError

    def _write(self, batch: Any, sync: bool) -> None:
        raise NotImplementedError

    def _multi_get(self, seqs: list[int]) -> list[bytes | None]:
        """Return the values of these sequences; a record in a damaged block counts and is None."""
        try:
            values: list[bytes | None] = self._db.get([SEQ.pack(s) for s in seqs])
        except Exception:
            values = []
            for seq in seqs:  # one by one, to find the unreadable ones
                try:
                    values.append(self._db.get(SEQ.pack(seq)))
                except Exception as exc:
                    self._report_corrupt(seq, exc)
                    values.append(None)
        return values

    def _sequences(
        self, start: int, *, backwards: bool = False, values: bool = True
    ) -> Iterator[tuple[int, bytes | None]]:
        raise NotImplementedError

    def _report_corrupt(self, seq: int, exc: BaseException) -> None:
        raise NotImplementedError

    # -- index walks ---------------------------------------------------------------

    def _type_seqs(self, event_type: str, low: int, high: int, descending: bool) -> Iterator[int]:
        tid = self._type_ids[event_type]
        return _index_seqs(self._type_cf, struct.pack(">I", tid), low, high, descending)

    def _cid_seqs(self, cid: bytes, low: int, high: int, descending: bool) -> Iterator[int]:
        return _index_seqs(self._cid_cf, cid, low, high, descending)

    def _time_entries(self, start: int, end: int, descending: bool) -> Iterator[tuple[int, int]]:
        # The planner widens ranges by the skew, past the int64 edges too.
        first = TIME_KEY.pack(min(max(start + TS_BIAS, 0), MAX_SEQ), 0)
        stop = TIME_KEY.pack(min(max(end + TS_BIAS, 0), MAX_SEQ), 0)
        if descending:
            # seek_for_prev lands on the last key <= from_key; stop is exclusive.
            for key, _ in walk(self._time_cf, backwards=True, from_key=stop):
                if key >= stop:
                    continue
                if key < first:
                    return
                ts, seq = TIME_KEY.unpack(key)
                yield ts - TS_BIAS, seq
        else:
            for key, _ in walk(self._time_cf, from_key=first):
                if key >= stop:
                    return
                ts, seq = TIME_KEY.unpack(key)
                yield ts - TS_BIAS, seq

    # -- checkpoints and figures -------------------------------------------------

    def get_checkpoint(self, name: str) -> int | None:
        """Return the sequence saved under ``name``, or None.  Reads one key."""
        self._check_open()
        try:
            value = self._meta.get(META_CHECKPOINT + name.encode())
        except Exception as exc:
            msg = f"journal read failed: {exc}"
            raise JournalError(msg) from exc
        return None if value is None else int(SEQ.unpack(value)[0])

    def set_checkpoint(self, name: str, sequence: int, *, sync: bool = False) -> None:
        """Save ``sequence`` under ``name``; with ``sync``, block until it is on disk.

        Raises ``JournalError`` if the write fails or the journal is read-only.
        """
        self.set_checkpoints([(name, sequence)], sync=sync)

    def set_checkpoints(self, items: Sequence[tuple[str, int]], *, sync: bool = False) -> None:
        """Save each ``(name, sequence)`` of ``items``, all in one write: all of them or none.

        Raises ``JournalError`` if the write fails or the journal is read-only.
        """
        self._check_writable()
        batch = self._new_batch()
        for name, sequence in items:
            batch.put(META_CHECKPOINT + name.encode(), SEQ.pack(sequence), self._meta_h)
        self._write(batch, sync)

    def accept_loss(self, sequence: int) -> None:
        """Record that sequences up to ``sequence`` are spoken for (after an accepted loss)."""
        self._check_writable()
        self.set_checkpoint(HIGH_WATER, max(sequence, self._last), sync=True)

    # -- retention -------------------------------------------------------------

    def delete_before(self, timestamp_us: int, below: int | None = None) -> int:
        """Delete every record with timestamp < ``timestamp_us``; return how many.

        Walks the time index in chunks of 50,000; each chunk is one WriteBatch
        holding a range delete of its time-index span, range deletes of runs
        of consecutive sequences in the primary space, and point deletes of
        the type and correlation index keys.  With ``below``, only records
        with a sequence under it go (and the time keys are deleted one by
        one).  Blocks for the reads and writes; raises ``JournalError`` if one
        fails or the journal is read-only.
        """
        self._check_writable()
        stop = TIME_KEY.pack(min(max(timestamp_us + TS_BIAS, 0), MAX_SEQ), 0)
        deleted = 0
        start: bytes | None = None
        while True:
            keys: list[bytes] = []
            for key, _ in walk(self._time_cf, from_key=start):
                if key >= stop or len(keys) >= _RETENTION_CHUNK:
                    break
                keys.append(key)
            if not keys:
                return self._settled(deleted)
            seqs = sorted(TIME_KEY.unpack(k)[1] for k in keys)
            batch = self._new_batch()
            if below is None:
                # All time keys between the first and last read are in this chunk.
                batch.delete_range(keys[0], keys[-1] + b"\x00", self._time_h)
                deleted += self._delete_records(batch, seqs, time_done=True)
            else:
                kept = [s for s in seqs if s < below]
                deleted += self._delete_records(batch, kept, time_done=False)
                start = keys[-1] + b"\x00"  # the kept keys stay: walk on past them
            if len(keys) < _RETENTION_CHUNK:
                return self._settled(deleted)

    def trim_to(self, max_events: int, below: int | None = None) -> int:
        """Delete the oldest records (by sequence) until at most ``max_events`` remain.

        Returns how many were deleted.  One range delete per chunk of 50,000
        in the primary space plus point deletes of their index keys.  With
        ``below``, no record with a sequence at or above it goes (more than
        ``max_events`` may remain).  Blocks; raises ``JournalError`` if a read
        or write fails or the journal is read-only.
        """
        self._check_writable()
        if max_events < 0:
            msg = f"max_events must be >= 0, got {max_events}"
            raise ValueError(msg)
        deleted = 0
        while (excess := self._count - max_events) > 0:
            seqs: list[int] = []
            floor = False
            for seq, _ in self._sequences(0, values=False):
                if len(seqs) >= min(excess, _RETENTION_CHUNK):
                    break
                if below is not None and seq >= below:
                    floor = True
                    break
                seqs.append(seq)
            if not seqs:
                if not floor:
                    self._count = 0  # the counter drifted; the store is empty
                break
            # Records of a damaged block the walk skipped are as old as their
            # sequences say: they go in their turn, or newer events would go
            # in their place (the count holds them).
            unread = sorted(s for s in self._corrupt_seen if s < seqs[-1])
            if unread:
                merged = sorted({*seqs, *unread})[: min(excess, _RETENTION_CHUNK)]
                taken = set(seqs)
                seqs = [s for s in merged if s in taken]
                unread = [s for s in merged if s not in taken]
            batch = self._new_batch()
            deleted += self._delete_records(batch, seqs, time_done=False, unread=unread)
        return self._settled(deleted)

    def _settled(self, deleted: int) -> int:
        """Flush the indexes' deletes to table files once they add up; return ``deleted``.

        Index entries go by point deletes, which stay in the memtables (a
        64 MiB one holds millions of them: index keys are small) where every
        seek of a query walks them all, and the compact-on-deletion
        collector, which compacts them away, looks at table files only.
        Counted across passes: a slow journal's retention deletes little at
        a time, and its memtables fill slowly.
        """
        self._unsettled += deleted
        if self._unsettled >= _SETTLE_AFTER:
            try:
                for family in (self._type_cf, self._time_cf, self._cid_cf):
                    without_gil(family.flush)  # waits for the flush (not at exit)
            except Exception as exc:  # rocksdict: a bare Exception per RocksDB status
                raise JournalError(f"cannot flush the journal's indexes: {exc}") from exc
            self._unsettled = 0
        return deleted

    def _delete_records(
        self, batch: Any, seqs: list[int], *, time_done: bool, unread: Sequence[int] = ()
    ) -> int:
        """Add deletes of these sorted sequences and their index keys to ``batch``; write it.

        ``unread``: records of a damaged block (their values cannot be read):
        their keys and type-index entries go, so no later read reports them
        again; their other index entries stay, skipped as missing.
        """
        for seq in unread:
            batch.delete(SEQ.pack(seq))
            for tid in self._type_ids.values():
                batch.delete(TYPE_KEY.pack(tid, seq), self._type_h)
        values = self._multi_get(seqs)
        present = [(s, v) for s, v in zip(seqs, values, strict=True) if v is not None]
        # Runs of consecutive integers hold no other key: range-delete them.
        run_start = prev = -2
        for seq, _ in present:
            if seq != prev + 1:
                if run_start >= 0:
                    _delete_run(batch, run_start, prev)
                run_start = seq
            prev = seq
        if run_start >= 0:
            _delete_run(batch, run_start, prev)
        for seq, value in present:
            try:
                tid, ts, cid, _, _ = parse_value(value)
            except ValueError as exc:
                # Its index entries cannot be located; scans skip them as missing.
                self._report_corrupt(seq, exc)
                continue
            batch.delete(TYPE_KEY.pack(tid, seq), self._type_h)
            if not time_done:
                batch.delete(TIME_KEY.pack(ts + TS_BIAS, seq), self._time_h)
            if cid is not None:
                batch.delete(cid + SEQ.pack(seq), self._cid_h)
        count = max(self._count - len(present) - len(unread), 0)
        batch.put(_META_COUNT, SEQ.pack(count), self._meta_h)
        if present and present[-1][0] >= self._last:
            # The newest record goes: its sequence stays spoken for after a reopen.
            high = max(self.get_checkpoint(HIGH_WATER) or 0, present[-1][0])
            batch.put(META_CHECKPOINT + HIGH_WATER.encode(), SEQ.pack(high), self._meta_h)
        self._write(batch, False)
        self._count = count
        self._corrupt_seen.difference_update(s for s, _ in present)
        self._corrupt_seen.difference_update(unread)
        return len(present) + len(unread)


def _delete_run(batch: Any, first: int, last: int) -> None:
    if first == last:
        batch.delete(SEQ.pack(first))
    else:
        batch.delete_range(SEQ.pack(first), SEQ.pack(last + 1))


def _index_seqs(cf: Any, prefix: bytes, low: int, high: int, descending: bool) -> Iterator[int]:
    """Yield the sequences of ``prefix + sequence`` keys with low <= sequence < high."""
    first = prefix + SEQ.pack(low)
    size = len(prefix)
    if descending:
        for key, _ in walk(cf, backwards=True, from_key=prefix + SEQ.pack(high - 1)):
            if key < first:
                return
            yield SEQ.unpack_from(key, size)[0]
    else:
        stop = prefix + SEQ.pack(high) if high <= MAX_SEQ else None
        for key, _ in walk(cf, from_key=first):
            if key[:size] != prefix or (stop is not None and key >= stop):
                return
            yield SEQ.unpack_from(key, size)[0]
