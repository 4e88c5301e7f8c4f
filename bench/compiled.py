"""CPU per event on the hot path, for comparing the pure and the mypyc-compiled package.

Not one of the suite's benchmarks (``python -m bench`` does not run it): run
``python -m bench.compiled`` with the pure-Python package and with the
compiled one (``bench/mypyc_build.py``), interleaved, and compare the medians
(``docs/performance.md``, "A compiled hot path").

Each configuration publishes pre-built events one by one with ``publish``,
then ``flush``es; the figure is ``time.process_time()`` (every thread of the
process: publisher, router, subscribers, journal) per event, and the wall
rate from the first publish to the end of the flush.  ``--stages`` times, on
one thread and without the dispatcher, the pieces the compiler could speed
up: building an ``Event``, stamping a copy, encoding it for the journal, a
mailbox offer and take, and one event routed to 10 subscriptions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from actors import Event
from actors._codec.events import encode_event
from actors._core.messages import Publish, Subscribe
from actors._core.router import RouterActor
from actors._core.routes import Route
from actors._model.config import OverflowStrategy
from actors._model.event import stamped
from actors._runtime.mailbox import EventMailbox
from actors._runtime.pool import Dispatcher
from bench._common import bench_event
from bench.stages import through_bus


def compiled_modules() -> list[str]:
    """Return the names of the ``actors`` modules loaded from extension modules."""
    return sorted(
        name
        for name, module in sys.modules.items()
        if name.startswith("actors") and str(getattr(module, "__file__", "")).endswith(".so")
    )


def _best_us(fn: Callable[[int], None], n: int) -> float:
    """Return the best of 5 timings of ``fn(n)``, in µs per iteration."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn(n)
        times.append(time.perf_counter() - start)
    return min(times) / n * 1e6


def stages(n: int = 100_000) -> dict[str, float]:
    """Return µs per call of each hot-path piece, on this thread alone (see the docstring)."""
    event = bench_event(1)
    data = event.data

    def build(k: int) -> None:
        for _ in range(k):
            Event(event_type="bench.tick", data=data)

    def stamp(k: int) -> None:
        for i in range(k):
            stamped(event, i, "origin")

    def encode(k: int) -> None:
        for _ in range(k):
            encode_event(event)

    lane = EventMailbox(10 * n, OverflowStrategy.DROP_OLDEST)
    item = (event, 0.0)

    def offer(k: int) -> None:
        for _ in range(k):
            lane.offer(item)
        lane.take_events(k)

    # A router that is never started: its messages are handled on this thread.
    dispatcher = Dispatcher(1, name="bench-compiled")
    router = RouterActor(dispatcher=dispatcher, capacity=10 * n, origin="origin")
    lanes = [EventMailbox(10 * n, OverflowStrategy.DROP_OLDEST) for _ in range(10)]
    handle = router._on_message  # noqa: SLF001 - the router's turn without its thread
    for k, mailbox in enumerate(lanes):
        handle(Subscribe(Route(f"s{k}", "bench.*", mailbox, None, strict=False)))

    def route(k: int) -> None:
        for _ in range(k):
            handle(Publish(event, None, 0.0, False, False, None))
        router._on_turn_end()  # noqa: SLF001 - hands the records on, as at a turn's end
        for mailbox in lanes:
            mailbox.take_events(k)

    try:
        return {
            "build Event": _best_us(build, n),
            "stamp (copy)": _best_us(stamp, n),
            "encode for the journal": _best_us(encode, n),
            "mailbox offer + take": _best_us(offer, n),
            "route to 10 subscriptions": _best_us(route, n // 5),
        }
    finally:
        dispatcher.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Measure ``--runs`` times each configuration; print the runs and medians as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.compiled")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stages", action="store_true", help="time the pieces on one thread")
    args = parser.parse_args(argv)
    if args.stages:
        print(json.dumps({"compiled": len(compiled_modules()), "us_per_call": stages()}))
        return
    events = [bench_event(i) for i in range(args.events)]
    configs = {"10 subs, journal async": (10, True), "1 sub, no journal": (1, False)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for _ in range(args.runs):
        for name, (subs, journal) in configs.items():
            runs[name].append(through_bus(events, subs, journal))
    result: dict[str, Any] = {
        "compiled": compiled_modules(),
        "load_average": os.getloadavg(),
        "events": args.events,
    }
    for name, figures in runs.items():
        result[name] = {
            "runs": figures,
            "median": {k: statistics.median(f[k] for f in figures) for k in figures[0]},
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
