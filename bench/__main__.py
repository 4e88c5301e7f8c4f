"""Run the benchmarks of SPEC section 11 and print one summary table.

Usage::

    python -m bench                         # everything, 3 runs each
    python -m bench throughput latency      # a subset, by name
    python -m bench --runs 5 --out DIR      # more runs, results elsewhere
    python -m bench --quick --runs 1        # tiny sizes (the smoke test)
    python -m bench --pin requests          # this process on one CPU, its children on the others

``--pin`` measures the deployment of one CPU per bus process
(``docs/performance.md``, "One CPU per bus process"): a process's Python
threads share one GIL, and on some machines (virtual ones especially) waking
a thread on another CPU costs several times more than on the same one.

Each benchmark prints the machine and its conditions and writes
``<out>/<name>.json``; at the end ``<out>/summary.json`` holds every figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench._common import Figure, Params, Result, machine_info, pin_processes, print_header

BENCHMARKS = (
    "throughput",
    "latency",
    "persistence",
    "routing",
    "memory",
    "query",
    "crossproc",
    "scaleout",
    "blocking",
    "requests",
    "flood",
    "stages",
    "handoff",
)
TITLES = {
    "throughput": "in-process throughput (no journal)",
    "latency": "publish-to-handler latency, paced open-loop load",
    "persistence": "persistent throughput (async and sync durability)",
    "routing": "routing cost with non-matching patterns",
    "memory": "memory per idle subscription and per queued event",
    "query": "query latency on a large journal",
    "crossproc": "cross-process over ZeroMQ (2 processes)",
    "scaleout": "scale-out: publisher and subscriber processes through a broker",
    "blocking": "another subscription's rate while 16 handlers block",
    "requests": "request/reply round trips (in-process vs pykka ask; 2 processes)",
    "flood": "a flood at a slower remote subscriber (flow control; 2 processes)",
    "stages": "CPU per event, per stage of the pipeline (publish, route, deliver, journal)",
    "handoff": "waking a thread: on the same CPU and across CPUs (the machine's floor)",
}


def _parse(argv: list[str]) -> tuple[list[str], Params]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="result dir")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="this process on its first allowed CPU, what it starts on the others (Linux)",
    )
    args = parser.parse_args(argv)
    if args.pin:
        problem = pin_processes()
        if problem:
            parser.error(problem)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    names = [n for n in BENCHMARKS if n in args.names] if args.names else list(BENCHMARKS)
    return names, Params(runs=args.runs, quick=args.quick, out=args.out)


def _format(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "s":
        return f"{value * 1e3:.3f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 1000:.2f} kB"
    if unit == "ratio":
        return f"{value:.3f}x"
    if unit == "us":
        return f"{value:.2f} us"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    if unit == "events":
        return f"{value:,.0f}"
    if unit == "events/s (offered)":
        return f"{value:,.0f}/s"
    return f"{value:,.0f}/s"


def _target(figure: Figure) -> str:
    if figure.target is None:
        return "-"
    op, value = figure.target
    if figure.target_on_ratio:
        return f"ratio {op} {value:g}"
    return f"{op} {_format(value, figure.unit)}"


def summary_table(figures: list[tuple[str, Figure]]) -> str:
    """Return the summary table as text."""
    header = ("benchmark", "figure", "target", "measured", "baseline", "ratio", "status")
    rows = [header]
    for bench_name, f in figures:
        base = "-"
        if f.baseline_name:
            base = f"{f.baseline_name}: {_format(f.baseline, f.unit)}"
        ratio = "-" if f.ratio is None else f"{f.ratio:.3g}"
        status = f.status if not f.note or f.status != "skipped" else f"skipped: {f.note}"
        rows.append(
            (bench_name, f.name, _target(f), _format(f.measured, f.unit), base, ratio, status)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; return 0, or 1 if one of them crashed."""
    names, params = _parse(sys.argv[1:] if argv is None else argv)
    machine = machine_info()
    started = time.perf_counter()
    collected: list[tuple[str, Figure]] = []
    summary: dict[str, Any] = {"machine": machine, "runs": params.runs, "quick": params.quick}
    results: dict[str, Any] = {}
    crashed = False
    for name in names:
        print_header(TITLES[name], machine_info(), {"runs": params.runs, "quick": params.quick})
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            result: Result = module.run(params)
        except Exception as exc:
            crashed = True
            traceback.print_exc()
            result = Result(name, {}, skipped=f"crashed: {type(exc).__name__}: {exc}")
            result.figures = [Figure(name, "", None, note=result.skipped)]
        result.seconds = time.perf_counter() - t0
        path = result.write(params.out, machine)
        print(f"conditions of {name}:")
        for key, value in result.conditions.items():
            print(f"  {key}: {value}")
        if result.skipped:
            print(f"  skipped: {result.skipped}")
        print(f"{name}: {result.seconds:.1f} s, wrote {path}")
        collected.extend((name, f) for f in result.figures)
        results[name] = {
            "seconds": round(result.seconds, 2),
            "skipped": result.skipped,
            "figures": [f.to_dict() for f in result.figures],
        }
    total = time.perf_counter() - started
    summary["benchmarks"] = results
    summary["seconds"] = round(total, 1)
    params.out.mkdir(parents=True, exist_ok=True)
    (params.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    print(
        f"\n=== summary: medians of {params.runs} run(s){' (quick sizes)' if params.quick else ''}"
        f" — {machine['cores']} cores, Python {machine['python']}, {packages} ==="
    )
    print(summary_table(collected))
    print(f"\ntotal {total:.0f} s; results in {params.out}/")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
