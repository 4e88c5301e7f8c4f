"""Options that several commands share, each block one decorator.

``connection_options`` adds the short-lived node's options (``--peer``,
``--name``, ``--node``, the CURVE keys, ``--timeout``) and hands the command
one ``Connection``; ``source_options`` adds ``--journal`` beside them and
hands it one ``Source``.  Every option can also come from the environment:
the shared ones from the names in ``docs/cli.md`` (``LLMSPELL_EVENTS_PEER``,
``LLMSPELL_EVENTS_CURVE_SECRET``, ...), every other one from
``LLMSPELL_EVENTS_<COMMAND>_<OPTION>`` (click's ``auto_envvar_prefix``).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from actors._core.requests import check_request_type
from actors._model.config import NodeConfig, check_endpoint
from actors._model.patterns import is_reserved, parse_segments, validate_event_type

__all__ = [
    "ENDPOINT",
    "PEER",
    "SECONDS",
    "SEQUENCE_MAX",
    "Connection",
    "Keys",
    "SecondsType",
    "Source",
    "connection_options",
    "is_z85_key",
    "key_options",
    "load_key",
    "source_options",
]

ENV = "LLMSPELL_EVENTS"
_Z85 = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_SCHEMES = ("tcp", "ipc", "inproc")  # the transports a node accepts (``check_endpoint``)
_ENDPOINT = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<address>.*)")

Command = Callable[..., Any]


class SecondsType(click.ParamType):  # type: ignore[type-arg]
    """A finite number of seconds, ``> 0`` (``>= minimum``), that a wait can take.

    NaN, infinity and anything past ``threading.TIMEOUT_MAX`` (about 292
    years) are usage errors: no lock, sleep or timer can honour them.
    """

    name = "seconds"

    def __init__(self, minimum: float = 0.0) -> None:
        self.minimum = minimum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if seconds > threading.TIMEOUT_MAX:
            most = f"{threading.TIMEOUT_MAX:.0f}"
            self.fail(f"{value!r} is more than a wait can take (at most {most} s)", param, ctx)
        if seconds <= 0 or seconds < self.minimum:
            least = f"at least {self.minimum:g}" if self.minimum else "more than 0"
            self.fail(f"{value!r} is not {least} seconds", param, ctx)
        return seconds


SECONDS = SecondsType()
SEQUENCE_MAX = (1 << 63) - 1
"""The highest sequence a journal can hold (a signed 64-bit integer)."""


class EndpointType(click.ParamType):  # type: ignore[type-arg]
    """A ZeroMQ endpoint with its scheme: ``tcp://HOST:PORT``, ``ipc://PATH``, ..."""

    name = "endpoint"

    def __init__(self, *, bind: bool = True, beside: int = 1) -> None:
        self.bind = bind  # an endpoint to listen on (a wildcard port is fine) or to connect to
        self.beside = beside  # listening: the ports above PORT it takes too (a broker's: 2)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        match = _ENDPOINT.fullmatch(text)
        if match is None:
            self.fail(f"{text!r} has no scheme: write tcp://{text} (or ipc://PATH)", param, ctx)
        scheme, address = match["scheme"], match["address"]
        if scheme not in _SCHEMES:
            self.fail(f"{text!r}: unknown scheme {scheme!r} (tcp, ipc or inproc)", param, ctx)
        if scheme == "tcp":
            host, sep, port = address.rpartition(":")
            if not sep or not host or not ((port.isascii() and port.isdigit()) or port == "*"):
                self.fail(f"{text!r}: a tcp endpoint is tcp://HOST:PORT", param, ctx)
        try:  # the rest as ``NodeConfig`` checks it: a usage error here, not a failure later
            check_endpoint(text, "endpoint", bind=self.bind)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.bind and scheme == "tcp" and port != "*" and int(port) + self.beside > 65535:
            self.fail(
                f"{text!r}: a broker listens on PORT, PORT+1 and PORT+2: {port} leaves no room",
                param,
                ctx,
            )
        return text


ENDPOINT = EndpointType()
BROKER_LISTEN = EndpointType(beside=2)
PEER = EndpointType(bind=False)  # an endpoint to connect to


class NameType(click.ParamType):  # type: ignore[type-arg]
    """What the bus checks later, checked here, so that a bad value is a usage error.

    ``kind`` is ``"node"`` (a node name, as ``NodeConfig`` checks it),
    ``"pattern"`` (the topic grammar), ``"type"`` (an event type a command
    may publish: not a ``$`` type, which only the bus publishes) or
    ``"request"`` (such a type a request may have: not a reply's, and room
    for its ``.error``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        names = {"node": "name", "pattern": "pattern", "type": "event type"}
        self.name = names.get(kind, "request type")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            if self.kind == "node":
                NodeConfig(name=text)
            elif self.kind == "pattern":
                parse_segments(text)
            else:
                validate_event_type(text)
                if is_reserved(text):
                    reserved = f"event type {text!r} is reserved for the bus ('$' types)"
                    self.fail(reserved, param, ctx)
                if self.kind == "request":
                    check_request_type(text)
        except ValueError as exc:  # InvalidPatternError and InvalidEventError are ValueErrors
            self.fail(str(exc), param, ctx)
        return text


NODE_NAME = NameType("node")
PATTERN = NameType("pattern")
EVENT_TYPE = NameType("type")
REQUEST_TYPE = NameType("request")


def load_key(value: str | None, option: str) -> bytes | None:
    """Return a Z85 key given as its 40 characters or as a file holding them.

    Raises ``click.BadParameter`` saying what is wrong: no such file, or not
    a 40-character Z85 key.
    """
    if value is None:
        return None
    text = value.strip()
    if not is_z85_key(text):
        path = Path(value)
        if not path.exists():
            raise click.BadParameter(
                f"no key file {value} (and {value!r} is not a 40-character Z85 key)",
                param_hint=option,
            )
        if not path.is_file():
            raise click.BadParameter(f"{value} is not a key file", param_hint=option)
        text = path.read_text(errors="replace").strip()
        if not is_z85_key(text):
            raise click.BadParameter(
                f"{value} does not hold a 40-character Z85 key (made by `keygen --out`?)",
                param_hint=option,
            )
    return text.encode()


def is_z85_key(text: str) -> bool:
    """Return whether ``text`` is a 40-character Z85 key (not a file name)."""
    return len(text) == 40 and set(text) <= _Z85


@dataclass(frozen=True, slots=True)
class Keys:
    """A node's CURVE key pair, checked to belong together."""

    public: bytes
    secret: bytes


def keys_from(public_key: str | None, secret_key: str | None) -> Keys | None:
    """Return the checked pair of ``--public-key`` and ``--secret-key`` (None without both)."""
    public, secret = load_key(public_key, "--public-key"), load_key(secret_key, "--secret-key")
    if public is None and secret is None:
        return None
    if public is None or secret is None:
        raise click.UsageError("CURVE needs --public-key and --secret-key together")
    import zmq  # noqa: PLC0415 - zmq only for the commands that need it

    try:
        derived = zmq.curve_public(secret)
    except (ValueError, zmq.ZMQError) as exc:
        raise click.BadParameter(
            f"not a CURVE secret key: {exc}", param_hint="--secret-key"
        ) from exc
    if derived != public:
        raise click.BadParameter(
            "--public-key is not the public half of --secret-key (swapped, or of another pair?)",
            param_hint="--public-key",
        )
    return Keys(public, secret)


def key_options(fn: Command) -> Command:
    """Add ``--public-key`` and ``--secret-key`` (raw text; check with ``keys_from``)."""
    fn = click.option(
        "--secret-key",
        envvar=f"{ENV}_CURVE_SECRET",
        show_envvar=True,
        help="this node's CURVE secret key (Z85 or a file)",
    )(fn)
    return click.option(
        "--public-key",
        envvar=f"{ENV}_CURVE_PUBLIC",
        show_envvar=True,
        help="this node's CURVE public key (Z85 or a file)",
    )(fn)


@dataclass(frozen=True, slots=True)
class Connection:
    """How a short-lived node reaches a running one."""

    peer: str | None
    name: str | None
    node_name: str | None
    keys: Keys | None
    server_key: bytes | None
    timeout: float


@dataclass(frozen=True, slots=True)
class Source:
    """Where a read-only command reads: a journal folder, or a running node."""

    journal: str | None
    connection: Connection


def _connection(kwargs: dict[str, Any]) -> Connection:
    keys = keys_from(kwargs.pop("public_key"), kwargs.pop("secret_key"))
    server = load_key(kwargs.pop("server_key"), "--server-key")
    if (keys is None) != (server is None):
        raise click.UsageError("CURVE needs --public-key, --secret-key and --server-key together")
    if keys is not None and server == keys.public:
        raise click.BadParameter(
            "it is this node's own public key; give the running node's", param_hint="--server-key"
        )
    return Connection(
        peer=kwargs.pop("peer"),
        name=kwargs.pop("name"),
        node_name=kwargs.pop("node_name"),
        keys=keys,
        server_key=server,
        timeout=kwargs.pop("timeout"),
    )


def _add_connection_options(
    fn: Command, *, peer_required: bool, peer_help: str, timeout: float = 10.0
) -> Command:
    options = [
        click.option(
            "--peer",
            type=PEER,
            required=peer_required,
            envvar=f"{ENV}_PEER",
            show_envvar=True,
            help=peer_help,
        ),
        click.option(
            "--name", type=NODE_NAME, help="this short-lived node's name (default: COMMAND-PID)"
        ),
        click.option(
            "--node",
            "node_name",
            type=NODE_NAME,
            envvar=f"{ENV}_NODE",
            show_envvar=True,
            help="the node to talk to (required when --peer is a broker)",
        ),
        click.option(
            "--server-key",
            envvar=f"{ENV}_CURVE_SERVER",
            show_envvar=True,
            help="the peer's CURVE public key (Z85 or a file)",
        ),
        click.option(
            "--timeout",
            type=SECONDS,
            default=timeout,
            show_default=True,
            envvar=f"{ENV}_TIMEOUT",
            show_envvar=True,
            help="seconds to wait for the peer",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return key_options(fn)


def connection_options(
    peer_help: str, *, peer_required: bool = True, timeout: float = 10.0
) -> Callable[[Command], Command]:
    """Add the connection options; the command receives ``connection: Connection``.

    ``timeout`` is the default of ``--timeout`` (seconds).
    """

    def decorate(fn: Command) -> Command:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, connection=_connection(kwargs), **kwargs)

        return _add_connection_options(
            command, peer_required=peer_required, peer_help=peer_help, timeout=timeout
        )

    return decorate


def source_options(peer_help: str) -> Callable[[Command], Command]:
    """Add ``--journal`` and the connection options; the command receives ``source: Source``.

    Exactly one of ``--journal`` and ``--peer`` must be given; one given on
    the command line wins over the other's environment variable.
    """

    def decorate(fn: Command) -> Command:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            journal = kwargs.pop("journal")
            connection = _connection(kwargs)
            peer = connection.peer
            if journal is not None and peer is not None:
                ctx = click.get_current_context()
                if ctx.get_parameter_source("peer") is ParameterSource.ENVIRONMENT:
                    peer = None
                elif ctx.get_parameter_source("journal") is ParameterSource.ENVIRONMENT:
                    journal = None
            if (journal is None) == (peer is None):
                raise click.UsageError("give exactly one of --journal DIR and --peer ENDPOINT")
            connection = Connection(
                peer,
                connection.name,
                connection.node_name,
                connection.keys,
                connection.server_key,
                connection.timeout,
            )
            return fn(*args, source=Source(journal, connection), **kwargs)

        return click.option(
            "--journal",
            type=click.Path(file_okay=False),
            envvar=f"{ENV}_JOURNAL",
            show_envvar=True,
            help="a journal folder to read (opened read-only)",
        )(_add_connection_options(command, peer_required=False, peer_help=peer_help))

    return decorate
