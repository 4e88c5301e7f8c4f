"""``python -m tests._close_interrupt_child DIR``: a Ctrl-C lands in ``close()``; close again.

A persistent node bus (journal in ``DIR/j``, listening on ``ipc://DIR/n.sock``)
has a handler still running when ``close()`` begins; a real SIGINT lands
while ``close()`` waits for it.  Then ``close()`` is called again.  Prints
one JSON line: whether the first was interrupted with the bus marked
closed, the bus's threads still alive after the second, and whether the
journal and the address can be taken again at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from actors import EventBus, EventConfig, NodeConfig
from tests._support import WAIT, wait_for


def main(folder: str) -> None:
    config = EventConfig(persistence_path=os.path.join(folder, "j"))
    listen = f"ipc://{folder}/n.sock"
    bus = EventBus(config, node=NodeConfig(name="n", listen=listen))
    running, gate = threading.Event(), threading.Event()

    def slow(event: object) -> None:
        running.set()
        gate.wait(WAIT)

    bus.subscribe("a.*", slow)
    bus.publish("a.b", 1).get(timeout=WAIT)
    assert running.wait(WAIT)

    def interrupt() -> None:
        wait_for(lambda: bus.closed)  # close() has begun, and waits for the handler
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    interrupted = False
    try:
        bus.close()
    except KeyboardInterrupt:
        interrupted = bus.closed
    gate.set()
    bus.close(timeout=WAIT)
    alive = [t.name for t in threading.enumerate() if t.name.startswith(("bus-", "journal"))]
    again = EventBus(config, node=NodeConfig(name="n", listen=listen))  # raises if still held
    again.close(timeout=WAIT)
    print(json.dumps({"interrupted": interrupted, "alive": alive, "reopened": True}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
