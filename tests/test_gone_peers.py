"""Peers that go for good: what they sent is delivered, and they are forgotten.

A node that publishes one event and closes before its next heartbeat left
its receiver with the event held (waiting for a head or a sync reply that
would never come) and the peer kept for ever: the event was never delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from actors import EventBus
from tests._cluster_support import Until, node, request_endpoint
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
