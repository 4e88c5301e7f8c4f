"""The query planner: pick the most selective index, walk it, filter the rest.

Backend-neutral: ``IndexedStorage`` implements ``Storage.scan`` over a few
index primitives each backend supplies (sequences of one type or one
correlation id, time-index entries, primary rows, a multi-get).  Plain code,
no threads, no driver: tested through the conformance suite and on its own.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Self

from actors._errors import JournalError
from actors._journal.records import MAX_SEQ, Row, TypeMatcher

__all__ = ["IndexedStorage", "in_sequence_order"]

TS_MIN = -(1 << 63)
TS_MAX = (1 << 63) - 1
WINDOW_PROBE = 10_000  # time-index reads spent narrowing a query to a sequence window
FETCH_CHUNK = 64  # index hits fetched per multi-get


def in_sequence_order(
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
        low = MAX_SEQ + 1
        for ts, seq in entries:
            while pending and pending[0][0] - skew > ts:
                low = min(low, pending.popleft()[1])
            while heap and -heap[0] >= low:
                yield -heapq.heappop(heap)
            heapq.heappush(heap, -seq)
            pending.append((ts, seq))
        while heap:
            yield -heapq.heappop(heap)


class IndexedStorage:
    """The query planner shared by both backends; subclasses supply index reads."""

    corrupt_records: int
    written: int
    read_only: bool
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

    def _primary_rows(self, low: int, high: int, descending: bool) -> Iterator[tuple[int, Row]]:
        """Yield (sequence, row) for sequences in [low, high), skipping corrupt records."""
        raise NotImplementedError

    def _fetch_rows(self, seqs: list[int]) -> list[Row | None]:
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
        before_sequence: int | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Yield (sequence, payload) of the records matching every given filter.

        ``after_sequence`` and ``before_sequence`` bound the sequences, both
        exclusive (a reader pages on from the last record it got with one of
        them, whichever way it reads).

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
        high = MAX_SEQ + 1 if before_sequence is None else max(before_sequence, 0)
        if time_range_us is not None and (correlation_id is not None or types is not None):
            # Narrow the chosen index to the sequences the time range can hold.
            win_low, win_high = self._seq_window(*time_range_us)
            low, high = max(low, win_low), min(high, win_high)
        if low >= high:
            return iter(())
        rows: Iterator[tuple[int, Row]]
        if correlation_id is not None:
            rows = self._rows_for(self._cid_seqs(correlation_id, low, high, descending), limit)
        elif types is not None:
            streams = [self._type_seqs(t, low, high, descending) for t in sorted(types)]
            merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, reverse=descending)
            rows = self._rows_for(merged, limit)
        elif time_range_us is not None:
            entries = self._time_entries(time_range_us[0], time_range_us[1], descending)
            ordered = in_sequence_order(entries, self._skew, descending)
            rows = self._rows_for((s for s in ordered if low <= s < high), limit)
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
        reads find it.  Gives up (whole range) past ``WINDOW_PROBE`` reads.
        """
        skew = self._skew
        low, nearest = 0, None
        for n, (ts, seq) in enumerate(self._time_entries(TS_MIN, start - skew, True)):
            if nearest is None:
                nearest = ts
            elif ts < nearest - skew:
                break
            if n >= WINDOW_PROBE:
                low = 0
                break
            low = max(low, seq + 1)
        high, nearest = MAX_SEQ + 1, None
        for n, (ts, seq) in enumerate(self._time_entries(end + skew, TS_MAX, False)):
            if nearest is None:
                nearest = ts
            elif ts > nearest + skew:
                break
            if n >= WINDOW_PROBE:
                high = MAX_SEQ + 1
                break
            high = min(high, seq)
        return low, high

    def _rows_for(self, seqs: Iterator[int], limit: int | None) -> Iterator[tuple[int, Row]]:
        # Fetch index hits in growing chunks: a small limit costs few reads, a
        # large result amortises the multi-get.
        size = min(limit or FETCH_CHUNK, FETCH_CHUNK)
        chunk: list[int] = []
        for seq in seqs:
            chunk.append(seq)
            if len(chunk) >= size:
                yield from self._fetched(chunk)
                chunk = []
                size = min(size * 2, 4 * FETCH_CHUNK)
        if chunk:
            yield from self._fetched(chunk)

    def _fetched(self, seqs: list[int]) -> Iterator[tuple[int, Row]]:
        for seq, row in zip(seqs, self._fetch_rows(seqs), strict=True):
            if row is not None:  # missing: deleted since the index was read
                yield seq, row

    @staticmethod
    def _filter(
        rows: Iterator[tuple[int, Row]],
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
