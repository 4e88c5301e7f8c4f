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
- ``live``: a subscriber node without a journal, appending the same;
- ``vol``: a non-persistent origin (``EventBus``, a small ``recovery_ring``)
  publishing ``fault.vol`` events at ``VOL_RATE``, appending ``incarnation n
  sequence id`` of each once routed (``n`` grows across its restarts); both
  subscribers take them too, and append every ``$bus.peer.lost`` they
  announce (``incarnation origin first last``) to their ``.lost`` file.

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
  incarnation's first new event of the same origin (it resumes at its
  checkpoint); one after is a ``late_redelivery``, a fault;
- ``live`` is checked for duplicates and order, and for what it is owed:
  every acknowledged event after the first its last incarnation received
  (its subscription was in force at the origin then; what a pause or a
  broker's restart cut off is fetched again from the persistent origin).
  What it missed before, while down, is counted (``live_missed``), not a
  fault (``live_lost`` is);
- for the non-persistent origin, at each subscriber's last incarnation:
  every event of ``vol`` published after that incarnation synced with it
  (``wait_for_peers``: the subscription was then in force there; noted in
  its ``.synced`` file), up to the last it got of a killed incarnation of
  ``vol`` (what that had queued died with it) or, of the last incarnation,
  to its closing events, either arrived or lies in a range the subscriber
  announced as lost (``$bus.peer.lost``): a missing event announced
  nowhere is a ``silent`` loss, a fault, and so is a last incarnation
  that never synced.

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
DEBUG_ENV = "FAULTS_DEBUG"
"""Set (``--debug``): every process logs its bridge's steps at DEBUG in its ``.log`` file."""
QUIESCE = 60.0  # seconds the durable subscriber gets to receive every acknowledged event
PIPELINE = 50  # publishes in flight at once
ROLES = ("broker", "dur", "live", "pub", "vol")
VOL_RATE = 2_000  # events/s of the non-persistent origin, in bursts of VOL_BURST
VOL_BURST = 20
VOL_RING = 200  # its recovery_ring and send_queue (it keeps 3 x): a pause outlasts them
VOL_CLOSING = 10  # events it publishes last, once the faults are over
ROOT = Path(__file__).resolve().parent.parent  # the children run ``-m bench.faults`` from here


def _node(name: str, broker: str, **extra: Any) -> Any:
    from actors import NodeConfig  # noqa: PLC0415

    return NodeConfig(
        name=name,
        peers=(broker,),
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        **extra,
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


def run_volatile(folder: Path, broker: str) -> None:
    """The non-persistent origin: ``fault.vol`` at ``VOL_RATE`` until ``stop``, then closing."""
    from actors import Event, EventBus  # noqa: PLC0415

    incarnation = f"{os.getpid()}.{time.monotonic_ns()}"
    published = _appender(folder / "vol.published")
    last_n = 0

    def burst(count: int) -> None:
        nonlocal last_n
        events = []
        for _ in range(count):  # n grows across restarts too (the wall clock's nanoseconds)
            last_n = max(last_n + 1, time.time_ns())
            events.append(Event(event_type="fault.vol", data={"n": last_n}))
        lines = []
        for future in bus.publish_many(events):
            event = future.get(timeout=60)  # routed (a non-persistent origin acknowledges no more)
            lines.append(f"{incarnation} {event.data['n']} {event.sequence} {event.id}\n")
        os.write(published, "".join(lines).encode())

    node = _node("vol", broker, recovery_ring=VOL_RING, send_queue=VOL_RING)
    with EventBus(node=node) as bus:
        (folder / "vol.ready").touch()
        while not (folder / "go").exists():
            bus.publish("fault.warmup", {"n": -1}).get(timeout=60)
            time.sleep(0.05)
        due = time.monotonic()
        while not (folder / "stop").exists():
            burst(VOL_BURST)
            due += VOL_BURST / VOL_RATE
            time.sleep(max(0.0, due - time.monotonic()))
        while not (folder / "vol.close").exists():
            time.sleep(0.05)
        burst(VOL_CLOSING)
        (folder / "vol.stopped").touch()
        while not (folder / "end").exists():
            time.sleep(0.1)


def _run_subscriber(folder: Path, broker: str, name: str, *, durable: bool) -> None:
    from actors import EventBus, EventConfig, PersistentEventBus  # noqa: PLC0415

    incarnation = f"{os.getpid()}.{time.monotonic_ns()}"
    out = _appender(folder / f"{name}.received")

    lost = _appender(folder / f"{name}.lost")

    def handler(event: Any) -> None:
        line = f"{incarnation} {event.origin} {event.data['n']} {event.id}\n"
        os.write(out, line.encode())

    def announced(event: Any) -> None:  # $bus.peer.lost: events it can no longer fetch
        d = event.data
        os.write(lost, f"{incarnation} {d['origin']} {d['first']} {d['last']}\n".encode())

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
        bus.subscribe("$bus.peer.lost", announced)
        (folder / f"{name}.ready").touch()
        # From here both origins hold the subscription: vol's events after it are owed.
        if bus.node.wait_for_peers(["pub", "vol"], QUIESCE):
            synced = _appender(folder / f"{name}.synced")
            os.write(synced, f"{incarnation} {time.time_ns()}\n".encode())
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
    most_redelivered: int = 0  # by one incarnation: how far its checkpoint was behind
    late_redeliveries: int = 0  # handled before, after a first delivery of the incarnation
    torn_lines: int = 0
    resumed_at: int | None = None  # the first ``n`` of the last incarnation


@dataclass
class Volatile:
    """What one subscriber's last incarnation got of the non-persistent origin ``vol``."""

    incarnations: int = 0  # of vol
    synced: bool = False  # the subscriber's last incarnation synced with vol (else a fault)
    owed: int = 0
    received: int = 0
    announced: int = 0  # owed and missing, inside a range the subscriber announced as lost
    silent: int = 0  # owed and missing, announced nowhere: a fault
    not_owed: int = 0  # before its subscription was in force there, or died with a killed vol


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
    vol_durable: Volatile = field(default_factory=Volatile)
    vol_live: Volatile = field(default_factory=Volatile)

    @property
    def ok(self) -> bool:
        """Return whether every check passed."""
        return not (
            self.lost_acknowledged
            or self.live_lost
            or any(
                v.silent or (v.incarnations and not v.synced)
                for v in (self.vol_durable, self.vol_live)
            )
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
        out["vol_durable"] = vars(self.vol_durable)
        out["vol_live"] = vars(self.vol_live)
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
    first new event of the same origin is a ``late_redelivery``.  Across
    origins there is no order: a new event of ``vol`` may come before
    ``pub``'s events fetched again (handled, not yet journaled, at the crash).
    """
    out = Received()
    last: dict[tuple[str, str], int] = {}
    mine: dict[str, set[str]] = {}
    fresh: set[tuple[str, str]] = set()  # (incarnation, origin) that delivered a new event
    again: dict[str, int] = {}  # events handled again, by incarnation
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
            again[incarnation] = again.get(incarnation, 0) + 1
            out.most_redelivered = max(out.most_redelivered, again[incarnation])
            if (incarnation, origin) in fresh:
                out.late_redeliveries += 1
        else:
            out.ids.add(event_id)
            fresh.add((incarnation, origin))
        n = int(n_text)
        if n < 0:
            continue  # a warm-up event
        if out.resumed_at is None and origin == "pub":
            out.resumed_at = n
        key = (incarnation, origin)
        if key in last and n <= last[key]:
            out.order_violations += 1
        last[key] = n
    return out


def check_volatile(folder: Path, name: str) -> Volatile:
    """Check what subscriber ``name``'s last incarnation got of ``vol`` (module docstring).

    Its ranges announced as lost are matched by ``vol``'s sequences, whatever
    the incarnation of ``vol`` (the announcement does not name it).
    """
    out = Volatile()
    lines = [p for p in _lines(folder / f"{name}.received") if len(p) == 4]
    last = lines[-1][0] if lines else None
    got = {p[3] for p in lines if p[0] == last and p[1] == "vol"}
    synced = [int(p[1]) for p in _lines(folder / f"{name}.synced") if len(p) == 2 and p[0] == last]
    out.synced = bool(synced)
    since = synced[0] if synced else None  # vol's n is its wall clock's nanoseconds
    ranges = [
        (int(p[2]), int(p[3]))
        for p in _lines(folder / f"{name}.lost")
        if len(p) == 4 and p[0] == last and p[1] == "vol"
    ]
    by_incarnation: dict[str, list[tuple[int, int, str]]] = {}
    for p in _lines(folder / "vol.published"):
        if len(p) == 4:
            by_incarnation.setdefault(p[0], []).append((int(p[1]), int(p[2]), p[3]))
    out.incarnations = len(by_incarnation)
    final = list(by_incarnation)[-1] if by_incarnation else None
    for incarnation, events in by_incarnation.items():
        # Owed: published after the subscription was in force, up to the last
        # event received of a killed incarnation (its queue died with it).
        first = next((i for i, e in enumerate(events) if since is not None and e[0] > since), None)
        heard = [i for i, (_, _, event_id) in enumerate(events) if event_id in got]
        end = len(events) if incarnation == final else (heard[-1] + 1 if heard else 0)
        if first is None or end <= first:
            out.not_owed += len(events)
            continue
        out.not_owed += len(events) - (end - first)
        for _, sequence, event_id in events[first:end]:
            out.owed += 1
            if event_id in got:
                out.received += 1
            elif any(lo <= sequence <= hi for lo, hi in ranges):
                out.announced += 1
            else:
                out.silent += 1
    return out


def check(folder: Path, report: Report) -> Report:
    """Fill in the checker's figures from the files in ``folder``."""
    report.vol_durable = check_volatile(folder, "dur")
    report.vol_live = check_volatile(folder, "live")
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


def _heard(path: Path, origin: str) -> bool:
    return any(len(p) == 4 and p[1] == origin for p in _lines(path))


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
            "vol": _Proc("vol", [str(folder), broker_endpoint]),
        }
        try:
            for name in ROLES:
                procs[name].start(folder)
            _wait_for(
                lambda: all(
                    _heard(folder / f"{s}.received", origin)
                    for s in ("dur", "live")
                    for origin in ("pub", "vol")
                ),
                60,
                "subscribers hear the publishers",
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
            (folder / "vol.close").touch()  # its closing events, every process up and synced
            _wait_for((folder / "vol.stopped").exists, 60, "vol closes", procs["vol"].popen)

            def vol_settled() -> bool:
                return all(not check_volatile(folder, s).silent for s in ("dur", "live"))

            with contextlib.suppress(RuntimeError):
                _wait_for(vol_settled, QUIESCE, "vol's events arrive or are announced", None, 0.5)
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
        if os.environ.get(DEBUG_ENV):  # each step of the bridges' state machines
            logging.getLogger("actors.bridge").setLevel(logging.DEBUG)
        if role == "broker":
            run_broker(rest[0])
        elif role == "pub":
            run_publisher(Path(rest[0]), rest[1])
        elif role == "vol":
            run_volatile(Path(rest[0]), rest[1])
        else:
            _run_subscriber(Path(rest[0]), rest[1], role, durable=role == "dur")
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--faults", type=int, default=100, help="faults to inject")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument(
        "--debug", action="store_true", help="log the bridges' steps at DEBUG (with --keep)"
    )
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # the processes it starts inherit it
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
