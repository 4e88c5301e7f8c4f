"""Child process of ``test_blocking``: close a bus while a handler is blocked.

Prints ``blocked`` once the handler is stuck, then closes with the timeout
given as the first argument and prints a JSON report: what the other
subscription received and what ``close`` said it abandoned.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading

from actors import Event, EventBus

release = threading.Event()
entered = threading.Event()


def stuck(event: Event) -> None:
    entered.set()
    release.wait(60)  # an LLM call that does not come back in time


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    timeout = float(sys.argv[1])
    received: list[Event] = []
    bus = EventBus()
    bus.subscribe("job.**", stuck)
    bus.subscribe("job.**", received.append)
    bus.publish("job.first").get(timeout=10)
    if not entered.wait(10):
        raise SystemExit("the handler never ran")
    for i in range(100):
        bus.publish("job.step", i).get(timeout=10)
    print("blocked", flush=True)
    abandoned = bus.close(timeout=timeout)
    print(
        json.dumps(
            {
                "other_received": len(received),
                "abandoned": [dataclasses.asdict(s) for s in abandoned],
            }
        ),
        flush=True,
    )
    release.set()


if __name__ == "__main__":
    main()
