"""Dead letters read back from the journal: ``$bus.deadletter`` events to ``DeadLetter``."""

from __future__ import annotations

import logging

from actors._core.subscriber import DeadLetter
from actors._errors import InvalidEventError
from actors._model.event import Event
from actors._model.query import EventQuery

__all__ = ["DEAD_LETTER_TYPE", "dead_letter_query", "letter_from_event"]

logger = logging.getLogger("actors.journal")

DEAD_LETTER_TYPE = "$bus.deadletter"


def dead_letter_query(*, limit: int | None, after: int | None) -> EventQuery:
    """Return the query of one page of dead letters; ``ValueError``/``TypeError`` on bad bounds."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        msg = f"limit must be an int or None, not {type(limit).__name__}"
        raise TypeError(msg)
    if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
        msg = f"after must be an int (a sequence) or None, not {type(after).__name__}"
        raise TypeError(msg)
    if limit is not None and limit < 0:
        msg = f"limit must be >= 0, got {limit}"
        raise ValueError(msg)
    if after is not None and after < 0:
        msg = f"after must be >= 0, got {after}"
        raise ValueError(msg)
    return EventQuery(event_types=[DEAD_LETTER_TYPE], after_sequence=after, limit=limit)


def letter_from_event(letter: Event) -> DeadLetter | None:
    """Return the ``DeadLetter`` a ``$bus.deadletter`` event announced; None if unreadable."""
    data = letter.data
    try:
        if not isinstance(data, dict):
            raise TypeError("not a dict")
        raw = data["event"]
        if not isinstance(raw, dict):
            raise TypeError("not a dict")
        original = Event.from_dict(raw)
    except (KeyError, TypeError, InvalidEventError):
        logger.warning("dead letter %s has an unreadable payload", letter.id)
        return None
    attempts = data.get("attempts", 0)
    return DeadLetter(
        subscription_id=str(data.get("subscription")),
        pattern=str(data.get("pattern")),
        event=original,
        error_type=str(data.get("error_type")),
        error=str(data.get("error")),
        attempts=attempts if isinstance(attempts, int) else 0,
        letter=letter,
    )
