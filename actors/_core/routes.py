"""What the router knows of a subscription, and the one place filters run.

A ``Route`` is handed to the router (``Subscribe``) and, for catch-up, to the
journal reader; ``accepts`` runs its filter so that a filter that raises counts
as "no match" and is logged the same way wherever it runs.  While a filter
runs, ``in_filter()`` is true on its thread: ``flush()`` refuses to wait from
there, since a filter runs on the router's turn (or a catch-up's), which the
flush waits for.  A thread-local, not a context variable: work a filter hands
to a loop or an executor copies its context, and is not inside the filter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors._model.config import OverflowStrategy

if TYPE_CHECKING:
    from actors._model.event import Event
    from actors._runtime.mailbox import EventMailbox

__all__ = ["Route", "accepts", "in_filter"]

logger = logging.getLogger("actors.router")

_filtering = threading.local()


def in_filter() -> bool:
    """Return whether a subscription's filter is running on this thread."""
    return getattr(_filtering, "on", False)


@dataclass(frozen=True, slots=True)
class Route:
    """What the router needs to know of one subscription."""

    id: str
    pattern: str
    mailbox: EventMailbox
    predicate: Callable[[Event], bool] | None
    strict: bool  # REJECT or BLOCK: checked for room before anything is delivered

    @property
    def blocks(self) -> bool:
        """Return whether a full mailbox makes publishers wait (``BLOCK``)."""
        return self.mailbox.overflow is OverflowStrategy.BLOCK


def accepts(route: Route, event: Event) -> bool:
    """Return whether ``route``'s filter passes ``event`` (a filter that raises: no)."""
    predicate = route.predicate
    if predicate is None:
        return True
    outer = in_filter()
    _filtering.on = True
    try:
        return bool(predicate(event))
    except BaseException:  # whatever a filter raises is its own failure
        logger.exception("filter of subscription %s raised; event not delivered", route.id)
        return False
    finally:
        _filtering.on = outer
