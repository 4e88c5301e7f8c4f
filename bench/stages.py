"""Where an event's CPU goes: microseconds of process CPU per event, per stage.

Each configuration runs ``n`` pre-built events through a fresh bus with one
``publish()`` each, then ``flush()``, and reads the CPU time of the whole
process (every thread: the publisher, the router, the handler threads, the
journal) over that span.  The stages are differences between configurations,
measured in the same run:

- ``build``: ``Event(event_type, data)`` on the caller's thread (one thread);
- ``encode`` / ``decode``: ``Event.to_bytes`` / ``Event.from_bytes`` (one thread);
- ``publish + route``: a bus with no subscription and no journal (the publish
  call, the router's sequencing and routing, the records, the hand-offs);
- ``per delivery``: (bus with ``k`` no-op subscriptions minus the bus with
  none) / ``k``, for ``k`` = 1 and 10 (the mailbox offer, the handler's turn);
- ``journal``: a persistent bus (``async``) with no subscription minus the
  memory bus; of it, ``encode`` is the codec's share, the rest is RocksDB and
  the journal's own work;
- ``headline``: 10 subscriptions and the journal on, the setting of the 90K/s
  latency target; ``1 / headline`` is the rate one core of this machine could
  sustain if nothing else ran.

Only public names are used (``Event``, ``EventBus``, ``PersistentEventBus``,
``EventConfig``), so the same file measures an older package put first on
``PYTHONPATH``: that is how ``docs/performance.md`` compares before and after.
CPU time, not wall time, so a neighbour on the machine moves the figures less
(it still costs caches and the GIL's hand-offs); medians of ``--runs``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from actors import Event, EventBus, EventConfig, PersistentEventBus
from bench._common import EVENT_BYTES, Figure, Params, Result, bench_event, median_dict

NAME = "stages"
CONFIGS = ("bus0", "bus1", "bus10", "journal0", "journal10")


def _noop(_event: Event) -> None:
    pass


def _single(n: int, step: Callable[[int], object]) -> float:
    """Return CPU microseconds per call of ``step(i)`` for ``i`` in ``range(n)``."""
    gc.collect()
    start = time.process_time()
    for i in range(n):
        step(i)
    return (time.process_time() - start) / n * 1e6


def through_bus(events: Sequence[Event], subscriptions: int, journal: bool) -> dict[str, float]:
    """Return process CPU us per event (and wall events/s) for one bus configuration."""
    n = len(events)
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as path:
        bus: Any
        if journal:
            bus = PersistentEventBus(
                EventConfig(persistence_path=f"{path}/journal", durability="async")
            )
        else:
            bus = EventBus()
        try:
            for _ in range(subscriptions):
                # Room for the whole run: nothing dropped, every event handled.
                bus.subscribe("bench.*", _noop, capacity=n + 1000)
            warm = [bench_event(i) for i in range(min(1000, n))]
            for event in warm:
                bus.publish(event)
            bus.flush(timeout=120)
            publish = bus.publish
            gc.collect()
            wall = time.perf_counter()
            cpu = time.process_time()
            for event in events:
                publish(event)
            bus.flush(timeout=300)
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - wall
        finally:
            bus.close()
    return {"cpu_us": cpu / n * 1e6, "events_per_s": n / wall}


def measure(n: int) -> dict[str, Any]:
    """One run: the single-thread stages, then each bus configuration once."""
    events = [bench_event(i) for i in range(n)]
    blobs = [e.to_bytes() for e in events]
    data = events[0].data
    r: dict[str, Any] = {
        "build": _single(n, lambda i: Event(event_type="bench.tick", data=data)),
        "encode": _single(n, lambda i: events[i].to_bytes()),
        "decode": _single(n, lambda i: Event.from_bytes(blobs[i])),
    }
    for name in CONFIGS:
        subs = int(name.removeprefix("bus").removeprefix("journal"))
        r[name] = through_bus(events, subs, name.startswith("journal"))
    return r


def stages_of(m: dict[str, Any]) -> dict[str, float]:
    """Return the per-stage microseconds derived from one run's (or the medians') figures."""
    bus0 = m["bus0"]["cpu_us"]
    journal = m["journal0"]["cpu_us"] - bus0
    return {
        "build an Event (caller)": m["build"],
        "publish + sequence + route, no subscription": bus0,
        "per delivery, 1 subscription": m["bus1"]["cpu_us"] - bus0,
        "per delivery, 10 subscriptions": (m["bus10"]["cpu_us"] - bus0) / 10,
        "journal (async), all of it": journal,
        "  of which: encode (Event.to_bytes)": m["encode"],
        "  of which: RocksDB write and the journal's own work": journal - m["encode"],
        "decode (Event.from_bytes), a received event": m["decode"],
        "headline: 10 subscriptions, journal on": m["journal10"]["cpu_us"],
    }


def run(params: Params) -> Result:
    """Measure every configuration ``params.runs`` times; report the medians per stage."""
    n = params.size(100_000, 2_000)
    result = Result(
        NAME,
        {
            "events per configuration": n,
            "payload": f"~{EVENT_BYTES} bytes encoded, events pre-built, one publish() each, "
            "then flush()",
            "figure": "process CPU time (all threads) per event, microseconds",
            "configurations": "bus with 0, 1, 10 no-op subscriptions; persistent bus "
            "(async) with 0 and 10",
            "stages": "differences between configurations of the same run",
            "runs": params.runs,
        },
    )
    for _ in range(params.runs):
        r = measure(n)
        result.runs.append(r)
        print(
            "  run: " + ", ".join(f"{k} {v:.2f} us" for k, v in stages_of(r).items() if k[0] != " ")
        )
    m = median_dict(result.runs)
    result.medians = m
    stages = stages_of(m)
    headline = stages["headline: 10 subscriptions, journal on"]
    result.figures = [
        Figure(f"stage: {k.strip()}", "us", v, None, None, None) for k, v in stages.items()
    ]
    result.figures.append(
        Figure(
            "one core's ceiling, 10 subs, journal on (1 / CPU per event)",
            "events/s",
            1e6 / headline,
            note="the rate to keep up with is 150,000/s (bench latency)",
        )
    )
    return result
