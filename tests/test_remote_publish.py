"""PUBLISH requests: a node publishes on another node's bus, acknowledged, once per id."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import (
    Event,
    EventBus,
    EventBusError,
    EventConfig,
    EventQuery,
    InvalidEventError,
    NodeConfig,
    NotConnectedError,
    OverflowStrategy,
    PeerRefusedError,
    PersistentEventBus,
)
from tests._support import WAIT, Collector, Gate


@pytest.fixture
def pair(tmp_path: object) -> Iterator[tuple[EventBus, EventBus]]:
    hub = PersistentEventBus(
        EventConfig(persistence_path=f"{tmp_path}/hub"),
        node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"),
    )
    client = EventBus(node=NodeConfig(name="client", peers=(hub.endpoints["request"] or "",)))
    yield hub, client
    client.close(timeout=WAIT)
    hub.close(timeout=WAIT)


def test_the_node_publishes_with_its_origin_and_sequence(pair: tuple[EventBus, EventBus]) -> None:
    hub, client = pair
    seen = Collector(expected=1)
    hub.subscribe("user.*", seen)
    assert client.linked_nodes(WAIT) == ["hub"]
    published = client.publish_remote("hub", "user.login", {"user_id": "1"}, source="cli")
    assert published.origin == "hub"
    assert published.sequence is not None
    assert seen.done.wait(WAIT)
    assert seen.events[0].id == published.id
    # Acknowledged means journaled on a persistent node.
    stored = hub.query(EventQuery(event_types=["user.login"]))
    assert [e.id for e in stored] == [published.id]


def test_a_repeated_request_publishes_once(pair: tuple[EventBus, EventBus]) -> None:
    hub, client = pair
    client.linked_nodes(WAIT)
    event = Event(event_type="job.start", data=1)
    first = client.publish_remote("hub", event)
    again = client.publish_remote("hub", event)
    assert first == again
    hub.flush(WAIT)
    assert len(hub.query(EventQuery(event_types=["job.*"]))) == 1


def test_a_refusal_carries_the_nodes_reason(pair: tuple[EventBus, EventBus]) -> None:
    hub, client = pair
    gate = Gate()
    hub.subscribe("job.*", gate, capacity=1, overflow=OverflowStrategy.REJECT)
    hub.publish("job.run", 1)
    assert gate.entered.wait(WAIT)
    hub.publish("job.run", 2).get(timeout=WAIT)  # fills the one-event mailbox
    client.linked_nodes(WAIT)
    try:
        with pytest.raises(PeerRefusedError, match="full"):
            client.publish_remote("hub", "job.run", 3)
    finally:
        gate.release.set()
    with pytest.raises(NotConnectedError, match="nobody"):
        client.publish_remote("nobody", "user.login")
    with pytest.raises(InvalidEventError, match="reserved"):  # checked before sending
        client.publish_remote("hub", Event(event_type="$bus.fake"))


def test_a_bus_that_is_not_a_node_cannot_publish_remotely() -> None:
    with EventBus() as bus, pytest.raises(EventBusError):
        bus.publish_remote("hub", "user.login")
    with EventBus() as plain:
        assert plain.endpoints == {}
