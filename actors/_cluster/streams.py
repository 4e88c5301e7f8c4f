"""Per-origin streams of the bridge, as plain state machines (no sockets, no threads).

``Outbound`` turns the local router's records into data frames: it knows the
subscription prefixes peers hold (from the XPUB socket), sends an event only
if one of them is a prefix of its type, batches runs of events that go to the
same subscribers, and keeps, per prefix, the origin sequence of the last event
sent under it (the frame's *chain* pointers).

``Inbound`` follows every origin it hears from: it checks the chain pointers of
each frame against what it saw (a gap means lost frames), asks the origin for
the missing range, holds later frames of that origin until the range arrives
(per-origin order), drops duplicates by event id, and keeps a watermark per
origin (everything up to it was delivered) that a persistent bus saves, so a
restarted node asks for what it missed while it was down.
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from actors._cluster.wire import encode_data
from actors._model.event import Event
from actors._model.topics import Pattern

__all__ = ["Inbound", "Outbound", "RecoverRequest"]

_CLASS_CACHE = 4096


class Outbound:
    """Build data frames from local events (called on the bridge's I/O thread only)."""

    def __init__(self, origin: str, epoch: int, batch_size: int, ring_size: int) -> None:
        self.origin = origin
        self.epoch = epoch
        self.batch_size = max(1, batch_size)
        self.head = 0
        self.active: set[bytes] = set()
        self.prev: dict[bytes, int] = {}
        self.ring: deque[Event] = deque(maxlen=max(ring_size, 1))
        self.evicted_upto = 0
        self._classes: dict[str, tuple[bytes, ...]] = {}

    def add_prefix(self, prefix: bytes) -> None:
        """A peer subscribed to ``prefix``: start its chain at the current head."""
        if prefix not in self.active:
            self.active.add(prefix)
            self.prev[prefix] = self.head
            self._classes.clear()

    def remove_prefix(self, prefix: bytes) -> None:
        """No peer holds ``prefix`` any more."""
        if prefix in self.active:
            self.active.discard(prefix)
            self.prev.pop(prefix, None)
            self._classes.clear()

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
        out: list[list[bytes]] = []
        run: list[Event] = []
        run_class: tuple[bytes, ...] = ()
        origin = self.origin
        ring = self.ring
        for event in events:
            seq = event.sequence or 0
            self.head = max(self.head, seq)
            if event.origin != origin:
                continue
            if len(ring) == ring.maxlen:
                self.evicted_upto = ring[0].sequence or 0
            ring.append(event)
            matched = self._matched(event.event_type) if self.active else ()
            if not matched:
                continue
            if run and (matched != run_class or len(run) >= self.batch_size):
                out.append(self._frame(run_class, run))
                run = []
            run_class = matched
            run.append(event)
        if run:
            out.append(self._frame(run_class, run))
        return out

    def _frame(self, matched: tuple[bytes, ...], run: list[Event]) -> list[bytes]:
        prev = self.prev
        chains = [(p, prev.get(p, 0)) for p in matched]
        last = run[-1].sequence or 0
        for p in matched:
            prev[p] = last
        # The longest matching prefix reaches exactly the subscribers of the run.
        return encode_data(matched[-1], self.origin, self.epoch, chains, run)

    def chains(self) -> list[list[object]]:
        """Return ``[[prefix, last sequence sent under it], ...]`` for heartbeats."""
        out: list[list[object]] = []
        for prefix, last in self.prev.items():
            try:
                out.append([prefix.decode(), last])
            except UnicodeDecodeError:
                continue
        return out

    def from_ring(
        self, after: int, upto: int, prefixes: Sequence[str], limit: int
    ) -> tuple[list[Event], bool, bool]:
        """Return ``(events, complete, lost)``: ring events in ``(after, upto]`` under ``prefixes``.

        ``complete`` is False when ``limit`` cut the answer short; ``lost``
        is True when part of the range has left the ring already.
        """
        raw = [p.encode() for p in prefixes]
        ring = list(self.ring)  # a snapshot: the I/O thread appends meanwhile
        out: list[Event] = []
        start = bisect.bisect_right(ring, after, key=lambda e: e.sequence or 0)
        for event in itertools.islice(ring, start, None):
            if (event.sequence or 0) > upto:
                break
            if any(event.event_type.encode().startswith(p) for p in raw):
                if len(out) >= limit:
                    return out, False, False
                out.append(event)
        return out, True, after < self.evicted_upto


@dataclass(frozen=True, slots=True)
class RecoverRequest:
    """Ask ``origin`` for its events in ``(after, upto]`` under ``prefixes``."""

    rid: str
    origin: str
    after: int
    upto: int
    prefixes: tuple[str, ...]


@dataclass(slots=True)
class _Origin:
    epoch: int | None = None
    known: dict[bytes, int] = field(default_factory=dict)
    synced: set[bytes] = field(default_factory=set)
    watermark: int | None = None
    awaiting_sync: bool = True
    sync_since: float = 0.0
    loading: bool = False
    stashed: tuple[int, int, int] | None = None
    pending: dict[str, RecoverRequest] = field(default_factory=dict)
    deferred: tuple[int, int, frozenset[str]] | None = None
    held: list[Event] = field(default_factory=list)

    def blocked(self) -> bool:
        return self.awaiting_sync or self.loading or bool(self.pending) or bool(self.deferred)


_rids = itertools.count(1)


class Inbound:
    """Gap detection, recovery, ordering and dedupe of remote events (module docstring).

    Every method runs on the bridge's I/O thread and returns the events to
    deliver, in per-origin order; recovery requests to send collect in
    ``requests``.
    """

    def __init__(self, node: str, dedupe: int) -> None:
        self.node = node
        self.prefixes: frozenset[bytes] = frozenset()
        self._patterns: list[Pattern] = []
        self._match_cache: dict[str, bool] = {}
        self.origins: dict[str, _Origin] = {}
        self.requests: list[RecoverRequest] = []
        self._seen: OrderedDict[object, None] = OrderedDict()
        self._dedupe = max(dedupe, 1)
        self.duplicates = 0
        self.gaps = 0
        self.recovered = 0
        self.unrecovered = 0
        self.filtered = 0
        self.sync_timeouts = 0

    # -- configuration ------------------------------------------------------------

    def set_patterns(self, patterns: Sequence[str], now: float) -> tuple[set[bytes], set[bytes]]:
        """Adopt the local patterns; return the prefixes ``(added, removed)``.

        Every origin waits for a sync reply (frames held) if a prefix is new.
        """
        self._patterns = [Pattern.parse(p) for p in patterns]
        self._match_cache = {}
        prefixes = frozenset(p.literal_prefix.encode() for p in self._patterns)
        added, removed = set(prefixes - self.prefixes), set(self.prefixes - prefixes)
        self.prefixes = prefixes
        for st in self.origins.values():
            for p in removed:
                st.known.pop(p, None)
                st.synced.discard(p)
            if added and not st.awaiting_sync:
                st.awaiting_sync = True
                st.sync_since = now
        return added, removed

    def matches(self, event_type: str) -> bool:
        """Return whether a local pattern matches ``event_type``."""
        hit = self._match_cache.get(event_type)
        if hit is None:
            hit = any(p.matches(event_type) for p in self._patterns)
            if len(self._match_cache) >= _CLASS_CACHE:
                self._match_cache.clear()
            self._match_cache[event_type] = hit
        return hit

    def origin(self, name: str, now: float) -> tuple[_Origin, bool]:
        """Return the state of ``name`` and whether it is new."""
        st = self.origins.get(name)
        if st is not None:
            return st, False
        st = self.origins[name] = _Origin(sync_since=now)
        return st, True

    # -- frames ---------------------------------------------------------------------

    def on_data(
        self,
        origin: str,
        *,
        epoch: int,
        first: int,
        last: int,
        chains: Iterable[tuple[bytes, int]],
        events: list[Event],
        now: float,
    ) -> list[Event]:
        """Take a data frame; return the events to deliver now."""
        st, _ = self.origin(origin, now)
        if st.epoch != epoch:
            if st.epoch is not None:
                # A new incarnation: wait for its sync reply (it says where it starts).
                st.awaiting_sync = True
                st.sync_since = now
            st.epoch = epoch
        if not st.awaiting_sync:
            for prefix, prev in chains:
                known = st.known.get(prefix)
                if prefix not in self.prefixes:
                    continue
                if known is None:
                    st.known[prefix] = last  # baseline after a sync that timed out
                    continue
                if prev > known:
                    self._recover(origin, st, known, first - 1, (prefix,))
                if last > known:
                    st.known[prefix] = last
        if st.blocked():
            st.held.extend(events)
            return []
        if st.watermark is None or last > st.watermark:
            st.watermark = last
        return self._fresh(events)

    def on_sync(self, origin: str, epoch: int, base: int, head: int, now: float) -> list[Event]:
        """Take ``origin``'s sync reply: baseline new prefixes, backfill what was missed."""
        st, _ = self.origin(origin, now)
        if st.loading:
            st.stashed = (epoch, base, head)
            return []
        self._incarnation(st, epoch, base)
        new = self.prefixes - st.synced
        if new and st.watermark is not None and head > st.watermark:
            names = tuple(sorted(p.decode() for p in new))
            self._recover(origin, st, st.watermark, head, names)
        for p in new:
            st.known[p] = max(st.known.get(p, 0), head)
        st.synced = set(self.prefixes)
        st.awaiting_sync = False
        if not st.pending and (st.watermark is None or head > st.watermark):
            st.watermark = head
        return self._release(st)

    def on_heartbeat(
        self,
        origin: str,
        *,
        epoch: int,
        base: int,
        head: int,
        chains: dict[bytes, int],
        now: float,
    ) -> list[Event]:
        """Take a heartbeat: detect a lost tail of frames, advance the watermark."""
        st, _ = self.origin(origin, now)
        if st.loading:
            return []
        if st.epoch != epoch:
            if st.epoch is not None:
                self._incarnation(st, epoch, base)
                st.awaiting_sync = True
                st.sync_since = now
            st.epoch = epoch
            return []
        if st.awaiting_sync:
            return []
        for prefix, known in list(st.known.items()):
            last = chains.get(prefix)
            if last is not None and last > known:
                self._recover(origin, st, known, last, (prefix.decode(),))
                st.known[prefix] = last
        quiet = not st.blocked() and st.known and all(p in chains for p in st.known)
        if quiet and (st.watermark is None or head > st.watermark):
            st.watermark = head
        return []

    def _incarnation(self, st: _Origin, epoch: int, base: int) -> None:
        if st.epoch is not None and st.epoch != epoch:
            continues = st.watermark is not None and base > st.watermark
            if not continues:
                # Sequences restarted (no journal): forget the old stream.
                st.known.clear()
                st.synced.clear()
                st.watermark = None
        st.epoch = epoch

    # -- checkpoints (persistent buses) -------------------------------------------------

    def start_loading(self, origin: str, now: float) -> None:
        """Hold ``origin``'s frames until its saved watermark is known."""
        st, _ = self.origin(origin, now)
        st.loading = True

    def loaded(self, origin: str, watermark: int | None, now: float) -> list[Event]:
        """Adopt the saved watermark of ``origin``; replay a stashed sync reply."""
        st, _ = self.origin(origin, now)
        st.loading = False
        if watermark is not None and (st.watermark is None or watermark < st.watermark):
            st.watermark = watermark
        stashed, st.stashed = st.stashed, None
        if stashed is not None:
            return self.on_sync(origin, *stashed, now=now)
        return self._release(st)

    # -- recovery ---------------------------------------------------------------------

    def _recover(
        self, origin: str, st: _Origin, after: int, upto: int, prefixes: Sequence[str | bytes]
    ) -> None:
        if upto <= after:
            return
        names = frozenset(p.decode() if isinstance(p, bytes) else p for p in prefixes)
        self.gaps += 1
        if st.pending:
            # One request per origin at a time: later gaps merge into the next
            # one (what was already received comes back and is deduplicated).
            if st.deferred is None:
                st.deferred = (after, upto, names)
            else:
                low, high, known = st.deferred
                st.deferred = (min(low, after), max(high, upto), known | names)
            return
        self._send(origin, st, after, upto, names)

    def _send(self, origin: str, st: _Origin, after: int, upto: int, names: frozenset[str]) -> None:
        request = RecoverRequest(f"r{next(_rids)}", origin, after, upto, tuple(sorted(names)))
        st.pending[request.rid] = request
        self.requests.append(request)

    def _next_deferred(self, origin: str, st: _Origin) -> None:
        if st.deferred is not None and not st.pending:
            after, upto, names = st.deferred
            st.deferred = None
            self._send(origin, st, after, upto, names)

    def on_recovered(
        self, rid: str, events: list[Event], complete: bool, scanned: int, lost: bool
    ) -> list[Event]:
        """Take a recovery reply; ask for the rest if it was cut short."""
        for st_name, st in self.origins.items():
            request = st.pending.pop(rid, None)
            if request is None:
                continue
            st.held.extend(e for e in events if e.origin == st_name)
            if lost:
                self.unrecovered += 1
            if not complete and scanned < request.upto:
                after = max(scanned, request.after)
                self._send(st_name, st, after, request.upto, frozenset(request.prefixes))
            else:
                self.recovered += 1
                self._next_deferred(st_name, st)
            return self._release(st)
        return []

    def on_recovery_failed(self, rid: str) -> list[Event]:
        """Give up on a recovery request (timeout or error) and release what is held."""
        for name, st in self.origins.items():
            if st.pending.pop(rid, None) is not None:
                self.unrecovered += 1
                self._next_deferred(name, st)
                return self._release(st)
        return []

    def expire_syncs(self, now: float, timeout: float) -> list[Event]:
        """Stop waiting for sync replies older than ``timeout``; return released events."""
        out: list[Event] = []
        for st in self.origins.values():
            if st.awaiting_sync and now - st.sync_since > timeout:
                st.awaiting_sync = False
                st.synced = set(self.prefixes)
                self.sync_timeouts += 1
                out.extend(self._release(st))
        return out

    # -- delivery ---------------------------------------------------------------------

    def _release(self, st: _Origin) -> list[Event]:
        if st.blocked() or not st.held:
            return []
        held, st.held = st.held, []
        held.sort(key=lambda e: e.sequence or 0)
        top = held[-1].sequence or 0
        if st.watermark is None or top > st.watermark:
            st.watermark = top
        return self._fresh(held)

    def _fresh(self, events: Iterable[Event]) -> list[Event]:
        seen = self._seen
        out = []
        for event in events:
            if not self.matches(event.event_type):
                self.filtered += 1
                continue
            key = event.id
            if key in seen:
                self.duplicates += 1
                continue
            seen[key] = None
            if len(seen) > self._dedupe:
                seen.popitem(last=False)
            out.append(event)
        return out

    def synced_with(self, origins: Iterable[str]) -> bool:
        """Return whether every one of ``origins`` answered the current sync round."""
        for name in origins:
            st = self.origins.get(name)
            if st is None or st.blocked() or st.synced != set(self.prefixes):
                return False
        return True

    def watermarks(self) -> dict[str, int]:
        """Return the watermark of every origin that is not waiting for anything."""
        return {
            name: st.watermark
            for name, st in self.origins.items()
            if st.watermark is not None and not st.blocked()
        }
