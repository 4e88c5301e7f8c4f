"""Blocking handlers: another subscription's rate with 16 handlers stuck in ``time.sleep(30)``.

Two configurations, each on a default ``EventBus()`` (2 handler threads):

- *unblocked*: one counting subscription (``bench.*``) receives N events;
- *blocked*: the same, plus 16 subscriptions to ``llm.call`` whose handler
  calls ``time.sleep(30)`` (an LLM call that takes its time).  One
  ``llm.call`` event is published first and the run starts only once all 16
  handlers are inside their sleep (and the bus reports them blocked).

The publisher publishes pre-built events one by one; the rate is N divided
by the time from the first publish to the counting handler's N-th event.
The figure is the blocked rate as a ratio to the unblocked one, median of
the per-run ratios (the issue's bar: at least 0.5); every ``publish`` that
raises is counted (the bar: none).  Each blocked bus is closed with a 1 s
timeout, abandoning its sleeping handlers on their daemon threads.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Sequence
from typing import Any

from actors import Event, EventBus
from bench._common import EVENT_BYTES, Counters, Figure, Params, Result, bench_event, median_dict

NAME = "blocking"
BLOCKED = 16
SLEEP = 30.0


def measure(events: Sequence[Event], blocked: int) -> dict[str, float]:
    """Return the counting subscription's events/s with ``blocked`` sleeping handlers."""
    n = len(events)
    counters = Counters(1)
    entered = threading.Semaphore(0)

    def sleeper(_event: Event) -> None:
        entered.release()
        time.sleep(SLEEP)

    bus = EventBus()
    try:
        bus.subscribe("bench.*", counters.handlers[0], capacity=n + 1000)
        for _ in range(blocked):
            bus.subscribe("llm.call", sleeper)
        t0 = time.perf_counter()
        if blocked:
            bus.publish("llm.call")
            for _ in range(blocked):
                if not entered.acquire(timeout=60):
                    raise TimeoutError("a sleeping handler never started")
            while bus.metrics().blocked_handlers < blocked:
                time.sleep(0.01)  # the watchdog reports them within 1.5 x 0.1 s
        all_blocked = time.perf_counter() - t0
        warm = min(1000, n)
        counters.warm_up(bus, events[:warm], n)
        publish = bus.publish
        errors = 0
        gc.collect()
        start = time.perf_counter()
        for event in events:
            try:
                publish(event)
            except Exception:
                errors += 1
        counters.wait(300)
        elapsed = counters.finished[0] - start
        threads = bus.metrics().handler_threads
    finally:
        bus.close(timeout=1.0)
    return {
        "events_per_s": n / elapsed,
        "publish_errors": errors,
        "handler_threads": threads,
        "seconds_until_all_blocked": all_blocked,
    }


def run(params: Params) -> Result:
    """Measure both configurations, interleaved, ``params.runs`` times."""
    n = params.size(100_000, 2_000)
    blocked = BLOCKED if not params.quick else 4
    events = [bench_event(i, f"bench.t{i % 10}") for i in range(n)]
    result = Result(
        NAME,
        {
            "bus": "EventBus() defaults (2 handler threads, blocking_threshold 0.1 s, "
            "max_threads 64)",
            "blocked handlers": f"{blocked} subscriptions to llm.call, each in "
            f"time.sleep({SLEEP:g}) before the run starts",
            "measured subscription": "bench.*, trivial counting handler, capacity = the "
            "whole run (nothing dropped)",
            "events per run": n,
            "payload": f"~{EVENT_BYTES} bytes encoded, events pre-built, one publish() each",
            "journal": "none",
            "baseline": "the same bus without the blocked handlers, same run",
            "runs": params.runs,
        },
    )
    for k in range(params.runs):
        r: dict[str, Any] = {}
        order = [0, blocked] if k % 2 == 0 else [blocked, 0]
        for b in order:
            r["blocked" if b else "unblocked"] = measure(events, b)
        r["ratio"] = r["blocked"]["events_per_s"] / r["unblocked"]["events_per_s"]
        result.runs.append(r)
        print(
            f"  run: unblocked {r['unblocked']['events_per_s']:,.0f} ev/s, "
            f"{blocked} blocked {r['blocked']['events_per_s']:,.0f} ev/s "
            f"(ratio {r['ratio']:.3f}; {r['blocked']['handler_threads']} handler threads; "
            f"all blocked after {r['blocked']['seconds_until_all_blocked']:.2f} s; "
            f"publish errors {r['blocked']['publish_errors']})"
        )
    m = median_dict(result.runs)
    result.medians = m
    errors = sum(run["blocked"]["publish_errors"] for run in result.runs)
    result.figures = [
        Figure(
            f"rate with {blocked} handlers blocked in sleep",
            "events/s",
            m["blocked"]["events_per_s"],
            (">=", 0.5),
            "no blocked handler",
            m["unblocked"]["events_per_s"],
            note=f"median of per-run ratios {m['ratio']:.3f}; publish errors {errors}",
            target_on_ratio=True,
        )
    ]
    return result
