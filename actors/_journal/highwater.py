"""The acknowledged high-water mark: a small side file a WAL loss cannot take.

RocksDB's recovery of a damaged write-ahead log drops every write after the
damage, including any note of them kept in RocksDB itself.  So the highest
sequence the journal ever acknowledged lives in a file of its own,
``ACKNOWLEDGED`` in the journal's folder: 8 bytes of sequence and a CRC-32,
overwritten in place.  The storage advances it after each batch is written
and before the batch's futures resolve; with ``sync`` it is fsynced then too
(otherwise at close), so it survives whatever the WAL survives.  On open, a
mark above the last stored sequence means acknowledged events are gone.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib

from actors._errors import JournalError

__all__ = ["HighWaterMark"]

logger = logging.getLogger("actors.storage")

FILE_NAME = "ACKNOWLEDGED"
_RECORD = struct.Struct(">QI")  # sequence, crc32 of the packed sequence


class HighWaterMark:
    """Read, and where ``writable``, advance the mark in ``folder``.  One writer thread."""

    def __init__(self, folder: str, *, writable: bool) -> None:
        self._file = os.path.join(folder, FILE_NAME)
        self.missing = False  # no file (a new journal, or one deleted by hand)
        self.value = self._load()
        self._fd: int | None = None
        self._dirty = False
        if writable:
            self._fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o644)

    def _load(self) -> int:
        try:
            with open(self._file, "rb") as f:
                raw = f.read(_RECORD.size)
        except FileNotFoundError:
            self.missing = True
            return 0
        except OSError as exc:
            msg = f"cannot read the journal's acknowledged mark {self._file!r}: {exc}"
            raise JournalError(msg) from exc
        if not raw:  # created by an open that ended (a kill) before its first write
            logger.info("journal high-water file %s holds no mark yet", self._file)
            return 0
        if len(raw) != _RECORD.size:
            logger.warning("journal high-water file %s is truncated; ignored", self._file)
            return 0
        seq, crc = _RECORD.unpack(raw)
        if zlib.crc32(raw[:8]) != crc:
            logger.warning("journal high-water file %s is damaged; ignored", self._file)
            return 0
        return int(seq)

    def advance(self, sequence: int, *, sync: bool) -> None:
        """Raise the mark to ``sequence`` (never lower it); fsync it if ``sync``.

        Raises ``OSError`` if the write fails.
        """
        if self._fd is None or sequence <= self.value:
            return
        packed = struct.pack(">Q", sequence)
        os.pwrite(self._fd, packed + struct.pack(">I", zlib.crc32(packed)), 0)
        self.value = sequence
        if sync:
            os.fdatasync(self._fd)
            self._dirty = False
        else:
            self._dirty = True

    def fsync(self) -> None:
        """Block until the mark written last is on disk (releases the GIL meanwhile)."""
        if self._fd is not None and self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    def close(self) -> None:
        """Fsync what is not yet on disk and close the file.  Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._dirty:
                os.fdatasync(fd)
        finally:
            os.close(fd)
