"""How much of one origin's traffic may wait at a receiver during a recovery (plain state).

The credit protocol (``docs/cluster.md``, "Flow control") lets at most
``credit_window`` events of an origin wait at a receiver while its stream
flows.  A recovery obeys the same window: the events of one origin waiting
at the receiver, *unhandled* (given to the local bus and not yet known
handled: the bridge's flush says so), *held* (frames kept back until a range
arrives) and *asked for* (the limit of the recovery request out), stay
within it.  A recovery page is asked for only when there is room for it;
held frames past the room are dropped from memory and fetched again later
(they are the newest, the last to be delivered anyway).  While a recovery of
an origin runs, the bridge grants it half the window (``flow_io``): the
other half is for the pages.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from actors._cluster.origins import MAX_AHEAD, MAX_SEQUENCE, OriginState, RecoverRequest
from actors._model.event import Event

__all__ = ["GONE", "RENUMBERED", "Loss", "Ranges", "cut_held", "excess", "page_size"]

GONE = "the origin no longer holds them"
"""Why a range is lost when its origin answered so (its ring or journal moved past it)."""

RENUMBERED = "the origin restarted with a new numbering (no journal): its earlier run's are gone"
"""Why the ranges being fetched of an origin's earlier run are lost when it restarts so."""


class Loss(NamedTuple):
    """Events of ``origin`` between its sequences ``first`` and ``last`` (some or all), lost."""

    origin: str
    first: int
    last: int
    why: str


_rids = itertools.count(1)


def page_size(window: int, st: OriginState, span: int) -> tuple[int, int]:
    """Return ``(limit, trim)`` for a recovery request of ``span`` sequences.

    ``limit`` is how many events to ask for (0: none now, wait for a flush),
    ``trim`` how many held events to drop first to make room for them.
    A request asks for at most half the window (so the next one can go out
    while the bus handles this one) and waits until a quarter of the window
    (or all it can need, if less) is free of unhandled events.
    """
    need = max(1, min(span, window // 2))
    least = min(need, max(1, window // 4))
    free = window - st.unhandled()
    if free < least:
        return 0, 0
    room = free - len(st.held)
    trim = max(0, min(least - room, len(st.held)))
    return min(need, room + trim), trim


def excess(window: int, st: OriginState) -> int:
    """Return how many held events are over the window (0 if none)."""
    over = st.unhandled() + len(st.held) + st.asked - window
    return max(0, min(over, len(st.held)))


def cut_held(st: OriginState, count: int) -> tuple[int, int]:
    """Drop the ``count`` newest held events; return the range ``(after, upto]`` they span."""
    held = st.held
    held.sort(key=lambda e: e.sequence or 0)
    gone = held[-count:]
    del held[-count:]
    return (gone[0].sequence or 0) - 1, gone[-1].sequence or 0


class Ranges:
    """The ranges ``Inbound`` fetches, one request per origin at a time, within the window.

    Every gap ends exactly once (``gaps == recovered + unrecovered +
    gaps_open()``); held events dropped for room are fetched as ranges that
    count as no gap.
    """

    origins: dict[str, OriginState]
    prefixes: frozenset[bytes]
    requests: list[RecoverRequest]
    window: int | None
    cut: int
    gaps: int
    recovered: int
    unrecovered: int
    losses: list[Loss]
    rejected: int

    def _sync_chains(
        self,
        origin: str,
        st: OriginState,
        new: frozenset[bytes],
        head: int,
        chains: dict[bytes, int],
    ) -> None:
        """Check the chains of the prefixes synced before at a sync reply.

        What the reply releases (frames held for it, maybe under other chains,
        and the backfill up to ``head``) must not pass a loss under them.  A
        chain the reply lacks (an older peer, or an origin that has not taken
        the prefix again) is waited for from heartbeats unless known that far.
        """
        top = max([head, *(e.sequence or 0 for e in st.held)])
        unheard = False
        for prefix in self.prefixes - new:
            known = st.known.get(prefix, 0)
            last = chains.get(prefix)
            if last is None:
                unheard = unheard or known < top
            else:
                self._follow_chain(origin, st, prefix, known, last)
        if unheard:
            st.awaiting_chains = True
            st.chains_heard = set(chains)

    def _follow_chain(
        self, origin: str, st: OriginState, prefix: bytes, known: int, last: int
    ) -> None:
        """A chain announced ``last`` under ``prefix``: fetch what lies past ``known``."""
        if last > known:
            self._recover(origin, st, known, last, (prefix.decode(),))
            st.known[prefix] = last

    def _recover(  # noqa: PLR0917 - a range's fields
        self,
        origin: str,
        st: OriginState,
        after: int,
        upto: int,
        prefixes: Sequence[str | bytes],
        gaps: int = 1,
    ) -> None:
        """Fetch ``(after, upto]``; ``gaps`` is 0 for held events dropped for room (no loss)."""
        if upto <= after:
            return
        names = frozenset(p.decode() if isinstance(p, bytes) else p for p in prefixes)
        self.gaps += gaps
        if st.pending:
            # What the request out fetches already is not asked twice (a
            # backfill after the origin restarted, over a backfill still out).
            for rid, out in st.pending.items():
                if names <= set(out.prefixes) and out.after <= after < out.upto:
                    after = out.upto
                    if upto <= after:  # all of it: it ends with that request
                        st.pending[rid] = dataclasses.replace(out, gaps=out.gaps + gaps)
                        return
            # One request per origin at a time: later gaps wait as their own
            # ranges (an overlapping one of the same prefixes merges, and both
            # end together; merged with other prefixes, a prefix would be
            # fetched from below what was delivered under it).
            for i, (low, high, known, count) in enumerate(st.deferred):
                if known == names and after <= high and low <= upto:
                    st.deferred[i] = (min(low, after), max(high, upto), known | names, count + gaps)
                    return
            st.deferred.append((after, upto, names, gaps))
            return
        self._send(origin, st, after, upto, names, gaps)

    def _send(  # noqa: PLR0917 - a request's fields
        self,
        origin: str,
        st: OriginState,
        after: int,
        upto: int,
        names: frozenset[str],
        gaps: int,
        lost: bool = False,
    ) -> None:
        request = RecoverRequest(
            f"r{next(_rids)}", origin, after, upto, tuple(sorted(names)), gaps, lost
        )
        st.pending[request.rid] = request
        self._emit(origin, st, request)

    def _emit(self, origin: str, st: OriginState, request: RecoverRequest) -> None:
        """Ask for ``request`` now if the window has room for a page of it, else later."""
        window = self.window
        if window is None:
            self.requests.append(request)
            return
        limit, trim = page_size(window, st, request.upto - request.after)
        if not limit:
            st.unsent = request  # asked once a flush makes room (``on_handled``)
            return
        st.unsent = None
        if trim:
            self._cut(origin, st, trim)
        request = dataclasses.replace(st.pending[request.rid], limit=limit)
        st.pending[request.rid] = request
        st.asked = limit
        self.requests.append(request)

    def _fit(self, origin: str, st: OriginState) -> None:
        """Drop the newest held events that are over the window (fetched again later)."""
        if self.window is not None:
            count = excess(self.window, st)
            if count:
                self._cut(origin, st, count)

    def _cut(self, origin: str, st: OriginState, count: int) -> None:
        after, upto = cut_held(st, count)
        self.cut += count
        if st.awaiting_sync or st.loading:
            low, high = st.discarded or (after, upto)
            st.discarded = (min(low, after), max(high, upto))
            return
        self._recover(origin, st, after, upto, tuple(self.prefixes), gaps=0)

    def _refetch(self, origin: str, st: OriginState) -> None:
        """Fetch the held events dropped for room while a sync reply was awaited."""
        if st.discarded is not None:
            (after, upto), st.discarded = st.discarded, None
            self._recover(origin, st, after, upto, tuple(self.prefixes), gaps=0)

    def on_handled(self, counts: dict[str, int]) -> None:
        """Take a flush's word: ``counts[origin]`` events of it given to the bus are handled.

        A recovery page that waited for room is asked for now if it fits.
        """
        for name, count in counts.items():
            st = self.origins.get(name)
            if st is None:
                continue
            st.handled = max(st.handled, count)
            if st.unsent is not None and st.unsent.rid in st.pending:
                self._emit(name, st, st.unsent)

    def delivered_counts(self) -> dict[str, int]:
        """Return, per origin with unhandled events, how many it gave the bus so far."""
        return {n: st.delivered for n, st in self.origins.items() if st.delivered > st.handled}

    def recovering(self, origin: str) -> bool:
        """Return whether a range of ``origin`` is being fetched (or waits its turn)."""
        st = self.origins.get(origin)
        return st is not None and bool(st.pending or st.deferred)

    def waiting_room(self) -> bool:
        """Return whether a recovery page waits for a flush to make room."""
        return any(st.unsent is not None for st in self.origins.values())

    def _next_deferred(self, origin: str, st: OriginState) -> None:
        if st.deferred and not st.pending:
            deferred = st.deferred
            lowest = min(range(len(deferred)), key=lambda i: deferred[i][0])
            after, upto, names, count = deferred.pop(lowest)
            self._send(origin, st, after, upto, names, count)

    def _note_lost(self, request: RecoverRequest, upto: int, why: str) -> None:
        """Keep ``(request.after, upto]`` as lost for good: the bridge announces it."""
        self.losses.append(Loss(request.origin, request.after + 1, upto, why))

    def _forget_numbering(self, st: OriginState) -> None:
        """End what was being fetched of an origin that restarted with a new numbering: lost.

        Its earlier run's ranges cannot come any more (asked again, the new run
        would answer for its own sequences), and the frames held behind them
        (of the old numbering, which the new one's sequences would be taken
        for) go with them: each range ends unrecovered, announced up to the
        last frame held.  (Before, the new run's empty answer ended them as
        recovered, silently, and the held frames came after its events.)
        """
        if not st.pending and not st.deferred:
            return
        origin = next(name for name, state in self.origins.items() if state is st)
        top = max([e.sequence or 0 for e in st.held], default=0)
        ranges = [*st.pending.values()]
        ranges += [RecoverRequest("", origin, a, u, tuple(n), g) for a, u, n, g in st.deferred]
        for request in ranges:
            self._note_lost(request, max(request.upto, top), RENUMBERED)
            self._end(request, lost=True)
        st.pending.clear()
        st.deferred.clear()
        st.held = []
        st.asked = 0

    def _end(self, request: RecoverRequest, lost: bool) -> None:
        if lost:
            if not request.gaps:
                # Held events dropped for room that the origin no longer
                # holds: a loss after all, counted (never silent).
                self.gaps += 1
                self.unrecovered += 1
                return
            self.unrecovered += request.gaps
        else:
            self.recovered += request.gaps

    def gaps_open(self) -> int:
        """Return how many detected gaps are still being fetched (or wait their turn)."""
        return sum(
            sum(r.gaps for r in st.pending.values()) + sum(d[3] for d in st.deferred)
            for st in self.origins.values()
        )

    # -- what the bridge asks ---------------------------------------------------------

    def synced_with(self, origins: Iterable[str]) -> bool:
        """Return whether every one of ``origins`` answered the current sync round."""
        for name in origins:
            st = self.origins.get(name)
            if st is None or st.blocked() or st.synced != set(self.prefixes):
                return False
        return True

    def is_retired(self, origin: str, epoch: int) -> bool:
        """Return whether ``epoch`` is of an incarnation of ``origin`` replaced since."""
        st = self.origins.get(origin)
        return st is not None and epoch in st.retired

    def is_pending(self, rid: str) -> bool:
        """Return whether recovery request ``rid`` is still waiting for its answer."""
        return any(rid in st.pending for st in self.origins.values())

    @staticmethod
    def _passing(st: OriginState, position: int, heard: bool = False) -> bool:
        """The stream of ``st``'s origin reached ``position``; return whether a backfill waited.

        What a backfill fetched past ``passed`` waits until ``until`` is
        reached (by a heartbeat, ``heard``, if ``until_heard``).
        """
        if st.until is None:
            return False
        if heard or not st.until_heard:
            st.passed = max(st.passed, position)
            if position >= st.until:
                st.until, st.until_heard = None, False
        return True

    def _holes(self, origin: str, st: OriginState, head: int) -> bool:
        """Fetch the holes among a new origin's held frames (``note_held``) up to ``head``."""
        holes, st.holes = st.holes, []
        asked = False
        for prefix, after, upto in holes:
            if prefix in self.prefixes and upto <= head:
                self._recover(origin, st, after, upto, (prefix.decode(),))
                asked = True
        return asked

    def _after_held(
        self,
        origin: str,
        st: OriginState,
        head: int,
        sent: int | None,
        chains: dict[bytes, int] | None,
    ) -> bool:
        """At a new origin's first sync reply: fetch what its held frames were not followed by.

        The held frames are delivered now, so what the origin sent after them
        under their prefix is owed (``note_held``): the reply's chains say up
        to where (a peer that sends none: what it had sent, or its head).
        Return whether a range was asked for.
        """
        asked = self._holes(origin, st, head)
        for prefix in list(st.firsts):
            mark = st.mark(prefix, head)  # a frame past ``head`` is out of range
            if prefix not in self.prefixes or mark is None:
                continue
            if chains is not None:
                upto = chains.get(prefix, mark)
            else:
                upto = head if mark < (head if sent is None else sent) else mark
            if upto > mark:
                self._recover(origin, st, mark, upto, (prefix.decode(),))
                asked = True
            # The chain as of the reply: a loss among the runs still queued shows.
            st.known[prefix] = max(mark, upto)
        return asked

    def watermarks(self) -> dict[str, int]:
        """Return the watermark of every origin whose saved one is known.

        The watermark moves only past delivered events, so it holds while a
        recovery or a sync reply is awaited: saving it then keeps a restart
        from fetching again what was delivered (and journaled) already.
        """
        return {
            name: st.watermark
            for name, st in self.origins.items()
            if st.watermark is not None and not st.loading
        }

    # -- sequences in range ------------------------------------------------------------

    @staticmethod
    def _limit(st: OriginState) -> int:
        """Return the largest sequence of ``st``'s origin accepted now.

        Measured from the head the origin itself announced (heartbeat, sync
        reply), never from the watermark or a held frame: a frame moves
        those, so a bound measured from them would climb with every forged
        frame that passed it.
        """
        if st.head is None:
            return MAX_SEQUENCE
        return min(MAX_SEQUENCE, st.head + MAX_AHEAD)

    def _out_of_range(self, st: OriginState, last: int, count: int) -> bool:
        if last > self._limit(st):
            self.rejected += count
            return True
        return False

    def _in_range(self, st: OriginState, events: list[Event]) -> list[Event]:
        """Drop (and count) held events past the limit: held before the head was known."""
        limit = self._limit(st)
        inside = [e for e in events if (e.sequence or 0) <= limit]
        self.rejected += len(events) - len(inside)
        return inside
