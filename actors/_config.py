"""The bus's settings, gathered in one frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from actors._mailbox import OverflowStrategy

__all__ = ["EventConfig"]


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
    journal.  ``threads`` is the size of the bus's dispatcher pool.
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

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if self.durability not in ("async", "sync"):
            raise ValueError(f"durability must be 'async' or 'sync', not {self.durability!r}")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        if self.handler_retries < 0:
            raise ValueError("handler_retries must be >= 0")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
        if not isinstance(self.overflow, OverflowStrategy):
            raise ValueError(f"overflow must be an OverflowStrategy, not {self.overflow!r}")
