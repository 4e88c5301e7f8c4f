"""CURVE through a broker: known keys meet, an unknown key gets nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import Broker, EventBus, NodeConfig, generate_keypair
from tests._support import WAIT, Collector


@pytest.fixture
def closing() -> Iterator[list[EventBus]]:
    buses: list[EventBus] = []
    yield buses
    for bus in reversed(buses):
        bus.close(timeout=WAIT)


def test_broker_refuses_unknown_keys(closing: list[EventBus]) -> None:
    broker_pub, broker_sec = generate_keypair()
    keys = {name: generate_keypair() for name in ("a", "b", "x")}
    with Broker(
        "tcp://127.0.0.1:*",
        curve_public_key=broker_pub,
        curve_secret_key=broker_sec,
        authorized_keys=[keys["a"][0], keys["b"][0]],
    ) as broker:

        def node(name: str) -> EventBus:
            public, secret = keys[name]
            bus = EventBus(
                node=NodeConfig(
                    name=name,
                    listen="tcp://127.0.0.1:*",
                    peers=(broker.endpoint,),
                    curve_public_key=public,
                    curve_secret_key=secret,
                    authorized_keys=(broker_pub,),
                    peer_public_keys={broker.endpoint: broker_pub},
                )
            )
            closing.append(bus)
            return bus

        a, b, x = node("a"), node("b"), node("x")
        at_b, at_x = Collector(1), Collector(1)
        b.subscribe("secret.*", at_b)
        x.subscribe("**", at_x)
        assert b.wait_for_peers(["a"], WAIT)
        a.publish("secret.plan", 42).get(timeout=WAIT)
        assert at_b.done.wait(WAIT)
        assert at_b.data == [42]
        # x never gets the broker's WELCOME (its handshake is refused), and
        # so never joins the streams.
        assert x.linked_nodes(timeout=2.0) == []
        assert broker.refused >= 1
        stats = x.metrics().bridge
        assert stats is not None
        assert stats.events_received == 0
        assert "a" not in stats.peers_alive
        assert at_x.events == []
