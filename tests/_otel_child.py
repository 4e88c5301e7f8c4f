"""Child process for ``tests/test_otel.py``: node ``b`` of a two-node workflow, instrumented.

Run as ``python tests/_otel_child.py``.  Listens on an ephemeral port and
prints ``ready ENDPOINT``.  Handles ``wf.start`` by publishing ``wf.step``
(caused by it), and ``wf.done`` by finishing.  Commands on stdin, one line each:

``sync NAME``  wait until NAME acknowledged our subscriptions -> ``synced``
``spans N``    wait until N spans ended -> ``spans JSON`` (a list, see ``span_dict``)
``close``      close the bus -> ``closed``, then exit
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import span_dict, tracer_provider

from actors import Event, EventBus, NodeConfig
from actors.otel import instrument

WAIT = 60.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    provider, sink = tracer_provider()
    bus = EventBus(node=NodeConfig(name="b", listen="tcp://127.0.0.1:*"))
    instrument(bus, provider)

    def start(event: Event) -> None:
        bus.publish("wf.step", {"step": 2}, source="b", target="a")

    bus.subscribe("wf.start", start)
    bus.subscribe("wf.done", lambda event: None)
    say(f"ready {bus.endpoints['request']}")
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "sync":
            ok = bus.wait_for_peers([arg], WAIT)
            say("synced" if ok else "not synced")
        elif cmd == "spans":
            say("spans " + json.dumps([span_dict(s) for s in sink.wait_for(int(arg), WAIT)]))
        elif cmd == "close":
            bus.close(timeout=WAIT)
            say("closed")
            return


if __name__ == "__main__":
    main()
