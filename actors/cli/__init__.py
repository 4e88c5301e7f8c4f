"""The command line: ``llmspell-events`` (also ``python -m actors``).  See ``docs/cli.md``.

``serve`` and ``broker`` run until SIGINT or SIGTERM.  ``pub``, ``sub`` and
the ``--peer`` forms of ``query``, ``trace`` and ``stats`` start a short-lived
node that connects to a running one.  ``--journal`` forms open a journal
folder directly (it must not be held by a running process).

``pub`` asks the running node to publish the event itself (a *publish
request*, served by every ``serve`` node): the event then reaches the node's
own subscribers and every node subscribed to it, and ``pub`` returns only
once the node's copy came back to it, so nothing is lost to ZeroMQ's slow
joiners.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from actors._bus import EventBus, PersistentEventBus
from actors._errors import (
    BridgeError,
    EventBusError,
    FutureTimeoutError,
    InvalidEventError,
    JournalLockedError,
)
from actors._model.config import EventConfig, NodeConfig
from actors._model.event import Event
from actors._model.query import EventQuery
from actors._model.topics import is_reserved

__all__ = ["main"]

logger = logging.getLogger("actors.cli")

_RETRY = 5.0  # seconds to wait for a node's answer before asking again

# -- helpers ------------------------------------------------------------------------------


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


def _keys_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--public-key", help="this node's CURVE public key (Z85 or a file)"),
            click.option("--secret-key", help="this node's CURVE secret key (Z85 or a file)"),
        ]
    ):
        fn = option(fn)
    return fn


def _peer_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--name", help="this short-lived node's name (default: CMD-PID)"),
        click.option(
            "--node",
            "node_name",
            help="the node to talk to (required when --peer is a broker)",
        ),
        click.option("--server-key", help="the peer's CURVE public key (Z85 or a file)"),
        click.option(
            "--timeout", type=float, default=10.0, show_default=True, help="seconds to wait"
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return _keys_options(fn)


@contextlib.contextmanager
def _node(
    peer: str,
    name: str,
    *,
    listen: str | None,
    public_key: str | None,
    secret_key: str | None,
    server_key: str | None,
) -> Iterator[EventBus]:
    """Run a short-lived node connected to ``peer``; close it on exit."""
    public, secret, server = _key(public_key), _key(secret_key), _key(server_key)
    if (secret is None) != (server is None) or (secret is None) != (public is None):
        raise click.UsageError("CURVE needs --public-key, --secret-key and --server-key together")
    try:
        node = NodeConfig(
            name=name,
            listen=listen,
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


def _peer_name(bus: EventBus, peer: str, wanted: str | None, deadline: float) -> str:
    """Return the name of the node behind ``peer`` (or ``wanted``) once it is heard from.

    Blocks until then; a broker needs ``wanted`` (it is not a node itself).
    """
    try:
        names = bus.linked_nodes(_left(deadline))
    except BridgeError as exc:  # a duplicate name, a refused key
        _fail(str(exc))
    name = wanted if wanted is not None else (names[0] if names else None)
    if name is None:
        _fail(f"no node answered at {peer} (a broker? name the node with --node)")
    bridge = bus._bridge
    assert bridge is not None
    if not bridge.wait(lambda s: name in s.peers_alive, _left(deadline)):
        _fail(f"node {name!r} is not heard from through {peer}")
    return name


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _open_journal(path: str) -> EventBus:
    if not Path(path).is_dir():
        _fail(f"no journal at {path}")
    try:
        return PersistentEventBus(EventConfig(persistence_path=path, threads=1))
    except JournalLockedError:
        _fail(
            f"the journal {path} is in use by another process (a running `llmspell-events "
            "serve`?): ask that node with --peer ENDPOINT instead"
        )
    except EventBusError as exc:
        _fail(str(exc))


def _format(event: Event) -> str:
    """One readable line: sequence, time, origin, type, source→target, compact data."""
    route = f"{event.source or '-'}→{event.target or '-'}"
    data = "" if event.data is None else " " + json.dumps(event.data, separators=(",", ":"))
    clock = event.timestamp.strftime("%H:%M:%S.%f")[:-3]
    return (
        f"#{event.sequence} {clock} {event.origin or '-'} {event.event_type} {route}{data}"
    ).rstrip()


def _emit(event: Event, as_json: bool) -> None:
    line = json.dumps(event.to_dict(), separators=(",", ":")) if as_json else _format(event)
    click.echo(line)
    sys.stdout.flush()


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (both already blocked by ``_block_signals``)."""
    signal.sigwait({signal.SIGINT, signal.SIGTERM})


def _block_signals() -> None:
    # Blocked in this thread before any other starts, so every thread inherits
    # the mask and the main thread takes the signal with sigwait().
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _say(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


# -- commands -----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="log the bus's INFO messages to stderr")
def main(verbose: bool) -> None:
    """Run, feed, watch and inspect llmspell-events nodes."""
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)


@main.command()
@click.option("--name", required=True, help="the node's name (every local event's origin)")
@click.option("--listen", required=True, help="request endpoint, e.g. tcp://127.0.0.1:5701")
@click.option("--peer", "peers", multiple=True, help="a node or broker to connect to (repeatable)")
@click.option("--journal", type=click.Path(file_okay=False), help="persist to this journal folder")
@click.option(
    "--record",
    multiple=True,
    help="also receive (and journal) other nodes' events matching this pattern (repeatable)",
)
@_keys_options
@click.option("--authorize", multiple=True, help="public key of a node allowed in (repeatable)")
@click.option("--peer-key", "peer_keys", multiple=True, help="ENDPOINT=KEY: a --peer's public key")
def serve(
    *,
    name: str,
    listen: str,
    peers: tuple[str, ...],
    journal: str | None,
    record: tuple[str, ...],
    public_key: str | None,
    secret_key: str | None,
    authorize: tuple[str, ...],
    peer_keys: tuple[str, ...],
) -> None:
    """Run a node until SIGINT or SIGTERM; it also publishes what `pub` asks it to."""
    peer_public: dict[str, bytes] = {}
    for item in peer_keys:
        endpoint, sep, key = item.rpartition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not ENDPOINT=KEY", param_hint="--peer-key")
        peer_public[endpoint] = _key(key) or b""
    try:
        node = NodeConfig(
            name=name,
            listen=listen,
            peers=peers,
            curve_public_key=_key(public_key),
            curve_secret_key=_key(secret_key),
            authorized_keys=tuple(k for k in (_key(a) for a in authorize) if k is not None),
            peer_public_keys=peer_public,
        )
    except ValueError as exc:
        _fail(str(exc))
    _block_signals()
    try:
        if journal is not None:
            bus: EventBus = PersistentEventBus(EventConfig(persistence_path=journal), node=node)
        else:
            bus = EventBus(node=node)
    except JournalLockedError:
        _fail(f"the journal {journal} is in use by another process")
    except EventBusError as exc:
        _fail(str(exc))
    try:
        for pattern in record:
            bus.subscribe(pattern, _ignore)
        endpoints = bus.endpoints
        _say(f"node {name}")
        _say(f"request {endpoints['request']}")
        _say(f"publish {endpoints['publish']}")
        _say(f"journal {Path(journal).resolve() if journal else 'none'}")
        _wait_for_signal()
    finally:
        bus.close(timeout=10.0)
    _say("closed")


def _ignore(event: Event) -> None:
    del event


@main.command()
@click.argument("listen")
@_keys_options
@click.option("--authorize", multiple=True, help="public key of a node allowed in (repeatable)")
def broker(
    listen: str, public_key: str | None, secret_key: str | None, authorize: tuple[str, ...]
) -> None:
    """Run a broker (hub and spoke) at LISTEN until SIGINT or SIGTERM."""
    from actors._cluster.broker import Broker  # noqa: PLC0415 - zmq only for the commands that need it

    _block_signals()
    try:
        hub = Broker(
            listen,
            curve_public_key=_key(public_key),
            curve_secret_key=_key(secret_key),
            authorized_keys=[k for k in (_key(a) for a in authorize) if k is not None],
        )
    except (BridgeError, ValueError) as exc:
        _fail(str(exc))
    try:
        _say(f"request {hub.endpoint}")
        _say(f"subscribe {hub.subscribe_endpoint}")
        _say(f"publish {hub.publish_endpoint}")
        _wait_for_signal()
    finally:
        hub.close()
    _say("closed")


@main.command()
@click.argument("event_type")
@click.argument("data", required=False)
@click.option("--peer", required=True, help="endpoint of the running node (or a broker)")
@click.option("--correlation-id", type=click.UUID, help="the workflow this event belongs to")
@click.option("--causation-id", type=click.UUID, help="id of the event that caused this one")
@click.option("--source", help="who publishes it")
@click.option("--target", help="who it is for")
@click.option("--listen", help="this node's endpoint (default: beside --peer)")
@_peer_options
def pub(
    *,
    event_type: str,
    data: str | None,
    peer: str,
    correlation_id: uuid.UUID | None,
    causation_id: uuid.UUID | None,
    source: str | None,
    target: str | None,
    listen: str | None,
    name: str | None,
    node_name: str | None,
    server_key: str | None,
    timeout: float,
    public_key: str | None,
    secret_key: str | None,
) -> None:
    """Publish one event of type EVENT_TYPE (DATA as JSON) on the node at --peer.

    Return once the node published it (it prints `published TYPE on NODE ID`).
    """
    try:
        payload = None if data is None else json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from exc
    try:
        event = Event(
            event_type=event_type,
            data=payload,
            correlation_id=correlation_id,
            causation_id=causation_id,
            source=source,
            target=target,
        )
    except InvalidEventError as exc:
        _fail(str(exc))
    if is_reserved(event_type):
        _fail(f"event type {event_type!r} is reserved for the bus ('$' types)")
    deadline = time.monotonic() + timeout
    with _node(
        peer,
        name or f"pub-{os.getpid()}",
        listen=listen or None,  # without --listen, a client: requests only
        public_key=public_key,
        secret_key=secret_key,
        server_key=server_key,
    ) as bus:
        published = _publish_through(bus, peer, node_name, event, deadline)
    _say(f"published {event_type} on {published.origin} {published.id}")


def _publish_through(
    bus: EventBus, peer: str, wanted: str | None, event: Event, deadline: float
) -> Event:
    """Have the node behind ``peer`` publish ``event`` (a PUBLISH request); return it.

    Blocks until the node acknowledged it; a lost answer is retried, which
    is safe because the node publishes an event id once.
    """
    name = _peer_name(bus, peer, wanted, deadline)
    while True:
        try:
            return bus.publish_remote(name, event, timeout=min(_RETRY, _left(deadline)))
        except BridgeError as exc:
            if "did not answer" not in str(exc) or _left(deadline) <= 0:
                _fail(f"node {name!r} did not publish the event: {exc}")
            logger.info("no answer from %s yet; asking again", name)


@main.command()
@click.argument("pattern")
@click.option("--peer", required=True, help="endpoint of a running node (or a broker)")
@click.option("--count", type=click.IntRange(min=1), help="exit after this many events")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per event")
@_peer_options
def sub(
    *,
    pattern: str,
    peer: str,
    count: int | None,
    as_json: bool,
    name: str | None,
    node_name: str | None,
    server_key: str | None,
    timeout: float,
    public_key: str | None,
    secret_key: str | None,
) -> None:
    """Print the events matching PATTERN as they arrive from --peer.

    Says `subscribed ...` on stderr once the peer acknowledged the
    subscription: every matching event it publishes from then on is printed.
    """
    received: queue.Queue[Event] = queue.Queue()
    deadline = time.monotonic() + timeout
    signal.signal(signal.SIGTERM, _interrupt)
    with _node(
        peer,
        name or f"sub-{os.getpid()}",
        listen=None,
        public_key=public_key,
        secret_key=secret_key,
        server_key=server_key,
    ) as bus:
        try:
            bus.subscribe(pattern, received.put)
        except EventBusError as exc:
            _fail(str(exc))
        target = _peer_name(bus, peer, node_name, deadline)
        if not bus.wait_for_peers([target], _left(deadline)):
            _fail(f"node {target!r} did not acknowledge the subscription in time")
        click.echo(f"subscribed to {pattern} at {target}", err=True)
        sys.stderr.flush()
        seen = 0
        with contextlib.suppress(KeyboardInterrupt):
            while count is None or seen < count:
                _emit(received.get(), as_json)
                seen += 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.option("--journal", type=click.Path(file_okay=False), help="a journal folder to open")
@click.option("--peer", help="endpoint of a running node to ask instead")
@click.option("--type", "types", multiple=True, help="event type pattern (repeatable)")
@click.option("--correlation-id", type=click.UUID)
@click.option("--source")
@click.option("--after", type=int, help="only sequences after this one")
@click.option("--limit", type=click.IntRange(min=1))
@click.option("--desc", is_flag=True, help="newest first")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per event")
@_peer_options
def query(
    *,
    journal: str | None,
    peer: str | None,
    types: tuple[str, ...],
    correlation_id: uuid.UUID | None,
    source: str | None,
    after: int | None,
    limit: int | None,
    desc: bool,
    as_json: bool,
    name: str | None,
    node_name: str | None,
    server_key: str | None,
    timeout: float,
    public_key: str | None,
    secret_key: str | None,
) -> None:
    """Print the stored events a query selects, from --journal or a running --peer."""
    try:
        q = EventQuery(
            event_types=list(types) or None,
            correlation_id=correlation_id,
            source=source,
            after_sequence=after,
            limit=limit,
            descending=desc,
        )
    except (ValueError, EventBusError) as exc:
        _fail(str(exc))
    with _source(
        journal,
        peer,
        command="query",
        name=name,
        node_name=node_name,
        server_key=server_key,
        public_key=public_key,
        secret_key=secret_key,
    ) as (
        bus,
        remote,
    ):
        try:
            events = bus.query(q, node=remote(timeout), timeout=timeout)
        except (EventBusError, FutureTimeoutError) as exc:
            _fail(str(exc))
    for event in events:
        _emit(event, as_json)


@contextlib.contextmanager
def _source(
    journal: str | None,
    peer: str | None,
    *,
    command: str,
    name: str | None,
    node_name: str | None,
    server_key: str | None,
    public_key: str | None,
    secret_key: str | None,
) -> Iterator[tuple[EventBus, Callable[[float], str | None]]]:
    """Yield a bus to ask and a function giving the node name to ask (None: this one)."""
    if (journal is None) == (peer is None):
        raise click.UsageError("give exactly one of --journal DIR and --peer ENDPOINT")
    if journal is not None:
        bus = _open_journal(journal)
        try:
            yield bus, lambda _timeout: None
        finally:
            bus.close(timeout=10.0)
        return
    assert peer is not None
    with _node(
        peer,
        name or f"{command}-{os.getpid()}",
        listen=None,
        public_key=public_key,
        secret_key=secret_key,
        server_key=server_key,
    ) as remote_bus:

        def remote(timeout: float) -> str:
            return _peer_name(remote_bus, peer, node_name, time.monotonic() + timeout)

        yield remote_bus, remote


@main.command()
@click.argument("correlation_id", type=click.UUID)
@click.option("--journal", type=click.Path(file_okay=False), help="a journal folder to open")
@click.option("--peer", help="endpoint of a running node: gathers from every node it reaches")
@click.option("--data", "show_data", is_flag=True, help="show each event's data")
@_peer_options
def trace(
    *,
    correlation_id: uuid.UUID,
    journal: str | None,
    peer: str | None,
    show_data: bool,
    name: str | None,
    node_name: str | None,
    server_key: str | None,
    timeout: float,
    public_key: str | None,
    secret_key: str | None,
) -> None:
    """Print the causal tree of the workflow CORRELATION_ID."""
    with _source(
        journal,
        peer,
        command="trace",
        name=name,
        node_name=node_name,
        server_key=server_key,
        public_key=public_key,
        secret_key=secret_key,
    ) as (
        bus,
        remote,
    ):
        remote(timeout)
        try:
            result = bus.trace(correlation_id, timeout=timeout)
        except (EventBusError, FutureTimeoutError) as exc:
            _fail(str(exc))
    if not result.events:
        _fail(f"no events with correlation id {correlation_id}")
    _say(result.render(show_data=show_data))
    origins = Counter(e.origin or "-" for e in result.events)
    _say("origins: " + ", ".join(f"{o} ({n})" for o, n in sorted(origins.items())))


@main.command()
@click.option("--journal", type=click.Path(file_okay=False), help="a journal folder to open")
@click.option("--peer", help="endpoint of a running node whose journal to count")
@click.option("--prometheus", is_flag=True, help="Prometheus text format")
@_peer_options
def stats(
    *,
    journal: str | None,
    peer: str | None,
    prometheus: bool,
    name: str | None,
    node_name: str | None,
    server_key: str | None,
    timeout: float,
    public_key: str | None,
    secret_key: str | None,
) -> None:
    """Count the stored events by type, with the journal's figures."""
    with _source(
        journal,
        peer,
        command="stats",
        name=name,
        node_name=node_name,
        server_key=server_key,
        public_key=public_key,
        secret_key=secret_key,
    ) as (
        bus,
        remote,
    ):
        node = remote(timeout)
        by_type: Counter[str] = Counter()
        first: Event | None = None
        last: Event | None = None
        after: int | None = None
        try:
            while True:
                page = bus.query(
                    EventQuery(after_sequence=after, limit=1000), node=node, timeout=timeout
                )
                for event in page:
                    by_type[event.event_type] += 1
                first = first or (page[0] if page else None)
                last = page[-1] if page else last
                if len(page) < 1000:
                    break
                after = page[-1].sequence
        except (EventBusError, FutureTimeoutError) as exc:
            _fail(str(exc))
        # A --peer node's live figures do not travel: only its journal's counts do.
        metrics = bus.metrics() if node is None else None
        text = bus.prometheus() if node is None else ""
    total = sum(by_type.values())
    if prometheus:
        gauge = "llmspell_events_stored_events"
        lines = [
            *([text.rstrip("\n")] if text else []),
            f"# HELP {gauge} Events in the journal, by type.",
        ]
        lines.append(f"# TYPE {gauge} gauge")
        lines += [f'{gauge}{{event_type="{t}"}} {n}' for t, n in sorted(by_type.items())]
        _say("\n".join(lines))
        return
    where = f"node {node}" if node is not None else f"journal {Path(str(journal)).resolve()}"
    _say(where)
    _say(f"events {total}")
    if first is not None and last is not None:
        _say(f"sequences {first.sequence}..{last.sequence}")
        _say(f"time {first.timestamp.isoformat()} .. {last.timestamp.isoformat()}")
    _say(f"dead letters {by_type.get('$bus.deadletter', 0)}")
    if metrics is not None:
        _say(f"size {metrics.journal_size_bytes} bytes")
    _say("by type:")
    for event_type, n in sorted(by_type.items(), key=lambda item: (-item[1], item[0])):
        _say(f"  {n:>8}  {event_type}")


@main.command()
@click.option("--out", "prefix", help="write PREFIX.key (public) and PREFIX.key_secret (secret)")
def keygen(prefix: str | None) -> None:
    """Make a CURVE key pair (40-character Z85 keys)."""
    from actors._cluster.bridge import generate_keypair  # noqa: PLC0415 - imports zmq

    public, secret = generate_keypair()
    if prefix is None:
        _say(f"public {public.decode()}")
        _say(f"secret {secret.decode()}")
        return
    public_path, secret_path = Path(f"{prefix}.key"), Path(f"{prefix}.key_secret")
    public_path.write_text(public.decode() + "\n")
    secret_path.touch(mode=0o600)
    secret_path.chmod(0o600)
    secret_path.write_text(secret.decode() + "\n")
    _say(f"public {public.decode()}")
    _say(f"wrote {public_path} and {secret_path}")


if __name__ == "__main__":
    main()
