"""Child process for ``tests/test_requests_faults.py``: one node that answers (or forges) replies.

Run as ``python tests/_requests_fault_child.py CONFIG_JSON``.  CONFIG_JSON holds
``name``, ``listen``, ``peers``, ``node`` (extra ``NodeConfig`` fields) and
either ``pattern`` (answer requests) or ``forge`` (a request type to forge
replies to).

Answering (``pattern``): the reply is ``{"node": NAME, "echo": DATA}``; a
request whose data is ``{"hold": TAG}`` prints ``held ID TAG`` and waits
until the ``release`` command before it answers; ``{"big": N}`` answers with
a string of N characters (too large for a small ``max_frame_bytes``).  Each
reply this node publishes is printed as ``replied REQUEST_ID`` once the bus
routed it (a local subscription to the replies).

Forging (``forge``): for every request of that type the node sees, it
publishes a ``<type>.reply`` with ``causation_id`` = the request's id,
``source`` = ``"b"`` and data ``{"forged": NAME}``, and prints ``forged ID``.

Prints ``ready ENDPOINT``, then reads commands, one line each:

``sync NAME,NAME``  wait until those nodes acknowledged our subscriptions -> ``synced``
``release``         let every held request answer -> ``released``
``close``           close the bus -> ``closed``, then exit
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from actors import Event, EventBus, NodeConfig

WAIT = 60.0
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    name = cfg["name"]
    bus = EventBus(
        node=NodeConfig(
            name=name,
            listen=cfg.get("listen"),
            peers=tuple(cfg.get("peers", ())),
            **cfg.get("node", {}),
        )
    )
    gate = threading.Event()

    if "pattern" in cfg:

        def answer(event: Event) -> Any:
            data = event.data
            if isinstance(data, dict) and "hold" in data:
                say(f"held {event.id} {data['hold']}")
                if not gate.wait(WAIT):
                    raise RuntimeError("never released")
            if isinstance(data, dict) and "big" in data:
                return "x" * int(str(data["big"]))
            return {"node": name, "echo": data}

        bus.respond(cfg["pattern"], answer, source=name, dedicated_thread=True)
        bus.subscribe(
            cfg["pattern"] + ".{reply,error}",
            lambda e: say(f"replied {e.causation_id}") if e.origin == name else None,
        )
    else:
        forged_type = cfg["forge"]

        def forge(event: Event) -> None:
            if event.causation_id is not None and event.event_type.endswith((".reply", ".error")):
                return
            bus.publish(
                Event(
                    event_type=f"{forged_type}.reply",
                    data={"forged": name},
                    causation_id=event.id,
                    correlation_id=event.correlation_id,
                    target=event.source,
                    source="b",
                )
            ).get(WAIT)
            say(f"forged {event.id}")

        bus.subscribe(forged_type, forge)

    say(f"ready {bus.endpoints.get('request')}")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "sync":
            say("synced" if bus.wait_for_peers(words[1].split(","), WAIT) else "not-synced")
        elif words[0] == "release":
            gate.set()
            say("released")
        elif words[0] == "close":
            bus.close(WAIT)
            say("closed")
            return


if __name__ == "__main__":
    main()
