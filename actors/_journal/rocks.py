"""The RocksDB backend: the one module that imports rocksdict.

rocksdict raises a bare ``Exception`` for every RocksDB status (lock held,
corruption, I/O error alike; only ``DbClosedError`` has a type of its own),
so errors are told apart here by the state of the files, never by message
text: a lock by this module's registry of the journals this process has open
and by an ``fcntl`` probe of the ``LOCK`` file; a damaged write-ahead log by
opening again, read-only and lenient, after the strict open failed; "not a
journal" by the ``CURRENT`` file and the column families.

Opening (``docs/persistence.md``): RocksDB recovers the WAL in
``AbsoluteConsistency`` mode with paranoid checks, so it refuses a damaged
WAL instead of silently dropping everything after the damage.  With
``recover="truncate"`` a damaged WAL is recovered up to the damage
(``PointInTime``) and ``wal_damaged`` says so.  Read-only opens go through a
private folder of symbolic links, so nothing, not even rocksdict's config
file or RocksDB's info log, is written into the journal's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import struct
import tempfile
import threading
from typing import Any, Literal

import rocksdict

from actors._errors import (
    JournalDamagedError,
    JournalError,
    JournalLockedError,
    JournalNotFoundError,
)
from actors._journal.highwater import HighWaterMark
from actors._journal.records import SEQ
from actors._journal.rocks_store import RocksTables

__all__ = ["RocksStorage", "repair_files"]

Recover = Literal["refuse", "truncate"]

_CF_TYPE = "by_type"
_CF_TIME = "by_time"
_CF_CID = "by_cid"
_CF_META = "meta"
_LOG_FILES_KEPT = 2  # RocksDB info log: LOG plus one LOG.old.*, each at most:
_LOG_FILE_BYTES = 1 << 20
_NOT_LINKED = frozenset({"LOCK", "LOG", "rocksdict-config.json"})

# The journals this process holds open (real paths); one writer thread each.
_open_here: set[str] = set()
_open_lock = threading.Lock()
_probe_fds: list[int] = []  # see _lock_holder


def _options(*, recovery: Any = None, log_dir: str | None = None) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.set_compression_type(rocksdict.DBCompressionType.lz4())
    opts.set_write_buffer_size(64 << 20)  # fewer, larger L0 files under bursts
    opts.set_keep_log_file_num(_LOG_FILES_KEPT)
    opts.set_max_log_file_size(_LOG_FILE_BYTES)
    opts.set_paranoid_checks(True)
    if recovery is not None:
        opts.set_wal_recovery_mode(recovery)
    if log_dir is not None:
        opts.set_db_log_dir(log_dir)
    return opts


def _families(recovery: Any, log_dir: str | None) -> dict[str, rocksdict.Options]:
    families = {}
    for name in (_CF_TYPE, _CF_TIME, _CF_CID, _CF_META):
        opts = _options(recovery=recovery, log_dir=log_dir)
        if name != _CF_META:
            # Retention deletes index entries one by one; let RocksDB compact
            # files that fill up with tombstones instead of dragging them along.
            opts.add_compact_on_deletion_collector_factory(128 * 1024, 32 * 1024, 0.5)
        families[name] = opts
    return families


def _lock_holder(path: str) -> int | None:
    """Return the pid of the process holding ``path``'s LOCK (maybe this one), or None.

    RocksDB locks with ``fcntl`` (POSIX record locks).  An open-file-description
    probe (``F_OFD_GETLK``) sees them even when this process holds them.  A
    POSIX lock is released when its process closes *any* descriptor of the
    file, so a probe that finds this process holding the lock keeps its
    descriptor open.
    """
    try:
        fd = os.open(os.path.join(path, "LOCK"), os.O_RDONLY)
    except OSError:
        return None
    query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query)
    except OSError:
        os.close(fd)
        return None
    kind, _, _, _, pid = struct.unpack("hhqqi", answer)
    if kind == fcntl.F_UNLCK:
        os.close(fd)
        return None
    if pid == os.getpid():
        _probe_fds.append(fd)
    else:
        os.close(fd)
    return int(pid)


def _locked_error(path: str, holder: int, cause: BaseException | None) -> JournalLockedError:
    who = "this process" if holder == os.getpid() else f"another process (pid {holder})"
    error = JournalLockedError(f"journal {path!r} is locked by {who}")
    error.__cause__ = cause
    return error


def _check_is_journal(path: str) -> None:
    """Raise ``JournalNotFoundError`` unless ``path`` holds a journal; read only."""
    if not os.path.isfile(os.path.join(path, "CURRENT")):
        msg = f"{path!r} holds no journal (no RocksDB CURRENT file); nothing was created"
        raise JournalNotFoundError(msg)
    try:
        families = rocksdict.Rdict.list_cf(path)
    except Exception as exc:
        msg = f"cannot read the journal at {path!r}: {exc}"
        raise JournalError(msg) from exc
    if _CF_META not in families:
        msg = f"{path!r} is a RocksDB but not a journal (no {_CF_META!r} column family)"
        raise JournalNotFoundError(msg)


_VIEW_PREFIX = "actors-journal-ro-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def sweep_stale_views(directory: str | None = None) -> int:
    """Remove the views left by processes that died (kill -9) before closing; return how many.

    A view's name carries its creator's pid; only views of dead processes go.
    """
    directory = directory or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(_VIEW_PREFIX):
            continue
        pid_text = name[len(_VIEW_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed += 1
    return removed


def _linked_view(path: str) -> str:
    """Return a private folder of symbolic links to the journal's files.

    Named after this process, so that a later read-only open can sweep the
    views of processes killed before they closed theirs.
    """
    sweep_stale_views()
    view = tempfile.mkdtemp(prefix=f"{_VIEW_PREFIX}{os.getpid()}-")
    for name in os.listdir(path):
        if name in _NOT_LINKED or name.startswith("LOG.old"):
            continue
        os.symlink(os.path.join(path, name), os.path.join(view, name))
    return view


class RocksStorage(RocksTables):
    """Store the journal in RocksDB (rocksdict), WAL always on.

    ``RocksTables`` holds the layout, reads and writes; this class opens and
    closes.  Every method blocks the calling thread for its I/O.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        read_only: bool = False,
        recover: Recover = "refuse",
    ) -> None:
        """Open (or create) the journal at ``path``.

        Raises ``JournalNotFoundError`` if ``path`` holds no journal and
        ``create`` is false or ``read_only`` is true (nothing is created);
        ``JournalLockedError`` if a process (this one or another, named)
        holds it; ``JournalDamagedError`` if its WAL is damaged and
        ``recover`` is ``"refuse"``; ``JournalError`` for any other failure.
        """
        if recover not in ("refuse", "truncate"):
            msg = f"recover must be 'refuse' or 'truncate', not {recover!r}"
            raise ValueError(msg)
        self._init_counters(os.fspath(path), read_only=read_only)
        self.wal_damaged = False
        self._real = os.path.realpath(self._path)
        self._view: str | None = None
        self._registered = False
        if read_only or not create:
            _check_is_journal(self._path)
        if not read_only:
            with _open_lock:
                if self._real in _open_here:
                    msg = f"journal {self._path!r} is locked by this process (already open)"
                    raise JournalLockedError(msg)
                _open_here.add(self._real)
                self._registered = True
        # Read before the open: a live writer only ever raises it later.
        mark = HighWaterMark(self._path, writable=False) if read_only else None
        try:
            db = self._open_db(create=create, recover=recover)
            self._attach(db, self._path, mark)
        except BaseException:
            self._forget()
            raise
        self._closed = False

    def _open_db(self, *, create: bool, recover: Recover) -> rocksdict.Rdict:
        strict = rocksdict.DBRecoveryMode.absolute_consistency()
        try:
            return self._rdict(strict, create=create)
        except Exception as exc:
            first: Exception = exc
        if not self.read_only:
            holder = _lock_holder(self._path)
            if holder is not None:
                raise _locked_error(self._path, holder, first)
        lenient = rocksdict.DBRecoveryMode.point_in_time()
        if self.read_only and _lock_holder(self._path) is not None:
            # A live writer holds it: its log's tail may be mid-write.
            return self._rdict(lenient, create=False)
        kept = self._readable_leniently(lenient)
        if kept is None:
            msg = f"cannot open journal {self._path!r}: {first}"
            raise JournalError(msg) from first
        # Strict recovery failed where lenient recovery reads: the WAL is damaged.
        if recover == "refuse":
            acknowledged = HighWaterMark(self._path, writable=False).value
            loss = (
                f"{acknowledged - kept} acknowledged event(s), sequences {kept + 1}..{acknowledged}"
                if acknowledged > kept
                else "every event written after the damage"
            )
            msg = (
                f"journal {self._path!r} has a damaged write-ahead log ({first}); opening "
                f"it would lose {loss}. To accept the loss, open it with "
                "EventConfig(recover='truncate') or run actors._journal.repair(path)"
            )
            raise JournalDamagedError(msg) from first
        self.wal_damaged = True
        try:
            return self._rdict(lenient, create=False)
        except Exception as exc:
            msg = f"cannot recover journal {self._path!r}: {exc}; try actors._journal.repair"
            raise JournalDamagedError(msg) from exc

    def _rdict(self, recovery: Any, *, create: bool) -> rocksdict.Rdict:
        if self.read_only:
            if self._view is None:
                self._view = _linked_view(self._path)
            opts = _options(recovery=recovery)
            opts.create_if_missing(False)
            return rocksdict.Rdict(
                self._view,
                opts,
                column_families=_families(recovery, None),
                access_type=rocksdict.AccessType.read_only(),
            )
        opts = _options(recovery=recovery)
        opts.create_if_missing(create)
        opts.create_missing_column_families(True)
        return rocksdict.Rdict(self._path, opts, column_families=_families(recovery, None))

    def _readable_leniently(self, recovery: Any) -> int | None:
        """Open read-only, point-in-time (writes nothing); return its last sequence or None."""
        try:
            view = _linked_view(self._path)
        except OSError:
            return None
        try:
            opts = _options(recovery=recovery)
            opts.create_if_missing(False)
            db = rocksdict.Rdict(
                view,
                opts,
                column_families=_families(recovery, None),
                access_type=rocksdict.AccessType.read_only(),
            )
        except Exception:
            return None
        try:
            cursor = db.iter()
            cursor.seek_to_last()
            last = int(SEQ.unpack(cursor.key())[0]) if cursor.valid() else 0
            del cursor
        except Exception:
            last = 0
        finally:
            with contextlib.suppress(Exception):
                db.close()
            shutil.rmtree(view, ignore_errors=True)
        return last

    def _new_batch(self) -> rocksdict.WriteBatch:
        return rocksdict.WriteBatch(raw_mode=True)

    def _new_write_options(self) -> rocksdict.WriteOptions:
        return rocksdict.WriteOptions()

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
        self._fsyncer.shutdown(wait=True)
        if self._mark is not None:
            try:
                self._mark.close()
            except OSError as exc:
                first = exc
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

    def close(self) -> None:
        """Flush the memtables and release the journal's lock.  Idempotent.

        Blocks for the flush.  Later calls raise ``JournalError``.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._release()
        finally:
            self._forget()

    def _forget(self) -> None:
        if self._registered:
            with _open_lock:
                _open_here.discard(self._real)
            self._registered = False
        if self._view is not None:
            shutil.rmtree(self._view, ignore_errors=True)
            self._view = None


def repair_files(path: str | os.PathLike[str]) -> None:
    """Run RocksDB's repair on ``path``: salvage what the files still hold.

    Blocks; raises ``JournalNotFoundError`` if ``path`` holds no journal,
    ``JournalLockedError`` if it is open, ``JournalError`` if the repair fails.
    """
    where = os.fspath(path)
    _check_is_journal(where)
    real = os.path.realpath(where)
    with _open_lock:
        if real in _open_here:
            msg = f"journal {where!r} is open in this process; close it first"
            raise JournalLockedError(msg)
    holder = _lock_holder(where)
    if holder is not None:
        raise _locked_error(where, holder, None)
    try:
        rocksdict.Rdict.repair(where, _options())
    except Exception as exc:
        msg = f"repair of {where!r} failed: {exc}"
        raise JournalError(msg) from exc
