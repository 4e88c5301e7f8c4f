"""Check and rebuild the secondary state from the records (a mixin of ``RocksTables``).

The records (the default column family) are the journal; everything else is
derived from them: the type registry, the count and the skew in ``meta``, and
the ``by_type``, ``by_time`` and ``by_cid`` indexes.  When a table file of an
index or of ``meta`` is lost (RocksDB's repair then opens the journal without
it), the records are intact but the journal would look shorter.  Here:

- ``quick_problems()``: a few point reads (no record scan) for every open;
- ``survey()``: one pass over the record headers and key-only passes over the
  indexes, comparing counts and an order-free fingerprint of the index keys
  the records imply with those the indexes hold (``repair`` and after
  RocksDB's repair);
- ``rebuild()``: rewrite the registry, the indexes, the count and the skew
  from the records in batches, then survey again to verify.

``docs/storage.md`` (*Rebuilding the secondary state*) gives the rules.  No
driver import: batches come from ``_new_batch`` (``rocks.py``).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from actors._codec.events import decode_event
from actors._errors import InvalidEventError, JournalError
from actors._journal.cursor import walk, walk_sequences
from actors._journal.records import SEQ, TIME_KEY, TS_BIAS, TYPE_KEY, parse_value

__all__ = ["PARTS", "RebuildMixin", "Rebuilt", "Survey", "disagree_message"]

#: The parts of the secondary state, as ``RecoveryReport.rebuilt`` names them.
PARTS = ("types", "count", "skew", "by_type", "by_time", "by_cid")
INDEXES = ("by_type", "by_time", "by_cid")


def disagree_message(path: str, problems: list[str]) -> str:
    """Say that ``problems`` (parts of the secondary state) disagree with the records."""
    return (
        f"journal {path!r} is damaged: its {', '.join(problems)} do not match the "
        "records, so queries would miss events. To rebuild them from the records, "
        "open it with EventConfig(recover='truncate') or run actors._journal.repair(path)"
    )


META_REBUILD = b"s:rebuild"  # present while a rebuild is under way
META_NEXT_TYPE = b"s:next_type"  # u32: the lowest type id no record uses, if above the registry's
_META_COUNT = b"s:count"
_META_SKEW = b"s:skew"
_META_TYPE = b"t:"
_CHUNK = 50_000  # records per rebuild WriteBatch
_MASK = (1 << 64) - 1
_TID = struct.Struct(">I")
_TID_AT = 2  # offset of the type id in the record header (version, flags, type id, ...)


@dataclass
class Survey:
    """What a pass over the records and the indexes found.

    ``problems`` names the parts (``PARTS``) that do not match the records.
    ``skipped`` holds the sequence ranges [first, resume) of unreadable
    blocks of the record space; the index entries inside them (``kept``) are
    left alone and counted, since their records may still exist.  ``holes``
    holds the ranges (inclusive) between two records that no record and no
    unreadable block covers: every sequence is journaled, so once the count
    says records are missing, these are where (``lost_records``).
    """

    records: int = 0
    skipped: list[tuple[int, int]] = field(default_factory=list)
    holes: list[tuple[int, int]] = field(default_factory=list)
    missing: int = 0  # records the count has that the pass did not find
    first: int = 0  # the first sequence of the record space (read or unreadable)
    kept: dict[str, list[bytes]] = field(default_factory=dict)
    kept_sequences: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What ``rebuild`` did: records indexed, types registered, headers fixed.

    ``retyped`` counts records whose header named another type than their
    payload (their header was rewritten to the payload's type);
    ``untyped`` those whose type could be named neither by the registry nor
    by their payload (left out of the type index, read as corrupt).
    """

    records: int
    registered: tuple[str, ...]
    retyped: int
    untyped: int


def _inside(ranges: list[tuple[int, int]], seq: int) -> bool:
    i = bisect.bisect_right(ranges, (seq, 1 << 65)) - 1
    return i >= 0 and ranges[i][0] <= seq < ranges[i][1]


def _type_of(payload: bytes) -> str | None:
    """Return the event type the payload holds, or None if it does not decode."""
    try:
        return decode_event(payload).event_type
    except InvalidEventError:
        return None


class RebuildMixin:
    """``quick_problems``, ``survey`` and ``rebuild`` over ``RocksTables`` state."""

    _path: str
    _db: Any
    _type_cf: Any
    _time_cf: Any
    _cid_cf: Any
    _meta: Any
    _type_h: Any
    _time_h: Any
    _cid_h: Any
    _meta_h: Any
    _count: int
    _skew: int
    _last: int
    _type_ids: dict[str, int]
    _type_names: dict[int, str]

    def _check_writable(self) -> None:
        raise NotImplementedError

    def _new_batch(self) -> Any:
        raise NotImplementedError

    def _write(self, batch: Any, sync: bool) -> None:
        raise NotImplementedError

    def _load_meta(self) -> None:
        raise NotImplementedError

    def _skipped(self, first: int, resume: int) -> None:
        raise NotImplementedError

    def _clear_indexes(self) -> None:
        raise NotImplementedError

    # -- checks ------------------------------------------------------------------

    @staticmethod
    def lost_records(survey: Survey, repaired: bool) -> tuple[int, tuple[int, int] | None]:
        """Return how many records below the last one are gone, and the range they span.

        Every sequence is journaled, and only retention removes records
        (oldest first, counting them).  So records are gone where the count
        has more than the pass found, or, after RocksDB's repair (which sets
        unreadable tables and log batches aside), wherever two records are
        not consecutive; what the holes between records do not explain is
        gone from below the first record.
        """
        if survey.missing <= 0 and not repaired:
            return 0, None  # the count has nothing more: gaps were never journaled
        holes = list(survey.holes)
        head = survey.missing - sum(high - low + 1 for low, high in holes)
        if head > 0 and survey.first > 1:
            holes.insert(0, (max(1, survey.first - head), survey.first - 1))
        if not holes:
            return 0, None
        return sum(high - low + 1 for low, high in holes), (holes[0][0], holes[-1][1])

    def quick_problems(self) -> list[str]:
        """Return the parts that visibly disagree with the records; point reads only.

        Looks at the count against the records' range and at the first and
        last record: their type ids in the registry, their index entries.
        Cheap enough for every open; a read error here says nothing (the
        read that needs the data reports it).
        """
        try:
            return self._quick_problems()
        except JournalError:
            return []

    def _quick_problems(self) -> list[str]:
        if self._get(self._meta, META_REBUILD) is not None:
            return list(PARTS)
        if self._last == 0:
            return ["count"] if self._count else []
        skips: list[tuple[int, int]] = []
        first = next(self._walk_records(values=False, on_skip=skips), (self._last, None))[0]
        if skips:  # an unreadable first block: its records may still be there
            first = min(first, skips[0][0])
        problems: list[str] = []
        if not 0 < self._count <= self._last - first + 1:
            problems.append("count")
        for seq in sorted({first, self._last}):
            value = self._get(self._db, SEQ.pack(seq))
            try:
                tid, ts, cid, _, pos = parse_value(value or b"")
            except ValueError:
                continue
            found = {
                "types": self._type_settled(tid, (value or b"")[pos:]),
                "by_type": self._get(self._type_cf, TYPE_KEY.pack(tid, seq)) is not None,
                "by_time": self._get(self._time_cf, TIME_KEY.pack(ts + TS_BIAS, seq)) is not None,
                "by_cid": cid is None or self._get(self._cid_cf, cid + SEQ.pack(seq)) is not None,
            }
            problems += [part for part, ok in found.items() if not ok and part not in problems]
        return [part for part in PARTS if part in problems]

    def survey(self) -> Survey:
        """Compare the secondary state with what the records imply; read everything once.

        One pass over the record headers (no payload is decoded) and one
        key-only pass over each index.  Raises ``JournalError`` if a read
        fails outside the record space.
        """
        result = Survey()
        expected = {name: [0, 0] for name in INDEXES}
        unknown = False
        skew, max_ts = 0, None
        previous = previous_first = 0
        for seq, value in self._walk_records(on_skip=result.skipped):
            result.records += 1
            if not previous:
                previous_first = seq
            if previous and seq > previous + 1:
                low, high = previous + 1, seq - 1
                if not any(a <= high and b > low for a, b in result.skipped):
                    result.holes.append((low, high))
            previous = seq
            try:
                tid, ts, cid, _, pos = parse_value(value or b"")
            except ValueError:
                continue  # read as corrupt; it has no index entries
            if not unknown and tid not in self._type_names:
                unknown = not self._type_settled(tid, (value or b"")[pos:])
            for name, key in (
                ("by_type", TYPE_KEY.pack(tid, seq)),
                ("by_time", TIME_KEY.pack(ts + TS_BIAS, seq)),
                ("by_cid", None if cid is None else cid + SEQ.pack(seq)),
            ):
                if key is not None:
                    expected[name][0] += 1
                    expected[name][1] += hash(key)
            if max_ts is None or ts > max_ts:
                max_ts = ts
            elif max_ts - ts > skew:
                skew = max_ts - ts
        kept_seqs: set[int] = set()
        for name, cf in (
            ("by_type", self._type_cf),
            ("by_time", self._time_cf),
            ("by_cid", self._cid_cf),
        ):
            entries, fingerprint = 0, 0
            kept: list[bytes] = []
            try:
                for key, _ in walk(cf):
                    if result.skipped and len(key) >= SEQ.size:
                        seq = SEQ.unpack_from(key, len(key) - SEQ.size)[0]
                        if _inside(result.skipped, seq):
                            kept.append(key)
                            kept_seqs.add(seq)
                            continue
                    entries += 1
                    fingerprint += hash(key)
            except JournalError:
                entries = -1  # a damaged block: the records can say what it held
            result.kept[name] = kept
            want_entries, want_fingerprint = expected[name]
            if entries != want_entries or (fingerprint - want_fingerprint) & _MASK:
                result.problems.append(name)
        result.kept_sequences = len(kept_seqs)
        if self._get(self._meta, META_REBUILD) is not None:
            result.problems = list(PARTS)
            return result
        if unknown:
            result.problems.append("types")
        if self._count != result.records + len(kept_seqs):
            result.problems.append("count")
        result.missing = self._count - result.records - len(kept_seqs)
        result.first = min([previous_first, *(a for a, _ in result.skipped)])
        if self._skew < skew:
            result.problems.append("skew")
        result.problems = [part for part in PARTS if part in result.problems]
        return result

    # -- rebuilding ----------------------------------------------------------------

    def rebuild(self, survey: Survey) -> Rebuilt:
        """Rewrite the registry, indexes, count and skew from the records; verify.

        ``survey`` is the ``survey()`` that found the problems (its kept
        index entries are carried over).  Type ids the registry still holds
        keep their names; an id the registry lost is registered under the
        event type its records' payloads hold.  A record whose payload's type
        is not the type its header's id names gets its header rewritten to the
        payload's type (a new id if that type has none).  Written in batches
        of 50,000 records, synced; a marker in ``meta`` says a rebuild is
        under way until the last batch, so an interrupted one is found (and
        done again) by the next check.  Raises ``JournalError`` if a write
        fails or the rebuilt state does not verify.
        """
        self._check_writable()
        batch = self._new_batch()
        batch.put(META_REBUILD, SEQ.pack(1), self._meta_h)
        self._write(batch, True)
        # Emptied by dropping their tables, not by a range delete: a damaged
        # block under a range tombstone is still read by every later walk.
        self._clear_indexes()
        handles = {"by_type": self._type_h, "by_time": self._time_h, "by_cid": self._cid_h}
        batch = self._new_batch()
        for name, handle in handles.items():
            for key in survey.kept.get(name, ()):
                batch.put(key, b"", handle)
        self._write(batch, True)
        state = _State(dict(self._type_ids), dict(self._type_names))
        state.count = survey.kept_sequences
        batch, size = self._new_batch(), 0
        for seq, value in self._walk_records():
            self._index_record(batch, state, seq, value or b"")
            size += 1
            if size >= _CHUNK:
                self._write(batch, False)
                batch, size = self._new_batch(), 0
        for seq, name, value in state.deferred:
            tid = state.ids.get(name)
            if tid is None:
                top = max(state.top, max(state.names, default=0))
                tid = state.register(batch, self._meta_h, top + 1, name)
            self._retype(batch, state, seq, value, tid)
        batch.put(_META_COUNT, SEQ.pack(state.count), self._meta_h)
        batch.put(_META_SKEW, SEQ.pack(state.skew), self._meta_h)
        top = max(state.top, max(state.names, default=0))
        batch.put(META_NEXT_TYPE, _TID.pack(top + 1), self._meta_h)
        batch.delete(META_REBUILD, self._meta_h)
        self._write(batch, True)
        self._load_meta()
        after = self.survey()
        if after.problems:
            msg = (
                f"journal {self._path!r}: the rebuilt {', '.join(after.problems)} still "
                "do(es) not match the records"
            )
            raise JournalError(msg)
        return Rebuilt(state.count, tuple(state.registered), state.retyped, state.untyped)

    def _index_record(self, batch: Any, state: _State, seq: int, value: bytes) -> None:
        state.count += 1
        try:
            tid, ts, cid, _, pos = parse_value(value)
        except ValueError:
            return  # read as corrupt, as before
        state.top = max(state.top, tid)
        batch.put(TIME_KEY.pack(ts + TS_BIAS, seq), b"", self._time_h)
        if cid is not None:
            batch.put(cid + SEQ.pack(seq), b"", self._cid_h)
        if state.max_ts is None or ts > state.max_ts:
            state.max_ts = ts
        elif state.max_ts - ts > state.skew:
            state.skew = state.max_ts - ts
        name = _type_of(value[pos:])
        known = state.names.get(tid)
        if name is None or name == known:
            # Neither the registry nor the payload names an unknown id: the
            # record keeps its entry (it reads as corrupt) and its id stays taken.
            state.untyped += known is None
            batch.put(TYPE_KEY.pack(tid, seq), b"", self._type_h)
        elif known is None and name not in state.ids:
            state.register(batch, self._meta_h, tid, name)
            batch.put(TYPE_KEY.pack(tid, seq), b"", self._type_h)
        elif name in state.ids:
            self._retype(batch, state, seq, value, state.ids[name])
        else:
            state.deferred.append((seq, name, value))  # a new id, above every id in use

    def _retype(self, batch: Any, state: _State, seq: int, value: bytes, tid: int) -> None:
        fixed = value[:_TID_AT] + _TID.pack(tid) + value[_TID_AT + _TID.size :]
        batch.put(SEQ.pack(seq), fixed)
        batch.put(TYPE_KEY.pack(tid, seq), b"", self._type_h)
        state.retyped += 1

    def _type_settled(self, tid: int, payload: bytes) -> bool:
        """Return whether the registry names ``tid``, or nothing could (no payload decodes)."""
        return tid in self._type_names or _type_of(payload) is None

    # -- reads ---------------------------------------------------------------------

    def _walk_records(
        self, *, values: bool = True, on_skip: list[tuple[int, int]] | None = None
    ) -> Iterator[tuple[int, bytes | None]]:
        def skipped(first: int, resume: int) -> None:
            if on_skip is not None:
                on_skip.append((first, resume))
            self._skipped(first, resume)

        return walk_sequences(self._db, start=0, values=values, on_skip=skipped)

    @staticmethod
    def _get(cf: Any, key: bytes) -> bytes | None:
        try:
            value: bytes | None = cf.get(key)
        except Exception as exc:
            msg = f"journal read failed: {exc}"
            raise JournalError(msg) from exc
        return value


@dataclass
class _State:
    """The registry being rebuilt and the figures gathered on the way."""

    ids: dict[str, int]
    names: dict[int, str]
    count: int = 0
    skew: int = 0
    max_ts: int | None = None
    top: int = 0  # the highest type id any header uses
    retyped: int = 0
    untyped: int = 0
    registered: list[str] = field(default_factory=list)
    deferred: list[tuple[int, str, bytes]] = field(default_factory=list)

    def register(self, batch: Any, meta: Any, tid: int, name: str) -> int:
        self.ids[name] = tid
        self.names[tid] = name
        self.registered.append(name)
        batch.put(_META_TYPE + name.encode(), _TID.pack(tid), meta)
        return tid
