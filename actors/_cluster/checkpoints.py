"""What a persistent node keeps in its journal of the streams it receives, read back at a restart.

Two kinds of checkpoint (``docs/cluster.md``, "Restarts of a receiving node"):

- ``bridge:ORIGIN``: the watermark of ``ORIGIN`` (everything up to that
  origin sequence that a local pattern matches was delivered and journaled);
- ``bridge@journal``: a sequence of the local journal below every event
  received after the watermarks saved with it;
- ``bridge~ORIGIN``: the epoch (incarnation) of ``ORIGIN`` its watermark
  counts in, saved after the watermark: an origin without a journal that
  restarted while this node was down numbers its events from 1 again, and
  only its epoch tells the restarted node that its saved watermark no
  longer applies.  A crash between the two writes leaves the new
  incarnation's watermark with the old epoch: the restart then takes the
  origin for restarted and fetches more, never less.

Both go to the journal through the router, after the records of the events
they cover, and the journal stores checkpoints in the order they were last
set: a watermark saved before the position is on disk whenever the position
is.  A crash can still fall between the write of received events and the
write of the watermark that covers them; the restarted node then fetches
them again from their origin.  The events after the saved position (read
once at the start, before the position is saved again) tell which of them
the journal holds already: they are not injected (journaled, delivered) a
second time.
"""

from __future__ import annotations

from concurrent.futures import Future

from actors._cluster.ports import JournalPort
from actors._model.query import EventQuery

__all__ = [
    "POSITION",
    "epoch_name",
    "load_journaled",
    "load_mark",
    "load_received",
    "watermark_name",
]

POSITION = "bridge@journal"
"""The checkpoint of the local journal's position (see the module docstring)."""


def watermark_name(origin: str) -> str:
    """Return the name of the checkpoint that holds ``origin``'s watermark."""
    return f"bridge:{origin}"


def epoch_name(origin: str) -> str:
    """Return the name of the checkpoint that holds the epoch ``origin``'s watermark counts in."""
    return f"bridge~{origin}"


def load_mark(journal: JournalPort, origin: str, timeout: float) -> tuple[int | None, int | None]:
    """Return ``origin``'s saved watermark and its epoch (None where not saved); blocks."""
    mark = journal.load_checkpoint(watermark_name(origin), timeout)
    if mark is None:
        return None, None
    return mark, journal.load_checkpoint(epoch_name(origin), timeout)


def load_received(
    journal: JournalPort, origin: str, journaled: Future[dict[str, list[int]]], timeout: float
) -> tuple[int | None, int | None, list[int]]:
    """Return ``origin``'s saved watermark, its epoch and the ids journaled past it; blocks.

    ``journaled`` is the reading of ``load_journaled`` (waited for only where a watermark is saved).
    """
    mark, epoch = load_mark(journal, origin, timeout)
    ids = journaled.result(timeout).get(origin, []) if mark is not None else []
    return mark, epoch, ids


def load_journaled(journal: JournalPort, limit: int, timeout: float) -> dict[str, list[int]]:
    """Return, per origin, the ids of received events the journal holds after the saved position.

    Blocks (a worker thread); reads at most the last ``limit`` events.  Read
    once at the start, before the position is saved again.
    """
    # None: no position was saved yet (the node died before its first one
    # was written), while received events may be journaled: all of them count.
    position = journal.load_checkpoint(POSITION, timeout) or 0
    query = EventQuery(after_sequence=position, limit=limit, descending=True)
    out: dict[str, list[int]] = {}
    for event in journal.read(query, timeout):
        if event.origin is not None:
            out.setdefault(event.origin, []).append(event.id.int)
    return out
