"""Faults against request/reply across real OS processes (``docs/requests.md``).

The responders are ``tests/_requests_fault_child.py`` processes (one node
each); this process runs node ``a`` and asks.  Faults: SIGSTOP past the
request's timeout (and past ``heartbeat_timeout``), SIGKILL mid-request and a
restart under the same name, a paused responder among several for
``request_all``, a forged reply from a third node, a thousand timeouts, and
requests too large for the wire.  The parent synchronises on the children's
output lines, on futures and on ``wait_for`` only; every timeout is an upper
bound whose expiry fails the test.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    Event,
    EventBus,
    NodeConfig,
    RemoteHandlerError,
    RequestTimeoutError,
)
from actors._errors import EventTooLargeError
from tests._support import LineChild, pause, reaped, use_off_loop_threads, wait_for

pytestmark = pytest.mark.slow

CHILD = str(Path(__file__).with_name("_requests_fault_child.py"))
WAIT = 30.0  # upper bound for a child's answer (its start imports the library)
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}


class Node(LineChild):
    """A child node; ``held``, ``replied`` and ``forged`` lines are kept apart from answers."""

    def __init__(self, **config: Any) -> None:
        self.held: queue.Queue[tuple[str, str]] = queue.Queue()
        self.replied: set[str] = set()
        self.forged: set[str] = set()
        self._cond = threading.Condition()
        super().__init__(CHILD, config, wait=WAIT, name=config["name"])
        self.endpoint = self.expect("ready").split()[1]

    def on_line(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "held":
            request_id, tag = rest.split()
            self.held.put((request_id, tag))
        elif word in {"replied", "forged"}:
            with self._cond:
                (self.replied if word == "replied" else self.forged).add(rest)
                self._cond.notify_all()
        else:
            self.lines.put(line)

    def wait_held(self) -> tuple[str, str]:
        return self.held.get(timeout=WAIT)

    def wait_line(self, kind: str, request_id: str) -> None:
        seen = self.replied if kind == "replied" else self.forged
        with self._cond:
            assert self._cond.wait_for(lambda: request_id in seen, WAIT), (
                f"{self.name} never printed {kind} {request_id}"
            )

    def stop(self) -> None:
        pause(self.proc)

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def children() -> Iterator[list[Any]]:
    yield from reaped()


def start(children: list[Any], **config: Any) -> Node:
    node = Node(**config)
    children.append(node)
    return node


def ipc(tmp_path: Path, name: str) -> str:
    endpoint = f"ipc://{tmp_path}/{name}.sock"
    assert len(endpoint) < 100, f"ipc path too long for a unix socket: {endpoint}"
    return endpoint


class Call:
    """Run ``fn`` on a thread; ``result`` waits (bounded) for its value or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def result(self, bound: float) -> Any:
        assert self.done.wait(bound), f"the call did not return within {bound} s"
        if self.error is not None:
            raise self.error
        return self.value


def linked(bus: EventBus, *nodes: Node) -> None:
    """Return once requests from ``bus`` reach every node and their replies reach ``bus``."""
    assert bus.wait_for_peers([n.name for n in nodes], WAIT)
    for n in nodes:
        n.ask("sync a", "synced")


def three_responders(children: list[Any], tmp_path: Path, bus: EventBus) -> list[Node]:
    """Start responders b1, b2 and b3 dialling ``bus``'s node; return them once linked."""
    nodes = [
        start(
            children,
            name=name,
            listen=ipc(tmp_path, name),
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
        )
        for name in ("b1", "b2", "b3")
    ]
    linked(bus, *nodes)
    return nodes


def peers_alive(bus: EventBus) -> list[str]:
    assert bus.node is not None
    return list(bus.node.statistics().peers_alive)


def node_a(tmp_path: Path, **extra: Any) -> EventBus:
    return EventBus(node=NodeConfig(name="a", listen=ipc(tmp_path, "a"), **extra))


# -- 1. a responder paused past the request's timeout ------------------------------------------


def test_paused_responder_times_out_and_its_late_reply_reaches_no_later_request(
    children: list[Any], tmp_path: Path
) -> None:
    with node_a(tmp_path) as bus:
        b = start(
            children,
            name="b",
            listen=ipc(tmp_path, "b"),
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
        )
        linked(bus, b)
        assert bus.request("svc.echo", 0, timeout=WAIT).data == {"node": "b", "echo": 0}
        late: list[Event] = []
        bus.subscribe("svc.echo.reply", late.append)

        first = Call(lambda: bus.request("svc.echo", {"hold": "one"}, source="a", timeout=1.0))
        held_id, tag = b.wait_held()  # the request is in b's handler
        assert tag == "one"
        b.stop()
        with pytest.raises(RequestTimeoutError):
            first.result(15.0)
        assert bus.pending_requests() == 0

        # A later request of the same type is queued behind the held one at b:
        # after SIGCONT the late reply is published first, while this one waits.
        second = Call(lambda: bus.request("svc.echo", {"n": 2}, source="a", timeout=WAIT))
        assert wait_for(lambda: bus.pending_requests() == 1)
        b.send("release")  # read once b runs again
        b.cont()
        b.wait_line("replied", held_id)
        reply = second.result(WAIT)
        assert reply.data == {"node": "b", "echo": {"n": 2}}, reply
        assert str(reply.causation_id) != held_id
        # The late reply did arrive here as an ordinary event, and went to nobody.
        assert wait_for(lambda: any(str(e.causation_id) == held_id for e in late))
        assert bus.pending_requests() == 0
        assert bus.request("svc.echo", 3, timeout=WAIT).data == {"node": "b", "echo": 3}
        assert bus.pending_requests() == 0


def test_responder_paused_past_heartbeat_timeout_answers_again_after_sigcont(
    children: list[Any], tmp_path: Path
) -> None:
    with node_a(tmp_path, **FAST) as bus:
        b = start(
            children,
            name="b",
            listen=ipc(tmp_path, "b"),
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
            node=FAST,
        )
        linked(bus, b)
        first = Call(lambda: bus.request("svc.echo", {"hold": "one"}, timeout=1.0))
        held_id, _ = b.wait_held()
        b.stop()
        with pytest.raises(RequestTimeoutError):
            first.result(15.0)
        # Past heartbeat_timeout: a declares b dead.
        assert wait_for(lambda: "b" not in peers_alive(bus), 10.0)
        b.send("release")
        b.cont()
        b.wait_line("replied", held_id)
        assert wait_for(lambda: "b" in peers_alive(bus), 10.0)
        reply = bus.request("svc.echo", {"n": 5}, timeout=10.0)
        assert reply.data == {"node": "b", "echo": {"n": 5}}
        assert bus.pending_requests() == 0


# -- 2. a responder killed mid-request, restarted under the same name --------------------------


def test_responder_killed_mid_request_and_restarted_answers_new_requests(
    children: list[Any], tmp_path: Path
) -> None:
    with node_a(tmp_path, **FAST) as bus:
        config = {
            "name": "b",
            "listen": ipc(tmp_path, "b"),
            "peers": [bus.endpoints["request"]],
            "pattern": "svc.*",
            "node": FAST,
        }
        b = start(children, **config)
        linked(bus, b)
        assert bus.request("svc.echo", 1, timeout=WAIT).data == {"node": "b", "echo": 1}
        first = Call(lambda: bus.request("svc.echo", {"hold": "x"}, timeout=1.5))
        b.wait_held()
        b.kill()
        with pytest.raises(RequestTimeoutError):
            first.result(15.0)
        assert bus.pending_requests() == 0

        b2 = start(children, **config)  # at once: maybe before a declared the old b dead
        b2.ask("sync a", "synced")
        reply = bus.request("svc.echo", {"after": "restart"}, timeout=10.0)
        assert reply.data == {"node": "b", "echo": {"after": "restart"}}
        for i in range(20):
            assert bus.request("svc.echo", i, timeout=10.0).data == {"node": "b", "echo": i}
        assert bus.pending_requests() == 0


# -- 3. request_all with one of three responders paused ----------------------------------------


def test_request_all_returns_the_live_replies_when_one_responder_is_paused(
    children: list[Any], tmp_path: Path
) -> None:
    with node_a(tmp_path) as bus:
        nodes = three_responders(children, tmp_path, bus)
        everyone = bus.request_all("svc.echo", 0, timeout=WAIT, max_replies=3)
        assert sorted(str(r.origin) for r in everyone) == ["b1", "b2", "b3"]

        nodes[2].stop()
        for i in range(1, 4):
            call = Call(
                functools.partial(bus.request_all, "svc.echo", i, timeout=1.0, max_replies=3)
            )
            replies = call.result(15.0)
            assert sorted(str(r.origin) for r in replies) == ["b1", "b2"], replies
            assert all(r.data["echo"] == i for r in replies)
        call = Call(lambda: bus.request_all("svc.echo", "x", timeout=1.0))
        assert sorted(str(r.origin) for r in call.result(15.0)) == ["b1", "b2"]
        assert bus.pending_requests() == 0

        nodes[2].cont()
        # b3 answers again (after the backlog it owes, which goes to nobody).
        replies = bus.request_all("svc.echo", "back", timeout=WAIT, max_replies=3)
        assert sorted(str(r.origin) for r in replies) == ["b1", "b2", "b3"]
        assert bus.pending_requests() == 0


# -- 4. a forged reply from a third node -------------------------------------------------------


def test_a_forged_reply_from_another_node_is_returned_as_the_answer(
    children: list[Any], tmp_path: Path
) -> None:
    # docs/requests.md: the reply route admits any reply whose causation_id is
    # waiting, and "request returns the first reply to arrive"; docs/cluster.md:
    # without CURVE any peer can join and publish.  So a third node that sees
    # the request answers it first; only ``origin`` tells the forgery apart
    # (``source`` is whatever the forger wrote).
    with node_a(tmp_path) as bus:
        b = start(
            children,
            name="b",
            listen=ipc(tmp_path, "b"),
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
        )
        m = start(
            children,
            name="mallory",
            listen=ipc(tmp_path, "m"),
            peers=[bus.endpoints["request"]],
            forge="svc.echo",
        )
        linked(bus, b, m)
        call = Call(lambda: bus.request("svc.echo", {"hold": "f"}, source="a", timeout=WAIT))
        held_id, _ = b.wait_held()  # the real responder holds its answer
        m.wait_line("forged", held_id)
        reply = call.result(WAIT)
        assert reply.data == {"forged": "mallory"}
        assert reply.source == "b"  # forged freely
        assert reply.origin == "mallory"  # the one field the forger cannot set
        assert str(reply.causation_id) == held_id
        b.ask("release", "released")
        b.wait_line("replied", held_id)
        assert bus.pending_requests() == 0


# -- 5. many timeouts; too large for the wire; a request published by a paused node -------------


def test_a_thousand_cross_process_timeouts_leave_the_pending_table_empty(
    children: list[Any], tmp_path: Path
) -> None:
    with node_a(tmp_path) as bus:
        b = start(
            children,
            name="b",
            listen=ipc(tmp_path, "b"),
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
        )
        linked(bus, b)
        assert bus.request("svc.echo", 0, timeout=WAIT).data == {"node": "b", "echo": 0}
        b.stop()

        async def ask_all() -> list[Any]:
            abus = AsyncEventBus(bus=bus)
            return await asyncio.gather(
                *(abus.request("svc.echo", i, timeout=1.0) for i in range(1000)),
                return_exceptions=True,
            )

        outcomes = Call(lambda: asyncio.run(ask_all())).result(15.0)
        kinds = {type(o).__name__ for o in outcomes}
        assert kinds == {"RequestTimeoutError"}, kinds
        assert bus.pending_requests() == 0
        # And the blocking form, on threads.
        calls = [
            Call(functools.partial(bus.request, "svc.echo", i, timeout=0.5)) for i in range(50)
        ]
        for c in calls:
            with pytest.raises(RequestTimeoutError):
                c.result(15.0)
        assert bus.pending_requests() == 0

        b.cont()  # b answers the 1,050 late requests: all go to nobody
        reply = bus.request("svc.echo", "fresh", timeout=WAIT)
        assert reply.data == {"node": "b", "echo": "fresh"}
        assert bus.pending_requests() == 0


def test_request_too_large_for_the_wire_fails_at_the_call(
    children: list[Any], tmp_path: Path
) -> None:
    small = {"max_frame_bytes": 66_560 * 2}
    with node_a(tmp_path, **small) as bus:
        b = start(
            children,
            name="b",
            listen=ipc(tmp_path, "b"),
            peers=[bus.endpoints["request"]],
            pattern="svc.*",
            node=small,
        )
        linked(bus, b)
        assert bus.request("svc.echo", 0, timeout=WAIT).data == {"node": "b", "echo": 0}
        with pytest.raises(EventTooLargeError):
            bus.request("svc.echo", "y" * 200_000, timeout=5.0)
        with pytest.raises(EventTooLargeError):
            bus.request_all("svc.echo", "y" * 200_000, timeout=5.0)

        async def ask() -> None:
            await AsyncEventBus(bus=bus).request("svc.echo", "y" * 200_000, timeout=5.0)

        with pytest.raises(EventTooLargeError):
            asyncio.run(ask())
        assert bus.pending_requests() == 0
        # A reply too large for b's wire is an error reply, not a silence.
        with pytest.raises(RemoteHandlerError) as caught:
            bus.request("svc.echo", {"big": 200_000}, timeout=10.0)
        assert caught.value.remote_type == "EventTooLargeError"
        assert bus.request("svc.echo", 1, timeout=WAIT).data == {"node": "b", "echo": 1}
        assert bus.pending_requests() == 0


# Regression: request(node=) waited 30 s for a paused node (publish_remote's default), then
# raised NoAnswerError; its own timeout now bounds the publish, and the error is a timeout.
def test_request_through_a_paused_node_is_bounded_by_its_timeout(
    children: list[Any], tmp_path: Path
) -> None:
    # docs/requests.md: ``node="b"`` has b publish the request; no reply
    # within ``timeout`` raises RequestTimeoutError, and the request's timeout
    # "covers the whole call".  b paused (shorter than heartbeat_timeout):
    # its PUBLISH goes unanswered.
    b = start(children, name="b", listen=ipc(tmp_path, "b"), pattern="svc.*")
    with EventBus(node=NodeConfig(name="a", peers=(b.endpoint,))) as bus:  # no listen
        assert bus.wait_for_peers(["b"], WAIT)
        reply = bus.request("svc.echo", 1, node="b", timeout=WAIT)
        assert reply.data == {"node": "b", "echo": 1}
        b.stop()
        call = Call(lambda: bus.request("svc.echo", 2, node="b", timeout=1.0))
        try:
            with pytest.raises(RequestTimeoutError):
                call.result(10.0)
        finally:
            b.cont()
        assert bus.pending_requests() == 0


# Regression: the async form bounded only its await: the publish through the paused node went on
# in the loop's executor for publish_remote's own 30 s, holding one of its few threads.
def test_async_request_through_a_paused_node_is_bounded_by_its_timeout(
    children: list[Any], tmp_path: Path
) -> None:
    # The same fault for ``AsyncEventBus.request``: its publish through ``node``
    # runs in an executor thread; the deadline bounds the await and that thread.
    b = start(children, name="b", listen=ipc(tmp_path, "b"), pattern="svc.*")
    with EventBus(node=NodeConfig(name="a", peers=(b.endpoint,))) as bus:  # no listen
        assert bus.wait_for_peers(["b"], WAIT)
        assert bus.request("svc.echo", 1, node="b", timeout=WAIT).data == {"node": "b", "echo": 1}
        b.stop()

        async def ask() -> tuple[BaseException | Event, int]:
            loop = asyncio.get_running_loop()
            use_off_loop_threads(ThreadPoolExecutor(1))  # one thread: a held one shows
            got: BaseException | Event
            try:
                got = await AsyncEventBus(bus=bus).request("svc.echo", 2, node="b", timeout=1.0)
            except Exception as exc:
                got = exc
            # b is still paused: the executor's one thread must be free again (well before
            # the 30 s that publish_remote waits by default).
            return got, await asyncio.wait_for(loop.run_in_executor(None, lambda: 42), 10.0)

        try:
            got, answer = Call(lambda: asyncio.run(ask())).result(WAIT * 3)
        finally:
            b.cont()
        assert isinstance(got, RequestTimeoutError), repr(got)
        assert answer == 42
        assert bus.pending_requests() == 0


# Regression: a new type's first request spent all its timeout waiting for a paused peer to
# acknowledge its reply route, and had none left for the live replies.
def test_first_request_of_a_type_while_a_peer_is_paused_still_gets_the_live_replies(
    children: list[Any], tmp_path: Path
) -> None:
    # As scenario 3, but the request type is new when b3 is paused (still
    # "live": paused for less than heartbeat_timeout).  b1 and b2 answer at
    # once; the docs promise request_all every reply within its timeout.
    with node_a(tmp_path) as bus:
        nodes = three_responders(children, tmp_path, bus)
        assert len(bus.request_all("svc.echo", 0, timeout=WAIT, max_replies=3)) == 3
        nodes[2].stop()
        try:
            gathered = Call(
                lambda: bus.request_all("svc.fresh", 1, timeout=2.0, max_replies=3)
            ).result(15.0)
            first = Call(lambda: bus.request("svc.other", 2, timeout=2.0))
            first_error = None
            try:
                first.result(15.0)
            except RequestTimeoutError as exc:
                first_error = exc
        finally:
            nodes[2].cont()
        assert (sorted(str(r.origin) for r in gathered), first_error) == (["b1", "b2"], None), (
            f"request_all gathered {[r.origin for r in gathered]}; "
            f"request to live responders b1/b2 raised {first_error!r}"
        )
        assert bus.pending_requests() == 0


# Regression: ``AsyncEventBus.request_all`` gave the reply route its whole timeout (the bound was
# only in the blocking form), so a paused peer again left no time for the live replies.
def test_first_async_request_of_a_type_while_a_peer_is_paused_still_gets_the_live_replies(
    children: list[Any], tmp_path: Path
) -> None:
    with node_a(tmp_path) as bus:
        nodes = three_responders(children, tmp_path, bus)
        assert len(bus.request_all("svc.echo", 0, timeout=WAIT, max_replies=3)) == 3
        nodes[2].stop()

        async def gather() -> list[Event]:
            return await AsyncEventBus(bus=bus).request_all(
                "svc.fresh", 1, timeout=2.0, max_replies=3
            )

        try:
            gathered = Call(lambda: asyncio.run(gather())).result(15.0)
        finally:
            nodes[2].cont()
        assert sorted(str(r.origin) for r in gathered) == ["b1", "b2"]
        assert bus.pending_requests() == 0
