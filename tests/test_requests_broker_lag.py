"""A request sent again to a restarted node while the broker still routes to its old connection.

``docs/cluster.md``: hearing a new incarnation of the asked node sends it the
requests still waiting for it.  Through a broker, this node hears the new
incarnation on the broker's stream, a separate connection from the one the
restarted node greets the broker on: the request sent again can reach the
broker before that greeting, and the broker answers that the node's
connection closed.  The request is then asked again a heartbeat interval
later, and answered by the restarted node.

The broker runs in this process, so the test holds its learning of the new
connection until it has answered that error; ``b`` is a persistent child.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import Event, EventBus, NodeConfig
from actors._cluster.broker import Broker
from actors._cluster.wire import ERROR, PUBLISH, Request
from tests._support import finished, in_background, pause, reaped, wait_for
from tests.test_cluster import start
from tests.test_cluster_fault_edges import WAIT, node_of
from tests.test_request_resend_faults import SLOW_DEATH, journal

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def test_a_request_sent_again_before_the_broker_heard_the_restart_is_answered(
    cluster: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = threading.Event()  # while set, the broker keeps b's old connection as its route
    latest: dict[str, bytes] = {}
    said_closed = threading.Event()
    real_learn = Broker._learn  # noqa: SLF001
    real_reply = Broker._reply  # noqa: SLF001
    real_relay = Broker._relay  # noqa: SLF001
    relayed = threading.Event()  # the broker passed job.two to b's (old) connection

    def relay(broker: Broker, identity: bytes, target: bytes, message: Request, parts: Any) -> None:
        real_relay(broker, identity, target, message, parts)
        if message.kind == PUBLISH and message.to == "b":
            relayed.set()

    def learn(broker: Broker, sender: str, identity: bytes, key: bytes | None) -> bool:
        if sender == "b" and held.is_set():
            latest["b"] = identity  # heard, not yet taken as b's route
            return True
        return real_learn(broker, sender, identity, key)

    def reply(broker: Broker, identity: bytes, answer: Request) -> None:
        if answer.kind == ERROR and "connection to the broker closed" in str(answer.body):
            said_closed.set()
        real_reply(broker, identity, answer)

    monkeypatch.setattr(Broker, "_learn", learn)
    monkeypatch.setattr(Broker, "_reply", reply)
    monkeypatch.setattr(Broker, "_relay", relay)
    b_config: dict[str, Any] = {"name": "b", "path": str(tmp_path / "b"), "node": SLOW_DEATH}
    with Broker(f"ipc://{tmp_path}/hub.sock") as broker:
        b_config["peers"] = [broker.endpoint]
        b = start(cluster, **b_config)
        with EventBus(node=NodeConfig(name="a", peers=(broker.endpoint,), **SLOW_DEATH)) as bus:
            assert bus.wait_for_peers(["b"], WAIT)
            assert bus.publish_remote("b", "job.one", 1, timeout=WAIT).origin == "b"
            pause(b.proc)  # takes the next request and never answers it
            relayed.clear()
            event = Event(event_type="job.two", data=2)
            published = in_background(lambda: bus.publish_remote("b", event, timeout=3 * WAIT))
            assert node_of(bus).wait(lambda s: s.requests_waiting == 1, WAIT)
            # Relayed before b dies: one the broker relays only after (under load)
            # is answered "closed" and ends not connected, the documented outcome
            # of another case (test_request_resend_faults).
            assert relayed.wait(WAIT)
            held.set()
            b.kill()
            b = start(cluster, **b_config)  # a hears it on the stream; the broker is held
            assert said_closed.wait(WAIT), "the broker never said b's connection closed"
            # a may hear the restart on the stream before the broker hears its
            # greeting (two connections): the greeting is the one held here.
            assert wait_for(lambda: "b" in latest, WAIT)
            with broker._lock:  # noqa: SLF001 - the broker hears the greeting now
                held.clear()
                route = broker._names["b"]  # noqa: SLF001
                broker._names["b"] = type(route)(latest["b"], route.key, route.heard)  # noqa: SLF001
            second = finished(*published, timeout=3 * WAIT + WAIT)
            assert isinstance(second, Event), second
            assert second.id == event.id
            assert second.origin == "b"
            assert node_of(bus).statistics().requests_resent >= 2
            assert journal(b, "job.two") == [2]
