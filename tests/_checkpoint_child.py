"""Child process for ``tests/test_cluster_restarts.py``: a durable subscription's checkpoint.

Run as ``python tests/_checkpoint_child.py PATH MODE``; a persistent bus on
journal ``PATH`` with a durable subscription ``w`` on ``job.*`` whose
handler prints ``got N``.

``crash``: publish ``job.run`` 0..99 in one batch while a filter (run by the
router, on its turn) holds the router at event 60, after it handed events
0..59 to ``w``.  The filter looks at the journal (a read-only open) until
it holds ``w``'s checkpoint past its last record, or for ``HOLD`` seconds
if that never happens, prints ``ahead`` or ``in-order``, then kills the
process (kill -9).

``resume``: publish ``job.run`` 100..199 (acknowledged), flush, print
``done``, close.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from actors import Event, EventConfig, PersistentEventBus
from actors._journal.rocks import RocksStorage

HOLD = 2.0
WAIT = 60.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def checkpoint_ahead(path: str) -> bool:
    """Return whether the journal holds ``w``'s checkpoint past its last record."""
    storage = RocksStorage(path, read_only=True)
    try:
        checkpoint = storage.get_checkpoint("sub:w")
        return checkpoint is not None and checkpoint > storage.last_sequence()
    finally:
        storage.close()


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    bus = PersistentEventBus(EventConfig(persistence_path=path))
    handled = threading.Event()

    def handler(event: Event) -> None:
        say(f"got {event.data}")
        if event.data == 59:
            handled.set()

    # REJECT: the router offers such a lane each event as it routes it (a
    # dropping lane gets a turn's events together at the end of the turn),
    # so ``w`` can handle events the router has not handed to the journal.
    bus.subscribe("job.*", handler, durable="w", overflow="reject")
    if mode == "crash":

        def hold(event: Event) -> bool:
            if event.data == 60:
                # ``w`` has events 0..59 (the router offered them before this
                # one, REJECT); once it handled them its checkpoint is on its way.
                assert handled.wait(WAIT), "w never handled event 59"
                # Each look is a read-only open of the journal (milliseconds
                # of I/O): the loop paces itself, for at most HOLD seconds.
                deadline = time.monotonic() + HOLD
                ahead = checkpoint_ahead(path)
                while not ahead and time.monotonic() < deadline:
                    ahead = checkpoint_ahead(path)
                say("ahead" if ahead else "in-order")
                os.kill(os.getpid(), signal.SIGKILL)
            return True

        bus.subscribe("job.*", lambda e: None, filter=hold)
        bus.publish_many([Event(event_type="job.run", data=i) for i in range(100)])
        # Cannot complete while the filter holds the router: the filter
        # kills the process first.
        bus.flush(WAIT)
        say("flushed")  # only if the filter never ran
        return
    for future in bus.publish_many([Event(event_type="job.run", data=i) for i in range(100, 200)]):
        future.get(timeout=WAIT)
    bus.flush(WAIT)
    say("done")
    bus.close(WAIT)


if __name__ == "__main__":
    main()
