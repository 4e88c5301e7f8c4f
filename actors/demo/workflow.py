"""The demo's agents and its one-process run (``python -m actors.demo``)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors import Event, EventBus, EventConfig, EventQuery, PersistentEventBus

DEFAULT_JOURNAL = "demo-events.db"


class Printer:
    """Print one line per event, with its time relative to the first one (and its origin node)."""

    def __init__(self, out: Callable[[str], None] = print, *, show_origin: bool = False) -> None:
        self._out = out
        self._show_origin = show_origin
        self._first: float | None = None
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        ts = event.timestamp.timestamp()
        route = event.source or "-"
        if event.target:
            route += f" -> {event.target}"
        data = "" if event.data is None else f"  {_short(event.data)}"
        node = f"{event.origin or '-':<8} " if self._show_origin else ""
        with self._lock:  # two printing subscriptions run on different threads
            if self._first is None:
                self._first = ts
            offset = (ts - self._first) * 1000
            self._out(
                f"  #{event.sequence:<4} +{offset:7.2f} ms  {node}{event.event_type:<22} "
                f"[{route}]{data}"
            )


def _short(data: Any, width: int = 60) -> str:
    text = repr(data)
    return text if len(text) <= width else text[: width - 1] + "…"


ROLES = frozenset({"planner", "workers", "tools", "reviewer"})


def wire_agents(bus: EventBus, done: threading.Event, roles: frozenset[str] = ROLES) -> None:
    """Subscribe the planner, two workers, the tool runner and the reviewer.

    ``roles`` picks which of them live on ``bus`` (the others may run on
    another node); ``done`` is set by the reviewer's side.
    """

    def planner(event: Event) -> None:
        job = event.data["job"] if isinstance(event.data, dict) else "job"
        for worker, tool in (("worker-1", "search"), ("worker-2", "flaky-api")):
            bus.publish(
                "task.assigned",
                {"job": job, "tool": tool},
                source="planner",
                target=worker,
            )

    def worker(name: str) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
            if event.event_type == "task.assigned" and event.target == name:
                tool = event.data["tool"] if isinstance(event.data, dict) else "?"
                # Ask the tool runner and wait for its answer (a request/reply
                # round trip; a failing tool raises RemoteHandlerError here, and
                # the task becomes a dead letter the reviewer escalates).
                result = bus.request(
                    "tool.invoke", {"tool": tool}, source=name, target="tools", timeout=10.0
                )
                bus.publish("task.done", {"result": result.data}, source=name, target="reviewer")

        return handle

    def tools(event: Event) -> Any:
        tool = event.data["tool"] if isinstance(event.data, dict) else "?"
        if tool == "flaky-api":
            raise ConnectionError("flaky-api: upstream timed out")
        return {"hits": 3}

    pending = {"worker-1", "worker-2"}
    lock = threading.Lock()

    def settle(worker_name: str, verdict: str) -> None:
        with lock:
            pending.discard(worker_name)
            finished = not pending
        bus.publish(f"review.{verdict}", {"worker": worker_name}, source="reviewer")
        if finished:
            bus.publish("workflow.complete", {"status": "partial"}, source="reviewer")

    def reviewer(event: Event) -> None:
        if event.event_type == "task.done" and event.source is not None:
            settle(event.source, "approved")
        elif event.event_type == "$bus.deadletter" and isinstance(event.data, dict):
            failed = event.data["event"]
            if isinstance(failed, dict) and failed.get("event_type") == "task.assigned":
                settle(str(failed.get("target")), "escalated")

    if "planner" in roles:
        bus.subscribe("workflow.start", planner)
    if "workers" in roles:
        # A worker waits for its tool's reply: a thread of its own each.
        bus.subscribe("{task,job}.*", worker("worker-1"), dedicated_thread=True)
        bus.subscribe("t*.assign?d", worker("worker-2"), dedicated_thread=True)
    if "tools" in roles:
        bus.respond("tool.invoke", tools, source="tools")
    if "reviewer" in roles:
        bus.subscribe("task.done", reviewer)
        bus.subscribe("$bus.deadletter", reviewer)
        bus.subscribe("workflow.complete", lambda _event: done.set())


def run(journal: str | Path = DEFAULT_JOURNAL, out: Callable[[str], None] = print) -> int:
    """Run the demo against the journal folder ``journal``; return an exit status."""
    config = EventConfig(persistence_path=str(journal), retention_days=30)
    done = threading.Event()
    with PersistentEventBus(config, name="demo") as bus:
        out(f"llmspell-events demo - journal in ./{journal}\n")
        out("Events as they flow (every agent is an actor subscribed with a pattern):")
        printer = Printer(out)
        bus.subscribe("**", printer)
        bus.subscribe("$bus.deadletter", printer)
        wire_agents(bus, done)

        workflow = uuid.uuid4()
        bus.publish_correlated(
            "workflow.start", {"job": "summarise Q3 incidents"}, workflow, source="user"
        )
        if not done.wait(30):
            out("the workflow did not complete within 30 s")
            return 1
        bus.flush(timeout=30)

        out("\nThe workflow's causal trace:")
        out(bus.trace(workflow).render())

        out("\nDead letters:")
        for letter in bus.dead_letters():
            if letter.event.correlation_id == workflow:
                out(
                    f"  {letter.event.event_type} from {letter.event.source} "
                    f"in {letter.subscription_id} ({letter.pattern!r}) after "
                    f"{letter.attempts} attempt(s): {letter.error}"
                )

        m = bus.metrics()
        out("\nMetrics:")
        out(
            f"  published {m.published}, delivered {m.delivered}, dropped {m.dropped}, "
            f"handler errors {m.handler_errors}, dead letters {m.dead_letters}"
        )
        if m.latency_p50 is not None and m.latency_p99 is not None:
            out(
                f"  publish-to-handler latency p50 {m.latency_p50 * 1e3:.3f} ms, "
                f"p99 {m.latency_p99 * 1e3:.3f} ms"
            )
        out(f"  journal: {m.journal_written} written, {m.journal_size_bytes / 1024:.0f} KiB")

        stored = bus.query(EventQuery(correlation_id=workflow))
        tasks = bus.query(EventQuery(event_types=["task.*"], correlation_id=workflow))
        out(
            f"\nFrom the journal: {len(stored)} events of this workflow, "
            f"{len(tasks)} of them match 'task.*'."
        )
        out("Replaying the workflow from the journal (to a handler only):")
        replayed = bus.replay(
            EventQuery(correlation_id=workflow),
            lambda e: out(f"  replay #{e.sequence:<4} {e.event_type}"),
        )
        out(f"{replayed} events replayed.")
    return 0
