"""Requests to a node that is killed and restarted, checked against ``docs/cluster.md``.

Section "A request waits for a restarting node": a request taken on the way
by a node that then restarts within ``heartbeat_timeout`` is answered by its
next incarnation and published there once; a request waiting for a node
declared dead with its connection closed ends with ``NotConnectedError``;
a second node greeting under a live node's name takes none of its requests;
under a loop of kills and restarts every request ends answered or with a
typed ``BridgeError``, and retrying the failed ones publishes each once.

Node ``a`` runs in this process; ``b`` is a persistent child
(``tests/_node_child.py``) on one ipc endpoint, reached over the connection it
opened to ``a``, over ``a``'s own link to it, or through a broker child.
The test synchronises on child lines, queues and the node's own statistics.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import (
    Event,
    EventBus,
    EventQuery,
    NodeConfig,
    NotConnectedError,
)
from tests._support import finished, in_background, pause, reaped, wait_for
from tests.test_cluster import Node, start
from tests.test_cluster_fault_edges import FAST, WAIT, cont, node_of, remote_target
from tests.test_requests_broker_faults import Hub

pytestmark = pytest.mark.slow

SLOW_DEATH: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 60.0}
"""Peers never declared dead during the test: a restart is always within the timeout."""

QUICK_DEATH: dict[str, Any] = dict(FAST)
"""Peers declared dead 0.6 s after they were last heard."""

ASK = 10.0
"""The timeout of a request that must end before it (answered, or not connected)."""


@pytest.fixture
def cluster() -> Iterator[list[Any]]:
    yield from reaped(WAIT)


def result_of(call: Callable[[], Any]) -> Any:
    """Return what ``call()`` gives: its result, or the exception it raised."""
    try:
        return call()
    except Exception as exc:  # the outcome is checked by the test
        return exc


def journal(node: Node, event_type: str) -> list[Any]:
    data: list[Any] = json.loads(node.ask(f"journal {event_type}", "journal ")[len("journal ") :])
    return data


# -- a request taken by a node killed before it answered -----------------------------------


# Regression: over a's own link to b (a has b's endpoint in peers) and through a
# broker, a publish_remote that b took while paused, b then killed and restarted (on
# the same endpoint, or behind the same broker) while a still counts it alive, was
# never sent again: the caller got NoAnswerError at its timeout and the restarted b's
# journal held no job.two.  Hearing b's new incarnation now sends it again.
@pytest.mark.parametrize("way", ["a_links_to_b", "broker"])
def test_a_request_taken_by_a_node_killed_before_answering_is_answered_by_its_restart(
    cluster: list[Any], tmp_path: Path, way: str
) -> None:
    b_config: dict[str, Any] = {
        "name": "b",
        "path": str(tmp_path / "b"),
        "node": SLOW_DEATH,
    }
    if way == "broker":
        hub = Hub(tmp_path, cluster)
        b_config["peers"] = [hub.endpoint]
        a_peers = (hub.endpoint,)
        b = start(cluster, **b_config)
    else:
        b_config["listen"] = f"ipc://{tmp_path}/b.sock"
        b = start(cluster, **b_config)
        a_peers = (b.endpoint,)
    with EventBus(node=NodeConfig(name="a", peers=a_peers, **SLOW_DEATH)) as bus:
        assert bus.wait_for_peers(["b"], WAIT)
        assert bus.publish_remote("b", "job.one", 1, timeout=WAIT).origin == "b"
        pause(b.proc)
        event = Event(event_type="job.two", data=2)
        published = in_background(lambda: bus.publish_remote("b", event, timeout=ASK))
        assert node_of(bus).wait(lambda s: s.requests_waiting == 1, WAIT)
        if way == "broker":  # taken: the broker passed it on to b before b dies
            hub.child.ask("relayed 2", "relayed")
        b.kill()
        b = start(cluster, **b_config)
        second = finished(*published, timeout=ASK + WAIT)
        stats = node_of(bus).statistics()
        assert isinstance(second, Event), (second, stats.requests_resent, journal(b, "job.two"))
        assert second.id == event.id
        assert second.origin == "b"
        assert journal(b, "job.two") == [2]
        assert node_of(bus).wait(lambda s: s.requests_waiting == 0, WAIT)
        b.close()


# -- requests waiting for a node declared dead, then killed ---------------------------------


# Regression: b paused until a declares it dead, a publish_remote, a query and a
# remote_metrics sent to it meanwhile, then b killed: the three requests were not
# ended once its connection closed (nothing was sent on it to tell); each waited out
# its whole timeout for NoAnswerError.  They now end with NotConnectedError.
def test_requests_waiting_for_a_dead_node_end_not_connected_once_its_connection_closes(
    cluster: list[Any], tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **QUICK_DEATH)) as bus:
        b, b_config = remote_target(cluster, tmp_path, bus, QUICK_DEATH)
        pause(b.proc)
        assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
        event = Event(event_type="job.two", data=2)
        outcomes = [
            in_background(lambda: bus.publish_remote("b", event, timeout=ASK)),
            in_background(
                lambda: bus.query(EventQuery(event_types=["job.one"]), node="b", timeout=ASK)
            ),
            in_background(lambda: bus.remote_metrics("b", timeout=ASK)),
        ]
        assert node_of(bus).wait(lambda s: s.requests_waiting == 3, WAIT)
        b.kill()
        ended = [finished(*outcome, timeout=ASK + WAIT) for outcome in outcomes]
        assert [type(e) for e in ended] == [NotConnectedError] * 3, ended
        assert node_of(bus).wait(lambda s: s.requests_waiting == 0, WAIT)
        # Back again, the retry publishes the event once.
        b = start(cluster, **b_config)
        assert bus.wait_for_peers(["b"], WAIT)
        again = bus.publish_remote("b", event, timeout=WAIT)
        assert again.id == event.id
        assert again.origin == "b"
        assert journal(b, "job.two") == [2]
        b.close()


# -- through a broker, a node whose connection to it closed ------------------------------------


# Regression: a broker passed a request on to the closed connection of a node that had
# died, where it vanished; the caller waited out its timeout for NoAnswerError (and
# so did every request after it until the node came back).  The broker now answers
# such a request at once, so the caller gets NotConnectedError, and the node, once
# back, gets the next one.
def test_a_request_through_a_broker_to_a_node_that_died_is_not_connected_until_it_is_back(
    cluster: list[Any], tmp_path: Path
) -> None:
    hub = Hub(tmp_path, cluster)
    b_config: dict[str, Any] = {
        "name": "b",
        "peers": [hub.endpoint],
        "path": str(tmp_path / "b"),
        "node": SLOW_DEATH,
    }
    b = start(cluster, **b_config)
    with EventBus(node=NodeConfig(name="a", peers=(hub.endpoint,), **SLOW_DEATH)) as bus:
        assert bus.wait_for_peers(["b"], WAIT)
        assert bus.publish_remote("b", "job.one", 1, timeout=WAIT).origin == "b"
        b.kill()
        lost = Event(event_type="job.lost", data=0)

        def refused() -> bool:
            return isinstance(
                result_of(lambda: bus.publish_remote("b", lost, timeout=2.0)), NotConnectedError
            )

        assert wait_for(refused, WAIT)
        b = start(cluster, **b_config)
        two = Event(event_type="job.two", data=2)

        def published() -> bool:
            answer = result_of(lambda: bus.publish_remote("b", two, timeout=2.0))
            return isinstance(answer, Event) and answer.origin == "b"

        assert wait_for(published, WAIT)
        assert journal(b, "job.two") == [2]
        assert journal(b, "job.lost") == []
        b.close()


# -- a second node under the name of a live one ---------------------------------------------


# A node greeting as "b" while the real b is alive and connected (paused here, so
# requests wait for it) receives none of the requests meant for b, neither those
# waiting when it greets nor those made after; the real b answers them all, and
# publishes each event once though they may reach it twice.
def test_a_second_node_under_a_live_nodes_name_never_takes_its_requests(
    cluster: list[Any], tmp_path: Path
) -> None:
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **SLOW_DEATH)) as bus:
        b, b_config = remote_target(cluster, tmp_path, bus, SLOW_DEATH)
        pause(b.proc)
        two = Event(event_type="job.two", data=2)
        published = in_background(lambda: bus.publish_remote("b", two, timeout=WAIT))
        queried = in_background(
            lambda: bus.query(EventQuery(event_types=["job.one"]), node="b", timeout=WAIT)
        )
        assert node_of(bus).wait(lambda s: s.requests_waiting == 2, WAIT)
        other = start(
            cluster,
            **{**b_config, "listen": f"ipc://{tmp_path}/x.sock", "path": str(tmp_path / "x")},
        )
        other.ask("peers a", "peers")  # a welcomed it: its greeting was handled
        three = Event(event_type="job.three", data=3)
        later = in_background(lambda: bus.publish_remote("b", three, timeout=WAIT))
        assert node_of(bus).wait(lambda s: s.requests_waiting == 3, WAIT)
        assert journal(other, "job.two") == []
        cont(b)
        answered = [finished(*published), finished(*later)]
        assert all(isinstance(e, Event) and e.origin == "b" for e in answered), answered
        found = finished(*queried)
        assert isinstance(found, list), found
        assert [e.data for e in found] == [1]  # b's journal: the other node holds no job.one
        assert journal(b, "job.two") == [2]
        assert journal(b, "job.three") == [3]
        assert journal(other, "job.two") == []
        assert journal(other, "job.three") == []
        assert node_of(bus).statistics().requests_waiting == 0
        b.close()
        other.close()


# -- a loop of kills and restarts with requests from threads --------------------------------


class Askers:
    """Threads asking ``b`` to publish events one after the other until ``stop``."""

    def __init__(self, bus: EventBus, threads: int) -> None:
        self.bus = bus
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.outcomes: list[tuple[Event, Any]] = []
        self.answered = 0
        self.threads = [threading.Thread(target=self.ask, args=(t,)) for t in range(threads)]
        for thread in self.threads:
            thread.start()

    def ask(self, thread: int) -> None:
        n = 0
        while not self.stop.is_set():
            event = Event(event_type="job.loop", data=f"{thread}-{n}")
            n += 1
            try:
                outcome: Any = self.bus.publish_remote("b", event, timeout=3.0)
            except Exception as exc:  # the outcome is checked by the test
                outcome = exc
            with self.cond:
                self.outcomes.append((event, outcome))
                self.answered += isinstance(outcome, Event)
                self.cond.notify_all()
            if not isinstance(outcome, Event):
                self.stop.wait(0.02)  # not connected: ask again a little later

    def more_answered(self, count: int) -> None:
        with self.cond:
            wanted = self.answered + count
            assert self.cond.wait_for(lambda: self.answered >= wanted, WAIT), self.outcomes[-5:]

    def finish(self) -> list[tuple[Event, Any]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        return list(self.outcomes)


# b killed at full rate and restarted at once, paused with requests taken then killed,
# and killed until a declares it dead: every request ends answered (published once,
# with origin b) or with NotConnectedError or NoAnswerError; retrying those publishes
# each once, and no request is left waiting.
def test_requests_across_a_restart_loop_end_answered_or_typed_and_retries_publish_once(
    cluster: list[Any], tmp_path: Path
) -> None:
    timing: dict[str, Any] = {"heartbeat_interval": 0.1, "heartbeat_timeout": 2.0}
    with EventBus(node=NodeConfig(name="a", listen="tcp://127.0.0.1:*", **timing)) as bus:
        b, b_config = remote_target(cluster, tmp_path, bus, timing)
        askers = Askers(bus, 3)
        for how in ("at once", "paused", "at once", "declared dead"):
            askers.more_answered(3)
            if how == "paused":
                pause(b.proc)
                assert node_of(bus).wait(lambda s: s.requests_waiting == 3, WAIT)
            b.kill()
            if how == "declared dead":
                assert node_of(bus).wait(lambda s: "b" not in s.peers_alive, WAIT)
            b = start(cluster, **b_config)
        askers.more_answered(3)
        outcomes = askers.finish()
        assert node_of(bus).wait(lambda s: s.requests_waiting == 0, WAIT)
        failed = [e for e, o in outcomes if not isinstance(o, Event)]
        kinds = Counter(type(o).__name__ for _, o in outcomes)
        assert set(kinds) <= {"Event", "NotConnectedError", "NoAnswerError"}, kinds
        for event, outcome in outcomes:
            if isinstance(outcome, Event):
                assert (outcome.id, outcome.origin) == (event.id, "b")
        assert bus.wait_for_peers(["b"], WAIT)
        for event in failed:
            again = bus.publish_remote("b", event, timeout=WAIT)
            assert (again.id, again.origin) == (event.id, "b")
        stored = journal(b, "job.loop")
        twice = [d for d, n in Counter(stored).items() if n > 1]
        assert twice == [], twice
        assert sorted(stored) == sorted(str(e.data) for e, _ in outcomes), kinds
        assert node_of(bus).statistics().requests_waiting == 0
        b.close()
