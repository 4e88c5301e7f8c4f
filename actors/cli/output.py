"""What every command prints, and how it stops: one-line errors, event lines, signals."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any, NoReturn

import click

from actors._model.event import Event
from actors._model.trace import printable

__all__ = [
    "block_signals",
    "emit",
    "fail",
    "format_event",
    "json_line",
    "note",
    "say",
    "stop_on_signals",
    "wait_for_signal",
]


def fail(message: str) -> NoReturn:
    """Stop the command: ``Error: MESSAGE`` on stderr, exit status 1."""
    raise click.ClickException(message)


def say(line: str) -> None:
    """Print one line on stdout and flush it (scripts wait for lines).

    A lone surrogate outside JSON (an event type, a source) is escaped
    (``\\ud800``): UTF-8 cannot carry it.
    """
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    click.echo(line)
    sys.stdout.flush()


def note(line: str) -> None:
    """Print one line on stderr (status, progress), flushed."""
    click.echo(line, err=True)
    sys.stderr.flush()


def json_line(value: Any) -> str:
    """Return ``value`` as one compact JSON line.

    Text is written as it is, except where it holds a lone surrogate (JSON
    allows one, UTF-8 does not): then the line is escaped throughout
    (``\\ud800``), so any reader can print it.
    """
    line = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return line


def format_event(event: Event) -> str:
    """One readable line: sequence, time, origin, type, source→target, compact data."""
    route = f"{printable(event.source or '-')}→{printable(event.target or '-')}"
    data = "" if event.data is None else " " + json_line(event.data)
    clock = event.timestamp.strftime("%H:%M:%S.%f")[:-3]
    return (
        f"#{event.sequence} {clock} {event.origin or '-'} {event.event_type} {route}{data}"
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


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM stop the command once, by a ``KeyboardInterrupt``.

    The first one ignores both from then on, so a second Ctrl-C (or a
    signal sent to the whole process group) cannot cut the closing short.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
