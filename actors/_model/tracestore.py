"""Correlation: the bounded in-memory store of workflow traces.

``TraceStore`` is the pure, thread-free state of the correlation actor; the
actor (which belongs in this module too) only owns a store and feeds it
events in publish order. Nothing in the store blocks.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors._errors import InvalidEventError
from actors._model.trace import trace_order_key

if TYPE_CHECKING:
    from actors._model.event import Event


def _same(event: Any) -> Any:
    return event


__all__ = ["TraceStore", "TraceStoreStatistics"]

logger = logging.getLogger("actors.router")  # the correlation actor's, beside the router


@dataclass(frozen=True, slots=True)
class TraceStoreStatistics:
    """A snapshot of a ``TraceStore``.

    ``traces`` and ``events`` are what the store holds now; ``evicted_traces``
    and ``truncated_traces`` count since the store was created: a trace is
    truncated (once) when it outgrows ``max_events_per_trace``, or starts
    again after its eviction without its earlier events.
    """

    traces: int
    events: int
    evicted_traces: int
    truncated_traces: int


class _Entry:
    __slots__ = ("counted", "events", "last_activity", "truncated")

    def __init__(self, max_events: int, now: float, truncated: bool, counted: bool) -> None:
        self.events: deque[Any] = deque(maxlen=max_events)  # as packed
        self.last_activity = now
        self.truncated = truncated  # not known whole (``is_complete``)
        self.counted = counted  # in ``truncated_traces`` already


class TraceStore:
    """Keep the recent events of each correlation, within fixed bounds.

    - At most ``max_traces`` traces: adding an event to a new correlation
      beyond that evicts the traces whose last activity is oldest.
    - At most ``max_events_per_trace`` events per trace: beyond that the
      oldest events of the trace are dropped and the trace is marked
      truncated (``is_complete`` then returns False).
    - A trace with no new event for ``trace_ttl`` seconds (per ``clock``)
      expires; ``None`` keeps traces until the other bounds evict them.

    Activity means an event added; reads do not keep a trace alive. A
    correlation id seen again after its trace was evicted starts a new trace
    that is marked incomplete, as its earlier events are gone (the store
    remembers up to ``max_traces`` evicted ids for this; once it has had to
    forget one, every trace it starts is marked incomplete, since any id may
    be a forgotten one).

    ``pack`` turns each event into what the store keeps and ``unpack`` turns
    that back (``get``); both default to keeping the event itself.  The
    correlation actor keeps encoded bytes: a store of ``Event`` objects (each
    with its ``UUID``) would be walked at every full collection of the
    garbage collector, bytes are not.

    ``add`` is O(1) amortised. Not thread-safe: one owner (the actor) uses it.
    """

    __slots__ = (
        "_clock",
        "_events",
        "_evicted",
        "_evicted_count",
        "_forgot",
        "_max_events",
        "_max_traces",
        "_pack",
        "_traces",
        "_truncated_count",
        "_ttl",
        "_unpack",
    )

    def __init__(
        self,
        max_traces: int = 10_000,
        max_events_per_trace: int = 10_000,
        trace_ttl: float | None = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        pack: Callable[[Event], Any] = _same,
        unpack: Callable[[Any], Event] = _same,
        earlier: bool = False,
    ) -> None:
        """Create an empty store; raise ``ValueError`` for a bound below 1 or a ttl <= 0.

        ``earlier``: events were recorded before this store began (a journal
        reopened), so no trace it starts is known whole (``is_complete``).
        """
        if max_traces < 1:
            raise ValueError(f"max_traces must be >= 1, not {max_traces}")
        if max_events_per_trace < 1:
            raise ValueError(f"max_events_per_trace must be >= 1, not {max_events_per_trace}")
        if trace_ttl is not None and not trace_ttl > 0:
            raise ValueError(f"trace_ttl must be > 0 or None, not {trace_ttl}")
        self._max_traces = max_traces
        self._max_events = max_events_per_trace
        self._ttl = trace_ttl
        self._clock = clock
        self._pack = pack
        self._unpack = unpack
        # Ordered by last activity, oldest first: LRU and TTL eviction both
        # pop from the front and stop at the first survivor.
        self._traces: OrderedDict[uuid.UUID, _Entry] = OrderedDict()
        # Ids of evicted traces (bounded, oldest forgotten first), so a late
        # event does not make a partial trace look complete.
        self._evicted: OrderedDict[uuid.UUID, None] = OrderedDict()
        # An evicted id was dropped from ``_evicted``, or events came before
        # this store: any trace started may have earlier events it lacks.
        self._forgot = earlier
        self._events = 0
        self._evicted_count = 0
        self._truncated_count = 0

    def __len__(self) -> int:
        return len(self._traces)

    def __contains__(self, correlation_id: object) -> bool:
        return correlation_id in self._traces

    def add(self, event: Event) -> bool:
        """Append ``event`` to its correlation's trace; return False if it has no correlation id.

        Evict expired traces first, and the least recently active traces if
        the store then holds more than ``max_traces``.
        """
        cid = event.correlation_id
        if cid is None:
            return False
        try:
            packed = self._pack(event)
        except InvalidEventError as exc:  # data changed after it was built, or a surrogate
            logger.error("event %s not kept in its trace: %s", event.sequence, exc)
            return True
        now = self._clock()
        self._evict_expired(now)
        entry = self._traces.get(cid)
        if entry is None:
            known_gone = cid in self._evicted
            if known_gone:
                del self._evicted[cid]
                self._truncated_count += 1
            # Once an evicted id was forgotten, any id may be one of them: a
            # trace started since cannot be known whole.
            entry = _Entry(
                self._max_events, now, truncated=known_gone or self._forgot, counted=known_gone
            )
            self._traces[cid] = entry
            while len(self._traces) > self._max_traces:
                self._evict_oldest()
        else:
            entry.last_activity = now
            self._traces.move_to_end(cid)
        events = entry.events
        if len(events) == self._max_events:
            # deque(maxlen=...) drops the oldest on append.  Counted even when
            # it was not known whole already (started after an id was forgotten).
            entry.truncated = True
            if not entry.counted:
                entry.counted = True
                self._truncated_count += 1
        else:
            self._events += 1
        events.append(packed)
        return True

    def add_many(self, events: Iterable[Event]) -> int:
        """Add every event in order; return how many had a correlation id."""
        return sum(self.add(event) for event in events)

    def get(self, correlation_id: uuid.UUID) -> list[Event] | None:
        """Return the held events of a correlation in trace order, or None if none are held.

        An expired trace counts as evicted. Check ``is_complete`` to know
        whether the list is the whole correlation.
        """
        self.evict_expired()
        entry = self._traces.get(correlation_id)
        if entry is None:
            return None
        unpack = self._unpack
        return sorted([unpack(item) for item in entry.events], key=trace_order_key)

    def is_complete(self, correlation_id: uuid.UUID) -> bool:
        """Return True if the store holds every event of the correlation it was given.

        False for an unknown or evicted correlation, for a truncated one, and
        for one restarted after its eviction: the caller should fall back to
        the journal.
        """
        self.evict_expired()
        entry = self._traces.get(correlation_id)
        return entry is not None and not entry.truncated

    def evict_expired(self) -> int:
        """Drop the traces inactive for longer than ``trace_ttl``; return how many."""
        return self._evict_expired(self._clock())

    def statistics(self) -> TraceStoreStatistics:
        """Return a snapshot of the store's size and eviction counters."""
        return TraceStoreStatistics(
            traces=len(self._traces),
            events=self._events,
            evicted_traces=self._evicted_count,
            truncated_traces=self._truncated_count,
        )

    stats = statistics

    def _evict_expired(self, now: float) -> int:
        if self._ttl is None:
            return 0
        deadline = now - self._ttl
        evicted = 0
        traces = self._traces
        while traces and next(iter(traces.values())).last_activity < deadline:
            self._evict_oldest()
            evicted += 1
        return evicted

    def _evict_oldest(self) -> None:
        cid, entry = self._traces.popitem(last=False)
        self._events -= len(entry.events)
        self._evicted_count += 1
        self._evicted[cid] = None
        if len(self._evicted) > self._max_traces:
            self._evicted.popitem(last=False)
            self._forgot = True
