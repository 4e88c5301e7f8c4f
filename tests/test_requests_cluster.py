"""Requests across real OS processes: a responder on another node, over a mesh and a broker.

The child (``tests/_reply_child.py``) runs node ``b`` with a responder; this
process runs node ``a`` and asks.  The parent synchronises on the child's
output lines and on ``wait_for_peers`` only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import AsyncEventBus, EventBus, NodeConfig, RemoteHandlerError, RequestTimeoutError
from actors._cluster.broker import Broker
from tests._support import LineChild

pytestmark = pytest.mark.slow

CHILD = str(Path(__file__).with_name("_reply_child.py"))
WAIT = 60.0


class Responder(LineChild):
    """A child process running one node that answers ``pattern``."""

    def __init__(self, **config: Any) -> None:
        super().__init__(CHILD, config, wait=WAIT, name=config.get("name", "b"))
        self.expect("ready")


@pytest.fixture
def children() -> Iterator[list[Responder]]:
    started: list[Responder] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.kill()


def _ask_and_check(bus: EventBus) -> None:
    reply = bus.request("svc.echo", {"n": 1}, source="a", timeout=WAIT)
    assert reply.event_type == "svc.echo.reply"
    assert reply.data == {"node": "b", "echo": {"n": 1}}
    assert reply.origin == "b"
    assert reply.source == "b"
    assert reply.target == "a"
    # Many in a row: each reply reaches this node through the one reply route.
    for i in range(50):
        assert bus.request("svc.echo", i, timeout=WAIT).data == {"node": "b", "echo": i}
    with pytest.raises(RemoteHandlerError) as caught:
        bus.request("svc.echo", "boom", timeout=WAIT)
    assert caught.value.remote_type == "LookupError"

    async def ask_async() -> list[Any]:
        abus = AsyncEventBus(bus=bus)
        replies = await asyncio.gather(
            *(abus.request("svc.echo", i, timeout=WAIT) for i in range(20))
        )
        return [r.data["echo"] for r in replies]

    assert asyncio.run(ask_async()) == list(range(20))
    assert bus.pending_requests() == 0


def _linked_responder(bus: EventBus, children: list[Responder], **config: Any) -> Responder:
    """Start node ``b`` answering ``svc.*``; return once requests from ``bus`` reach it."""
    child = Responder(name="b", pattern="svc.*", **config)
    children.append(child)
    assert bus.wait_for_peers(["b"], WAIT)  # b is linked
    child.ask("sync a", "synced")  # we know b's responder: requests reach it
    return child


def test_request_answered_by_another_process_over_a_mesh(children: list[Responder]) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*")) as bus:
        child = _linked_responder(
            bus, children, listen="tcp://127.0.0.1:*", peers=[bus.endpoints["request"]]
        )
        _ask_and_check(bus)
        child.close()


def test_request_answered_through_a_broker(children: list[Responder]) -> None:
    with (
        Broker("tcp://127.0.0.1:*") as broker,
        EventBus(node=NodeConfig(name="a", peers=(broker.endpoint,))) as bus,
    ):
        child = _linked_responder(bus, children, peers=[broker.endpoint])
        _ask_and_check(bus)
        child.close()


def test_request_to_a_dead_responder_node_times_out_cleanly(children: list[Responder]) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*")) as bus:
        child = _linked_responder(
            bus, children, listen="tcp://127.0.0.1:*", peers=[bus.endpoints["request"]]
        )
        assert bus.request("svc.echo", 1, timeout=WAIT).data == {"node": "b", "echo": 1}
        child.kill()
        with pytest.raises(RequestTimeoutError):
            bus.request("svc.echo", 2, timeout=1.0)
        assert bus.pending_requests() == 0
