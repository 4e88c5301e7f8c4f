"""Correlation, causation and traces at their edges (SPEC 5)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from actors import AsyncEventBus, Event, EventBus, EventConfig, EventQuery
from actors.cli import main
from tests._cluster_support import ipc
from tests._cluster_support import node as bridge
from tests._support import WAIT

# -- bounded memory vs the journal ------------------------------------------------------


def test_trace_evicted_then_forgotten_still_merges_the_journal(
    open_bus: Callable[..., EventBus],
) -> None:
    # persistence.md: "get_correlated(cid) and trace(cid) answer from memory while
    # the trace is complete there; when it is not (evicted by max_traces, ...)
    # they merge in the journal's events of that correlation id".
    bus = open_bus(max_traces=1)
    cid = uuid.uuid4()
    bus.publish_correlated("wf.first", 1, cid).get(WAIT)
    # Two other workflows: cid is evicted, then its id leaves the store's
    # bounded list of evicted ids.
    bus.publish_correlated("other.a", 0, uuid.uuid4()).get(WAIT)
    bus.publish_correlated("other.b", 0, uuid.uuid4()).get(WAIT)
    bus.publish_correlated("wf.second", 2, cid).get(WAIT)
    assert [e.data for e in bus.query(EventQuery(correlation_id=cid))] == [1, 2]
    assert [e.data for e in bus.get_correlated(cid)] == [1, 2]


def test_restart_gives_the_same_trace_as_memory(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    cid = uuid.uuid4()
    done = threading.Event()

    def step(event: Event) -> None:
        n = event.data
        if n < 20:
            bus.publish("wf.step", n + 1)
            bus.publish("wf.side", n)
        else:
            done.set()

    bus.subscribe("wf.step", step)
    bus.publish_correlated("wf.step", 0, cid)
    assert done.wait(WAIT)
    bus.flush(WAIT)
    live = bus.get_correlated(cid)
    rendered = bus.trace(cid).render(show_data=True)
    bus.close(timeout=WAIT)
    again = open_bus()
    assert [e.to_dict() for e in again.get_correlated(cid)] == [e.to_dict() for e in live]
    assert again.trace(cid).render(show_data=True) == rendered


# -- the CLI -----------------------------------------------------------------------------


def test_cli_trace_json_is_in_tree_order(tmp_path: Path) -> None:
    # cli.md: "--json prints one JSON object per event in tree order:
    # Event.to_dict() plus depth (0 for a root) and parent".
    path = tmp_path / "journal"
    cid = uuid.uuid4()
    with _pbus(path) as b:
        root = Event(event_type="wf.root", correlation_id=cid)
        a = Event(event_type="wf.a", correlation_id=cid, causation_id=root.id)
        b_ = Event(event_type="wf.b", correlation_id=cid, causation_id=root.id)
        a1 = Event(event_type="wf.a1", correlation_id=cid, causation_id=a.id)
        for e in (root, a, b_, a1):  # a1 published after its uncle b
            b.publish(e).get(WAIT)
    result = CliRunner().invoke(main, ["trace", str(cid), "--journal", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["event_type"], r["depth"]) for r in rows] == [
        ("wf.root", 0),
        ("wf.a", 1),
        ("wf.a1", 2),
        ("wf.b", 1),
    ]


def _pbus(path: Path) -> EventBus:
    from actors import PersistentEventBus  # noqa: PLC0415

    return PersistentEventBus(EventConfig(persistence_path=str(path)))


def test_cli_trace_render_keeps_one_line_per_event(tmp_path: Path) -> None:
    # Trace.render: "Each line shows the offset in milliseconds, the event type
    # and [source -> target] when set".  A source is free text: a newline or an
    # escape sequence in it must not forge tree lines or reach the terminal raw.
    path = tmp_path / "journal"
    cid = uuid.uuid4()
    forged = "svc\n└─ +0.000 ms  payment.approved  [bank]\x1b[2J\x1b]0;pwned\x07"
    with _pbus(path) as b:
        b.publish("wf.start", None, correlation_id=cid, source=forged).get(WAIT)
    result = CliRunner().invoke(main, ["trace", str(cid), "--journal", str(path)])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "(1 event," in lines[0]
    assert len(lines) == 3, lines  # header, the one event, origins
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout


# -- typed errors and timeouts -----------------------------------------------------------


def test_async_trace_takes_a_timeout() -> None:
    # architecture.md: "Timeouts are None ... or a finite number of seconds ...
    # This holds for flush, close, get_correlated, trace, query, ... and the
    # async twins."
    async def go() -> None:
        async with AsyncEventBus() as abus:
            cid = uuid.uuid4()
            await abus.publish_correlated("wf.a", 1, cid)
            trace = await abus.trace(cid, timeout=WAIT)
            assert len(trace) == 1

    asyncio.run(go())


# -- inheritance --------------------------------------------------------------------------


def test_publish_from_a_replay_handler_inherits(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    cid = uuid.uuid4()
    original = bus.publish_correlated("wf.a", 1, cid).get(WAIT)
    futures = []
    bus.replay(EventQuery(correlation_id=cid), lambda e: futures.append(bus.publish("wf.b", 2)))
    (made,) = [f.get(WAIT) for f in futures]
    assert (made.correlation_id, made.causation_id) == (cid, original.id)


def test_ids_given_explicitly_as_none_inside_a_handler_are_kept(bus: EventBus) -> None:
    # SPEC section 5: inherited "unless given explicitly"; None given is a new root.
    made: list[Event] = []
    done = threading.Event()

    def handler(event: Event) -> None:
        made.append(bus.publish("out.root", 1, causation_id=None).get(WAIT))
        made.append(bus.publish("out.alone", 2, causation_id=None, correlation_id=None).get(WAIT))
        made.append(bus.publish("out.child", 3).get(WAIT))
        done.set()

    bus.subscribe("in.x", handler)
    cid = uuid.uuid4()
    cause = bus.publish_correlated("in.x", 0, cid).get(WAIT)
    assert done.wait(WAIT)
    assert [(e.causation_id, e.correlation_id) for e in made] == [
        (None, cid),
        (None, None),
        (cause.id, cid),
    ]


def test_the_handled_event_published_again_is_never_its_own_cause(
    open_bus: Callable[..., EventBus],
) -> None:
    # Forwarding or re-driving the event being handled: the bus must not stamp
    # it with its own id as its cause (a causation cycle no trace can show).
    bus = open_bus()
    cid = uuid.uuid4()
    first = bus.publish_correlated("job.submitted", 1, cid).get(WAIT)
    again: list[Event] = []
    bus.replay(
        EventQuery(event_types=["job.submitted"]), lambda e: again.append(bus.publish(e).get(WAIT))
    )
    forwarded = threading.Event()

    def forward(event: Event) -> None:
        if not forwarded.is_set():  # once: the copy comes back here too
            forwarded.set()
            again.append(bus.publish(event).get(WAIT))

    bus.subscribe("job.live", forward)
    bus.publish_correlated("job.live", 2, cid).get(WAIT)
    assert forwarded.wait(WAIT)
    bus.flush(WAIT)
    assert len(again) == 2
    assert again[0].id == first.id
    for event in again:
        assert event.causation_id is None
        assert event.correlation_id == cid
    assert all(e.causation_id != e.id for e in bus.query(EventQuery()))


def test_deep_chain_through_the_bus_renders(bus: EventBus) -> None:
    cid = uuid.uuid4()
    n = 3000
    done = threading.Event()

    def step(event: Event) -> None:
        if event.data < n - 1:
            bus.publish("deep.step", event.data + 1)
        else:
            done.set()

    bus.subscribe("deep.step", step)
    bus.publish_correlated("deep.step", 0, cid)
    assert done.wait(WAIT)
    trace = bus.trace(cid)
    assert trace.depth == n
    assert len(trace.render().splitlines()) == n + 1
    last = trace.events[-1]
    assert len(trace.chain(last.id)) == n


def test_cross_node_get_correlated_puts_causes_first_and_nodes_agree(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    # SPEC 5: get_correlated "returns every event of that correlation in
    # sequence order: ... and from every connected node when distributed".
    a = nodes("a", listen=ipc(tmp_path, "a"))
    b = nodes("b", peers=(ipc(tmp_path, "a"),))
    done = threading.Event()

    def on_b(event: Event) -> None:
        b.publish("wf.child", 2).get(WAIT)
        done.set()

    b.subscribe("wf.root", on_b)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    assert bridge(a).wait(lambda s: "b" in s.peers_alive, WAIT)
    for i in range(10):  # a's sequence runs ahead of b's
        a.publish("noise", i).get(WAIT)
    cid = uuid.uuid4()
    a.publish_correlated("wf.root", 1, cid).get(WAIT)
    assert done.wait(WAIT)
    from_a = [e.event_type for e in a.get_correlated(cid, timeout=WAIT)]
    from_b = [e.event_type for e in b.get_correlated(cid, timeout=WAIT)]
    assert from_b == ["wf.root", "wf.child"]
    assert from_a == from_b
