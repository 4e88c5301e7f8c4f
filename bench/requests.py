"""Request/reply round trips: in one process against a pykka ``ask``, and across two processes.

- in-process: one ``bus.respond("bench.req", ...)`` returning the request's
  data; the main thread makes ``n`` ``bus.request`` calls back to back
  (closed loop: round trips per second, and p50/p99 of the round trips).
  Baseline in the same run: a bare pykka ``ThreadingActor`` whose
  ``on_receive`` returns the message, asked ``n`` times with ``ref.ask``.
- across processes: node ``req-a`` here asks, node ``req-b`` in a spawned
  child answers, over ``tcp://127.0.0.1``.  Requests are paced at 1,000/s
  offered (``bench._common.paced``); each round trip is measured from its
  request's *scheduled* time to the reply's return, so a slow reply delays
  (and is charged to) the requests behind it: no coordinated omission.  The
  sender sleeps between requests (a publisher that yields).

Runs only when the bridge imports; otherwise the cross-process figures read
"skipped: bridge not available".
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import struct
import threading
import time
from typing import Any

from bench._common import Figure, Params, Result, latency_summary, median_dict, paced, receive
from bench.crossproc import bridge_problem

NAME = "requests"
RATE = 1_000
WAIT = 120.0


# -- in one process ----------------------------------------------------------------------------


def in_process(n: int) -> dict[str, Any]:
    """Return round trips/s and latency percentiles of ``n`` requests in one process."""
    from actors import EventBus  # noqa: PLC0415

    with EventBus() as bus:
        bus.respond("bench.req", lambda event: event.data)
        for i in range(200):  # warm up: the reply route, caches
            bus.request("bench.req", i)
        samples: list[float] = []
        pc = time.perf_counter
        request = bus.request
        start = pc()
        for i in range(n):
            t0 = pc()
            request("bench.req", i)
            samples.append(pc() - t0)
        elapsed = pc() - start
        pending = bus.pending_requests()
    return {"round_trips_per_s": n / elapsed, "pending_after": pending, **latency_summary(samples)}


def pykka_ask(n: int) -> dict[str, Any]:
    """Return asks/s and latency percentiles of ``n`` bare pykka ``ask`` round trips."""
    import pykka  # noqa: PLC0415

    class Echo(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            return message

    ref = Echo.start()
    try:
        for i in range(200):
            ref.ask(i)
        samples: list[float] = []
        pc = time.perf_counter
        ask = ref.ask
        start = pc()
        for i in range(n):
            t0 = pc()
            ask(i)
            samples.append(pc() - t0)
        elapsed = pc() - start
    finally:
        ref.stop()
    return {"round_trips_per_s": n / elapsed, **latency_summary(samples)}


# -- across two processes -------------------------------------------------------------------


def _child(conn: Any, endpoint: str) -> None:
    from actors import EventBus, NodeConfig  # noqa: PLC0415

    node = NodeConfig(name="req-b", listen="tcp://127.0.0.1:*", peers=(endpoint,))
    with EventBus(node=node) as bus:
        bus.respond("bench.req", lambda event: event.data)
        conn.send("ready" if bus.wait_for_peers(["req-a"], 60) else "not synced")
        conn.recv()  # None: stop


def cross_process(n: int, rate: float, n_seq: int) -> dict[str, Any]:
    """Return latency percentiles of ``n`` requests paced at ``rate``/s to another process.

    Open loop: requests overlap (each is an ``AsyncEventBus.request`` started
    at its scheduled time on a loop thread), so a slow reply delays nobody
    else.  Also returns ``sequential``: ``n_seq`` blocking requests back to back.
    """
    from actors import AsyncEventBus, EventBus, NodeConfig  # noqa: PLC0415

    with EventBus(node=NodeConfig(name="req-a", listen="tcp://127.0.0.1:*")) as bus:
        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child_conn, bus.endpoints["request"]), daemon=True)
        proc.start()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True)
        thread.start()
        try:
            ready = receive(conn, proc, 60, "node req-b")
            if ready != "ready":
                raise RuntimeError(f"node req-b did not start: {ready!r}")
            for i in range(200):  # warm up; the first request makes the reply route
                bus.request("bench.req", i, timeout=30)
            pc = time.perf_counter
            seq: list[float] = []
            for i in range(n_seq):
                t0 = pc()
                bus.request("bench.req", i, timeout=30)
                seq.append(pc() - t0)
            abus = AsyncEventBus(bus=bus)
            samples: list[float] = []
            timeouts = [0]
            timing = [0.0]
            interval = 1.0 / rate

            async def one(i: int) -> None:
                try:
                    await abus.request("bench.req", i, timeout=10.0)
                except TimeoutError:
                    timeouts[0] += 1
                    return
                samples.append(pc() - (timing[0] + i * interval))

            def begin(start: float) -> None:
                timing[0] = start

            # Count completions instead of keeping every request's future:
            # thousands of retained futures (a Condition, a deque and bound
            # methods each) made the collector's full passes, and with them
            # the p99, the bench's own doing (docs/performance.md).
            finished = threading.Semaphore(0)

            def send(i: int) -> None:
                future = asyncio.run_coroutine_threadsafe(one(i), loop)
                future.add_done_callback(lambda _: finished.release())

            sender = paced(n, rate, send, begin)
            for _ in range(n):
                if not finished.acquire(timeout=WAIT):
                    raise RuntimeError("a request never finished")
            pending = bus.pending_requests()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            with contextlib.suppress(OSError):
                conn.send(None)
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return {
        **sender,
        "timeouts": timeouts[0],
        "pending_after": pending,
        "sequential": latency_summary(seq),
        **latency_summary(samples),
    }


# -- baseline: a raw pyzmq round trip between two processes ----------------------------------


def _zmq_echo(conn: Any, pull_from: str, push_to: str) -> None:
    import zmq  # noqa: PLC0415

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    pull.connect(pull_from)
    push.connect(push_to)
    conn.send("ready")
    while True:
        frame = pull.recv()
        if not frame:
            break
        push.send(frame)
    pull.close(0)
    push.close(0)
    ctx.term()


def zmq_round_trips(n: int, rate: float) -> dict[str, Any]:
    """Return latency percentiles of ``n`` raw pyzmq round trips paced at ``rate``/s, open loop.

    PUSH here -> PULL/PUSH echo in a spawned child -> PULL on a receiver
    thread here; latency from each frame's scheduled time to its echo.
    """
    import zmq  # noqa: PLC0415

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    pull = ctx.socket(zmq.PULL)
    push.bind("tcp://127.0.0.1:*")
    pull.bind("tcp://127.0.0.1:*")
    out_ep = push.getsockopt_string(zmq.LAST_ENDPOINT)
    in_ep = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    mp_ctx = mp.get_context("spawn")
    conn, child_conn = mp_ctx.Pipe()
    proc = mp_ctx.Process(target=_zmq_echo, args=(child_conn, out_ep, in_ep), daemon=True)
    proc.start()
    head = struct.Struct(">q")
    pad = b"x" * 56
    pc = time.perf_counter
    samples: list[float] = []
    timing = [0.0]
    interval = 1.0 / rate
    try:
        if receive(conn, proc, 60, "pyzmq echo") != "ready":
            raise RuntimeError("the pyzmq echo process did not start")
        push.send(head.pack(-1) + pad)  # the first frame waits for the connection
        pull.recv()

        def collect() -> None:
            for _ in range(n):
                (i,) = head.unpack_from(pull.recv())
                samples.append(pc() - (timing[0] + i * interval))

        receiver = threading.Thread(target=collect, name="zmq-baseline-receiver")
        receiver.start()

        def begin(start: float) -> None:
            timing[0] = start

        sender = paced(n, rate, lambda i: push.send(head.pack(i) + pad), begin)
        receiver.join(WAIT)
        push.send(b"")
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        push.close(0)
        pull.close(0)
        ctx.term()
    return {**sender, **latency_summary(samples)}


def run(params: Params) -> Result:
    """Measure request/reply round trips in one process (vs pykka ask) and across two."""
    n = params.size(20_000, 300)
    n_cross = params.size(10_000, 200)
    n_seq = params.size(2_000, 50)
    problem = bridge_problem()
    result = Result(
        NAME,
        {
            "in-process": f"{n} requests back to back from one thread, 1 responder "
            "(returns the request's data), EventBus() defaults (2 dispatcher threads)",
            "baseline": f"bare pykka ThreadingActor, {n} ref.ask() round trips, same run; "
            f"across processes raw pyzmq: PUSH -> echo child (PULL, PUSH) -> PULL thread, "
            f"64-byte frames, {n_cross} paced at {RATE:,}/s, open loop",
            "cross-process": f"2 processes (node req-a asks, node req-b answers, spawned), "
            f"tcp://127.0.0.1, {n_cross} requests paced at {RATE:,}/s offered, open loop "
            "(each an AsyncEventBus.request started on a loop thread at its scheduled time), "
            "scheduled time -> reply returned; sender sleeps between requests (yields); "
            f"plus {n_seq} blocking requests back to back (sequential round trips)",
            "payload": "data = the request number (a small int)",
            "bridge": "available" if problem is None else f"not available ({problem})",
            "runs": params.runs,
        },
    )
    if problem is not None:
        result.skipped = "bridge not available"
    for _ in range(params.runs):
        r: dict[str, Any] = {"in_process": in_process(n), "pykka_ask": pykka_ask(n)}
        line = (
            f"  run: request {r['in_process']['round_trips_per_s']:,.0f}/s "
            f"(p50 {r['in_process']['p50'] * 1e6:.0f} us, p99 {r['in_process']['p99'] * 1e6:.0f}"
            f" us); pykka ask {r['pykka_ask']['round_trips_per_s']:,.0f}/s "
            f"(p50 {r['pykka_ask']['p50'] * 1e6:.0f} us, p99 {r['pykka_ask']['p99'] * 1e6:.0f} us)"
        )
        if problem is None:
            x = r["cross_process"] = cross_process(n_cross, RATE, n_seq)
            z = r["zmq_round_trip"] = zmq_round_trips(n_cross, RATE)
            line += (
                f"; across processes p50 {x['p50'] * 1e3:.3f} ms, p99 {x['p99'] * 1e3:.3f} ms "
                f"({x['timeouts']} timeouts); pyzmq round trip p50 {z['p50'] * 1e3:.3f} ms, "
                f"p99 {z['p99'] * 1e3:.3f} ms"
            )
        result.runs.append(r)
        print(line)
    m = median_dict(result.runs)
    result.medians = m
    cross = m.get("cross_process") or {}
    zmq_rt = m.get("zmq_round_trip") or {}
    skipped = "bridge not available" if problem is not None else ""
    result.figures = [
        Figure(
            "request/reply round trips, in-process",
            "events/s",
            m["in_process"]["round_trips_per_s"],
            (">=", 1.0),
            "pykka ask round trips",
            m["pykka_ask"]["round_trips_per_s"],
            target_on_ratio=True,
        ),
        Figure(
            "request/reply p50, in-process",
            "s",
            m["in_process"]["p50"],
            None,
            "pykka ask p50",
            m["pykka_ask"]["p50"],
        ),
        Figure(
            "request/reply p99, in-process",
            "s",
            m["in_process"]["p99"],
            None,
            "pykka ask p99",
            m["pykka_ask"]["p99"],
        ),
        Figure(
            f"request/reply p50, 2 processes, {RATE:,}/s offered",
            "s",
            cross.get("p50"),
            None,
            "pyzmq round trip p50",
            zmq_rt.get("p50"),
            note=skipped,
        ),
        Figure(
            "request/reply p50, 2 processes, back to back",
            "s",
            (cross.get("sequential") or {}).get("p50"),
            None,
            note=skipped,
        ),
        Figure(
            f"request/reply p99, 2 processes, {RATE:,}/s offered",
            "s",
            cross.get("p99"),
            ("<", 0.002),
            "pyzmq round trip p99",
            zmq_rt.get("p99"),
            note=skipped,
        ),
    ]
    return result
