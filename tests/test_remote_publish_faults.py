"""``publish_remote`` against a target node in another OS process, under kills and pauses.

What ``docs/wire.md`` (PUBLISH) and ``docs/cluster.md`` promise: the target
publishes the event with its own origin and sequence, answers once it is
journaled (a persistent target), and publishes an id once: a repeated request
(a retry after a lost answer, one racing the first, one that reaches the
target restarted after a kill) gets the event published the first time. The
caller gets a typed ``BridgeError`` for every failure.

The target runs ``TARGET_CHILD`` (written into ``tmp_path``): a node that can
hold its answer (its I/O thread blocked from a filter that runs in the router,
before the journal receives the event) and report when the event is journaled,
so the parent can kill it between the two. The parent synchronises on the
child's lines and on bounded condition waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
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
    EventTooLargeError,
    NoAnswerError,
    NodeConfig,
    NotConnectedError,
    PeerRefusedError,
    PersistentEventBus,
)
from tests._support import Collector, LineChild, finished, in_background, pause, reaped, wait_for
from tests.test_cluster_fault_edges import BROKER_CHILD, BrokerChild

pytestmark = pytest.mark.slow

WAIT = 25.0
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}

TARGET_CHILD = r"""
import faulthandler, json, logging, signal, sys, threading
from dataclasses import asdict
from actors import EventBus, EventConfig, EventQuery, NodeConfig, PersistentEventBus

logging.basicConfig(level="WARNING", stream=sys.stderr)
faulthandler.register(signal.SIGUSR1)  # a stuck child's stacks, on demand


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


cfg = json.loads(sys.argv[1])
node = NodeConfig(
    name=cfg["name"],
    listen=cfg.get("listen"),
    peers=tuple(cfg.get("peers", ())),
    **cfg.get("node", {}),
)
if cfg.get("path"):
    config = EventConfig(
        persistence_path=cfg["path"],
        durability=cfg.get("durability", "sync"),
        read_only=cfg.get("read_only", False),
    )
    bus = PersistentEventBus(config, node=node)
else:
    bus = EventBus(node=node)
bridge = bus.node
gate = threading.Event()
armed = set()


def stored(kind):
    found = bus.query(EventQuery(event_types=[kind]))
    return [[str(e.id), e.sequence, e.origin, e.data] for e in found]


def block():
    say("held")
    gate.wait(120)


def watch(kind):
    done = threading.Event()
    while not stored(kind):
        done.wait(0.01)
    say("journaled")


def hold(event):
    # Runs in the router, before the journal receives the event: the I/O
    # thread takes ``block`` before the answer, which waits for the journal.
    if event.event_type in armed:
        armed.discard(event.event_type)
        bridge.call_soon(block)
        threading.Thread(target=watch, args=(event.event_type,), daemon=True).start()
    return True


bus.subscribe("**", lambda event: None, filter=hold)
say("ready " + str(bridge.endpoints["request"]))
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    command = words[0]
    if command == "arm":
        armed.add(words[1])
        say("armed")
    elif command == "linked":
        say("linked " + ",".join(bridge.linked_nodes(60)))
    elif command == "sync":
        say("synced" if bridge.wait_for_peers(words[1].split(","), 60) else "not-synced")
    elif command == "publish":
        bus.publish(words[1], words[2]).get(timeout=60)
        bus.flush(60)
        say("published")
    elif command == "journal":
        say("journal " + json.dumps(stored(words[1])))
    elif command == "stats":
        stats = asdict(bridge.statistics())
        stats.pop("counters", None)
        say("stats " + json.dumps(stats))
    elif command == "close":
        gate.set()
        bus.close(60)
        say("closed")
        break
"""


class Target(LineChild):
    """A node in a child process running ``TARGET_CHILD``."""

    def __init__(self, script: Path, **config: Any) -> None:
        super().__init__(script, config, wait=WAIT, name=config["name"])
        self.endpoint = self.expect("ready").split()[1]

    def journal(self, kind: str) -> list[list[Any]]:
        """``[id, sequence, origin, data]`` of each journaled event of ``kind``, in order."""
        result: list[list[Any]] = json.loads(self.ask(f"journal {kind}", "journal ")[8:])
        return result

    def linked(self) -> None:
        """Return once every peer it dials answered its greeting (so knows its new route)."""
        self.ask("linked", "linked ")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask("close", "closed")
            try:
                self.proc.wait(self.wait)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGUSR1)  # its stacks, on stderr
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2.0)
                raise AssertionError(f"{self.name} still runs after its bus closed") from None

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ask("stats", "stats ")[6:])
        return result


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "target_child.py"
    path.write_text(TARGET_CHILD)
    return path


def node_of(bus: EventBus) -> Any:
    assert bus.node is not None
    return bus.node


def seen_once(got: Collector, marker: Target, kind: str) -> list[Event]:
    """Once a marker the target published after ``kind`` arrived, the events of ``kind``."""
    marker.ask("publish job.after x", "published")
    assert wait_for(lambda: any(e.event_type == "job.after" for e in got.events), WAIT)
    return [e for e in got.events if e.event_type == kind]


# -- the target is killed after it journaled the event, before its answer left ---------------


def held_publish(
    bus: EventBus, b: Target, timeout: float
) -> tuple[Event, threading.Thread, list[Any]]:
    """Publish ``job.once`` on ``b``; return once ``b`` journaled it and holds its answer."""
    b.ask("sync a", "synced")
    b.ask("arm job.once", "armed")
    event = Event(event_type="job.once", data="once")
    thread, outcome = in_background(lambda: bus.publish_remote("b", event, timeout=timeout))
    assert {b.lines.get(timeout=WAIT) for _ in range(2)} == {"held", "journaled"}
    return event, thread, outcome


def test_a_target_killed_between_its_journal_and_its_answer_publishes_the_retry_once(
    cluster: list[Any], script: Path, tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        got = Collector()
        bus.subscribe("job.*", got)
        config = {
            "name": "b",
            "listen": "tcp://127.0.0.1:*",
            "peers": [bus.endpoints["request"]],
            "path": str(tmp_path / "b"),
            "durability": "sync",
            "node": FAST,
        }
        b = Target(script, **config)
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        event, thread, outcome = held_publish(bus, b, 3.0)
        [(stored_id, stored_seq, origin, data)] = b.journal("job.once")
        assert (stored_id, origin, data) == (str(event.id), "b", "once")
        b.kill()
        first = finished(thread, outcome)
        assert isinstance(first, (NoAnswerError, NotConnectedError)), first
        b = Target(script, **config)
        cluster.append(b)
        b.linked()
        assert node_of(bus).wait(lambda s: "b" in s.peers_alive, WAIT)
        b.ask("sync a", "synced")
        again = bus.publish_remote("b", event, timeout=WAIT)  # the caller's retry
        assert (again.id, again.origin, again.sequence) == (event.id, "b", stored_seq)
        assert b.journal("job.once") == [[stored_id, stored_seq, "b", "once"]]
        # a followed b's stream: the event journaled but never sent arrives, once.
        assert [e.sequence for e in seen_once(got, b, "job.once")] == [stored_seq]
        b.close()


# -- the answer is held past the caller's timeout; the target stays up ------------------------


def test_an_answer_held_past_the_timeout_then_a_retry_gets_the_first_publish(
    cluster: list[Any], script: Path, tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        got = Collector()
        bus.subscribe("job.*", got)
        b = Target(
            script,
            name="b",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            path=str(tmp_path / "b"),
            node=FAST,
        )
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        event, thread, outcome = held_publish(bus, b, 1.0)
        # The answer cannot leave while b's I/O thread is held: the caller gives up.
        assert isinstance(finished(thread, outcome), NoAnswerError), outcome
        retry, retried = in_background(lambda: bus.publish_remote("b", event, timeout=5.0))
        b.ask("close", "closed")  # releases the I/O thread, answers what it can, closes
        b.proc.wait(WAIT)
        answer = finished(retry, retried)
        # The retry reached b before it closed (answered with the first publish) or not.
        if isinstance(answer, Event):
            assert (answer.id, answer.origin) == (event.id, "b")
        else:
            assert isinstance(answer, BridgeError), answer
    config = EventConfig(persistence_path=str(tmp_path / "b"), read_only=True)
    with PersistentEventBus(config) as stored:
        assert [e.id for e in stored.query(EventQuery(event_types=["job.once"]))] == [event.id]


# -- retries sent while the target is paused race the first attempt ---------------------------


@pytest.mark.parametrize("persistent", [True, False], ids=["journal", "memory"])
def test_retries_queued_at_a_paused_target_publish_once(
    cluster: list[Any], script: Path, tmp_path: Path, persistent: bool
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        got = Collector()
        bus.subscribe("job.*", got)
        config: dict[str, Any] = {
            "name": "b",
            "listen": "tcp://127.0.0.1:*",
            "peers": [bus.endpoints["request"]],
            "node": FAST,
        }
        if persistent:
            config["path"] = str(tmp_path / "b")
        b = Target(script, **config)
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        b.ask("sync a", "synced")
        event = Event(event_type="job.once", data="once")
        pause(b.proc)
        for _ in range(2):  # each times out, each request waits in b's socket
            with pytest.raises(NoAnswerError):
                bus.publish_remote("b", event, timeout=0.3)
        callers = [
            in_background(lambda: bus.publish_remote("b", event, timeout=WAIT)) for _ in range(3)
        ]
        os.kill(b.proc.pid, signal.SIGCONT)
        answers = [finished(thread, outcome) for thread, outcome in callers]
        assert all(isinstance(a, Event) for a in answers), answers
        assert {(a.id, a.origin, a.sequence) for a in answers} == {
            (event.id, "b", answers[0].sequence)
        }
        if persistent:
            assert [row[1] for row in b.journal("job.once")] == [answers[0].sequence]
        assert [e.sequence for e in seen_once(got, b, "job.once")] == [answers[0].sequence]
        b.close()


# -- many callers retry many ids at once ------------------------------------------------------


def test_concurrent_repeats_of_many_ids_publish_each_id_once(
    cluster: list[Any], script: Path, tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        b = Target(
            script,
            name="b",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            path=str(tmp_path / "b"),
            durability="sync",
            node=FAST,
        )
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        events = [Event(event_type="job.many", data=i) for i in range(25)]
        start = threading.Barrier(6)

        def caller(order: list[Event]) -> dict[Any, int | None]:
            start.wait(WAIT)
            return {e.id: bus.publish_remote("b", e, timeout=WAIT).sequence for e in order}

        callers = [
            in_background(lambda k=k: caller(events[k:] + events[:k])) for k in range(0, 24, 4)
        ]
        results = [finished(thread, outcome) for thread, outcome in callers]
        for result in results:
            assert isinstance(result, dict), result
            assert result == results[0]  # every caller got the same publish of each id
        rows = b.journal("job.many")
        assert sorted(row[3] for row in rows) == list(range(25))  # each id journaled once
        assert {row[0]: row[1] for row in rows} == {str(k): v for k, v in results[0].items()}
        b.close()


# -- sizes: refused at the caller, or by a target with a smaller limit -------------------------


def test_an_event_over_the_frame_limit_is_refused_and_the_link_keeps_working(
    cluster: list[Any], script: Path, tmp_path: Path
) -> None:
    limit = 2 * 66_560
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        b = Target(
            script,
            name="b",
            listen="tcp://127.0.0.1:*",
            peers=[bus.endpoints["request"]],
            path=str(tmp_path / "b"),
            node={**FAST, "max_frame_bytes": limit},
        )
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        # Over the caller's own limit: refused at once, nothing sent.
        with pytest.raises(EventTooLargeError):
            bus.publish_remote("b", "job.big", "x" * (16 * 1024 * 1024), timeout=WAIT)
        # Within the caller's limit, over the target's: the target publishes nothing
        # and refuses, with its reason (an event too large to send on, a request too
        # large to read), instead of leaving the caller to wait out its timeout.
        for size, reason in ((limit - 60_000, "at most"), (2 * limit, "larger than")):
            with pytest.raises(PeerRefusedError, match=reason):
                bus.publish_remote("b", "job.big", "x" * size, timeout=WAIT)
        small = bus.publish_remote("b", "job.small", "ok", timeout=WAIT)
        assert small.origin == "b"
        assert [row[3] for row in b.journal("job.small")] == ["ok"]
        assert b.journal("job.big") == []
        b.close()


# -- names nobody answers to ------------------------------------------------------------------


def test_an_unknown_or_departed_node_name_is_a_typed_error(
    cluster: list[Any], script: Path, tmp_path: Path
) -> None:
    broker_script = tmp_path / "broker_child.py"
    broker_script.write_text(BROKER_CHILD)
    hub = f"ipc://{tmp_path}/hub.sock"
    broker = BrokerChild(broker_script, hub)
    cluster.append(broker)
    with EventBus(node=NodeConfig(name="a", peers=(hub,), **FAST)) as bus:
        with pytest.raises(NotConnectedError):
            bus.publish_remote("b", "job.early", 0, timeout=WAIT)  # b has not joined yet
        b = Target(script, name="b", peers=[hub], path=str(tmp_path / "b"), node=FAST)
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        assert bus.publish_remote("b", "job.one", 1, timeout=WAIT).origin == "b"
        with pytest.raises(NotConnectedError):  # the broker knows no such node
            bus.publish_remote("nobody", "job.lost", 0, timeout=WAIT)
        b.close()
        with pytest.raises((NotConnectedError, NoAnswerError)):
            bus.publish_remote("b", "job.late", 2, timeout=2.0)
        b = Target(script, name="b", peers=[hub], path=str(tmp_path / "b"), node=FAST)
        cluster.append(b)
        assert [row[3] for row in b.journal("job.one")] == [1]
        assert b.journal("job.early") == b.journal("job.lost") == b.journal("job.late") == []
        b.close()


# -- a target whose journal is read-only ------------------------------------------------------


def test_a_read_only_target_refuses_and_a_retry_after_reopening_publishes_once(
    cluster: list[Any], script: Path, tmp_path: Path
) -> None:
    path = str(tmp_path / "b")
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        peers = [bus.endpoints["request"]]
        b = Target(script, name="b", listen="tcp://127.0.0.1:*", peers=peers, path=path, node=FAST)
        cluster.append(b)
        assert bus.wait_for_peers(["b"], WAIT)
        before = bus.publish_remote("b", "job.before", 0, timeout=WAIT)
        b.close()
        b = Target(
            script,
            name="b",
            listen="tcp://127.0.0.1:*",
            peers=peers,
            path=path,
            read_only=True,
            node=FAST,
        )
        cluster.append(b)
        b.linked()  # a took the route of the new b (a request sent before would be lost)
        assert node_of(bus).wait(lambda s: "b" in s.peers_alive, WAIT)
        event = Event(event_type="job.once", data="once")
        for _ in range(2):  # a refusal is not remembered as a publish
            with pytest.raises(PeerRefusedError, match="read-only"):
                bus.publish_remote("b", event, timeout=WAIT)
        assert b.journal("job.once") == []
        b.close()
        b = Target(script, name="b", listen="tcp://127.0.0.1:*", peers=peers, path=path, node=FAST)
        cluster.append(b)
        b.linked()
        assert node_of(bus).wait(lambda s: "b" in s.peers_alive, WAIT)
        again = bus.publish_remote("b", event, timeout=WAIT)
        assert again.origin == "b"
        assert again.sequence is not None
        assert before.sequence is not None
        assert again.sequence > before.sequence
        assert [row[1] for row in b.journal("job.once")] == [again.sequence]
        b.close()


# -- a persistent node closed right after it joined ------------------------------------------


# Regression: a bus whose close() returned leaves nothing that keeps its process
# alive. A persistent node closed while its bridge worker still loads a peer's
# watermark (the worker's LoadCheckpoint reaches the router after it stopped) must
# not hold the interpreter's exit: that read is never answered, and the worker
# thread (joined at exit) waits out its 30 s timeout before the process can end.
def test_a_persistent_node_closed_right_after_it_joined_exits(
    cluster: list[Any], script: Path, tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **FAST)) as bus:
        bus.publish("job.seen", 0).get(timeout=WAIT)
        for _ in range(5):  # the same journal: from the second on, it holds a's watermark
            b = Target(script, name="b", peers=[bus.endpoints["request"]], path=str(tmp_path / "b"))
            cluster.append(b)
            b.journal("job.seen")
            b.close()  # fails if the process outlives its closed bus
