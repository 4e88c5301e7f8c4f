"""Child process for the journal durability tests (``tests/test_durability.py``).

Run as ``python tests/_journal_child.py MODE PATH [ARGS...]``.  Every line it
prints is flushed at once, so the parent can act on it (e.g. kill -9) and know
exactly what the child had acknowledged.  Modes:

``sync-writer PATH THREADS``
    Open a ``durability="sync"`` bus and publish forever from ``THREADS``
    threads, each waiting for its publish future; print ``ack SEQ ID`` as soon
    as a future resolves.  Runs until killed.
``async-writer PATH N``
    Open an ``async`` bus, publish ``N`` events, ``flush()``, print
    ``flushed LAST_SEQ``, then keep publishing (printing ``ack SEQ ID`` for
    each resolved future) until killed.
``write-n PATH N``
    Open a ``durability="sync"`` bus, publish ``N`` events (64 in flight at a
    time), print ``acked LAST_SEQ`` once every future resolved, then wait to
    be killed.
``write-big PATH BYTES RETENTION_DAYS``
    Open a ``durability="sync"`` bus keeping ``RETENTION_DAYS`` of events
    (its retention runs at the open), publish one event of about ``BYTES``,
    print ``acked SEQ`` once it resolved, then wait to be killed.
``try-open PATH``
    Try to open the journal; print ``opened`` or ``error CLASSNAME MESSAGE``.
``hold PATH``
    Open the journal, print ``opened``, then read commands from stdin:
    ``publish`` (publish one event, print ``ack SEQ``) or ``close``.
``fill PATH PAYLOAD_BYTES MAX``
    Publish events of ``PAYLOAD_BYTES`` each, one at a time, printing
    ``ack SEQ ID`` or ``error I CLASSNAME MESSAGE`` for each, until ``MAX`` attempts or
    10 errors; then print ``closing``, close the bus and print ``closed``.
``durable PATH NAME BLOCK_AT EXTRA``
    Subscribe durably as ``NAME`` to ``job.*`` (from sequence 1 the first
    time), publish a ``job.sync`` marker and wait until it is handled (the
    history is done), then publish ``EXTRA`` ``job.run`` events one at a time,
    each after the previous one was handled; print ``handled SEQ`` per
    handled event.
    If ``BLOCK_AT`` > 0, the handler of the ``BLOCK_AT``-th event published
    here blocks forever after printing ``blocking SEQ``; the main thread then
    runs a journal query as a barrier (so every earlier checkpoint is written)
    and prints ``barrier``.  Otherwise it closes the bus and prints ``done``.
"""

from __future__ import annotations

import sys
import threading
import uuid
from typing import TYPE_CHECKING

from actors import EventBus, EventConfig, EventQuery

if TYPE_CHECKING:
    from actors import Event

_print_lock = threading.Lock()


def say(*parts: object) -> None:
    """Print one line and flush it at once (the parent may kill us right after)."""
    with _print_lock:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()


def sync_writer(path: str, threads: int) -> None:
    bus = EventBus(EventConfig(persistence_path=path, durability="sync"))

    def loop(worker: int) -> None:
        i = 0
        while True:
            i += 1
            event = bus.publish("load.sync", {"worker": worker, "i": i}).get(timeout=30)
            say("ack", event.sequence, event.id)

    workers = [threading.Thread(target=loop, args=(w,), daemon=True) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def async_writer(path: str, n: int) -> None:
    bus = EventBus(EventConfig(persistence_path=path, durability="async"))
    futures = [bus.publish("load.async", {"i": i}) for i in range(n)]
    bus.flush(timeout=60)
    say("flushed", futures[-1].get(timeout=30).sequence)
    i = n
    while True:
        i += 1
        event = bus.publish("load.async", {"i": i}).get(timeout=30)
        say("ack", event.sequence, event.id)


def write_n(path: str, n: int) -> None:
    bus = EventBus(EventConfig(persistence_path=path, durability="sync"))
    last = 0
    for start in range(0, n, 64):
        futures = [bus.publish("wal.event", {"i": i}) for i in range(start, min(start + 64, n))]
        last = max(f.get(timeout=60).sequence or 0 for f in futures)
    say("acked", last)
    threading.Event().wait()


def write_big(path: str, size: int, retention_days: float) -> None:
    config = EventConfig(persistence_path=path, durability="sync", retention_days=retention_days)
    bus = EventBus(config)
    say("acked", bus.publish("wal.big", {"blob": "z" * size}).get(timeout=60).sequence)
    threading.Event().wait()


def try_open(path: str) -> None:
    try:
        bus = EventBus(EventConfig(persistence_path=path))
    except Exception as exc:
        say("error", type(exc).__name__, str(exc).replace("\n", " "))
        return
    say("opened")
    bus.close()


def hold(path: str) -> None:
    bus = EventBus(EventConfig(persistence_path=path, durability="sync"))
    say("opened")
    for line in sys.stdin:
        command = line.strip()
        if command == "publish":
            say("ack", bus.publish("hold.event", {"from": "child"}).get(timeout=30).sequence)
        elif command == "close":
            break
    bus.close()
    say("closed")


def fill(path: str, payload_bytes: int, attempts: int) -> None:
    bus = EventBus(EventConfig(persistence_path=path, durability="sync"))
    payload = "x" * payload_bytes
    errors = 0
    for i in range(attempts):
        try:
            event = bus.publish("fill.event", {"i": i, "p": payload}).get(timeout=30)
        except Exception as exc:
            errors += 1
            say("error", i, type(exc).__name__, str(exc).replace("\n", " "))
            if errors >= 10:
                break
        else:
            say("ack", event.sequence, event.id)
    say("closing")
    bus.close(timeout=30)
    say("closed")


def durable(path: str, name: str, block_at: int, extra: int) -> None:
    bus = EventBus(EventConfig(persistence_path=path))
    run = uuid.uuid4().hex  # marks the events this run publishes
    cond = threading.Condition()
    mine: set[int] = set()  # the "n" of this run's events handled so far
    blocked = threading.Event()
    never = threading.Event()

    def handler(event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if block_at and data == {"n": block_at, "run": run}:
            say("blocking", event.sequence)
            blocked.set()
            never.wait()
        say("handled", event.sequence)
        if data.get("run") == run:
            with cond:
                mine.add(int(data["n"]))
                cond.notify_all()

    def wait_handled(n: int) -> None:
        with cond:
            if not cond.wait_for(lambda: n in mine, timeout=60):
                say("stuck", n)
                raise SystemExit(1)

    bus.subscribe("job.*", handler, durable=name, from_sequence=1)
    # n=0 marks the end of the history: once it is handled, every later
    # event arrives live, one per batch (each is published after the last).
    bus.publish("job.sync", {"n": 0, "run": run})
    wait_handled(0)
    for n in range(1, extra + 1):
        bus.publish("job.run", {"n": n, "run": run}).get(timeout=30)
        if n == block_at:
            if not blocked.wait(timeout=60):
                say("never-blocked")
                raise SystemExit(1)
            # A journal read is queued behind every checkpoint the subscriber
            # saved before it started this event, so they are written now.
            bus.query(EventQuery(limit=1))
            say("barrier")
            never.wait()
        wait_handled(n)
    bus.close(timeout=60)
    say("done")


def main(argv: list[str]) -> None:
    mode, path, *rest = argv
    if mode == "sync-writer":
        sync_writer(path, int(rest[0]))
    elif mode == "async-writer":
        async_writer(path, int(rest[0]))
    elif mode == "write-n":
        write_n(path, int(rest[0]))
    elif mode == "write-big":
        write_big(path, int(rest[0]), float(rest[1]))
    elif mode == "try-open":
        try_open(path)
    elif mode == "hold":
        hold(path)
    elif mode == "fill":
        fill(path, int(rest[0]), int(rest[1]))
    elif mode == "durable":
        durable(path, rest[0], int(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
