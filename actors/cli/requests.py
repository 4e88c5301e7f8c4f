"""``req`` and ``reply``: requests and replies from the shell (see ``docs/requests.md``).

Both start a short-lived node connected to a running one (``--peer``; through
a broker, name the node with ``--node``), with the connection options and
errors of every client command (``actors.cli.options``, ``actors.cli.connect``).
Such a node has no ``listen``, so nobody can subscribe to what it publishes:
``req`` has the running node publish the request, and ``reply`` has it
publish each reply (``publish_remote``).  Replies come back to ``req``
through its reply route, which the running node acknowledges before the
request is sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from actors._bus import EventBus
from actors._core.requests import Responder, is_reply
from actors._errors import (
    EventBusError,
    EventTooLargeError,
    PeerRefusedError,
    RemoteHandlerError,
    RequestTimeoutError,
)
from actors._model.event import Event
from actors._model.trace import printable
from actors._runtime.future import BusFuture
from actors.cli.connect import left, peer_name, short_lived_node
from actors.cli.options import PATTERN, REQUEST_TYPE, SECONDS, Connection, connection_options
from actors.cli.output import (
    ended_by_signal,
    fail,
    json_line,
    note,
    say,
    stop_on_signals,
    wait_until,
)
from actors.cli.pubsub import DATA_LIMIT, loads_json, read_data

__all__ = ["reply", "req", "run_command"]

REMOTE_ERROR_EXIT = 3  # ``req``: the responder raised (timeouts and other failures: 1)
REQ_TIMEOUT = 5.0  # ``req --timeout``: for the node and the reply together


@click.command()
@click.argument("event_type", type=REQUEST_TYPE)
@click.argument("data", required=False)
@click.option("--source", help="who asks (the reply's target; default: this node's name)")
@click.option("--json", "as_json", is_flag=True, help="print the whole reply event as JSON")
@connection_options("endpoint of a running node (or a broker)", timeout=REQ_TIMEOUT)
def req(
    *,
    event_type: str,
    data: str | None,
    source: str | None,
    as_json: bool,
    connection: Connection,
) -> None:
    """Send a request of type EVENT_TYPE and print the reply's data as JSON.

    DATA is JSON, `-` to read it from stdin or `@FILE` from a file.  An
    error reply prints `error TYPE: MESSAGE` on stderr and exits with 3; no
    reply within --timeout (for the node and the reply together) exits
    with 1.
    """
    payload = read_data(data)
    deadline = time.monotonic() + connection.timeout
    with short_lived_node(connection, "req") as bus:
        target = peer_name(bus, connection, deadline)
        try:
            answer = bus.request(
                event_type,
                payload,
                timeout=left(deadline),
                node=target,
                source=source or bus.name,
            )
        except RemoteHandlerError as exc:
            # One line, as every error, and nothing a terminal would act on:
            # the type and message are the responder's (or a forger's) text.
            message = printable(" ".join(exc.remote_message.split()))
            note(f"error {printable(exc.remote_type)}: {message}")
            sys.exit(REMOTE_ERROR_EXIT)
        except RequestTimeoutError:
            fail(f"no reply to {event_type} within {connection.timeout:g} s")
        except PeerRefusedError as exc:
            fail(f"node {target!r} refused the request: {exc}")
        except ValueError as exc:  # a bad event type or data (InvalidEventError too)
            fail(str(exc))
    say(json_line(answer.to_dict() if as_json else answer.data))


def run_command(argv: list[str], request: Event, timeout: float | None = None) -> Any:
    """Run ``argv`` with the request's data (JSON) on stdin; return its stdout as JSON.

    Stdout that is not JSON is returned as a string (stripped); empty stdout
    is None.  A non-zero exit raises ``RuntimeError`` with the end of stderr.
    """
    env = dict(os.environ)
    env["LLMSPELL_EVENTS_REQUEST_TYPE"] = request.event_type
    env["LLMSPELL_EVENTS_REQUEST_ID"] = str(request.id)
    with _RUNNING_LOCK:  # started and registered at once: a stop sees it, or it sees the stop
        if _STOPPING.is_set():
            raise RuntimeError("reply is stopping: the command was not run")
        child = subprocess.Popen(  # noqa: S603 - the user's own command, no shell
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a group of its own: its children are killed with it
        )
        _RUNNING.add(child)
    with child:
        try:
            # Bytes, decoded here: text mode would turn the command's CRLF into LF.
            raw_out, raw_err = _exchange(child, json.dumps(request.data).encode(), timeout)
        except BaseException:  # past its timeout or its output limit, or reply stops
            _kill(child)
            # Nothing more is read (a child that left the group may go on
            # writing): the pipes close, and the group, killed, is waited for.
            for pipe in (child.stdin, child.stdout, child.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=_DRAIN)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(child)
    stdout = raw_out.decode()  # not UTF-8: UnicodeDecodeError, an error reply
    if child.returncode != 0:
        tail = raw_err.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"{argv[0]} exited with {child.returncode}: {tail}".rstrip(": "))
    out = stdout.strip()
    if not out:
        return None
    try:
        return loads_json(out)
    except ValueError:  # not JSON (json.JSONDecodeError), NaN / Infinity, 1e999: the text
        return out


OUTPUT_LIMIT = DATA_LIMIT
"""The most a command may print: past it, it is killed and the answer is an error reply."""

_ERR_KEEP = 64 * 1024
"""How much of the end of a command's stderr is kept (for the error reply's message)."""


def _exchange(
    child: subprocess.Popen[bytes], data: bytes, timeout: float | None
) -> tuple[bytes, bytes]:
    """``child.communicate(data, timeout)``, with what is kept bounded.

    Stdout is kept up to ``OUTPUT_LIMIT`` bytes (more raises
    ``EventTooLargeError``: it could not be a reply), stderr's last
    ``_ERR_KEEP``.  Raises ``subprocess.TimeoutExpired`` past ``timeout``.
    The run ends once stdout is closed and the command has exited: a
    process it left in the background may hold its stderr (or its stdin,
    unread) open for ever (``cmd > /dev/null &``); what stderr holds by
    then is kept, and the rest of the input is not written.
    """
    stdin, stdout, stderr = child.stdin, child.stdout, child.stderr
    assert stdin is not None
    assert stdout is not None
    assert stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    pending = memoryview(data)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_WRITE)
        selector.register(stdout, selectors.EVENT_READ)
        selector.register(stderr, selectors.EVENT_READ)
        while selector.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(child.args, timeout or 0.0)
            if stdout.closed:  # its answer is complete: until the command exits
                if child.poll() is not None:
                    # What it did not read of its input it did not want, though a
                    # process it left behind may hold the pipe: none waits for it.
                    if not stderr.closed:
                        err += _available(stderr)
                        del err[:-_ERR_KEEP]
                    break
                left = _EXITED_POLL if left is None else min(left, _EXITED_POLL)
            for key, _ in selector.select(left):
                pipe = key.fileobj
                if pipe is stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[: select.PIPE_BUF]) :]
                    except BrokenPipeError:  # it stopped reading its input: its choice
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(pipe)
                        stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(pipe)
                    (stdout if pipe is stdout else stderr).close()
                elif pipe is stdout:
                    out += chunk
                    if len(out) > OUTPUT_LIMIT:
                        msg = f"the command printed more than {OUTPUT_LIMIT} bytes (too large)"
                        raise EventTooLargeError(msg)
                else:
                    err += chunk
                    del err[:-_ERR_KEEP]
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    child.wait(left)  # raises TimeoutExpired
    return bytes(out), bytes(err)


_EXITED_POLL = 0.05
"""Seconds between looks at whether a command whose stdout closed has exited."""


def _available(pipe: Any) -> bytes:
    """Return what ``pipe`` holds now, without waiting for more (its writer may never close it)."""
    os.set_blocking(pipe.fileno(), False)
    got = bytearray()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(pipe.fileno(), 65536):
            got += chunk
            del got[:-_ERR_KEEP]
    return bytes(got)


_DRAIN = 5.0
"""Seconds to read what a killed command leaves in its pipes."""

_RUNNING: set[subprocess.Popen[bytes]] = set()  # the commands running now (one at a time)
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set once ``reply`` stops: no command starts after it


def _stop_commands() -> None:
    """Kill the commands still running, and start none from now on (``reply`` is stopping)."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        running = list(_RUNNING)
    for child in running:
        _kill(child)


def _kill(child: subprocess.Popen[bytes]) -> None:
    """Kill ``child`` and every process of its group (what it started, unless it left)."""
    if child.returncode is None:  # not reaped: its pid (and group id) is still its own
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)  # it leads its group (start_new_session)
    with contextlib.suppress(OSError):
        child.kill()


def _command_line(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:  # an unclosed quote
        raise click.BadParameter(f"{command!r}: {exc}", param_hint="--exec") from exc
    if not argv:
        raise click.BadParameter("empty command", param_hint="--exec")
    return argv


def _publisher(bus: EventBus, node: str, timeout: float) -> Callable[[Event], BusFuture[Event]]:
    """Return how a reply is published: by ``node``; a failure is said on stderr.

    A reply too large to send is raised: the responder answers with an error
    reply instead.
    """

    def publish(event: Event) -> BusFuture[Event]:
        try:
            return BusFuture.completed(bus.publish_remote(node, event, timeout=timeout))
        except EventTooLargeError:
            raise
        except EventBusError as exc:
            note(f"reply not published: {exc}")
            return BusFuture.failed(exc)

    return publish


@click.command()
@click.argument("pattern", type=PATTERN)
@click.option("--exec", "command", required=True, help="the command that answers (no shell)")
@click.option("--count", type=click.IntRange(min=1), help="exit after answering this many")
@click.option(
    "--exec-timeout",
    type=SECONDS,
    help="seconds a command may run (then an error reply)",
)
@connection_options("endpoint of a running node (or a broker)")
def reply(
    *,
    pattern: str,
    command: str,
    count: int | None,
    exec_timeout: float | None,
    connection: Connection,
) -> None:
    """Answer requests matching PATTERN by running --exec CMD for each.

    The request's data arrives on the command's stdin as JSON; its stdout
    (JSON) is the reply.  A failing command is an error reply.  The replies'
    source is this node's name (--name).  Prints `answered TYPE ID` once
    each reply is published; runs until SIGINT, SIGTERM or --count.
    """
    argv = _command_line(command)
    _STOPPING.clear()
    stop_on_signals()
    finished = threading.Event()
    answered = 0
    unprintable: list[OSError] = []  # stdout failed (a closed pipe): the command ends with it
    deadline = time.monotonic() + connection.timeout
    with short_lived_node(connection, "reply") as bus:
        target = peer_name(bus, connection, deadline)
        publish = _publisher(bus, target, connection.timeout)
        published: list[BusFuture[Event]] = []

        def publish_reply(event: Event) -> BusFuture[Event]:
            published.append(publish(event))
            return published[-1]

        responder = Responder(
            lambda request: run_command(argv, request, exec_timeout), publish_reply, source=bus.name
        )

        def answer(request: Event) -> None:  # one at a time: its own thread
            nonlocal answered
            if is_reply(request) or _STOPPING.is_set():
                return  # stopping: a request still queued is left unanswered
            published.clear()
            responder(request)
            if not published or published[-1].exception() is not None:
                return  # said on stderr: "reply not published: ..."
            try:
                say(f"answered {printable(request.event_type)} {request.id}")
            except OSError as exc:  # raised again on the main thread, as ``sub`` raises it
                unprintable.append(exc)
                _STOPPING.set()  # nothing more is answered
                finished.set()
                return
            answered += 1
            if count is not None and answered >= count:
                finished.set()

        bus.subscribe(pattern, answer, dedicated_thread=True)
        if not bus.wait_for_peers([target], left(deadline)):
            fail(f"node {target!r} did not acknowledge the subscription in time")
        try:
            with ended_by_signal():  # from the line on, a signal exits 0
                note(f"replying to {printable(pattern)} at {printable(target)}")
                wait_until(finished)
        finally:
            _stop_commands()  # a command still running is not left behind
        if unprintable:
            raise unprintable[0]
