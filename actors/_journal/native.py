"""rocksdict calls that release the GIL, kept out of an exiting interpreter's way.

rocksdict closes, flushes and fsyncs its log (``flush_wal``) without the GIL.  A daemon thread (a
dispatcher's, or the ``bus-close`` of an interrupted ``close``) that comes
back from such a call while the interpreter finalizes is ended by CPython
through the Rust frames below it, which aborts the process (SIGABRT).  So
an exiting interpreter waits for the calls under way (``_at_exit``, up to
``EXIT_WAIT``), and a call another thread would begin after that is not
made: a close is left to the process's end, as a kill would leave it (what
was written is in the write-ahead log), a flush is skipped, and a ``sync``
write's fsync fails the write.  The main
thread, the one that finalizes, always makes its calls.  So an ``atexit``
hook that runs after this module's (one registered before the package
was imported) and closes a bus leaves its journal locked until the
process ends: the journal actor's thread closes it.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["EXIT_WAIT", "close_native", "without_gil"]

EXIT_WAIT = 10.0
"""Seconds an exiting interpreter waits for the calls under way on other threads."""

_native = threading.Condition()  # guards the two below
_under_way = 0  # calls under way on any thread
_exiting = False  # the interpreter is exiting: no call begins on another thread
_kept_at_exit: list[Any] = []  # handles not closed then: the process's end releases them


def without_gil(call: Callable[[], object]) -> bool:
    """Make ``call`` (a rocksdict call that releases the GIL); return whether it was made.

    Not made on a thread other than the main one once the interpreter exits.
    """
    global _under_way
    with _native:
        if _exiting and threading.current_thread() is not threading.main_thread():
            return False
        _under_way += 1
    try:
        call()
    finally:
        with _native:
            _under_way -= 1
            _native.notify_all()
    return True


def close_native(handle: Any) -> None:
    """``handle.close()``; once the interpreter exits, left to the process's end."""
    if not without_gil(handle.close):
        with _native:
            _kept_at_exit.append(handle)


@atexit.register
def _at_exit() -> None:
    """Let the calls under way end before the interpreter finalizes."""
    global _exiting
    with _native:
        _exiting = True
        _native.wait_for(lambda: _under_way == 0, EXIT_WAIT)


def _in_child() -> None:
    """A forked child has none of the parent's threads, nor their calls under way."""
    global _native, _under_way
    _native = threading.Condition()
    _under_way = 0


os.register_at_fork(after_in_child=_in_child)
