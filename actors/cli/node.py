"""``serve`` and ``broker``: the long-running processes (until SIGINT or SIGTERM)."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import NoReturn

import click

from actors._bus import EventBus, PersistentEventBus
from actors._errors import BridgeError, JournalDamagedError, JournalLockedError
from actors._model.config import EventConfig, NodeConfig
from actors._model.event import Event
from actors._model.trace import printable
from actors.cli.options import (
    BROKER_LISTEN,
    ENDPOINT,
    NODE_NAME,
    PATTERN,
    PEER,
    Keys,
    is_z85_key,
    key_options,
    keys_from,
    load_key,
)
from actors.cli.output import block_signals, fail, say, wait_for_signal

__all__ = ["broker", "serve"]

_NO_AUTHORIZE = (
    "--secret-key without --authorize would admit no other node: give --authorize KEY "
    "(repeatable) for each node or client allowed in"
)


def _authorized(keys: Keys | None, authorize: tuple[str, ...]) -> tuple[bytes, ...]:
    """Return the ``--authorize`` keys; with CURVE, at least one is required."""
    allowed = tuple(k for k in (load_key(a, "--authorize") for a in authorize) if k is not None)
    if keys is not None and not allowed:
        raise click.UsageError(_NO_AUTHORIZE)
    if keys is None and allowed:
        raise click.UsageError("--authorize needs --public-key and --secret-key")
    return allowed


def _peer_keys(
    items: tuple[str, ...], peers: tuple[str, ...], own: Keys | None
) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for item in items:
        endpoint, sep, key = _split_peer_key(item)
        if not sep:
            raise click.BadParameter(f"{item!r} is not ENDPOINT=KEY", param_hint="--peer-key")
        keys[PEER.convert(endpoint, None, None)] = load_key(key, "--peer-key") or b""
    if keys and own is None:
        raise click.UsageError("--peer-key needs --public-key and --secret-key")
    missing = [peer for peer in peers if own is not None and peer not in keys]
    if missing:  # under CURVE a peer is dialled with its key, or not at all
        raise click.UsageError(
            f"with --public-key, each --peer needs its --peer-key ENDPOINT=KEY; "
            f"none for {printable(missing[0])}"
        )
    return keys


def _split_peer_key(item: str) -> tuple[str, str, str]:
    """Split ENDPOINT=KEY, where either may hold ``=`` (Z85 keys, ipc paths, file names).

    A 40-character key after the last ``=`` it can hold; else a key file that
    exists after an ``=`` (the rightmost such); else at the first ``=``.
    """
    if len(item) > 41 and item[-41] == "=" and is_z85_key(item[-40:]):
        return item[:-41], "=", item[-40:]
    for at in reversed([i for i, char in enumerate(item) if char == "="]):
        if Path(item[at + 1 :]).is_file():
            return item[:at], "=", item[at + 1 :]
    return item.partition("=")


def _peer_names(items: tuple[str, ...], keys: Keys | None) -> dict[str, bytes]:
    from actors._cluster.broker import parse_peer_names  # noqa: PLC0415 - imports zmq

    if items and keys is None:  # without CURVE a name cannot be bound to a key
        raise click.UsageError("--peer-name needs --public-key and --secret-key")
    return parse_peer_names(items, functools.partial(load_key, option="--peer-name"), _not_a_name)


def _not_a_name(item: str) -> NoReturn:
    raise click.BadParameter(f"{item!r} is not NAME=KEY", param_hint="--peer-name")


_PEER_NAME = click.option(
    "--peer-name",
    "peer_names",
    multiple=True,
    help="NAME=KEY: the public key node NAME must hold (CURVE; repeatable)",
)


@click.command()
@click.option(
    "--name", type=NODE_NAME, required=True, help="the node's name (every local event's origin)"
)
@click.option(
    "--listen",
    type=ENDPOINT,
    help="request endpoint, e.g. tcp://127.0.0.1:5701 (needed unless a --peer is given)",
)
@click.option(
    "--peer", "peers", type=PEER, multiple=True, help="a node or broker to join (repeatable)"
)
@click.option("--journal", type=click.Path(file_okay=False), help="persist to this journal folder")
@click.option(
    "--record",
    type=PATTERN,
    multiple=True,
    help="also receive (and journal) other nodes' events matching this pattern (repeatable)",
)
@key_options
@click.option("--authorize", multiple=True, help="public key of a node allowed in (repeatable)")
@click.option(
    "--peer-key",
    "peer_keys",
    multiple=True,
    help="ENDPOINT=KEY: a --peer's public key (repeatable)",
)
@_PEER_NAME
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="serve /metrics, /healthz")
def serve(
    *,
    name: str,
    listen: str | None,
    peers: tuple[str, ...],
    journal: str | None,
    record: tuple[str, ...],
    public_key: str | None,
    secret_key: str | None,
    authorize: tuple[str, ...],
    peer_keys: tuple[str, ...],
    peer_names: tuple[str, ...] = (),
    metrics_port: int | None = None,
) -> None:
    """Run a node until SIGINT or SIGTERM; it also publishes what `pub` asks it to.

    With ``--metrics-port`` it also serves ``/metrics`` and ``/healthz`` on 127.0.0.1.
    """
    if listen is None and not peers:  # a node that neither listens nor joins reaches no one
        raise click.UsageError("give --listen, or a --peer to join (a broker's endpoint)")
    keys = keys_from(public_key, secret_key)
    try:
        node = NodeConfig(
            name=name,
            listen=listen,
            peers=peers,
            curve_public_key=keys.public if keys else None,
            curve_secret_key=keys.secret if keys else None,
            authorized_keys=_authorized(keys, authorize),
            peer_public_keys=_peer_keys(peer_keys, peers, keys),
            peer_names=_peer_names(peer_names, keys),
        )
    except ValueError as exc:
        fail(str(exc))
    block_signals()
    try:
        if journal is not None:
            bus: EventBus = PersistentEventBus(EventConfig(persistence_path=journal), node=node)
        else:
            bus = EventBus(node=node)
    except JournalLockedError:
        fail(f"the journal {journal} is in use by another process")
    except JournalDamagedError as exc:
        fail(str(exc))  # it names the journal and how to salvage it
    except ValueError as exc:
        fail(str(exc))
    try:
        for pattern in record:
            bus.subscribe(pattern, _ignore)
        endpoints = bus.endpoints
        with contextlib.ExitStack() as stack:
            server = None
            if metrics_port is not None:  # before the first line: scripts wait for "journal"
                try:
                    server = stack.enter_context(bus.serve_metrics(metrics_port))
                except OSError as exc:
                    fail(f"cannot serve metrics on port {metrics_port}: {exc.strerror or exc}")
            # Escaped: a name or a path may hold what a terminal would act on.
            say(f"node {printable(name)}")
            # A node behind a broker listens nowhere: it is reached by name.
            for kind in ("request", "publish"):
                at = endpoints[kind]
                say(f"{kind} {printable(at) if at is not None else 'none'}")
            say(f"journal {printable(str(Path(journal).resolve())) if journal else 'none'}")
            if server is not None:
                say(f"metrics {server.url}")
            wait_for_signal()
    finally:
        bus.close(timeout=10.0)
    say("closed")


def _ignore(event: Event) -> None:
    del event


@click.command()
@click.argument("listen", type=BROKER_LISTEN)
@key_options
@click.option("--authorize", multiple=True, help="public key of a node allowed in (repeatable)")
@_PEER_NAME
def broker(
    listen: str,
    public_key: str | None,
    secret_key: str | None,
    authorize: tuple[str, ...],
    peer_names: tuple[str, ...] = (),
) -> None:
    """Run a broker (hub and spoke) at LISTEN until SIGINT or SIGTERM."""
    from actors._cluster.broker import Broker  # noqa: PLC0415 - zmq only for the commands that need it

    keys = keys_from(public_key, secret_key)
    allowed = _authorized(keys, authorize)
    names = _peer_names(peer_names, keys)
    block_signals()
    try:
        hub = Broker(
            listen,
            curve_public_key=keys.public if keys else None,
            curve_secret_key=keys.secret if keys else None,
            authorized_keys=list(allowed),
            peer_names=names,
        )
    except (BridgeError, ValueError) as exc:
        fail(str(exc))
    try:
        say(f"request {printable(hub.endpoint)}")
        say(f"subscribe {printable(hub.subscribe_endpoint)}")
        say(f"publish {printable(hub.publish_endpoint)}")
        wait_for_signal()
    finally:
        hub.close()
    say("closed")
