"""The RocksDB backend: the one module that imports rocksdict.

rocksdict raises a bare ``Exception`` for every RocksDB status (lock held,
corruption, I/O error alike; only ``DbClosedError`` has a type of its own),
so errors are told apart here by the state of the files, never by message
text: a lock by this module's registry of the journals this process has open
and by an ``fcntl`` probe of the ``LOCK`` file; damage by a read-only view
opened before RocksDB ever opens the folder writable (strict, then lenient:
a damaged write-ahead log; neither, with every file readable: damaged
``CURRENT``/``MANIFEST``); a failed writable open after a sound view is an
I/O problem (``JournalError``); "not a journal" by the files present and the
column families.

Opening (``docs/persistence.md``): RocksDB recovers the WAL in
``AbsoluteConsistency`` mode with paranoid checks, so it refuses a damaged
WAL instead of silently dropping everything after the damage.  With
``recover="truncate"`` a damaged WAL is recovered up to the damage
(``PointInTime``) and ``wal_damaged`` says so.  A WAL whose last write was
cut short by a crash is not damage when the acknowledged mark shows nothing
acknowledged missing: it opens in ``TolerateCorruptedTailRecords`` mode
(``torn_tail``), which still refuses damage before the tail.  Read-only opens go through a
private folder of symbolic links, so nothing, not even rocksdict's config
file or RocksDB's info log, is written into the journal's folder.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import threading
from typing import Any, Literal

import rocksdict

from actors._errors import (
    JournalDamagedError,
    JournalError,
    JournalLockedError,
    JournalNotFoundError,
)
from actors._journal.highwater import FILE_NAME, HighWaterMark
from actors._journal.native import close_native
from actors._journal.rebuild import disagree_message
from actors._journal.records import HIGH_WATER
from actors._journal.rocks_files import (
    holds_database,
    lock_holder,
    locked_error,
    refuse_message,
    unreadable_file,
    wal_message,
)
from actors._journal.rocks_store import RocksTables
from actors._journal.rocks_views import (
    files_changed,
    in_journal_terms,
    last_kept,
    linked_view,
)

__all__ = ["RocksStorage", "repair_files"]

Recover = Literal["refuse", "truncate"]

_CF_TYPE = "by_type"
_CF_TIME = "by_time"
_CF_CID = "by_cid"
_CF_META = "meta"
_LOG_FILES_KEPT = 2  # RocksDB info log: LOG plus one LOG.old.*, each at most:
_LOG_FILE_BYTES = 1 << 20

logger = logging.getLogger("actors.storage")

# The journals this process holds open (real paths); one writer thread each.
_open_here: set[str] = set()
_open_lock = threading.Lock()


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


def _damaged_or_unreadable(path: str, cause: BaseException) -> JournalError:
    """Say why RocksDB could not read ``path`` even leniently.

    When every file can be read the files themselves are damaged
    (``JournalDamagedError``); otherwise the folder cannot be read
    (permissions, I/O): ``JournalError`` naming the file.
    """
    problem = unreadable_file(path)
    if problem is not None:
        error = JournalError(f"cannot read the journal at {path!r}: {problem}")
    else:
        error = JournalDamagedError(
            f"journal {path!r} is damaged: RocksDB cannot read it "
            f"({in_journal_terms(str(cause), path)}). To salvage "
            "what its files still hold, run actors._journal.repair(path) or open it with "
            "EventConfig(recover='truncate')"
        )
    error.__cause__ = cause
    return error


def _check_is_journal(path: str) -> None:
    """Raise unless ``path`` holds a readable journal; read only.

    ``JournalNotFoundError`` when it holds no database or a RocksDB that is
    not a journal; ``JournalDamagedError`` when RocksDB cannot read it or a
    journal's ``meta`` column family is gone;
    ``JournalError`` when the folder cannot be read.
    """
    if not holds_database(path):
        msg = f"{path!r} holds no journal (no RocksDB CURRENT file); nothing was created"
        raise JournalNotFoundError(msg)
    if not os.path.isfile(os.path.join(path, "CURRENT")):
        error = _damaged_or_unreadable(path, JournalError("its CURRENT file is missing"))
        raise error from error.__cause__
    try:
        families = rocksdict.Rdict.list_cf(path)
    except Exception as exc:
        raise _damaged_or_unreadable(path, exc) from exc
    if _CF_META not in families:
        ours = os.path.isfile(os.path.join(path, FILE_NAME))  # the acknowledged mark
        if ours or {_CF_TYPE, _CF_TIME, _CF_CID} & set(families):
            # A journal whose meta table was lost before RocksDB's repair ran,
            # or whose MANIFEST was cut before it named its column families.
            gone = JournalError(f"its {_CF_META!r} column family is missing")
            error = _damaged_or_unreadable(path, gone)
            raise error from error.__cause__
        msg = f"{path!r} is a RocksDB but not a journal (no {_CF_META!r} column family)"
        raise JournalNotFoundError(msg)


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
        holds it; ``JournalDamagedError`` if it is damaged (its WAL, or
        acknowledged events missing) and ``recover`` is ``"refuse"``;
        ``JournalError`` for any other failure.  A writable open decides
        through a read-only view before RocksDB opens the folder writable, so
        a refused open changes nothing in it; with ``recover="truncate"`` a
        journal missing acknowledged events for any reason but a damaged WAL
        goes through RocksDB's repair first (``repaired``).
        """
        if recover not in ("refuse", "truncate"):
            msg = f"recover must be 'refuse' or 'truncate', not {recover!r}"
            raise ValueError(msg)
        self._init_counters(os.fspath(path), read_only=read_only)
        self.wal_damaged = False
        self.repaired = False
        self.damage: str | None = None
        # The WAL ends in an incomplete write (a crash while writing) and no
        # acknowledged event is missing: read up to it, nothing refused.
        self.torn_tail: str | None = None
        self._real = os.path.realpath(self._path)
        self._view: str | None = None
        self._registered = False
        if read_only:
            _check_is_journal(self._path)
        else:
            with _open_lock:
                if self._real in _open_here:
                    msg = f"journal {self._path!r} is locked by this process (already open)"
                    raise JournalLockedError(msg)
                _open_here.add(self._real)
                self._registered = True
        db = None
        try:
            # Read before the open: a live writer only ever raises it later.
            mark = HighWaterMark(self._path, writable=False) if read_only else None
            if read_only:
                db = self._open_read_only(recover)
            else:
                db = self._open_writable(create=create, recover=recover)
            self._attach(db, self._path, mark)
        except BaseException:
            if db is not None and "_db" not in self.__dict__:
                # Opened, not attached (a Ctrl-C between the two): the
                # traceback's frame would keep it, and its lock, alive.
                with contextlib.suppress(Exception):
                    close_native(db)
            del db
            self._forget()
            raise
        self._closed = False

    # -- read-only ------------------------------------------------------------

    def _open_read_only(self, recover: Recover) -> rocksdict.Rdict:
        strict = rocksdict.DBRecoveryMode.absolute_consistency()
        lenient = rocksdict.DBRecoveryMode.point_in_time()
        try:
            return self._view_rdict(strict)
        except Exception as exc:
            first: Exception = exc
        if lock_holder(self._path) is not None:
            # A live writer holds it: its log's tail may be mid-write.
            try:
                return self._view_rdict(lenient)
            except Exception as exc:
                msg = f"cannot open journal {self._path!r} read-only: {exc}"
                raise JournalError(msg) from exc
        torn = self._torn_tail_view()
        if torn is not None:
            self.torn_tail = str(first)
            return torn
        try:
            db = self._view_rdict(lenient)
        except Exception as exc:
            raise _damaged_or_unreadable(self._path, exc) from exc
        # Strict recovery failed where lenient recovery reads: the WAL is damaged.
        if recover == "refuse":
            kept = last_kept(db)
            with contextlib.suppress(Exception):
                close_native(db)
            del db
            gc.collect()
            acknowledged = HighWaterMark(self._path, writable=False).value
            msg = wal_message(self._path, str(first), acknowledged, kept)
            raise JournalDamagedError(msg) from first
        self.wal_damaged = True
        self.damage = str(first)
        return db

    def _torn_tail_view(self) -> rocksdict.Rdict | None:
        """Return a view if only the last write in the WAL is cut short and nothing acked is lost.

        A process killed while RocksDB appended a write to its log (a large
        batch goes out in several ``write`` calls) leaves that write cut
        short: ``TolerateCorruptedTailRecords`` reads up to it, and refuses
        damage anywhere before the tail.  That write was never acknowledged
        (the mark is advanced after it), so dropping it loses nothing anyone
        was promised; if the mark says otherwise, it is damage (None).
        """
        try:
            db = self._view_rdict(rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records())
        except Exception:
            return None
        if HighWaterMark(self._path, writable=False).value <= last_kept(db):
            return db
        with contextlib.suppress(Exception):
            close_native(db)
        del db
        gc.collect()
        return None

    def _view_rdict(self, recovery: Any) -> rocksdict.Rdict:
        """Open read-only through a fresh view; again while a writer changes the file set."""
        attempts = 5
        for attempt in range(attempts):
            if self._view is not None:
                shutil.rmtree(self._view, ignore_errors=True)
                self._view = None
            self._view, names = linked_view(self._path)
            opts = _options(recovery=recovery)
            opts.create_if_missing(False)
            try:
                return rocksdict.Rdict(
                    self._view,
                    opts,
                    column_families=_families(recovery, None),
                    access_type=rocksdict.AccessType.read_only(),
                )
            except Exception:
                # A writer flushed or compacted after the view listed the folder.
                if attempt + 1 < attempts and files_changed(self._path, names):
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writable -------------------------------------------------------------

    def _open_writable(self, *, create: bool, recover: Recover) -> rocksdict.Rdict:
        strict = rocksdict.DBRecoveryMode.absolute_consistency()
        if not holds_database(self._path):
            if not create:
                msg = f"{self._path!r} holds no journal; nothing was created"
                raise JournalNotFoundError(msg)
            return self._writable_rdict(strict, create=True)
        holder = lock_holder(self._path)
        if holder == os.getpid():  # closed here, but a reference cycle holds it
            gc.collect()
            holder = lock_holder(self._path)
        if holder is not None:
            raise locked_error(self._path, holder, None)
        if self._inspect(recover):
            _repair(self._path)
            self.repaired = True
        elif self.wal_damaged:
            return self._writable_rdict(rocksdict.DBRecoveryMode.point_in_time(), create=False)
        elif self.torn_tail is not None:
            logger.warning(
                "journal %s: its write-ahead log ends in an incomplete write (%s: the "
                "process died while writing); that write was never acknowledged and is "
                "dropped, no acknowledged event is missing",
                self._path,
                self.torn_tail,
            )
            tolerate = rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records()
            return self._writable_rdict(tolerate, create=False)
        return self._writable_rdict(strict, create=False)

    def _inspect(self, recover: Recover) -> bool:
        """Look through a read-only view before opening writable; return whether to repair.

        Raises ``JournalDamagedError`` with ``recover="refuse"`` when the WAL
        is damaged or acknowledged events are missing; nothing is written.
        """
        try:
            view = RocksStorage(self._path, read_only=True, recover="truncate")
        except JournalDamagedError:
            if recover == "refuse":
                raise
            return True  # RocksDB cannot read it at all: salvage with its repair
        try:
            acknowledged = view.acknowledged()
            last = view.last_sequence()
            kept = max(last, view.get_checkpoint(HIGH_WATER) or 0)
            damage = view.damage
            self.torn_tail = view.torn_tail
            # The open's check of the secondary state, made here too: RocksDB's
            # writable open deletes the table files a cut MANIFEST no longer
            # lists (the indexes), before that check could refuse.
            problems = view.quick_problems() if recover == "refuse" else []
        finally:
            view.close()
        if recover == "refuse":
            if damage is not None:
                raise JournalDamagedError(wal_message(self._path, damage, acknowledged, kept))
            if acknowledged > kept:
                raise JournalDamagedError(refuse_message(self._path, acknowledged, kept, last))
            if problems:
                raise JournalDamagedError(disagree_message(self._path, problems))
            return False
        if damage is not None:
            # Recovered up to the damage: what the log holds after it has lost its order.
            self.wal_damaged = True
            self.damage = damage
            return False
        return acknowledged > kept

    def _writable_rdict(self, recovery: Any, *, create: bool) -> rocksdict.Rdict:
        opts = _options(recovery=recovery)
        opts.create_if_missing(create)
        opts.create_missing_column_families(True)
        try:
            return rocksdict.Rdict(self._path, opts, column_families=_families(recovery, None))
        except Exception as exc:
            holder = lock_holder(self._path)
            if holder is not None:
                raise locked_error(self._path, holder, exc) from exc
            # The read-only view found the files sound: the folder cannot be
            # written (read-only file system, full disk, permissions, LOCK).
            msg = f"cannot open journal {self._path!r}: {exc}"
            raise JournalError(msg) from exc

    def _new_batch(self) -> rocksdict.WriteBatch:
        return rocksdict.WriteBatch(raw_mode=True)

    def _clear_indexes(self) -> None:
        """Drop the index column families and create them anew, empty; no block is read."""
        self._type_cf, self._type_h = self._new_family(_CF_TYPE, "_type_cf", "_type_h")
        self._time_cf, self._time_h = self._new_family(_CF_TIME, "_time_cf", "_time_h")
        self._cid_cf, self._cid_h = self._new_family(_CF_CID, "_cid_cf", "_cid_h")

    def _new_family(self, name: str, cf_attr: str, handle_attr: str) -> tuple[Any, Any]:
        old = self.__dict__.pop(cf_attr, None)
        self.__dict__.pop(handle_attr, None)
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()  # this family's object only, not the database
        del old
        try:
            self._db.drop_column_family(name)
            family = self._db.create_column_family(name, _families(None, None)[name])
            return family, self._db.get_column_family_handle(name)
        except Exception as exc:
            msg = f"journal {self._path!r}: cannot empty its {name} index: {exc}"
            raise JournalError(msg) from exc

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
        shared = any(sys.getrefcount(h) > 3 for h in handles if h is not None)  # a cycle?
        for name in ("_type_h", "_time_h", "_cid_h", "_meta_h"):
            family = self.__dict__.pop(name, None)
            shared = shared or (family is not None and sys.getrefcount(family) > 2)
            del family
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
                close_native(handle)
            except Exception as exc:
                # Keep no traceback: its frames would keep the handle (and the
                # LOCK) alive for as long as anyone holds the error.
                first = first or exc.with_traceback(None)
            del handle
        if shared or first is not None:
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


def _repair(path: str) -> None:
    try:
        rocksdict.Rdict.repair(path, _options())
    except Exception as exc:
        msg = f"repair of {path!r} failed: {exc}"
        raise JournalError(msg) from exc


def repair_files(path: str | os.PathLike[str]) -> None:
    """Run RocksDB's repair on ``path``: salvage what the files still hold.

    Blocks; raises ``JournalNotFoundError`` if ``path`` holds no database,
    ``JournalLockedError`` if it is open, ``JournalError`` if the repair fails.
    """
    where = os.fspath(path)
    if not holds_database(where):
        msg = f"{where!r} holds no journal; nothing was created"
        raise JournalNotFoundError(msg)
    real = os.path.realpath(where)
    with _open_lock:
        if real in _open_here:
            msg = f"journal {where!r} is open in this process; close it first"
            raise JournalLockedError(msg)
    holder = lock_holder(where)
    if holder is not None:
        raise locked_error(where, holder, None)
    _repair(where)
