"""A flood at a slower remote subscriber: ``python -m bench flood`` (``make bench``), or at
full size ``python -m bench.flood``.

Two OS processes (``tests/_credit_child.py``, the child of the flow-control
tests): node ``a`` (no journal) publishes ``--events`` events (300,000 by
default) with ``publish_many`` in chunks of 1,000 as fast as it is let;
node ``b`` subscribes with a handler that does ``--work`` iterations of busy
work per event (slower than ``a`` publishes) and checks that the data runs
0, 1, 2, ... (nothing lost, nothing twice, in order).  For ``batch_size`` 1
and 256, default ``credit_window`` and ``send_queue``, it prints the arrival
check, the seconds, the resident memory (peak, and its growth from the
start) of both processes, and the flow-control figures.  Writes
``bench/results/flood.json``.

In ``make bench`` (``run``) the flood is 100,000 events (5,000 with
``--quick``), and the summary table gets, per ``batch_size``, the events/s
the subscriber took, the growth of each process's resident memory, and the
events that did not arrive in order exactly once (target 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench._common import Figure, Params, Result, median_dict

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "_credit_child.py"
WAIT = 900.0


class Proc:
    def __init__(self, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=ROOT,
        )
        self.endpoint = self.ask("", "ready").split()[1]

    def ask(self, command: str, prefix: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline().rstrip("\n")
        if not line.startswith(prefix):
            raise RuntimeError(f"expected {prefix!r}, got {line!r}")
        return line

    def answer(self, command: str, prefix: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ask(command, prefix)[len(prefix) :])
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask("close", "closed")
            self.proc.wait(WAIT)


def flood(events: int, batch: int, work: int) -> dict[str, Any]:
    a = Proc(
        {
            "name": "a",
            "listen": "tcp://127.0.0.1:*",
            "block_timeout": WAIT,
            "node": {"batch_size": batch},
        }
    )
    b = Proc({"name": "b", "peers": [a.endpoint], "pattern": "flood.*", "work": work})
    try:
        b.ask("sync a", "synced")
        a.ask("receivers b", "receivers")
        flooded = a.answer(f"flood flood.x {events} 1000", "flooded ")
        got = b.answer(f"count {events}", "count ")
        a_stats, b_stats = a.answer("stats", "stats "), b.answer("stats", "stats ")
    finally:
        a.close()
        b.close()

    def mib(stats: dict[str, Any]) -> dict[str, float]:
        peak = stats["memory"]["VmHWM"] / 1024
        return {
            "peak_mib": round(peak, 1),
            "growth_mib": round(peak - stats["start_memory"]["VmRSS"] / 1024, 1),
        }

    return {
        "batch_size": batch,
        "events": events,
        "arrived": got["count"],
        "out_of_order": got["out_of_order"],
        "all_in_order_once": got == {"count": events, "next": events, "out_of_order": 0},
        "publish_seconds": round(flooded["seconds"], 2),
        "events_per_s": events / flooded["seconds"],
        "not_whole": events - got["count"] + got["out_of_order"],
        "origin": mib(a_stats),
        "receiver": mib(b_stats),
        "credit_stalls": a_stats["credit_stalls"],
        "publishers_held": a_stats["publishers_held"],
        "send_queue_peak": a_stats["send_queue_peak"],
        "receiver_gaps": b_stats["gaps"],
        "receiver_duplicates": b_stats["duplicates"],
    }


def run(params: Params) -> Result:
    """The ``make bench`` form: 100,000 events, ``batch_size`` 1 and 256, ``params.runs`` each."""
    events = params.size(100_000, 5_000)
    work = 2000
    result = Result(
        "flood",
        {
            "processes": "origin a (no journal) and subscriber b, joined directly over tcp",
            "events per run": events,
            "publisher": "publish_many in chunks of 1,000, as fast as flow control lets it "
            f"(block_timeout {WAIT:g} s)",
            "subscriber": f"one subscription, handler of {work} busy-loop iterations per event "
            "(slower than the origin), checks data runs 0, 1, 2, ...",
            "flow control": "NodeConfig defaults: credit_window 8,192, send_queue 10,000",
            "rate": "events published over the seconds until the origin flushed "
            "(the subscriber sets the pace)",
            "memory": "peak resident memory (VmHWM) less resident memory at start, per process",
            "runs": params.runs,
        },
    )
    for _ in range(params.runs):
        r = {f"batch {batch}": flood(events, batch, work) for batch in (1, 256)}
        result.runs.append(r)
        for name, one in r.items():
            print(
                f"  {name}: {one['events_per_s']:,.0f} events/s, origin +"
                f"{one['origin']['growth_mib']} MiB, subscriber +{one['receiver']['growth_mib']}"
                f" MiB, queue peak {one['send_queue_peak']}, not whole {one['not_whole']}"
            )
    m = median_dict(result.runs)
    result.medians = m
    for batch in (1, 256):
        med = m[f"batch {batch}"]
        worst = max(run[f"batch {batch}"]["not_whole"] for run in result.runs)
        result.figures += [
            Figure(f"flood, batch_size {batch}: rate", "events/s", med["events_per_s"]),
            Figure(
                f"flood, batch_size {batch}: origin RSS growth",
                "MiB",
                med["origin"]["growth_mib"],
            ),
            Figure(
                f"flood, batch_size {batch}: subscriber RSS growth",
                "MiB",
                med["receiver"]["growth_mib"],
            ),
            Figure(
                f"flood, batch_size {batch}: events lost, repeated or out of order",
                "events",
                worst,
                ("<=", 0),
                "events flooded",
                events,
                note="worst of the runs",
            ),
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--work", type=int, default=2000, help="busy-loop iterations per event")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    print(f"machine: {platform.platform()}, python {platform.python_version()}")
    print(f"flood of {args.events:,} events, receiver handler {args.work} iterations/event")
    results = []
    for batch in (1, 256):
        result = flood(args.events, batch, args.work)
        results.append(result)
        print(json.dumps(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flood.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["all_in_order_once"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
