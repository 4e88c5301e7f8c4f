"""Child process for ``tests/test_requests_cluster.py``: one node answering requests.

Run as ``python tests/_reply_child.py CONFIG_JSON``.  CONFIG_JSON holds
``name``, ``listen``, ``peers`` and ``pattern``: the node responds to
``pattern`` with ``{"node": NAME, "echo": DATA}``, and raises
``LookupError(DATA)`` when the data is ``"boom"``.  It prints ``ready
ENDPOINT``, then answers commands read from stdin, one line each:

``sync NAME,NAME``  wait until those nodes acknowledged our subscriptions -> ``synced``
``close``           close the bus -> ``closed``, then exit
"""

from __future__ import annotations

import json
import sys
from typing import Any

from actors import Event, EventBus, NodeConfig

WAIT = 60.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    name = cfg["name"]
    bus = EventBus(
        node=NodeConfig(name=name, listen=cfg.get("listen"), peers=tuple(cfg.get("peers", ())))
    )

    def answer(event: Event) -> Any:
        if event.data == "boom":
            raise LookupError(event.data)
        return {"node": name, "echo": event.data}

    bus.respond(cfg["pattern"], answer, source=name)
    say(f"ready {bus.endpoints.get('request')}")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "sync":
            say("synced" if bus.wait_for_peers(words[1].split(","), WAIT) else "not-synced")
        elif words[0] == "close":
            bus.close(WAIT)
            say("closed")
            return


if __name__ == "__main__":
    main()
