"""Cross-process over ZeroMQ: two processes, two buses joined by the bridge.

The parent runs node ``bench-a`` (``listen`` on a loopback TCP port) and
publishes; a spawned child runs node ``bench-b`` (``peers=[a]``) with one
subscription ``bench.*`` whose handler counts and timestamps.  Before
measuring, the parent publishes probe events until the child has seen one
(the child's subscription has reached the parent).  Both processes share
the system-wide monotonic clock (``perf_counter``), so the child's receive
times compare with the parent's send times.

- throughput: the parent publishes ``n`` fresh pre-built events with
  ``publish_many`` (batches of 1000) as fast as it can; events/s from the
  first publish to the child's last handler call.
- latency: paced, open loop (``bench._common.paced``, cooperative
  publisher) at 5,000, 20,000 and 50,000 events/s batched, 20,000 unbatched,
  one ``publish`` per event, measured from each event's scheduled send time
  to the child's handler.

Both with ``NodeConfig.batch_size`` 256 (the default, batched) and 1
(unbatched).  Baselines: raw pyzmq PUSH/PULL between two processes on
loopback TCP, 300-byte frames and 100 events per frame; the same carrying
the benchmark's own events protobuf-encoded, 100 per multipart message,
encoded by the sender and decoded by the receiver (the floor for a Python
bus); and the same paced latency with one frame per event.

Runs only when ``actors._cluster.bridge`` imports; otherwise every figure reads
"skipped: bridge not available".
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import random
import threading
import time
from typing import Any

from bench import baselines
from bench._common import (
    EVENT_BYTES,
    Figure,
    Params,
    Result,
    bench_event,
    inputs_frozen,
    latency_summary,
    median_dict,
    paced,
    receive,
)

NAME = "crossproc"
LATENCY_RATE = 20_000
LATENCY_RATES = (5_000, 20_000, 50_000)  # batched; unbatched at LATENCY_RATE only
BATCH_SIZES = {"batched": 256, "unbatched": 1}
WAIT = 600.0
STALL = 5.0  # seconds without a new event before the receiver gives up


def bridge_problem() -> str | None:
    """Return why the bridge cannot be used, or None if it imports."""
    try:
        importlib.import_module("actors._cluster.bridge")
        from actors import NodeConfig  # noqa: PLC0415

        NodeConfig(name="probe", batch_size=1)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# -- the child: node bench-b ----------------------------------------------------------------


def _stats(bus: Any) -> dict[str, Any]:
    """Return the node's bridge counters for the record (diagnostics only)."""
    if bus.node is None:
        return {}
    stats = bus.node.statistics()
    return {key: getattr(stats, key) for key in _RECORDED}


_RECORDED = (
    "frames_sent",
    "frames_unsent",
    "frames_received",
    "frames_dropped",
    "events_received",
    "events_delivered",
    "events_recovered",
    "gaps",
    "gaps_recovered",
    "gaps_unrecovered",
    "duplicates",
)


def _child(conn: Any, endpoint: str, batch_size: int) -> None:
    from actors import EventBus, NodeConfig  # noqa: PLC0415

    probe = threading.Event()
    done = threading.Event()
    state: dict[str, Any] = {"goal": 0, "count": 0, "last": 0.0, "interval": 0.0, "rec": []}

    def handler(event: Any) -> None:
        i = event.data["i"]
        if i < 0:
            probe.set()
            return
        now = time.perf_counter()
        state["rec"].append(now - i * state["interval"])
        state["count"] += 1
        state["last"] = now
        if state["count"] == state["goal"]:
            done.set()

    def wait_for_all() -> None:
        # Give up once nothing arrived for STALL seconds: lost events must
        # not hang the suite; the report says how many arrived.
        seen, since = -1, time.monotonic()
        while not done.wait(0.5):
            if state["count"] != seen:
                seen, since = state["count"], time.monotonic()
            elif time.monotonic() - since > STALL:
                return

    node = NodeConfig(name="bench-b", peers=(endpoint,), batch_size=batch_size)
    with EventBus(node=node) as bus:
        bus.subscribe("bench.*", handler, capacity=1_000_000)
        conn.send("ready")
        while True:
            command = conn.recv()
            if command is None:
                break
            kind = command[0]
            if kind == "probe":
                conn.send(probe.wait(command[1]))
                continue
            _, goal, interval = command
            done.clear()
            state.update(goal=goal, count=0, interval=interval, rec=[], last=0.0)
            conn.send("armed")
            wait_for_all()
            report = {"received": state["count"], "last": state["last"], "bridge": _stats(bus)}
            if kind == "latency":
                start = conn.recv()
                rec = [x - start for x in state["rec"]]
                if rec:
                    report.update(latency_summary(rec))
            conn.send(report)


# -- the parent: node bench-a ---------------------------------------------------------------


class _Pair:
    """Node bench-a here, node bench-b in a spawned child, subscription propagated."""

    def __init__(self, batch_size: int) -> None:
        from actors import BridgeError, EventBus, NodeConfig  # noqa: PLC0415

        self.bus: Any = None
        for _ in range(20):
            port = random.randrange(20_000, 60_000, 2)
            endpoint = f"tcp://127.0.0.1:{port}"
            try:
                node = NodeConfig(name="bench-a", listen=endpoint, batch_size=batch_size)
                self.bus = EventBus(node=node)
                break
            except BridgeError:
                continue  # port taken: try another
        if self.bus is None:
            raise RuntimeError("no free loopback port pair for node bench-a")
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child, endpoint, batch_size), daemon=True)
        self.proc.start()
        try:
            ready = receive(self.conn, self.proc, 60, "node bench-b")
        except (RuntimeError, TimeoutError):
            self.close()
            raise
        if ready != "ready":
            self.close()
            raise RuntimeError(f"node bench-b did not start: {ready!r}")
        deadline = time.monotonic() + 60
        while True:
            self.bus.publish("bench.probe", {"i": -1})
            self.conn.send(("probe", 0.05))
            if receive(self.conn, self.proc, 60, "node bench-b"):
                break
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("node bench-b never received a probe event from bench-a")

    def _report(self) -> dict[str, Any]:
        report: dict[str, Any] = receive(self.conn, self.proc, WAIT, "node bench-b")
        report["sender_bridge"] = _stats(self.bus)
        return report

    def throughput(self, events: list[Any]) -> dict[str, Any]:
        """Return events/s from the first publish here to the last handler call there."""
        self.conn.send(("throughput", len(events), 0.0))
        assert receive(self.conn, self.proc, 60, "node bench-b") == "armed"
        many = self.bus.publish_many
        start = time.perf_counter()
        for first in range(0, len(events), 1000):
            many(events[first : first + 1000])
        report = self._report()
        if not report["received"]:
            raise RuntimeError("node bench-b received none of the events")
        rate = report["received"] / (report["last"] - start)
        return {"events_per_s": rate, "lost": len(events) - report["received"], **report}

    def latency(self, events: list[Any], rate: float) -> dict[str, Any]:
        """Return sender figures and latency percentiles (s) at ``rate`` events/s offered."""
        self.conn.send(("latency", len(events), 1.0 / rate))
        assert receive(self.conn, self.proc, 60, "node bench-b") == "armed"
        publish = self.bus.publish
        timing = [0.0]

        def begin(start: float) -> None:
            timing[0] = start

        sender = paced(len(events), rate, lambda i: publish(events[i]), begin)
        self.conn.send(timing[0])
        report = self._report()
        if not report["received"]:
            raise RuntimeError("node bench-b received none of the events")
        return {**sender, "lost": len(events) - report["received"], **report}

    def close(self) -> None:
        """Stop the child and close the bus."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
        self.bus.close(timeout=30)


def run(params: Params) -> Result:
    """Measure bridge throughput and latency (if it imports) and the pyzmq baselines."""
    n = params.size(100_000, 2_000)
    n_lat = params.size(50_000, 1_000)
    n_zmq = params.size(500_000, 5_000)
    problem = bridge_problem()
    result = Result(
        NAME,
        {
            "processes": "2: publisher node bench-a, subscriber node bench-b (spawned)",
            "transport": "tcp://127.0.0.1 (bridge and baselines)",
            "events per throughput run": n,
            "throughput publisher": "publish_many, batches of 1000, as fast as possible",
            "latency": f"paced open loop (cooperative publisher) at {LATENCY_RATES} events/s "
            f"offered batched, {LATENCY_RATE:,}/s unbatched, {n_lat} events, "
            "one publish() each, scheduled send time -> remote handler",
            "batch sizes": BATCH_SIZES,
            "payload": f"~{EVENT_BYTES} bytes encoded, fresh events each run",
            "garbage collector": "on; in the publishing process, what is alive when a paced "
            "latency run starts (its pre-built events, the bus's set-up) is frozen "
            "(gc.freeze) for that run",
            "subscriptions": "1 on bench-b (bench.*), trivial handler",
            "baselines": f"raw pyzmq PUSH/PULL, {n_zmq} events: 300-byte frames, 100 events "
            f"per frame; paced latency at {LATENCY_RATE:,}/s, one frame per event",
            "bridge": "available" if problem is None else f"not available ({problem})",
            "runs": params.runs,
        },
    )
    if problem is not None:
        result.skipped = "bridge not available"
    for _ in range(params.runs):
        r: dict[str, Any] = {
            "zmq_frame_per_event": baselines.zmq_throughput(n_zmq, 1),
            "zmq_100_per_frame": baselines.zmq_throughput(n_zmq, 100),
            "zmq_protobuf_100_per_frame": baselines.zmq_protobuf_throughput(
                [bench_event(i) for i in range(n)], 100
            ),
            "zmq_latency": baselines.zmq_paced_latency(n_lat, LATENCY_RATE),
        }
        line = (
            f"  run: zmq {r['zmq_frame_per_event']:,.0f} ev/s (100/frame "
            f"{r['zmq_100_per_frame']:,.0f}), p99 {r['zmq_latency']['p99'] * 1e3:.3f} ms"
        )
        if problem is None:
            for label, size in BATCH_SIZES.items():
                # Fresh events (new ids): the receiving node removes duplicates by id.
                events = [bench_event(i) for i in range(n)]
                pair = _Pair(size)
                try:
                    r[label] = pair.throughput(events)
                    for lat_rate in LATENCY_RATES if label == "batched" else (LATENCY_RATE,):
                        lat_events = [bench_event(i) for i in range(n_lat)]
                        key = "latency" if lat_rate == LATENCY_RATE else f"latency_{lat_rate}"
                        with inputs_frozen():
                            r[label][key] = pair.latency(lat_events, lat_rate)
                finally:
                    pair.close()
                x = r[label]
                line += (
                    f"; bridge {label} {x['events_per_s']:,.0f} ev/s (lost {x['lost']}), "
                    f"p99 {x['latency'].get('p99', float('nan')) * 1e3:.3f} ms "
                    f"(lost {x['latency']['lost']})"
                )
        result.runs.append(r)
        print(line)
    m = median_dict(result.runs)
    result.medians = m

    def get(label: str, *keys: str) -> Any:
        value: Any = m.get(label)
        for key in keys:
            value = None if value is None else value.get(key)
        return value

    def note(label: str, *keys: str) -> str:
        if problem is not None:
            return "bridge not available"
        lost = get(label, *keys, "lost")
        return f"median {lost:,.0f} events never arrived" if lost else ""

    rate = f"{LATENCY_RATE // 1000}K/s offered"
    result.figures = [
        Figure(
            "cross-process, batched (batch_size 256)",
            "events/s",
            get("batched", "events_per_s"),
            (">=", 150_000),
            "pyzmq 100 protobuf events/frame, encoded + decoded",
            m["zmq_protobuf_100_per_frame"],
            note=note("batched"),
        ),
        Figure(
            "cross-process, batched, vs raw bytes",
            "events/s",
            get("batched", "events_per_s"),
            None,
            "pyzmq PUSH/PULL 100 events/frame",
            m["zmq_100_per_frame"],
        ),
        Figure(
            "cross-process, unbatched (batch_size 1)",
            "events/s",
            get("unbatched", "events_per_s"),
            None,
            "pyzmq PUSH/PULL 300-byte frames",
            m["zmq_frame_per_event"],
            note=note("unbatched"),
        ),
        Figure(
            f"cross-process p99, {rate}, batched",
            "s",
            get("batched", "latency", "p99"),
            ("<", 0.005),
            "pyzmq PUSH/PULL p99",
            m["zmq_latency"]["p99"],
            note=note("batched", "latency"),
        ),
        Figure(
            f"cross-process p99, {rate}, unbatched",
            "s",
            get("unbatched", "latency", "p99"),
            None,
            "pyzmq PUSH/PULL p99",
            m["zmq_latency"]["p99"],
            note=note("unbatched", "latency"),
        ),
    ]
    for lat_rate in LATENCY_RATES:
        if lat_rate == LATENCY_RATE:
            continue
        for q in ("p50", "p99"):
            result.figures.append(
                Figure(
                    f"cross-process {q}, {lat_rate // 1000}K/s offered, batched",
                    "s",
                    get("batched", f"latency_{lat_rate}", q),
                    None,
                    note=note("batched", f"latency_{lat_rate}"),
                )
            )
    return result
