"""Credit-based flow control of an origin's stream, as a plain state machine (no sockets).

Every receiver grants each origin it follows a *window* of events
(``CREDIT``, ``docs/wire.md``): the origin may have at most that many events
the receiver wants in flight to it, past the position the receiver
acknowledged (``acked``: the origin sequence up to which the receiver has
handled, or given up, everything it wants).  ``SendQueue`` is the origin's
side, on the bridge's I/O thread:

- the runs of events (``outbound.Run``) wait in one FIFO queue, so the order
  of the stream holds for every receiver (one multicast stream: a run
  cannot go to one receiver and not to another);
- the run at the head goes out when no live receiver that wants it is out
  of credit; a receiver with nothing in flight always takes one run (a run
  larger than its window does not stall it for ever);
- a receiver that asked to be dropped rather than hold anyone (``drop``)
  does not stop the queue: a run only such lagging receivers want is
  dropped (never built: no chain moves, so no receiver sees a gap) and
  counted per receiver; a run someone else wants too goes out;
- a receiver not heard (no ``CREDIT``) for ``heartbeat_timeout`` is dead:
  forgotten, it holds no one back;
- a prefix subscribed that no known receiver holds (a receiver whose first
  ``CREDIT`` has not arrived yet) is limited to one run in flight
  (``pending``: a receiver not heard yet, whose window is unknown) until a
  ``CREDIT`` holding it arrives (a receiver heard first takes over what
  ``pending`` had in flight), or until ``heartbeat_timeout`` passes without
  one.

The bridge holds publishers (``BlockGuard`` holds) once ``queued`` plus its
own backlog reach ``limit``, and lets them go once they are back under half
(``flow_io``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from actors._cluster.outbound import Run

__all__ = ["MAX_WINDOW", "Receiver", "SendQueue"]

MAX_WINDOW = 1 << 31
"""The largest window a receiver may grant (larger grants are cut to it)."""


@dataclass(slots=True)
class Receiver:
    """What an origin knows of one receiver's credit (I/O thread only)."""

    name: str
    prefixes: frozenset[bytes]
    window: int
    drop: bool
    heard: float
    acked: int = 0
    in_flight: int = 0
    sent: deque[tuple[int, int]] = field(default_factory=deque)  # (last sequence, events)
    lagging: bool = False  # a drop episode was announced
    dropped: int = 0

    def settle(self) -> None:
        """Forget the runs the receiver acknowledged."""
        sent = self.sent
        acked = self.acked
        while sent and sent[0][0] <= acked:
            self.in_flight -= sent.popleft()[1]

    def short(self, count: int) -> bool:
        """Return whether sending ``count`` more events would exceed the window."""
        self.settle()
        return self.in_flight > 0 and self.in_flight + count > self.window


class SendQueue:
    """The origin's side of flow control (see the module docstring)."""

    def __init__(self, epoch: int, limit: int, max_window: int = MAX_WINDOW) -> None:
        self.epoch = epoch
        self.limit = max(1, limit)
        self.max_window = min(max(1, max_window), MAX_WINDOW)
        self.receivers: dict[str, Receiver] = {}
        self.queue: deque[Run] = deque()
        self.queued = 0
        self.stalled = False
        self.stalls = 0
        self.dropped = 0
        self.peak = 0
        self.left = 0  # events ever out of the queue (sent, dropped, flushed)
        self.sent_upto = 0  # the last sequence sent or dropped
        self.pending: Receiver | None = None  # subscribed, no CREDIT yet (``expect``)
        self._covered: frozenset[bytes] = frozenset()

    # -- credit -------------------------------------------------------------------

    def on_credit(  # noqa: PLR0917 - the fields of one CREDIT message
        self,
        name: str,
        epoch: int,
        acked: int,
        window: int,
        prefixes: Iterable[bytes],
        drop: bool,
        now: float,
    ) -> None:
        """Take a receiver's grant.  ``acked`` counts only if it is about this ``epoch``.

        The window is cut to ``max_window`` (the origin's recovery ring: what
        is in flight can still be recovered if a frame is lost).

        An acknowledgement past what was sent (a receiver that took the head a
        sync reply announced as its start) counts only up to what was sent.
        """
        wanted = frozenset(prefixes)
        window = min(max(1, window), self.max_window)
        receiver = self.receivers.get(name)
        if not wanted:
            if receiver is not None:
                del self.receivers[name]
                self._cover()
            return
        pending = self.pending
        if receiver is None:
            receiver = self.receivers[name] = Receiver(name, wanted, window, drop, now)
            if pending is not None and not pending.prefixes.isdisjoint(wanted):
                # What went out before this first CREDIT counts against it.
                receiver.sent, receiver.in_flight = deque(pending.sent), pending.in_flight
        else:
            receiver.window, receiver.drop, receiver.heard = window, drop, now
            receiver.prefixes = wanted
        acked = min(acked, self.sent_upto)
        if epoch == self.epoch and acked > receiver.acked:
            receiver.acked = acked
            receiver.settle()
        self._cover()
        if pending is not None:
            pending.prefixes -= self._covered
            if not pending.prefixes:
                self.pending = None

    def expect(self, prefix: bytes, now: float) -> None:
        """``prefix`` was subscribed: limit it until a ``CREDIT`` that holds it arrives."""
        if prefix in self._covered:
            return
        pending = self.pending
        if pending is None:
            self.pending = Receiver("", frozenset({prefix}), 1, False, now)
        else:
            pending.prefixes |= {prefix}

    def expire(self, now: float, timeout: float) -> list[str]:
        """Forget receivers not heard for ``timeout``; return their names.

        ``pending`` goes too, named ``""``, if no ``CREDIT`` came since it began.
        """
        gone = [r.name for r in self.receivers.values() if now - r.heard > timeout]
        for name in gone:
            del self.receivers[name]
        if gone:
            self._cover()
        pending = self.pending
        if pending is not None and now - pending.heard > timeout:
            self.pending = None
            gone.append("")
        return gone

    def _cover(self) -> None:
        covered: set[bytes] = set()
        for receiver in self.receivers.values():
            covered |= receiver.prefixes
        self._covered = frozenset(covered)

    # -- the queue ----------------------------------------------------------------

    def add(self, runs: list[Run]) -> None:
        """Queue ``runs`` behind what waits already."""
        for run in runs:
            self.queue.append(run)
            self.queued += run.count
        self.peak = max(self.peak, self.queued)

    def take(self) -> tuple[list[Run], list[tuple[Run, list[Receiver]]]]:
        """Return the runs to send now, in order, and the runs dropped (with whom for).

        Stops at the first run a live receiver without credit holds up
        (``stalled``, counted once per stall in ``stalls``).
        """
        out: list[Run] = []
        dropped: list[tuple[Run, list[Receiver]]] = []
        queue = self.queue
        receivers = self.receivers
        pending = self.pending
        while queue:
            run = queue[0]
            if receivers or pending is not None:
                matched = run.matched
                wanting = [r for r in receivers.values() if not r.prefixes.isdisjoint(matched)]
                if pending is not None and not pending.prefixes.isdisjoint(matched):
                    wanting.append(pending)
                short = [r for r in wanting if r.short(run.count)]
                if any(not r.drop for r in short):
                    if not self.stalled:
                        self.stalled = True
                        self.stalls += 1
                    break
                others = len(wanting) > len(short) or not self._covered.issuperset(matched)
                if short and not others:
                    queue.popleft()
                    self.queued -= run.count
                    for receiver in short:
                        receiver.dropped += run.count
                    self.dropped += run.count
                    self.left += run.count
                    self.sent_upto = run.last
                    dropped.append((run, short))
                    continue
                behind = {r.name for r in short}
                for receiver in wanting:
                    if receiver.name not in behind:
                        receiver.lagging = False
                    receiver.sent.append((run.last, run.count))
                    receiver.in_flight += run.count
            self.stalled = False
            queue.popleft()
            self.queued -= run.count
            self.left += run.count
            self.sent_upto = run.last
            out.append(run)
        return out, dropped

    def skip(self, count: int) -> None:
        """Count ``count`` events out that never joined the queue (too large to send)."""
        self.left += count

    def take_all(self) -> list[Run]:
        """Return every queued run, credit or not (the node is closing)."""
        runs = list(self.queue)
        if runs:
            self.sent_upto = runs[-1].last
        self.queue.clear()
        self.left += self.queued
        self.queued = 0
        return runs

    @property
    def full(self) -> bool:
        """Return whether publishers should be held (the queue is at its limit)."""
        return self.queued >= self.limit

    @property
    def relieved(self) -> bool:
        """Return whether held publishers may go (the queue is under half its limit)."""
        return self.queued <= self.limit // 2

    def sent_head(self, head: int) -> int:
        """Return the last sequence everything before which was sent (or dropped)."""
        if self.queue:
            return min(head, self.queue[0].first - 1)
        return head

    def lagging(self) -> list[str]:
        """Return the receivers out of credit that hold the queue now."""
        if not self.queue or not self.stalled:
            return []
        run = self.queue[0]
        return sorted(
            r.name
            for r in self.receivers.values()
            if not r.drop and not r.prefixes.isdisjoint(run.matched) and r.short(run.count)
        )
