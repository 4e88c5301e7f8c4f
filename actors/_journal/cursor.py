"""Checked iteration over a RocksDB column family: errors never end a walk early.

rocksdict's ``keys()``/``items()`` iterators stop quietly when RocksDB's
iterator hits an error (a checksum mismatch in a table block looks like the
end of the data).  These walks use the raw iterator (``Rdict.iter()``) and ask
``status()`` whenever it stops: an error raises ``JournalError``, or, in the
primary space where keys are sequences, skips the damaged block.

A damaged block is skipped only when the walk can resume in order after it:
seeks probe ever further past the last good sequence until one lands on a
readable block, then a binary search finds the first sequence whose seek
reads cleanly.  Walking backwards, the records between the damage and the
last one yielded are then read one by one (RocksDB's reverse step reads
one key further down than it yields), and the bottom of the space is a
clean end: a damaged lowest block ends the walk with its records skipped.
``on_skip(first, resume)`` is told the sequence range [first, resume) that
could not be read (it counts and warns).  If no seek
past the damage reads cleanly, the walk raises ``JournalError``.

No driver import: the cursor is anything with RocksDB's raw-iterator methods.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from actors._errors import JournalError
from actors._journal.records import MAX_SEQ, SEQ

__all__ = ["Cursor", "Iterable", "forget_frames", "walk", "walk_sequences"]

SkipHandler = Callable[[int, int], None]


class Cursor(Protocol):
    """RocksDB's raw iterator, as ``rocksdict.RdictIter`` offers it."""

    def valid(self) -> bool: ...
    def status(self) -> None: ...
    def key(self) -> Any: ...
    def value(self) -> Any: ...
    def next(self) -> None: ...
    def prev(self) -> None: ...
    def seek(self, key: Any) -> None: ...
    def seek_for_prev(self, key: Any) -> None: ...
    def seek_to_first(self) -> None: ...
    def seek_to_last(self) -> None: ...


class Iterable(Protocol):
    """A column family: something that opens raw iterators."""

    def iter(self) -> Cursor: ...


def _failed(cursor: Cursor) -> BaseException | None:
    """Return the iterator's error once it stopped, or None at a clean end."""
    try:
        cursor.status()
    except Exception as exc:
        return exc.with_traceback(None)  # its frame holds the cursor (and the database)
    return None


def forget_frames(exc: BaseException) -> None:
    """Clear the locals of the frames ``exc`` and its causes passed through.

    Frames below a journal call hold iterators over the database, which keep
    it (and its lock) open for as long as a caller keeps the error.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        stack += [error.__cause__, error.__context__]


def _position(cursor: Cursor, from_key: bytes | None, backwards: bool) -> None:
    if from_key is None:
        cursor.seek_to_last() if backwards else cursor.seek_to_first()
    elif backwards:
        cursor.seek_for_prev(from_key)
    else:
        cursor.seek(from_key)


def walk(
    cf: Iterable, *, from_key: bytes | None = None, backwards: bool = False, values: bool = False
) -> Iterator[tuple[bytes, bytes | None]]:
    """Yield (key, value or None) from ``from_key`` on; raise ``JournalError`` on a read error."""
    cursor = cf.iter()
    _position(cursor, from_key, backwards)
    while cursor.valid():
        yield cursor.key(), (cursor.value() if values else None)
        cursor.prev() if backwards else cursor.next()
    error = _failed(cursor)
    if error is not None:
        msg = f"journal read failed: {error}"
        raise JournalError(msg) from error


def walk_sequences(
    cf: Iterable,
    *,
    start: int,
    backwards: bool = False,
    values: bool = True,
    on_skip: SkipHandler,
) -> Iterator[tuple[int, bytes | None]]:
    """Yield (sequence, value) of the primary space from ``start``, skipping damaged blocks.

    Forward from ``start`` up, or backwards from ``start`` down.  See the
    module docstring for when a block is skipped and when it raises.
    """
    cursor = cf.iter()
    step = -1 if backwards else 1
    last: int | None = None  # the last sequence read cleanly
    pending: list[int] | None = None  # [first, resume) skipped, not yet reported
    pos = start
    while True:
        _position(cursor, SEQ.pack(pos), backwards)
        while cursor.valid():
            if pending is not None:
                _report(on_skip, pending, backwards)
                pending = None
            seq = int(SEQ.unpack(cursor.key())[0])
            yield seq, (cursor.value() if values else None)
            last = seq
            cursor.prev() if backwards else cursor.next()
        error = _failed(cursor)
        if error is None:
            break
        first = pos if last is None else last + step
        resume = _resume_point(cf, first, step)
        if backwards:
            # Walking back, RocksDB reads the key below the one it is about
            # to yield: the records just above the damage fail with it, but
            # read cleanly on their own.  Nothing lies below the lowest block.
            resume = -1 if resume is None else resume
            salvaged, first = _read_down(cf, first, resume, values)
            for seq, value in salvaged:
                if pending is not None:
                    _report(on_skip, pending, backwards)
                    pending = None
                yield seq, value
                last = seq
        if resume is None:
            msg = (
                f"journal read failed at sequence {first} and no later block reads cleanly: {error}"
            )
            raise JournalError(msg) from error
        # (Backwards, ``first == resume`` when every record above the resume
        # point was read on its own: nothing was skipped.)  A resume point can
        # land inside the same damage (RocksDB's seek may read cleanly where
        # the next step does not): merge such skips.
        if first != resume and pending is not None and last is None:
            pending[1] = resume
        elif first != resume:
            pending = [first, resume]
        if not 0 <= resume <= MAX_SEQ:
            break
        pos = resume
        last = None
        cursor = cf.iter()  # an iterator that failed once may not recover on a seek
    if pending is not None:
        _report(on_skip, pending, backwards)


MAX_ABSENT = 4096
"""How many absent sequences in a row ``_read_down`` looks past (a gap the journal
skipped, ``recover="truncate"``) before it leaves the rest to the skipped range:
each costs a seek, about 2.6 us."""


def _read_down(
    cf: Iterable, first: int, resume: int, values: bool
) -> tuple[list[tuple[int, bytes | None]], int]:
    """Read the records from ``first`` down to above ``resume`` one by one, to the first error.

    A forward seek reads only the block of its key.  Returns the records
    read (descending) and the highest sequence left unread (``resume`` if
    none is).
    """
    read: list[tuple[int, bytes | None]] = []
    seq, absent = first, 0
    while seq > resume and absent < MAX_ABSENT:
        cursor = cf.iter()
        cursor.seek(SEQ.pack(seq))
        if not cursor.valid():
            break  # an error, or (a writer deleting) nothing at or above it
        if int(SEQ.unpack(cursor.key())[0]) == seq:
            read.append((seq, cursor.value() if values else None))
            absent = 0
        else:
            absent += 1
        seq -= 1  # absent (a gap) or read: on down
    return read, seq


def _report(on_skip: SkipHandler, skipped: list[int], backwards: bool) -> None:
    first, resume = skipped
    if backwards:
        on_skip(resume + 1, first + 1)
    else:
        on_skip(first, resume)


def _reads_cleanly(cf: Iterable, seq: int, step: int) -> bool:
    cursor = cf.iter()
    _position(cursor, SEQ.pack(seq), step < 0)
    return cursor.valid() or _failed(cursor) is None


def _resume_point(cf: Iterable, first: int, step: int) -> int | None:
    """Return the first sequence at or past ``first`` (in ``step`` direction) that reads cleanly.

    Returns MAX_SEQ + 1 (or -1 backwards) when everything past the damage is
    gone but the walk may end cleanly; None when no probe reads cleanly.
    """
    bad, distance = first, 1
    while True:
        probe = first + step * distance
        if probe > MAX_SEQ or probe < 0:
            end = MAX_SEQ if step > 0 else 0
            if not _reads_cleanly(cf, end, step):
                return None
            probe = end
            if probe == bad:
                return end + step
            break
        if _reads_cleanly(cf, probe, step):
            break
        bad = probe
        distance *= 2
    # bad does not read cleanly, probe does: find the boundary between them.
    good = probe
    while abs(good - bad) > 1:
        mid = (good + bad) // 2
        if _reads_cleanly(cf, mid, step):
            good = mid
        else:
            bad = mid
    return good
