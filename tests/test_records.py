"""The record mapper and record checks (``actors._journal.records``)."""

from __future__ import annotations

import uuid

import pytest

from actors._journal.records import (
    StoredRecord,
    check_record,
    encode_source,
    encode_value,
    parse_value,
)

CID = uuid.UUID(int=7).bytes


@pytest.mark.parametrize("cid", [None, CID])
@pytest.mark.parametrize("source", [None, "agent-ü"])
def test_a_value_round_trips(cid: bytes | None, source: str | None) -> None:
    encoded = None if source is None else encode_source(source)
    value = encode_value(3, -1_000, cid, encoded, b"payload")
    tid, ts, got_cid, got_source, pos = parse_value(value)
    assert (tid, ts, got_cid, got_source, value[pos:]) == (3, -1_000, cid, source, b"payload")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x01\x00", "shorter than the header"),
        (b"\x02" + bytes(13), "unknown header version"),
        (b"\x01\x80" + bytes(12), "flags"),
        (b"\x01\x02" + bytes(12) + b"\x00", "truncated source"),
        (b"\x01\x02" + bytes(12) + b"\x00\x05ab", "truncated header"),
    ],
)
def test_a_damaged_value_raises_value_error(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_value(value)


def test_a_source_over_65535_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="65535"):
        encode_source("x" * 70_000)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (StoredRecord(5, "a", 0, None, None, b""), "not above"),
        (StoredRecord(1 << 64, "a", 0, None, None, b""), "64 bits"),
        (StoredRecord(10, "a", 0, b"short", None, b""), "16 bytes"),
        (StoredRecord(10, "a", 1 << 63, None, None, b""), "timestamp"),
    ],
)
def test_check_record_says_why(record: StoredRecord, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_record(record, 5)
    check_record(StoredRecord(6, "a", 0, CID, "s", b""), 5)
