"""What ``Inbound`` knows of one origin, and the recovery requests it sends (plain data)."""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass, field

from actors._model.event import Event

__all__ = ["LEFT_NUMBERINGS", "MAX_AHEAD", "MAX_SEQUENCE", "OriginState", "RecoverRequest"]

MAX_SEQUENCE = (1 << 63) - 1
"""The largest sequence an origin can give (a signed 64-bit integer)."""

MAX_AHEAD = 1 << 30
"""How far past the head its origin last announced a sequence may be before it is rejected."""
LEFT_NUMBERINGS = 4
"""How many numberings an origin left are remembered, with the watermark in each."""


@dataclass(frozen=True, slots=True)
class RecoverRequest:
    """Ask ``origin`` for its events in ``(after, upto]`` under ``prefixes``."""

    rid: str
    origin: str
    after: int
    upto: int
    prefixes: tuple[str, ...]
    gaps: int = 1  # how many detected gaps this request ends
    lost: bool = False  # an earlier part of the range was already reported lost
    limit: int = 0  # at most this many events in the answer (0: the origin's own limit)
    errors: int = 0  # ``ERROR`` answers so far (``recovery_io``): tries that ran out do not count


@dataclass(slots=True)
class OriginState:
    epoch: int | None = None
    # What numbers its sequences (its journal's identity, or its epoch
    # without one; None from an older peer): a new one starts from 1 again.
    numbering: int | None = None
    # The watermarks of the last numberings it left (``LEFT_NUMBERINGS``), by
    # numbering: an origin moved back to a journal this node followed before
    # resumes from where it was in it, not from its start.
    left: dict[int, int] = field(default_factory=dict)
    known: dict[bytes, int] = field(default_factory=dict)
    synced: set[bytes] = field(default_factory=set)
    watermark: int | None = None
    awaiting_sync: bool = True
    sync_since: float = 0.0
    loading: bool = False
    # A sync reply taken while loading: (epoch, base, head, sent, numbering, chains).
    stashed: tuple[int, int, int, int | None, int | None, dict[bytes, int] | None] | None = None
    pending: dict[str, RecoverRequest] = field(default_factory=dict)
    deferred: list[tuple[int, int, frozenset[str], int]] = field(default_factory=list)
    held: list[Event] = field(default_factory=list)
    # Before its first sync reply (``note_held``): the last sequence held under each
    # prefix, and the holes the held frames' chains show under it.
    firsts: dict[bytes, int] = field(default_factory=dict)
    holes: list[tuple[bytes, int, int]] = field(default_factory=list)
    head: int | None = None  # the head its current incarnation last announced
    restarted: bool = False  # a new incarnation continues the sequences: backfill at sync
    next_epoch: int | None = None  # an epoch seen in data frames, not yet confirmed
    next_since: float = 0.0  # when a frame of ``next_epoch`` first came
    heard: float = 0.0  # when a heartbeat of ``epoch`` last came
    # The last sequence of the last frame of ``top_epoch`` delivered off the
    # stream: a frame of that epoch at or below it (a second path's backlog,
    # past what the id window remembers) is old, whatever its ids.  Never
    # past the highest head that epoch announced (``top_head``): a frame that
    # ran ahead of its origin's head holds back nothing the origin sends.
    top: int = 0
    top_epoch: int | None = None
    top_head: int = 0
    retired: tuple[int, ...] = ()  # the last epochs it left (incarnations replaced since)
    # A backfill fetched up to a head past what the origin had sent: the
    # events it still had queued come on the stream after the reply, so
    # nothing past the stream's position (``passed``) is released until the
    # stream has reached that head (``until``; ``Inbound.on_sync``).
    until: int | None = None
    passed: int = 0
    until_heard: bool = False  # only a heartbeat reaches ``until`` (no backfill was asked)
    # A sync wait timed out: its baselines are the last heartbeat's, so
    # nothing is released before the heartbeats' chains of every prefix
    # subscribed are checked (``chains_heard``: the prefixes heard so far; a
    # heartbeat sent before the origin took a new prefix lacks its chain).
    awaiting_chains: bool = False
    chains_heard: set[bytes] = field(default_factory=set)
    # The window during a recovery (``room.py``): events given to the bus,
    # how many of them the last flush found handled, the limit of the request
    # out, a request waiting for room, and the range of held events dropped
    # for room while a sync reply or the saved watermark was awaited.
    delivered: int = 0
    handled: int = 0
    asked: int = 0
    unsent: RecoverRequest | None = None
    discarded: tuple[int, int] | None = None

    def wait_for_stream(self, until: int, passed: int, *, heard: bool) -> None:
        """Release nothing past ``passed`` until the stream reaches ``until`` (``heard``:
        a heartbeat must, whose chains check what came under older ones)."""
        self.until = until if self.until is None else max(self.until, until)
        self.passed = max(self.passed, passed)
        self.until_heard = self.until_heard or heard

    def renumbered(self, numbering: int | None) -> tuple[bool, int]:
        """Return whether ``numbering`` is another than the watermark's, and where to resume.

        Where to resume: the watermark this node had in ``numbering`` when
        the origin left it, or 0 (its start) for a numbering not followed
        before.  The one left now is remembered (the last ``LEFT_NUMBERINGS``).
        """
        if numbering is None or self.numbering is None or numbering == self.numbering:
            return False, 0
        back = self.left.pop(numbering, 0)
        if self.watermark is not None:
            self.left[self.numbering] = self.watermark
            while len(self.left) > LEFT_NUMBERINGS:
                del self.left[next(iter(self.left))]
        return True, back

    def note_held(
        self, chains: Iterable[tuple[bytes, int]], first: int, last: int, prefixes: Set[bytes]
    ) -> None:
        """Follow the chains of a new origin's frames held for its first sync reply.

        They are delivered at it, so what follows them under their prefix is
        owed too (docs/cluster.md, "No hole after the first event"): the
        first frame under a prefix is its baseline, and a later one chained
        past the last held (lost on the way: a pause, a full queue) leaves a
        hole, fetched once the reply (or a timed-out wait) gives a head.
        """
        firsts = self.firsts
        for prefix, prev in chains:
            if prefix in prefixes:
                mark = firsts.get(prefix)
                if mark is not None and prev > mark:
                    self.holes.append((prefix, mark, first - 1))
                if mark is None or last > mark:
                    firsts[prefix] = last

    def mark(self, prefix: bytes, limit: int) -> int | None:
        """Return (and forget) the last held sequence under ``prefix`` up to ``limit``.

        A held frame past ``limit`` (out of range: never delivered) does not count.
        """
        mark = self.firsts.pop(prefix, None)
        if mark is not None and mark > limit:
            text = prefix.decode()
            held = (e.sequence or 0 for e in self.held if e.event_type.startswith(text))
            mark = max((s for s in held if s <= limit), default=None)
        return mark

    def untouched(self) -> bool:
        """Return whether nothing was ever received of this origin (nothing to keep for it)."""
        return (
            self.epoch is None
            and self.watermark is None
            and not self.loading
            and not self.known
            and not self.held
            and not self.pending
        )

    def unhandled(self) -> int:
        """Return how many events given to the bus are not known handled yet."""
        return self.delivered - self.handled

    def blocked(self) -> bool:
        """Return whether its events wait (for a sync reply, a watermark or a recovery)."""
        return (
            self.awaiting_sync
            or self.awaiting_chains
            or self.loading
            or bool(self.pending)
            or bool(self.deferred)
        )
