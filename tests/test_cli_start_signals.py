"""Ctrl-C while a command's bus starts: taken once the bus is built, and the bus closes.

A ``KeyboardInterrupt`` taken in the middle of a bus's start (inside a
thread's start, say) could leave threads that nothing stops; a signal the
kernel hands to one of the bus's threads could leave the main thread waiting
out a long wait.  ``running`` holds SIGINT and SIGTERM while the bus starts
and closes, and the bus's threads keep them blocked.  Checked in a process of
its own: the test runner's threads would take the signal otherwise.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests._support import WAIT

CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    from actors import EventBus, EventConfig
    from actors.cli.connect import running

    stages = []

    def blocked(tid):  # whether SIGINT and SIGTERM are in the thread's blocked set
        with open(f"/proc/self/task/{tid}/status") as f:
            mask = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        return all(mask >> (s - 1) & 1 for s in (signal.SIGINT, signal.SIGTERM))

    def start():
        stages.append("building")
        os.kill(os.getpid(), signal.{sig})  # taken only once the bus is built
        bus = EventBus(EventConfig(threads=2))
        stages.append("built")
        return bus

    if "{sig}" == "SIGTERM":  # as the CLI does: SIGTERM stops a command as Ctrl-C does
        def _terminated(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, _terminated)
    else:  # a runner started in the background (SIGINT ignored) passes SIG_IGN on to us
        signal.signal(signal.SIGINT, signal.default_int_handler)
    bus = None
    try:
        with running(start) as bus:
            stages.append("body")  # not reached: the signal is taken first
    except KeyboardInterrupt:
        stages.append("interrupted")
    main = threading.main_thread().native_id
    others = [t for t in os.listdir("/proc/self/task") if int(t) != main]
    print(" ".join(stages))
    print("closed" if bus is None else "closed" if bus.closed else "open")
    print("bus threads left:", sorted(t.name for t in threading.enumerate()
                                     if t.name.startswith("bus-") and t.is_alive()))
    print("main unblocked:", not blocked(main))
    sys.stdout.flush()
    """
)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_bus_starts_is_taken_after_it_is_built_and_the_bus_closes(
    sig: str,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.replace("{sig}", sig)],
        capture_output=True,
        text=True,
        timeout=WAIT * 6,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "building built interrupted"
    assert lines[1] == "closed"
    assert lines[2] == "bus threads left: []"
    assert lines[3] == "main unblocked: True"


CHILD_THREADS = textwrap.dedent(
    """
    import os, signal, threading
    from actors import EventBus, EventConfig
    from actors.cli.connect import running

    def blocked(tid):
        with open(f"/proc/self/task/{tid}/status") as f:
            mask = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        return all(mask >> (s - 1) & 1 for s in (signal.SIGINT, signal.SIGTERM))

    main = threading.main_thread().native_id
    with running(lambda: EventBus(EventConfig(threads=2))) as bus:
        bus.publish("a.b").get(timeout=10)
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        print(len(tids) - 1, sum(blocked(t) for t in tids if t != main), not blocked(main))
    """
)


def test_the_threads_of_a_command_bus_leave_sigint_and_sigterm_to_the_main_thread() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD_THREADS],
        capture_output=True,
        text=True,
        timeout=WAIT * 6,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    others, blocking, main_free = done.stdout.split()
    assert int(others) >= 3  # the pool's threads, its watchdog, the system thread
    assert blocking == others
    assert main_free == "True"
