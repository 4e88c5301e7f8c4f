"""Messages between the bus's actors: commands are nouns, facts past tense."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors._model.event import Event
    from actors._runtime.future import BusFuture
    from actors._runtime.mailbox import EventMailbox

__all__ = [
    "Barrier",
    "Flush",
    "Forward",
    "GetCorrelated",
    "LoadCheckpoint",
    "Publish",
    "PublishBatch",
    "ReadJournal",
    "Record",
    "Relieved",
    "Route",
    "SaveCheckpoint",
    "Subscribe",
    "Unsubscribe",
]


# Not frozen: a frozen dataclass's __init__ costs 2.5x (object.__setattr__ per
# field) and one Publish is made per event.  Treated as immutable all the same.
@dataclass(slots=True)
class Publish:
    """Sequence, route and record one event; resolve ``future`` with the result.

    ``owned`` means the bus built ``event`` itself and nobody else holds it,
    so the router may stamp the sequence in place instead of copying.
    """

    event: Event
    future: BusFuture[Event] | None
    published_at: float
    internal: bool = False
    owned: bool = False


@dataclass(frozen=True, slots=True)
class PublishBatch:
    """``Publish`` for many events at once (``publish_many``, events from peers)."""

    events: Sequence[Event]
    futures: Sequence[BusFuture[Event] | None]
    published_at: float
    internal: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """What the router needs to know of one subscription."""

    id: str
    pattern: str
    mailbox: EventMailbox
    predicate: Callable[[Event], bool] | None
    strict: bool  # REJECT or BLOCK: checked for room before anything is delivered


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Add ``route``; events published after the reply reach it."""

    route: Route
    on_subscribed: Callable[[int], None] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove the subscription ``id``, then call ``then`` (stops its actor)."""

    id: str
    then: Callable[[], Any] | None = None


@dataclass(frozen=True, slots=True)
class Flush:
    """Resolve ``future`` once everything published before it is handled and recorded."""

    future: BusFuture[None]


@dataclass(frozen=True, slots=True)
class Record:
    """Events the router accepted, for the journal, the correlation actor, the bridge.

    ``futures`` (sync durability only) resolve once the events are on disk.
    """

    events: Sequence[Event]
    futures: Sequence[BusFuture[Event] | None] | None = None


@dataclass(frozen=True, slots=True)
class Barrier:
    """Call ``callback`` once every message before it has been handled."""

    callback: Callable[[], None]


@dataclass(frozen=True, slots=True)
class GetCorrelated:
    """Reply with the events of ``correlation_id`` (or None if not held)."""

    correlation_id: uuid.UUID
    future: BusFuture[Any]


@dataclass(frozen=True, slots=True)
class Relieved:
    """A subscription's mailbox fell under its low-water mark."""

    id: str
    pattern: str
    queued: int
    capacity: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Router: send ``message`` to ``target`` after the events routed so far are recorded."""

    target: Any  # a FifoMailbox
    message: Any


@dataclass(frozen=True, slots=True)
class ReadJournal:
    """Journal: reply with the stored events ``query`` selects."""

    query: Any  # an EventQuery
    future: BusFuture[Any]


@dataclass(frozen=True, slots=True)
class SaveCheckpoint:
    """Journal: remember that durable subscription ``name`` handled up to ``sequence``."""

    name: str
    sequence: int


@dataclass(frozen=True, slots=True)
class LoadCheckpoint:
    """Journal: reply with the checkpoint of ``name`` (or None)."""

    name: str
    future: BusFuture[Any]
