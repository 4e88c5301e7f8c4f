"""Shared pieces of the benchmarks: machine facts, statistics, results, the paced driver.

Every benchmark family returns a ``Result``: its conditions, the raw figures
of every run, their medians, and the ``Figure`` rows it contributes to the
summary table.  ``paced`` is the open-loop sender used by every latency
measurement: it never waits for the system under test and, when it falls
behind its schedule, sends at once, so latencies measured from each event's
*scheduled* time include any queueing the sender itself suffered (no
coordinated omission).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors import Event

__all__ = [
    "EVENT_BYTES",
    "Counters",
    "Figure",
    "Params",
    "Result",
    "bench_event",
    "disk_of",
    "latency_summary",
    "machine_info",
    "median",
    "median_dict",
    "paced",
    "percentile",
    "pin_processes",
    "pinning",
    "print_header",
    "receive",
    "rss_bytes",
    "run_for",
    "scratch_dir",
]

# Every benchmark event is about this many bytes once encoded (protobuf), the
# frame size of the pyzmq baseline.
EVENT_BYTES = 300
EVENT_TYPE = "bench.tick"

PACKAGES = ("llmspell-events", "pykka", "pyzmq", "protobuf", "rocksdict", "blinker")


@dataclass(frozen=True, slots=True)
class Params:
    """What the command line asked for."""

    runs: int
    quick: bool
    out: Path

    def size(self, full: int, quick: int) -> int:
        """Return ``full``, or ``quick`` under ``--quick``."""
        return quick if self.quick else full


@dataclass(slots=True)
class Figure:
    """One row of the summary table.

    ``target`` is ``(">=", 400_000)`` or ``("<", 0.001)``; None for an
    informational row.  ``ratio`` is ``measured / baseline`` whatever the
    direction of the figure.  With ``target_on_ratio`` the target applies to
    the ratio (routing: within 10% of the 10-pattern baseline).
    """

    name: str
    unit: str
    measured: float | None
    target: tuple[str, float] | None = None
    baseline_name: str | None = None
    baseline: float | None = None
    note: str = ""
    target_on_ratio: bool = False

    @property
    def ratio(self) -> float | None:
        """Return measured / baseline, where both exist."""
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline

    @property
    def status(self) -> str:
        """Return "pass", "MISS", "info" or "skipped"."""
        if self.measured is None:
            return "skipped"
        if self.target is None:
            return "info"
        op, value = self.target
        got = self.ratio if self.target_on_ratio else self.measured
        if got is None:
            return "skipped"
        ok = {
            ">=": got >= value,
            ">": got > value,
            "<": got < value,
            "<=": got <= value,
        }[op]
        return "pass" if ok else "MISS"

    def to_dict(self) -> dict[str, Any]:
        """Return the row as JSON-able data."""
        return {
            "name": self.name,
            "unit": self.unit,
            "target": None
            if self.target is None
            else {"op": self.target[0], "value": self.target[1], "on_ratio": self.target_on_ratio},
            "measured": self.measured,
            "baseline_name": self.baseline_name,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "status": self.status,
            "note": self.note,
        }


@dataclass(slots=True)
class Result:
    """Everything one benchmark family measured."""

    name: str
    conditions: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    medians: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def write(self, out: Path, machine: dict[str, Any]) -> Path:
        """Write ``<out>/<name>.json`` and return its path."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}.json"
        data = {
            "benchmark": self.name,
            "machine": machine,
            "conditions": self.conditions,
            "runs": self.runs,
            "medians": self.medians,
            "figures": [f.to_dict() for f in self.figures],
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
        }
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path


# -- machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def disk_of(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the mount point, device and filesystem type that hold ``path``."""
    real = os.path.realpath(path)
    best = ("", "unknown", "unknown")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[0]):
                    best = (mount, device, fstype)
    except OSError:
        pass
    return {"path": real, "mount": best[0], "device": best[1], "fstype": best[2]}


def pin_processes() -> str | None:
    """Put this process on its first allowed CPU, the processes it starts on the others.

    Returns a problem (a message), or None.

    Children read ``BENCH_CHILD_CPUS`` when they import ``bench``
    (``bench/__init__.py``).  Needs Linux (``os.sched_setaffinity``) and two
    CPUs or more.
    """
    if not hasattr(os, "sched_setaffinity"):
        return "--pin needs os.sched_setaffinity (Linux)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return f"--pin needs two CPUs or more, this process may use {cpus}"
    os.sched_setaffinity(0, {cpus[0]})
    os.environ["BENCH_PIN_PARENT"] = str(os.getpid())
    os.environ["BENCH_CHILD_CPUS"] = ",".join(str(c) for c in cpus[1:])
    return None


def pinning() -> str:
    """Return how this process and its children are placed on CPUs (the conditions print it)."""
    children = os.environ.get("BENCH_CHILD_CPUS")
    if not children or not hasattr(os, "sched_getaffinity"):
        return "not pinned (the OS places every thread)"
    mine = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return f"pinned: this process on CPU {mine}, the processes it starts on CPU {children}"


def machine_info() -> dict[str, Any]:
    """Return the facts every result carries: cores, CPU, Python, OS, package versions."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "packages": versions,
        "load_average_at_start": [round(x, 2) for x in load],
        "scratch_disk": disk_of(tempfile.gettempdir()),
        "repo_disk": disk_of(Path(__file__).resolve().parent),
        "switch_interval_s": sys.getswitchinterval(),
        "cpus": pinning(),
    }


def print_header(title: str, machine: dict[str, Any], conditions: dict[str, Any]) -> None:
    """Print the machine and the conditions of one benchmark."""
    pk = machine["packages"]
    print(f"\n=== {title} ===")
    print(
        f"machine: {machine['cores']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"{machine['os']}; load {machine['load_average_at_start']}"
    )
    print("packages: " + ", ".join(f"{k} {v}" for k, v in pk.items()))
    print(f"cpus: {machine['cpus']}")
    for key, value in conditions.items():
        print(f"  {key}: {value}")


def rss_bytes() -> int:
    """Return this process's resident set size (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """Return a temporary directory on the disk of ``tempfile.gettempdir()``."""
    return tempfile.TemporaryDirectory(prefix=f"llmspell-bench-{prefix}-")


# -- statistics -------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    """Return the median of the values that are not None (None if there are none)."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def median_dict(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return the per-key median of numeric values across runs (nested dicts too)."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    for key in keys:
        values = [run.get(key) for run in runs]
        if all(isinstance(v, dict) for v in values if v is not None):
            out[key] = median_dict([v for v in values if v is not None])
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = median(values)
        else:
            out[key] = values[-1]
    return out


def percentile(ordered: Sequence[float], q: float) -> float:
    """Return the nearest-rank ``q``-th percentile (0-100) of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(samples: list[float]) -> dict[str, float | int]:
    """Return count, p50, p90, p99, p99.9, max and mean of latencies (seconds), sorting in place."""
    samples.sort()
    n = len(samples)
    return {
        "count": n,
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "p99_9": percentile(samples, 99.9),
        "max": samples[-1] if samples else math.nan,
        "mean": sum(samples) / n if n else math.nan,
    }


# -- events ---------------------------------------------------------------------------------


@contextlib.contextmanager
def inputs_frozen() -> Iterator[None]:
    """Keep the objects alive now (the benchmark's pre-built inputs) out of the collector's walk.

    ``gc.freeze()`` for the measurement, ``gc.unfreeze()`` after: a paced run
    holds its 100,000 pre-built events for its whole length, and a full
    collection walking them would be the benchmark's cost, not the bus's.
    The bus's own long-lived state (recovery ring, traces) holds no such
    objects (``docs/performance.md``).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def bench_event(i: int, event_type: str = EVENT_TYPE, **fields: Any) -> Any:
    """Build the benchmark event number ``i``: ``data={"i": i, "pad": ...}``, ~300 bytes encoded."""
    from actors import Event  # noqa: PLC0415 - keep bench._common importable without the bus

    return Event(event_type=event_type, data={"i": i, "pad": _pad(event_type)}, **fields)


_PADS: dict[str, str] = {}


def _pad(event_type: str) -> str:
    pad = _PADS.get(event_type)
    if pad is None:
        from actors import Event  # noqa: PLC0415

        bare = Event(event_type=event_type, data={"i": 10**9, "pad": ""}).to_bytes()
        pad = "x" * max(0, EVENT_BYTES - len(bare))
        _PADS[event_type] = pad
    return pad


# -- the paced, open-loop sender ---------------------------------------------------------------


def paced(
    n: int,
    rate: float,
    send: Callable[[int], object],
    begin: Callable[[float], None] | None = None,
    *,
    publisher: str = "cooperative",
) -> dict[str, float]:
    """Send ``n`` events at ``rate`` per second, open loop; return the sender's figures.

    Event ``i`` is scheduled at ``start + i / rate``.  ``begin(start)`` is
    called before the first send so receivers can compute scheduled times.
    The sender never waits for receivers; when it is behind it sends every
    overdue event at once.  Two kinds of publisher (SPEC section 11):

    - ``"cooperative"``: an application that waits on I/O between sends.
      Whenever it is ahead of schedule it sleeps until the next scheduled
      time, releasing the GIL, as a thread blocked on a socket does.  Sleep
      overshoot (~50-100 us on Linux) shows up as latency: it is charged to
      the measurement.  (A ``time.sleep(0)`` after *every* send, even in a
      catch-up burst, forces a GIL round trip through every busy thread per
      event; it measures the interpreter's hand-off cost, about 200 us here
      with three threads busy, not the bus.)
    - ``"busy"``: a CPU-bound loop that never yields; when ahead it spins on
      the clock.  Other threads run only when the interpreter forces a switch
      (every 5 ms by default), which bounds what any bus can do for it.

    ``lag_*`` is the worst lateness of each burst of sends.
    """
    if publisher not in ("cooperative", "busy"):
        raise ValueError(f"publisher must be 'cooperative' or 'busy', not {publisher!r}")
    cooperative = publisher == "cooperative"
    interval = 1.0 / rate
    pc = time.perf_counter
    sleep = time.sleep
    start = pc() + 0.005
    if begin is not None:
        begin(start)
    lags: list[float] = []
    i = 0
    while i < n:
        now = pc()
        due = int((now - start) * rate) + 1
        if due > i:
            lags.append(now - (start + i * interval))
            stop = min(due, n)
            while i < stop:
                send(i)
                i += 1
        elif cooperative:
            sleep(start + i * interval - now)
    end = pc()
    elapsed = end - start
    lag = latency_summary(lags)
    return {
        "start": start,
        "sent_seconds": elapsed,
        "sent_rate": n / elapsed if elapsed > 0 else math.inf,
        "bursts": len(lags),
        "lag_p50": lag["p50"],
        "lag_p99": lag["p99"],
        "lag_max": lag["max"],
    }


class Counters:
    """One counter per subscription; each sets its ``threading.Event`` at ``goal``.

    Each subscription's handler runs on one thread at a time, but different
    subscriptions run concurrently: hence one counter each.
    """

    def __init__(self, subscriptions: int) -> None:
        self.goal = 0
        self.counts = [0] * subscriptions
        self.finished = [0.0] * subscriptions
        self.dones = [threading.Event() for _ in range(subscriptions)]
        self.handlers = [self._make(k) for k in range(subscriptions)]

    def _make(self, k: int) -> Callable[[Event], None]:
        counts = self.counts
        done = self.dones[k]
        pc = time.perf_counter

        def handler(_event: Event) -> None:
            counts[k] += 1
            if counts[k] == self.goal:
                self.finished[k] = pc()
                done.set()

        return handler

    def arm(self, goal: int) -> None:
        """Start counting towards ``goal`` (call only while no event is in flight)."""
        for k, done in enumerate(self.dones):
            self.counts[k] = 0
            done.clear()
        self.goal = goal

    def warm_up(self, bus: Any, events: Sequence[Event], goal: int) -> None:
        """Deliver ``events`` once (code paths, route cache), then arm for ``goal``."""
        self.arm(len(events))
        bus.publish_many(events)
        self.wait(60)
        self.arm(goal)

    def wait(self, timeout: float) -> None:
        """Block until every subscription reached the goal (``TimeoutError`` after ``timeout``)."""
        for done in self.dones:
            if not done.wait(timeout):
                raise TimeoutError(f"only {self.counts} of {self.goal} events arrived")


def run_for(
    seconds: float, workers: int, make_step: Callable[[int], Callable[[int], Any]]
) -> float:
    """Return calls per second of ``workers`` threads each calling its step for ``seconds``.

    Worker ``k`` calls ``make_step(k)`` once, then its step with 0, 1, 2, ...
    The workers start together on a barrier; the clock runs from their release
    to the last join, so a call still running at the deadline counts in full.
    """
    counts = [0] * workers
    barrier = threading.Barrier(workers + 1)
    stop_at = [0.0]

    def work(k: int) -> None:
        step = make_step(k)
        pc = time.perf_counter
        barrier.wait()
        i = 0
        while pc() < stop_at[0]:
            step(i)
            i += 1
        counts[k] = i

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    barrier.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def receive(conn: Any, proc: Any, timeout: float, what: str) -> Any:
    """Return the next message from a child process's pipe.

    Raise ``RuntimeError`` as soon as the child has died without answering,
    ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not conn.poll(0.5):
        if not proc.is_alive() and not conn.poll(0):
            raise RuntimeError(f"{what}: the child process died (exit code {proc.exitcode})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no answer within {timeout} s")
    return conn.recv()
