"""Requests across real OS processes: a responder on another node, over a mesh and a broker.

The child (``tests/_reply_child.py``) runs node ``b`` with a responder; this
process runs node ``a`` and asks.  The parent synchronises on the child's
output lines and on ``wait_for_peers`` only.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import AsyncEventBus, EventBus, NodeConfig, RemoteHandlerError, RequestTimeoutError
from actors._cluster.broker import Broker

pytestmark = pytest.mark.slow

CHILD = str(Path(__file__).with_name("_reply_child.py"))
WAIT = 60.0


class Responder:
    """A child process running one node that answers ``pattern``."""

    def __init__(self, **config: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.rstrip("\n"))
        self.lines.put("<eof>")

    def expect(self, prefix: str) -> str:
        line = self.lines.get(timeout=WAIT)
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line

    def ask(self, command: str, answer: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(answer)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask("close", "closed")
            self.proc.wait(WAIT)


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


def test_request_answered_by_another_process_over_a_mesh(children: list[Responder]) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*")) as bus:
        child = Responder(
            name="b",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
        )
        children.append(child)
        assert bus.wait_for_peers(["b"], WAIT)  # b is linked
        child.ask("sync a", "synced")  # we know b's responder: requests reach it
        _ask_and_check(bus)
        child.close()


def test_request_answered_through_a_broker(children: list[Responder]) -> None:
    with (
        Broker("tcp://127.0.0.1:*") as broker,
        EventBus(node=NodeConfig(name="a", peers=(broker.endpoint,))) as bus,
    ):
        child = Responder(name="b", peers=[broker.endpoint], pattern="svc.*")
        children.append(child)
        assert bus.wait_for_peers(["b"], WAIT)
        child.ask("sync a", "synced")
        _ask_and_check(bus)
        child.close()


def test_request_to_a_dead_responder_node_times_out_cleanly(children: list[Responder]) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*")) as bus:
        child = Responder(
            name="b",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
        )
        children.append(child)
        assert bus.wait_for_peers(["b"], WAIT)
        child.ask("sync a", "synced")
        assert bus.request("svc.echo", 1, timeout=WAIT).data == {"node": "b", "echo": 1}
        child.kill()
        with pytest.raises(RequestTimeoutError):
            bus.request("svc.echo", 2, timeout=1.0)
        assert bus.pending_requests() == 0
