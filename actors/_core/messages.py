"""Messages between the bus's actors: commands are nouns, facts past tense."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from actors._core.routes import Route

if TYPE_CHECKING:
    from actors._core.backpressure import Gate
    from actors._model.event import Event
    from actors._model.query import EventQuery
    from actors._runtime.dispatcher import FifoMailbox
    from actors._runtime.future import BusFuture

__all__ = [
    "Barrier",
    "Closing",
    "CorrelatedEvents",
    "DeadLetter",
    "DeadLettered",
    "GetDeadLetters",
    "HistoryRead",
    "Joined",
    "KeepFrom",
    "Release",
    "GetRouterFigures",
    "RoomFreed",
    "RouterFigures",
    "Flush",
    "FlushTaken",
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
    "SaveCheckpoints",
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
    routed: threading.Event | None = None  # set once routed (a BLOCK pattern matched)


@dataclass(frozen=True, slots=True)
class PublishBatch:
    """``Publish`` for many events at once (``publish_many``, events from peers)."""

    events: Sequence[Event]
    futures: Sequence[BusFuture[Event] | None]
    published_at: float
    internal: bool = False
    routed: threading.Event | None = None
    owned: bool = False  # as ``Publish.owned`` (events from peers, decoded for this bus)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Add ``route``; events published after the reply reach it.

    ``cancelled()`` true when the router takes it: the subscription ended
    first (a catch-up that ran out of history after its ``Unsubscribe``).
    """

    route: Route
    # Told the first live sequence; a ``Forward`` it returns is sent at once.
    on_subscribed: Callable[[int], Forward | None] | None = None
    cancelled: Callable[[], bool] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove the subscription ``id``, then call ``then`` (stops its actor)."""

    id: str
    then: Callable[[], object] | None = None


@dataclass(frozen=True, slots=True)
class Closing:
    """The bus is closing: refuse every later publish (``BusClosedError``).

    Sent by ``close`` before its flush, so what was published before
    ``close`` is routed and handled, and nothing published after it is
    routed into subscriptions that ``close`` is about to give up on.
    """


FlushTaken = Callable[[list[Any]], Callable[[Any], None]]
"""A flush's ``taken`` (``Flush``): told the mailboxes it waits for, then each as it passes."""


@dataclass(frozen=True, slots=True)
class Flush:
    """Resolve ``future`` once everything published before it is handled and recorded.

    ``taken`` is called first, on the router's thread, with the mailboxes
    the flush puts a barrier in; what it returns is called with each one
    as its barrier passes.  With ``only``, barriers go in those
    subscriptions alone (and the recorders).
    """

    future: BusFuture[None]
    taken: FlushTaken | None = None
    only: frozenset[str] | None = None  # the subscriptions (ids) to wait for; None: all


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
    future: BusFuture[CorrelatedEvents]


class CorrelatedEvents(NamedTuple):
    """The correlation actor's answer: the events it holds, and whether memory lost none."""

    events: list[Event]
    complete: bool


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

    target: FifoMailbox
    message: object


@dataclass(frozen=True, slots=True)
class ReadJournal:
    """Journal: reply with the stored events ``query`` selects."""

    query: EventQuery
    future: BusFuture[list[Event]]


@dataclass(frozen=True, slots=True)
class SaveCheckpoint:
    """Journal: remember that durable subscription ``name`` handled up to ``sequence``."""

    name: str
    sequence: int


@dataclass(frozen=True, slots=True)
class SaveCheckpoints:
    """Journal: save every ``(name, sequence)`` of ``items`` in one write (all or none)."""

    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class KeepFrom:
    """Journal: retention keeps what the journal gets from now on, until ``Release(key)``.

    A catch-up subscription reads, from the journal, the events published
    after ``subscribe`` returned until it is live; retention must not delete
    them first.  Sent through the router before ``subscribe`` returns, so it
    reaches the journal before the record of any event published after.
    """

    key: object


@dataclass(frozen=True, slots=True)
class Release:
    """Journal: forget the ``KeepFrom`` of ``key`` (the subscription is live, or gone)."""

    key: object


@dataclass(frozen=True, slots=True)
class LoadCheckpoint:
    """Journal: reply with the checkpoint of ``name`` (or None)."""

    name: str
    future: BusFuture[int | None]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a subscription gave up on, with the error of its last attempt."""

    subscription_id: str
    pattern: str
    event: Event
    error_type: str
    error: str
    attempts: int
    letter: Event | None = None  # the ``$bus.deadletter`` event that announced it


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """Router: a subscriber gave up on an event; announce and keep the letter."""

    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class GetDeadLetters:
    """Router: reply with the dead letters kept in memory (oldest first)."""

    future: BusFuture[list[DeadLetter]]


@dataclass(frozen=True, slots=True)
class RouterFigures:
    """The router's counters, as one snapshot."""

    published: int
    rejected: int
    dead_letters: int
    events_per_second: float
    peak_events_per_second: float
    next_sequence: int = 0  # the sequence the next accepted event gets


@dataclass(frozen=True, slots=True)
class GetRouterFigures:
    """Router: reply with a ``RouterFigures`` snapshot."""

    future: BusFuture[RouterFigures]


@dataclass(frozen=True, slots=True)
class RoomFreed:
    """Router: the full BLOCK subscription of ``gate`` has room again."""

    gate: Gate


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """Subscriber: a page of history it asked the journal for has been read."""

    future: BusFuture[list[Event]]


@dataclass(frozen=True, slots=True)
class FlushMark:
    """Subscriber (catch-up): call ``done`` once every event before ``sequence`` is handled."""

    sequence: int
    done: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Joined:
    """Subscriber: the router added its route; live delivery starts at ``live_start``."""

    live_start: int
