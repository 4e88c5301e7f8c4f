"""Scale-out: 1, 2 and 4 publisher processes through a ``Broker`` to 1 and 2 subscriber processes.

Python runs one core per interpreter, so a bus grows past one core by running
several processes joined over ZeroMQ.  This benchmark shows how the system
grows with processes.  The parent runs an ``actors.Broker`` on ipc endpoints
in a temporary folder; every publisher and subscriber is a spawned OS process
whose node has only the broker as peer.

Each subscriber subscribes ``bench.**`` and waits (``wait_for_peers``) until
every publisher acknowledged its subscription; then the parent tells every
publisher to go at once.  Each publisher sends ``n`` pre-built events with
``publish_many`` (batches of 1000) and ``flush``es.  Each subscriber counts
until it has every event (or nothing arrives for a while).  Figures:

- aggregate events/s delivered: events received by all subscribers, divided
  by the time from "go" to the last subscriber's last event;
- CPU seconds per process kind (``time.process_time()`` over the run, as a
  share of the wall time), and the broker's (the parent does nothing else).

On a 2-core machine the ceiling is the cores: more processes than cores
share them, so the aggregate flattens once the cores are busy; the table
says how busy they were.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from typing import Any

from bench._common import Figure, Params, Result, bench_event, median_dict, receive, scratch_dir

NAME = "scaleout"
PUBLISHERS = (1, 2, 4)
SUBSCRIBERS = (1, 2)
WAIT = 600.0
STALL = 5.0  # seconds without a new event before a subscriber gives up


def _subscriber(conn: Any, broker: str, name: str, publishers: list[str], goal: int) -> None:
    from actors import EventBus, NodeConfig  # noqa: PLC0415

    done = threading.Event()
    state = {"count": 0, "last": 0.0}

    def handler(_event: Any) -> None:
        state["count"] += 1
        if state["count"] >= goal:
            state["last"] = time.perf_counter()
            done.set()

    with EventBus(node=NodeConfig(name=name, peers=(broker,))) as bus:
        bus.subscribe("bench.**", handler, capacity=goal + 1000)
        if not bus.wait_for_peers(publishers, timeout=60):
            conn.send({"error": f"{name}: publishers never acknowledged the subscription"})
            return
        conn.send("ready")
        cpu0 = time.process_time()
        seen, since = -1, time.monotonic()
        while not done.wait(0.2):
            if state["count"] != seen:
                seen, since = state["count"], time.monotonic()
                state["last"] = time.perf_counter()
            elif time.monotonic() - since > STALL:
                break
        conn.send(
            {"received": state["count"], "last": state["last"], "cpu": time.process_time() - cpu0}
        )


def _publisher(conn: Any, broker: str, name: str, n: int) -> None:
    from actors import EventBus, NodeConfig  # noqa: PLC0415

    events = [bench_event(i) for i in range(n)]
    with EventBus(node=NodeConfig(name=name, peers=(broker,))) as bus:
        conn.send("ready")
        start = conn.recv()
        cpu0 = time.process_time()
        many = bus.publish_many
        for first in range(0, n, 1000):
            many(events[first : first + 1000])
        bus.flush(timeout=WAIT)
        sent = time.perf_counter()
        conn.send({"sent_seconds": sent - start, "cpu": time.process_time() - cpu0})
        conn.recv()  # stay connected until every subscriber has its events


def _measure(folder: str, n_pub: int, n_sub: int, n: int) -> dict[str, Any]:
    from actors import Broker  # noqa: PLC0415

    ctx = mp.get_context("spawn")
    endpoint = f"ipc://{folder}/broker-{n_pub}-{n_sub}-{time.monotonic_ns()}"
    pub_names = [f"pub{k}" for k in range(n_pub)]
    procs: list[tuple[Any, Any]] = []
    with Broker(endpoint) as broker:
        try:
            subs = []
            for k in range(n_sub):
                conn, child = ctx.Pipe()
                args = (child, broker.endpoint, f"sub{k}", pub_names, n * n_pub)
                proc = ctx.Process(target=_subscriber, args=args, daemon=True)
                proc.start()
                subs.append((conn, proc))
            pubs = []
            for name in pub_names:
                conn, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_publisher, args=(child, broker.endpoint, name, n), daemon=True
                )
                proc.start()
                pubs.append((conn, proc))
            procs = subs + pubs
            for conn, proc in procs:
                ready = receive(conn, proc, 120, "a scale-out process")
                if ready != "ready":
                    raise RuntimeError(f"a scale-out process did not start: {ready!r}")
            cpu0 = time.process_time()
            start = time.perf_counter() + 0.01
            for conn, _ in pubs:
                conn.send(start)
            pub_reports = [receive(conn, proc, WAIT, "a publisher") for conn, proc in pubs]
            sub_reports = [receive(conn, proc, WAIT, "a subscriber") for conn, proc in subs]
            broker_cpu = time.process_time() - cpu0
            for conn, _ in pubs:
                conn.send(None)
        finally:
            for _, proc in procs:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
    received = sum(r["received"] for r in sub_reports)
    wall = max(r["last"] for r in sub_reports) - start
    return {
        "events_per_s": received / wall,
        "lost": n * n_pub * n_sub - received,
        "wall_seconds": wall,
        "publisher_cpu_share": sum(r["cpu"] for r in pub_reports) / n_pub / wall,
        "subscriber_cpu_share": sum(r["cpu"] for r in sub_reports) / n_sub / wall,
        "broker_cpu_share": broker_cpu / wall,
        "cores_busy": (
            sum(r["cpu"] for r in pub_reports) + sum(r["cpu"] for r in sub_reports) + broker_cpu
        )
        / wall,
    }


def run(params: Params) -> Result:
    """Measure the aggregate rate of every publisher x subscriber combination."""
    n = params.size(50_000, 500)
    result = Result(
        NAME,
        {
            "topology": "publishers -> Broker (XSUB/XPUB proxy, in the parent) -> subscribers",
            "publishers": list(PUBLISHERS),
            "subscribers": list(SUBSCRIBERS),
            "events_per_publisher": n,
            "transport": "ipc in a temp folder",
            "publisher": "publish_many in batches of 1000, then flush",
            "subscriber": "one subscription bench.**, trivial counting handler",
            "cores": os.cpu_count(),
            "runs": params.runs,
        },
    )
    with scratch_dir("scaleout") as folder:
        for _ in range(params.runs):
            r: dict[str, Any] = {}
            for n_pub in PUBLISHERS:
                for n_sub in SUBSCRIBERS:
                    r[f"{n_pub}x{n_sub}"] = x = _measure(folder, n_pub, n_sub, n)
                    print(
                        f"  {n_pub} publisher(s) -> {n_sub} subscriber(s): "
                        f"{x['events_per_s']:,.0f} events/s delivered, lost {x['lost']}, "
                        f"cores busy {x['cores_busy']:.2f} (publisher "
                        f"{x['publisher_cpu_share']:.0%}, subscriber "
                        f"{x['subscriber_cpu_share']:.0%}, broker {x['broker_cpu_share']:.0%})"
                    )
            result.runs.append(r)
    m = median_dict(result.runs)
    result.medians = m
    one = m["1x1"]["events_per_s"]
    result.figures = [
        Figure(
            f"scale-out, {n_pub} pub -> {n_sub} sub via broker, delivered",
            "events/s",
            m[f"{n_pub}x{n_sub}"]["events_per_s"],
            None,
            "1 pub -> 1 sub",
            one,
            note=f"cores busy {m[f'{n_pub}x{n_sub}']['cores_busy']:.2f} of {os.cpu_count()}",
        )
        for n_pub in PUBLISHERS
        for n_sub in SUBSCRIBERS
    ]
    return result
