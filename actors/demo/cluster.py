"""The demo's workflow across two OS processes joined over ZeroMQ.

``python -m actors.demo.cluster`` (and ``make demo``, after the one-process
part): this process runs the node ``planner`` (the planner and the reviewer)
and starts a child process running the node ``workers`` (two workers and the
tool runner), each with its own journal under the demo's journal folder,
over ``tcp://127.0.0.1`` with ephemeral ports.  The flaky tool fails on the
``workers`` node, so the dead letter is born there and the reviewer, back
here, escalates it.  The demo prints the events as they reach ``planner``
with the node they come from, then the workflow's trace gathered from both
nodes, and stops the child.

The child (``--worker``) prints ``ready ENDPOINT`` once the planner has
acknowledged its subscriptions, and closes when its stdin ends.
"""

from __future__ import annotations

import argparse
import queue
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from actors import EventBus, EventConfig, EventQuery, NodeConfig, PersistentEventBus
from actors.demo.workflow import DEFAULT_JOURNAL, Printer, wire_agents

__all__ = ["main", "run", "run_worker"]

WAIT = 30.0
"""Seconds to wait for any one step before giving up (the whole demo takes a few)."""


class _Child:
    """The ``workers`` process; its stdout lines arrive on a queue (a reader thread)."""

    def __init__(self, peer: str, journal: Path) -> None:
        command = [sys.executable, "-m", "actors.demo.cluster", "--worker", "--peer", peer]
        command += ["--journal", str(journal)]
        # Our own interpreter and module, with an endpoint and a path we made.
        self.proc = subprocess.Popen(  # noqa: S603
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="demo-child-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put("<eof>")

    def expect(self, prefix: str) -> str | None:
        """Return the child's next line if it starts with ``prefix``, else None (blocks)."""
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            return None
        return line if line.startswith(prefix) else None

    def stop(self) -> int:
        """Close the child's stdin (it closes its bus and exits); return its exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def run(journal: str | Path = DEFAULT_JOURNAL, out: Callable[[str], None] = print) -> int:
    """Run the two-node workflow with journals under ``journal``; return an exit status."""
    root = Path(journal)
    out("The same workflow across two OS processes over ZeroMQ")
    out(f"  node planner (this process), journal in ./{root / 'planner'}")
    node = NodeConfig(name="planner", listen="tcp://127.0.0.1:*")
    config = EventConfig(persistence_path=str(root / "planner"))
    done = threading.Event()
    with PersistentEventBus(config, node=node) as bus:
        endpoint = bus.endpoints["request"]
        assert endpoint is not None
        child = _Child(endpoint, root / "workers")
        try:
            return _drive(bus, child, root, done, out)
        finally:
            status = child.stop()
            out(f"\nnode workers stopped (exit status {status}).")


def _drive(
    bus: EventBus, child: _Child, root: Path, done: threading.Event, out: Callable[[str], None]
) -> int:
    printer = Printer(out, show_origin=True)
    bus.subscribe("**", printer)
    bus.subscribe("$bus.deadletter", printer)
    wire_agents(bus, done, roles=frozenset({"planner", "reviewer"}))
    ready = child.expect("ready")
    if ready is None:
        out("node workers did not start")
        return 1
    endpoint = ready.split()[1]
    out(f"  node workers (pid {child.proc.pid}) at {endpoint}, journal in ./{root / 'workers'}")
    if not bus.wait_for_peers(["workers"], WAIT):
        out("node workers did not acknowledge the planner's subscriptions")
        return 1

    out("\nEvents as they reach planner, with the node they come from:")
    workflow = uuid.uuid4()
    bus.publish_correlated(
        "workflow.start", {"job": "summarise Q3 incidents"}, workflow, source="user"
    )
    if not done.wait(WAIT):
        out(f"the workflow did not complete within {WAIT:g} s")
        return 1
    bus.flush(timeout=WAIT)

    trace = bus.trace(workflow, timeout=WAIT)
    out("\nThe workflow's trace, gathered from both nodes:")
    out(trace.render())
    per_node = Counter(e.origin or "-" for e in trace.events)
    out("Events per node: " + ", ".join(f"{n} {c}" for n, c in sorted(per_node.items())))

    out("\nDead letters on node workers (a query over the wire to its journal):")
    letters = bus.query(
        EventQuery(event_types=["$bus.deadletter"], correlation_id=workflow),
        node="workers",
        timeout=WAIT,
    )
    for letter in letters:
        data = letter.data if isinstance(letter.data, dict) else {}
        failed = data.get("event") if isinstance(data.get("event"), dict) else {}
        assert isinstance(failed, dict)
        out(
            f"  {failed.get('event_type')} from {failed.get('source')} "
            f"in {data.get('subscription')} ({data.get('pattern')!r}): {data.get('error')}"
        )
    return 0


def run_worker(peer: str, journal: str | Path) -> int:
    """Run the ``workers`` node until stdin ends (the child side of ``run``)."""
    node = NodeConfig(name="workers", listen="tcp://127.0.0.1:*", peers=(peer,))
    config = EventConfig(persistence_path=str(journal))
    done = threading.Event()
    with PersistentEventBus(config, node=node) as bus:
        wire_agents(bus, done, roles=frozenset({"workers", "tools"}))
        if not bus.wait_for_peers(["planner"], WAIT):
            print("not-ready", flush=True)
            return 1
        print(f"ready {bus.endpoints['request']}", flush=True)
        sys.stdin.read()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run the demo's two nodes, or (``--worker``) the child's one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--journal", default=DEFAULT_JOURNAL, help="journal folder")
    parser.add_argument("--worker", action="store_true", help="run the workers node (the child)")
    parser.add_argument("--peer", help="the planner's endpoint (with --worker)")
    args = parser.parse_args(argv)
    if args.worker:
        if not args.peer:
            parser.error("--worker needs --peer")
        try:
            return run_worker(args.peer, args.journal)
        except KeyboardInterrupt:  # a Ctrl-C reaches the whole group: the parent says it
            return 130
    return run(args.journal)


if __name__ == "__main__":
    raise SystemExit(main())
