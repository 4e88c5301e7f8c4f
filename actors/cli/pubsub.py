"""``pub`` and ``sub``: publish on a running node, and watch what it publishes."""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from actors._bus import EventBus
from actors._codec.events import finite_float
from actors._errors import (
    BridgeError,
    InvalidEventError,
    NoAnswerError,
    NotConnectedError,
    PeerRefusedError,
)
from actors._model.config import DEFAULT_MAX_FRAME_BYTES
from actors._model.event import Event, JsonValue
from actors._model.query import EventQuery
from actors._model.topics import is_reserved
from actors._model.trace import printable
from actors.cli.connect import left, peer_name, remote_reads, short_lived_node
from actors.cli.follow import Checkpoint, JournalTail, last_sequence
from actors.cli.follow import state_dir as default_state_dir
from actors.cli.options import (
    ENDPOINT,
    EVENT_TYPE,
    PATTERN,
    SEQUENCE_MAX,
    Connection,
    connection_options,
)
from actors.cli.output import (
    emit,
    ended_by_signal,
    fail,
    get_until_signal,
    note,
    say,
    signals_held,
    stop_on_signals,
)

__all__ = ["pub", "sub"]

logger = logging.getLogger("actors.cli")

RETRY = 5.0  # seconds to wait for a node's answer before asking again
PROGRESS_EVERY = 0.2  # seconds between progress lines of `pub --count`


def _not_json(name: str) -> NoReturn:
    """Refuse ``NaN``, ``Infinity`` and ``-Infinity``: Python's json reads them, JSON has none."""
    raise ValueError(f"{name} is not a JSON value")


def loads_json(text: str) -> JsonValue:
    """``json.loads`` refusing, with ``ValueError``, what JSON does not have.

    That is ``NaN`` and ``Infinity``, and numbers past the float range (``1e999``).
    """
    value: JsonValue = json.loads(text, parse_constant=_not_json, parse_float=finite_float)
    return value


DATA_LIMIT = DEFAULT_MAX_FRAME_BYTES
"""The most DATA read from ``-`` or ``@FILE``: a larger event could not be sent
(the short-lived node's frame limit, ``NodeConfig.max_frame_bytes``)."""


def _read_capped(read: Callable[[int], bytes], what: str) -> str:
    """Read at most ``DATA_LIMIT`` bytes of UTF-8 text with ``read``; usage error past it."""
    raw = read(DATA_LIMIT + 1)
    if len(raw) > DATA_LIMIT:
        raise click.BadParameter(
            f"{what} holds more than {DATA_LIMIT} bytes, more than an event can carry",
            param_hint="DATA",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}", param_hint="DATA"
        ) from exc


def read_data(data: str | None) -> JsonValue:
    """Return DATA parsed as JSON: given inline, as ``-`` (stdin) or as ``@FILE``."""
    if data is None:
        return None
    if data == "-":
        if sys.stdin is None:  # started with standard input closed (<&-)
            raise click.BadParameter("standard input is closed", param_hint="DATA")
        text = _read_capped(sys.stdin.buffer.read, "standard input")
    elif data.startswith("@"):
        try:
            with Path(data[1:]).open("rb") as f:
                text = _read_capped(f.read, data[1:])
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {data[1:]}: {exc.strerror}", param_hint="DATA"
            ) from exc
    else:
        text = data
    try:
        value = loads_json(text)
    except ValueError as exc:  # json.JSONDecodeError too
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from exc
    except RecursionError:
        raise click.BadParameter("nested too deep to be event data", param_hint="DATA") from None
    return value


@click.command()
@click.argument("event_type", type=EVENT_TYPE)
@click.argument("data", required=False)
@click.option("--correlation-id", type=click.UUID, help="the workflow this event belongs to")
@click.option("--causation-id", type=click.UUID, help="id of the event that caused this one")
@click.option("--source", help="who publishes it")
@click.option("--target", help="who it is for")
@click.option(
    "--count", type=click.IntRange(min=1), default=1, show_default=True, help="events to publish"
)
@click.option("--listen", type=ENDPOINT, help="this node's endpoint (default: none, a client)")
@connection_options("endpoint of the running node (or a broker)")
def pub(
    *,
    event_type: str,
    data: str | None,
    correlation_id: uuid.UUID | None,
    causation_id: uuid.UUID | None,
    source: str | None,
    target: str | None,
    count: int,
    listen: str | None,
    connection: Connection,
) -> None:
    """Publish an event of type EVENT_TYPE on the node at --peer.

    DATA is JSON, `-` to read it from stdin or `@FILE` from a file.  Returns
    once the node published it (it prints `published TYPE on NODE ID`);
    `--count N` publishes N events (a progress line on stderr).
    """
    payload = read_data(data)
    if is_reserved(event_type):
        fail(f"event type {event_type!r} is reserved for the bus ('$' types)")

    def make() -> Event:
        try:
            return Event(
                event_type=event_type,
                data=payload,
                correlation_id=correlation_id,
                causation_id=causation_id,
                source=source,
                target=target,
            )
        except InvalidEventError as exc:
            fail(str(exc))

    first = make()
    deadline = time.monotonic() + connection.timeout
    with short_lived_node(connection, "pub", listen=listen) as bus:
        name = peer_name(bus, connection, deadline)
        published = publish_through(bus, name, first, connection.timeout)
        shown = time.monotonic()
        for n in range(2, count + 1):
            published = publish_through(bus, name, make(), connection.timeout)
            if time.monotonic() - shown >= PROGRESS_EVERY or n == count:
                note(f"published {n}/{count}")
                shown = time.monotonic()
    kind, node = printable(event_type), printable(published.origin or "-")
    if count == 1:
        say(f"published {kind} on {node} {published.id}")
    else:
        say(f"published {count} {kind} on {node}, the last {published.id}")


def publish_through(bus: EventBus, name: str, event: Event, timeout: float) -> Event:
    """Have node ``name`` publish ``event`` (a PUBLISH request); return it as published.

    A lost answer is asked again until ``timeout``: safe, since a node
    publishes an event id once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bus.publish_remote(name, event, timeout=min(RETRY, left(deadline)))
        except NoAnswerError:
            if left(deadline) <= 0:
                fail(f"node {name!r} did not answer within {timeout:g} s")
            logger.info("no answer from %s yet; asking again", name)
        except PeerRefusedError as exc:
            fail(f"node {name!r} refused the event: {exc}")
        except NotConnectedError as exc:
            fail(f"node {name!r} is out of reach: {exc}")
        except BridgeError as exc:
            fail(f"node {name!r} did not publish the event: {exc}")


@click.command()
@click.argument("pattern", type=PATTERN)
@click.option("--count", type=click.IntRange(min=1), help="exit after this many events")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per event")
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False),
    help="write this file once the subscription is in force",
)
@click.option(
    "--from-sequence",
    type=click.IntRange(1, SEQUENCE_MAX),
    help="first print the node's journal from this sequence on, then follow it",
)
@click.option(
    "--durable",
    help="resume where the last `sub --durable NAME` stopped (a checkpoint file)",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="where --durable keeps its checkpoints [default: $XDG_STATE_HOME/llmspell-events]",
)
@connection_options("endpoint of a running node (or a broker)")
def sub(
    *,
    pattern: str,
    count: int | None,
    as_json: bool,
    ready_file: str | None,
    from_sequence: int | None,
    durable: str | None,
    state_dir: Path | None,
    connection: Connection,
) -> None:
    """Print the events matching PATTERN as they arrive from --peer.

    Says `subscribed ...` on stderr (and writes --ready-file) once the
    subscription is in force: every matching event the node publishes from
    then on is printed.  --from-sequence and --durable read the node's
    journal, so they need a node that has one.
    """
    ready = None if ready_file is None else Path(ready_file)
    if ready is not None:
        # A file left by an earlier run would tell a script waiting for it
        # that this subscription is in force before it is.
        _unready(ready, fail_on_error=True)
    stop_on_signals()
    from_journal = from_sequence is not None or durable is not None
    received: queue.Queue[Event] = queue.Queue()
    deadline = time.monotonic() + connection.timeout
    with short_lived_node(connection, "sub") as bus:
        tail = JournalTail(bus, EventQuery(event_types=[pattern]), connection.timeout)
        bus.subscribe(pattern, tail.wake if from_journal else received.put)
        target = peer_name(bus, connection, deadline)  # the subscription is in force
        checkpoint = None
        if from_journal:
            tail.node = target
            with remote_reads(target):  # fails here if the node keeps no journal
                newest = last_sequence(bus, target, connection.timeout)
            if durable is not None:
                checkpoint = Checkpoint(state_dir or default_state_dir(), target, durable)
            saved = checkpoint.load() if checkpoint is not None else None
            if saved is not None:
                tail.start_after(saved)
            elif from_sequence is not None:
                tail.start_after(from_sequence - 1)
            else:
                tail.start_after(newest)

        def show(event: Event) -> None:
            emit(event, as_json)
            if checkpoint is not None:
                checkpoint.save(event.sequence or 0)

        written: list[tuple[int, int, int]] = []  # the ready file's identity, once written
        with ended_by_signal():  # from the line on, a signal exits with 0
            try:  # entered first: a signal right after the line still removes the file
                _ready(pattern, target, ready, written)
                if from_journal:
                    with remote_reads(target):
                        tail.run(show, count)
                    return
                seen = 0
                while count is None or seen < count:
                    show(get_until_signal(received))
                    seen += 1
            finally:
                if ready is not None and written:  # the subscription ends with the command
                    _unready(ready, fail_on_error=False, mine=written[0])


def _unready(path: Path, *, fail_on_error: bool, mine: tuple[int, int, int] | None = None) -> None:
    """Remove the ready file; with ``mine``, only if it is still the file this run wrote.

    Another ``sub`` given the same path may have written its own since: not ours to remove.
    """
    try:
        if mine is not None and _identity(path) != mine:
            return
        path.unlink(missing_ok=True)
    except OSError as exc:
        if fail_on_error:
            fail(f"cannot remove the old ready file {path}: {exc.strerror or exc}")


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns  # an inode number is soon reused


def _ready(
    pattern: str, target: str, path: Path | None, written: list[tuple[int, int, int]]
) -> None:
    """Say the subscription is in force (and write ``path``, its identity into ``written``).

    The identity is noted before the file takes its name (a rename keeps it), so
    a signal at any moment after finds it noted if the file is there.
    """
    line = f"subscribed to {printable(pattern)} at {printable(target)}"
    with signals_held():  # a script that saw the file and signals finds the line said
        if path is not None:  # first, so a script that saw the line finds the file
            scratch = path.with_name(f".ready-{os.getpid()}.tmp")  # short: any name fits
            try:
                scratch.write_text(line + "\n")
                mine = _identity(scratch)
                if mine is not None:
                    written.append(mine)
                scratch.replace(path)
            except OSError as exc:
                fail(f"cannot write the ready file {path}: {exc.strerror or exc}")
        note(line)
