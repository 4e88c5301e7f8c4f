"""Peers that go for good: what they sent is delivered, and they are forgotten.

A node that publishes one event and closes before its next heartbeat left
its receiver with the event held (waiting for a head or a sync reply that
would never come) and the peer kept for ever: the event was never delivered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from actors import EventBus
from actors._cluster.wire import parse_sync_topic
from tests._cluster_support import WAIT, Until, node, request_endpoint
from tests.test_cluster_identity import FakePeer, event, fakes, ipc

__all__ = ["fakes"]  # the fixture, used by name

HB = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.3}


def test_a_peer_gone_before_its_first_heartbeat_has_its_events_delivered(
    tmp_path: Path, nodes: Callable[..., EventBus], fakes: Callable[..., FakePeer]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"), **HB)
    got = Until("last")
    a.subscribe("job.*", got)
    a.flush()
    fake = fakes("worker", ipc(tmp_path, "worker"), request_endpoint(a))
    fake.hello()
    assert fake.xpub.poll(10_000), "a never subscribed to the worker's stream"
    # Its events, then nothing: no heartbeat, no answer to a's sync request.
    fake.data(b"job.", "worker", 1, [event("first", 1, "worker"), event("last", 2, "worker")])
    fake.close()
    assert [e.data for e in got.wait()] == ["first", "last"]
    assert node(a).statistics().events_received == 2


def subscribed(fake: FakePeer) -> bytes:
    """Wait until the node subscribed to ``job.`` on the fake's stream; return its sync topic."""
    sync_topic, job = None, False
    while sync_topic is None or not job:
        assert fake.xpub.poll(int(WAIT * 1000)), "the node never subscribed"
        message = fake.xpub.recv()
        if message[:1] == b"\x01" and parse_sync_topic(message[1:]) is not None:
            sync_topic = message[1:]
        job = job or message == b"\x01job."
    return sync_topic


def test_a_peer_stalled_before_its_first_heartbeat_is_not_taken_for_gone(
    tmp_path: Path, nodes: Callable[..., EventBus], fakes: Callable[..., FakePeer]
) -> None:
    # Silent a little past heartbeat_timeout (declared dead), then back with
    # its sync reply: released early, its frames would have set a watermark
    # and the late sync reply counted a gap and fetched what it then sent.
    a = nodes("a", listen=ipc(tmp_path, "a"), **HB)
    got = Until(4)
    a.subscribe("job.*", got)
    a.flush()
    fake = fakes("worker", ipc(tmp_path, "worker"), request_endpoint(a))
    fake.hello()
    sync_topic = subscribed(fake)
    fake.data(b"job.", "worker", 1, [event(1, 1, "worker"), event(2, 2, "worker")])
    stall = 3 * HB["heartbeat_timeout"]  # the fault: dead to a, not gone for good
    threading.Event().wait(stall)
    fake.sync(sync_topic, "worker", epoch=1, head=4)
    fake.data(b"job.", "worker", 1, [event(3, 3, "worker"), event(4, 4, "worker")])
    fake.heartbeat("worker", epoch=1, head=4, chains=[])
    assert [e.data for e in got.wait()] == [1, 2, 3, 4]
    stats = node(a).statistics()
    assert (stats.gaps, stats.recovery_retries) == (0, 0)
