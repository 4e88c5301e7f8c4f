"""What the bridge needs of its bus, as small ports the wiring hands it (never the bus).

The facade (``actors._bus``) builds one ``LocalNode`` per node; the bridge and
its answers call only what is declared here, so ``_cluster`` never imports
the bus (``docs/architecture.md``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from actors._core.backpressure import Hold
from actors._model.event import Event
from actors._model.metrics import BusMetrics
from actors._model.query import EventQuery
from actors._runtime.future import BusFuture

__all__ = ["JournalPort", "LocalNode"]


class JournalPort(Protocol):
    """The local journal, for a persistent node."""

    def read(self, query: EventQuery, timeout: float | None) -> list[Event]:
        """Return what ``query`` selects (blocks: call from a worker thread)."""
        ...

    def load_checkpoint(self, name: str, timeout: float | None) -> int | None:
        """Return the saved checkpoint ``name`` (blocks: call from a worker thread)."""
        ...

    def save_checkpoints(self, items: Sequence[tuple[str, int]]) -> None:
        """Save checkpoints, all in one write, after every record routed so far (never blocks)."""
        ...

    def after_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (journal thread) once every record routed so far is written."""
        ...


class LocalNode(Protocol):
    """The local bus as the bridge sees it."""

    @property
    def name(self) -> str:
        """The node's name (every local event's origin)."""
        ...

    @property
    def first_sequence(self) -> int:
        """The sequence the bus gives its first event of this run."""
        ...

    @property
    def numbering(self) -> int | None:
        """The identity of the journal's numbering of sequences (None: no journal)."""
        ...

    @property
    def journal(self) -> JournalPort | None:
        """The journal, or None on a bus that keeps nothing."""
        ...

    def inject(self, events: Sequence[Event]) -> None:
        """Route events that arrived from peers, in order (never blocks, never refused)."""
        ...

    def flush(self, timeout: float | None) -> None:
        """Wait until everything published so far is routed and recorded."""
        ...

    def after_handled(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (any thread) once all routed so far is handled (never blocks)."""
        ...

    def hold_publishers(self, holds: tuple[Hold, ...]) -> None:
        """Make publishers wait on ``holds`` (replacing the bridge's earlier ones; never blocks)."""
        ...

    def publish(self, event: Event) -> BusFuture[Event]:
        """Publish ``event`` locally (a peer's ``publish_remote``)."""
        ...

    def local_correlated(self, correlation_id: uuid.UUID, timeout: float | None) -> list[Event]:
        """Return the local events of ``correlation_id`` (memory and journal; never peers)."""
        ...

    def metrics(self) -> BusMetrics:
        """Return the bus's figures now (a peer's ``remote_metrics``, ``top``)."""
        ...
