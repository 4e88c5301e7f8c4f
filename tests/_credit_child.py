"""Child process for the flow-control tests (``tests/test_credit_procs.py``, ``bench/flood.py``).

Run as ``python tests/_credit_child.py CONFIG_JSON``.  CONFIG_JSON holds
``name``, ``listen``, ``peers``, ``node`` (extra ``NodeConfig`` fields),
``block_timeout``, optional ``path`` (a persistent bus, ``durability="sync"``:
a flood then starts after the last ``data`` in its journal) and, for a
receiver, ``pattern``, ``overflow`` (of its subscription), ``slow_us``
(microseconds per event the handler takes, paid in pauses of ``PAUSE`` s
that leave the CPU to the other processes: a slower handler, as one that
waits for an LLM is), ``work`` (iterations of busy work per event: a
handler slower by its CPU, ``bench/flood.py``) and ``gated`` (the
handler waits in its first event until ``release``).  The receiver checks what it gets: event
``data`` must run 0, 1, 2, ... (order, no duplicate, nothing lost).  It
prints ``ready ENDPOINT`` once started, then answers one line per command:

``receivers NAME``   wait until NAME's credit reached this node -> ``receivers``
``sync NAME``        wait until NAME acknowledged our subscriptions -> ``synced``
``flood TYPE N CHUNK``  publish data 0..N-1 with ``publish_many`` in chunks -> ``flooded JSON``
``acked TYPE N CHUNK``  the same from the journal's next ``data`` on, printing ``ack D`` once
                     every event up to data D is acknowledged (future resolved: journaled,
                     fsynced), then ``flooded JSON``
``fill TYPE``        publish one at a time until ``BackpressureError`` -> ``refused JSON``
``hang TYPE LIMIT``  publish on a thread until LIMIT events wait for credit -> ``hanging``
``freed``            wait until the hanging publisher published twice more -> ``freed JSON``
``count N``          wait until the handler got N events -> ``count JSON`` (the receiver's checks)
``lagging``          wait for a ``$bus.peer.lagging`` event -> ``lagging JSON`` (those seen)
``release``          let the gated handler go -> ``released``
``stats``            -> ``stats JSON`` (bridge statistics, RSS figures, lagging events seen)
``close``            close the bus -> ``closed``, then exit

With ``broker`` (an endpoint) in CONFIG_JSON it runs a ``Broker`` there
instead, prints ``ready ENDPOINT`` and answers ``stats`` (``memory`` and
``start_memory`` only) and ``close``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

from actors import (
    BackpressureError,
    Broker,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    NodeConfig,
    PersistentEventBus,
)

WAIT = 120.0
PAUSE = 0.002  # s: a pause of a slower handler (``slow_us``)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def memory() -> dict[str, int]:
    """Return the process's resident memory now and at its peak, in KiB."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class Checker:
    """The receiver's handler: counts, and checks that data runs 0, 1, 2, ..."""

    def __init__(self, slow_us: float, work: int, gated: bool) -> None:
        self.work = work
        self.every = max(1, round(PAUSE * 1e6 / slow_us)) if slow_us else 0  # events per pause
        self.pause = threading.Event()  # never set: its wait is the pause
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.cond = threading.Condition()
        self.count = 0
        self.next = 0
        self.out_of_order = 0
        self.jumps: list[tuple[int, Any, int | None]] = []  # (expected, got, sequence)
        self.lagging: list[Any] = []

    def __call__(self, event: Event) -> None:
        self.gate.wait(WAIT)
        if self.every and self.count % self.every == 0:
            self.pause.wait(PAUSE)
        total = 0
        for i in range(self.work):
            total += i
        with self.cond:
            if event.data != self.next:
                self.out_of_order += 1
                if len(self.jumps) < 10:
                    self.jumps.append((self.next, event.data, event.sequence))
            self.next = int(event.data) + 1 if isinstance(event.data, int) else self.next
            self.count += 1
            self.cond.notify_all()

    def figures(self) -> dict[str, Any]:
        with self.cond:
            return {"count": self.count, "next": self.next, "out_of_order": self.out_of_order}


def run_broker(endpoint: str) -> None:
    with Broker(endpoint) as hub:
        start_memory = memory()
        say(f"ready {hub.endpoint}")
        for line in sys.stdin:
            words = line.split()
            if words and words[0] == "stats":
                say("stats " + json.dumps({"memory": memory(), "start_memory": start_memory}))
            elif words and words[0] == "close":
                break
    say("closed")


def flood_acked(bus: EventBus, kind: str, n: int, chunk: int) -> None:
    """Publish ``n`` events after the journal's last; print ``ack D`` as they are acknowledged."""
    last = bus.query(EventQuery(event_types=[kind], descending=True, limit=1))
    low = int(last[0].data) + 1 if last else 0
    started = time.perf_counter()
    for first in range(low, low + n, chunk):
        events = [Event(event_type=kind, data=i) for i in range(first, min(low + n, first + chunk))]
        for future in bus.publish_many(events):
            future.get(timeout=WAIT)
        say(f"ack {events[-1].data}")
    say("flooded " + json.dumps({"seconds": time.perf_counter() - started, "first": low}))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if cfg.get("broker"):
        run_broker(cfg["broker"])
        return
    node = NodeConfig(
        name=cfg["name"],
        listen=cfg.get("listen"),
        peers=tuple(cfg.get("peers", ())),
        **cfg.get("node", {}),
    )
    block_timeout = cfg.get("block_timeout", 10.0)
    bus: EventBus
    if cfg.get("path"):
        config = EventConfig(
            persistence_path=cfg["path"], durability="sync", block_timeout=block_timeout
        )
        bus = PersistentEventBus(config, node=node)
    else:
        bus = EventBus(EventConfig(block_timeout=block_timeout), node=node)
    bridge = bus.node
    assert bridge is not None
    checker = Checker(cfg.get("slow_us", 0), cfg.get("work", 0), cfg.get("gated", False))
    lagging: list[Any] = []
    lagged = threading.Condition()

    def on_lagging(event: Event) -> None:
        with lagged:
            lagging.append(event.data)
            lagged.notify_all()

    if not cfg.get("pattern"):  # the origin watches for lagging peers
        bus.subscribe("$bus.peer.lagging", on_lagging)
    if cfg.get("pattern"):
        bus.subscribe(
            cfg["pattern"],
            checker,
            capacity=cfg.get("capacity"),
            overflow=cfg.get("overflow", "drop_oldest"),
        )
    start_memory = memory()
    say(f"ready {bridge.endpoints['request']}")
    hanging: dict[str, Any] = {}
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command = words[0]
        if command == "receivers":
            name = words[1]
            ok = bridge.wait(lambda s, n=name: n in s.credit_receivers, WAIT)
            say("receivers" if ok else "no-receivers")
        elif command == "sync":
            say("synced" if bridge.wait_for_peers([words[1]], WAIT) else "not-synced")
        elif command == "flood":
            kind, n, chunk = words[1], int(words[2]), int(words[3])
            started = time.perf_counter()
            for low in range(0, n, chunk):
                events = [Event(event_type=kind, data=i) for i in range(low, min(n, low + chunk))]
                bus.publish_many(events)
            bus.flush(WAIT)
            say("flooded " + json.dumps({"seconds": time.perf_counter() - started}))
        elif command == "acked":
            flood_acked(bus, words[1], int(words[2]), int(words[3]))
        elif command == "fill":
            published = 0
            while True:
                started = time.perf_counter()
                try:
                    bus.publish(words[1], published).get(timeout=WAIT)
                except BackpressureError as exc:
                    figures = {
                        "published": published,
                        "waited": time.perf_counter() - started,
                        "error": str(exc),
                    }
                    break
                published += 1
            say("refused " + json.dumps(figures))
        elif command == "hang":
            kind = words[1]
            done = threading.Event()
            hanging.update(published=0, error=None, done=done, blocked_at=None)

            def publish_until_freed(kind: str = kind, done: threading.Event = done) -> None:
                try:
                    while not done.is_set():
                        bus.publish(kind, hanging["published"]).get(timeout=WAIT)
                        hanging["published"] += 1
                        # One publish may have been admitted before the hold.
                        if hanging["blocked_at"] is not None and (
                            hanging["published"] > hanging["blocked_at"] + 1
                        ):
                            done.set()
                except BackpressureError as exc:
                    hanging["error"] = str(exc)
                    done.set()

            threading.Thread(target=publish_until_freed, daemon=True).start()
            limit = int(words[2])

            def held_by_credit(s: Any, limit: int = limit) -> bool:
                # The queue is full and stalled by a peer's credit (not only
                # the bridge's own backlog): the hold stays up until it moves.
                return s.publishers_held >= 1 and bool(s.lagging_peers) and s.send_queued >= limit

            ok = bridge.wait(held_by_credit, WAIT)
            hanging["blocked_at"] = hanging["published"]
            say("hanging" if ok else "not-hanging")
        elif command == "freed":
            hanging["done"].wait(WAIT)
            say(
                "freed "
                + json.dumps(
                    {
                        "published": hanging["published"],
                        "blocked_at": hanging["blocked_at"],
                        "error": hanging["error"],
                    }
                )
            )
        elif command == "count":
            want = int(words[1])
            with checker.cond:
                checker.cond.wait_for(lambda w=want: checker.count >= w, WAIT)
            say("count " + json.dumps(checker.figures()))
        elif command == "lagging":
            with lagged:
                lagged.wait_for(lambda: bool(lagging), WAIT)
                say("lagging " + json.dumps(lagging))
        elif command == "release":
            checker.gate.set()
            say("released")
        elif command == "stats":
            stats = asdict(bridge.statistics())
            stats.pop("counters", None)
            stats["memory"] = memory()
            stats["start_memory"] = start_memory
            stats["lagging_events"] = list(lagging)
            stats["handler"] = checker.figures()
            stats["jumps"] = checker.jumps
            stats["rejected"] = bus.metrics().rejected
            stats["subscription_dropped"] = bus.metrics().dropped
            say("stats " + json.dumps(stats))
        elif command == "close":
            checker.gate.set()
            bus.close(WAIT)
            say("closed")
            return


if __name__ == "__main__":
    main()
