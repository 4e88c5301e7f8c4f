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
sends what the credit allows.  While a peer subscribes, a pacing ``Hold``
in the bus's ``BlockGuard`` carries an ``Allowance`` that publishers spend
and this bridge refills as events leave the queue (``_update_hold``); once
``NodeConfig.send_queue`` events wait (queued, or routed to the bridge and
not yet queued: its own backlog), the hold proper stops the bus's
publishers of every event that would join the queue (the ``BLOCK``
mechanism: wait up to ``block_timeout``, then ``BackpressureError``),
until the queue is back under half.  Runs dropped for receivers that
asked for it are counted and announced once per lag with a
``$bus.peer.lagging`` event.
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
from actors._cluster.wire import (
    CREDIT,
    FrameError,
    Request,
    bool_field,
    texts_field,
    uint_field,
)
from actors._core.backpressure import Allowance, Hold
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
        self._allowance: Allowance | None = None
        self._released = 0  # the queue's ``left`` as last counted out of the allowance
        self._active_bytes: frozenset[bytes] = frozenset()  # ``_out.active``, as last seen
        self._active: frozenset[str] = frozenset()  # the same, decoded (the holds' prefixes)
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

        While a peer subscribes, a pacing ``Hold`` (its room set: nobody waits
        for room) carries the ``Allowance`` of ``send_queue // 2`` events:
        publishes it covers go straight on; one past it waits until the router
        routed it and this bridge took it, so that the queue grows by at most
        one publish per publishing thread between two of these checks, however
        the threads are scheduled.  The hold proper (room cleared) goes up once
        ``send_queue`` events wait, and comes down once half of them left.
        """
        flow = self._flow
        allowance = self._allowance
        if allowance is not None:
            allowance.release(flow.left - self._released)
        self._released = flow.left
        hold = self._hold
        active = self._held_prefixes()
        waiting = flow.queued + self._backlog()
        limit = flow.limit
        engaged = hold is not None and not hold.room.is_set()
        if self._stopping or (not active and (not engaged or waiting <= limit // 2)):
            # Nothing new joins the queue (a held one waits for its receivers' credit or expiry).
            if hold is not None:
                self._set_hold(None)
            return
        if hold is None or (active and hold.prefixes != active):
            # A new allowance: what the old one counted for other prefixes is forgotten.
            self._allowance = Allowance(max(1, limit // 2), flow.queued)
            if engaged:
                self._set_hold(self._holding(active, waiting))
            else:
                self._set_hold(self._pacing(active))
        elif not engaged and waiting >= limit:
            held = self._holding(active, waiting)
            self._set_hold(held)
            self._stats.publishers_held += 1
            logger.info("bridge %s: holding publishers: %s", self.name, held.reason)
        elif engaged and waiting <= limit // 2:
            self._set_hold(self._pacing(active))

    def _holding(self, prefixes: frozenset[str], waiting: int) -> Hold:
        lagging = ", ".join(self._flow.lagging()) or "none"
        return Hold(
            f"node {self.name}: send queue full ({waiting} events; out of credit: {lagging})",
            prefixes,
            drained=self._drained(),
            allowance=self._allowance,
        )

    def _pacing(self, prefixes: frozenset[str]) -> Hold:
        pace = Hold("pacing", prefixes, drained=self._drained(), allowance=self._allowance)
        pace.room.set()
        return pace

    def _set_hold(self, hold: Hold | None) -> None:
        """Put ``hold`` in the bus's guard (None: no hold), then release the old one's waiters."""
        old, self._hold = self._hold, hold
        self._local.hold_publishers(() if hold is None else (hold,))
        if old is not None:
            old.room.set()

    def _held_prefixes(self) -> frozenset[str]:
        active = self._out.active
        if active != self._active_bytes:
            self._active_bytes = frozenset(active)
            self._active = frozenset(p.decode(errors="replace") for p in active)
        return self._active

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
            epoch, acked, window = (uint_field(body, f) for f in ("epoch", "acked", "window"))
            prefixes = [p.encode() for p in texts_field(body, "prefixes", [])]
            drop = bool_field(body, "drop", False)
        except FrameError as exc:
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
            who = f"node {name}" if name else "a new subscriber"
            logger.info("bridge %s: %s sends no credit: not waiting for it", self.name, who)
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

    def _forget_flow(self, name: str) -> None:
        """Drop what was granted to the forgotten peer ``name`` (``StreamIO._forget_gone``)."""
        self._granted.pop(name, None)
        self._epochs.pop(name, None)
        self._acked.pop(name, None)

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
        """Grant an origin heard first (or restarted) at once: it sends one run until then.

        A restarted peer this node dials is greeted again: restarted before
        it was declared dead, it would otherwise never learn this node's
        stream (the link's connection came back on its own).  This node's
        asks waiting for it are sent to it again.
        """
        known = self._epochs.get(name)
        if known != epoch and not self._in.is_retired(name, epoch):  # not a late frame
            self._epochs[name] = epoch
            self._grant(name)
            if known is not None:
                for link in self._links:
                    if link.name == name and not link.broker:
                        link.welcomed = False
                        link.hello_at = float("-inf")
                # Asks the last incarnation took and never answered go to this one.
                self._resend_asks(name)
                self._recovery_restarted(name)

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
