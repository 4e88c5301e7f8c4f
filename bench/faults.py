"""A fault harness for the cluster: real processes, injected faults, and a checker.

Usage::

    python -m bench.faults --faults 100            # the full run (make faults)
    python -m bench.faults --faults 6 --seed 1     # a short run (the test suite's)

Topology, every part a separate OS process started with ``python -m bench.faults ROLE``:

- a ``Broker`` on an ipc endpoint in a temporary folder;
- ``pub``: a persistent origin (``PersistentEventBus``, ``durability="sync"``)
  publishing ``fault.tick`` events with a counter ``n`` as fast as it can,
  pipelined, appending ``n id`` of every *acknowledged* event to ``acked``
  as its future resolves; on restart it continues from the last ``n`` in its
  journal; told to stop, it stops publishing but stays up (the subscribers
  may still fetch from it) until the end;
- ``dur``: a persistent subscriber node with a durable subscription
  (``durable="dur"``), appending ``incarnation origin n id`` per event;
- ``live``: a subscriber node without a journal, appending the same.

Every line is written with one ``write(2)`` on a file opened ``O_APPEND``
before the handler (or the acknowledgement) returns, so a killed process
never loses a line it had written, and the checker ignores a torn last line.

Before any fault, ``pub`` publishes ``fault.warmup`` events until both
subscribers received one (the subscription is then in force at the origin:
``docs/cluster.md``, "When delivery starts"); counted events start after.
Faults, chosen at random (seeded) or by a plan (``EVERY_FAULT``, each kind
once): kill -9 and restart of the publisher, of the broker and of each
subscriber; SIGSTOP for longer than ``heartbeat_timeout`` then SIGCONT of
each.  Then the publisher is stopped cleanly, ``dur`` and ``live`` get time
to receive everything, and the checker reads the files:

- no acknowledged event lost: every acknowledged id reached ``dur``;
- no duplicate: within one incarnation of a subscriber, no event id twice;
- per-origin order: within one incarnation, the ``n`` of an origin's events
  strictly increases (events handled again included);
- a durable subscription is at-least-once across a crash of its node: an
  event handled again by a later incarnation is counted
  (``redelivered_after_crash``), not a fault, if it comes before the
  incarnation's first new event (it resumes at its checkpoint); one after
  is a ``late_redelivery``, a fault;
- ``live`` is checked for duplicates and order, and for what it is owed:
  every acknowledged event after the first its last incarnation received
  (its subscription was in force at the origin then; what a pause or a
  broker's restart cut off is fetched again from the persistent origin).
  What it missed before, while down, is counted (``live_missed``), not a
  fault (``live_lost`` is).

It prints the faults injected, the events checked and the verdict, and exits
non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_TIMEOUT = 1.0
PAUSE = 1.5  # seconds a SIGSTOPped process stays stopped: longer than HEARTBEAT_TIMEOUT
SETTLE = 0.7  # seconds of normal running between two faults
QUIESCE = 60.0  # seconds the durable subscriber gets to receive every acknowledged event
PIPELINE = 50  # publishes in flight at once
ROLES = ("broker", "dur", "live", "pub")
ROOT = Path(__file__).resolve().parent.parent  # the children run ``-m bench.faults`` from here


def _node(name: str, broker: str) -> Any:
    from actors import NodeConfig  # noqa: PLC0415

    return NodeConfig(
        name=name,
        peers=(broker,),
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )


def _appender(path: Path) -> int:
    """Open ``path`` for appending whole lines, one ``write(2)`` each."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


# -- roles, each in its own process ------------------------------------------------------


def run_broker(endpoint: str) -> None:
    from actors import Broker  # noqa: PLC0415

    with Broker(endpoint):
        threading.Event().wait()


def run_publisher(folder: Path, broker: str) -> None:
    from actors import EventConfig, EventQuery, PersistentEventBus  # noqa: PLC0415

    config = EventConfig(persistence_path=str(folder / "pub.db"), durability="sync")
    acked = _appender(folder / "acked")
    with PersistentEventBus(config, node=_node("pub", broker)) as bus:
        last = bus.query(EventQuery(event_types=["fault.tick"], descending=True, limit=1))
        n = last[0].data["n"] + 1 if last else 0
        (folder / "pub.ready").touch()
        while not (folder / "go").exists():  # until both subscribers heard from us
            bus.publish("fault.warmup", {"n": -1}).get(timeout=60)
            time.sleep(0.05)

        def note(number: int) -> Callable[[Any], None]:
            def acknowledged(future: Any) -> None:  # as it resolves: a kill loses no line
                if future.exception() is None:
                    os.write(acked, f"{number} {future.get().id}\n".encode())

            return acknowledged

        while not (folder / "stop").exists():
            futures = [bus.publish("fault.tick", {"n": n + k}) for k in range(PIPELINE)]
            for k, future in enumerate(futures):
                future.add_done_callback(note(n + k))
            for future in futures:
                future.get(timeout=60)
            n += len(futures)
        # Stay up (idle) until the end: the subscribers may still fetch from us.
        (folder / "pub.stopped").touch()
        while not (folder / "end").exists():
            time.sleep(0.1)


def _run_subscriber(folder: Path, broker: str, name: str, *, durable: bool) -> None:
    from actors import EventBus, EventConfig, PersistentEventBus  # noqa: PLC0415

    incarnation = f"{os.getpid()}.{time.monotonic_ns()}"
    out = _appender(folder / f"{name}.received")

    def handler(event: Any) -> None:
        line = f"{incarnation} {event.origin} {event.data['n']} {event.id}\n"
        os.write(out, line.encode())

    if durable:
        config = EventConfig(persistence_path=str(folder / f"{name}.db"))
        bus: Any = PersistentEventBus(config, node=_node(name, broker))
    else:
        bus = EventBus(node=_node(name, broker))
    with bus:
        # BLOCK: a remote event is never dropped at the subscription (it goes
        # over capacity, docs/cluster.md); the default DROP_OLDEST loses a
        # burst (a recovered range, the backlog after a pause) at a slow handler.
        bus.subscribe("fault.**", handler, durable=name if durable else None, overflow="block")
        (folder / f"{name}.ready").touch()
        while not (folder / "end").exists():
            time.sleep(0.1)
        stats = dataclasses.asdict(bus.node.statistics())
        (folder / f"{name}.stats").write_text(json.dumps(stats, default=str))


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
        with (folder / f"{self.role}.log").open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "bench.faults", self.role, *self.args],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        self.paused = False
        if self.role != "broker":
            _wait_for(ready.exists, 60, f"{self.role} ready", self.popen)

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait()

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)
        self.paused = sig == signal.SIGSTOP

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        if self.paused:
            self.signal(signal.SIGCONT)
        if self.role != "broker":
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=20)  # it saw ``end``: closes its bus and exits
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def _wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    popen: subprocess.Popen[bytes] | None = None,
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if popen is not None and popen.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {popen.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


class _Tail:
    """Read the whole lines appended to a subscriber's file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.ids: set[str] = set()

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 4:
                self.ids.add(parts[3])


@dataclass
class Received:
    """What one subscriber's file says, checked line by line."""

    lines: int = 0
    ids: set[str] = field(default_factory=set)
    incarnations: int = 0
    duplicates: int = 0
    order_violations: int = 0
    redelivered_after_crash: int = 0
    late_redeliveries: int = 0  # handled before, after a first delivery of the incarnation
    torn_lines: int = 0
    resumed_at: int | None = None  # the first ``n`` of the last incarnation


@dataclass
class Report:
    """The checker's figures (see the module docstring)."""

    faults: list[str] = field(default_factory=list)
    acknowledged: int = 0
    durable: Received = field(default_factory=Received)
    live: Received = field(default_factory=Received)
    lost_acknowledged: int = 0
    lost_sample: list[int] = field(default_factory=list)
    live_missed: int = 0
    live_lost: int = 0

    @property
    def ok(self) -> bool:
        """Return whether every check passed."""
        return not (
            self.lost_acknowledged
            or self.live_lost
            or any(
                r.duplicates or r.order_violations or r.late_redeliveries
                for r in (self.durable, self.live)
            )
        )

    def figures(self) -> dict[str, Any]:
        """Return the figures as plain data (faults counted by kind)."""
        kinds = Counter(
            " ".join(f.split()[: 3 if f.startswith("kill") else 2]) for f in self.faults
        )
        out: dict[str, Any] = {"faults_by_kind": dict(sorted(kinds.items()))}
        out.update(
            acknowledged=self.acknowledged,
            lost_acknowledged=self.lost_acknowledged,
            lost_sample=self.lost_sample,
            live_missed=self.live_missed,
            live_lost=self.live_lost,
        )
        for name, received in (("durable", self.durable), ("live", self.live)):
            out[name] = {k: v for k, v in vars(received).items() if k != "ids"}
        return out


def _lines(path: Path) -> Iterator[list[str]]:
    """Yield the split lines of ``path``; a last line without its newline is torn (skipped)."""
    if not path.exists():
        return
    text = path.read_bytes().decode(errors="replace")
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            yield line.split()
        else:
            yield []


def read_acked(folder: Path) -> dict[str, int]:
    """Return ``{id: n}`` of every acknowledged event."""
    return {p[1]: int(p[0]) for p in _lines(folder / "acked") if len(p) == 2}


def check_received(path: Path) -> Received:
    """Check one subscriber's file: duplicates, order and redeliveries within each incarnation.

    Order covers every delivery of an incarnation, events handled again
    included; and those come first (a durable subscription resumes at its
    checkpoint, then goes on): one handled again after the incarnation's
    first new event is a ``late_redelivery``.
    """
    out = Received()
    last: dict[tuple[str, str], int] = {}
    mine: dict[str, set[str]] = {}
    fresh: set[str] = set()  # incarnations that delivered a first-time event
    for parts in _lines(path):
        if len(parts) != 4:
            out.torn_lines += 1
            continue
        incarnation, origin, n_text, event_id = parts
        out.lines += 1
        seen = mine.get(incarnation)
        if seen is None:
            seen = mine[incarnation] = set()
            out.incarnations += 1
            out.resumed_at = None
        if event_id in seen:
            out.duplicates += 1
            continue
        seen.add(event_id)
        if event_id in out.ids:
            # Handled by an earlier incarnation: at-least-once across a crash.
            out.redelivered_after_crash += 1
            if incarnation in fresh:
                out.late_redeliveries += 1
        else:
            out.ids.add(event_id)
            fresh.add(incarnation)
        n = int(n_text)
        if n < 0:
            continue  # a warm-up event
        if out.resumed_at is None:
            out.resumed_at = n
        key = (incarnation, origin)
        if key in last and n <= last[key]:
            out.order_violations += 1
        last[key] = n
    return out


def check(folder: Path, report: Report) -> Report:
    """Fill in the checker's figures from the files in ``folder``."""
    acked = read_acked(folder)
    report.acknowledged = len(acked)
    report.durable = check_received(folder / "dur.received")
    report.live = check_received(folder / "live.received")
    lost = sorted(n for event_id, n in acked.items() if event_id not in report.durable.ids)
    report.lost_acknowledged = len(lost)
    report.lost_sample = lost[:5] + lost[-5:] if len(lost) > 10 else lost
    report.live_missed = sum(1 for event_id in acked if event_id not in report.live.ids)
    report.live_lost = len(_live_owed(acked, report.live))
    return report


def _live_owed(acked: dict[str, int], live: Received) -> set[str]:
    """The acknowledged events ``live`` has not received though it must have.

    Once its last incarnation received an event of the origin (its
    subscription was then in force there), every acknowledged event after
    it is owed, whatever the faults: the origin is persistent, and what a
    pause or a broker's restart cut off is fetched again.  What it missed
    while down, or before its subscription reached the origin, is not.
    """
    start = live.resumed_at
    if start is None:
        return set()
    return {event_id for event_id, n in acked.items() if n > start and event_id not in live.ids}


def _last_acked(folder: Path) -> int:
    """Return the ``n`` of the last acknowledged event (-1 if none yet)."""
    path = folder / "acked"
    if not path.exists():
        return -1
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 200))
        lines = [p.split() for p in f.read().split(b"\n")]
    whole = [p for p in lines[:-1] if len(p) == 2]
    return int(whole[-1][0]) if whole else -1


def _log_fault(folder: Path, fault: str) -> None:
    """Append the time, the last acknowledged ``n`` and the fault to ``faults.log``."""
    with (folder / "faults.log").open("a") as log:
        log.write(f"{time.time():.3f} {_last_acked(folder)} {fault}\n")


def _received_warmup(path: Path) -> bool:
    return any(len(p) == 4 for p in _lines(path))


EVERY_FAULT = [(role, kind) for role in ROLES for kind in ("kill", "stop")]
"""A plan with each kind of fault once (the test suite's short run)."""


def run(
    faults: int, seed: int, folder: Path | None = None, plan: list[tuple[str, str]] | None = None
) -> Report:
    """Run the harness with ``faults`` injected faults; return the checker's report.

    The faults are drawn at random (``seed``), or follow ``plan``: ``(role,
    "kill" or "stop")`` pairs, in order (``faults`` is then its length).
    """
    rng = random.Random(seed)
    if plan is not None:
        faults = len(plan)
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
            for name in ROLES:
                procs[name].start(folder)
            _wait_for(
                lambda: all(_received_warmup(folder / f"{s}.received") for s in ("dur", "live")),
                60,
                "subscribers hear the publisher",
            )
            (folder / "go").touch()
            for i in range(faults):
                time.sleep(SETTLE)
                if plan is None:
                    name, kind = rng.choice(ROLES), rng.choice(("kill", "stop"))
                else:
                    name, kind = plan[i]
                proc = procs[name]
                if kind == "kill":
                    report.faults.append(f"kill -9 {name}, restart")
                    _log_fault(folder, report.faults[-1])
                    proc.kill()
                    proc.start(folder)
                else:
                    report.faults.append(f"SIGSTOP {name} {PAUSE} s, SIGCONT")
                    _log_fault(folder, report.faults[-1])
                    proc.signal(signal.SIGSTOP)
                    time.sleep(PAUSE)
                    proc.signal(signal.SIGCONT)
            time.sleep(SETTLE)
            (folder / "stop").touch()
            stopped = folder / "pub.stopped"
            _wait_for(stopped.exists, 120, "the publisher stops", procs["pub"].popen)
            acked = set(read_acked(folder))

            tail = _Tail(folder / "dur.received")

            def received_all() -> bool:
                tail.read()
                acked.difference_update(tail.ids)
                tail.ids.clear()
                return not acked

            with contextlib.suppress(RuntimeError):
                _wait_for(received_all, QUIESCE, "dur receives every acknowledged event", None, 0.5)
            every = read_acked(folder)

            def live_has_all() -> bool:
                return not _live_owed(every, check_received(folder / "live.received"))

            with contextlib.suppress(RuntimeError):
                _wait_for(live_has_all, QUIESCE, "live receives what it is owed", None, 0.5)
        finally:
            (folder / "end").touch()
            for proc in procs.values():
                proc.stop()
        return check(folder, report)


def main(argv: list[str] | None = None) -> int:
    """Run a role (child processes) or the harness (the parent)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        role, *rest = argv
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
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
    print(json.dumps(report.figures(), indent=2))
    print("verdict:", "OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
