"""Memory per idle subscription and per queued event.

Each measurement runs in a fresh child process (spawned), so earlier
benchmarks leave no freed-but-kept memory behind, and is taken twice: once as
the change in resident set size (RSS, what the OS sees) and once with
``tracemalloc`` (Python allocations only, in its own child: tracing slows
everything and adds its own overhead to RSS).

- idle subscriptions: a bus with one subscription already running; then
  10,000 more (patterns ``svcN.*``, a no-op handler, the ``Subscription``
  objects kept), ``flush()``; delta / 10,000.
- queued events: one subscription whose handler blocks on a
  ``threading.Event``; 20,000 events published with ``publish(type, data)``
  (a fresh data dict each), waiting for the last publish future so the
  router has routed them all; delta / 20,000 (the events themselves
  included: the bus is what holds them).

Baselines: a stock pykka ``ThreadingActor`` (a thread each; 1,000 of them)
and a stock actor's mailbox holding ``tell`` messages of the same events.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench._common import Figure, Params, Result, median_dict, receive, rss_bytes

NAME = "memory"


def _measure(kind: str, n: int, traced: bool) -> float:
    """Child process body: return bytes per item for ``kind``."""
    import pykka  # noqa: PLC0415

    from actors import Event, EventBus  # noqa: PLC0415
    from bench._common import EVENT_TYPE, bench_event  # noqa: PLC0415

    pad = bench_event(0).data["pad"]
    keep: list[Any] = []
    gate = threading.Event()
    entered = threading.Event()

    def blocked(_event: Any) -> None:
        entered.set()
        gate.wait()

    def noop(_event: Any) -> None:
        pass

    class Stock(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            entered.set()
            gate.wait()

    def snapshot() -> int:
        gc.collect()
        if traced:
            return tracemalloc.get_traced_memory()[0]
        return rss_bytes()

    if traced:
        tracemalloc.start()
    teardown: Callable[[], None]
    if kind == "subscription":
        bus = EventBus()
        keep.append(bus.subscribe("warm.*", noop))
        bus.flush(timeout=60)
        before = snapshot()
        for k in range(n):
            keep.append(bus.subscribe(f"svc{k}.*", noop))
        bus.flush(timeout=300)
        after = snapshot()
        teardown = bus.close
    elif kind == "queued":
        bus = EventBus()
        bus.subscribe("bench.*", blocked, capacity=n + 10)
        bus.publish(EVENT_TYPE, {"i": -1, "pad": pad})
        entered.wait(60)
        bus.publish(EVENT_TYPE, {"i": -2, "pad": pad}).get(timeout=60)
        before = snapshot()
        publish = bus.publish
        for i in range(n - 1):
            publish(EVENT_TYPE, {"i": i, "pad": pad})
        publish(EVENT_TYPE, {"i": n, "pad": pad}).get(timeout=60)
        after = snapshot()

        def teardown() -> None:
            gate.set()
            bus.close()

    elif kind == "pykka_actor":
        keep.append(Stock.start())
        before = snapshot()
        for _ in range(n):
            keep.append(Stock.start())
        after = snapshot()

        def teardown() -> None:
            for ref in keep:
                ref.stop(block=False)

    elif kind == "pykka_queued":
        ref = Stock.start()
        ref.tell(None)
        entered.wait(60)
        before = snapshot()
        tell = ref.tell
        for i in range(n):
            tell(Event(event_type=EVENT_TYPE, data={"i": i, "pad": pad}))
        after = snapshot()

        def teardown() -> None:
            gate.set()
            ref.stop()

    else:
        raise ValueError(kind)
    teardown()
    return (after - before) / n


def _child(conn: Any, kind: str, n: int, traced: bool) -> None:
    try:
        conn.send(("ok", _measure(kind, n, traced)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


def in_child(kind: str, n: int, *, traced: bool) -> float:
    """Run one measurement in a fresh spawned process; return bytes per item."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, kind, n, traced), daemon=True)
    proc.start()
    try:
        status, value = receive(parent, proc, 600, f"memory child {kind}")
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        raise RuntimeError(f"memory child {kind} failed: {value}")
    return float(value)


def run(params: Params) -> Result:
    """Measure each figure, RSS and tracemalloc, ``params.runs`` times."""
    sizes = {
        "subscription": params.size(10_000, 200),
        "queued": params.size(20_000, 1_000),
        "pykka_actor": params.size(1_000, 50),
        "pykka_queued": params.size(20_000, 1_000),
    }
    result = Result(
        NAME,
        {
            "items": sizes,
            "subscriptions": "patterns svcN.*, no-op handler, default capacity 10,000, "
            "Subscription objects kept",
            "queued events": "publish(type, data) with a fresh ~300-byte data dict; "
            "handler blocked on a threading.Event",
            "method": "each figure in a fresh spawned process; RSS delta and tracemalloc "
            "(separate processes); gc.collect() before each snapshot",
            "baselines": "stock pykka ThreadingActor (a thread each); stock actor mailbox "
            "(queue.Queue) holding tell()s of equal events",
            "runs": params.runs,
        },
    )
    for _ in range(params.runs):
        r: dict[str, Any] = {}
        for kind, n in sizes.items():
            r[kind] = {
                "rss": in_child(kind, n, traced=False),
                "tracemalloc": in_child(kind, n, traced=True),
            }
        result.runs.append(r)
        print(
            "  run: "
            + "; ".join(
                f"{kind} {v['rss'] / 1000:.2f} kB RSS, {v['tracemalloc'] / 1000:.2f} kB traced"
                for kind, v in r.items()
            )
        )
    m = median_dict(result.runs)
    result.medians = m
    result.figures = [
        Figure(
            "memory per idle subscription (RSS)",
            "bytes",
            m["subscription"]["rss"],
            ("<", 10_000),
            "stock pykka actor (RSS)",
            m["pykka_actor"]["rss"],
        ),
        Figure(
            "memory per idle subscription (tracemalloc)",
            "bytes",
            m["subscription"]["tracemalloc"],
            ("<", 10_000),
            "stock pykka actor (traced)",
            m["pykka_actor"]["tracemalloc"],
        ),
        Figure(
            "memory per queued event (RSS)",
            "bytes",
            m["queued"]["rss"],
            None,
            "stock pykka mailbox (RSS)",
            m["pykka_queued"]["rss"],
        ),
        Figure(
            "memory per queued event (tracemalloc)",
            "bytes",
            m["queued"]["tracemalloc"],
            None,
            "stock pykka mailbox (traced)",
            m["pykka_queued"]["tracemalloc"],
        ),
    ]
    return result
