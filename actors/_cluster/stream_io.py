"""The event stream of the bridge (I/O thread): frames out on the XPUB, frames in on SUBs.

Records from the local router go out as data frames (``Outbound``); frames
from peers go through ``Inbound`` (gaps, recovery, order, duplicates) and on
to the local router.  Heartbeats and sync replies are control frames.

Each peer whose stream the node follows directly has a SUB socket of its
own, and a frame on it is taken only under that peer's name: a peer's
stream carries its own events, heartbeats and sync replies and nothing
else, so a frame under another origin there is a forgery (dropped and
counted).  The node's shared SUB carries the streams of its brokers, which
check the senders they relay for (``broker.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future

import zmq

from actors._cluster.checkpoints import SavedMark, load_received
from actors._cluster.endpoints import Peer
from actors._cluster.flow_io import FlowIO
from actors._cluster.limits import cap_inbound
from actors._cluster.outbound import HEARTBEAT_ROOM
from actors._cluster.wire import (
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    SYNC,
    ControlFrame,
    FrameError,
    chains_field,
    decode_stream,
    encode_control,
    parse_sync_topic,
    sync_topic,
    text_field,
    uint_field,
)
from actors._core.messages import Barrier, Record
from actors._errors import BusClosedError
from actors._model.event import Event
from actors._runtime.dispatcher import FifoMailbox

__all__ = ["StreamIO", "WakeMailbox"]

logger = logging.getLogger("actors.bridge")

RECV_BURST = 512
MAX_UNCONFIRMED_STREAMS = 64
"""Stream sockets opened for unasked greetings whose peer was not yet heard on them."""
MAX_UNASKED_STREAMS = 512
"""Stream sockets opened for unasked greetings (half of a context's 1,023 sockets)."""
MAX_QUEUED_STREAMS = 256
"""Streams waiting for room to be followed (the oldest is dropped past it)."""
FORGET_AFTER = 12
"""A peer gone this many ``heartbeat_timeout``s, that left nothing to keep, is forgotten."""


class WakeMailbox(FifoMailbox):
    """A ``FifoMailbox`` whose "schedule" writes a byte to the I/O thread's wake-up pipe.

    ``events_in`` counts the events of every ``Record`` put (written by the
    router's thread, the one producer); the I/O thread compares it with what
    it took to know its backlog (flow control).  ``drained`` is cleared by a
    put (before the item is appended) and set by the I/O thread once a take
    left the mailbox empty: paced publishers wait for it (``Hold.drained``).
    """

    __slots__ = ("_wake", "drained", "events_in")

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake
        self.events_in = 0
        self.drained = threading.Event()
        self.drained.set()

    def put(self, item: object, /) -> None:
        """Append ``item`` (the router's thread) and wake the I/O thread if it was idle."""
        if type(item) is Record:
            self.events_in += len(item.events)
            self.drained.clear()
        super().put(item)

    def _schedule(self) -> None:
        self._wake()

    def claimed(self) -> bool:
        """Return whether a turn is due (mail arrived since the last ``finish_turn``)."""
        return self._sched.locked()


class StreamIO(FlowIO):
    """The stream half of the bridge (see the module docstring)."""

    mailbox: WakeMailbox

    # -- out ----------------------------------------------------------------------------

    def _drain_mailbox(self) -> None:
        mailbox = self.mailbox
        if not mailbox.claimed():
            return
        journal = self._local.journal
        while True:
            self._update_hold()  # the backlog counts: hold publishers before encoding it
            items = mailbox.take(1024)
            if not mailbox.has_mail():
                mailbox.drained.set()  # counted in the backlog: paced publishers may go on
            if journal is None or (not self._unwritten and not self._own(items)):
                self._send_items(items)
            else:
                self._unwritten.extend(items)
            if not mailbox.has_mail():
                break
        mailbox.finish_turn()
        self._ask_written()

    def _drained(self) -> threading.Event | None:
        return self.mailbox.drained

    def _backlog(self) -> int:
        """Return the events routed to the bridge that did not reach the send queue yet."""
        return self.mailbox.events_in - self._events_passed

    def _own(self, items: list[object]) -> bool:
        """Return whether ``items`` hold an event of this node (events of others are never sent)."""
        name = self.name
        return any(
            type(item) is Record and any(e.origin == name for e in item.events) for item in items
        )

    def _ask_written(self) -> None:
        """Ask the journal to say once it wrote what is held (one question at a time).

        A persistent node sends peers only what its journal holds: an event
        sent before it is written could be forgotten by a crash, and the
        restarted node would give its sequence to another event.  Records of
        other origins' events only (received ones) are not held.
        """
        journal = self._local.journal
        if journal is None or not self._unwritten or self._asked:
            return
        self._asked = len(self._unwritten)
        journal.after_written(lambda: self._call_soon(self._written))

    def _written(self) -> None:
        count, self._asked = self._asked, 0
        items, self._unwritten = self._unwritten[:count], self._unwritten[count:]
        self._send_items(items)
        self._ask_written()

    def _send_items(self, items: list[object]) -> None:
        events: list[Event] = []
        for item in items:
            if type(item) is Record:
                events.extend(item.events)
            elif type(item) is Barrier:
                self._send_frames(events)
                events = []
                item.callback()
        self._send_frames(events)

    def _send_frames(self, events: list[Event]) -> None:
        if not events:
            return
        self._events_passed += len(events)
        out = self._out
        self._queue_runs(out.runs(events))  # sent as the peers' credit allows (``flow_io``)
        for event, size in out.take_oversized():
            self._stats.events_too_large += 1
            self._flow.skip(1)
            logger.warning(
                "bridge %s: event %s (%s, sequence %s) %s: not sent to any peer",
                self.name,
                event.id,
                event.event_type,
                event.sequence,
                out.why_unsent(size, self._max),
            )

    def _on_xpub(self) -> None:
        for _ in range(RECV_BURST):
            try:
                message = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not message or message[0] > 1:
                # Only b"\x01" or b"\x00" + topic: (un)subscribe; nothing else is.
                self._stats.frames_dropped += 1
                logger.debug("bridge %s: dropped a message on the XPUB", self.name)
                continue
            subscribe, topic = message[0] == 1, message[1:]
            sync = parse_sync_topic(topic)
            if sync is not None:
                if subscribe:
                    body = {
                        "node": self.name,
                        "epoch": self._epoch,
                        "base": self._base,
                        "numbering": self._numbering,
                        "head": self._out.head,
                        "sent": self._sent_head(),  # the rest is queued (docs/wire.md)
                        "chains": self._out.chains(self._max - HEARTBEAT_ROOM),  # as of "sent"
                        "for": sync[0],
                        "round": sync[1],
                    }
                    self._xpub.send_multipart(encode_control(topic, SYNC, body))
            elif topic.startswith(HEARTBEAT_TOPIC[:1]):
                continue
            elif subscribe:  # no credit yet (none ever for its own prefix, via a broker)
                if self._out.add_prefix(topic) and not self._own_through_broker(topic):
                    self._flow.expect(topic, time.monotonic())
            elif topic not in self._out.active:
                self._stats.frames_dropped += 1  # an unsubscribe of what no connection holds
                logger.debug("bridge %s: dropped an unsubscribe of %r", self.name, topic)
            else:
                # The last connection holding it left (ZeroMQ reports no other
                # unsubscribe without XPUB_VERBOSE): stop sending it at once.
                self._out.remove_prefix(topic)
        self._update_hold()  # a first subscriber: its pacing hold before the first event

    # -- in -----------------------------------------------------------------------------

    def _stream_socket(self) -> zmq.Socket[bytes]:
        """A SUB socket subscribed to what the node follows now (heartbeats, sync, prefixes)."""
        sock = cap_inbound(self._ctx.socket(zmq.SUB), self._max)
        sock.linger = 0
        sock.rcvhwm = self._node.receive_hwm
        for topic in (HEARTBEAT_TOPIC, sync_topic(self.name, self._round), *self._in.prefixes):
            sock.subscribe(topic)
        return sock

    def _open_stream(self, name: str, endpoint: str, key: bytes | None, *, asked: bool) -> bool:
        """Follow ``name``'s stream at ``endpoint`` on a SUB of its own, or queue it for room.

        ``asked``: ``name`` answered this node's own greeting (a configured
        peer) or holds the key ``peer_names`` binds to it.  Any other name
        that greets this node shares a budget of sockets, so greetings under
        made-up names cannot take the context's last socket
        (``docs/cluster.md``, "Node identity").  Return False if the stream
        waits in the queue.
        """
        if not asked and not self._room_for_unasked():
            self._queue_stream(name, endpoint, key, asked=asked)
            return False
        try:
            sock = self._stream_socket()
        except zmq.ZMQError as exc:  # e.g. the context's socket limit: retried each heartbeat
            logger.warning("bridge %s: cannot follow the stream of %s: %s", self.name, name, exc)
            self._queue_stream(name, endpoint, key, asked=asked)
            return False
        self._peers[name].stream = endpoint
        if not self._connect(sock, endpoint, key):
            sock.close(0)
            return True
        self._streams[name] = sock
        self._poller.register(sock, zmq.POLLIN)
        if not asked:
            self._unasked.add(name)
            self._unconfirmed[name] = (time.monotonic(), endpoint, key)
        return True

    def _room_for_unasked(self) -> bool:
        """Return whether one more unasked stream may open (a dead one's closed to make room)."""
        if len(self._unconfirmed) >= MAX_UNCONFIRMED_STREAMS:
            return False
        if len(self._unasked) < MAX_UNASKED_STREAMS:
            return True
        for name in self._unasked:
            peer = self._peers.get(name)
            if peer is None or not peer.alive:
                self._close_stream(name)
                return True
        return False

    def _queue_stream(self, name: str, endpoint: str, key: bytes | None, *, asked: bool) -> None:
        self._peers[name].stream = None  # a later greeting may also open it
        self._stream_queue.pop(name, None)
        self._stream_queue[name] = (endpoint, key, asked)
        if len(self._stream_queue) > MAX_QUEUED_STREAMS:
            dropped = next(iter(self._stream_queue))
            del self._stream_queue[dropped]
            self._requeued.discard(dropped)
            logger.warning(
                "bridge %s: too many streams wait to be followed: dropped %s's (until it greets "
                "this node again)",
                self.name,
                dropped,
            )

    def _follow_also(self, name: str, endpoint: str, key: bytes | None) -> None:
        """Connect ``name``'s stream socket to ``endpoint`` too (or open one there)."""
        sock = self._streams.get(name)
        if sock is None:
            self._connect_stream(name, endpoint, key)
        elif self._connect(sock, endpoint, key):
            self._peers[name].stream = endpoint

    def _close_stream(self, name: str) -> None:
        """Stop following ``name``'s stream (its next greeting opens it again)."""
        self._stream_queue.pop(name, None)
        self._unconfirmed.pop(name, None)
        self._unasked.discard(name)
        self._requeued.discard(name)
        sock = self._streams.pop(name, None)
        if sock is not None:
            self._poller.unregister(sock)
            sock.close(0)
        peer = self._peers.get(name)
        if peer is not None:
            peer.stream = None

    def _stream_heard(self, sender: str) -> None:
        """``sender`` spoke on its own stream: its socket leaves the unconfirmed budget."""
        if self._unconfirmed.pop(sender, None) is not None:
            self._requeued.discard(sender)
            self._open_queued()

    def _open_queued(self) -> None:
        """Open the streams waiting for room, oldest first, while there is room."""
        for name, (endpoint, key, asked) in list(self._stream_queue.items()):
            peer = self._peers.get(name)
            if peer is None or peer.stream is not None:
                del self._stream_queue[name]
                continue
            if not asked and not self._room_for_unasked():
                continue
            del self._stream_queue[name]
            if not self._open_stream(name, endpoint, key, asked=asked):
                return

    def _expire_streams(self, now: float) -> None:
        """While streams wait for room, give up those not heard on within ``heartbeat_timeout``.

        Only then: a peer that is slow to speak (paused, overloaded) keeps
        its stream while nobody needs the room, since a peer this node
        follows does not greet it again.  A stream given up waits at the
        back of the queue once, if the queue has room (it never pushes out a
        stream that waits); given up a second time, it is forgotten until
        its name greets the node again.  Then open queued streams.
        """
        if self._stream_queue:
            timeout = self._node.heartbeat_timeout
            expired = [
                (name, endpoint, key, name not in self._requeued)
                for name, (opened, endpoint, key) in self._unconfirmed.items()
                if now - opened > timeout
            ]
            for name, _, _, _ in expired:
                self._close_stream(name)
            self._open_queued()  # those already waiting take the room first
            for name, endpoint, key, first in expired:
                # Queued again behind them, only where the queue has room: it
                # never pushes out a stream that waits.
                again = first and len(self._stream_queue) < MAX_QUEUED_STREAMS
                if again:
                    self._requeued.add(name)
                    self._queue_stream(name, endpoint, key, asked=False)
                logger.info(
                    "bridge %s: %s was not heard on its stream: %s",
                    self.name,
                    name,
                    "closed, queued again" if again else "closed",
                )
        self._open_queued()

    def _forget_gone(self, now: float, after: float) -> None:
        """Forget peers silent for ``after`` seconds that left nothing to keep.

        Short-lived clients (``pub``, ``query``, ``top``) greet a node and go: a
        peer is forgotten if this node follows no stream of it (nor waits to),
        does not greet it, takes no credit from it and never received an event
        of it (no watermark to keep, no recovery parked).  Silent means not heard
        at all: a node without ``listen`` has no stream, but its credit and
        requests say it lives.  It is a new peer if it greets again.
        """
        linked = {link.name for link in self._links}
        receivers = self._flow.receivers
        origins = self._in.origins
        for name, peer in list(self._peers.items()):
            if peer.alive or now - max(peer.last_seen, peer.last_heard) <= after:
                continue
            if peer.stream is not None or peer.candidate_stream is not None or name in linked:
                continue
            if name in receivers or name in self._stream_queue:
                continue
            st = origins.get(name)
            if st is not None and not st.untouched():
                continue
            del self._peers[name]
            origins.pop(name, None)
            self._requeued.discard(name)
            self._forget_flow(name)
            logger.info("bridge %s: forgot %s (gone for %.0f s)", self.name, name, after)

    def _subscribe_all(self, topic: bytes, *, subscribe: bool = True) -> None:
        for sock in (self._sub, *self._streams.values()):
            if subscribe:
                sock.subscribe(topic)
            else:
                sock.unsubscribe(topic)

    def _forged(self, sender: str, origin: str) -> bool:
        """Count and log a frame under ``origin`` on the stream of ``sender``; return True."""
        self._stats.frames_dropped += 1
        logger.warning(
            "bridge %s: dropped a frame under %r from the stream of %r (a peer's stream "
            "carries its own events only)",
            self.name,
            origin,
            sender,
        )
        return True

    def _on_sub(self, sock: zmq.Socket[bytes], sender: str | None = None) -> None:
        """Read a burst from ``sock``: the shared SUB, or the stream of the peer ``sender``."""
        now = time.monotonic()
        delivered: list[Event] = []
        arrived = 0  # events received in this burst (they count toward the next credit)
        for _ in range(RECV_BURST):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            size = sum(len(p) for p in parts)
            if size > self._max:
                self._stats.frames_too_large += 1
                self._stats.frames_dropped += 1
                logger.warning(
                    "bridge %s: dropped a frame of %d bytes, over max_frame_bytes=%d",
                    self.name,
                    size,
                    self._max,
                )
                continue
            try:
                frame = decode_stream(parts, self._max)
            except FrameError as exc:
                self._stats.frames_dropped += 1
                logger.warning("bridge %s: dropped a malformed frame: %s", self.name, exc)
                continue
            rejected = self._in.rejected
            if isinstance(frame, ControlFrame):
                try:
                    delivered.extend(self._on_control(frame, now, sender))
                except Exception:  # one frame's fault: count it, log it, read the next
                    self._handler_failed("a control frame")
                if self._in.rejected != rejected:  # a head out of range (docs/wire.md)
                    self._rejected(rejected, "a control frame", frame.body.get("node"))
                continue
            if sender is not None and frame.origin != sender:
                self._forged(sender, frame.origin)
                continue
            if frame.origin == self.name:
                continue
            if sender is not None and self._unconfirmed:
                self._stream_heard(sender)
            self._stats.frames_received += 1
            self._stats.events_received += len(frame.events)
            arrived += len(frame.events)
            self._seen(frame.origin, now)
            self._epoch_heard(frame.origin, frame.epoch)
            delivered.extend(
                self._in.on_data(
                    frame.origin,
                    epoch=frame.epoch,
                    first=frame.first,
                    last=frame.last,
                    chains=frame.chains,
                    events=frame.events,
                    now=now,
                )
            )
            if self._in.rejected != rejected:
                self._rejected(rejected, f"frame {frame.first}..{frame.last}", frame.origin)
        self._deliver(delivered)
        self._arrived(arrived)

    def _rejected(self, before: int, what: str, origin: object) -> None:
        """Count the sequences ``Inbound`` rejected since it counted ``before``."""
        self._stats.sequences_rejected += self._in.rejected - before
        logger.warning("bridge %s: rejected %s of %r: out of range", self.name, what, origin)

    def _on_control(self, frame: ControlFrame, now: float, sender: str | None) -> list[Event]:
        body = frame.body
        try:  # every field checked before any is used (``wire``): a bad one drops the frame
            origin = text_field(body, "node")
            epoch, base, head = (uint_field(body, f) for f in ("epoch", "base", "head"))
            # Absent from older peers: a restart is then told by its ``base`` alone.
            numbering = uint_field(body, "numbering") if "numbering" in body else None
            if frame.kind == SYNC:
                target, round_ = text_field(body, "for"), uint_field(body, "round")
                sent = min(head, uint_field(body, "sent", head))  # absent: all of it
            chains = chains_field(body, "chains")  # a sync reply's: absent from older peers
        except FrameError as exc:
            self._stats.frames_dropped += 1
            logger.debug("bridge %s: bad control frame: %s", self.name, exc)
            return []
        if sender is not None and origin != sender:
            self._forged(sender, origin)
            return []
        if origin == self.name:
            return []
        if sender is not None and self._unconfirmed:
            self._stream_heard(sender)
        if frame.kind == SYNC:
            if target != self.name or round_ != self._round:
                return []
            self._seen(origin, now)
            self._epoch_heard(origin, epoch)
            self._debug("sync reply (epoch, base, head, sent)", origin, epoch, base, head, sent)
            return self._in.on_sync(origin, epoch, base, head, now, sent, chains, numbering)
        self._seen(origin, now)
        self._epoch_heard(origin, epoch)
        return self._in.on_heartbeat(
            origin, epoch=epoch, base=base, head=head, chains=chains, now=now, numbering=numbering
        )

    def _seen(self, name: str, now: float) -> None:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = Peer(name)
        if self._persistent and name not in self._in.origins:  # also first heard by a request
            self._in.start_loading(name, now)
            self._workers.submit(self._load_watermark, name, self._journaled())
        peer.last_seen = now
        if not peer.alive:
            logger.info("bridge %s: node %s is alive", self.name, name)
            peer.alive = True
            self._grant(name)

    def _load_watermark(self, name: str, journaled: Future[dict[str, list[int]]]) -> None:
        """Hand the I/O thread ``name``'s saved watermark and the ids journaled past it (worker).

        Those ids (``checkpoints.py``), fetched again, are not delivered twice."""
        journal = self._local.journal
        saved = SavedMark(None, None, None)
        ids: list[int] = []
        try:
            if journal is not None:
                saved, ids = load_received(journal, name, journaled, 30.0)
        except (BusClosedError, CancelledError):
            return  # the bus closed meanwhile: nothing waits for the watermark now
        except Exception:
            logger.exception("bridge %s: cannot read the watermark of %s", self.name, name)

        def loaded() -> None:
            self._debug("saved mark", name, saved, len(ids))
            self._deliver(self._in.loaded(name, saved, time.monotonic(), ids))

        self._call_soon(loaded)

    def _set_patterns(self, patterns: list[str]) -> None:
        now = time.monotonic()
        added, removed = self._in.set_patterns(patterns, now)
        if added or removed:
            # Origins learn the new prefixes (``flow_io``) before the stream
            # subscriptions reach them, where the connections allow.
            self._grant_all()
        for prefix in added:
            self._subscribe_all(prefix)
        for prefix in removed:
            self._subscribe_all(prefix, subscribe=False)
        if added or removed:
            # A new round: every publisher answers once it applied the prefixes above.
            self._subscribe_all(sync_topic(self.name, self._round), subscribe=False)
            self._round += 1
            self._subscribe_all(sync_topic(self.name, self._round))
        self._deliver([])

    def _heartbeat(self, now: float) -> None:
        body = {
            "node": self.name,
            "epoch": self._epoch,
            "base": self._base,
            "numbering": self._numbering,
            "head": self._sent_head(),  # queued events are announced once sent
            "chains": self._out.chains(self._max - HEARTBEAT_ROOM),  # within a frame
        }
        self._xpub.send_multipart(encode_control(HEARTBEAT_TOPIC, HEARTBEAT, body))
        timeout = self._node.heartbeat_timeout
        for peer in self._peers.values():
            heard = peer.last_seen if peer.stream else max(peer.last_seen, peer.last_heard)
            if peer.alive and now - heard > timeout:
                peer.alive = False
                logger.warning("bridge %s: node %s is not responding", self.name, peer.name)
                if peer.candidate_stream is not None:
                    # Beside the known stream, not instead: this node may have stalled.
                    (endpoint, key), peer.candidate_stream = peer.candidate_stream, None
                    self._follow_also(peer.name, endpoint, key)
        self._expire_streams(now)
        self._forget_gone(now, FORGET_AFTER * timeout)
        self._deliver(self._in.expire_syncs(now, timeout, self._not_gone))
        self._credit_tick(now)
