"""What waking a thread costs on this machine, on the same CPU and across CPUs.

Two threads of one process pass one item back and forth through a pair of
``queue.SimpleQueue`` (each ``get`` blocks, each ``put`` wakes the other):
``n`` round trips, two hand-offs each.  Measured with both threads placed on
one CPU, then on two (``os.sched_setaffinity`` from each thread, Linux),
wall time and process CPU time per hand-off.

Every hop of the bus between threads is such a hand-off when the receiving
thread is idle (publisher -> router -> handler, router -> journal, bridge ->
router), so this is the floor under the latency of one event and of a
request/reply round trip (``docs/performance.md``, "One CPU per bus
process").  Off Linux (no ``sched_setaffinity``) or on one CPU the figures
read "skipped".
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

from bench._common import Figure, Params, Result, median_dict

NAME = "handoff"
WAIT = 60.0  # seconds any one step may take before the benchmark gives up


def ping_pong(n: int, cpus: tuple[int, int]) -> dict[str, float]:
    """Return wall and CPU microseconds per hand-off, the two threads on ``cpus``."""
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    ready = threading.Barrier(2, timeout=WAIT)
    out: dict[str, float] = {}
    failed: list[BaseException] = []

    def echo() -> None:
        try:
            os.sched_setaffinity(0, {cpus[1]})
            ready.wait()
            while (item := there.get(timeout=WAIT)) is not None:
                back.put(item)
        except BaseException as exc:  # reported by the caller; never a hang
            failed.append(exc)
            ready.abort()
            back.put(None)

    def ask() -> None:
        try:
            os.sched_setaffinity(0, {cpus[0]})
            ready.wait()
            for i in range(200):  # warm up
                there.put(i)
                back.get(timeout=WAIT)
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                there.put(i)
                if back.get(timeout=WAIT) is None:
                    return  # the echo failed (``failed`` says why)
            out["wall_us"] = (time.perf_counter() - wall) / (2 * n) * 1e6
            out["cpu_us"] = (time.process_time() - cpu) / (2 * n) * 1e6
        except BaseException as exc:
            failed.append(exc)
            ready.abort()
        finally:
            there.put(None)

    threads = [threading.Thread(target=f, name=f"handoff-{f.__name__}") for f in (echo, ask)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed or "wall_us" not in out:
        raise RuntimeError(f"the hand-off did not complete: {failed!r}")
    return out


def run(params: Params) -> Result:
    """Measure the hand-off on one CPU and across two, ``params.runs`` times."""
    n = params.size(20_000, 500)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    result = Result(
        NAME,
        {
            "round trips": f"{n} (two hand-offs each) through two queue.SimpleQueue",
            "placement": "both threads on CPU "
            + (f"{cpus[0]}, then on CPUs {cpus[0]} and {cpus[1]}" if len(cpus) > 1 else "-"),
            "runs": params.runs,
        },
    )
    if len(cpus) < 2:
        result.skipped = "needs os.sched_setaffinity (Linux) and two CPUs"
        result.figures = [Figure("hand-off between threads", "us", None, note=result.skipped)]
        return result
    for _ in range(params.runs):
        same = ping_pong(n, (cpus[0], cpus[0]))
        across = ping_pong(n, (cpus[0], cpus[1]))
        r: dict[str, Any] = {
            "same_wall_us": same["wall_us"],
            "same_cpu_us": same["cpu_us"],
            "across_wall_us": across["wall_us"],
            "across_cpu_us": across["cpu_us"],
        }
        result.runs.append(r)
        print(
            f"  run: same CPU {same['wall_us']:.1f} us ({same['cpu_us']:.1f} us CPU), "
            f"across CPUs {across['wall_us']:.1f} us ({across['cpu_us']:.1f} us CPU) per hand-off"
        )
    m = median_dict(result.runs)
    result.medians = m
    result.figures = [
        Figure("hand-off, same CPU, wall", "us", m["same_wall_us"]),
        Figure("hand-off, same CPU, CPU time", "us", m["same_cpu_us"]),
        Figure(
            "hand-off, across CPUs, wall",
            "us",
            m["across_wall_us"],
            baseline_name="same CPU",
            baseline=m["same_wall_us"],
        ),
        Figure(
            "hand-off, across CPUs, CPU time",
            "us",
            m["across_cpu_us"],
            baseline_name="same CPU",
            baseline=m["same_cpu_us"],
        ),
    ]
    return result
