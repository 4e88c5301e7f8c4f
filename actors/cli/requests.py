"""``req`` and ``reply``: requests and replies from the shell (see ``docs/requests.md``).

Both start a short-lived node connected to a running one (``--peer``; through
a broker, name the node with ``--node``).  Such a node has no ``listen``, so
nobody can subscribe to what it publishes: ``req`` has the running node
publish the request, and ``reply`` has it publish each reply
(``publish_remote``).  Replies come back to ``req`` through its reply route,
which the running node acknowledges before the request is sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from actors._bus import EventBus
from actors._core.requests import Responder
from actors._errors import EventBusError, RemoteHandlerError, RequestTimeoutError
from actors._model.config import EventConfig, NodeConfig
from actors._model.event import Event
from actors._runtime.future import BusFuture

__all__ = ["reply", "req"]

REMOTE_ERROR_EXIT = 3  # ``req``: the responder raised (timeouts and other failures: 1)


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _key(value: str | None) -> bytes | None:
    """Return a Z85 key given as text or as a file holding it (``keygen --out``)."""
    if value is None:
        return None
    text = value.strip()
    if len(text) != 40:
        path = Path(value)
        if not path.is_file():
            raise click.BadParameter(f"{value!r} is neither a 40-character Z85 key nor a file")
        text = path.read_text().strip()
    if len(text) != 40:
        raise click.BadParameter(f"{value!r} does not hold a 40-character Z85 key")
    return text.encode()


def _curve_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--public-key", help="this node's CURVE public key (Z85 or a file)"),
            click.option("--secret-key", help="this node's CURVE secret key (Z85 or a file)"),
            click.option("--server-key", help="the peer's CURVE public key (Z85 or a file)"),
        ]
    ):
        fn = option(fn)
    return fn


@contextlib.contextmanager
def _client(peer: str, name: str, keys: dict[str, str | None]) -> Iterator[EventBus]:
    """Run a short-lived node (no ``listen``) connected to ``peer``; close it on exit."""
    public, secret = _key(keys["public_key"]), _key(keys["secret_key"])
    server = _key(keys["server_key"])
    if (secret is None) != (server is None) or (secret is None) != (public is None):
        raise click.UsageError("CURVE needs --public-key, --secret-key and --server-key together")
    try:
        node = NodeConfig(
            name=name,
            peers=(peer,),
            curve_public_key=public,
            curve_secret_key=secret,
            authorized_keys=(server,) if server is not None else (),
            peer_public_keys={peer: server} if server is not None else {},
        )
        bus = EventBus(EventConfig(threads=1), node=node)
    except (EventBusError, ValueError) as exc:
        _fail(str(exc))
    try:
        yield bus
    finally:
        bus.close(timeout=10.0)


def _target(bus: EventBus, peer: str, wanted: str | None, timeout: float) -> str:
    """Return the node to talk to: ``wanted``, or the node at ``peer`` once it answered."""
    if wanted is not None:
        return wanted
    names = bus.linked_nodes(timeout)
    if not names:
        _fail(f"no node answered at {peer} (a broker? name the node with --node)")
    return names[0]


def _json_arg(text: str | None, hint: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=hint) from exc


@click.command()
@click.argument("event_type")
@click.argument("data", required=False)
@click.option("--peer", required=True, help="endpoint of a running node (or a broker)")
@click.option("--node", "node_name", help="the node that publishes the request (with a broker)")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="seconds to wait")
@click.option("--source", help="who asks (the reply's target; default: this client's name)")
@click.option("--name", help="this short-lived node's name (default: req-PID)")
@click.option("--json", "as_json", is_flag=True, help="print the whole reply event as JSON")
@_curve_options
def req(
    *,
    event_type: str,
    data: str | None,
    peer: str,
    node_name: str | None,
    timeout: float,
    source: str | None,
    name: str | None,
    as_json: bool,
    **keys: str | None,
) -> None:
    """Send a request of type EVENT_TYPE (DATA as JSON) and print the reply's data.

    An error reply prints `error TYPE: MESSAGE` on stderr and exits with 3;
    no reply within --timeout exits with 1.
    """
    payload = _json_arg(data, "DATA")
    me = name or f"req-{os.getpid()}"
    deadline = time.monotonic() + timeout
    with _client(peer, me, keys) as bus:
        target = _target(bus, peer, node_name, timeout)
        try:
            answer = bus.request(
                event_type,
                payload,
                timeout=max(0.0, deadline - time.monotonic()),
                node=target,
                source=source or me,
            )
        except RemoteHandlerError as exc:
            click.echo(f"error {exc.remote_type}: {exc.remote_message}", err=True)
            sys.exit(REMOTE_ERROR_EXIT)
        except RequestTimeoutError:
            _fail(f"no reply to {event_type} within {timeout} s")
        except (EventBusError, ValueError) as exc:
            _fail(str(exc))
    if as_json:
        click.echo(json.dumps(answer.to_dict(), separators=(",", ":")))
    else:
        click.echo(json.dumps(answer.data))


def run_command(argv: list[str], request: Event, timeout: float | None = None) -> Any:
    """Run ``argv`` with the request's data (JSON) on stdin; return its stdout as JSON.

    Stdout that is not JSON is returned as a string (stripped); empty stdout
    is None.  A non-zero exit raises ``RuntimeError`` with the end of stderr.
    """
    env = dict(os.environ)
    env["LLMSPELL_EVENTS_REQUEST_TYPE"] = request.event_type
    env["LLMSPELL_EVENTS_REQUEST_ID"] = str(request.id)
    done = subprocess.run(  # noqa: S603 - the user's own command, no shell
        argv,
        input=json.dumps(request.data),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.strip()[-500:]
        raise RuntimeError(f"{argv[0]} exited with {done.returncode}: {tail}".rstrip(": "))
    out = done.stdout.strip()
    if not out:
        return None
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return out


@click.command()
@click.argument("pattern")
@click.option("--exec", "command", required=True, help="the command that answers (no shell)")
@click.option("--peer", required=True, help="endpoint of a running node (or a broker)")
@click.option("--node", "node_name", help="the node to answer through (with a broker)")
@click.option("--count", type=click.IntRange(min=1), help="exit after answering this many")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to join")
@click.option("--exec-timeout", type=float, help="seconds a command may run (then an error)")
@click.option("--name", help="this node's name (default: reply-PID; the replies' source)")
@_curve_options
def reply(
    *,
    pattern: str,
    command: str,
    peer: str,
    node_name: str | None,
    count: int | None,
    timeout: float,
    exec_timeout: float | None,
    name: str | None,
    **keys: str | None,
) -> None:
    """Answer requests matching PATTERN by running --exec CMD for each.

    The request's data arrives on the command's stdin as JSON; its stdout
    (JSON) is the reply.  A failing command is an error reply.  Prints
    `answered TYPE ID` per request; runs until SIGINT, SIGTERM or --count.
    """
    argv = shlex.split(command)
    if not argv:
        raise click.BadParameter("empty command", param_hint="--exec")
    me = name or f"reply-{os.getpid()}"
    answered = 0
    finished = threading.Event()
    lock = threading.Lock()

    def answer(request: Event) -> Any:
        nonlocal answered
        try:
            return run_command(argv, request, exec_timeout)
        finally:
            with lock:
                answered += 1
                click.echo(f"answered {request.event_type} {request.id}")
                sys.stdout.flush()
                if count is not None and answered >= count:
                    finished.set()

    signal.signal(signal.SIGTERM, _interrupt)
    with _client(peer, me, keys) as bus:
        target = _target(bus, peer, node_name, timeout)

        def publish_there(event: Event) -> BusFuture[Event]:
            try:
                return BusFuture.completed(bus.publish_remote(target, event, timeout=timeout))
            except EventBusError as exc:
                click.echo(f"reply not published: {exc}", err=True)
                return BusFuture.failed(exc)

        try:
            responder = Responder(answer, publish_there, source=me)
            bus.subscribe(pattern, responder, dedicated_thread=True)
        except EventBusError as exc:
            _fail(str(exc))
        if not bus.wait_for_peers([target], timeout):
            _fail(f"node {target!r} did not acknowledge the subscription in time")
        click.echo(f"replying to {pattern} at {target}", err=True)
        sys.stderr.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while not finished.wait(0.5):
                pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
