"""The secondary state (type registry, count, skew, indexes) is rebuilt from the records.

A lost table file of ``meta`` or of an index leaves the records intact; after
``repair()`` (or a ``recover="truncate"`` open) the count and every query by
type, time range and correlation id return exactly the stored events.  Real
RocksDB in temporary folders: each column family flushes to a table file of
its own when the journal closes, told apart here by the shape of its keys.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import rocksdict

from actors import Event, EventBus, EventConfig, EventQuery, JournalDamagedError
from actors._codec.events import encode_event
from actors._journal import open_journal, repair
from actors._journal.rebuild import META_REBUILD, RebuildMixin
from actors._journal.records import StoredRecord
from actors._journal.rocks import RocksStorage

N = 2_000
TYPES = ("agent.started", "workflow.step", "tool.error", "agent.done")
BASE = datetime(2024, 5, 1, tzinfo=UTC)
CIDS = [uuid.UUID(int=0x1000 + i) for i in range(7)]


def _event(i: int) -> Event:
    # Every 9th event is stamped 3 s in the past: the journal's skew is not 0.
    stamp = BASE + timedelta(milliseconds=10 * i) - timedelta(seconds=3 if i % 9 == 4 else 0)
    return Event(
        event_type=TYPES[i % len(TYPES)],
        data={"i": i},
        timestamp=stamp,
        correlation_id=CIDS[i % len(CIDS)] if i % 5 else None,
        source=f"agent-{i % 3}",
    )


def _journal(path: Path, n: int = N) -> list[Event]:
    with EventBus(EventConfig(persistence_path=path, durability="sync")) as bus:
        futures = [bus.publish(_event(i)) for i in range(n)]
        return [future.get(timeout=30) for future in futures]


def family_of(key: bytes) -> str:
    """Return the column family a table file whose first key is ``key`` belongs to."""
    if key[:2] in (b"c:", b"s:", b"t:"):
        return "meta"
    return {8: "default", 12: "by_type", 16: "by_time", 24: "by_cid"}[len(key)]


def table_files(path: Path) -> dict[str, list[Path]]:
    """Table files per column family, oldest first."""
    with RocksStorage(path, read_only=True) as storage:
        files = storage._db.live_files()  # noqa: SLF001 - which table holds which family
    tables: dict[str, list[Path]] = {}
    for file in files:
        tables.setdefault(family_of(file["start_key"]), []).append(path / file["name"].lstrip("/"))
    return {family: sorted(found) for family, found in tables.items()}


def _lose(path: Path, family: str) -> None:
    tables = table_files(path)
    assert family in tables
    for table in tables[family]:
        table.unlink()


def _ids(events: list[Event]) -> list[tuple[int | None, uuid.UUID]]:
    return [(e.sequence, e.id) for e in events]


def _assert_queries_match(path: Path, stored: list[Event]) -> None:
    with RocksStorage(path, read_only=True) as storage:
        assert storage.count() == len(stored)
    with EventBus(EventConfig(persistence_path=path, read_only=True)) as bus:
        assert _ids(bus.query(EventQuery())) == _ids(stored)
        for event_type in TYPES:
            got = bus.query(EventQuery(event_types=[event_type]))
            assert _ids(got) == _ids([e for e in stored if e.event_type == event_type])
        assert _ids(bus.query(EventQuery(event_types=["agent.*"]))) == _ids(
            [e for e in stored if e.event_type.startswith("agent.")]
        )
        low, high = BASE + timedelta(seconds=4), BASE + timedelta(seconds=9)
        got = bus.query(EventQuery(time_range=(low, high)))
        assert _ids(got) == _ids([e for e in stored if low <= e.timestamp < high])
        got = bus.query(EventQuery(time_range=(low, high), descending=True))
        assert _ids(got) == _ids([e for e in reversed(stored) if low <= e.timestamp < high])
        for cid in CIDS:
            got = bus.query(EventQuery(correlation_id=cid))
            assert _ids(got) == _ids([e for e in stored if e.correlation_id == cid])
        assert bus.metrics().journal_corrupt_records == 0


@pytest.mark.parametrize(
    ("family", "parts"),
    [
        ("meta", ("types", "count", "skew")),
        ("by_type", ("by_type",)),
        ("by_time", ("by_time",)),
        ("by_cid", ("by_cid",)),
    ],
)
def test_repair_rebuilds_a_lost_table_from_the_records(
    tmp_path: Path, family: str, parts: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "actors.journal")
    stored = _journal(tmp_path)
    _lose(tmp_path, family)
    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=tmp_path))  # a table file is missing

    report = repair(tmp_path)

    assert report.repaired
    assert report.lost == 0
    assert report.rebuilt == parts
    assert "rebuilt from 2000 record(s)" in caplog.text
    _assert_queries_match(tmp_path, stored)
    again = repair(tmp_path)  # nothing left to rebuild
    assert again.rebuilt == ()
    assert not again.repaired


def test_a_truncate_open_rebuilds_and_sequences_and_types_continue(tmp_path: Path) -> None:
    stored = _journal(tmp_path)
    _lose(tmp_path, "meta")

    opened = open_journal(EventConfig(persistence_path=tmp_path, recover="truncate"))
    assert opened is not None
    opened.storage.close()

    assert opened.recovery.repaired
    assert opened.recovery.rebuilt == ("types", "count", "skew")
    assert opened.first_sequence == N + 1
    _assert_queries_match(tmp_path, stored)
    with EventBus(EventConfig(persistence_path=tmp_path)) as bus:
        new = bus.publish("brand.new", {}).get(timeout=30)
        old = bus.publish(TYPES[0], {}).get(timeout=30)
        assert new.sequence == N + 1
        assert _ids(bus.query(EventQuery(event_types=["brand.new"]))) == _ids([new])
        got = bus.query(EventQuery(event_types=[TYPES[0]]))
        assert _ids(got) == _ids([e for e in stored if e.event_type == TYPES[0]] + [old])


def test_a_default_open_refuses_a_journal_whose_secondary_state_is_gone(tmp_path: Path) -> None:
    stored = _journal(tmp_path)
    with RocksStorage(tmp_path) as storage:  # the records stay, the registry and count go
        for key in [b"s:count"] + [b"t:" + name.encode() for name in TYPES]:
            storage._meta.delete(key)  # noqa: SLF001 - the damage, made by hand

    with pytest.raises(JournalDamagedError, match=r"types, count do not match the records"):
        EventBus(EventConfig(persistence_path=tmp_path))
    with pytest.raises(JournalDamagedError, match="repair"):
        EventBus(EventConfig(persistence_path=tmp_path, read_only=True))

    opened = open_journal(EventConfig(persistence_path=tmp_path, recover="truncate"))
    assert opened is not None
    opened.storage.close()
    assert not opened.recovery.repaired
    assert opened.recovery.rebuilt == ("types", "count")
    _assert_queries_match(tmp_path, stored)


def test_a_journal_whose_meta_family_rocksdb_dropped_is_damaged_not_foreign(
    tmp_path: Path,
) -> None:
    stored = _journal(tmp_path)
    _lose(tmp_path, "meta")
    # RocksDB's repair, run alone, drops a column family it finds no table of.
    rocksdict.Rdict.repair(str(tmp_path), rocksdict.Options(raw_mode=True))
    assert "meta" not in rocksdict.Rdict.list_cf(str(tmp_path))

    with pytest.raises(JournalDamagedError, match="'meta' column family is missing"):
        EventBus(EventConfig(persistence_path=tmp_path))
    report = repair(tmp_path)

    assert report.repaired
    assert report.rebuilt == ("types", "count", "skew")
    _assert_queries_match(tmp_path, stored)


def test_an_interrupted_rebuild_is_found_and_done_again(tmp_path: Path) -> None:
    stored = _journal(tmp_path, 300)
    with RocksStorage(tmp_path) as storage:
        storage._meta.put(META_REBUILD, b"\0" * 8)  # noqa: SLF001 - a rebuild cut short

    with pytest.raises(JournalDamagedError):
        EventBus(EventConfig(persistence_path=tmp_path))
    report = repair(tmp_path)

    assert report.rebuilt == ("types", "count", "skew", "by_type", "by_time", "by_cid")
    with EventBus(EventConfig(persistence_path=tmp_path)) as bus:
        assert _ids(bus.query(EventQuery())) == _ids(stored)
        assert _ids(bus.query(EventQuery(event_types=[TYPES[1]]))) == _ids(stored[1::4])


def _record(seq: int, header_type: str, payload_type: str) -> StoredRecord:
    event = Event(event_type=payload_type, timestamp=BASE + timedelta(seconds=seq), sequence=seq)
    return StoredRecord(seq, header_type, seq * 1_000_000, None, None, encode_event(event))


def test_a_header_naming_another_type_than_its_payload_takes_the_payloads(
    tmp_path: Path,
) -> None:
    # Ids 1 (a.one) and 2 (b.two); record 3's header says a.one, its payload
    # c.three, a type the registry never held; record 4's header b.two, its
    # payload a.one.
    with RocksStorage(tmp_path) as storage:
        storage.append(
            [
                _record(1, "a.one", "a.one"),
                _record(2, "b.two", "b.two"),
                _record(3, "a.one", "c.three"),
                _record(4, "b.two", "a.one"),
                _record(5, "b.two", "b.two"),
            ],
            sync=True,
        )
    _lose(tmp_path, "meta")

    report = repair(tmp_path)

    assert report.rebuilt == ("types", "count")
    with RocksStorage(tmp_path) as storage:
        assert storage.count() == 5

        def of(pattern: str) -> list[int]:
            return [seq for seq, _ in storage.scan(type_matcher=lambda t: t == pattern)]

        assert of("a.one") == [1, 4]
        assert of("b.two") == [2, 5]
        assert of("c.three") == [3]
        registry = storage._type_ids  # noqa: SLF001 - the ids themselves
        assert registry == {"a.one": 1, "b.two": 2, "c.three": 3}
        storage.append([_record(6, "d.four", "d.four")])
        assert registry["d.four"] == 4
        assert of("d.four") == [6]
    assert repair(tmp_path).rebuilt == ()


def test_a_normal_open_never_surveys_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = _journal(tmp_path, 300)

    def refuse(self: RebuildMixin) -> None:
        raise AssertionError("surveyed at open")

    monkeypatch.setattr(RebuildMixin, "survey", refuse)
    for recover in ("refuse", "truncate"):
        opened = open_journal(EventConfig(persistence_path=tmp_path, recover=recover))
        assert opened is not None
        opened.storage.close()
        assert opened.recovery.rebuilt == ()
    with EventBus(EventConfig(persistence_path=tmp_path)) as bus:
        assert len(bus.query(EventQuery())) == len(stored)


def test_a_record_no_payload_can_name_keeps_its_id_and_reads_as_corrupt(tmp_path: Path) -> None:
    garbage = StoredRecord(3, "x.bad", 3_000_000, None, None, b"\xff\xff not protobuf")
    with RocksStorage(tmp_path) as storage:
        storage.append([_record(1, "a.one", "a.one"), _record(2, "b.two", "b.two"), garbage])
    _lose(tmp_path, "meta")

    report = repair(tmp_path)

    assert report.rebuilt == ("types", "count")
    with RocksStorage(tmp_path) as storage:
        assert storage.count() == 3
        assert [seq for seq, _ in storage.scan()] == [1, 2]
        assert storage.corrupt_records == 1
        storage.append([_record(4, "d.four", "d.four")])  # not id 3: record 3 has it
        assert [seq for seq, _ in storage.scan(type_matcher=lambda t: t == "d.four")] == [4]
    assert repair(tmp_path).rebuilt == ()
