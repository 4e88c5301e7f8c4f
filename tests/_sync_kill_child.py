"""Child process for ``tests/test_sync_kill_loops.py``: a writer killed -9 again and again.

Run as ``python tests/_sync_kill_child.py MODE PATH [ARGS...]``.  Every line is
flushed as soon as it is printed, so a line the parent read is something the
child had done.  Modes:

``writer PATH DURABILITY RUN THREADS``
    Print ``opening``, open ``PersistentEventBus(EventConfig(persistence_path=PATH,
    durability=DURABILITY))`` (an exception prints ``open-error CLASS MESSAGE``
    and exits 3), print ``opened LAST`` (the last stored sequence, read through
    the new bus), then publish ``kill.loop`` events for ever from ``THREADS``
    threads, each waiting for its future, printing ``ack SEQ ID RUN`` per
    resolved future.  One more thread publishes bursts: ``burst B N``, then ``N``
    events of about 2 KiB each without waiting, then ``ack ...`` for each as it
    resolves.  With ``async`` durability that thread calls ``flush()`` after the
    burst and prints ``flushed RUN B N`` once it returned; its events carry
    ``{"run": RUN, "burst": B, "k": k}``.
    Environment: ``KILL_PAD`` (burst payload bytes, 2000), ``KILL_MAX_EVENTS``
    (``max_events``, unset: none), ``KILL_HOOK=1``: profile hooks (they only
    print) give ``step MODULE:FUNC`` per journal-layer call during the open and
    ``wal-write N`` as a batch of N records goes to RocksDB, so the parent can
    kill at those points.
``probe PATH``
    Try a writable open: print ``opened`` or ``error CLASS MESSAGE``.  Then open
    read-only and print ``ro SEQ ID`` for every stored event and ``ro-done``,
    or ``ro-error CLASS MESSAGE``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import FrameType
from typing import Literal, cast

from actors import EventConfig, EventQuery, PersistentEventBus

_print_lock = threading.Lock()


def say(*parts: object) -> None:
    with _print_lock:
        sys.stdout.write(" ".join(str(p).replace("\n", " ") for p in parts) + "\n")
        sys.stdout.flush()


def _open_steps(frame: FrameType, event: str, arg: object) -> None:
    """Profile hook of the opening thread: print ``step NAME`` per journal-layer call."""
    if event == "call":
        module = frame.f_globals.get("__name__", "")
        if module.startswith("actors._journal."):
            say("step", f"{module.rsplit('.', 1)[1]}:{frame.f_code.co_name}")


def _wal_writes(frame: FrameType, event: str, arg: object) -> None:
    """Profile hook of the bus's threads: print ``wal-write N`` as a batch of N goes to RocksDB."""
    if (
        event == "c_call"
        and frame.f_code.co_name == "_write"
        and getattr(arg, "__name__", "") == "write"
    ):
        caller = frame.f_back
        while caller is not None and "records" not in caller.f_locals:
            caller = caller.f_back
        say("wal-write", len(caller.f_locals["records"]) if caller is not None else -1)


def writer(path: str, durability: Literal["sync", "async"], run: int, threads: int) -> None:
    hooked = os.environ.get("KILL_HOOK") == "1"
    if hooked:
        threading.setprofile(_wal_writes)
        sys.setprofile(_open_steps)
    say("opening")
    try:
        keep = int(os.environ.get("KILL_MAX_EVENTS", "0")) or None
        config = EventConfig(persistence_path=path, durability=durability, max_events=keep)
        bus = PersistentEventBus(config)
    except Exception as exc:
        sys.setprofile(None)
        say("open-error", type(exc).__name__, exc)
        raise SystemExit(3) from exc
    sys.setprofile(None)
    last = bus.query(EventQuery(descending=True, limit=1), timeout=60)
    say("opened", last[0].sequence if last else 0)

    def loop(worker: int) -> None:
        i = 0
        while True:
            i += 1
            event = bus.publish("kill.loop", {"run": run, "w": worker, "i": i}).get(timeout=60)
            say("ack", event.sequence, event.id, run)

    def bursts() -> None:
        pad = "p" * int(os.environ.get("KILL_PAD", "2000"))
        b = 0
        while True:
            b += 1
            n = 64 if b % 2 else 256
            say("burst", b, n)
            futures = [
                bus.publish("kill.burst", {"run": run, "burst": b, "k": k, "pad": pad})
                for k in range(n)
            ]
            if durability == "async":
                bus.flush(timeout=60)
                say("flushed", run, b, n)
            for f in futures:
                event = f.get(timeout=60)
                say("ack", event.sequence, event.id, run)

    workers = [threading.Thread(target=loop, args=(w,), daemon=True) for w in range(threads)]
    workers.append(threading.Thread(target=bursts, daemon=True))
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def probe(path: str) -> None:
    try:
        bus = PersistentEventBus(EventConfig(persistence_path=path))
    except Exception as exc:
        say("error", type(exc).__name__, exc)
    else:
        say("opened")
        bus.close(timeout=30)
    try:
        reader = PersistentEventBus(EventConfig(persistence_path=path, read_only=True))
    except Exception as exc:
        say("ro-error", type(exc).__name__, exc)
        return
    try:
        for event in reader.query(EventQuery(), timeout=60):
            say("ro", event.sequence, event.id)
        say("ro-done")
    finally:
        reader.close(timeout=30)


def main(argv: list[str]) -> None:
    mode, path, *rest = argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if mode == "writer":
        writer(path, cast("Literal['sync', 'async']", rest[0]), int(rest[1]), int(rest[2]))
    elif mode == "probe":
        probe(path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
