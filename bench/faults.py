"""A fault harness for the cluster: real processes, injected faults, and a checker.

Usage::

    python -m bench.faults --faults 100            # the full run (make faults)
    python -m bench.faults --faults 6 --seed 1     # a short run (the test suite's)

Topology, every part a separate OS process started with ``python -m bench.faults ROLE``:

- a ``Broker`` on an ipc endpoint in a temporary folder;
- ``pub``: a persistent origin (``PersistentEventBus``, ``durability="sync"``)
  publishing ``fault.tick`` events with a counter ``n`` as fast as it can,
  pipelined, appending every *acknowledged* ``n`` (its future resolved) to a file;
  on restart it continues from the last ``n`` in its journal;
- ``dur``: a persistent subscriber node with a durable subscription
  (``durable="dur"``), appending ``incarnation origin sequence n`` per event;
- ``live``: a subscriber node without a journal, appending the same.

Faults, chosen at random (seeded): kill -9 and restart of the publisher, of the
broker and of each subscriber; SIGSTOP for longer than ``heartbeat_timeout``
then SIGCONT of each.  Then everything is resumed, the publisher is stopped
cleanly, and the checker reads the files:

- no acknowledged event lost: every acknowledged ``n`` reached ``dur``;
- per-origin order: within one incarnation of a subscriber, sequences of an
  origin strictly increase (so no duplicate and no reordering was delivered);
- the live subscriber's losses happen only while it was down or paused
  (it is not a live, reachable peer then); it is checked for order only.

It prints the faults injected, the events checked and the verdict, and exits
non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_TIMEOUT = 1.0
PAUSE = 1.5  # seconds a SIGSTOPped process stays stopped: longer than HEARTBEAT_TIMEOUT
SETTLE = 0.7  # seconds of normal running between two faults
QUIESCE = 90.0  # seconds the durable subscriber gets to receive every acknowledged event


def _node(name: str, broker: str) -> Any:
    from actors import NodeConfig  # noqa: PLC0415

    return NodeConfig(
        name=name,
        peers=(broker,),
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )


def _stop_requested(folder: Path) -> bool:
    return (folder / "stop").exists()


# -- roles, each in its own process ------------------------------------------------------


def run_broker(endpoint: str) -> None:
    from actors import Broker  # noqa: PLC0415

    with Broker(endpoint):
        threading.Event().wait()


def run_publisher(folder: Path, broker: str) -> None:
    from actors import EventConfig, EventQuery, PersistentEventBus  # noqa: PLC0415

    config = EventConfig(persistence_path=str(folder / "pub.db"), durability="sync")
    with (
        PersistentEventBus(config, node=_node("pub", broker)) as bus,
        (folder / "acked").open("a", buffering=1) as acked,
    ):
        last = bus.query(EventQuery(event_types=["fault.tick"], descending=True, limit=1))
        n = last[0].data["n"] + 1 if last else 0
        (folder / "pub.ready").touch()
        while not _stop_requested(folder):
            futures = [bus.publish("fault.tick", {"n": n + k}) for k in range(50)]
            for k, future in enumerate(futures):
                future.get(timeout=60)
                acked.write(f"{n + k}\n")
            n += len(futures)


def _run_subscriber(folder: Path, broker: str, name: str, *, durable: bool) -> None:
    from actors import EventBus, EventConfig, PersistentEventBus  # noqa: PLC0415

    incarnation = time.monotonic_ns()
    with (folder / f"{name}.received").open("a", buffering=1) as out:

        def handler(event: Any) -> None:
            out.write(f"{incarnation} {event.origin} {event.sequence} {event.data['n']}\n")

        if durable:
            config = EventConfig(persistence_path=str(folder / f"{name}.db"))
            bus: Any = PersistentEventBus(config, node=_node(name, broker))
        else:
            bus = EventBus(node=_node(name, broker))
        with bus:
            bus.subscribe("fault.**", handler, durable=name if durable else None)
            (folder / f"{name}.ready").touch()
            while not (folder / "end").exists():
                time.sleep(0.1)


# -- the parent: processes, faults, checker -----------------------------------------------


@dataclass
class _Proc:
    role: str
    args: list[str]
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False

    def start(self, folder: Path) -> None:
        ready = folder / f"{self.role}.ready"
        ready.unlink(missing_ok=True)
        log = (folder / f"{self.role}.log").open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.faults", self.role, *self.args],
            stdout=log,
            stderr=log,
        )
        self.paused = False
        if self.role != "broker":
            deadline = time.monotonic() + 60
            while not ready.exists():
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.role} exited with {self.popen.returncode} at start")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.role} did not start within 60 s")
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait()

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)
        self.paused = sig == signal.SIGSTOP


@dataclass
class Report:
    faults: list[str] = field(default_factory=list)
    acknowledged: int = 0
    durable_received: int = 0
    live_received: int = 0
    lost_acknowledged: int = 0
    order_violations: int = 0
    duplicates: int = 0
    redelivered_after_crash: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost_acknowledged or self.order_violations or self.duplicates)


def _lines(path: Path) -> Iterator[list[str]]:
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts:
                yield parts


def _check_order(path: Path, report: Report) -> set[int]:
    last: dict[tuple[str, str], int] = {}
    seen_ns: set[int] = set()
    for incarnation, origin, sequence, n in _lines(path):
        key = (incarnation, origin)
        seq = int(sequence)
        if key in last:
            if seq == last[key]:
                report.duplicates += 1
            elif seq < last[key]:
                report.order_violations += 1
        last[key] = seq
        if int(n) in seen_ns:
            report.redelivered_after_crash += 1
        seen_ns.add(int(n))
    return seen_ns


def check(folder: Path, report: Report) -> Report:
    """Fill in the checker's figures from the files in ``folder``."""
    acked = {int(parts[0]) for parts in _lines(folder / "acked")}
    report.acknowledged = len(acked)
    durable = _check_order(folder / "dur.received", report)
    redelivered = report.redelivered_after_crash
    live = _check_order(folder / "live.received", report)
    report.redelivered_after_crash = redelivered  # the live node's repeats are duplicates above
    report.durable_received = len(durable)
    report.live_received = len(live)
    report.lost_acknowledged = len(acked - durable)
    return report


def run(faults: int, seed: int, folder: Path | None = None) -> Report:
    """Run the harness with ``faults`` injected faults; return the checker's report."""
    rng = random.Random(seed)
    report = Report()
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
        broker_endpoint = f"ipc://{folder}/broker"
        procs = {
            "broker": _Proc("broker", [broker_endpoint]),
            "dur": _Proc("dur", [str(folder), broker_endpoint]),
            "live": _Proc("live", [str(folder), broker_endpoint]),
            "pub": _Proc("pub", [str(folder), broker_endpoint]),
        }
        try:
            for name in ("broker", "dur", "live", "pub"):
                procs[name].start(folder)
            for _ in range(faults):
                time.sleep(SETTLE)
                name = rng.choice(list(procs))
                proc = procs[name]
                if rng.random() < 0.5:
                    report.faults.append(f"kill -9 {name}, restart")
                    proc.kill()
                    proc.start(folder)
                else:
                    report.faults.append(f"SIGSTOP {name} {PAUSE} s, SIGCONT")
                    proc.signal(signal.SIGSTOP)
                    time.sleep(PAUSE)
                    proc.signal(signal.SIGCONT)
            (folder / "stop").touch()
            assert procs["pub"].popen is not None
            procs["pub"].popen.wait(timeout=120)
            acked = {int(p[0]) for p in _lines(folder / "acked")}
            deadline = time.monotonic() + QUIESCE
            while time.monotonic() < deadline:
                got = {int(p[3]) for p in _lines(folder / "dur.received")}
                if acked <= got:
                    break
                time.sleep(0.5)
        finally:
            (folder / "end").touch()
            for proc in procs.values():
                if proc.popen is not None and proc.popen.poll() is None:
                    if proc.paused:
                        proc.signal(signal.SIGCONT)
                    proc.popen.terminate()
                    try:
                        proc.popen.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        return check(folder, report)


def main(argv: list[str] | None = None) -> int:
    """Run a role (child processes) or the harness (the parent)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("broker", "pub", "dur", "live"):
        role, *rest = argv
        if role == "broker":
            run_broker(rest[0])
        elif role == "pub":
            run_publisher(Path(rest[0]), rest[1])
        else:
            _run_subscriber(Path(rest[0]), rest[1], role, durable=role == "dur")
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--faults", type=int, default=100, help="faults to inject")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = run(args.faults, args.seed, args.keep)
    print(f"seed {args.seed}, {len(report.faults)} faults in {time.monotonic() - started:.0f} s:")
    for fault in report.faults:
        print(f"  {fault}")
    figures = {k: v for k, v in vars(report).items() if k != "faults"}
    print(json.dumps(figures, indent=2))
    print("verdict:", "OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
