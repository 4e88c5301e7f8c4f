"""The baselines every figure is compared with, measured in the same run.

- a bare pykka chain: a publisher thread ``tell``s a stock ``ThreadingActor``
  (the "router"), which ``tell``s one stock actor per subscriber, one message
  per event (stock ``queue.Queue`` mailboxes, a thread per actor);
- blinker's synchronous ``Signal.send`` to 1 or 10 receivers;
- raw pyzmq PUSH/PULL between two processes over ``tcp://127.0.0.1``: one
  300-byte frame per event, and 100 events per frame;
- raw rocksdict ``WriteBatch`` of 1000 puts (WAL on), unsynced and synced,
  plus single synced puts from 1 and from 8 threads.

Each function blocks until its measurement is over and returns plain numbers.
"""

from __future__ import annotations

import multiprocessing as mp
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from bench._common import EVENT_BYTES, latency_summary, paced, receive, run_for, scratch_dir

__all__ = [
    "blinker_throughput",
    "pykka_paced_latency",
    "pykka_throughput",
    "rocksdict_batches",
    "rocksdict_sync_puts",
    "zmq_paced_latency",
    "zmq_protobuf_throughput",
    "zmq_throughput",
]


# -- pykka ----------------------------------------------------------------------------------


class _Sink(pykka.ThreadingActor):
    """A stock actor that calls ``fn`` for every message."""

    def __init__(self, fn: Callable[[Any], None]) -> None:
        super().__init__()
        self.fn = fn

    def on_receive(self, message: Any) -> None:
        self.fn(message)


class _Relay(pykka.ThreadingActor):
    """A stock actor that forwards every message to its targets, one ``tell`` each."""

    def __init__(self, targets: Sequence[pykka.ActorRef[Any]]) -> None:
        super().__init__()
        self.targets = list(targets)

    def on_receive(self, message: Any) -> None:
        for target in self.targets:
            target.tell(message)


def _chain(fns: Sequence[Callable[[Any], None]]) -> tuple[pykka.ActorRef[Any], list[Any]]:
    sinks = [_Sink.start(fn) for fn in fns]
    relay = _Relay.start(sinks)
    return relay, sinks


def _stop(refs: Sequence[pykka.ActorRef[Any]]) -> None:
    for ref in refs:
        ref.stop(block=True, timeout=30)


def pykka_throughput(events: Sequence[Any], subscribers: int = 1) -> float:
    """Return events/s through publisher -> relay actor -> ``subscribers`` sink actors."""
    n = len(events)
    dones = [threading.Event() for _ in range(subscribers)]

    def make(done: threading.Event) -> Callable[[Any], None]:
        count = [0]

        def fn(_message: Any) -> None:
            count[0] += 1
            if count[0] == n:
                done.set()

        return fn

    relay, sinks = _chain([make(d) for d in dones])
    try:
        tell = relay.tell
        start = time.perf_counter()
        for event in events:
            tell(event)
        for done in dones:
            if not done.wait(120):
                raise TimeoutError("pykka baseline did not finish")
        return n / (time.perf_counter() - start)
    finally:
        _stop([relay, *sinks])


def pykka_paced_latency(
    events: Sequence[Any], rate: float, subscribers: int = 10
) -> dict[str, float]:
    """Return sender figures and latency percentiles (s) of the pykka chain under paced load."""
    n = len(events)
    timing = [0.0, 1.0 / rate]
    records: list[list[float]] = [[] for _ in range(subscribers)]
    dones = [threading.Event() for _ in range(subscribers)]
    finished = [0.0] * subscribers

    def make(k: int) -> Callable[[Any], None]:
        rec = records[k]
        pc = time.perf_counter

        def fn(message: Any) -> None:
            now = pc()
            rec.append(now - timing[0] - message.data["i"] * timing[1])
            if len(rec) == n:
                finished[k] = now
                dones[k].set()

        return fn

    relay, sinks = _chain([make(k) for k in range(subscribers)])
    try:
        tell = relay.tell

        def begin(start: float) -> None:
            timing[0] = start

        sender = paced(n, rate, lambda i: tell(events[i]), begin)
        for done in dones:
            if not done.wait(300):
                raise TimeoutError("pykka latency baseline did not finish")
    finally:
        _stop([relay, *sinks])
    handled = max(finished) - timing[0]
    samples = [x for rec in records for x in rec]
    return {**sender, "handled_rate": n / handled, **latency_summary(samples)}


# -- blinker ----------------------------------------------------------------------------------


def blinker_throughput(events: Sequence[Any], receivers: int = 1) -> float:
    """Return events/s of blinker's synchronous ``send`` to ``receivers`` trivial receivers."""
    import blinker  # noqa: PLC0415 - a dev dependency, imported where used

    signal = blinker.Signal()
    counts = [0] * receivers
    fns = []
    for k in range(receivers):

        def receiver(_sender: Any, _k: int = k, **_kw: Any) -> None:
            counts[_k] += 1

        fns.append(receiver)
        signal.connect(receiver, weak=False)
    send = signal.send
    start = time.perf_counter()
    for event in events:
        send(event)
    elapsed = time.perf_counter() - start
    assert counts == [len(events)] * receivers
    return len(events) / elapsed


# -- pyzmq --------------------------------------------------------------------------------------

_FRAME_HEAD = struct.Struct(">Q")


def _zmq_receiver(conn: Any) -> None:
    """Child process: PULL on a random loopback port; count, time and answer per round."""
    import zmq  # noqa: PLC0415

    from actors import Event  # noqa: PLC0415 - before the timed part: imports take time

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    conn.send(port)
    pc = time.perf_counter
    while True:
        command = conn.recv()
        if command is None:
            break
        kind, n, per_frame, interval = command
        if kind == "throughput":
            got = 0
            while got < n:
                pull.recv(copy=False)
                got += per_frame
            conn.send(pc())
        elif kind == "protobuf":
            decode = Event.from_bytes
            got = 0
            while got < n:
                for part in pull.recv_multipart():
                    decode(part)
                    got += 1
            conn.send(pc())
        else:  # paced latency: the parent sends its start time first
            start = conn.recv()
            lat = []
            for _ in range(n):
                frame = pull.recv()
                now = pc()
                (i,) = _FRAME_HEAD.unpack_from(frame)
                lat.append(now - start - i * interval)
            conn.send(latency_summary(lat))
    pull.close(0)
    ctx.term()


class _ZmqPair:
    """A PUSH socket in this process connected to a PULL socket in a child process."""

    def __init__(self) -> None:
        import zmq  # noqa: PLC0415

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_zmq_receiver, args=(child,), daemon=True)
        self.proc.start()
        port = receive(self.conn, self.proc, 60, "pyzmq receiver")
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(f"tcp://127.0.0.1:{port}")
        # Warm up the connection so the first timed frame does not pay for it.
        self.conn.send(("throughput", 1, 1, 0.0))
        self.push.send(b"x")
        receive(self.conn, self.proc, 60, "pyzmq receiver")

    def close(self) -> None:
        self.conn.send(None)
        self.push.close(0)
        self.ctx.term()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


def zmq_throughput(n: int, per_frame: int) -> float:
    """Return events/s over raw PUSH/PULL with ``per_frame`` 300-byte events per frame."""
    pair = _ZmqPair()
    try:
        frame = b"x" * (EVENT_BYTES * per_frame)
        frames = max(1, n // per_frame)
        pair.conn.send(("throughput", frames * per_frame, per_frame, 0.0))
        send = pair.push.send
        start = time.perf_counter()
        for _ in range(frames):
            send(frame)
        end = receive(pair.conn, pair.proc, 600, "pyzmq receiver")
        return frames * per_frame / (end - start)
    finally:
        pair.close()


def zmq_protobuf_throughput(events: Sequence[Any], per_frame: int = 100) -> float:
    """Return events/s over raw PUSH/PULL carrying protobuf-encoded events.

    The sender encodes each event (``Event.to_bytes``) and sends ``per_frame``
    of them as one multipart message; the receiver decodes every part
    (``Event.from_bytes``).  The floor for any Python bus that encodes once
    and decodes once per event.
    """
    pair = _ZmqPair()
    try:
        n = len(events) - len(events) % per_frame
        pair.conn.send(("protobuf", n, per_frame, 0.0))
        send = pair.push.send_multipart
        start = time.perf_counter()
        for first in range(0, n, per_frame):
            send([e.to_bytes() for e in events[first : first + per_frame]])
        end = receive(pair.conn, pair.proc, 600, "pyzmq receiver")
        return n / (end - start)
    finally:
        pair.close()


def zmq_paced_latency(n: int, rate: float) -> dict[str, float]:
    """Return latency percentiles (s) of raw PUSH/PULL, one 300-byte frame per event, paced."""
    pair = _ZmqPair()
    try:
        pad = b"x" * (EVENT_BYTES - _FRAME_HEAD.size)
        pair.conn.send(("latency", n, 1, 1.0 / rate))
        send = pair.push.send
        sender = paced(n, rate, lambda i: send(_FRAME_HEAD.pack(i) + pad), pair.conn.send)
        summary: dict[str, float] = receive(pair.conn, pair.proc, 600, "pyzmq receiver")
        return {**sender, **summary}
    finally:
        pair.close()


# -- rocksdict ----------------------------------------------------------------------------------


def _open(path: str) -> Any:
    import rocksdict  # noqa: PLC0415

    return rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))


def rocksdict_batches(n: int, *, batch: int = 1000, sync: bool = False) -> float:
    """Return puts/s writing ``n`` 300-byte values in WriteBatches of ``batch`` (WAL on)."""
    import rocksdict  # noqa: PLC0415

    value = b"x" * EVENT_BYTES
    keys = [struct.pack(">Q", i) for i in range(n)]
    with scratch_dir("rocks") as path:
        db = _open(path)
        opts = rocksdict.WriteOptions()
        opts.sync = sync
        try:
            start = time.perf_counter()
            for first in range(0, n, batch):
                wb = rocksdict.WriteBatch(raw_mode=True)
                for key in keys[first : first + batch]:
                    wb.put(key, value)
                db.write(wb, opts)
            elapsed = time.perf_counter() - start
        finally:
            db.close()
    return n / elapsed


def encode_and_batch(events: Sequence[Any], *, batch: int = 1000) -> float:
    """Return events/s encoding ``events`` (the bus's codec) into WriteBatches of ``batch``.

    The floor of a Python journal on one thread: each event encoded once,
    keyed by its position, written with the WAL on, unsynced; nothing else.
    """
    import rocksdict  # noqa: PLC0415

    from actors import Event  # noqa: PLC0415 - keep the module importable without the bus

    encode = Event.to_bytes
    n = len(events)
    with scratch_dir("rocks-encode") as path:
        db = _open(path)
        opts = rocksdict.WriteOptions()
        try:
            start = time.perf_counter()
            for first in range(0, n, batch):
                wb = rocksdict.WriteBatch(raw_mode=True)
                for i in range(first, min(first + batch, n)):
                    wb.put(struct.pack(">Q", i), encode(events[i]))
                db.write(wb, opts)
            elapsed = time.perf_counter() - start
        finally:
            db.close()
    return n / elapsed


def rocksdict_sync_puts(threads: int, seconds: float) -> float:
    """Return puts/s of ``threads`` threads each doing synced single puts for ``seconds``."""
    import rocksdict  # noqa: PLC0415

    value = b"x" * EVENT_BYTES
    with scratch_dir("rocks-sync") as path:
        db = _open(path)
        opts = rocksdict.WriteOptions()
        opts.sync = True

        def make_step(k: int) -> Callable[[int], None]:
            def put(i: int) -> None:
                wb = rocksdict.WriteBatch(raw_mode=True)
                wb.put(struct.pack(">IQ", k, i), value)
                db.write(wb, opts)

            return put

        rate = run_for(seconds, threads, make_step)
        db.close()
    return rate
