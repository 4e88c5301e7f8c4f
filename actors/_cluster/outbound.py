"""Data frames from local events, as a plain state machine (no sockets, no threads).

``Outbound`` knows the subscription prefixes peers hold (from the XPUB
socket), sends an event only if one of them is a prefix of its type, batches
runs of events that go to the same subscribers (up to ``batch_size`` events
and ``max_frame_bytes`` bytes: an event too big to share a frame goes in one
of its own), and keeps, per prefix, the origin sequence of the last event
sent under it (the frame's *chain* pointers).  An event that cannot fit in
any frame is set aside (``take_oversized``): it is never sent and never
breaks a chain, so no peer sees a gap for it.

The recovery ring (a bus without a journal only: a persistent one answers
from its journal) keeps each local event as ``(sequence, type, chunk)``, the
chunk being the event's bytes as framed, shared with the frame that carries
it: plain bytes, which the garbage collector never walks, where ``Event``
objects (each with its ``UUID``) were walked at every full collection.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import deque
from collections.abc import Iterable, Sequence

from actors._cluster.limits import FRAME_OVERHEAD
from actors._cluster.wire import encode_data_payload
from actors._codec.events import chunk_of
from actors._errors import InvalidEventError
from actors._model.config import DEFAULT_MAX_FRAME_BYTES
from actors._model.event import Event
from actors._model.patterns import MAX_EVENT_TYPE_LENGTH

__all__ = ["HEARTBEAT_ROOM", "MAX_PREFIX_BYTES", "UNENCODABLE", "Outbound", "RingEntry", "Run"]

UNENCODABLE = -1
"""``take_oversized``'s size for an event that cannot be encoded at all."""

MAX_PREFIX_BYTES = 4 * MAX_EVENT_TYPE_LENGTH
"""The longest subscription prefix kept: an event type's most UTF-8 bytes."""
HEARTBEAT_ROOM = 8 * 1024
"""Bytes of a heartbeat kept for what is not its chains (node name, numbers, topic)."""

RingEntry = tuple[int, str, bytes]
"""A recovery ring entry: origin sequence, event type, the event's chunk."""

_CLASS_CACHE = 4096
EVICTED_TYPES = 4096
"""Event types whose last ring eviction is kept apart; past it, one mark for all types."""


class Run:
    """Consecutive local events bound for the same subscribers: one future frame."""

    __slots__ = ("chunks", "count", "events", "first", "last", "matched")

    def __init__(self, matched: tuple[bytes, ...], events: list[Event], chunks: list[bytes]):
        self.matched = matched  # every subscribed prefix the events start with
        self.events = events
        self.chunks = chunks  # each event encoded as a one-event ``EventBatch``
        self.first = events[0].sequence or 0
        self.last = events[-1].sequence or 0
        self.count = len(events)


class Outbound:
    """Build data frames from local events (called on the bridge's I/O thread only)."""

    def __init__(
        self,
        origin: str,
        epoch: int,
        batch_size: int,
        ring_size: int,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.origin = origin
        self.epoch = epoch
        self.batch_size = max(1, batch_size)
        self.budget = max(1, max_frame_bytes - FRAME_OVERHEAD)
        self.head = 0
        self.active: set[bytes] = set()
        self.prev: dict[bytes, int] = {}
        # ring_size 0: no ring (a persistent bus recovers from its journal).
        self.ring: deque[RingEntry] | None = deque(maxlen=ring_size) if ring_size > 0 else None
        # The last sequence the ring let go of, per event type (a receiver's range
        # lost only if one of its types went), and for all types once too many.
        self.evicted: dict[str, int] = {}
        self.evicted_upto = 0
        self._classes: dict[str, tuple[bytes, ...]] = {}
        self._oversized: list[tuple[Event, int]] = []
        self._chain_turn = 0  # where the next heartbeat's chains start, when not all fit

    def add_prefix(self, prefix: bytes) -> bool:
        """A peer subscribed to ``prefix``: start its chain at the current head.

        Return False for a prefix longer than any event type can be
        (``MAX_PREFIX_BYTES``): it can match nothing, and is not kept.
        """
        if len(prefix) > MAX_PREFIX_BYTES:
            return False
        if prefix not in self.active:
            self.active.add(prefix)
            self.prev[prefix] = self.head
            self._classes.clear()
        return True

    def remove_prefix(self, prefix: bytes) -> bool:
        """No peer holds ``prefix`` any more; return False (nothing changes) if none did."""
        if prefix not in self.active:
            return False
        self.active.discard(prefix)
        self.prev.pop(prefix, None)
        self._classes.clear()
        return True

    def _matched(self, event_type: str) -> tuple[bytes, ...]:
        matched = self._classes.get(event_type)
        if matched is None:
            raw = event_type.encode()
            active = self.active
            matched = tuple(raw[:i] for i in range(len(raw) + 1) if raw[:i] in active)
            if len(self._classes) >= _CLASS_CACHE:
                self._classes.clear()
            self._classes[event_type] = matched
        return matched

    def frames(self, events: Iterable[Event]) -> list[list[bytes]]:
        """Return the data frames for ``events`` (local and injected, in sequence order).

        Events of other origins only advance the head; local ones go to the
        recovery ring and, if a peer prefix matches, into a frame.
        """
        return [self.build(run) for run in self.runs(events)]

    def runs(self, events: Iterable[Event]) -> list[Run]:
        """Group ``events`` into the runs of future frames (``build`` makes each a frame).

        Advances the head and fills the ring as ``frames`` does; the chains
        move only when a run is built, so a run held back (flow control) or
        dropped breaks no chain.
        """
        out: list[Run] = []
        run: list[Event] = []
        chunks: list[bytes] = []
        size = 0
        run_class: tuple[bytes, ...] = ()
        origin = self.origin
        ring = self.ring
        budget = self.budget
        for event in events:
            seq = event.sequence or 0
            self.head = max(self.head, seq)
            if event.origin != origin:
                continue
            matched = self._matched(event.event_type) if self.active else ()
            if ring is None and not matched:
                continue
            try:
                chunk = chunk_of(event)
            except InvalidEventError:  # data changed after it was built, or a surrogate in it
                if matched:
                    self._oversized.append((event, UNENCODABLE))
                continue
            if ring is not None:
                if len(ring) == ring.maxlen:
                    gone = ring[0]
                    evicted = self.evicted
                    evicted[gone[1]] = gone[0]
                    if len(evicted) > EVICTED_TYPES:
                        self.evicted_upto = max(self.evicted_upto, *evicted.values())
                        evicted.clear()
                ring.append((seq, event.event_type, chunk))
                if not matched:
                    continue
            if len(chunk) > budget:
                self._oversized.append((event, len(chunk)))
                continue
            if run and (
                matched != run_class or len(run) >= self.batch_size or size + len(chunk) > budget
            ):
                out.append(Run(run_class, run, chunks))
                run, chunks, size = [], [], 0
            run_class = matched
            run.append(event)
            chunks.append(chunk)
            size += len(chunk)
        if run:
            out.append(Run(run_class, run, chunks))
        return out

    def why_unsent(self, size: int, max_frame_bytes: int) -> str:
        """Say why an event ``take_oversized`` returned with ``size`` was not sent."""
        if size == UNENCODABLE:
            return "cannot be encoded (its data changed after it was built, or holds a surrogate)"
        return (
            f"is {size} bytes framed, over the {self.budget} a frame holds for one event "
            f"(max_frame_bytes={max_frame_bytes} less {max_frame_bytes - self.budget})"
        )

    def take_oversized(self) -> list[tuple[Event, int]]:
        """Return (and forget) the events too big for any frame, with their encoded sizes.

        The size is ``UNENCODABLE`` for an event that could not be encoded at all.
        """
        taken, self._oversized = self._oversized, []
        return taken

    def build(self, run: Run) -> list[bytes]:
        """Return the data frame of ``run`` and move the chains of its prefixes to it."""
        prev = self.prev
        active = self.active
        matched = run.matched
        first, last = run.first, run.last
        # A prefix taken since the run was cut starts its chain at the head
        # of then, past this run: the run is not part of that chain.
        chains = [(p, prev[p]) for p in matched if p in active and prev[p] < first]
        for p, _ in chains:
            prev[p] = last
        # The longest matching prefix reaches exactly the subscribers of the run.
        return encode_data_payload(
            matched[-1],
            self.origin,
            self.epoch,
            chains,
            (first, last, run.count),
            b"".join(run.chunks),
        )

    def chains(self, room: int | None = None) -> list[list[object]]:
        """Return ``[[prefix, last sequence sent under it], ...]`` for heartbeats.

        With ``room``, at most that many bytes of them as JSON: when they do
        not all fit (many prefixes subscribed), each heartbeat carries the
        next ones that fit, in turn, so every chain is announced.
        """
        out: list[list[object]] = []
        for prefix, last in self.prev.items():
            try:
                out.append([prefix.decode(), last])
            except UnicodeDecodeError:
                continue
        # A character is at most 6 bytes of JSON, a sequence 20 digits.
        if room is None or sum(6 * len(str(c[0])) + 26 for c in out) <= room:
            return out
        sizes = [len(json.dumps(c, separators=(",", ":"))) + 1 for c in out]
        start = self._chain_turn % len(out)
        picked: list[list[object]] = []
        used = 2
        for k in range(len(out)):
            i = (start + k) % len(out)
            if used + sizes[i] > room:
                break
            picked.append(out[i])
            used += sizes[i]
        self._chain_turn = start + len(picked)
        return picked

    def from_ring(
        self, after: int, upto: int, prefixes: Sequence[str], limit: int
    ) -> tuple[list[RingEntry], bool, bool]:
        """Return ``(entries, complete, lost)``: the ring's entries in ``(after, upto]``.

        Only entries whose type starts with one of ``prefixes``.

        I/O thread only, like the rest (the bridge asks it from its workers).

        ``complete`` is False when ``limit`` cut the answer short; ``lost``
        is True when an event of the range under ``prefixes`` has left the
        ring already (or there is no ring), cut short or not: it came before
        the entries.  (Events of other types that left it are no loss to the
        asker: before, any eviction past ``after`` said lost.)
        """
        if self.ring is None:
            return [], True, after < upto
        ring = self.ring
        out: list[RingEntry] = []
        wanted = tuple(prefixes)
        start = bisect.bisect_right(ring, after, key=lambda entry: entry[0])
        for entry in itertools.islice(ring, start, None):
            if entry[0] > upto:
                break
            if entry[1].startswith(wanted):
                if len(out) >= limit:  # cut short: what left the ring lies before ``out``
                    return out, False, self._let_go(after, wanted)
                out.append(entry)
        return out, True, self._let_go(after, wanted)

    def _let_go(self, after: int, wanted: tuple[str, ...]) -> bool:
        """Whether the ring let go of an event past ``after`` of a type under ``wanted``."""
        if after < self.evicted_upto:
            return True
        return any(seq > after and t.startswith(wanted) for t, seq in self.evicted.items())
