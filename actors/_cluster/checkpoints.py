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
- ``bridge#ORIGIN``: the numbering ``ORIGIN``'s watermark counts in (its
  journal's identity, or its epoch without one), saved after the epoch: an
  origin moved to a fresh journal while this node was down numbers from 1
  again, and may have passed the saved watermark already when this node
  hears it.  Saved after the watermark too: a crash between the writes
  leaves the new numbering's watermark with the old numbering, and the
  restart fetches the origin's events from its journal's start (more, never
  less).

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
from typing import NamedTuple

from actors._cluster.ports import JournalPort
from actors._model.query import EventQuery

__all__ = [
    "POSITION",
    "SavedMark",
    "epoch_name",
    "load_journaled",
    "numbering_name",
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


def numbering_name(origin: str) -> str:
    """Return the name of the checkpoint of the numbering ``origin``'s watermark counts in."""
    return f"bridge#{origin}"


class SavedMark(NamedTuple):
    """What a node saved of one origin (None where not saved)."""

    watermark: int | None
    epoch: int | None
    numbering: int | None


def load_mark(journal: JournalPort, origin: str, timeout: float) -> SavedMark:
    """Return ``origin``'s saved watermark, its epoch and its numbering; blocks."""
    mark = journal.load_checkpoint(watermark_name(origin), timeout)
    if mark is None:
        return SavedMark(None, None, None)
    epoch = journal.load_checkpoint(epoch_name(origin), timeout)
    return SavedMark(mark, epoch, journal.load_checkpoint(numbering_name(origin), timeout))


def load_received(
    journal: JournalPort, origin: str, journaled: Future[dict[str, list[int]]], timeout: float
) -> tuple[SavedMark, list[int]]:
    """Return what was saved of ``origin`` and the ids journaled past its watermark; blocks.

    ``journaled`` is the reading of ``load_journaled`` (waited for only where a watermark is saved).
    """
    saved = load_mark(journal, origin, timeout)
    ids = journaled.result(timeout).get(origin, []) if saved.watermark is not None else []
    return saved, ids


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
