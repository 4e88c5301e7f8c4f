"""The bus's settings, gathered in one frozen dataclass."""

from __future__ import annotations

import enum
import os
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

__all__ = ["EventConfig", "NodeConfig", "OverflowStrategy"]


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
        check_number("retention_days", self.retention_days, positive=True, optional=True)
        check_int("max_events", self.max_events, minimum=1, optional=True)
        check_choice("durability", self.durability, ("async", "sync"))
        check_int("buffer_size", self.buffer_size, minimum=1)
        object.__setattr__(
            self, "overflow", check_enum("overflow", self.overflow, OverflowStrategy)
        )
        check_number("block_timeout", self.block_timeout, minimum=0)
        check_number("rate_limit", self.rate_limit, positive=True, optional=True)
        check_int("burst", self.burst, minimum=1, optional=True)
        check_int("handler_retries", self.handler_retries, minimum=0)
        check_int("max_traces", self.max_traces, minimum=1)
        check_int("max_events_per_trace", self.max_events_per_trace, minimum=1)
        check_number("trace_ttl", self.trace_ttl, positive=True, optional=True)
        check_int("threads", self.threads, minimum=1)
        check_int("dead_letter_limit", self.dead_letter_limit, minimum=0)
        check_number("blocking_threshold", self.blocking_threshold, positive=True)
        check_int("max_threads", self.max_threads, minimum=self.threads)
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
    ``heartbeat_interval``/``heartbeat_timeout`` (seconds) pace heartbeats and
    declare a silent peer dead; ``batch_size`` caps events per frame;
    ``max_frame_bytes`` drops larger frames; ``recovery_ring`` is how many
    recent local events a bus without a journal keeps to answer recovery
    requests (and the size of the duplicate filter); ``send_hwm`` and
    ``receive_hwm`` are the ZeroMQ high-water marks, in frames, of the stream.
    """

    name: str
    listen: str | None = None
    peers: tuple[str, ...] = ()
    curve_public_key: bytes | None = None
    curve_secret_key: bytes | None = None
    authorized_keys: tuple[bytes, ...] = ()
    peer_public_keys: dict[str, bytes] = field(default_factory=dict)
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    batch_size: int = 256
    max_frame_bytes: int = 16 * 1024 * 1024
    recovery_ring: int = 100_000
    send_hwm: int = 10_000
    receive_hwm: int = 10_000

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"node name must be non-empty without whitespace: {self.name!r}")
        if not isinstance(self.peers, tuple):
            object.__setattr__(self, "peers", tuple(self.peers))
        if not isinstance(self.authorized_keys, tuple):
            object.__setattr__(self, "authorized_keys", tuple(self.authorized_keys))
        check_node_fields(self)
