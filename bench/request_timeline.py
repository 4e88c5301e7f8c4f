"""Where a cross-process request's round trip goes: a timeline of its stages.

A diagnostic, not a benchmark (``docs/performance.md``, "Where a
cross-process request's time goes"): node ``req-a`` here asks, node ``req-b``
in a spawned child answers, over ``tcp://127.0.0.1``, ``--requests`` blocking
requests with ``--gap`` seconds between them.  Both processes wrap a few
internal functions (an actor's turn, a scheduling, the bridge's reads, sends
and decoding, the injection of received events) to note when each began, on
the clock both processes share.  For each request, the stages noted within
its round trip are listed in order; the most common sequence is printed with
the median offset of each stage from the start of the request, then the
median CPU time (``time.thread_time``) the subscriber's bridge spent decoding
one request's frame.

    .venv/bin/python -m bench.request_timeline [--requests 400] [--gap 0.003]

The wrappers cost a few microseconds each: read the offsets as where the
time goes, not as the round trip's latency (``python -m bench requests``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

RECORD: list[tuple[str, float]] = []
DECODE_CPU: list[float] = []


def _wrap(owner: Any, name: str, label: str | None = None) -> None:
    original = getattr(owner, name)
    pc = time.perf_counter

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        RECORD.append((label or name, pc()))
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _instrument() -> None:
    """Note the start of each stage of interest (this process only)."""
    from actors._cluster import stream_io  # noqa: PLC0415 - a diagnostic of the internals
    from actors._core import publishing  # noqa: PLC0415
    from actors._runtime import dispatcher, pool  # noqa: PLC0415

    pc = time.perf_counter
    turn = dispatcher.DispatchedActor.actor_turn

    def actor_turn(self: Any, throughput: int) -> None:
        RECORD.append((f"{type(self).__name__} turn", pc()))
        turn(self, throughput)

    dispatcher.DispatchedActor.actor_turn = actor_turn  # type: ignore[method-assign]
    schedule = pool.Dispatcher.schedule

    def scheduled(self: Any, actor: Any) -> None:
        RECORD.append((f"{type(actor).__name__} scheduled", pc()))
        schedule(self, actor)

    pool.Dispatcher.schedule = scheduled  # type: ignore[method-assign]
    for name in ("_drain_mailbox", "_on_sub", "_send_items"):
        _wrap(stream_io.StreamIO, name, f"bridge {name.lstrip('_')}")
    _wrap(publishing.Publisher, "inject", "bridge injects")
    decode = stream_io.decode_stream

    def decode_stream(*args: Any) -> Any:
        RECORD.append(("bridge decodes", pc()))
        cpu = time.thread_time()
        frame = decode(*args)
        DECODE_CPU.append(time.thread_time() - cpu)
        return frame

    stream_io.decode_stream = decode_stream


def _answer(conn: Any, endpoint: str) -> None:
    _instrument()
    from actors import EventBus, NodeConfig  # noqa: PLC0415

    node = NodeConfig(name="req-b", listen="tcp://127.0.0.1:*", peers=(endpoint,))
    with EventBus(node=node) as bus:
        bus.respond("bench.req", lambda event: event.data)
        conn.send("ready" if bus.wait_for_peers(["req-a"], 60) else "not synced")
        conn.recv()
        conn.send((RECORD[-50_000:], DECODE_CPU[-5_000:]))


def main() -> None:
    """Print the most common timeline of a cross-process request round trip."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--gap", type=float, default=0.003, help="seconds between requests")
    args = parser.parse_args()
    _instrument()
    from actors import EventBus, NodeConfig  # noqa: PLC0415

    with EventBus(node=NodeConfig(name="req-a", listen="tcp://127.0.0.1:*")) as bus:
        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        child = ctx.Process(target=_answer, args=(child_conn, bus.endpoints["request"]))
        child.start()
        if conn.recv() != "ready":
            raise SystemExit("node req-b did not start")
        for i in range(300):  # warm up
            bus.request("bench.req", i, timeout=30)
        RECORD.clear()
        windows = []
        for i in range(args.requests):
            start = time.perf_counter()
            bus.request("bench.req", i, timeout=30)
            windows.append((start, time.perf_counter()))
            if args.gap:
                time.sleep(args.gap)
        conn.send(None)
        theirs, decode_cpu = conn.recv()
        child.join(30)
    stages = sorted([(t, f"a: {n}") for n, t in RECORD] + [(t, f"b: {n}") for n, t in theirs])
    sequences: Counter[tuple[str, ...]] = Counter()
    offsets: dict[tuple[int, str], list[float]] = defaultdict(list)
    for start, end in windows:
        seen = [(t - start, n) for t, n in stages if start <= t <= end]
        sequences[tuple(n for _, n in seen)] += 1
        for k, (offset, name) in enumerate(seen):
            offsets[(k, name)].append(offset)
    trips = sorted(end - start for start, end in windows)
    p50, p90 = statistics.median(trips), trips[int(len(trips) * 0.9)]
    print(
        f"{len(windows)} requests, {args.gap * 1000:g} ms apart: round trip "
        f"p50 {p50 * 1e6:.0f} us, p90 {p90 * 1e6:.0f} us"
    )
    common, count = sequences.most_common(1)[0]
    print(f"most common sequence of stages ({count} of {len(windows)} requests):")
    for k, name in enumerate(common):
        print(f"  {name:<34} {statistics.median(offsets[(k, name)]) * 1e6:7.0f} us")
    decoding = statistics.median(decode_cpu) * 1e6
    print(f"b's bridge decoding one request's frame: {decoding:.1f} us CPU")


if __name__ == "__main__":
    main()
