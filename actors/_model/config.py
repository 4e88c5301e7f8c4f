"""The bus's settings, gathered in one frozen dataclass."""

from __future__ import annotations

import enum
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Literal

from actors._model.guards import (
    check_bool,
    check_choice,
    check_enum,
    check_int,
    check_node_fields,
    check_number,
    check_path,
)

__all__ = ["EventConfig", "NodeConfig", "OverflowStrategy", "check_endpoint"]

_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):(?P<port>\*|[0-9]{1,5})$")
_KEY_LENGTH = 40  # a Z85 CURVE key
_Z85 = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
MAX_NODE_NAME_BYTES = 255
"""The longest node name in UTF-8 bytes: a data frame gives its length one byte."""
MIN_FRAME_BYTES = 64 * 1024 + 1024
"""The smallest ``max_frame_bytes``: a frame's header room (64 KiB) and a small event."""

MAX_SIZE = sys.maxsize
"""The largest count a size of ``EventConfig`` may hold (what a deque or list can)."""
MAX_WAIT = threading.TIMEOUT_MAX
"""The longest time in seconds ``EventConfig`` takes: what a lock or condition can wait."""
MAX_DAYS = 999_999_999
"""The longest ``retention_days`` (``datetime.timedelta``'s own limit)."""
MAX_THREADS = 4096
"""The most handler threads a bus may have (``threads``, ``max_threads``)."""
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
"""The largest frame a node or broker sends or accepts unless configured (16 MiB)."""
IPC_PATH_MAX = 107
"""The longest ``ipc://`` path ZeroMQ takes on Linux (``zmq.IPC_PATH_MAX_LEN``: a
socket address's 108 bytes less the terminating NUL)."""


def check_endpoint(endpoint: object, what: str, *, bind: bool) -> str:
    """Return ``endpoint`` if ZeroMQ can use it; raise ``ValueError`` naming it and the fault.

    Accepted: ``tcp://HOST:PORT`` (``PORT`` 0-65535, or ``*`` when binding),
    ``ipc://PATH`` and ``inproc://NAME``.
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"{what} must be a str endpoint, not {type(endpoint).__name__}")
    if "://" not in endpoint:
        raise ValueError(
            f"{what} {endpoint!r} has no transport: write tcp://HOST:PORT, ipc://PATH "
            "or inproc://NAME"
        )
    scheme, _, rest = endpoint.partition("://")
    if scheme == "tcp":
        match = _TCP.match(endpoint)
        if match is None:
            raise ValueError(f"{what} {endpoint!r} is not tcp://HOST:PORT")
        port = match["port"]
        if port == "*" and not bind:
            raise ValueError(f"{what} {endpoint!r}: a wildcard port can only be listened on")
        if match["host"] == "*" and not bind:
            raise ValueError(f"{what} {endpoint!r}: a wildcard host can only be listened on")
        if port != "*" and int(port) > 65535:
            raise ValueError(f"{what} {endpoint!r}: port {port} is out of range (0-65535)")
        if bind and port == "65535":
            raise ValueError(
                f"{what} {endpoint!r}: a node listens on PORT and PORT+1 (its stream): "
                "65535 leaves no room"
            )
        return endpoint
    if scheme in ("ipc", "inproc"):
        if not rest or any(c.isspace() for c in rest):
            raise ValueError(f"{what} {endpoint!r} needs a name without whitespace")
        # A listening node binds PATH.pub beside PATH (a broker also PATH.in).
        limit = IPC_PATH_MAX - (len(".pub") if bind else 0)
        if scheme == "ipc" and len(rest.encode()) > limit:
            raise ValueError(
                f"{what} {endpoint!r}: an ipc path is at most {limit} bytes (the system's "
                f"limit of {IPC_PATH_MAX}"
                + (", less the '.pub' of the socket beside it)" if bind else ")")
            )
        return endpoint
    raise ValueError(
        f"{what} {endpoint!r}: transport {scheme!r} is not supported (tcp://, ipc://, inproc://)"
    )


def endpoint_key(endpoint: str) -> str:
    """Return ``endpoint`` spelt one way (a checked one): what makes two spellings the same.

    A TCP port is a number (``07000`` is ``7000``), a host name is not case
    sensitive, an ipc path's repeated slashes and ``.`` segments go (``a//./b``
    is ``a/b``; ``..`` stays, as it may cross a symbolic link; an abstract
    ``@name`` is taken as spelt).
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme == "tcp":
        match = _TCP.match(endpoint)
        if match is not None and match["port"] != "*":
            return f"tcp://{match['host'].lower()}:{int(match['port'])}"
    elif scheme == "ipc" and not rest.startswith("@"):  # an abstract name is as spelt
        # Repeated slashes and "." segments only: ".." may cross a symbolic link.
        parts = [part for part in rest.split("/") if part not in ("", ".")]
        return "ipc://" + ("/" if rest.startswith("/") else "") + "/".join(parts)
    return endpoint


def check_key(key: object, what: str) -> None:
    """Raise unless ``key`` is a CURVE key: 40 bytes of Z85 text."""
    _check_key(key, what)


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"{what} must be bytes (40 Z85 characters), not {type(key).__name__}")
    if len(key) != _KEY_LENGTH:
        raise ValueError(f"{what} must be 40 bytes of Z85 text, not {len(key)} bytes")
    if not _Z85.issuperset(key):
        raise ValueError(f"{what} is not Z85 text (a CURVE key from keygen)")


class OverflowStrategy(enum.Enum):
    """What a full subscription mailbox does with the next event."""

    DROP_OLDEST = "drop_oldest"
    """Drop the oldest queued event of that subscription (the default)."""
    DROP_NEWEST = "drop_newest"
    """Drop the incoming event for that subscription only."""
    BLOCK = "block"
    """Make ``publish`` wait for room (up to ``block_timeout``); nothing is lost."""
    REJECT = "reject"
    """Fail the publish with ``BackpressureError``; the event goes nowhere."""


@dataclass(frozen=True, slots=True)
class EventConfig:
    """Settings of an ``EventBus``; every field is optional.

    ``buffer_size`` is the default mailbox capacity of each subscription and
    ``overflow`` its default ``OverflowStrategy``; ``block_timeout`` bounds how
    long a ``BLOCK`` publish waits before ``BackpressureError``.  ``rate_limit``
    (events per second) with ``burst`` (bucket size, default one second's
    worth) turns on a token bucket.  ``handler_retries`` is how many times a
    failing handler is retried before the event becomes a dead letter.
    ``max_traces``, ``max_events_per_trace`` and ``trace_ttl`` (seconds of
    inactivity) bound the correlation actor's memory.  ``persistence_path``,
    ``retention_days``, ``max_events`` and ``durability`` configure the
    journal; ``recover`` says what opening a damaged journal does (``"refuse"``:
    raise ``JournalDamagedError``; ``"truncate"``: accept the loss, warn and
    count it), and ``read_only`` opens the journal for reading only (no
    publishing; nothing is written to the folder).  ``threads`` is the number
    of threads that run handlers when none blocks; a handler running longer
    than ``blocking_threshold`` seconds counts as blocked and the pool adds a
    thread, up to ``max_threads``.
    """

    persistence_path: str | os.PathLike[str] | None = None
    retention_days: float | None = None
    max_events: int | None = None
    durability: Literal["async", "sync"] = "async"
    buffer_size: int = 10_000
    overflow: OverflowStrategy = OverflowStrategy.DROP_OLDEST
    block_timeout: float = 10.0
    rate_limit: float | None = None
    burst: int | None = None
    handler_retries: int = 0
    max_traces: int = 10_000
    max_events_per_trace: int = 10_000
    trace_ttl: float | None = 3600.0
    threads: int = 2
    dead_letter_limit: int = 10_000
    blocking_threshold: float = 0.1
    max_threads: int = 64
    recover: Literal["refuse", "truncate"] = "refuse"
    read_only: bool = False

    def __post_init__(self) -> None:
        # One check per field, in field order; an overflow value string
        # ("drop_oldest") becomes its OverflowStrategy, as subscribe() accepts.
        check_path("persistence_path", self.persistence_path, optional=True)
        check_number(
            "retention_days", self.retention_days, positive=True, maximum=MAX_DAYS, optional=True
        )
        check_int("max_events", self.max_events, minimum=1, maximum=MAX_SIZE, optional=True)
        check_choice("durability", self.durability, ("async", "sync"))
        check_int("buffer_size", self.buffer_size, minimum=1, maximum=MAX_SIZE)
        object.__setattr__(
            self, "overflow", check_enum("overflow", self.overflow, OverflowStrategy)
        )
        check_number("block_timeout", self.block_timeout, minimum=0, maximum=MAX_WAIT)
        check_number("rate_limit", self.rate_limit, positive=True, optional=True)
        check_int("burst", self.burst, minimum=1, maximum=MAX_SIZE, optional=True)
        check_int("handler_retries", self.handler_retries, minimum=0, maximum=MAX_SIZE)
        check_int("max_traces", self.max_traces, minimum=1, maximum=MAX_SIZE)
        check_int("max_events_per_trace", self.max_events_per_trace, minimum=1, maximum=MAX_SIZE)
        check_number("trace_ttl", self.trace_ttl, positive=True, maximum=MAX_WAIT, optional=True)
        check_int("threads", self.threads, minimum=1, maximum=MAX_THREADS)
        check_int("dead_letter_limit", self.dead_letter_limit, minimum=0, maximum=MAX_SIZE)
        check_number("blocking_threshold", self.blocking_threshold, positive=True, maximum=MAX_WAIT)
        check_int("max_threads", self.max_threads, minimum=self.threads, maximum=MAX_THREADS)
        check_choice("recover", self.recover, ("refuse", "truncate"))
        check_bool("read_only", self.read_only)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Join this bus to others over ZeroMQ (see ``docs/cluster.md``).

    ``name`` identifies the node (it becomes every local event's ``origin``);
    ``listen`` is the endpoint peers connect to (``tcp://127.0.0.1:5701``,
    ``ipc:///tmp/a.sock``); ``peers`` are the endpoints of other nodes or of a
    ``Broker``.  With ``curve_secret_key`` (and its public key) set, the node
    speaks CURVE and accepts only the ``authorized_keys`` it is given;
    ``peer_public_keys`` maps each endpoint of ``peers`` to that peer's public
    key.  Keys are 40-byte Z85 (``actors.generate_keypair()``).
    ``peer_names`` binds node names to public keys under CURVE: a peer that
    says it is one of these names must hold that key (see ``docs/cluster.md``).
    Every endpoint is checked here (``ValueError`` naming it).
    ``heartbeat_interval``/``heartbeat_timeout`` (seconds) pace heartbeats and
    declare a silent peer dead; ``batch_size`` caps events per frame;
    ``max_frame_bytes`` is the largest frame sent or accepted (an event that
    cannot fit in a frame of its own fails its ``publish`` with
    ``EventTooLargeError``); ``recovery_ring`` is how many
    recent local events a bus without a journal keeps to answer recovery
    requests (and the size of the duplicate filter); ``send_hwm`` and
    ``receive_hwm`` are the ZeroMQ high-water marks, in frames, of the stream.
    Flow control (``docs/cluster.md``): ``credit_window`` is how many events
    of each origin this node lets be in flight to it past what it handled;
    ``send_queue`` how many events wait for peers' credit before publishers
    are held (``BLOCK`` semantics, ``EventConfig.block_timeout``);
    ``lag_policy`` ``"block"`` (default: a lagging node holds origins back,
    nothing is lost) or ``"drop"`` (origins drop its events instead, counted
    and announced with ``$bus.peer.lagging``).
    """

    name: str
    listen: str | None = None
    peers: tuple[str, ...] = ()
    curve_public_key: bytes | None = None
    curve_secret_key: bytes | None = None
    authorized_keys: tuple[bytes, ...] = ()
    peer_public_keys: dict[str, bytes] = field(default_factory=dict)
    peer_names: dict[str, bytes] = field(default_factory=dict)
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    batch_size: int = 256
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    recovery_ring: int = 100_000
    send_hwm: int = 10_000
    receive_hwm: int = 10_000
    credit_window: int = 8192
    send_queue: int = 10_000
    lag_policy: str = "block"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"node name must be a str, not {type(self.name).__name__}")
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"node name must be non-empty without whitespace: {self.name!r}")
        try:
            size = len(self.name.encode())
        except UnicodeEncodeError:
            raise ValueError(f"node name is not valid UTF-8 text: {self.name!r}") from None
        if size > MAX_NODE_NAME_BYTES:
            raise ValueError(f"node name is over {MAX_NODE_NAME_BYTES} bytes in UTF-8")
        if isinstance(self.peers, str):
            raise TypeError("peers must be a sequence of endpoints, not one str")
        if not isinstance(self.peers, tuple):
            object.__setattr__(self, "peers", tuple(self.peers))
        if not isinstance(self.authorized_keys, tuple):
            object.__setattr__(self, "authorized_keys", tuple(self.authorized_keys))
        check_node_fields(self)  # types and ranges of keys, timings and sizes
        if self.listen is not None:
            check_endpoint(self.listen, "listen", bind=True)
        for endpoint in self.peers:
            check_endpoint(endpoint, "peer", bind=False)
        keys = [endpoint_key(endpoint) for endpoint in self.peers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"peers lists an endpoint twice: {list(self.peers)}")
        if self.listen is not None and endpoint_key(self.listen) in keys:
            raise ValueError(f"peers lists this node's own listen endpoint {self.listen!r}")
        self._check_keys()
        if self.max_frame_bytes < MIN_FRAME_BYTES:
            raise ValueError(
                f"max_frame_bytes must be at least {MIN_FRAME_BYTES} (64 KiB of header room "
                f"and a small event), not {self.max_frame_bytes}"
            )

    def _check_keys(self) -> None:
        if (self.curve_secret_key is None) != (self.curve_public_key is None):
            raise ValueError("curve_public_key and curve_secret_key go together: give both")
        if self.curve_public_key is not None:
            _check_key(self.curve_public_key, "curve_public_key")
            _check_key(self.curve_secret_key, "curve_secret_key")
        for key in self.authorized_keys:
            _check_key(key, "each of authorized_keys")
        if not isinstance(self.peer_public_keys, dict):
            raise TypeError("peer_public_keys must be a dict endpoint -> public key")
        for endpoint, key in self.peer_public_keys.items():
            check_endpoint(endpoint, "peer_public_keys endpoint", bind=False)
            _check_key(key, f"peer_public_keys[{endpoint!r}]")
        if not isinstance(self.peer_names, dict):
            raise TypeError("peer_names must be a dict node name -> public key")
        for name, key in self.peer_names.items():
            if not isinstance(name, str):
                raise TypeError(f"peer_names keys are node names (str), not {name!r}")
            _check_key(key, f"peer_names[{name!r}]")
        if self.curve_public_key is None and (self.authorized_keys or self.peer_names):
            raise ValueError(
                "authorized_keys and peer_names need CURVE: give curve_public_key and "
                "curve_secret_key too (without them the node accepts anyone)"
            )
