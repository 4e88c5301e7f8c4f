"""Request/reply through a broker in its own process, under kills and pauses.

Checked against ``docs/requests.md`` ("Across nodes", "Guarantees") and
``docs/cluster.md`` ("Hub and spoke", "Dead peers", "Recovery waits for the
origin", the fault table): a request ends with its reply or with
``RequestTimeoutError`` at its timeout, never hangs and never takes another
request's reply; a late reply is only an event; later requests are answered
once the nodes greeted a restarted broker; the ``AsyncEventBus`` forms are
bounded the same way.

The broker is ``BROKER_CHILD`` (``tests/test_cluster_fault_edges.py``) on an
ipc endpoint in ``tmp_path``; responders are ``tests/_requests_fault_child.py``
processes (a request ``{"hold": TAG}`` is held in the handler until
``release``; each reply is printed as ``replied REQUEST_ID``); this process
runs node ``a`` and asks.  The parent synchronises on the children's lines,
on ``wait_for`` and on the node's own statistics; every timeout is an upper
bound whose expiry fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import AsyncEventBus, Event, EventBus, NodeConfig, RequestTimeoutError
from tests._support import Collector, pause, reaped, wait_for
from tests.test_cluster_fault_edges import BROKER_CHILD, BrokerChild, cont
from tests.test_requests_faults import Call, Node, linked, start

pytestmark = pytest.mark.slow

WAIT = 30.0  # upper bound for a child's answer or a reply that must come
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}


@pytest.fixture
def children() -> Iterator[list[Any]]:
    yield from reaped()


class Hub:
    """The broker process: started, killed and started again on one ipc endpoint."""

    def __init__(self, tmp_path: Path, children: list[Any]) -> None:
        self.script = tmp_path / "broker_child.py"
        self.script.write_text(BROKER_CHILD)
        self.endpoint = f"ipc://{tmp_path}/hub.sock"
        assert len(self.endpoint) < 90, f"ipc path too long for a unix socket: {self.endpoint}"
        self.children = children
        self.child = self.start()

    def start(self) -> BrokerChild:
        self.child = BrokerChild(self.script, self.endpoint)
        self.children.append(self.child)
        return self.child

    def kill(self) -> None:
        self.child.kill()


def node_a(hub: Hub, **config: Any) -> EventBus:
    return EventBus(node=NodeConfig(name="a", peers=(hub.endpoint,), **config))


def responder(children: list[Any], hub: Hub, name: str = "b", **config: Any) -> Node:
    return start(children, name=name, peers=[hub.endpoint], pattern="svc.*", **config)


def alive(bus: EventBus) -> set[str]:
    assert bus.node is not None
    return set(bus.node.statistics().peers_alive)


@contextlib.contextmanager
def served(
    children: list[Any], tmp_path: Path, **config: Any
) -> Iterator[tuple[Hub, EventBus, Node]]:
    """A broker, node ``a`` (this process) and responder ``b`` joined through it, answering."""
    hub = Hub(tmp_path, children)
    with node_a(hub, **config) as bus:
        b = responder(children, hub, **({"node": config} if config else {}))
        linked(bus, b)
        assert bus.request("svc.echo", 0, timeout=WAIT).data == {"node": "b", "echo": 0}
        yield hub, bus, b


def broker_gone(hub: Hub, bus: EventBus) -> None:
    """Kill the broker; return once ``a`` no longer hears ``b`` through it."""
    hub.kill()
    assert wait_for(lambda: "b" not in alive(bus), WAIT)


def fresh_id() -> uuid.UUID:
    return Event(event_type="x").id


def ask(bus: EventBus, data: Any, timeout: float, **fields: Any) -> Call:
    return Call(functools.partial(bus.request, "svc.echo", data, timeout=timeout, **fields))


def answered(reply: Event, request_id: uuid.UUID, data: Any) -> None:
    """``reply`` is b's answer to the request ``request_id`` (carrying ``data``)."""
    assert reply.event_type == "svc.echo.reply", reply
    assert reply.causation_id == request_id, (reply.causation_id, request_id)
    assert reply.data == {"node": "b", "echo": data}, reply
    assert reply.origin == "b", reply


# -- the broker killed with a request in flight, then restarted ----------------------------------


def test_broker_killed_mid_request_times_out_and_the_late_reply_reaches_no_later_request(
    children: list[Any], tmp_path: Path
) -> None:
    hub = Hub(tmp_path, children)
    with node_a(hub, **FAST) as bus:
        b = responder(children, hub, node=FAST)
        linked(bus, b)
        first_id = fresh_id()
        assert ask(bus, 0, WAIT, id=first_id).result(WAIT).causation_id == first_id
        late = Collector()
        bus.subscribe("svc.echo.reply", late)

        held_request = fresh_id()
        held = ask(bus, {"hold": "k"}, 2.0, id=held_request)
        held_id, _ = b.wait_held()  # the request reached b through the broker
        assert held_id == str(held_request)
        hub.kill()
        with pytest.raises(RequestTimeoutError):
            held.result(WAIT)
        assert bus.pending_requests() == 0
        assert wait_for(lambda: "b" not in alive(bus), WAIT)  # the broker is gone for a

        hub.start()
        assert wait_for(lambda: "b" in alive(bus), WAIT)  # both greeted the new broker
        # (No ``sync`` at b here: its wait_for_peers flushes its bus, held by the handler.)
        # A later request of the same type waits behind the held one at b: once
        # released, the late reply is published first, while this one waits.
        second_id = fresh_id()
        second = ask(bus, "second", WAIT, id=second_id)
        assert wait_for(lambda: bus.pending_requests() == 1, WAIT)
        b.ask("release", "released")
        b.wait_line("replied", held_id)
        answered(second.result(WAIT), second_id, "second")
        # The late reply crossed the new broker as an ordinary event, and went to nobody.
        assert wait_for(lambda: any(e.causation_id == held_request for e in late.events), WAIT)
        third_id = fresh_id()
        answered(bus.request("svc.echo", 3, timeout=WAIT, id=third_id), third_id, 3)
        assert bus.pending_requests() == 0
        b.close()


def test_a_reply_made_while_the_broker_is_down_reaches_its_still_waiting_caller(
    children: list[Any], tmp_path: Path
) -> None:
    # docs/cluster.md, fault table: frames in flight when the broker dies are
    # found by the chains and fetched through the new broker.  A reply is an
    # event like any other: a caller still within its timeout gets it.
    with served(children, tmp_path, **FAST) as (hub, bus, b):
        request_id = fresh_id()
        waiting = ask(bus, {"hold": "down"}, WAIT * 2, id=request_id)
        held_id, _ = b.wait_held()
        broker_gone(hub, bus)
        b.ask("release", "released")
        b.wait_line("replied", held_id)  # published by b while no broker runs
        assert not waiting.done.is_set()
        assert bus.pending_requests() == 1
        hub.start()
        answered(waiting.result(WAIT * 3), request_id, {"hold": "down"})
        assert bus.pending_requests() == 0
        next_id = fresh_id()
        answered(bus.request("svc.echo", 1, timeout=WAIT, id=next_id), next_id, 1)
        b.close()


def test_a_request_published_while_the_broker_is_down_is_answered_once_it_restarts(
    children: list[Any], tmp_path: Path
) -> None:
    # The request itself is lost with the broker: b, which follows a's stream,
    # finds the gap once the new broker relays a's heartbeat and fetches it.
    with served(children, tmp_path, **FAST) as (hub, bus, b):
        broker_gone(hub, bus)
        request_id = fresh_id()
        waiting = ask(bus, "while down", WAIT * 2, id=request_id)
        assert wait_for(lambda: bus.pending_requests() == 1, WAIT)
        hub.start()
        answered(waiting.result(WAIT * 3), request_id, "while down")
        b.wait_line("replied", str(request_id))
        assert bus.pending_requests() == 0
        b.close()


def test_first_request_of_a_new_type_right_after_a_broker_restart_is_answered(
    children: list[Any], tmp_path: Path
) -> None:
    # The reply route of a new type must reach b through the new broker; the
    # request goes out without waiting for the nodes to greet it (at-least-once
    # to a live, reachable node: what b missed meanwhile is fetched).
    with served(children, tmp_path, **FAST) as (hub, bus, b):
        broker_gone(hub, bus)
        hub.start()
        request_id = fresh_id()
        reply = Call(
            functools.partial(bus.request, "svc.fresh", "new", timeout=WAIT, id=request_id)
        ).result(WAIT * 2)
        assert reply.event_type == "svc.fresh.reply", reply
        assert reply.causation_id == request_id
        assert reply.data == {"node": "b", "echo": "new"}
        assert reply.origin == "b"
        gathered = bus.request_all("svc.other", "all", timeout=WAIT, max_replies=1)
        assert [(r.origin, r.data) for r in gathered] == [("b", {"node": "b", "echo": "all"})]
        assert bus.pending_requests() == 0
        b.close()


# -- the broker paused past the request's timeout ------------------------------------------------


def test_broker_paused_past_the_timeout_then_continued_late_reply_reaches_no_later_request(
    children: list[Any], tmp_path: Path
) -> None:
    with served(children, tmp_path, **FAST) as (hub, bus, b):
        late = Collector()
        bus.subscribe("svc.echo.reply", late)

        pause(hub.child.proc)
        first_id = fresh_id()
        with pytest.raises(RequestTimeoutError):
            ask(bus, "late", 1.0, id=first_id).result(WAIT)
        assert bus.pending_requests() == 0
        assert wait_for(lambda: "b" not in alive(bus), WAIT)  # past heartbeat_timeout too
        # A later request waits while the broker is still stopped; after SIGCONT
        # b gets both (the first is fetched if it was lost) and answers both.
        second_id = fresh_id()
        second = ask(bus, "second", WAIT, id=second_id)
        assert wait_for(lambda: bus.pending_requests() == 1, WAIT)
        cont(hub.child)
        answered(second.result(WAIT * 2), second_id, "second")
        assert wait_for(lambda: any(e.causation_id == first_id for e in late.events), WAIT)
        echo_of = {first_id: "late", second_id: "second"}
        for e in late.events:  # each reply answers its own request
            assert e.data["echo"] == echo_of[e.causation_id], e
        assert bus.pending_requests() == 0
        b.close()


# -- the responder killed and restarted behind the broker ----------------------------------------


def test_responder_killed_mid_request_behind_the_broker_and_its_new_incarnation_answers(
    children: list[Any], tmp_path: Path
) -> None:
    with served(children, tmp_path, **FAST) as (hub, bus, b):
        held = ask(bus, {"hold": "x"}, 1.5)
        b.wait_held()
        b.kill()
        with pytest.raises(RequestTimeoutError):
            held.result(WAIT)
        assert bus.pending_requests() == 0

        b2 = responder(children, hub, node=FAST)  # at once: a may still hold the old b alive
        b2.ask("sync a", "synced")
        for i in range(10):
            request_id = fresh_id()
            reply = bus.request("svc.echo", i, timeout=WAIT, id=request_id)
            answered(reply, request_id, i)
            b2.wait_line("replied", str(request_id))  # the new incarnation answered
        assert bus.pending_requests() == 0
        b2.close()


# -- request_all through the broker with one responder paused ------------------------------------


def test_request_all_through_the_broker_returns_the_live_replies_when_one_is_paused(
    children: list[Any], tmp_path: Path
) -> None:
    hub = Hub(tmp_path, children)
    with node_a(hub) as bus:
        nodes = [responder(children, hub, name) for name in ("b1", "b2", "b3")]
        linked(bus, *nodes)
        everyone = bus.request_all("svc.echo", 0, timeout=WAIT, max_replies=3)
        assert sorted(str(r.origin) for r in everyone) == ["b1", "b2", "b3"]

        pause(nodes[2].proc)  # shorter than heartbeat_timeout: b3 still counts as live
        try:
            for kind in ("svc.echo", "svc.fresh"):  # a known type and a new one
                request_id = fresh_id()
                replies = Call(
                    functools.partial(
                        bus.request_all, kind, kind, timeout=2.0, max_replies=3, id=request_id
                    )
                ).result(WAIT)
                assert sorted(str(r.origin) for r in replies) == ["b1", "b2"], (kind, replies)
                assert all(r.causation_id == request_id for r in replies)
                assert all(r.data["echo"] == kind for r in replies)
        finally:
            cont(nodes[2])
        assert bus.pending_requests() == 0
        replies = bus.request_all("svc.echo", "back", timeout=WAIT, max_replies=3)
        assert sorted(str(r.origin) for r in replies) == ["b1", "b2", "b3"]
        assert all(r.data["echo"] == "back" for r in replies)
        assert bus.pending_requests() == 0
        for n in nodes:
            n.close()


# -- the async forms through a stopped broker ----------------------------------------------------


def test_async_requests_through_a_paused_broker_are_bounded_by_their_timeout(
    children: list[Any], tmp_path: Path
) -> None:
    # Default heartbeat_timeout (5 s): b still counts as live while the broker
    # is stopped, so a new type's reply route waits for b's acknowledgement,
    # which cannot come; that wait takes at most half of the timeout.
    with served(children, tmp_path) as (hub, bus, b):
        abus = AsyncEventBus(bus=bus)

        async def during_pause() -> tuple[list[Any], Any, Any, Any]:
            many = await asyncio.gather(
                *(abus.request("svc.echo", i, timeout=1.0) for i in range(200)),
                return_exceptions=True,
            )
            fresh: Any
            try:
                fresh = await abus.request("svc.new", 1, timeout=1.0)
            except Exception as exc:
                fresh = exc
            gathered = await abus.request_all("svc.echo", 2, timeout=1.0)
            gathered_new = await abus.request_all("svc.newer", 3, timeout=1.0, max_replies=1)
            return many, fresh, gathered, gathered_new

        pause(hub.child.proc)
        try:
            many, fresh, gathered, gathered_new = Call(lambda: asyncio.run(during_pause())).result(
                WAIT
            )
        finally:
            cont(hub.child)
        assert {type(o).__name__ for o in many} == {"RequestTimeoutError"}
        assert isinstance(fresh, RequestTimeoutError), repr(fresh)
        assert (gathered, gathered_new) == ([], [])
        assert bus.pending_requests() == 0

        async def after() -> list[Event]:
            return [
                await abus.request("svc.echo", "back", timeout=WAIT),
                await abus.request("svc.new", "new", timeout=WAIT),
                *await abus.request_all("svc.newer", "newer", timeout=WAIT, max_replies=1),
            ]

        replies = Call(lambda: asyncio.run(after())).result(WAIT * 4)
        assert [(r.event_type, r.data["echo"], r.origin) for r in replies] == [
            ("svc.echo.reply", "back", "b"),
            ("svc.new.reply", "new", "b"),
            ("svc.newer.reply", "newer", "b"),
        ]
        assert bus.pending_requests() == 0
        b.close()


def test_async_request_through_a_killed_broker_ends_at_its_timeout_and_is_answered_after(
    children: list[Any], tmp_path: Path
) -> None:
    hub = Hub(tmp_path, children)
    with node_a(hub, **FAST) as bus:
        b = responder(children, hub, node=FAST)
        linked(bus, b)
        abus = AsyncEventBus(bus=bus)
        assert bus.request("svc.echo", 0, timeout=WAIT).data == {"node": "b", "echo": 0}
        request_id = fresh_id()

        async def held() -> Any:
            try:
                return await abus.request("svc.echo", {"hold": "a"}, timeout=2.0, id=request_id)
            except Exception as exc:
                return exc

        call = Call(lambda: asyncio.run(held()))
        b.wait_held()
        hub.kill()
        outcome = call.result(WAIT)
        assert isinstance(outcome, RequestTimeoutError), repr(outcome)
        assert bus.pending_requests() == 0
        b.ask("release", "released")
        hub.start()
        assert wait_for(lambda: "b" in alive(bus), WAIT)
        next_id = fresh_id()

        async def later() -> Event:
            return await abus.request("svc.echo", "later", timeout=WAIT, id=next_id)

        answered(Call(lambda: asyncio.run(later())).result(WAIT * 2), next_id, "later")
        assert bus.pending_requests() == 0
        b.close()
