"""What a persistent node keeps in its journal of the streams it receives, read back at a restart.

The checkpoints (``docs/cluster.md``, "Restarts of a receiving node"):

- ``bridge:ORIGIN``: the watermark of ``ORIGIN`` (everything up to that
  origin sequence that a local pattern matches was delivered and journaled);
- ``bridge@journal``: a sequence of the local journal below every event
  received after the watermarks saved with it;
- ``bridge~ORIGIN``: the epoch (incarnation) of ``ORIGIN`` its watermark
  counts in: an origin without a journal that restarted while this node was
  down numbers its events from 1 again, and only its epoch tells the
  restarted node that its saved watermark no longer applies;
- ``bridge#ORIGIN``: the numbering ``ORIGIN``'s watermark counts in (its
  journal's identity, or its epoch without one): an origin moved to a fresh
  journal while this node was down numbers from 1 again, and may have passed
  the saved watermark already when this node hears it;
- ``bridge#ORIGIN#I`` and ``bridge:ORIGIN#I`` (I from 0): a numbering
  ``ORIGIN`` left and the watermark this node had in it, the last
  ``LEFT_NUMBERINGS``, read up to the first numbering 0: an origin moved
  back to a journal followed before resumes from there.

What one delivery changed of them is saved in one write
(``JournalPort.save_checkpoints``): a watermark is never on disk without the
epoch and numbering it counts in, nor a numbering left without its own
watermark, whatever a crash interrupts.

They go to the journal through the router, after the records of the events
they cover; the position goes in the same write as the watermarks.  A crash
can still fall between the write of received events and the write of the
watermark that covers them; the restarted node then fetches them again from
their origin.  The events after the saved position (read
once at the start, before the position is saved again) tell which of them
the journal holds already: they are not injected (journaled, delivered) a
second time.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import NamedTuple

from actors._cluster.origins import LEFT_NUMBERINGS
from actors._cluster.ports import JournalPort
from actors._model.query import EventQuery

__all__ = [
    "POSITION",
    "SavedMark",
    "epoch_name",
    "left_items",
    "load_journaled",
    "load_mark",
    "load_received",
    "numbering_name",
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


def left_names(origin: str, index: int) -> tuple[str, str]:
    """Return the names of the checkpoints of the ``index``-th numbering ``origin`` left."""
    return f"bridge#{origin}#{index}", f"bridge:{origin}#{index}"


class SavedMark(NamedTuple):
    """What a node saved of one origin (None where not saved)."""

    watermark: int | None
    epoch: int | None
    numbering: int | None
    left: tuple[tuple[int, int], ...] = ()  # numberings it left, with the watermark in each


def left_items(origin: str, left: dict[int, int]) -> list[tuple[str, int]]:
    """Return the checkpoints that save the numberings ``origin`` left, with the watermark in each.

    Saved in one write with the rest (``JournalPort.save_checkpoints``).
    """
    out: list[tuple[str, int]] = []
    for index, (numbering, mark) in enumerate(left.items()):
        numbering_key, mark_key = left_names(origin, index)
        out += [(mark_key, mark), (numbering_key, numbering)]
    if len(left) < LEFT_NUMBERINGS:  # the list ends there, whatever was saved past it before
        out.append((left_names(origin, len(left))[0], 0))
    return out


def load_left(journal: JournalPort, origin: str, timeout: float) -> tuple[tuple[int, int], ...]:
    """Return the numberings ``origin`` left, with the watermark in each; blocks."""
    out: list[tuple[int, int]] = []
    for index in range(LEFT_NUMBERINGS):
        numbering_key, mark_key = left_names(origin, index)
        numbering = journal.load_checkpoint(numbering_key, timeout)
        mark = journal.load_checkpoint(mark_key, timeout) if numbering else None
        if not numbering or mark is None:
            break
        out.append((numbering, mark))
    return tuple(out)


def load_mark(journal: JournalPort, origin: str, timeout: float) -> SavedMark:
    """Return ``origin``'s saved watermark, its epoch and its numbering; blocks."""
    mark = journal.load_checkpoint(watermark_name(origin), timeout)
    if mark is None:
        return SavedMark(None, None, None)
    epoch = journal.load_checkpoint(epoch_name(origin), timeout)
    numbering = journal.load_checkpoint(numbering_name(origin), timeout)
    return SavedMark(mark, epoch, numbering, load_left(journal, origin, timeout))


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
