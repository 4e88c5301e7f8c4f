"""What every command prints, and how it stops: one-line errors, event lines, signals."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn, TypeVar

import click

from actors._model.event import Event
from actors._model.trace import printable

T = TypeVar("T")

__all__ = [
    "OutputError",
    "block_signals",
    "by_interrupt",
    "emit",
    "ended_by_signal",
    "fail",
    "format_event",
    "json_line",
    "note",
    "quiet_stdout",
    "say",
    "get_until_signal",
    "signals_held",
    "stop_on_signals",
    "wait_for_signal",
    "wait_until",
]


def fail(message: str) -> NoReturn:
    """Stop the command: ``Error: MESSAGE`` on stderr, exit status 1."""
    raise click.ClickException(message)


class OutputError(OSError):
    """Standard output cannot be written: closed (``>&-``), a closed pipe, a full disk."""


def stdout_closed() -> OutputError:
    """Return the error for a process started with standard output closed (``sys.stdout`` None)."""
    return OutputError(errno.EBADF, "cannot write to standard output: it is closed")


def say(line: str) -> None:
    """Print one line on stdout and flush it (scripts wait for lines).

    A lone surrogate outside JSON (an event type, a source) is escaped
    (``\\ud800``): UTF-8 cannot carry it; so is any character the output's
    encoding lacks (``PYTHONIOENCODING=latin-1``).  Raises ``OutputError``
    if stdout cannot take it (the command ends with that one-line error).
    """
    stream = sys.stdout
    if stream is None:  # started with standard output closed
        raise stdout_closed()
    try:
        click.echo(_fit(line, stream))
        stream.flush()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputError(exc.errno, f"cannot write to standard output: {reason}") from exc


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what it holds is quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)


def note(line: str) -> None:
    """Print one line on stderr (status, progress), flushed."""
    click.echo(_fit(line, sys.stderr), err=True)
    sys.stderr.flush()


def _fit(line: str, stream: Any) -> str:
    """Return ``line`` with what ``stream``'s encoding cannot carry escaped (``\\u20ac``)."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        line.encode(encoding)
    except UnicodeEncodeError:
        return line.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: leave it to the stream
        return line
    return line


def json_line(value: Any) -> str:
    """Return ``value`` as one compact JSON line.

    Text is written as it is, except where it holds a lone surrogate (JSON
    allows one, UTF-8 does not): then the line is escaped throughout
    (``\\ud800``), so any reader can print it; and a character a terminal
    would act on (a C1 control, U+2028) is written as its JSON escape.
    """
    line = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    if not line.isprintable():  # a C1 control (U+009B is a terminal's CSI), U+2028...
        return "".join(c if c.isprintable() else _json_escape(c) for c in line)
    return line


def _json_escape(char: str) -> str:
    """Return ``char`` as JSON's ``\\uXXXX`` escape (a surrogate pair past U+FFFF).

    Only text inside a JSON string can be unprintable (``json.dumps`` writes
    nothing else but ASCII), so the escaped line is the same JSON.
    """
    n = ord(char)
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def format_event(event: Event) -> str:
    """One readable line: sequence, time, origin, type, source→target, compact data."""
    route = f"{printable(event.source or '-')}→{printable(event.target or '-')}"
    data = "" if event.data is None else " " + json_line(event.data)
    clock = event.timestamp.strftime("%H:%M:%S.%f")[:-3]
    return (
        f"#{event.sequence} {clock} {printable(event.origin or '-')} "
        f"{printable(event.event_type)} {route}{data}"
    ).rstrip()


def emit(event: Event, as_json: bool) -> None:
    """Print ``event`` as a readable line, or as ``Event.to_dict()`` in one JSON line."""
    say(json_line(event.to_dict()) if as_json else format_event(event))


def block_signals() -> None:
    """Block SIGINT and SIGTERM in this thread, before any other thread starts.

    Every thread inherits the mask, so the main thread alone takes the
    signal, with ``wait_for_signal``.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (both blocked first by ``block_signals``)."""
    signal.sigwait({signal.SIGINT, signal.SIGTERM})


WAKE = 0.25
"""Seconds between the main thread's looks at signals while it waits (see ``wait_until``)."""


def wait_until(done: threading.Event) -> None:
    """Block until ``done`` is set, taking SIGINT and SIGTERM within ``WAKE`` seconds.

    Python runs signal handlers on the main thread only, and the kernel hands
    a signal to whichever thread takes it: one that came while the process
    was stopped (SIGSTOP) may go to another thread, which does not wake the
    main thread from a wait.  So the main thread never waits longer than
    ``WAKE`` at a time.
    """
    while not done.wait(WAKE):
        pass


def get_until_signal(items: queue.Queue[T]) -> T:
    """Take the next item of ``items``, taking signals as ``wait_until`` does."""
    while True:
        try:
            return items.get(timeout=WAKE)
        except queue.Empty:
            pass


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM stop the command once, by a ``KeyboardInterrupt``.

    The first one makes both do nothing from then on, so a second Ctrl-C (or
    a signal sent to the whole process group) cannot cut the closing short,
    nor land in the middle of the unwinding from the first.  Nothing is set
    to ``SIG_IGN``: a signal already pending then would make Python raise
    ``OSError`` instead of running a handler, and a command started later
    would inherit it.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def by_interrupt(exc: BaseException) -> bool:
    """Return whether ``exc`` is the ``KeyboardInterrupt`` of a signal, or came of one.

    The interrupt is raised at whatever the main thread runs when the signal
    comes, which can be inside ``threading.Condition.wait`` just after it let
    its lock go and before its ``try``: the ``with`` around it then fails to
    release the lock again, and a ``RuntimeError`` replaces the interrupt
    (its ``__context__``).  That error is the signal's, not a failure.
    """
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, RuntimeError) and isinstance(exc.__context__, KeyboardInterrupt)


@contextlib.contextmanager
def ended_by_signal() -> Iterator[None]:
    """End the block quietly on a signal (``by_interrupt``): the command exits with 0."""
    try:
        yield
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not by_interrupt(exc):
            raise


_held = threading.local()  # ``signals_held``: a signal waits for the block's end


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, _once_stopping)
    signal.signal(signal.SIGTERM, _once_stopping)
    if getattr(_held, "on", False):
        _held.pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Run the block whole: the interrupt of a signal that comes meanwhile is raised after it.

    For steps a script watches together (``sub``'s ready file, then its line):
    a signal right after the first must not cut off the second.
    """
    _held.on, _held.pending = True, False
    try:
        yield
    finally:
        _held.on = False
        if _held.pending:
            _held.pending = False
            raise KeyboardInterrupt


def _once_stopping(signum: int, frame: object) -> None:
    """A signal after the first: the command is already stopping."""
