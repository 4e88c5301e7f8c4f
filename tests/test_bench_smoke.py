"""Smoke test of the benchmark suite: every benchmark runs at tiny sizes and writes its JSON.

No timing is asserted: benchmarks measure, tests check that they run and
report what they promise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import BENCHMARKS

# The benchmarks SPEC section 11 asks for, as ``python -m bench`` names them.
REQUIRED = {"throughput", "latency", "persistence", "routing", "memory", "query", "crossproc"}
ROOT = Path(__file__).resolve().parent.parent
RESULT_KEYS = {
    "benchmark",
    "machine",
    "conditions",
    "runs",
    "medians",
    "figures",
    "skipped",
    "seconds",
}
FIGURE_KEYS = {
    "name",
    "unit",
    "target",
    "measured",
    "baseline_name",
    "baseline",
    "ratio",
    "status",
    "note",
}
MACHINE_KEYS = {"cores", "python", "os", "packages"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(450)]


def _python(*args: str, timeout: float, env: dict[str, str] | None = None) -> Any:
    """Run ``python ARGS`` in the repository; return the finished process (text output)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench-results")
    env = dict(os.environ, LLMSPELL_BENCH_CACHE=str(out / "cache"))
    proc = _python("-m", "bench", "--quick", "--runs", "1", "--out", str(out), timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_writes_its_result(quick_run: tuple[Path, str], name: str) -> None:
    out, _ = quick_run
    data = _load(out / f"{name}.json")
    assert set(data) == RESULT_KEYS
    assert data["benchmark"] == name
    assert set(data["machine"]) >= MACHINE_KEYS
    assert {"pykka", "pyzmq", "protobuf", "rocksdict"} <= set(data["machine"]["packages"])
    assert data["conditions"]["runs"] == 1
    assert data["figures"], "every benchmark contributes rows to the summary"
    for figure in data["figures"]:
        assert set(figure) == FIGURE_KEYS
        assert figure["status"] in {"pass", "MISS", "info", "skipped"}
        if figure["status"] != "skipped":
            assert isinstance(figure["measured"], int | float)
    if data["skipped"] is None:
        assert len(data["runs"]) == 1
        assert all(f["status"] != "skipped" for f in data["figures"])
    else:
        # crossproc without a bridge; handoff off Linux or on one CPU.
        assert name in {"crossproc", "handoff"}, f"{name} skipped: {data['skipped']}"


def test_summary_lists_every_benchmark(quick_run: tuple[Path, str]) -> None:
    out, stdout = quick_run
    summary = _load(out / "summary.json")
    assert set(summary["benchmarks"]) == set(BENCHMARKS)
    assert set(BENCHMARKS) >= REQUIRED
    assert summary["runs"] == 1
    assert summary["quick"] is True
    rows = [f for b in summary["benchmarks"].values() for f in b["figures"]]
    with_target = [f for f in rows if f["target"] is not None]
    assert with_target, "the SPEC figures carry targets"
    assert all(f["baseline_name"] for f in with_target)
    assert "=== summary" in stdout
    for row in rows:
        assert row["name"] in stdout


def test_subset_and_bad_names(tmp_path: Path) -> None:
    proc = _python("-m", "bench", "no-such-benchmark", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert "unknown benchmark" in proc.stderr
    assert not (tmp_path / "summary.json").exists()


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs os.sched_setaffinity and two CPUs",
)


@needs_two_cpus
def test_pin_puts_the_bench_on_one_cpu_and_what_it_starts_on_the_others(tmp_path: Path) -> None:
    args = ("-m", "bench", "--pin", "--quick", "--runs", "1", "handoff", "--out", str(tmp_path))
    proc = _python(*args, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cpus = sorted(os.sched_getaffinity(0))
    placed = f"this process on CPU {cpus[0]}, the processes it starts on CPU "
    assert f"cpus: pinned: {placed}{','.join(str(c) for c in cpus[1:])}" in proc.stdout
    machine = _load(tmp_path / "handoff.json")["machine"]
    assert machine["cpus"].startswith("pinned: ")


@needs_two_cpus
def test_a_process_the_pinned_bench_starts_moves_when_it_imports_bench() -> None:
    # multiprocessing's spawn imports ``bench`` to find its target: the child
    # moves before it runs it.  The bench's own process (BENCH_PIN_PARENT)
    # does not move.
    cpus = sorted(os.sched_getaffinity(0))
    probe = "import os, bench; print(sorted(os.sched_getaffinity(0)))"
    env = dict(os.environ, BENCH_CHILD_CPUS=str(cpus[-1]), BENCH_PIN_PARENT="1")
    child = _python("-c", probe, timeout=60, env=env)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == str([cpus[-1]])
    # The probe as the bench's own process: a shell names its own pid, then
    # execs the probe under it.
    del env["BENCH_PIN_PARENT"]
    own = subprocess.run(
        ["sh", "-c", f'BENCH_PIN_PARENT=$$ exec "{sys.executable}" -c "{probe}"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert own.stdout.strip() == str(cpus)
