"""Read-only views of a journal: private folders of symbolic links to its files.

A read-only open goes through such a view, so nothing (not even rocksdict's
config file or RocksDB's info log) is written into the journal's folder.  A
view's name carries its creator's pid, so views of processes killed before
they closed theirs can be swept.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

from actors._errors import JournalError
from actors._journal.records import HIGH_WATER, SEQ
from actors._journal.rocks_retention import META_CHECKPOINT

__all__ = [
    "NOT_LINKED",
    "files_changed",
    "last_kept",
    "linked_names",
    "linked_view",
    "sweep_stale_views",
]

# Files a view never links: the lock, and what RocksDB or rocksdict write on open.
NOT_LINKED = frozenset({"LOCK", "LOG", "rocksdict-config.json"})

_VIEW_PREFIX = "actors-journal-ro-"
_VIEW_PATH = re.compile(r"[^\s'\"()]*" + re.escape(_VIEW_PREFIX) + r"\d+-[A-Za-z0-9_]+")


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


def in_journal_terms(text: str, path: str) -> str:
    """Return RocksDB's ``text`` with every view folder it names replaced by ``path``.

    A read-only open goes through a view, so RocksDB's errors name the view's
    temporary files; the user knows only the journal's folder.
    """
    return _VIEW_PATH.sub(lambda _: os.path.abspath(path), text)


def linked_view(path: str) -> tuple[str, frozenset[str]]:
    """Return a private folder of symbolic links to the journal's files, and their names.

    Named after this process, so that a later read-only open can sweep the
    views of processes killed before they closed theirs.  Raises
    ``JournalError`` if the view cannot be made.
    """
    sweep_stale_views()
    try:
        names = frozenset(linked_names(path))
        view = tempfile.mkdtemp(prefix=f"{_VIEW_PREFIX}{os.getpid()}-")
    except OSError as exc:
        msg = f"cannot read the journal at {path!r}: {exc}"
        raise JournalError(msg) from exc
    target = os.path.abspath(path)  # a link is read from the view's folder, not the caller's
    try:
        for name in names:
            os.symlink(os.path.join(target, name), os.path.join(view, name))
    except OSError as exc:
        shutil.rmtree(view, ignore_errors=True)
        msg = f"cannot make a read-only view of the journal at {path!r}: {exc}"
        raise JournalError(msg) from exc
    return view, names


def linked_names(path: str) -> set[str]:
    return {
        name
        for name in os.listdir(path)
        if name not in NOT_LINKED and not name.startswith("LOG.old")
    }


def files_changed(path: str, names: frozenset[str]) -> bool:
    try:
        return linked_names(path) != names
    except OSError:
        return False


def last_kept(db: Any) -> int:
    """Return the highest sequence ``db`` stores or speaks for, 0 if none or unreadable.

    Retention may have deleted the newest records: its high-water checkpoint
    still speaks for them, as ``_inspect``'s ``kept`` does.
    """
    try:
        cursor = db.iter()
        cursor.seek_to_last()
        last = int(SEQ.unpack(cursor.key())[0]) if cursor.valid() else 0
        del cursor
        meta = db.get_column_family("meta")
        raw = meta.get(META_CHECKPOINT + HIGH_WATER.encode())
        del meta
    except Exception:
        return 0
    return last if raw is None else max(last, int(SEQ.unpack(raw)[0]))
