"""Publish-to-handler latency under paced, open-loop load (no coordinated omission).

A sender thread publishes pre-built events at offered rates from 20K to 200K
events/s (``bench._common.paced``): event ``i`` is *scheduled* at
``start + i / rate``, the sender never waits for handlers, and when it falls
behind it publishes every overdue event at once.  Each of the 10
subscriptions' handlers appends ``perf_counter() - scheduled(i)`` to its own
list, so a late sender, a queue in the router or in a mailbox, a GIL hand-off
or a GC pause all count.  Mailboxes are sized to hold the whole run, so no
event is dropped and a bus that falls behind shows it as latency.

Two kinds of publisher, each figure says which: a *cooperative* one that
yields the GIL between sends (an application doing I/O), at every rate, and a
*busy* one that never yields (a CPU-bound loop; the interpreter's 5 ms switch
interval bounds its latency), at 20K and 90K events/s.

Journal off (``EventBus``) and on (``PersistentEventBus``, ``async``
durability, on the disk of the temp dir).  Baseline: the bare pykka chain
(publisher -> stock relay actor -> stock actor, one ``tell`` each) at the
same offered rates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from actors import Event, EventBus, EventConfig, PersistentEventBus
from bench import baselines
from bench._common import (
    EVENT_BYTES,
    Figure,
    Params,
    Result,
    bench_event,
    disk_of,
    inputs_frozen,
    latency_summary,
    median_dict,
    paced,
    scratch_dir,
)

NAME = "latency"
RATES = (20_000, 50_000, 90_000, 150_000, 200_000)
BUSY_RATES = (20_000, 90_000)
PUBLISHERS = ("cooperative", "busy")
BASELINE_RATES = (50_000, 90_000)
SUBSCRIPTIONS = 10
KEEP_UP = 0.98  # a rate is kept up with when sent and handled rates reach 98% of it


def _recorders(records: list[list[float]], timing: list[float]) -> list[Callable[[Event], None]]:
    def make(rec: list[float]) -> Callable[[Event], None]:
        append = rec.append
        pc = time.perf_counter

        def handler(event: Event) -> None:
            append(pc() - timing[0] - event.data["i"] * timing[1])  # type: ignore[index]

        return handler

    return [make(rec) for rec in records]


def measure_bus(
    events: Sequence[Event], rate: float, *, journal: str | None, publisher: str = "cooperative"
) -> dict[str, Any]:
    """Return sender figures, latency percentiles (s) and drops of one paced run."""
    n = len(events)
    timing = [0.0, 1.0 / rate]
    records: list[list[float]] = [[] for _ in range(SUBSCRIPTIONS)]
    capacity = max(10_000, n + 2_000)
    bus: EventBus
    with inputs_frozen():  # before the bus: only the pre-built events are frozen
        if journal is None:
            bus = EventBus()
        else:
            bus = PersistentEventBus(EventConfig(persistence_path=journal, durability="async"))
        sender, metrics = _paced_run(bus, events, rate, records, timing, capacity, publisher)
    start = timing[0]

    # Handlers append in publish order: a list's last entry is event n-1.
    last = max((start + (n - 1) * timing[1] + rec[-1]) for rec in records if rec)
    handled_rate = n / (last - start)
    samples = [x for rec in records for x in rec]
    summary = latency_summary(samples)
    return {
        **sender,
        "handled_rate": handled_rate,
        **summary,
        "expected_deliveries": n * SUBSCRIPTIONS,
        "dropped": metrics.dropped,
        "bus_metrics_latency_p99": metrics.latency_p99,
    }


def _paced_run(
    bus: EventBus,
    events: Sequence[Event],
    rate: float,
    records: list[list[float]],
    timing: list[float],
    capacity: int,
    publisher: str,
) -> tuple[dict[str, Any], Any]:
    n = len(events)
    with bus:
        for handler in _recorders(records, timing):
            bus.subscribe("bench.*", handler, capacity=capacity)
        bus.publish_many(events[: min(1000, n)])  # warm-up
        bus.flush(timeout=60)
        for rec in records:
            rec.clear()
        publish = bus.publish

        def begin(start: float) -> None:
            timing[0] = start

        sender = paced(n, rate, lambda i: publish(events[i]), begin, publisher=publisher)
        bus.flush(timeout=600)
        return sender, bus.metrics()


def _kept_up(run: dict[str, Any], rate: float) -> bool:
    return (
        run["sent_rate"] >= KEEP_UP * rate
        and run["handled_rate"] >= KEEP_UP * rate
        and run["count"] >= run.get("expected_deliveries", run["count"])
    )


def run(params: Params) -> Result:
    """Measure every offered rate with journal off and on, ``params.runs`` times."""
    n = params.size(100_000, 2_000)
    events = [bench_event(i) for i in range(n)]
    with scratch_dir("latency") as scratch:
        disk = disk_of(scratch)
        result = Result(
            NAME,
            {
                "offered_rates": RATES,
                "events_per_rate_per_run": n,
                "latency_samples_per_rate_per_run": n * SUBSCRIPTIONS,
                "subscriptions": SUBSCRIPTIONS,
                "handler": "trivial: appends perf_counter() - scheduled send time",
                "payload": f"~{EVENT_BYTES} bytes encoded, events pre-built",
                "garbage collector": "on; the pre-built events are frozen (gc.freeze) during "
                "each measurement, bus and baseline alike, so its full collections do not "
                "walk the benchmark's own inputs",
                "sender": "open loop, one bus.publish(event) per event, bursts when behind; "
                "cooperative: sleeps until the next send when ahead, releasing the GIL "
                "(at every rate); "
                f"busy: never yields, spins when ahead (at {BUSY_RATES})",
                "mailbox capacity": "whole run (no drops: falling behind shows as latency)",
                "journal": f"off, and on: async durability in a temp dir on {disk['device']} "
                f"({disk['fstype']}, mount {disk['mount']})",
                "keep-up criterion": f"sent and handled rates >= {KEEP_UP:.0%} of offered",
                "baseline": f"pykka chain (relay + 1 stock actor) at {BASELINE_RATES} events/s",
                "runs": params.runs,
            },
        )
        for k in range(params.runs):
            r: dict[str, Any] = {}
            for publisher in PUBLISHERS:
                for rate in RATES if publisher == "cooperative" else BUSY_RATES:
                    for journal in (False, True):
                        name = f"j-{k}-{publisher}-{rate}"
                        path = os.path.join(scratch, name) if journal else None
                        key = f"{publisher}_{rate}_{'journal' if journal else 'memory'}"
                        r[key] = x = measure_bus(events, rate, journal=path, publisher=publisher)
                        print(
                            f"  {publisher:<11} {rate:>7,}/s "
                            f"journal {'on ' if journal else 'off'}: "
                            f"sent {x['sent_rate']:,.0f}/s handled {x['handled_rate']:,.0f}/s  "
                            f"p50 {x['p50'] * 1e3:.3f} ms  p99 {x['p99'] * 1e3:.3f} ms  "
                            f"p99.9 {x['p99_9'] * 1e3:.3f} ms  max {x['max'] * 1e3:.1f} ms"
                        )
            for rate in BASELINE_RATES:
                with inputs_frozen():
                    r[f"{rate}_pykka"] = baselines.pykka_paced_latency(events, rate, subscribers=1)
                x = r[f"{rate}_pykka"]
                print(
                    f"  {rate:>6,}/s pykka chain: p50 {x['p50'] * 1e3:.3f} ms "
                    f"p99 {x['p99'] * 1e3:.3f} ms"
                )
            result.runs.append(r)
    m = median_dict(result.runs)
    kept = {}
    for journal in ("memory", "journal"):
        ok = [
            rate
            for rate in RATES
            if all(_kept_up(run[f"cooperative_{rate}_{journal}"], rate) for run in result.runs)
        ]
        missed = [rate for rate in RATES if rate not in ok]
        kept[journal] = {"kept_up": ok, "first_missed": missed[0] if missed else None}
    m["keep_up"] = kept
    result.medians = m
    base = m["90000_pykka"]
    coop = "cooperative publisher"
    figures = [
        Figure(
            f"p99, 90K/s offered, 10 subs, journal on, {coop}",
            "s",
            m["cooperative_90000_journal"]["p99"],
            ("<", 0.001),
            "pykka chain p99",
            base["p99"],
        ),
        Figure(
            f"p99.9, 90K/s, 10 subs, journal on, {coop}",
            "s",
            m["cooperative_90000_journal"]["p99_9"],
            None,
            "pykka chain p99.9",
            base["p99_9"],
        ),
        Figure(
            f"p50, 90K/s offered, 10 subs, journal on, {coop}",
            "s",
            m["cooperative_90000_journal"]["p50"],
            None,
            "pykka chain p50",
            base["p50"],
        ),
        Figure(
            f"p99, 90K/s offered, 10 subs, journal off, {coop}",
            "s",
            m["cooperative_90000_memory"]["p99"],
            None,
            "pykka chain p99",
            base["p99"],
        ),
    ]
    for rate in (20_000, 50_000):
        figures.append(
            Figure(
                f"p99, {rate // 1000}K/s offered, journal on, {coop}",
                "s",
                m[f"cooperative_{rate}_journal"]["p99"],
                None,
                "pykka chain p99" if rate in BASELINE_RATES else None,
                m[f"{rate}_pykka"]["p99"] if rate in BASELINE_RATES else None,
            )
        )
    for rate in BUSY_RATES:
        for q in ("p50", "p99"):
            figures.append(
                Figure(
                    f"{q}, {rate // 1000}K/s offered, journal on, busy publisher (never yields)",
                    "s",
                    m[f"busy_{rate}_journal"][q],
                    None,
                )
            )
    for journal in ("memory", "journal"):
        first = kept[journal]["first_missed"]
        figures.append(
            Figure(
                f"highest offered rate kept up, journal {'on' if journal == 'journal' else 'off'}"
                f", {coop}",
                "events/s (offered)",
                float(max(kept[journal]["kept_up"], default=0)),
                (">=", 150_000.0) if journal == "journal" else None,
                "the seed's 90K events/s",
                90_000.0,
                note=f"falls behind at {first:,}/s" if first else "kept up at every rate",
            )
        )
    result.figures = figures
    return result
