"""In-process throughput: 1 and 10 subscriptions, no journal, trivial handlers.

The publisher thread publishes pre-built events (``bus.publish(event)`` one by
one, or ``bus.publish_many`` in batches) as fast as it can; each subscription
counts its own deliveries and, at the last expected one, notes the time and
sets a ``threading.Event``.  Throughput is events (or deliveries) divided by
the time from the first publish to the last handler call.  Building the
``Event`` objects is excluded (measured on its own as ``shorthand``: the same
loop with ``bus.publish(type, data)``, which builds each event).  The
1-subscription figure and its pykka baseline are measured again with a CPU
burner (a ``while 1: pass`` process) running alongside, as SPEC section 11
asks; the targets are the SPEC's ratios (1.5x the pykka chain, 1.0x blinker).
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from actors import Event, EventBus
from bench import baselines
from bench._common import (
    EVENT_BYTES,
    EVENT_TYPE,
    Counters,
    Figure,
    Params,
    Result,
    bench_event,
    median_dict,
)

NAME = "throughput"


def bus_throughput(
    events: Sequence[Event], subscriptions: int, mode: str, batch: int = 1000
) -> dict[str, float]:
    """Return events/s and deliveries/s of one fresh bus (``mode``: publish, many, shorthand)."""
    n = len(events)
    warm = min(1000, n)
    counters = Counters(subscriptions)
    with EventBus() as bus:
        for h in counters.handlers:
            # Room for the whole run: a subscriber that falls behind the
            # router queues instead of dropping (DROP_OLDEST), so every event
            # is counted; the clock stops at the last handler call anyway.
            bus.subscribe("bench.*", h, capacity=n + warm)
        # Warm up (code paths, route cache) before the timed part.
        counters.warm_up(bus, events[:warm], n)
        publish = bus.publish
        gc.collect()  # garbage of earlier measurements is not this one's cost
        start = time.perf_counter()
        if mode == "publish":
            for event in events:
                publish(event)
        elif mode == "many":
            many = bus.publish_many
            for first in range(0, n, batch):
                many(events[first : first + batch])
        else:
            data = events[0].data
            for _ in range(n):
                publish(EVENT_TYPE, data)
        sent = time.perf_counter()
        counters.wait(300)
        elapsed = max(counters.finished) - start
    return {
        "events_per_s": n / elapsed,
        "deliveries_per_s": n * subscriptions / elapsed,
        "publish_calls_per_s": n / (sent - start),
    }


@contextlib.contextmanager
def cpu_burner() -> Iterator[None]:
    """Run a ``while 1: pass`` process (one core's worth of load) for the block."""
    burner = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def run(params: Params) -> Result:
    """Measure, ``params.runs`` times, the bus and its baselines; return the medians."""
    n1 = params.size(200_000, 2_000)
    n10 = params.size(100_000, 1_000)
    n_pykka = params.size(100_000, 1_000)
    n_pykka10 = params.size(20_000, 500)
    batch = params.size(1000, 100)
    events = [bench_event(i) for i in range(max(n1, n10))]
    result = Result(
        NAME,
        {
            "events_per_run": {"1 subscription": n1, "10 subscriptions": n10},
            "payload": f"data={{'i': int, 'pad': str}}, ~{EVENT_BYTES} bytes encoded",
            "handler": "trivial (counts, sets a threading.Event at the last event)",
            "journal": "none",
            "publish_many batch": batch,
            "bus": "EventConfig() defaults (2 dispatcher threads); subscription capacity = the "
            "whole run, so nothing is dropped",
            "events": "pre-built (construction excluded) except 'shorthand'",
            "baselines": {
                "pykka_chain_1": f"publisher -> stock relay actor -> 1 stock actor, "
                f"{n_pykka} events",
                "pykka_fanout_10": f"publisher -> stock relay actor -> 10 stock actors, "
                f"{n_pykka10} events",
                "blinker_1 / blinker_10": "Signal.send, 1 / 10 receivers",
            },
            "runs": params.runs,
        },
    )
    for _ in range(params.runs):
        r: dict[str, Any] = {
            "bus_1_publish": bus_throughput(events[:n1], 1, "publish"),
            "bus_1_publish_many": bus_throughput(events[:n1], 1, "many", batch),
            "bus_1_shorthand": bus_throughput(events[: n1 // 2], 1, "shorthand"),
            "bus_10_publish": bus_throughput(events[:n10], 10, "publish"),
            "bus_10_publish_many": bus_throughput(events[:n10], 10, "many", batch),
        }
        r["pykka_chain_1"] = baselines.pykka_throughput(events[:n_pykka], 1)
        r["pykka_fanout_10_deliveries"] = 10 * baselines.pykka_throughput(events[:n_pykka10], 10)
        r["blinker_1"] = baselines.blinker_throughput(events[:n1], 1)
        r["blinker_10_deliveries"] = 10 * baselines.blinker_throughput(events[:n10], 10)
        with cpu_burner():  # SPEC: the 1-subscription figure also under a CPU burner
            r["burner_bus_1_publish"] = bus_throughput(events[:n1], 1, "publish")["events_per_s"]
            r["burner_pykka_chain_1"] = baselines.pykka_throughput(events[:n_pykka], 1)
        result.runs.append(r)
        print(
            "  run: 1 sub {:,.0f} ev/s (many {:,.0f}); 10 subs {:,.0f} del/s (many {:,.0f}); "
            "pykka {:,.0f} ev/s".format(
                r["bus_1_publish"]["events_per_s"],
                r["bus_1_publish_many"]["events_per_s"],
                r["bus_10_publish"]["deliveries_per_s"],
                r["bus_10_publish_many"]["deliveries_per_s"],
                r["pykka_chain_1"],
            )
        )
    m = median_dict(result.runs)
    result.medians = m
    pykka1 = m["pykka_chain_1"]
    blinker10 = m["blinker_10_deliveries"]
    result.figures = [
        Figure(
            "throughput, 1 sub, publish()",
            "events/s",
            m["bus_1_publish"]["events_per_s"],
            (">=", 1.5),
            "pykka chain 1 tell/event",
            pykka1,
            target_on_ratio=True,
        ),
        Figure(
            "throughput, 1 sub, publish(), CPU burner alongside",
            "events/s",
            m["burner_bus_1_publish"],
            None,
            "pykka chain, burner alongside",
            m["burner_pykka_chain_1"],
            note="a `while 1: pass` process on the other core (SPEC: also reported so)",
        ),
        Figure(
            "throughput, 1 sub, publish_many()",
            "events/s",
            m["bus_1_publish_many"]["events_per_s"],
            (">=", 1.5),
            "pykka chain 1 tell/event",
            pykka1,
            target_on_ratio=True,
        ),
        Figure(
            "throughput, 1 sub, publish(type, data)",
            "events/s",
            m["bus_1_shorthand"]["events_per_s"],
            None,
            "pykka chain 1 tell/event",
            pykka1,
            note="includes building each Event",
        ),
        Figure(
            "fan-out, 10 subs, publish()",
            "deliveries/s",
            m["bus_10_publish"]["deliveries_per_s"],
            (">=", 1.0),
            "blinker send, 10 receivers",
            blinker10,
            target_on_ratio=True,
        ),
        Figure(
            "fan-out, 10 subs, publish_many()",
            "deliveries/s",
            m["bus_10_publish_many"]["deliveries_per_s"],
            (">=", 1.0),
            "blinker send, 10 receivers",
            blinker10,
            target_on_ratio=True,
        ),
        Figure(
            "fan-out, 10 subs, vs pykka fan-out",
            "deliveries/s",
            m["bus_10_publish"]["deliveries_per_s"],
            None,
            "pykka relay -> 10 actors",
            m["pykka_fanout_10_deliveries"],
        ),
    ]
    return result
