"""Routing cost: throughput with 10, 1,000 and 10,000 non-matching patterns.

Each bus has one matching subscription (``bench.*``, a counting handler) and
P non-matching ones, a third each of literal (``svcN.tick``), one-segment
wildcard (``svcN.*``) and multi-segment wildcard (``other.N.**``) patterns.
The publisher publishes pre-built events one by one, cycling over 100 event
types ``bench.t0`` .. ``bench.t99``.  The figure is the throughput with P
patterns as a ratio to the throughput with 10 in the same run; the router
resolves each type through its trie once and then from its cache, so the
ratio should stay near 1.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

from actors import Event, EventBus
from bench._common import EVENT_BYTES, Counters, Figure, Params, Result, bench_event, median_dict

NAME = "routing"
PATTERN_COUNTS = (10, 1_000, 10_000)
TYPES = 100


def non_matching(k: int) -> str:
    """Return the ``k``-th non-matching pattern (literal, ``*`` or ``**``)."""
    return (f"svc{k}.tick", f"svc{k}.*", f"other.{k}.**")[k % 3]


def measure(events: Sequence[Event], patterns: int) -> dict[str, float]:
    """Return events/s through a bus with ``patterns`` non-matching subscriptions plus 1."""
    n = len(events)
    counters = Counters(1)
    with EventBus() as bus:
        t0 = time.perf_counter()
        for k in range(patterns):
            bus.subscribe(non_matching(k), _noop)
        # Room for the whole run: nothing dropped, every event counted.
        bus.subscribe("bench.*", counters.handlers[0], capacity=n + 1000)
        bus.flush(timeout=120)
        setup = time.perf_counter() - t0
        warm = min(1000, n)
        counters.warm_up(bus, events[:warm], n)
        publish = bus.publish
        gc.collect()  # the previous bus's 10,000 actors are garbage now
        start = time.perf_counter()
        for event in events:
            publish(event)
        counters.wait(300)
        elapsed = counters.finished[0] - start
    return {"events_per_s": n / elapsed, "subscribe_seconds": setup}


def _noop(_event: Event) -> None:
    pass


def run(params: Params) -> Result:
    """Measure each pattern count, interleaved, ``params.runs`` times."""
    n = params.size(100_000, 2_000)
    counts = PATTERN_COUNTS if not params.quick else (10, 100, 300)
    events = [bench_event(i, f"bench.t{i % TYPES}") for i in range(n)]
    result = Result(
        NAME,
        {
            "non-matching patterns": counts,
            "pattern kinds": "a third each: svcN.tick, svcN.*, other.N.**",
            "matching subscriptions": "1 (bench.*), trivial counting handler, capacity = "
            "the whole run (nothing dropped)",
            "events per run": n,
            "event types": f"{TYPES} (bench.t0 .. bench.t{TYPES - 1}), cycled",
            "payload": f"~{EVENT_BYTES} bytes encoded, events pre-built, one publish() each",
            "journal": "none",
            "baseline": f"the same bus with {counts[0]} non-matching patterns, same run",
            "runs": params.runs,
        },
    )
    for k in range(params.runs):
        r: dict[str, Any] = {}
        # Rotate the order each run so no configuration always goes first.
        for p in counts[k % len(counts) :] + counts[: k % len(counts)]:
            r[str(p)] = measure(events, p)
        result.runs.append(r)
        print(
            "  run: "
            + ", ".join(
                f"{p:,} patterns {r[str(p)]['events_per_s']:,.0f} ev/s "
                f"(subscribed in {r[str(p)]['subscribe_seconds']:.1f} s)"
                for p in counts
            )
        )
    m = median_dict(result.runs)
    # The ratio of each run, then the median: both measured back to back.
    for p in counts[1:]:
        ratios = [
            run[str(p)]["events_per_s"] / run[str(counts[0])]["events_per_s"] for run in result.runs
        ]
        m[f"ratio_{p}"] = sorted(ratios)[len(ratios) // 2]
    result.medians = m
    base = m[str(counts[0])]["events_per_s"]
    result.figures = [
        Figure(
            f"routing, {p:,} non-matching patterns",
            "events/s",
            m[str(p)]["events_per_s"],
            (">=", 0.9),
            f"{counts[0]} patterns",
            base,
            note=f"median of per-run ratios {m[f'ratio_{p}']:.3f}",
            target_on_ratio=True,
        )
        for p in counts[1:]
    ]
    return result
