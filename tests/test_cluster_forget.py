"""Gone peers are forgotten (``StreamIO._forget_gone``): what must be kept, what must not pile up.

Real buses on ipc:// endpoints, small heartbeat timeouts so that forgetting
(12 x ``heartbeat_timeout``) comes quickly; waits are on conditions
(``Node.wait``, ``Collector``, the I/O thread's own state), never on sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors import EventBus
from actors._cluster.broker import Broker
from actors._cluster.stream_io import FORGET_AFTER
from tests._cluster_support import WAIT, Collector, ipc, node, request_endpoint
from tests.test_cluster_streams import on_io_thread

BEATS = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.2}


def known(bus: EventBus) -> set[str]:
    return set(on_io_thread(bus, lambda bridge: set(bridge._peers)))  # noqa: SLF001


def per_name(bus: EventBus) -> set[str]:
    """Return every name the bridge keeps bookkeeping under (peers, credit, streams, ...)."""

    def names(bridge: Any) -> set[str]:
        out: set[str] = set(bridge._peers) | set(bridge._in.origins)  # noqa: SLF001
        for table in ("_granted", "_epochs", "_acked", "_saved", "_requeued", "_unconfirmed"):
            out |= set(getattr(bridge, table))
        return out

    return set(on_io_thread(bus, names))


def past_forgetting(bus: EventBus) -> None:
    """Wait until the bridge's clock is past the point where a peer silent from now is forgotten."""
    start = on_io_thread(bus, lambda _: time.monotonic())
    timeout = BEATS["heartbeat_timeout"]
    # Forgetting is checked each heartbeat tick: one timeout more is four ticks.
    assert until(bus, lambda: time.monotonic() - start > (FORGET_AFTER + 1) * timeout)
    on_io_thread(bus, lambda _: None)  # a turn of the I/O thread after that moment


def receivers(bus: EventBus) -> set[str]:
    return set(on_io_thread(bus, lambda bridge: set(bridge._flow.receivers)))  # noqa: SLF001


def until(bus: EventBus, check: Callable[[], bool]) -> bool:
    return node(bus).wait(lambda _: check(), WAIT)


def test_a_forgotten_client_leaves_no_bookkeeping(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    hub = nodes("hub", listen=ipc(tmp_path, "hub"), **BEATS)
    for n in range(3):
        client = nodes(f"client{n}", peers=(request_endpoint(hub),), **BEATS)
        assert node(client).wait_for_peers(["hub"], WAIT)
        assert until(hub, lambda n=n: f"client{n}" in known(hub))
        client.close(timeout=WAIT)
    assert until(hub, lambda: not known(hub))
    assert per_name(hub) == set()


def test_a_live_client_that_subscribes_nothing_stays_reachable(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    """A node without ``listen`` is never heard on a stream, but it speaks: its credit."""
    hub = nodes("hub", listen=ipc(tmp_path, "hub"), **BEATS)
    worker = nodes("worker", peers=(request_endpoint(hub),), **BEATS)
    assert node(worker).wait_for_peers(["hub"], WAIT)
    past_forgetting(hub)
    assert "worker" in known(hub)
    event = hub.publish_remote("worker", "job.run", "from hub", timeout=WAIT)
    assert event.origin == "worker"


def test_a_paused_subscriber_forgotten_meanwhile_loses_nothing(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    """A node without ``listen`` paused past forgetting, then resumed, gets every event once."""
    hub = nodes("hub", listen=ipc(tmp_path, "hub"), **BEATS)
    sub = nodes("sub", peers=(request_endpoint(hub),), **BEATS)
    got = Collector(300)
    sub.subscribe("job.*", got)
    sub.flush()
    assert node(sub).wait_for_peers(["hub"], WAIT)
    assert until(hub, lambda: "sub" in receivers(hub))
    for n in range(100):
        hub.publish("job.run", n)
    hub.flush()
    paused, release = threading.Event(), threading.Event()

    def block() -> None:
        paused.set()
        release.wait(WAIT)

    node(sub).call_soon(block)  # its I/O thread stops, as a paused process's would
    assert paused.wait(WAIT)
    try:
        for n in range(100, 200):
            hub.publish("job.run", n)
        hub.flush()
        assert until(hub, lambda: "sub" not in known(hub))
    finally:
        release.set()
    for n in range(200, 300):
        hub.publish("job.run", n)
    assert [e.data for e in got.wait()] == list(range(300))
    assert until(hub, lambda: "sub" in receivers(hub))
    assert hub.publish_remote("sub", "job.run", "from hub", timeout=WAIT).origin == "sub"
    assert node(sub).statistics().duplicates == 0


def test_through_a_broker_a_paused_publisher_is_kept(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    """Streams on the shared SUB (``peer.stream`` is None): what was received keeps its origin."""
    # A node joined through a broker is heard on the shared SUB (heartbeats,
    # sync replies): its origin state has an epoch, so it is never forgotten.
    with Broker(ipc(tmp_path, "broker")) as broker:
        hub = nodes("hub", persistent=True, peers=(broker.endpoint,), **BEATS)
        got = Collector(20)
        hub.subscribe("job.*", got)
        hub.flush()
        pub = nodes("pub", peers=(broker.endpoint,), **BEATS)
        assert node(hub).wait_for_peers(["pub"], WAIT)
        for n in range(10):
            pub.publish("job.run", n)
        pub.flush()
        assert until(hub, lambda: len(got.events) >= 10)
        paused, release = threading.Event(), threading.Event()

        def block() -> None:
            paused.set()
            release.wait(WAIT)

        node(pub).call_soon(block)
        assert paused.wait(WAIT)
        try:
            past_forgetting(hub)
            assert "pub" in known(hub)  # its watermark is kept for its return
        finally:
            release.set()
        for n in range(10, 20):
            pub.publish("job.run", n)
        assert [e.data for e in got.wait()] == list(range(20))
        assert node(hub).statistics().duplicates == 0
