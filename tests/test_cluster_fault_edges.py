"""Real node processes under kills, pauses and restarts, checked against ``docs/cluster.md``.

Each test starts nodes as OS processes (``tests/_node_child.py``,
``tests/_reply_child.py``, a broker child written into ``tmp_path``), joined
over ipc:// or tcp://127.0.0.1, and injects a fault (kill -9, SIGSTOP past
``heartbeat_timeout``, a restart on another port, a duplicate name, a broker
restart while a durable node is down). It then checks what the document
promises: nothing lost that the origin holds, per-origin order, no duplicate,
``gaps == gaps_recovered + gaps_unrecovered + gaps_open``, requests and
queries that fail within their timeout and leave nothing behind.

The parent synchronises on child output lines and on bounded condition waits.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import (
    BridgeError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    NoAnswerError,
    NodeConfig,
    NotConnectedError,
    PersistentEventBus,
    RequestTimeoutError,
)
from actors._cluster.recovery_io import LOST
from tests._support import Collector, LineChild, finished, in_background, pause, reaped, wait_for
from tests.test_cluster import Node, start
from tests.test_requests_cluster import Responder

pytestmark = pytest.mark.slow

WAIT = 25.0
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def stop(child: Any) -> None:
    pause(child.proc)


def cont(child: Any) -> None:
    os.kill(child.proc.pid, signal.SIGCONT)


def gaps_add_up(stats: Any) -> None:
    """``gaps == gaps_recovered + gaps_unrecovered + gaps_open`` (dict or BridgeStatistics)."""
    get = stats.get if isinstance(stats, dict) else lambda k: getattr(stats, k)
    assert get("gaps") == get("gaps_recovered") + get("gaps_unrecovered") + get("gaps_open"), {
        k: get(k) for k in ("gaps", "gaps_recovered", "gaps_unrecovered", "gaps_open")
    }


def settled(child: Node) -> dict[str, Any]:
    """The child's statistics once no gap is open (bounded)."""
    box: dict[str, Any] = {}

    def closed() -> bool:
        box["s"] = child.stats()
        return box["s"]["gaps_open"] == 0

    assert wait_for(closed, WAIT), box
    return box["s"]


def in_order_once(got: list[tuple[str, str, Any]], origin: str) -> list[Any]:
    data = [d for o, _, d in got if o == origin]
    assert len(data) == len(set(data)), f"duplicates from {origin}"
    assert data == sorted(data), f"out of order from {origin}"
    return data


def node_of(bus: EventBus) -> Any:
    assert bus.node is not None
    return bus.node


# -- a request in flight while the responder's node is paused -------------------------------


def test_a_request_to_a_paused_responder_times_out_cleanly_and_the_late_reply_is_harmless(
    cluster: list[Any],
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        replies = Collector()
        bus.subscribe("svc.echo.reply", replies)
        b = Responder(
            name="b", pattern="svc.*", listen="tcp://127.0.0.1:*", peers=[bus.endpoints["request"]]
        )
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        b.ask("sync a", "synced")
        assert bus.request("svc.echo", "first", timeout=WAIT).data == {"node": "b", "echo": "first"}
        stop(b)
        outcome: list[BaseException | Event] = []

        def ask() -> None:
            try:
                outcome.append(bus.request("svc.echo", "late", timeout=2.0))
            except BaseException as exc:  # the outcome is checked below
                outcome.append(exc)

        asker = threading.Thread(target=ask)
        asker.start()
        # In flight while b is declared dead (paused past heartbeat_timeout).
        assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
        asker.join(WAIT)
        assert not asker.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], RequestTimeoutError), outcome
        assert bus.pending_requests() == 0  # no leak
        cont(b)
        assert node_of(bus).wait(lambda s: "b" in s.peers_alive, WAIT)
        # b gets the request it missed (at-least-once to a live node) and answers it:
        # the late reply reaches a as an event only, and no caller takes it.
        assert wait_for(lambda: "late" in [r.data["echo"] for r in replies.events], WAIT)
        fresh = bus.request("svc.echo", "fresh", timeout=WAIT)
        assert fresh.data == {"node": "b", "echo": "fresh"}
        assert bus.pending_requests() == 0
        bus.flush(WAIT)
        echoes = [r.data["echo"] for r in replies.events]
        assert echoes == ["first", "late", "fresh"], echoes  # each answered once, in order
        gaps_add_up(node_of(bus).statistics())
        b.close()


# -- a remote query and a trace while the queried node is paused ---------------------------


def test_a_query_and_a_trace_across_nodes_while_one_is_paused(
    cluster: list[Any], tmp_path: Path
) -> None:
    config = EventConfig(persistence_path=str(tmp_path / "a"))
    with PersistentEventBus(
        config, node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)
    ) as bus:
        b = start(
            cluster,
            name="b",
            peers=[bus.endpoints["request"]],
            path=str(tmp_path / "b"),
            pattern="job.*",
            node=FAST,
        )
        b.ask("sync a", "synced")
        cid = Event(event_type="x").id

        def publish(lo: int, hi: int) -> None:
            for f in bus.publish_many(
                [Event(event_type="job.run", data=i, correlation_id=cid) for i in range(lo, hi)]
            ):
                f.get(timeout=WAIT)

        publish(0, 20)
        b.wait_data(set(range(20)))
        query = EventQuery(event_types=["job.run"])
        assert [e.data for e in bus.query(query, node="b", timeout=WAIT)] == list(range(20))
        stop(b)
        with pytest.raises(NoAnswerError):  # still alive, does not answer: a clean timeout
            bus.query(query, node="b", timeout=0.5)
        # A trace asks every live peer; one that does not answer is skipped.
        local = bus.get_correlated(cid, timeout=0.5)
        assert [e.data for e in local] == list(range(20))
        assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
        publish(20, 40)  # while b is paused and declared dead
        with pytest.raises(BridgeError):
            bus.query(query, node="b", timeout=0.5)
        trace = bus.trace(cid, timeout=0.5)
        assert len(trace.events) == 40
        cont(b)
        b.wait_data(set(range(40)))
        assert in_order_once(b.got, "a") == list(range(40))
        # b journaled each event once, in order, the recovered ones included.
        assert wait_for(
            lambda: [e.data for e in bus.query(query, node="b", timeout=WAIT)] == list(range(40)),
            WAIT,
        ), [e.data for e in bus.query(query, node="b", timeout=WAIT)]
        both = bus.get_correlated(cid, timeout=WAIT)  # b's copies share a's ids: merged
        assert len({e.id for e in both}) == len(both) == 40
        gaps_add_up(settled(b))
        gaps_add_up(node_of(bus).statistics())
        b.close()


# -- publish_remote retried across a restart of the target ----------------------------------


# Retrying publish_remote is safe also when the answer was lost because the
# target crashed: a persistent node restarted on its journal remembers the ids it
# published (its journal's last events), so the retry gets the stored event and
# the journal holds it once.
def test_publish_remote_retried_across_a_restart_of_the_target_publishes_once(
    cluster: list[Any], tmp_path: Path
) -> None:
    b_config = {
        "name": "b",
        "listen": "tcp://127.0.0.1:*",
        "path": str(tmp_path / "b"),
        "durability": "sync",
        "node": FAST,
    }
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        got = Collector()
        bus.subscribe("job.*", got)
        b_config["peers"] = [bus.endpoints["request"]]
        b = start(cluster, **b_config)
        assert bus.wait_for_peers(["b"], WAIT)
        b.ask("sync a", "synced")
        event = Event(event_type="job.once", data="once")
        first = bus.publish_remote("b", event, timeout=WAIT)
        assert first.origin == "b"
        assert wait_for(lambda: len(got.events) == 1, WAIT)
        # The answer is lost to the client (say its timeout ran out) and b crashes.
        b.kill()
        assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
        b = start(cluster, **b_config)
        assert node_of(bus).wait(lambda s: "b" in s.peers_alive, WAIT)
        b.ask("sync a", "synced")
        again = bus.publish_remote("b", event, timeout=WAIT)  # the client's retry
        b.ask("publish job.after 0 1", "published")  # a marker behind it on b's stream
        assert wait_for(lambda: any(e.event_type == "job.after" for e in got.events), WAIT)
        journal = b.ask("journal job.once", "journal ")
        assert journal == 'journal ["once"]', journal  # journaled once
        assert again.sequence == first.sequence
        assert [e.data for e in got.events if e.event_type == "job.once"] == ["once"]
        b.close()


# -- two live nodes under one name -----------------------------------------------------------


def test_a_second_node_under_a_live_peers_name_cannot_cut_it_off(
    cluster: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with EventBus(node=NodeConfig(name="c", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        got = Collector()
        bus.subscribe("dup.*", got)
        x1 = start(
            cluster,
            name="x",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            pattern="ask.*",
            node=FAST,
        )
        assert bus.wait_for_peers(["x"], WAIT)
        x1.ask("sync c", "synced")
        x1.ask("publish dup.a 0 50", "published")
        assert wait_for(lambda: len(got.events) == 50, WAIT)
        # The impostor: same name, its own port, greets c while x1 is alive.
        x2 = start(
            cluster,
            name="x",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            pattern="ask.*",
            node=FAST,
        )
        # x2 is answered (welcome or refusal) before we go on.
        x2.send("sync c")
        x2_answer = x2.lines.get(timeout=WAIT)
        assert x2_answer in ("synced", "not-synced"), x2_answer
        x2.ask("publish dup.a 1000 1050", "published")
        x1.ask("publish dup.a 50 100", "published")
        assert wait_for(lambda: 99 in [e.data for e in got.events], WAIT)
        # c still follows x1's stream, in order, once, and took nothing of x2's stream.
        data = [e.data for e in got.events]
        assert data == list(range(100)), data
        # c's requests to "x" still take x1's route.
        published = bus.publish_remote("x", "ask.who", "which", timeout=WAIT)
        assert published.origin == "x"
        x1.wait_data({"which"})
        stats = node_of(bus).statistics()
        gaps_add_up(stats)
        assert stats.sequences_rejected == 0
        assert "which" not in {d for _, _, d in x2.got}
        # Once x1 is gone, the name is x2's: c follows its stream from its first event.
        x1.close()
        # c declares "x" dead and follows x2's stream in the same step; x2's next heartbeat
        # makes "x" alive again, so a view without "x" may never be seen: wait for the word.
        assert wait_for(lambda: "node x is not responding" in caplog.text, WAIT)
        x2.ask("publish dup.a 1050 1060", "published")
        assert wait_for(lambda: 1059 in [e.data for e in got.events], WAIT), got.data
        data = [e.data for e in got.events]
        assert data[:100] == list(range(100))
        assert data[100:] == list(range(1000, 1060)), data[100:]
        gaps_add_up(node_of(bus).statistics())
        x2.close()


# -- a persistent origin restarted fast under its name on another port -----------------------


def test_an_origin_killed_and_restarted_on_another_port_loses_nothing(
    cluster: list[Any], tmp_path: Path
) -> None:
    b = start(cluster, name="b", listen="tcp://127.0.0.1:*", pattern="job.*", node=FAST)
    a_config = {
        "name": "a",
        "listen": f"ipc://{tmp_path}/a1.sock",
        "peers": [b.endpoint],
        "path": str(tmp_path / "a"),
        "node": FAST,
    }
    a = start(cluster, **a_config)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 100", "published")
    b.wait_data(set(range(100)))
    a.ask("pause", "paused")
    a.ask("publish job.run 100 150 acked", "acked")  # journaled, never sent
    a.kill()
    # At once, on another endpoint: b may still hold the old a alive.
    a = start(cluster, **{**a_config, "listen": f"ipc://{tmp_path}/a2.sock"})
    a.ask("sync b", "synced")
    a.ask("publish job.run 150 200", "published")
    b.wait_data(set(range(200)))
    assert in_order_once(b.got, "a") == list(range(200))
    gaps_add_up(settled(b))
    a.close()
    b.close()


# -- a flood at a SIGSTOPped subscriber ------------------------------------------------------


@pytest.mark.parametrize("persistent", [True, False], ids=["journal", "ring"])
def test_a_flood_at_a_paused_subscriber(
    cluster: list[Any], tmp_path: Path, persistent: bool
) -> None:
    n, ring, queue = 6000, 1000, 500
    a_node = {**FAST, "batch_size": 1, "send_hwm": 50, "recovery_ring": ring, "send_queue": queue}
    a_config: dict[str, Any] = {"name": "a", "listen": "tcp://127.0.0.1:*", "node": a_node}
    if persistent:
        a_config["path"] = str(tmp_path / "a")
    a = start(cluster, **a_config)
    b = start(
        cluster,
        name="b",
        peers=[a.endpoint],
        pattern="flood.*",
        node={**FAST, "receive_hwm": 50},
    )
    b.ask("sync a", "synced")
    b.ask("subscribe $bus.peer.lost", "subscribed")  # what it announces as lost
    a.ask("publish flood.x 0 10", "published")
    b.wait_data(set(range(10)))
    stop(b)
    a.ask("gone b", "gone")  # paused past heartbeat_timeout: a dead peer holds no one back
    chunk = 500
    for lo in range(10, n, chunk):
        a.ask(f"publish flood.x {lo} {min(lo + chunk, n)}", "published")
    a_stats = a.stats()
    # Memory bounded at the origin: its queue holds at most send_queue + 2 batches.
    assert a_stats["send_queue_peak"] <= queue + 2 * chunk, a_stats["send_queue_peak"]
    cont(b)
    a.ask("peers b", "peers")
    a.ask(f"publish flood.x {n} {n + 1}", "published")  # the last one, live
    if persistent:
        got = b.wait_data(set(range(n + 1)))  # nothing lost: all from a's journal
        assert in_order_once(got, "a") == list(range(n + 1))
        stats = settled(b)
        assert stats["gaps"] >= 1, "nothing was lost on the wire: nothing was tested"
        assert stats["gaps_unrecovered"] == 0
    else:
        b.wait_data({n})
        stats = settled(b)
        data = in_order_once(b.got, "a")
        # The ring's last `recovery_ring` events are still held by a: delivered.
        assert set(range(n + 1 - ring, n + 1)) <= set(data), sorted(
            set(range(n + 1 - ring, n + 1)) - set(data)
        )[:10]
        assert len(data) < n + 1, "the ring kept everything: nothing was tested"
        assert stats["gaps_unrecovered"] >= 1, stats  # the loss is counted, never silent
        # ... and announced: every event missing lies in a range b published as lost
        # (a's sequences: event i is a's (i + 1)th, it publishes nothing else).
        assert wait_for(lambda: any(t == LOST for _, t, _ in b.got), WAIT), b.got[-3:]
        lost = [d for o, t, d in b.got if t == LOST and o == "b"]
        assert {(d["node"], d["origin"]) for d in lost} == {("b", "a")}, lost
        announced = {i - 1 for d in lost for i in range(d["first"], d["last"] + 1)}
        missing = set(range(n + 1)) - set(data)
        assert missing <= announced, sorted(missing - announced)[:10]
        assert len(lost) >= stats["gaps_unrecovered"], (stats, lost)  # a page each, at least
    gaps_add_up(stats)
    b.close()
    a.close()


# -- a broker restarted while a durable subscriber is down -----------------------------------

BROKER_CHILD = """
import sys, threading
from actors import Broker
from actors._cluster.wire import PUBLISH
broker = Broker(sys.argv[1])
# "relayed N" answers once N publish_remote requests were passed on to their node.
relayed = threading.Condition()
publishes = [0]
relay = broker._relay
def counted(identity, target, message, parts):
    relay(identity, target, message, parts)
    if message.kind == PUBLISH:
        with relayed:
            publishes[0] += 1
            relayed.notify_all()
broker._relay = counted
print("ready", broker.endpoint, flush=True)
for line in sys.stdin:
    words = line.split()
    if words == ["close"]:
        broker.close()
        print("closed", flush=True)
        break
    if words[:1] == ["relayed"]:
        with relayed:
            relayed.wait_for(lambda: publishes[0] >= int(words[1]), 60)
        print("relayed", publishes[0], flush=True)
"""


class BrokerChild(LineChild):
    def __init__(self, script: Path, endpoint: str) -> None:
        self.name = "broker"
        self.wait = WAIT
        self.proc = subprocess.Popen(
            [sys.executable, str(script), endpoint],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready")


def test_a_broker_restarted_while_a_durable_node_is_down(
    cluster: list[Any], tmp_path: Path
) -> None:
    script = tmp_path / "broker_child.py"
    script.write_text(BROKER_CHILD)
    hub = f"ipc://{tmp_path}/hub.sock"
    broker = BrokerChild(script, hub)
    cluster.append(broker)
    a = start(cluster, name="a", peers=[hub], path=str(tmp_path / "a"), node=FAST)
    d_config = {
        "name": "d",
        "peers": [hub],
        "path": str(tmp_path / "d"),
        "pattern": "job.*",
        "durable": "w",
        "node": FAST,
    }
    d = start(cluster, **d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.run 0 50", "published")
    d.wait_data(set(range(50)))
    d.kill()
    a.ask("publish job.run 50 80", "published")  # d is down
    broker.kill()
    a.ask("publish job.run 80 110", "published")  # d and the broker are down
    broker = BrokerChild(script, hub)
    cluster.append(broker)
    a.ask("publish job.run 110 130", "published")
    d = start(cluster, **d_config)
    d.ask("sync a", "synced")
    a.ask("publish job.run 130 140", "published")
    got = d.wait_data(set(range(50, 140)))
    data = in_order_once(got, "a")
    assert data[-90:] == list(range(50, 140))
    gaps_add_up(settled(d))
    assert d.ask("journal job.run", "journal ") == "journal " + str(list(range(140)))
    d.close()
    a.close()


# -- a recovery whose origin is paused for longer than its tries would last ------------------


def test_a_recovery_from_a_paused_origin_is_parked_not_given_up(
    cluster: list[Any], tmp_path: Path
) -> None:
    n, chunk = 4000, 500
    with EventBus(node=NodeConfig(name="c", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        a = start(
            cluster,
            name="a",
            listen="tcp://127.0.0.1:*",
            path=str(tmp_path / "a"),
            node={**FAST, "batch_size": 1, "send_hwm": 50, "send_queue": 500},
        )
        b = start(
            cluster,
            name="b",
            peers=[a.endpoint, bus.endpoints["request"]],
            pattern="flood.*",
            node={**FAST, "receive_hwm": 50},
        )
        b.ask("sync a,c", "synced")
        a.ask("publish flood.x 0 10", "published")
        b.wait_data(set(range(10)))
        stop(b)
        a.ask("gone b", "gone")
        for lo in range(10, n, chunk):  # frames dropped at the high-water marks
            a.ask(f"publish flood.x {lo} {min(lo + chunk, n)}", "published")
        stop(a)
        cont(b)  # b finds the gaps in what it buffered; their origin is paused
        assert wait_for(lambda: b.stats()["gaps_open"] >= 1, WAIT), b.stats()
        # Longer than 4 tries (2 x heartbeat_timeout each) while a is silent.
        tries = 4 * 2 * FAST["heartbeat_timeout"]

        def silent() -> bool:
            _, heard = bus.remote_metrics("b", timeout=WAIT)
            return heard.get("a", 0.0) > tries + 1.0

        assert wait_for(silent, WAIT)
        cont(a)
        got = b.wait_data(set(range(n)))
        assert in_order_once(got, "a") == list(range(n))
        stats = settled(b)
        gaps_add_up(stats)
        assert stats["gaps_unrecovered"] == 0, stats
        b.close()
        a.close()


# -- an origin without a journal restarted under its name ------------------------------------


def test_an_origin_without_a_journal_restarted_on_another_port_starts_a_new_stream(
    cluster: list[Any], tmp_path: Path
) -> None:
    b = start(cluster, name="b", listen="tcp://127.0.0.1:*", pattern="job.*", node=FAST)
    a_config = {
        "name": "a",
        "listen": f"ipc://{tmp_path}/a1.sock",
        "peers": [b.endpoint],
        "node": FAST,
    }
    a = start(cluster, **a_config)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 100", "published")
    b.wait_data(set(range(100)))
    a.kill()
    a = start(cluster, **{**a_config, "listen": f"ipc://{tmp_path}/a2.sock"})
    a.ask("publish job.run 100 200", "published")  # before b follows the new stream
    a.ask("sync b", "synced")
    a.ask("publish job.run 200 210", "published")
    got = b.wait_data(set(range(210)))
    # The new stream is fetched from its first event: nothing lost, nothing twice.
    assert in_order_once(got, "a") == list(range(210))
    gaps_add_up(settled(b))
    a.close()
    b.close()


# -- publish_remote to a paused target, retried after it resumes ------------------------------


def test_publish_remote_to_a_paused_node_times_out_and_the_retry_publishes_once(
    cluster: list[Any], tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        got = Collector()
        bus.subscribe("job.*", got)
        b = start(
            cluster,
            name="b",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            path=str(tmp_path / "b"),
            node=FAST,
        )
        assert bus.wait_for_peers(["b"], WAIT)
        b.ask("sync a", "synced")
        event = Event(event_type="job.once", data="once")
        stop(b)
        with pytest.raises(NoAnswerError):
            bus.publish_remote("b", event, timeout=0.5)
        assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
        cont(b)  # b now takes the request that waited in its socket
        assert node_of(bus).wait(lambda s: "b" in s.peers_alive, WAIT)
        again = bus.publish_remote("b", event, timeout=WAIT)
        assert again.id == event.id
        assert again.origin == "b"
        b.ask("publish job.after 0 1", "published")
        assert wait_for(lambda: any(e.event_type == "job.after" for e in got.events), WAIT)
        assert b.ask("journal job.once", "journal ") == 'journal ["once"]'
        assert [e.data for e in got.events if e.event_type == "job.once"] == ["once"]
        b.close()


# -- a durable receiver killed in the middle of its recovery ---------------------------------


def test_a_durable_receiver_killed_during_its_recovery_journals_each_event_once(
    cluster: list[Any], tmp_path: Path
) -> None:
    n, chunk = 6000, 500
    a = start(
        cluster,
        name="a",
        listen="tcp://127.0.0.1:*",
        path=str(tmp_path / "a"),
        node={**FAST, "batch_size": 1, "send_hwm": 50, "send_queue": 500},
    )
    b_config = {
        "name": "b",
        "peers": [a.endpoint],
        "path": str(tmp_path / "b"),
        "pattern": "flood.*",
        "durable": "w",
        "node": {**FAST, "receive_hwm": 50, "credit_window": 500},
    }
    b = start(cluster, **b_config)
    b.ask("sync a", "synced")
    b.ask("subscribe $bus.peer.lost", "subscribed")  # what it announces as lost
    a.ask("publish flood.x 0 10", "published")
    b.wait_data(set(range(10)))
    stop(b)
    a.ask("gone b", "gone")
    for lo in range(10, n, chunk):
        a.ask(f"publish flood.x {lo} {min(lo + chunk, n)}", "published")
    cont(b)
    # Kill b once it handled part of what it had to fetch, not all of it.
    assert wait_for(lambda: len(b.got) >= n // 3, WAIT), len(b.got)
    b.kill()
    first = in_order_once(b.got, "a")
    b = start(cluster, **b_config)
    b.ask("sync a", "synced")
    a.ask(f"publish flood.x {n} {n + 1}", "published")
    got = b.wait_data(set(range(first[-1] + 1, n + 1)))
    data = in_order_once(got, "a")
    assert data[-1] == n
    assert set(first) | set(data) == set(range(n + 1))
    stats = settled(b)
    gaps_add_up(stats)
    assert b.ask("journal flood.x", "journal ") == "journal " + str(list(range(n + 1)))
    b.close()
    a.close()


# -- a request in flight through a paused broker ---------------------------------------------


def test_a_request_through_a_paused_broker_times_out_cleanly(
    cluster: list[Any], tmp_path: Path
) -> None:
    script = tmp_path / "broker_child.py"
    script.write_text(BROKER_CHILD)
    hub = f"ipc://{tmp_path}/hub.sock"
    broker = BrokerChild(script, hub)
    cluster.append(broker)
    with EventBus(node=NodeConfig(name="a", peers=(hub,), **FAST)) as bus:
        b = Responder(name="b", pattern="svc.*", peers=[hub])
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        b.ask("sync a", "synced")
        assert bus.request("svc.echo", 1, timeout=WAIT).data == {"node": "b", "echo": 1}
        stop(broker)
        with pytest.raises(RequestTimeoutError):
            bus.request("svc.echo", 2, timeout=1.0)
        assert bus.pending_requests() == 0
        assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
        cont(broker)
        assert node_of(bus).wait(lambda s: "b" in s.peers_alive, WAIT)
        assert bus.request("svc.echo", 3, timeout=WAIT).data == {"node": "b", "echo": 3}
        assert bus.pending_requests() == 0
        gaps_add_up(node_of(bus).statistics())
        b.close()


# -- a responder killed and restarted on another port with a request in flight --------------


def test_a_request_in_flight_when_the_responder_is_killed_then_a_restarted_one_answers(
    cluster: list[Any],
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        peers = [bus.endpoints["request"]]
        b = Responder(name="b", pattern="svc.*", listen="tcp://127.0.0.1:*", peers=peers)
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        b.ask("sync a", "synced")
        assert bus.request("svc.echo", 1, timeout=WAIT).data == {"node": "b", "echo": 1}
        stop(b)  # the request goes out while b cannot take it, then b dies
        outcome: list[BaseException | Event] = []

        def ask() -> None:
            try:
                outcome.append(bus.request("svc.echo", 2, timeout=1.5))
            except BaseException as exc:  # checked below
                outcome.append(exc)

        asker = threading.Thread(target=ask)
        asker.start()
        b.kill()
        asker.join(WAIT)
        assert not asker.is_alive()
        assert isinstance(outcome[0], RequestTimeoutError), outcome
        assert bus.pending_requests() == 0
        b = Responder(name="b", pattern="svc.*", listen="tcp://127.0.0.1:*", peers=peers)
        cluster.append(b)
        b.ask("sync a", "synced")
        assert bus.request("svc.echo", 3, timeout=WAIT).data == {"node": "b", "echo": 3}
        assert bus.pending_requests() == 0
        gaps_add_up(node_of(bus).statistics())
        b.close()


# -- publish_remote to a node restarted at once on another port ------------------------------


def test_publish_remote_reaches_a_node_restarted_at_once_on_another_port(
    cluster: list[Any], tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        got = Collector()
        bus.subscribe("job.*", got)
        b, b_config = remote_target(cluster, tmp_path, bus, FAST)
        b.kill()  # and at once, on another endpoint: a may still hold b alive
        b = start(cluster, **{**b_config, "listen": f"ipc://{tmp_path}/b2.sock"})
        b.ask("sync a", "synced")
        second = bus.publish_remote("b", "job.two", 2, timeout=WAIT)
        assert second.origin == "b"
        assert wait_for(lambda: [e.data for e in got.events] == [1, 2], WAIT), got.data
        assert b.ask("journal job.two", "journal ") == "journal [2]"
        gaps_add_up(node_of(bus).statistics())
        b.close()


# -- publish_remote sent while its target restarts ---------------------------------------------


# Regression: a publish_remote sent on the route of a target that had just died was lost
# with that connection, and the caller waited out its whole timeout (NoAnswerError) though
# the target came back at once.  While the target still counts as alive (a restart within
# heartbeat_timeout), the ask now waits for its new connection and is sent again on it.
def test_publish_remote_sent_while_its_target_restarts_reaches_the_new_incarnation(
    cluster: list[Any], tmp_path: Path
) -> None:
    timing = {"heartbeat_interval": 0.1, "heartbeat_timeout": 60.0}
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **timing)) as bus:
        b, b_config = remote_target(cluster, tmp_path, bus, timing)
        b.kill()
        caller = in_background(lambda: bus.publish_remote("b", "job.two", 2, timeout=WAIT))
        assert node_of(bus).wait(lambda s: s.requests_waiting == 1, WAIT), caller[1]
        b = start(cluster, **b_config)
        second = finished(*caller, timeout=WAIT + 10)
        assert isinstance(second, Event), second
        assert second.origin == "b"
        assert b.ask("journal job.two", "journal ") == "journal [2]"
        stats = node_of(bus).statistics()
        assert stats.requests_resent >= 1
        assert stats.requests_waiting == 0
        b.close()


# A target whose connection closed and that is declared dead is not connected: the caller
# is told so at once (it waited out its whole timeout for NoAnswerError before), and
# reaches the target again once it is back.
def test_publish_remote_to_a_target_that_died_is_not_connected_until_it_is_back(
    cluster: list[Any], tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        b, b_config = remote_target(cluster, tmp_path, bus, FAST)
        b.kill()
        assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
        with pytest.raises(NotConnectedError):
            bus.publish_remote("b", "job.lost", 0, timeout=WAIT)
        assert node_of(bus).statistics().requests_waiting == 0
        b = start(cluster, **b_config)
        assert bus.wait_for_peers(["b"], WAIT)
        assert bus.publish_remote("b", "job.two", 2, timeout=WAIT).origin == "b"
        assert b.ask("journal job.two", "journal ") == "journal [2]"
        assert b.ask("journal job.lost", "journal ") == "journal []"
        b.close()


def remote_target(
    cluster: list[Any], tmp_path: Path, bus: EventBus, timing: dict[str, float]
) -> tuple[Node, dict[str, Any]]:
    """Start node b (persistent, linked to ``bus``) and publish job.one 1 on it remotely."""
    b_config = {
        "name": "b",
        "listen": f"ipc://{tmp_path}/b.sock",
        "peers": [bus.endpoints["request"]],
        "path": str(tmp_path / "b"),
        "node": timing,
    }
    b = start(cluster, **b_config)
    assert bus.wait_for_peers(["b"], WAIT)
    b.ask("sync a", "synced")
    assert bus.publish_remote("b", "job.one", 1, timeout=WAIT).origin == "b"
    return b, b_config


# -- an origin without a journal restarted while its receiver is paused ----------------------


def test_an_origin_without_a_journal_restarted_while_its_receiver_is_paused(
    cluster: list[Any], tmp_path: Path
) -> None:
    a_config = {"name": "a", "listen": f"ipc://{tmp_path}/a.sock", "node": FAST}
    a = start(cluster, **a_config)
    b = start(cluster, name="b", peers=[a.endpoint], pattern="job.*", node=FAST)
    b.ask("sync a", "synced")
    a.ask("publish job.run 0 100", "published")
    b.wait_data(set(range(100)))
    stop(b)
    a.ask("gone b", "gone")
    a.ask("publish job.run 100 200", "published")  # old epoch, b paused
    a.kill()
    a = start(cluster, **a_config)
    a.ask("publish job.run 1000 1100", "published")  # new epoch, b still paused
    cont(b)
    a.ask("peers b", "peers")
    a.ask("publish job.run 1100 1110", "published")
    got = b.wait_data(set(range(1000, 1110)))
    data = in_order_once(got, "a")  # no duplicate; old epoch before new, each in order
    assert [d for d in data if d >= 1000] == list(range(1000, 1110))
    assert data[:100] == list(range(100))
    gaps_add_up(settled(b))
    a.close()
    b.close()
