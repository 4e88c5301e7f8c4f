"""The journal's abstractions: the stored record, the recorder protocol, the mapper.

No backend lives here, and nothing here imports a storage driver: the
``Storage`` protocol is what the journal actor needs of a backend, and the
mapper turns a ``StoredRecord`` into the bytes a backend keeps under its
sequence key and back (``docs/storage.md`` draws the layout).  The backends
(``memory.py``, ``rocks.py``) and the query planner (``planner.py``) build
on this module; ``factory.py`` picks a backend.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import NamedTuple, Protocol, Self

__all__ = [
    "CID_LEN",
    "HIGH_WATER",
    "MAX_SOURCE_BYTES",
    "SOURCE_CHARS_FIT",
    "MAX_SEQ",
    "SEQ",
    "TIME_KEY",
    "TS_BIAS",
    "TYPE_KEY",
    "Row",
    "Storage",
    "StoredRecord",
    "TypeMatcher",
    "check_record",
    "encode_value",
    "parse_value",
    "source_fits",
]

TypeMatcher = Callable[[str], bool]

#: What a scan needs of one record: (event_type, timestamp_us, correlation_id,
#: source, payload).  A plain tuple: scans build one per candidate.
Row = tuple[str, int, bytes | None, str | None, bytes]

SEQ = struct.Struct(">Q")  # primary key; big-endian so byte order is numeric order
HEADER = struct.Struct(">BBIq")  # version, flags, type id, timestamp_us
U16 = struct.Struct(">H")
TYPE_KEY = struct.Struct(">IQ")  # type id, sequence
TIME_KEY = struct.Struct(">QQ")  # timestamp_us + 2**63, sequence
HEADER_VERSION = 1
FLAG_CID = 0x01
FLAG_SOURCE = 0x02
TS_BIAS = 1 << 63  # maps signed microseconds onto unsigned, order kept
MAX_SEQ = (1 << 64) - 1
CID_LEN = 16
#: The checkpoint under which the journal keeps the highest sequence ever handed out.
HIGH_WATER = "$bus.high_water"


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
    """What the journal actor needs of a storage backend (the recorder).

    ``corrupt_records`` counts records skipped because they could not be read
    (a record whose value does not parse, or the records of a damaged block);
    ``written`` counts records appended since open.  ``read_only`` storages
    refuse every write with ``JournalError``.  No backend is thread-safe: one
    owner (the journal actor) calls it.
    """

    corrupt_records: int
    written: int
    read_only: bool
    #: The identity of the journal's numbering of sequences: drawn at random
    #: when the journal is created and kept with it, so a peer that saved a
    #: watermark of this node tells a fresh journal under the same name from
    #: this one (``docs/cluster.md``).  None for a read-only view of a journal
    #: made before it was kept.
    numbering: int | None

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
        before_sequence: int | None = None,
    ) -> Iterator[tuple[int, bytes]]: ...
    def delete_before(self, timestamp_us: int, below: int | None = None) -> int: ...
    def trim_to(self, max_events: int, below: int | None = None) -> int: ...
    def get_checkpoint(self, name: str) -> int | None: ...
    def set_checkpoint(self, name: str, sequence: int, *, sync: bool = False) -> None: ...
    def set_checkpoints(
        self, items: Sequence[tuple[str, int]], *, sync: bool = False
    ) -> None: ...  # all of them or none (one write)
    def size_bytes(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_record(record: StoredRecord, last: int) -> None:
    """Raise ``ValueError`` saying why ``record`` cannot follow sequence ``last``."""
    if record.sequence <= last:
        msg = f"sequence {record.sequence} is not above the last stored sequence {last}"
        raise ValueError(msg)
    if record.sequence > MAX_SEQ:
        msg = f"sequence {record.sequence} does not fit in 64 bits"
        raise ValueError(msg)
    if record.correlation_id is not None and len(record.correlation_id) != CID_LEN:
        msg = f"correlation_id must be {CID_LEN} bytes, got {len(record.correlation_id)}"
        raise ValueError(msg)
    if not -TS_BIAS <= record.timestamp_us < TS_BIAS:
        msg = f"timestamp_us {record.timestamp_us} does not fit in 64 bits"
        raise ValueError(msg)


MAX_SOURCE_BYTES = 0xFFFF
SOURCE_CHARS_FIT = MAX_SOURCE_BYTES // 4  # 4 UTF-8 bytes per character at most


def source_fits(source: str | None) -> bool:
    """Return whether the journal can store ``source`` (at most 65535 UTF-8 bytes)."""
    return (
        source is None
        or len(source) <= SOURCE_CHARS_FIT
        or len(source.encode("utf-8", "surrogatepass")) <= MAX_SOURCE_BYTES
    )


def encode_source(source: str) -> bytes:
    """Return the length-prefixed UTF-8 of ``source``; ``ValueError`` past 65535 bytes."""
    raw = source.encode()
    if len(raw) > 0xFFFF:
        msg = f"source is {len(raw)} bytes in UTF-8; at most 65535 are stored"
        raise ValueError(msg)
    return U16.pack(len(raw)) + raw


def encode_value(
    type_id: int, timestamp_us: int, cid: bytes | None, source: bytes | None, payload: bytes
) -> bytes:
    """Return the stored value: header, correlation id, encoded source, payload."""
    flags = (FLAG_CID if cid is not None else 0) | (FLAG_SOURCE if source is not None else 0)
    head = HEADER.pack(HEADER_VERSION, flags, type_id, timestamp_us)
    return head + (cid or b"") + (source or b"") + payload


def parse_value(value: bytes) -> tuple[int, int, bytes | None, str | None, int]:
    """Return (type id, timestamp, cid, source, payload offset); raise ``ValueError``."""
    if len(value) < HEADER.size:
        msg = "value shorter than the header"
        raise ValueError(msg)
    try:
        version, flags, tid, ts = HEADER.unpack_from(value)
    except struct.error as exc:
        raise ValueError(str(exc)) from exc
    if version != HEADER_VERSION or flags & ~(FLAG_CID | FLAG_SOURCE):
        msg = f"unknown header version {version} or flags {flags:#x}"
        raise ValueError(msg)
    pos = HEADER.size
    cid = None
    if flags & FLAG_CID:
        cid = value[pos : pos + CID_LEN]
        pos += CID_LEN
    source = None
    if flags & FLAG_SOURCE:
        if len(value) < pos + 2:
            msg = "truncated source"
            raise ValueError(msg)
        (n,) = U16.unpack_from(value, pos)
        pos += 2
        source = value[pos : pos + n].decode()  # UnicodeDecodeError is a ValueError
        pos += n
    if pos > len(value):
        msg = "truncated header"
        raise ValueError(msg)
    return tid, ts, cid, source, pos
