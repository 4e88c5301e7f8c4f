"""``python tests/_exit_close_child.py DIR MODE``: a journal's files at interpreter exit.

``close``: a journal is closed on a daemon thread (as an interrupted
``close()``'s ``bus-close`` thread, or a dispatcher's, would) and the main
thread exits as soon as that close has begun.  rocksdict closes without the
GIL: a close that came back while the interpreter finalized made CPython end
its thread through Rust frames, and the process died of SIGABRT.

``sync``: a daemon thread fsyncs the WAL after each large put, as a
``sync`` write does (``flush_wal`` also runs without the GIL), while the
main thread exits.

``fork``: a process forked while a call was under way on another thread
exits at once (the call, and its thread, are the parent's); prints the
child's exit status.  Exits 0.
"""

from __future__ import annotations

import os
import sys
import threading


def _close(folder: str) -> None:
    from actors._journal.rocks import RocksStorage  # noqa: PLC0415

    storage = RocksStorage(os.path.join(folder, "j"))
    # A memtable to flush at close: bare puts under the storage.
    db = storage._db  # noqa: SLF001 - filling the database the storage closes
    for i in range(20_000):
        db[f"filler-{i}".encode()] = b"x" * 100
    del db
    lingering = [{"k": [i]} for i in range(2_000_000)]  # a finalization that takes a while
    begun = threading.Event()

    def close() -> None:
        begun.set()
        storage.close()

    threading.Thread(target=close, name="closer", daemon=True).start()
    begun.wait()
    globals()["lingering"] = lingering  # kept until finalization


def _sync(folder: str) -> None:
    from actors._errors import JournalError  # noqa: PLC0415
    from actors._journal.rocks import RocksStorage  # noqa: PLC0415

    storage = RocksStorage(os.path.join(folder, "j"))
    db = storage._db  # noqa: SLF001 - large puts, each synced as a sync write is
    synced = threading.Event()

    def append() -> None:
        key = 0
        while True:
            key += 1
            db[b"k%d" % key] = b"x" * 100_000
            try:
                storage._sync_wal()  # noqa: SLF001 - the fsync of a sync write
            except JournalError:  # not synced once the interpreter exits: said, not hidden
                return
            synced.set()

    threading.Thread(target=append, name="appender", daemon=True).start()
    synced.wait()


def _fork() -> None:
    from actors._journal import native  # noqa: PLC0415

    native.EXIT_WAIT = 3600.0  # a child waiting for the parent's call would hang
    release, entered = threading.Event(), threading.Event()

    def call() -> None:
        entered.set()
        release.wait()

    threading.Thread(target=native.without_gil, args=(call,), daemon=True).start()
    entered.wait()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit: atexit hooks run
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), flush=True)
    release.set()


if __name__ == "__main__":
    mode = sys.argv[2]
    if mode == "close":
        _close(sys.argv[1])
    elif mode == "sync":
        _sync(sys.argv[1])
    else:
        _fork()
