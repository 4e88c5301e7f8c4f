"""What a ``$bus.backpressure.started`` or ``.relieved`` announcement says (SPEC 4.1).

The router announces a start as it crosses a mailbox's high-water mark; the
subscriber sees the relief (under the low-water mark) as it takes events,
counts it on the mailbox and sends the router a ``Relieved``.  That message
may arrive after the router has crossed the mark again, so before it
announces a start the router claims a relief counted before that start (the
mailbox notes how many there were as the start happens) and not yet
announced: they alternate.
"""

from __future__ import annotations

from typing import Any

from actors._core.messages import Relieved
from actors._core.routes import Route

__all__ = ["claim_relief", "relief_sent", "start_of"]


def claim_relief(route: Route, upto: int | None = None) -> dict[str, Any] | None:
    """Return the data of ``route``'s relief not yet announced (now claimed), or None.

    ``upto``: only among the first ``upto`` reliefs (those before a start).
    Router only: the router is the one writer of ``reliefs_announced``.
    """
    mailbox = route.mailbox
    reliefs = mailbox.reliefs if upto is None else upto
    if reliefs <= mailbox.reliefs_announced:
        return None
    mailbox.reliefs_announced = reliefs
    return _notice(route.id, route.pattern, mailbox.relief_queued, mailbox.capacity)


def relief_sent(message: Relieved) -> dict[str, Any]:
    """Return the data of a relief as its message says (its route is gone)."""
    return _notice(message.id, message.pattern, message.queued, message.capacity)


def start_of(route: Route) -> dict[str, Any]:
    """Return the data of the start ``route``'s mailbox just made (what it found queued)."""
    mailbox = route.mailbox
    return _notice(route.id, route.pattern, mailbox.start_queued, mailbox.capacity)


def _notice(subscription: str, pattern: str, queued: int, capacity: int) -> dict[str, Any]:
    """Return an announcement's data: which subscription, its pattern, its queue and bound."""
    return {
        "subscription": subscription,
        "pattern": pattern,
        "queued": queued,
        "capacity": capacity,
    }
