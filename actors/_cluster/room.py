"""How much of one origin's traffic may wait at a receiver during a recovery (plain functions).

The credit protocol (``docs/cluster.md``, "Flow control") lets at most
``credit_window`` events of an origin wait at a receiver while its stream
flows.  A recovery obeys the same window: the events of one origin waiting
at the receiver, *unhandled* (given to the local bus and not yet known
handled: the bridge's flush says so), *held* (frames kept back until a range
arrives) and *asked for* (the limit of the recovery request out), stay
within it.  A recovery page is asked for only when there is room for it;
held frames past the room are dropped from memory and fetched again later
(they are the newest, the last to be delivered anyway).
"""

from __future__ import annotations

from actors._cluster.origins import OriginState

__all__ = ["cut_held", "excess", "page_size"]


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
