"""``python -m tests._ctor_interrupt_child DIR``: Ctrl-C inside ``EventBus(config)``.

Real SIGINTs are sent at points spread over the time an open takes; for
each that lands inside the constructor, the journal is opened again while
the ``KeyboardInterrupt`` (and its traceback) is still held.  Prints one
JSON line: how many landed inside, and how many reopens found it locked.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from actors import EventBus, EventConfig, JournalLockedError


def main(folder: str) -> None:
    # A shell that starts a command in the background has it ignore SIGINT,
    # which Python then leaves ignored: the interrupt is the point here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config = EventConfig(persistence_path=os.path.join(folder, "j"))
    with EventBus(config) as bus:
        for i in range(20_000):
            bus.publish("a.b", i)
    started = time.monotonic()
    EventBus(config).close()
    takes = time.monotonic() - started
    inside = locked = 0
    for k in range(60):
        timer = threading.Timer(
            takes * ((k % 30) + 0.5) / 30, lambda: os.kill(os.getpid(), signal.SIGINT)
        )
        bus = None
        try:
            timer.start()
            bus = EventBus(config)
            timer.join()  # the interrupt lands after the open, if not inside it
        except KeyboardInterrupt:
            if bus is None:
                inside += 1
                try:
                    EventBus(config).close()  # the interrupt is still held here
                except JournalLockedError:
                    locked += 1
        timer.cancel()
        if bus is not None:
            bus.close()
    print(json.dumps({"inside": inside, "locked": locked}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
