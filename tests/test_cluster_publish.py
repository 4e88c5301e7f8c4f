"""PUBLISH and publish across nodes: an event id published once, and always as this node's own.

Real nodes joined over 127.0.0.1 tcp in one process; every wait is on a
condition, nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors import Event, EventBus, EventConfig, NoAnswerError, NodeConfig
from actors._cluster.bridge_io import PublishLedger
from actors._cluster.ports import LocalNode
from tests._support import WAIT, Collector, Gate


@pytest.fixture
def pair() -> Iterator[tuple[EventBus, EventBus]]:
    hub = EventBus(
        EventConfig(block_timeout=2 * WAIT),
        node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"),
    )
    client = EventBus(node=NodeConfig(name="client", peers=(hub.endpoints["request"] or "",)))
    yield hub, client
    client.close(timeout=WAIT)
    hub.close(timeout=WAIT)


def test_a_retry_that_overtakes_the_first_request_publishes_once(
    pair: tuple[EventBus, EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, client = pair
    assert client.node is not None
    entered = threading.Semaphore(0)
    real = PublishLedger.publish

    def counted(self: PublishLedger, local: LocalNode, events: list[Event], *a: Any) -> Any:
        entered.release()
        return real(self, local, events, *a)

    monkeypatch.setattr(PublishLedger, "publish", counted)
    gate = Gate()
    hub.subscribe("t.*", gate, capacity=1, overflow="block")
    assert client.node.linked_nodes(WAIT) == ["hub"]
    hub.publish("t.fill", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    hub.publish("t.fill", 1).get(timeout=WAIT)  # queued: the subscription is full
    event = Event(event_type="t.once", data="once")
    with pytest.raises(NoAnswerError):  # the hub's publish waits for room
        client.node.publish_remote("hub", event, timeout=0.5)
    assert entered.acquire(timeout=WAIT)
    answers: list[Event] = []
    retry = threading.Thread(
        target=lambda: answers.append(client.node.publish_remote("hub", event, timeout=WAIT))  # type: ignore[union-attr]
    )
    retry.start()
    assert entered.acquire(timeout=WAIT)  # the retry reached the hub while the first waits
    gate.release.set()
    retry.join(WAIT)
    assert [a.id for a in answers] == [event.id]
    hub.flush(WAIT)
    assert [e.data for e in gate.events].count("once") == 1


def test_an_event_published_remotely_becomes_the_nodes_own_and_reaches_its_peers(
    pair: tuple[EventBus, EventBus],
) -> None:
    _hub, client = pair
    assert client.node is not None
    got = Collector(expected=1)
    client.subscribe("t.*", got)
    assert client.node.wait_for_peers(["hub"], WAIT)
    foreign = Event(event_type="t.relayed", data=1, origin="zz", sequence=7)
    published = client.node.publish_remote("hub", foreign, timeout=WAIT)
    assert published.origin == "hub"
    assert published.id == foreign.id
    assert got.done.wait(WAIT)
    assert got.events[0].id == foreign.id
    assert got.events[0].origin == "hub"


def test_an_event_with_an_origin_published_locally_becomes_the_nodes_own(
    pair: tuple[EventBus, EventBus],
) -> None:
    hub, client = pair
    assert client.node is not None
    got = Collector(expected=1)
    client.subscribe("t.*", got)
    assert client.node.wait_for_peers(["hub"], WAIT)
    foreign = Event(event_type="t.again", data=2, origin="zz", sequence=7)
    published = hub.publish(foreign).get(timeout=WAIT)
    assert (published.origin, published.id) == ("hub", foreign.id)
    assert got.done.wait(WAIT)
    assert (got.events[0].id, got.events[0].origin) == (foreign.id, "hub")
