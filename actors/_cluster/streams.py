"""Remote events in, per origin, as a plain state machine (no sockets, no threads).

``Inbound`` follows every origin it hears from: it checks the chain pointers of
each frame against what it saw (a gap means lost frames), asks the origin for
the missing range, holds later frames of that origin until the range arrives
(per-origin order), drops duplicates by event id, and keeps a watermark per
origin (everything up to it that a local pattern matches was delivered) that
a persistent bus saves, so a restarted node asks for what it missed while it
was down.  ``Outbound`` (the other direction) lives in ``outbound.py``.

Rules that keep it honest (``docs/cluster.md``, "Guarantees"):

- a sequence at or past 2**63, or more than ``MAX_AHEAD`` past the head its
  origin last announced (heartbeat or sync reply: never a value a frame
  moves), is rejected and counted (``rejected``): never delivered, never a
  watermark; frames held before any head was announced are checked when
  they are released, and a sync timeout waits for a heartbeat's head;
- every gap ends exactly once: ``gaps == recovered + unrecovered + gaps_open()``; a
  range lost for good waits in ``losses`` for the bridge to announce; gaps found while
  a request is out wait as ranges (overlaps merge): only what is missing is fetched;
- a new incarnation of an origin is backfilled, for every prefix, from the
  watermark (a restarted persistent node) or from its first sequence (a node
  without a journal, or one whose journal lost a tail we had) to its head;
- the watermark never moves while no local pattern exists: a node that
  subscribes after its sync reply still fetches its downtime;
- a backfill never overtakes the stream: what it fetches past the last
  sequence the origin had sent at its sync reply waits until the stream
  passes it (the origin's queued runs come after the reply);
- with a ``window`` (the bridge sets ``credit_window``), a recovery keeps
  what of one origin waits here within it (``room.py``): a page is asked
  for only when it fits, held frames past it are dropped and fetched again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from actors._cluster.checkpoints import SavedMark
from actors._cluster.origins import MAX_AHEAD, MAX_SEQUENCE, OriginState, RecoverRequest
from actors._cluster.outbound import MAX_PREFIX_BYTES, Outbound
from actors._cluster.room import GONE, Loss, Ranges
from actors._model.event import Event
from actors._model.topics import Pattern

__all__ = ["MAX_AHEAD", "MAX_SEQUENCE", "Inbound", "Outbound", "RecoverRequest"]

_CLASS_CACHE = 4096
_RETIRED = 8
"""How many replaced epochs of an origin are remembered (their late frames are told apart)."""


class Inbound(Ranges):
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
        self.origins: dict[str, OriginState] = {}
        self.requests: list[RecoverRequest] = []
        # Event ids as ints: the collector never walks them (UUIDs it would).
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._dedupe = max(dedupe, 1)
        self.dedupe = self._dedupe  # how many recent event ids are remembered
        self.duplicates = 0
        self.gaps = 0
        self.recovered = 0
        self.unrecovered = 0
        self.losses: list[Loss] = []  # ranges lost for good, not yet announced
        self.filtered = 0
        self.sync_timeouts = 0
        self.rejected = 0
        self.window: int | None = None  # events of one origin that may wait here (room.py)
        self.cut = 0  # held events dropped for room, to be fetched again

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

    def origin(self, name: str, now: float) -> tuple[OriginState, bool]:
        """Return the state of ``name`` and whether it is new."""
        st = self.origins.get(name)
        if st is not None:
            return st, False
        st = self.origins[name] = OriginState(sync_since=now)
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
        if epoch in st.retired:
            # Late, from an incarnation replaced since (a second path): what it
            # holds is delivered once unless a fetch from the current one, which
            # covers it, is still to come (and then it would come out of order).
            return [] if st.blocked() else self._fresh(events, st)
        if st.epoch != epoch and st.epoch is not None:
            # A new incarnation: wait for its sync reply (it says where it starts).
            if not st.awaiting_sync:
                st.awaiting_sync = True
                st.sync_since = now
            if st.next_epoch != epoch:
                st.next_epoch, st.next_since = epoch, now
            if last > MAX_SEQUENCE:
                self.rejected += len(events)
                return []
            st.held.extend(events)
            self._fit(origin, st)
            return []
        if self._out_of_range(st, last, len(events)):
            return []
        st.epoch = epoch
        # While a sync reply is awaited (a new prefix), the chains of the
        # prefixes synced before are still checked: the frame is held, and a
        # loss under them found only after its release would fetch older
        # events after it.  (After a restart the sync backfills them all.)
        waiting = st.awaiting_sync
        if not waiting or (st.synced and not st.restarted):
            for prefix, prev in chains:
                known = st.known.get(prefix)
                if prefix not in self.prefixes or (waiting and prefix not in st.synced):
                    continue
                if known is None:
                    if not waiting:  # the baseline after a sync that timed out
                        mark = st.mark(prefix, prev)  # what follows the held is owed (note_held)
                        if mark is not None and prev > mark:
                            self._recover(origin, st, mark, first - 1, (prefix,))
                        st.known[prefix] = last
                    continue
                if prev > known:
                    self._recover(origin, st, known, first - 1, (prefix,))
                if last > known:
                    st.known[prefix] = last
        elif st.watermark is None and not st.synced:  # a new origin's first frames
            st.note_held(chains, first, last, self.prefixes)
        if self._passing(st, last) or st.blocked():
            st.held.extend(events)
            self._fit(origin, st)
            return self._release(st)  # nothing while blocked
        if st.watermark is None or last > st.watermark:
            st.watermark = last
        return self._fresh(self._newer(st, epoch, first, last, events), st)

    def _newer(
        self, st: OriginState, epoch: int, first: int, last: int, events: list[Event]
    ) -> list[Event]:
        """Return a live frame's events past the last delivered off the stream of ``epoch``.

        An older one is a copy by another path (a broker's backlog beside a
        direct stream), maybe past what the id window remembers.
        """
        same = st.top_epoch == epoch
        floor = min(st.top, st.top_head) if same else 0
        if same and first <= floor:
            newer = [e for e in events if (e.sequence or 0) > floor]
            self.duplicates += len(events) - len(newer)
            events = newer
        if not same:
            st.top, st.top_epoch, st.top_head = last, epoch, st.head or 0
        elif last > st.top:
            st.top = last
        return events

    @staticmethod
    def _announced(st: OriginState, epoch: int, head: int) -> None:
        """``epoch`` announced ``head`` (a heartbeat, a sync reply): the floor may rise to it."""
        if st.top_epoch == epoch and head > st.top_head:
            st.top_head = head

    def on_sync(  # noqa: PLR0917 - the reply's fields
        self,
        origin: str,
        epoch: int,
        base: int,
        head: int,
        now: float,
        sent: int | None = None,
        chains: dict[bytes, int] | None = None,
        numbering: int | None = None,
    ) -> list[Event]:
        """Take ``origin``'s sync reply: baseline new prefixes, backfill what was missed.

        ``head`` is the origin's last sequence, ``sent`` the last everything
        up to which left it (the rest waits in its send queue and comes on
        the stream after this reply): what the backfill fetches past ``sent``
        is released only as the stream passes it, never ahead of a queued
        event.  ``chains`` are the origin's chains as of ``sent`` (None from
        a peer that sends none): those of the prefixes synced before are
        checked here, as a heartbeat's are.
        """
        st, _ = self.origin(origin, now)
        if epoch in st.retired:
            return []  # late, from an incarnation replaced since
        if st.loading:
            st.stashed = (epoch, base, head, sent, numbering, chains)
            return []
        if max(head, base) > MAX_SEQUENCE or any(v > head for v in (chains or {}).values()):
            self.rejected += 1  # no chain of an origin goes past its head
            return []
        self._incarnation(st, epoch, base, numbering)
        st.head = head
        self._announced(st, epoch, head)
        # A prefix a timed-out wait left without a baseline is new here too.
        new = frozenset(p for p in self.prefixes if p not in st.synced or p not in st.known)
        baseline = new == self.prefixes and not st.restarted
        if not baseline and not st.restarted:
            self._sync_chains(origin, st, new, head, chains or {})
        asked = self._backfill(origin, st, new, head)
        if baseline and st.watermark is None and self._after_held(origin, st, head, sent, chains):
            asked = True
        st.firsts, st.holes = {}, []  # (``note_held``) only before a first sync
        if (asked or not baseline) and sent is not None and sent < head:
            # Without a backfill, what the origin still had queued may come
            # under the older chains only: a heartbeat past it checks them.
            st.wait_for_stream(head, sent, heard=not asked)
        st.synced = set(self.prefixes)
        st.awaiting_sync = False
        self._refetch(origin, st)
        # Only a first sync of every prefix is a baseline: a repeated reply (a
        # stream that reconnected) says nothing of what the chains still miss.
        moves = st.watermark is None or head > st.watermark
        if baseline and moves and self.prefixes and not st.blocked():
            st.watermark = head
        return self._release(st)

    def _backfill(self, origin: str, st: OriginState, new: frozenset[bytes], head: int) -> bool:
        """Fetch ``(watermark, head]`` for new prefixes (all of them after a restart).

        Return whether a range was asked for.
        """
        wanted = self.prefixes if st.restarted else new
        st.restarted = False
        asked = bool(wanted) and st.watermark is not None and head > st.watermark
        if asked:
            names = tuple(sorted(p.decode() for p in wanted))
            self._recover(origin, st, st.watermark or 0, head, names)
        # Never below the watermark: what is behind it was delivered or given
        # up, and fetching it again under the new prefix would come after it.
        floor = max(head, st.watermark or 0)
        for p in wanted:
            st.known[p] = max(st.known.get(p, 0), floor)
        return asked

    def on_heartbeat(
        self,
        origin: str,
        *,
        epoch: int,
        base: int,
        head: int,
        chains: dict[bytes, int],
        now: float,
        numbering: int | None = None,
    ) -> list[Event]:
        """Take a heartbeat: detect a lost tail of frames, advance the watermark."""
        st, _ = self.origin(origin, now)
        if st.loading or epoch in st.retired:
            return []  # a late heartbeat of a replaced incarnation says nothing now
        if head > MAX_SEQUENCE or any(v > MAX_SEQUENCE for v in chains.values()):
            self.rejected += 1
            return []
        if st.epoch != epoch:
            restarted = st.epoch is not None
            self._incarnation(st, epoch, base, numbering)  # takes the epoch and numbering
            if restarted and not st.awaiting_sync:
                st.awaiting_sync = True
                st.sync_since = now
            st.head = head
            return []
        if numbering is not None:
            st.numbering = numbering  # first heard of it here (its data frames came first)
        st.head = head
        st.heard = now
        self._announced(st, epoch, head)
        chained = False
        if st.awaiting_chains and not st.awaiting_sync:
            st.chains_heard.update(chains)
            # Every prefix's chain heard (one too long for an origin to take has none).
            chained = all(p in st.chains_heard for p in self.prefixes if len(p) <= MAX_PREFIX_BYTES)
        passed = self._passing(st, head, heard=True)  # a heartbeat's head is what left
        if st.awaiting_sync:
            return []
        for prefix, known in list(st.known.items()):
            last = chains.get(prefix)
            if last is not None:
                self._follow_chain(origin, st, prefix, known, last)
        for prefix in st.synced - st.known.keys():
            # Left without a baseline by a timed-out wait (no watermark): a
            # chain heard gives it, as a first frame under it would.
            if prefix in chains and prefix in self.prefixes:
                mark = st.mark(prefix, chains[prefix])  # what follows the held is owed
                st.known[prefix] = start = chains[prefix]
                if mark is not None:
                    self._follow_chain(origin, st, prefix, mark, start)
                if start > head:
                    # The chain starts past what had left the origin: runs it
                    # still had queued, cut before it took the prefix, come
                    # under older chains only, and a heartbeat past them checks
                    # those (as after a sync reply, on_sync).
                    st.wait_for_stream(start, head, heard=True)
        quiet = not st.blocked() and st.known and all(p in chains for p in st.known)
        if chained:  # every chain behind is asked for now: the held frames may go
            st.awaiting_chains = False
        moves = st.watermark is None or head > st.watermark
        if quiet and st.until is None and self.prefixes and moves:
            st.watermark = head
        return self._release(st) if passed or chained else []

    def _incarnation(self, st: OriginState, epoch: int, base: int, numbering: int | None) -> None:
        if st.epoch is not None and st.epoch != epoch:
            st.retired = (*st.retired[-(_RETIRED - 1) :], st.epoch)
            st.until, st.until_heard = None, False  # what the old one queued comes no more
            st.passed = 0
            st.awaiting_chains = False
            # A new numbering (no journal, or a fresh one: it may have passed our watermark,
            # restarted twice while we were down) starts from 1, one followed before from
            # where we were in it; an older peer tells only its ``base``.
            renumbered, back = st.renumbered(numbering)
            if renumbered:  # what was being fetched of the old numbering is gone with it
                self._forget_numbering(st)
            if st.watermark is not None and (renumbered or base <= st.watermark):
                # Its numbering changed or went back (its journal lost a tail we had): the
                # old chains mean nothing now; follow the numbering from where we were
                # in it, the new incarnation from its own start where that is lower.
                st.known.clear()
                st.synced.clear()
                st.watermark = min(back, base - 1) if renumbered else base - 1
                st.discarded = None  # the backfill from ``base`` covers it
            # What it published before our stream reconnected (and, for a
            # persistent origin, what it sent just before it died) may have
            # missed us: backfill at the sync reply.
            st.restarted = st.watermark is not None
            st.head, st.firsts, st.holes = None, {}, []
        st.epoch = epoch
        st.numbering = numbering if numbering is not None else st.numbering
        st.next_epoch = None

    # -- checkpoints (persistent buses) -------------------------------------------------

    def start_loading(self, origin: str, now: float) -> None:
        """Hold ``origin``'s frames until its saved watermark is known."""
        st, _ = self.origin(origin, now)
        st.loading = True

    def loaded(
        self, origin: str, saved: SavedMark, now: float, journaled: Iterable[int] = ()
    ) -> list[Event]:
        """Adopt the saved watermark of ``origin``, its epoch and numbering; replay a stashed sync.

        ``journaled`` are the ids (``UUID.int``) of ``origin``'s events the journal holds
        past the watermark (a crash fell between their write and the
        watermark's): fetched again, they are dropped as duplicates.  With the
        epoch the watermark counts in, a sync or heartbeat of another one is a
        restart of the origin (``_incarnation``), also one made while this
        node was down: an origin without a journal numbers from 1 again, as
        one on a fresh journal does (told by the numbering).
        """
        watermark = saved.watermark
        st, _ = self.origin(origin, now)
        st.loading = False
        seen = self._seen
        for key in journaled:
            seen[key] = None
            if len(seen) > self._dedupe:
                seen.popitem(last=False)
        if watermark is not None and (st.watermark is None or watermark < st.watermark):
            st.watermark = watermark
            if saved.epoch is not None:
                st.epoch, st.numbering = saved.epoch, saved.numbering
                st.left = dict(saved.left)
        if watermark is not None:  # followed before: the frames held meanwhile are no baseline
            st.firsts, st.holes = {}, []
        stashed, st.stashed = st.stashed, None
        if stashed is not None:
            epoch, base, head, sent, numbering, chains = stashed
            return self.on_sync(origin, epoch, base, head, now, sent, chains, numbering)
        if not st.awaiting_sync:
            self._refetch(origin, st)
        return self._release(st)

    # -- recovery ---------------------------------------------------------------------

    def on_recovered(
        self, rid: str, events: list[Event], complete: bool, scanned: int, lost: bool
    ) -> list[Event]:
        """Take a recovery reply; ask for the rest if it was cut short."""
        for st_name, st in self.origins.items():
            request = st.pending.pop(rid, None)
            if request is None:
                continue
            st.asked = 0
            inside = [
                e
                for e in events
                if e.origin == st_name and request.after < (e.sequence or 0) <= request.upto
            ]
            self.rejected += len(events) - len(inside)
            st.held.extend(inside)
            paged = not complete and request.after < scanned < request.upto
            if lost:  # the origin no longer holds some of this page
                self._note_lost(request, scanned if paged else request.upto, GONE)
            lost = lost or request.lost
            if paged:
                released = self._release_upto(st, scanned)
                names = frozenset(request.prefixes)
                self._send(st_name, st, scanned, request.upto, names, request.gaps, lost)
                self._fit(st_name, st)
                return released
            self._end(request, lost)
            released = self._release_below(st)
            self._next_deferred(st_name, st)
            self._fit(st_name, st)
            return released
        return []

    def on_recovery_failed(self, rid: str, why: str) -> list[Event]:
        """Give up on a recovery request (``why``) and release what is held."""
        for name, st in self.origins.items():
            request = st.pending.pop(rid, None)
            if request is not None:
                st.asked = 0
                self._note_lost(request, request.upto, why)
                self._end(request, lost=True)
                # What it covers is given up for every prefix under its own:
                # a chain found behind later must not fetch it after newer
                # events.  Below ``after`` such a prefix's chain was never
                # checked: that part is fetched now (counted as no gap).
                covered = tuple(p.encode() for p in request.prefixes)
                for prefix, known in list(st.known.items()):
                    if known < request.upto and prefix.startswith(covered):
                        if known < request.after:
                            self._recover(name, st, known, request.after, (prefix,), gaps=0)
                        st.known[prefix] = request.upto
                released = self._release_below(st)
                self._next_deferred(name, st)
                return released
        return []

    def expire_syncs(
        self, now: float, timeout: float, alive: Callable[[str], bool] = bool
    ) -> list[Event]:
        """Stop waiting for sync replies older than ``timeout``; return released events.

        Without a sync reply (lost, or sent while our stream was not yet
        connected) an origin we have a watermark for is still backfilled, up
        to the head its heartbeats announce: so it waits for one heartbeat.
        A new origin gone (``alive``) before any head was heard (it closed
        right after publishing) sent all there will be: its frames are delivered.
        """
        out: list[Event] = []
        for name, st in self.origins.items():
            if not st.awaiting_sync or st.loading or now - st.sync_since <= timeout:
                continue
            if st.head is None:
                if st.watermark is not None or alive(name) or not st.held:
                    # Not heard since (paused?): nothing to backfill up to yet,
                    # and no head to range-check the held frames against.
                    continue
                # Gone, never heard: its lowest frame bounds the rest (as a head).
                st.head, gone = min(e.sequence or 0 for e in st.held), True
            else:
                gone = False
            if st.next_epoch is not None:
                if st.heard - st.next_since <= timeout:
                    # Data of a new incarnation and no word from it yet: its
                    # first heartbeat or sync reply (``_incarnation``) says
                    # where it starts, so the range its predecessor sent last
                    # comes first.  (Heartbeats of the incarnation followed
                    # may still come just after, queued before it died.)
                    continue
                # The incarnation followed is alive long after that frame: the
                # frame was a late one of another incarnation, on another path.
                st.next_epoch = None
            st.awaiting_sync = False
            self._holes(name, st, self._limit(st))
            if st.watermark is not None:
                # Up to the frames held too: the head last heard can be older
                # than they are, and a baseline below an event delivered now
                # would fetch, later, older events after it.  (Without a
                # watermark the prefixes stay without a baseline: the first
                # frame under each, or a late sync reply, gives it.)
                top = max([st.head, *(e.sequence or 0 for e in st.held)])
                top = min(top, self._limit(st))
                self._backfill(name, st, frozenset(self.prefixes - st.synced), top)
            st.synced = set(self.prefixes)
            st.awaiting_chains = not gone
            st.chains_heard.clear()
            self._refetch(name, st)
            self.sync_timeouts += 1
            out.extend(self._release(st))
        return out

    def _release(self, st: OriginState) -> list[Event]:  # -- delivery --
        if st.blocked() or not st.held:
            return []
        if st.until is not None:
            return self._release_upto(st, st.passed)
        held, st.held = self._in_range(st, st.held), []
        return self._in_order(st, held)

    def _release_below(self, st: OriginState) -> list[Event]:
        """Release what is held below the lowest range still to fetch (all, if none)."""
        if st.deferred:
            return self._release_upto(st, min(low for low, *_ in st.deferred))
        return self._release(st)

    def _release_upto(self, st: OriginState, upto: int) -> list[Event]:
        """Release the held events up to ``upto`` while the rest of a long range is fetched.

        All up to ``upto`` arrived unless a range waiting its turn starts below
        it (then nothing moves).  A long recovery (a node far behind, a restart
        loop) thus delivers, and moves the watermark, answer by answer.
        """
        if st.until is not None:
            upto = min(upto, st.passed)  # the stream has not passed the rest
        if st.awaiting_sync or st.awaiting_chains or st.loading:
            return []
        if any(low < upto for low, *_ in st.deferred):
            return []
        ready = [e for e in st.held if (e.sequence or 0) <= upto]
        if not ready:
            return []
        st.held = [e for e in st.held if (e.sequence or 0) > upto]
        return self._in_order(st, self._in_range(st, ready))

    def _in_order(self, st: OriginState, events: list[Event]) -> list[Event]:
        """Deliver held ``events`` in sequence order; the watermark moves past them."""
        if not events:
            return []
        events.sort(key=lambda e: e.sequence or 0)
        top = events[-1].sequence or 0
        if st.watermark is None or top > st.watermark:
            st.watermark = top
        return self._fresh(events, st)

    def _fresh(self, events: Iterable[Event], st: OriginState) -> list[Event]:
        seen = self._seen
        out = []
        for event in events:
            key = event.id.int
            if key in seen:
                self.duplicates += 1
                continue
            # Remembered even when no pattern takes it: fetched again later (a gap found
            # late under another prefix), it would come after newer events to a new pattern.
            seen[key] = None
            if len(seen) > self._dedupe:
                seen.popitem(last=False)
            if not self.matches(event.event_type):
                self.filtered += 1
                continue
            out.append(event)
        st.delivered += len(out)
        return out
