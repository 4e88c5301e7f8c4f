"""What a journal's folder says by its files alone: the lock, a database, what cannot be read.

No RocksDB here: names, ``fcntl`` probes and plain reads, which
``rocks.py`` asks before (and instead of) opening the folder, and the
texts of its refusals.
"""

from __future__ import annotations

import fcntl
import os
import struct

from actors._errors import JournalError, JournalLockedError
from actors._journal.highwater import FILE_NAME
from actors._journal.rocks_views import NOT_LINKED

__all__ = [
    "holds_database",
    "lock_holder",
    "locked_error",
    "refuse_message",
    "unreadable_file",
    "wal_message",
]

_probe_fds: list[int] = []  # see lock_holder


def lock_holder(path: str) -> int | None:
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


def locked_error(path: str, holder: int, cause: BaseException | None) -> JournalLockedError:
    who = "this process" if holder == os.getpid() else f"another process (pid {holder})"
    error = JournalLockedError(f"journal {path!r} is locked by {who}")
    error.__cause__ = cause
    return error


_DATA_SUFFIXES = (".sst", ".log")


def holds_database(path: str) -> bool:
    """Return whether ``path`` holds a RocksDB database, whole or damaged; reads only names.

    A folder without ``CURRENT`` that still holds table files, logs, a
    ``MANIFEST`` or the acknowledged mark is a damaged journal, not an empty
    folder: RocksDB must never create a new database over it.
    """
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        msg = f"cannot read the journal folder {path!r}: {exc}"
        raise JournalError(msg) from exc
    return any(
        name in ("CURRENT", FILE_NAME)
        or name.startswith("MANIFEST-")
        or name.endswith(_DATA_SUFFIXES)
        for name in names
    )


def unreadable_file(path: str) -> OSError | None:
    """Return the error of the first file in ``path`` this process cannot read, or None."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        return exc
    for name in names:
        if name in NOT_LINKED:
            continue
        try:
            fd = os.open(os.path.join(path, name), os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed meanwhile
        except OSError as exc:
            return exc
        os.close(fd)
    return None


def refuse_message(path: str, acknowledged: int, kept: int, last: int) -> str:
    return (
        f"journal {path!r} is damaged: {acknowledged - kept} acknowledged event(s), "
        f"sequences {kept + 1}..{acknowledged}, are missing (the journal ends at {last}). "
        "To accept the loss, open it with EventConfig(recover='truncate') or run "
        "actors._journal.repair(path)"
    )


def wal_message(path: str, damage: str, acknowledged: int, kept: int) -> str:
    loss = (
        f"{acknowledged - kept} acknowledged event(s), sequences {kept + 1}..{acknowledged}"
        if acknowledged > kept
        else "every event written after the damage"
    )
    return (
        f"journal {path!r} has a damaged write-ahead log ({damage}); opening it would "
        f"lose {loss}. To accept the loss, open it with EventConfig(recover='truncate') "
        "or run actors._journal.repair(path)"
    )
