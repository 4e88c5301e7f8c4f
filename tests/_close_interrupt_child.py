"""``python -m tests._close_interrupt_child DIR MODE``: a Ctrl-C lands in ``close()``; close again.

A persistent node bus (journal in ``DIR/j``, listening on ``ipc://DIR/n.sock``)
has a handler still running when ``close()`` begins; a real SIGINT lands
while ``close()`` waits: for the flush (``flush``, ``handler``, ``async``) or
for the stop, once the router has stopped (``stop``).  Then the bus is
closed again: by ``close()``, after the released handler itself called
``close()`` (``handler``), or by ``AsyncEventBus.aclose()`` (``async``).
Prints one JSON line: whether the first was interrupted with the bus marked
closed, the bus's threads still alive, and whether the journal and the
address can be taken again at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading

from actors import AsyncEventBus, EventBus, EventConfig, NodeConfig
from tests._support import WAIT, wait_for


def main(folder: str, mode: str) -> None:
    # A shell that starts a command in the background has it ignore SIGINT,
    # which Python then leaves ignored: the interrupt is the point here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config = EventConfig(persistence_path=os.path.join(folder, "j"))
    listen = f"ipc://{folder}/n.sock"
    bus = EventBus(config, node=NodeConfig(name="n", listen=listen))
    running, gate, closed_inside = threading.Event(), threading.Event(), threading.Event()

    def slow(event: object) -> None:
        running.set()
        gate.wait(WAIT if mode != "stop" else 0)
        if mode == "handler":
            bus.close()  # from inside: begins the stop, cannot wait for it
            closed_inside.set()
            threading.Event().wait(2)  # and runs on a while: the next close waits for it

    bus.subscribe("a.*", slow)
    bus.publish("a.b", 1).get(timeout=WAIT)
    assert running.wait(WAIT)
    router = bus._router  # noqa: SLF001 - the test watches the stop get under way

    def interrupt() -> None:
        if mode == "stop":
            wait_for(router.actor_stopped.is_set)  # close() waits for the stop
        else:
            wait_for(lambda: bus.closed)  # close() has begun, and waits for the handler
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    interrupted = False
    try:
        bus.close()
        threading.Event().wait(WAIT)  # an interrupt after close returned lands here
    except KeyboardInterrupt:
        interrupted = bus.closed
    gate.set()
    if mode == "handler":
        assert closed_inside.wait(WAIT)
    if mode == "async":
        asyncio.run(AsyncEventBus(bus=bus).aclose())
    else:
        bus.close(timeout=WAIT)
    alive = [t.name for t in threading.enumerate() if t.name.startswith(("bus-", "journal"))]
    again = EventBus(config, node=NodeConfig(name="n", listen=listen))  # raises if still held
    again.close(timeout=WAIT)
    print(json.dumps({"interrupted": interrupted, "alive": alive, "reopened": True}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
