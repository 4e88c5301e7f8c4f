"""Flow control on the bridge's I/O thread: grant credit as a receiver, honour it as an origin.

The protocol is in ``docs/wire.md`` (``CREDIT``) and its guarantees in
``docs/cluster.md`` ("Flow control"); the origin's bookkeeping is the plain
``credit.SendQueue``.

As a **receiver**, the bridge grants every origin it follows
``NodeConfig.credit_window`` events past the origin sequence it has
*handled*: after injecting remote events it asks the local bus to say when
everything routed so far is handled and journaled (one flush in flight at a
time, started once a quarter of the window arrived, or at the heartbeat
tick), then acknowledges each origin's watermark as it stood when it asked.
A ``CREDIT`` also goes to every live peer at each heartbeat (so a lost one
is repaired, and the origin knows the receiver lives) and whenever the
local prefixes change.

As an **origin**, it queues the runs of local events (``SendQueue``) and
sends what the credit allows; once ``NodeConfig.send_queue`` events wait
(queued, or routed to the bridge and not yet queued: its own backlog), it
holds the bus's publishers of every event that would join the queue with a
``Hold`` in the bus's ``BlockGuard`` (the ``BLOCK`` mechanism: wait up to
``block_timeout``, then ``BackpressureError``), until the queue is back
under half.  Runs dropped for receivers that asked for it are counted and
announced once per lag with a ``$bus.peer.lagging`` event.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from actors._cluster.credit import MAX_WINDOW, SendQueue
from actors._cluster.io_base import BridgeBase
from actors._cluster.outbound import Run
from actors._cluster.ports import LocalNode
from actors._cluster.wire import CREDIT, Request
from actors._core.backpressure import Hold
from actors._model.config import NodeConfig
from actors._model.event import Event

__all__ = ["FlowIO"]

logger = logging.getLogger("actors.bridge")


class FlowIO(BridgeBase):
    """The flow-control part of the bridge (see the module docstring)."""

    def __init__(self, local: LocalNode, node: NodeConfig) -> None:
        super().__init__(local, node)
        # Without a journal, everything in flight must stay in the recovery ring
        # to be recovered if a frame is lost: no receiver gets more than
        # ``recovery_ring`` in flight.
        window = MAX_WINDOW if self._persistent else node.recovery_ring
        self._flow = SendQueue(self._epoch, node.send_queue, window)
        self._hold: Hold | None = None
        # Receiver side: events received since the last probe, whether one is
        # out, and per origin the (epoch, sequence) last acknowledged.
        self._credit_due = 0
        self._probing = False
        self._acked: dict[str, tuple[int, int]] = {}
        self._epochs: dict[str, int] = {}  # the epoch each origin was last heard with
        self._granted: dict[str, int] = {}  # the window last granted to each origin
        self._prefix_list: list[str] = []
        self._events_passed = 0  # events of records that reached ``_send_frames``

    # -- origin: the send queue --------------------------------------------------------

    def _queue_runs(self, runs: list[Run]) -> None:
        """Queue ``runs`` and send what the credit allows."""
        if runs:
            self._flow.add(runs)
            self._pump()

    def _pump(self) -> None:
        flow = self._flow
        if not flow.queue:
            self._update_hold()
            return
        stalls = flow.stalls
        runs, dropped = flow.take()
        self._stats.credit_stalls += flow.stalls - stalls
        self._send_runs(runs)
        for run, receivers in dropped:
            self._stats.events_dropped_lagging += run.count
            for receiver in receivers:
                if not receiver.lagging:
                    receiver.lagging = True
                    self._announce_lagging(receiver.name, receiver.dropped, receiver.window)
        self._update_hold()

    def _send_runs(self, runs: list[Run]) -> None:
        out = self._out
        xpub = self._xpub
        for run in runs:
            try:
                xpub.send_multipart(out.build(run), zmq.NOBLOCK)
            except zmq.Again:
                self._stats.frames_unsent += 1
                continue
            self._stats.frames_sent += 1

    def _backlog(self) -> int:
        """Return the events routed here not yet queued (``StreamIO`` knows its mailbox)."""
        return 0

    def _drained(self) -> threading.Event | None:
        """Return the event set once the bridge took its mail (``StreamIO`` knows it)."""
        return None

    def _update_hold(self) -> None:
        """Pace, hold or release the publishers of events the queue would take.

        Pacing (a ``Hold`` whose room is set: nobody waits, but each publish
        of such events waits until the router routed it) starts once the queue
        stalls for a receiver's credit or half of ``send_queue`` waits, so the
        router's mailbox holds at most one publish per publisher when the hold
        proper goes up at ``send_queue``; it stops once the queue is flowing
        again with under a quarter waiting.
        """
        flow = self._flow
        hold = self._hold
        waiting = flow.queued + self._backlog()
        limit = flow.limit
        engaged = hold is not None and not hold.room.is_set()
        stalled = flow.stalled and bool(flow.queue)
        if not engaged and waiting >= limit and self._out.active:
            lagging = ", ".join(flow.lagging()) or "none"
            hold = Hold(
                f"node {self.name}: send queue full ({waiting} events; out of credit: {lagging})",
                self._held_prefixes(),
                drained=self._drained(),
            )
            self._hold = hold
            self._stats.publishers_held += 1
            self._local.hold_publishers((hold,))
            logger.info("bridge %s: holding publishers: %s", self.name, hold.reason)
        elif hold is not None and engaged and waiting <= limit // 2:
            pace = self._pacing(hold.prefixes, self._drained())
            self._hold = pace
            self._local.hold_publishers((pace,))
            hold.room.set()
        elif hold is None and (stalled or waiting >= limit // 2) and self._out.active:
            self._hold = self._pacing(self._held_prefixes(), self._drained())
            self._local.hold_publishers((self._hold,))
        elif hold is not None and not engaged and not stalled and waiting < limit // 4:
            self._hold = None
            self._local.hold_publishers(())
            hold.room.set()

    def _held_prefixes(self) -> frozenset[str]:
        return frozenset(p.decode(errors="replace") for p in self._out.active)

    @staticmethod
    def _pacing(prefixes: frozenset[str], drained: threading.Event | None) -> Hold:
        pace = Hold("pacing", prefixes, drained=drained)
        pace.room.set()
        return pace

    def _announce_lagging(self, peer: str, dropped: int, window: int) -> None:
        logger.warning(
            "bridge %s: node %s lags (window %d): dropping its events (%d so far)",
            self.name,
            peer,
            window,
            dropped,
        )
        event = Event(
            event_type="$bus.peer.lagging",
            data={"node": self.name, "peer": peer, "dropped": dropped, "window": window},
            source="bus",
        )
        self._local.inject([event])

    def _on_credit(self, message: Request) -> None:
        body = message.body
        try:
            epoch, acked, window = int(body["epoch"]), int(body["acked"]), int(body["window"])
            prefixes = [str(p).encode() for p in body.get("prefixes", [])]
            drop = bool(body.get("drop", False))
        except (KeyError, TypeError, ValueError) as exc:
            self._stats.frames_dropped += 1
            logger.debug("bridge %s: bad credit from %s: %s", self.name, message.sender, exc)
            return
        if not message.sender or message.sender == self.name:
            return
        self._flow.on_credit(message.sender, epoch, acked, window, prefixes, drop, time.monotonic())
        self._pump()

    def _expire_credit(self, now: float) -> None:
        """Forget receivers silent for ``heartbeat_timeout``: they hold no one back."""
        for name in self._flow.expire(now, self._node.heartbeat_timeout):
            logger.info("bridge %s: node %s sends no credit: not waiting for it", self.name, name)
        self._pump()

    def _flush_queue(self) -> None:
        """Send everything queued, credit or not (the node is closing)."""
        self._send_runs(self._flow.take_all())
        self._update_hold()
        drained = self._drained()
        if drained is not None:
            drained.set()  # nobody waits for a bridge that stops

    def _sent_head(self) -> int:
        """Return the last sequence of this node everything up to which left (heartbeats)."""
        return self._flow.sent_head(self._out.head)

    # -- receiver: granting ------------------------------------------------------------

    def _probe(self) -> None:
        """Ask the bus to say once what was injected so far is handled (one at a time)."""
        if self._probing or self._stopping:
            return
        inbound = self._in
        marks: dict[str, tuple[int, int]] = {}
        for name, mark in inbound.watermarks().items():
            st = inbound.origins.get(name)
            if (
                st is not None
                and st.epoch is not None
                and self._acked.get(name)
                != (
                    st.epoch,
                    mark,
                )
            ):
                marks[name] = (st.epoch, mark)
        counts = inbound.delivered_counts()
        if not marks and not counts:
            self._credit_due = 0
            return
        self._probing = True
        self._credit_due = 0
        self._local.after_handled(lambda: self._call_soon(lambda: self._probed(marks, counts)))

    def _probed(self, marks: dict[str, tuple[int, int]], counts: dict[str, int]) -> None:
        self._probing = False
        for name, mark in marks.items():
            self._acked[name] = mark
            self._grant(name)
        # A recovery page waiting for room goes out if the flush made some.
        self._in.on_handled(counts)
        self._deliver([])
        if self._credit_due >= max(1, self._node.credit_window // 4) or self._in.waiting_room():
            self._probe()

    def _window_for(self, name: str) -> int:
        """Return the window to grant ``name``: half of it while a recovery of it runs.

        The other half is the recovery's (``room.py``): the frames held
        meanwhile and the pages fetched share ``credit_window``.
        """
        window = self._node.credit_window
        return max(1, window // 2) if self._in.recovering(name) else window

    def _regrant(self) -> None:
        """Grant again the origins whose window changed (a recovery started or ended)."""
        for name, window in self._granted.items():  # _grant only updates values
            if window != self._window_for(name) and self._alive(name):
                self._grant(name)

    def _arrived(self, count: int) -> None:
        """Count ``count`` events given to the bus; flush once a quarter window (or room) is due."""
        self._regrant()
        self._credit_due += count
        if self._credit_due >= max(1, self._node.credit_window // 4) or self._in.waiting_room():
            self._probe()

    def _epoch_heard(self, name: str, epoch: int) -> None:
        """Grant a restarted origin at once: it knows no receiver and sends unlimited until then."""
        known = self._epochs.get(name)
        if known != epoch:
            self._epochs[name] = epoch
            if known is not None:
                self._grant(name)

    def _grant(self, name: str) -> None:
        """Send ``name`` this node's credit (its prefixes, the window, what was handled)."""
        route = self._route_to(name)
        if route is None:
            return
        epoch, acked = self._acked.get(name, (0, 0))
        window = self._window_for(name)
        self._granted[name] = window
        body: dict[str, Any] = {
            "epoch": epoch,
            "acked": acked,
            "window": window,
            "prefixes": self._prefix_list,
            "drop": self._node.lag_policy == "drop",
        }
        self._stats.credits_sent += 1
        self._send(route, Request(CREDIT, name, self.name, "credit", body))

    def _grant_all(self) -> None:
        """Send every live peer this node's credit (heartbeat tick, new prefixes)."""
        self._prefix_list = sorted(p.decode(errors="replace") for p in self._in.prefixes)
        for peer in self._peers.values():
            if peer.alive:
                self._grant(peer.name)

    def _credit_tick(self, now: float) -> None:
        """Heartbeat tick: grant every live peer, probe what arrived, expire silent receivers."""
        self._grant_all()
        self._probe()
        self._expire_credit(now)
