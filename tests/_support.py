"""Handlers and constants the behaviour tests share."""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from actors import Event, EventBus

WAIT = 10.0
"""Upper bound for every wait in a test: reaching it means the test failed."""


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Return True once ``condition()`` holds, False if it still does not after ``timeout``.

    For states that only a clock can bring about (the dispatcher's watchdog
    notices a blocked handler after ``blocking_threshold``): the condition is
    what the test waits for, re-checked every few milliseconds, never a
    guessed duration.
    """
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.005)
    return True


class Collector:
    """A handler that records events and can signal once it saw ``expected`` of them."""

    def __init__(self, expected: int | None = None) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.expected = expected
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if self.expected is not None and len(self.events) >= self.expected:
                self.done.set()

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e.event_type for e in self.events]


class Gate:
    """A handler that blocks inside each event until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.entered.set()
        if not self.release.wait(WAIT):
            raise AssertionError("the test never released the gate")
        self.events.append(event)

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]


class SpanSink:
    """An OpenTelemetry span exporter that keeps finished spans and wakes waiters.

    Used with ``SimpleSpanProcessor``, so a span is here once it has ended.
    """

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.cond = threading.Condition()

    def export(self, spans: Any) -> Any:
        with self.cond:
            self.spans.extend(spans)
            self.cond.notify_all()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Any]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.spans) >= count, timeout):
                raise AssertionError(f"{len(self.spans)} spans after {timeout}s, not {count}")
            return list(self.spans)


def tracer_provider() -> tuple[Any, SpanSink]:
    """Return an SDK tracer provider exporting every span to a new ``SpanSink``."""
    sink = SpanSink()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(sink))
    return provider, sink


def span_dict(span: Any) -> dict[str, Any]:
    """Return a finished SDK span as plain JSON-able data."""
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": span.context.trace_id,
        "span_id": span.context.span_id,
        "parent": parent.span_id if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "start": span.start_time,
        "end": span.end_time,
        "events": [e.name for e in span.events],
    }


JOURNAL_CHILD = Path(__file__).with_name("_journal_child.py")
ROOT = Path(__file__).resolve().parent.parent


class Child:
    """A child process running ``_journal_child.py``, read line by line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / f"child-{uuid.uuid4().hex[:8]}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(JOURNAL_CHILD), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                cwd=ROOT,
            )

    def line(self) -> str:
        """Return the next line; fail (with the child's stderr) if it ended instead."""
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            self.proc.wait(timeout=30)
            pytest.fail(f"child ended (rc={self.proc.returncode}):\n{self.stderr()}")
        return text.rstrip("\n")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def kill9(self) -> list[str]:
        """SIGKILL the child; return the complete lines it printed before dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        return self.rest()

    def rest(self) -> list[str]:
        assert self.proc.stdout is not None
        tail = self.proc.stdout.read()
        # A line cut by the kill is not an acknowledgement the parent could have seen.
        return tail.split("\n")[:-1]

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def _stopped(pid: int) -> bool:
    """Return whether every thread of process ``pid`` is stopped (``/proc``: state T)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        states = []
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/stat", encoding="ascii") as f:
                states.append(f.read().rpartition(") ")[2][:1])
    except FileNotFoundError:  # a thread ended meanwhile: look again
        return False
    return all(state in "Tt" for state in states)


def pause(proc: subprocess.Popen[Any]) -> None:
    """Send ``proc`` SIGSTOP and return once every one of its threads has stopped.

    ``kill`` returns when the signal is queued, not when the process stops: a
    thread running on the other CPU (or on a virtual CPU the host has not
    run yet) stops only when it next enters the kernel, measured at up to
    0.2 s on a loaded machine.  A test that pauses a node and then sends it a
    request must not have that request handled in the meantime.
    """
    os.kill(proc.pid, signal.SIGSTOP)
    assert wait_for(lambda: _stopped(proc.pid)), f"process {proc.pid} did not stop"


def reaped(wait: float = 60.0) -> Iterator[list[Any]]:
    """A fixture's body: yield a list for the children a test starts; kill what still runs.

    A child the test left paused (SIGSTOP) is continued first, then killed.
    """
    started: list[Any] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGCONT)
            child.proc.kill()
            child.proc.wait(wait)


class LineChild:
    """A child process given a JSON config, talked to in lines (stdin commands, stdout answers).

    A reader thread hands each line to ``on_line``, which queues it for
    ``expect`` unless a subclass takes it (a node's ``got ...`` lines).  Every
    wait is bounded by ``wait`` seconds.
    """

    def __init__(
        self, script: Path | str, config: dict[str, Any], *, wait: float, name: str
    ) -> None:
        self.name = name
        self.wait = wait
        self.proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.on_line(raw.rstrip("\n"))
        self.lines.put("<eof>")

    def on_line(self, line: str) -> None:
        self.lines.put(line)

    def expect(self, prefix: str) -> str:
        line = self.lines.get(timeout=self.wait)
        assert line.startswith(prefix), f"{self.name}: expected {prefix!r}, got {line!r}"
        return line

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str, answer: str) -> str:
        self.send(command)
        return self.expect(answer)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(self.wait)

    def close(self) -> None:
        """Ask the child to close (it answers ``closed``) and wait for it to exit."""
        if self.proc.poll() is None:
            self.ask("close", "closed")
            self.proc.wait(self.wait)


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``call()`` on a thread; its result or exception lands in the returned list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # the caller checks the outcome
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def finished(thread: threading.Thread, outcome: list[Any], timeout: float = 30.0) -> Any:
    """Return what the call of ``in_background`` gave (a result or an exception)."""
    thread.join(timeout)
    assert not thread.is_alive(), "the call did not return within its timeout"
    assert len(outcome) == 1
    return outcome[0]


def flip_byte(file: Path, offset: int) -> None:
    """Invert the byte at ``offset`` of ``file`` in place (damage for the journal tests)."""
    with file.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def publish_all(bus: EventBus, events: list[Event]) -> list[Event]:
    return [f.get(timeout=30) for f in bus.publish_many(events)]


class Recorder:
    """A handler that records events and lets the test wait for one of them.

    ``flush()`` does not wait for a catch-up subscription that has not joined
    live delivery yet (see ``test_flush_waits_for_a_catching_up_subscription``),
    so tests of catch-up wait for a known last event instead.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]

    @property
    def sequences(self) -> list[int]:
        return [e.sequence or 0 for e in self.events]

    def wait_for(self, last: Event, timeout: float = 30.0) -> None:
        """Wait until ``last`` (or anything after it) was handled."""
        target = last.sequence or 0
        with self._cond:
            reached = self._cond.wait_for(
                lambda: bool(self.events) and (self.events[-1].sequence or 0) >= target, timeout
            )
        assert reached, f"event {target} never reached the handler"


# -- the topic grammar's reference matcher and strategies (test_patterns, test_trie) --------


def expand_braces(glob: str) -> list[str]:
    """Expand the first {a,b} group, recursively (no nesting, no commas in classes)."""
    found = re.search(r"\{([^{}]*)\}", glob)
    if found is None:
        return [glob]
    head, tail = glob[: found.start()], glob[found.end() :]
    return [
        variant
        for alternative in found.group(1).split(",")
        for variant in expand_braces(head + alternative + tail)
    ]


def reference_matches(pattern: str, event_type: str) -> bool:
    """Match segment by segment, obviously: recursion for * and **, fnmatch for globs."""
    wanted = pattern.split(".")
    parts = event_type.split(".")
    if event_type.startswith("$") and wanted[0][0] in "*?[{":
        return False

    @cache
    def match_from(i: int, j: int) -> bool:
        if i == len(wanted):
            return j == len(parts)
        if wanted[i] == "**":
            return any(match_from(i + 1, k) for k in range(j, len(parts) + 1))
        if j == len(parts):
            return False
        if wanted[i] == "*":
            return match_from(i + 1, j + 1)
        hit = any(fnmatchcase(parts[j], variant) for variant in expand_braces(wanted[i]))
        return hit and match_from(i + 1, j + 1)

    return match_from(0, 0)


TYPE_SEGMENTS = ["a", "b", "ab", "ba", "$", "$a", "a$b"]
UNIVERSE = [
    ".".join(parts)
    for length in range(1, 4)
    for parts in itertools.product(TYPE_SEGMENTS, repeat=length)
]

type_segment = st.text(alphabet="ab$", min_size=1, max_size=3)
event_types = st.lists(type_segment, min_size=1, max_size=5).map(".".join)

glob_piece = st.sampled_from(["a", "b", "$", "?", "*", "[ab]", "[!a]", "[a-b]", "[$a]"])
alternative = st.lists(glob_piece, max_size=2).map("".join)
brace_group = (
    st.lists(alternative, min_size=1, max_size=3)
    .filter(lambda alts: alts != [""])
    .map(lambda alts: "{" + ",".join(alts) + "}")
)


def _collapse_stars(segment: str) -> str:
    while "**" in segment:
        segment = segment.replace("**", "*")
    return segment


glob_segment = st.lists(st.one_of(glob_piece, brace_group), min_size=1, max_size=4).map(
    lambda pieces: _collapse_stars("".join(pieces))
)
pattern_segment = st.one_of(type_segment, st.just("*"), st.just("**"), glob_segment)
patterns = st.lists(pattern_segment, min_size=1, max_size=5).map(".".join)


def use_off_loop_threads(executor: ThreadPoolExecutor | None) -> None:
    """Run the async bus's off-loop calls (waiting publishes) on ``executor`` in this test.

    None: on the bus's own threads again (made anew on their next use).

    As ``loop.set_default_executor`` did before they left the default
    executor: a test that needs one thread, or to count the jobs, chooses
    it.  The autouse fixture in ``conftest`` gives the bus's own back after
    the test.
    """
    from actors import _async_offloop  # noqa: PLC0415

    _async_offloop._pool = executor  # noqa: SLF001


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python process of its own (state a process holds once: pykka's
    registry, OpenTelemetry's global provider, an import made impossible)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
