"""What the command-line tests share: running ``python -m actors`` and reading its lines.

The parent synchronises on the children's output lines only.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from actors import Event, EventConfig, PersistentEventBus

WAIT = 60.0
CLI = [sys.executable, "-m", "actors"]


def cli(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end; return its status and output."""
    return subprocess.run(
        [*CLI, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT,
        input=input,
        env={**os.environ, **(env or {})},
    )


def cli_redirected(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one command with its stdout redirected by the shell (``>&-``, ``>/dev/full``)."""
    return subprocess.run(
        ["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", *CLI, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def silent_endpoint() -> str:
    """Return a tcp endpoint on 127.0.0.1 where nothing listens (a port just freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the only stderr line of a finished command, checking it is an ``Error:`` line."""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: "), line
    return line


class Running:
    """A command that runs on; its stdout and stderr lines arrive on queues."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: IO[str], lines: queue.Queue[str]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put("<eof>")

    def line(self, lines: queue.Queue[str] | None = None) -> str:
        """Return the next stdout line (or of ``lines``), waiting for it."""
        return (lines or self.out).get(timeout=WAIT)

    def finish(self) -> int:
        return self.proc.wait(WAIT)

    def interrupt(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``; return the exit status once the command ended."""
        self.proc.send_signal(signum)
        return self.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@contextmanager
def serving(*args: str) -> Iterator[tuple[Running, str]]:
    """Run ``serve ARGS`` on an ephemeral port; yield it and its request endpoint."""
    node = Running("serve", "--listen", "tcp://127.0.0.1:0", *args)
    try:
        lines = dict(node.line().split(" ", 1) for _ in range(4))
        assert lines["publish"].startswith("tcp://127.0.0.1:"), lines
        yield node, lines["request"]
    finally:
        node.kill()


def make_journal(path: Path) -> uuid.UUID:
    """Write a closed journal: one workflow of three causally linked events, plus noise.

    Returns the workflow's correlation id.
    """
    cid = uuid.uuid4()
    with PersistentEventBus(EventConfig(persistence_path=str(path)), name="origin") as bus:
        start = Event(event_type="workflow.start", data={"job": "x"}, correlation_id=cid)
        step = Event(event_type="workflow.step", correlation_id=cid, causation_id=start.id)
        done = Event(event_type="workflow.done", correlation_id=cid, causation_id=step.id)
        bus.publish_many([start, step, Event(event_type="user.login", source="web"), done])
        bus.flush(WAIT)
    return cid
