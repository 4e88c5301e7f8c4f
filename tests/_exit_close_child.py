"""``python -m tests._exit_close_child DIR``: the interpreter exits while a journal closes.

A journal is closed on a daemon thread (as an interrupted ``close()``'s
``bus-close`` thread, or a dispatcher's, would) and the main thread exits as
soon as that close has begun.  rocksdict closes without the GIL: a close
that came back while the interpreter finalized made CPython end its thread
through Rust frames, and the process died of SIGABRT.  Exits 0; prints
nothing.
"""

from __future__ import annotations

import os
import sys
import threading

from actors._journal.rocks import RocksStorage

if __name__ == "__main__":
    storage = RocksStorage(os.path.join(sys.argv[1], "j"))
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
