"""One conformance suite for both storage backends (memory and RocksDB)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rocksdict

from actors._errors import JournalError, JournalLockedError, JournalNotFoundError
from actors._journal.memory import MemoryStorage
from actors._journal.records import Storage, StoredRecord
from actors._journal.rocks import RocksStorage

CID_A = uuid.UUID(int=1).bytes
CID_B = uuid.UUID(int=2).bytes
T0 = 1_700_000_000_000_000

Opener = Callable[[], Storage]


@pytest.fixture(params=["memory", "rocks"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.param)


@pytest.fixture
def opener(backend: str, tmp_path: Path) -> Opener:
    """Return a function opening the backend (the same journal each time for rocks)."""
    if backend == "memory":
        return MemoryStorage
    return lambda: RocksStorage(tmp_path / "journal")


@pytest.fixture
def store(opener: Opener) -> Iterator[Storage]:
    s = opener()
    yield s
    s.close()


def rec(
    seq: int,
    event_type: str = "user.login",
    ts: int | None = None,
    cid: bytes | None = None,
    source: str | None = None,
) -> StoredRecord:
    return StoredRecord(
        sequence=seq,
        event_type=event_type,
        timestamp_us=T0 + seq * 1000 if ts is None else ts,
        correlation_id=cid,
        source=source,
        payload=b"payload-%d" % seq,
    )


def fill(s: Storage) -> None:
    """Store 1..30: types cycle a.x/a.y/b.x, cid A on odd, B on multiples of 4, source on 5s."""
    types = ["a.x", "a.y", "b.x"]
    s.append(
        [
            rec(
                i,
                types[i % 3],
                cid=CID_A if i % 2 else (CID_B if i % 4 == 0 else None),
                source="agent-5" if i % 5 == 0 else None,
            )
            for i in range(1, 31)
        ]
    )


def seqs(it: Iterator[tuple[int, bytes]]) -> list[int]:
    out = []
    for seq, payload in it:
        assert payload == b"payload-%d" % seq
        out.append(seq)
    return out


def test_empty(store: Storage) -> None:
    assert store.last_sequence() == 0
    assert store.first_sequence() is None
    assert store.count() == 0
    assert store.get(1) is None
    assert list(store.scan()) == []
    assert store.delete_before(T0 * 2) == 0
    assert store.trim_to(0) == 0


def test_append_and_get(store: Storage) -> None:
    fill(store)
    assert store.count() == 30
    assert store.first_sequence() == 1
    assert store.last_sequence() == 30
    assert store.get(7) == b"payload-7"
    assert store.get(31) is None
    assert store.written == 30
    assert seqs(store.scan()) == list(range(1, 31))


def test_append_rejects_bad_records_atomically(store: Storage) -> None:
    store.append([rec(5)])
    with pytest.raises(ValueError, match="sequence"):
        store.append([rec(6), rec(5)])
    with pytest.raises(ValueError, match="correlation_id"):
        store.append([rec(6), rec(7, cid=b"short")])
    assert store.count() == 1
    assert store.last_sequence() == 5
    store.append([rec(9)])  # gaps are allowed
    assert seqs(store.scan()) == [5, 9]


def test_scan_by_each_filter(store: Storage) -> None:
    fill(store)
    assert seqs(store.scan(type_matcher=lambda t: t == "a.y")) == list(range(1, 31, 3))
    assert seqs(store.scan(correlation_id=CID_B)) == list(range(4, 31, 4))
    assert seqs(store.scan(source="agent-5")) == list(range(5, 31, 5))
    # Time range: start inclusive, end exclusive.
    assert seqs(store.scan(time_range_us=(T0 + 10_000, T0 + 13_000))) == [10, 11, 12]
    assert seqs(store.scan(after_sequence=27)) == [28, 29, 30]
    assert seqs(store.scan(limit=2)) == [1, 2]
    assert seqs(store.scan(correlation_id=uuid.UUID(int=3).bytes)) == []
    assert seqs(store.scan(type_matcher=lambda t: False)) == []
    assert seqs(store.scan(time_range_us=(T0 + 5, T0 + 5))) == []
    assert seqs(store.scan(limit=0)) == []


def test_scan_combinations(store: Storage) -> None:
    fill(store)
    a_types = lambda t: t.startswith("a.")  # noqa: E731
    expected = [i for i in range(1, 31) if i % 3 != 2 and i % 2 == 1]
    assert seqs(store.scan(type_matcher=a_types, correlation_id=CID_A)) == expected
    window = (T0 + 10_000, T0 + 21_000)
    assert seqs(store.scan(type_matcher=a_types, time_range_us=window, source="agent-5")) == [
        10,
        15,
    ]
    assert seqs(store.scan(correlation_id=CID_A, time_range_us=window)) == [11, 13, 15, 17, 19]
    assert seqs(store.scan(correlation_id=CID_A, after_sequence=20, limit=3)) == [21, 23, 25]
    assert seqs(
        store.scan(type_matcher=lambda t: t == "b.x", after_sequence=10, descending=True, limit=2)
    ) == [29, 26]
    assert seqs(store.scan(time_range_us=window, after_sequence=18, limit=1)) == [19]
    assert seqs(store.scan(source="agent-5", correlation_id=CID_B)) == [20]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"type_matcher": "a.*"},
        {"correlation_id": CID_A},
        {"time_range_us": (T0 + 3_000, T0 + 25_000)},
        {"source": "agent-5"},
        {"after_sequence": 12},
        {"type_matcher": "a.x|b.x", "after_sequence": 4},
        {"correlation_id": CID_A, "after_sequence": 9},
        {"time_range_us": (T0, T0 + 40_000), "after_sequence": 20},
    ],
)
def test_descending_and_limit_mirror_ascending(store: Storage, query: dict[str, object]) -> None:
    fill(store)
    kwargs = dict(query)
    pattern = kwargs.pop("type_matcher", None)
    if isinstance(pattern, str):
        choices = pattern.split("|")
        kwargs["type_matcher"] = lambda t: any(
            t == c or (c.endswith("*") and t.startswith(c[:-1])) for c in choices
        )
    ascending = seqs(store.scan(**kwargs))  # type: ignore[arg-type]
    assert ascending
    assert seqs(store.scan(descending=True, **kwargs)) == ascending[::-1]  # type: ignore[arg-type]
    assert seqs(store.scan(limit=3, **kwargs)) == ascending[:3]  # type: ignore[arg-type]
    assert seqs(store.scan(limit=3, descending=True, **kwargs)) == ascending[::-1][:3]  # type: ignore[arg-type]


def test_type_matcher_across_many_types(store: Storage) -> None:
    records = [rec(i, f"svc{i % 40}.event{i % 7}") for i in range(1, 801)]
    store.append(records)
    wanted = lambda t: t.startswith("svc1") and t.endswith(("event2", "event5"))  # noqa: E731
    expected = [r.sequence for r in records if wanted(r.event_type)]
    assert len({r.event_type for r in records if wanted(r.event_type)}) > 5
    assert seqs(store.scan(type_matcher=wanted)) == expected
    assert seqs(store.scan(type_matcher=wanted, descending=True)) == expected[::-1]
    assert (
        seqs(store.scan(type_matcher=wanted, after_sequence=400, limit=5))
        == [s for s in expected if s > 400][:5]
    )
    assert seqs(store.scan(type_matcher=lambda t: True, limit=4)) == [1, 2, 3, 4]


def test_time_index_with_out_of_order_timestamps(store: Storage) -> None:
    # Sequences rise while timestamps jitter backwards (clock skew between
    # publishers); scans by time must still come in sequence order.
    stamps = [T0 + (i * 100) - (i % 4) * 350 + (3000 if i == 150 else 0) for i in range(1, 201)]
    cid = lambda i: CID_A if i % 2 else None  # noqa: E731
    store.append([rec(i, f"t{i % 3}", ts=stamps[i - 1], cid=cid(i)) for i in range(1, 201)])
    for window in [(T0 + 5_000, T0 + 12_000), (T0 + 12_000, T0 + 18_000)]:
        expected = [i for i in range(1, 201) if window[0] <= stamps[i - 1] < window[1]]
        assert seqs(store.scan(time_range_us=window)) == expected
        assert seqs(store.scan(time_range_us=window, descending=True)) == expected[::-1]
        assert seqs(store.scan(time_range_us=window, limit=7)) == expected[:7]
        assert (
            seqs(store.scan(time_range_us=window, limit=7, descending=True)) == expected[::-1][:7]
        )
        # The type and correlation indexes are narrowed by the time range.
        typed = [i for i in expected if i % 3 != 0]
        assert seqs(store.scan(type_matcher=lambda t: t != "t0", time_range_us=window)) == typed
        correlated = [i for i in expected if cid(i)]
        assert seqs(store.scan(correlation_id=CID_A, time_range_us=window)) == correlated
        assert (
            seqs(store.scan(correlation_id=CID_A, time_range_us=window, descending=True))
            == correlated[::-1]
        )


def test_negative_and_extreme_timestamps(store: Storage) -> None:
    store.append([rec(1, ts=-5), rec(2, ts=0), rec(3, ts=2**62)])
    assert seqs(store.scan(time_range_us=(-10, 1))) == [1, 2]
    assert seqs(store.scan(time_range_us=(1, 2**63 - 1))) == [3]
    assert store.delete_before(0) == 1
    assert seqs(store.scan()) == [2, 3]


def test_delete_before_removes_records_and_index_entries(store: Storage) -> None:
    fill(store)
    assert store.delete_before(T0 + 11_000) == 10
    assert store.count() == 20
    assert store.first_sequence() == 11
    assert store.last_sequence() == 30
    assert store.get(10) is None
    assert seqs(store.scan()) == list(range(11, 31))
    assert all(s > 10 for s in seqs(store.scan(type_matcher=lambda t: True)))
    assert seqs(store.scan(type_matcher=lambda t: t == "a.y")) == list(range(13, 31, 3))
    assert seqs(store.scan(correlation_id=CID_B)) == [12, 16, 20, 24, 28]
    assert seqs(store.scan(time_range_us=(T0, T0 + 12_000))) == [11]
    assert seqs(store.scan(correlation_id=CID_A, descending=True))[-1] == 11
    assert store.delete_before(T0 + 11_000) == 0
    store.append([rec(31, cid=CID_B)])
    assert seqs(store.scan(correlation_id=CID_B))[-1] == 31


def test_delete_before_with_out_of_order_timestamps(store: Storage) -> None:
    store.append([rec(1, ts=T0 + 50), rec(2, ts=T0 + 10), rec(3, ts=T0 + 60), rec(4, ts=T0 + 20)])
    assert store.delete_before(T0 + 30) == 2
    assert seqs(store.scan()) == [1, 3]
    assert seqs(store.scan(type_matcher=lambda t: True)) == [1, 3]
    assert seqs(store.scan(time_range_us=(T0, T0 + 100))) == [1, 3]
    assert store.count() == 2


def test_retention_with_a_floor_keeps_every_record_at_or_above_it(store: Storage) -> None:
    """``below``: what a catch-up subscription has yet to read stays, whatever the settings."""
    fill(store)  # 30 records, T0 + 1,000 us apart
    assert store.delete_before(T0 + 25_000, below=12) == 11
    assert seqs(store.scan()) == list(range(12, 31))
    # The time keys of the kept records were left alone: a range read still finds them.
    assert seqs(store.scan(time_range_us=(T0, T0 + 14_000))) == [12, 13]
    assert store.trim_to(5, below=20) == 8
    assert seqs(store.scan()) == list(range(20, 31))
    assert store.count() == 11
    assert seqs(store.scan(type_matcher=lambda t: True)) == list(range(20, 31))
    assert store.trim_to(5, below=20) == 0  # nothing under the floor is left
    assert store.count() == 11
    assert store.trim_to(5) == 6  # the floor lifted: back to the setting
    assert seqs(store.scan()) == list(range(26, 31))
    assert store.delete_before(T0 + 40_000, below=29) == 3
    assert seqs(store.scan(time_range_us=(T0, T0 * 2))) == [29, 30]


def test_trim_to_keeps_the_newest(store: Storage) -> None:
    fill(store)
    assert store.trim_to(30) == 0
    assert store.trim_to(8) == 22
    assert store.count() == 8
    assert store.first_sequence() == 23
    assert seqs(store.scan()) == list(range(23, 31))
    assert seqs(store.scan(type_matcher=lambda t: t == "a.x")) == [24, 27, 30]
    assert seqs(store.scan(correlation_id=CID_A)) == [23, 25, 27, 29]
    assert seqs(store.scan(correlation_id=CID_B)) == [24, 28]
    assert seqs(store.scan(time_range_us=(T0, T0 + 24_000))) == [23]
    assert store.trim_to(0) == 8
    assert store.count() == 0
    assert list(store.scan(time_range_us=(T0, T0 * 2))) == []
    assert store.last_sequence() == 30
    with pytest.raises(ValueError, match="max_events"):
        store.trim_to(-1)


def test_checkpoints(store: Storage) -> None:
    assert store.get_checkpoint("audit") is None
    store.set_checkpoint("audit", 12)
    store.set_checkpoint("audit", 15, sync=True)
    store.set_checkpoint("other", 3)
    assert store.get_checkpoint("audit") == 15
    assert store.get_checkpoint("other") == 3


def test_sync_append(store: Storage) -> None:
    store.append([rec(1), rec(2)], sync=True)
    assert seqs(store.scan()) == [1, 2]


def test_closed_store_raises(opener: Opener) -> None:
    s = opener()
    with s:
        s.append([rec(1)])
    s.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        s.get(1)
    with pytest.raises(JournalError, match="closed"):
        s.append([rec(2)])


def test_size_bytes_grows(store: Storage) -> None:
    before = store.size_bytes()
    store.append([rec(i) for i in range(1, 200)])
    assert store.size_bytes() >= before
    assert store.size_bytes() > 0


# -- RocksDB only --------------------------------------------------------------


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with RocksStorage(path) as s:
        fill(s)
        s.set_checkpoint("durable-sub", 17, sync=True)
        s.trim_to(25)
    with RocksStorage(path, create=False) as s:
        assert s.last_sequence() == 30
        assert s.first_sequence() == 6
        assert s.count() == 25
        assert s.get_checkpoint("durable-sub") == 17
        assert seqs(s.scan(type_matcher=lambda t: t == "a.y")) == list(range(7, 31, 3))
        s.append([rec(31, "new.type", cid=CID_B)])
        assert seqs(s.scan(type_matcher=lambda t: t.startswith("new."))) == [31]
    with RocksStorage(path) as s:
        assert s.last_sequence() == 31
        assert s.count() == 26
        assert seqs(s.scan(correlation_id=CID_B, descending=True, limit=1)) == [31]


def test_open_missing_without_create_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(JournalNotFoundError, match="holds no journal"):
        RocksStorage(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_open_on_a_file_raises(tmp_path: Path) -> None:
    bogus = tmp_path / "file"
    bogus.write_bytes(b"not a database")
    with pytest.raises(JournalError):
        RocksStorage(bogus)


def test_corrupt_record_is_counted_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "journal"
    with RocksStorage(path) as s:
        fill(s)
    # Damage two primary values behind the storage's back.
    raw = rocksdict.Rdict(str(path))
    raw[(7).to_bytes(8, "big")] = b"garbage"
    raw[(8).to_bytes(8, "big")] = b"\x01\x03"  # right version, truncated header
    raw.close()
    with RocksStorage(path) as s, caplog.at_level("ERROR", logger="actors.storage"):
        assert s.get(7) is None
        assert s.get(6) == b"payload-6"
        assert 7 not in seqs(s.scan())
        assert seqs(s.scan(type_matcher=lambda t: t in {"a.y", "b.x"}, limit=4)) == [1, 2, 4, 5]
        assert 7 not in seqs(s.scan(correlation_id=CID_A))
        assert seqs(s.scan(time_range_us=(T0 + 6_000, T0 + 10_000))) == [6, 9]
        assert seqs(s.scan(descending=True, after_sequence=5)) == [*range(30, 8, -1), 6]
        assert s.corrupt_records == 2  # distinct records, however often read
        assert "corrupt" in caplog.text
        assert s.trim_to(20) == 10  # deletes the corrupt ones too
        assert s.count() == 20


_HOLD_OPEN = """
import sys
from actors._journal.rocks import RocksStorage
s = RocksStorage(sys.argv[1])
print("open", flush=True)
sys.stdin.read()  # hold the journal until the parent closes our stdin
s.close()
"""

_TRY_OPEN = """
import sys
from actors._journal.rocks import RocksStorage
try:
    RocksStorage(sys.argv[1]).close()
except Exception as exc:
    print(type(exc).__name__)
else:
    print("opened")
"""


def _python(code: str, path: Path, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", code, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        **kwargs,
    )


def test_second_process_gets_journal_locked_error(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with RocksStorage(path) as s:
        s.append([rec(1)])
        child = _python(_TRY_OPEN, path)
        out, _ = child.communicate(timeout=60)
        assert out.strip() == "JournalLockedError"


def test_open_while_another_process_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    RocksStorage(path).close()
    holder = _python(_HOLD_OPEN, path, stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(JournalLockedError, match="locked"):
            RocksStorage(path)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    RocksStorage(path).close()  # released once the holder exits


def test_second_open_in_this_process_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with RocksStorage(path), pytest.raises(JournalLockedError):
        RocksStorage(path)


def test_a_journal_keeps_the_identity_of_its_numbering_and_a_fresh_one_draws_another(
    tmp_path: Path,
) -> None:
    first = RocksStorage(str(tmp_path / "j"))
    numbering = first.numbering
    first.close()
    again = RocksStorage(str(tmp_path / "j"))
    view = RocksStorage(str(tmp_path / "j"), read_only=True)
    fresh = RocksStorage(str(tmp_path / "k"))
    try:
        assert numbering is not None
        assert again.numbering == numbering
        assert view.numbering == numbering
        assert fresh.numbering not in (None, numbering)
        assert MemoryStorage().numbering != MemoryStorage().numbering
    finally:
        for storage in (again, view, fresh):
            storage.close()


def _deletes_in_memory(storage: RocksStorage) -> list[int]:
    """The point deletes each index column family holds in its active memtable."""
    families = (storage._type_cf, storage._time_cf, storage._cid_cf)  # noqa: SLF001
    return [f.property_int_value("rocksdb.num-deletes-active-mem-table") for f in families]


# Regression: retention's index deletes stayed in the memtables, where every query's
# seek walked them (a limit-1 query by type 64 ms after 300,000 were deleted).
def test_retention_flushes_the_indexes_once_their_deletes_add_up(tmp_path: Path) -> None:
    """docs/storage.md: the compact-on-deletion collector compacts index deletes
    away, but it sees table files only; a 64 MiB memtable holds millions of small
    index deletes.  Once 10,000 are deleted (over one pass or several) the
    indexes are flushed, so the collector can do its work."""
    cid = uuid.uuid4().bytes
    with RocksStorage(tmp_path / "journal") as s:
        s.append([StoredRecord(i, "a.x", i, cid, None, b"v") for i in range(1, 20_001)])
        s.trim_to(16_000)  # 4,000 deleted: they wait in memory
        s.trim_to(12_000)  # 8,000
        assert _deletes_in_memory(s) == [8_000] * 3
        s.trim_to(8_000)  # 12,000: flushed to table files
        assert _deletes_in_memory(s) == [0] * 3
        assert s.delete_before(19_000) == 6_999  # by time: the time index by one range
        assert _deletes_in_memory(s) == [6_999, 0, 6_999]
        assert s.count() == 1_001
