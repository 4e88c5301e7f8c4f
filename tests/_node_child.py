"""Child process for the cluster tests (``tests/test_cluster.py``): one bus, one node.

Run as ``python tests/_node_child.py CONFIG_JSON``.  CONFIG_JSON holds ``name``,
``listen``, ``peers``, optional ``path`` (a persistent bus), ``pattern`` and
``durable`` and ``capacity`` (a subscription whose handler prints ``got
ORIGIN TYPE DATA``),
optional ``durability`` (of the journal),
optional ``publish_first`` (``[TYPE, FROM, TO]``: published, and acknowledged,
before ``ready``), optional ``keys`` (``public``, ``secret``, ``authorized``, ``peer_keys``) and
``node`` (extra ``NodeConfig`` fields).  It prints ``ready ENDPOINT`` once
started, then runs commands read from stdin, one per line, each answered by
one line (every line is flushed at once):

``sync NAME,NAME``     wait until those nodes acknowledged our subscriptions -> ``synced``
``peers NAME,NAME``    wait until those nodes are heard from -> ``peers``
``gone NAME``          wait until that node is declared dead -> ``gone``
``publish TYPE FROM TO``  publish events ``FROM..TO-1`` (data = the number) -> ``published``
``publish TYPE FROM TO acked``  the same, answered once acknowledged (not flushed) -> ``acked``
``subscribe PATTERN [DURABLE]``  subscribe the printing handler now -> ``subscribed``
``sized TYPE N,N``     publish one event of N characters each -> ``sized ok,too-large``
                       (a received string over 100 characters is printed as ``"len:N"``)
``pause`` / ``resume`` block / release the bridge's I/O thread -> ``paused`` / ``resumed``
``stall`` / ``unstall``  block / release the journal's thread (a publish's done-callback runs
                       there): reads wait, heartbeats go on -> ``stalled`` / ``unstalled``
``refused``            wait until a CURVE client was refused -> ``refused``
``stats``              -> ``stats JSON`` (the bridge's statistics)
``journal TYPE``       -> ``journal JSON`` (the data of the journaled events of TYPE, in order)
``close``              close the bus -> ``closed``, then exit
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import asdict

from actors import (
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    EventTooLargeError,
    NodeConfig,
    PersistentEventBus,
)

WAIT = 60.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    # Warnings reach stderr, which pytest shows for a failed test.
    logging.basicConfig(level=os.environ.get("NODE_CHILD_LOG", "WARNING"), stream=sys.stderr)
    cfg = json.loads(sys.argv[1])
    keys = cfg.get("keys") or {}
    node = NodeConfig(
        name=cfg["name"],
        listen=cfg.get("listen"),
        peers=tuple(cfg.get("peers", ())),
        curve_public_key=keys["public"].encode() if keys else None,
        curve_secret_key=keys["secret"].encode() if keys else None,
        authorized_keys=tuple(k.encode() for k in keys.get("authorized", ())),
        peer_public_keys={ep: k.encode() for ep, k in keys.get("peer_keys", {}).items()},
        **cfg.get("node", {}),
    )
    bus: EventBus
    if cfg.get("path"):
        config = EventConfig(
            persistence_path=cfg["path"], durability=cfg.get("durability", "async")
        )
        bus = PersistentEventBus(config, node=node)
    else:
        bus = EventBus(node=node)
    bridge = bus.node
    assert bridge is not None

    def handler(event: Event) -> None:
        data = event.data
        if isinstance(data, str) and len(data) > 100:
            data = f"len:{len(data)}"  # big events are reported by size
        say(f"got {event.origin} {event.event_type} {json.dumps(data)}")

    if cfg.get("pattern"):
        bus.subscribe(
            cfg["pattern"], handler, durable=cfg.get("durable"), capacity=cfg.get("capacity")
        )
    if cfg.get("publish_first"):
        # Published the moment the bus is up, before any peer can have subscribed.
        kind, start, stop = cfg["publish_first"]
        for future in bus.publish_many(
            [Event(event_type=kind, data=i) for i in range(start, stop)]
        ):
            future.get(timeout=WAIT)
    say(f"ready {bridge.endpoints['request']}")
    gate = threading.Event()
    journal_gate = threading.Event()
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command = words[0]
        if command == "sync":
            ok = bridge.wait_for_peers(words[1].split(","), WAIT)
            say("synced" if ok else "not-synced")
        elif command == "peers":
            wanted = set(words[1].split(","))
            ok = bridge.wait(lambda s, w=wanted: w <= set(s.peers_alive), WAIT)
            say("peers" if ok else "no-peers")
        elif command == "publish":
            start, stop = int(words[2]), int(words[3])
            futures = bus.publish_many(
                [Event(event_type=words[1], data=i) for i in range(start, stop)]
            )
            for future in futures:
                future.get(timeout=WAIT)
            if words[4:] == ["acked"]:
                say("acked")  # acknowledged (journaled), not flushed: the bridge may be paused
                continue
            bus.flush(WAIT)
            say("published")
        elif command == "subscribe":
            bus.subscribe(words[1], handler, durable=words[2] if len(words) > 2 else None)
            say("subscribed")
        elif command == "sized":
            outcomes = []
            futures = []
            for size in words[2].split(","):
                try:
                    futures.append(bus.publish(words[1], "x" * int(size)))
                    outcomes.append("ok")
                except EventTooLargeError:
                    outcomes.append("too-large")
            for future in futures:
                future.get(timeout=WAIT)
            bus.flush(WAIT)
            say("sized " + ",".join(outcomes))
        elif command == "gone":
            name = words[1]
            ok = bridge.wait(lambda s, n=name: n not in s.peers_alive, WAIT)
            say("gone" if ok else "not-gone")
        elif command == "pause":
            gate.clear()
            paused = threading.Event()

            def block(paused: threading.Event = paused) -> None:
                paused.set()
                gate.wait(WAIT)

            bridge.call_soon(block)
            paused.wait(WAIT)
            say("paused")
        elif command == "resume":
            gate.set()
            say("resumed")
        elif command == "stall":
            journal_gate.clear()
            stalled = threading.Event()

            def hold(_: object, stalled: threading.Event = stalled) -> None:
                stalled.set()
                journal_gate.wait(WAIT)

            bus.publish("stall.now", None).add_done_callback(hold)
            stalled.wait(WAIT)
            say("stalled")
        elif command == "unstall":
            journal_gate.set()
            say("unstalled")
        elif command == "refused":
            ok = bridge.wait(lambda s: s.auth_refused >= 1, WAIT)
            say("refused" if ok else "not-refused")
        elif command == "stats":
            stats = asdict(bridge.statistics())
            stats.pop("counters", None)
            say("stats " + json.dumps(stats))
        elif command == "journal":
            stored = bus.query(EventQuery(event_types=[words[1]]))
            say("journal " + json.dumps([e.data for e in stored]))
        elif command == "close":
            gate.set()
            journal_gate.set()
            bus.close(WAIT)
            say("closed")
            return


if __name__ == "__main__":
    main()
