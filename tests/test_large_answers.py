"""Answers larger than a frame: a node's share of a workflow and a query's result come in pages.

A node refuses to send an answer past its ``max_frame_bytes``; ``get_correlated``
skipped such a peer with a log line (the CLI's ``trace`` then said the workflow
had no events), and ``query --peer`` / ``--follow`` failed outright.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import (
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    NodeConfig,
    PeerRefusedError,
    PersistentEventBus,
)
from tests._support import WAIT, wait_for

EVENTS = 300
PAD = "x" * 1000  # 300 events of about 1 KB: more than twice what one of the hub's frames carries
FRAME = 2 * 65536


def _hub(tmp_path: Path, *, journal: bool) -> EventBus:
    node = NodeConfig(name="hub", listen="tcp://127.0.0.1:*", max_frame_bytes=FRAME)
    if journal:
        return PersistentEventBus(EventConfig(persistence_path=tmp_path / "hub"), node=node)
    return EventBus(node=node)


@pytest.fixture
def pair(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[EventBus, EventBus]]:
    hub = _hub(tmp_path, journal=request.param)
    try:
        asker = EventBus(node=NodeConfig(name="asker", peers=(str(hub.endpoints["request"]),)))
        try:
            assert asker.wait_for_peers(["hub"], WAIT)
            yield hub, asker
        finally:
            asker.close(timeout=WAIT)
    finally:
        hub.close(timeout=WAIT)


def _workflow(hub: EventBus) -> uuid.UUID:
    cid = uuid.uuid4()
    for i in range(EVENTS):
        hub.publish("big.step", {"i": i, "pad": PAD}, correlation_id=cid)
    hub.flush(WAIT)
    return cid


@pytest.mark.parametrize("pair", [True], indirect=True)
def test_a_peers_large_share_of_a_workflow_is_read_in_pages(
    pair: tuple[EventBus, EventBus],
) -> None:
    hub, asker = pair
    cid = _workflow(hub)
    asker.publish("big.start", {}, correlation_id=cid).get(timeout=WAIT)
    got = asker.get_correlated(cid, timeout=WAIT)
    steps = [e.data["i"] for e in got if e.event_type == "big.step"]  # type: ignore[index]
    assert sorted(steps) == list(range(EVENTS))  # before: none of them
    assert len(got) == EVENTS + 1


@pytest.mark.parametrize("pair", [False], indirect=True)
def test_a_large_share_in_memory_only_is_read_in_pages_too(
    pair: tuple[EventBus, EventBus],
) -> None:
    """A node without a journal holds its share in memory: the pages come from there."""
    hub, asker = pair
    cid = _workflow(hub)
    got = asker.get_correlated(cid, timeout=WAIT)  # before: [] and a log line
    assert sorted(e.data["i"] for e in got) == list(range(EVENTS))  # type: ignore[index]


def test_an_answer_larger_than_the_askers_frames_is_paged_too(tmp_path: Path) -> None:
    """The asker's ``max_frame_bytes`` smaller than the hub's: the answer reached it
    and was dropped there, and the caller waited out its timeout."""
    hub = PersistentEventBus(
        EventConfig(persistence_path=tmp_path / "hub"),
        node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*"),
    )
    try:
        peer = str(hub.endpoints["request"])
        node = NodeConfig(name="asker", peers=(peer,), max_frame_bytes=FRAME)
        with EventBus(node=node) as asker:
            assert asker.wait_for_peers(["hub"], WAIT)
            cid = _workflow(hub)
            got = asker.get_correlated(cid, timeout=WAIT)
            assert sorted(e.data["i"] for e in got) == list(range(EVENTS))  # type: ignore[index]
            every = asker.query(EventQuery(event_types=["big.*"]), node="hub", timeout=WAIT)
            assert [e.data["i"] for e in every] == list(range(EVENTS))  # type: ignore[index]
    finally:
        hub.close(timeout=WAIT)


@pytest.mark.parametrize("pair", [True], indirect=True)
def test_an_ascending_query_larger_than_a_frame_comes_in_pages(
    pair: tuple[EventBus, EventBus],
) -> None:
    hub, asker = pair
    _workflow(hub)
    every = asker.query(EventQuery(event_types=["big.*"]), node="hub", timeout=WAIT)
    assert [e.data["i"] for e in every] == list(range(EVENTS))  # type: ignore[index]
    some = asker.query(EventQuery(event_types=["big.*"], limit=250), node="hub", timeout=WAIT)
    assert [e.data["i"] for e in some] == list(range(250))  # type: ignore[index]
    with pytest.raises(PeerRefusedError, match="larger than"):  # no cursor to page back with
        asker.query(EventQuery(event_types=["big.*"], descending=True), node="hub", timeout=WAIT)


def test_pages_of_a_shifting_window_skip_nothing_held_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer without a journal keeps the last ``max_events_per_trace`` of a workflow:
    events coming in between two pages shift that window, and pages by offset skipped
    as many events it still held."""
    from actors._cluster.bridge import Bridge  # noqa: PLC0415

    node = NodeConfig(name="hub", listen="tcp://127.0.0.1:*", max_frame_bytes=FRAME)
    with EventBus(EventConfig(max_events_per_trace=EVENTS), node=node) as hub:
        peer = str(hub.endpoints["request"])
        with EventBus(node=NodeConfig(name="asker", peers=(peer,))) as asker:
            assert asker.wait_for_peers(["hub"], WAIT)
            cid = _workflow(hub)
            held = {e.id for e in hub.get_correlated(cid, timeout=WAIT)}
            ask = Bridge._ask_many  # noqa: SLF001
            more = iter(range(EVENTS, 10 * EVENTS))

            def and_more(self: Bridge, names: Any, kind: int, body: Any, *rest: Any) -> Any:
                answers = ask(self, names, kind, body, *rest)
                if "limit" in body and any(isinstance(a, list) and a for a in answers.values()):
                    for _ in range(20):  # the workflow goes on between two pages
                        hub.publish("big.step", {"i": next(more), "pad": PAD}, correlation_id=cid)
                    hub.flush(WAIT)
                return answers

            monkeypatch.setattr(Bridge, "_ask_many", and_more)
            got = {e.id for e in asker.get_correlated(cid, timeout=WAIT)}
    assert held <= got  # before: 60 of them missing


def test_answers_through_a_broker_with_smaller_frames_are_paged_or_refused(
    tmp_path: Path,
) -> None:
    """A broker whose ``max_frame_bytes`` is smaller than its nodes': it dropped every
    answer over its limit without a word, and the asker waited out its timeout.

    Nodes now learn the broker's limit when it welcomes them and ask for
    answers within it (pages), and the broker refuses what is still too large
    (a request, here a remote publish) at once: ``PeerRefusedError``.
    """
    from actors import Broker  # noqa: PLC0415

    with Broker(f"ipc://{tmp_path}/hub.sock", max_frame_bytes=FRAME) as broker:
        hub_endpoint = broker.endpoint
        hub = PersistentEventBus(
            EventConfig(persistence_path=tmp_path / "hub"),
            node=NodeConfig(name="hub", peers=(hub_endpoint,)),
        )
        try:
            with EventBus(node=NodeConfig(name="asker", peers=(hub_endpoint,))) as asker:
                assert asker.wait_for_peers(["hub"], WAIT)
                cid = _workflow(hub)
                every = asker.query(EventQuery(event_types=["big.*"]), node="hub", timeout=WAIT)
                assert [e.data["i"] for e in every] == list(range(EVENTS))  # type: ignore[index]
                got = asker.get_correlated(cid, timeout=WAIT)
                assert sorted(e.data["i"] for e in got) == list(range(EVENTS))  # type: ignore[index]
                # A node that never learned the broker's limit (one that predates
                # it): the broker refuses each answer too large, the asker pages.
                from actors._cluster.bridge import Bridge  # noqa: PLC0415

                unaware = pytest.MonkeyPatch()
                unaware.setattr(Bridge, "_route_max", lambda self, route: self._max)
                refused = broker.oversized
                every = asker.query(EventQuery(event_types=["big.*"]), node="hub", timeout=WAIT)
                assert [e.data["i"] for e in every] == list(range(EVENTS))  # type: ignore[index]
                assert broker.oversized > refused
                unaware.undo()
                big = Event(event_type="big.one", data="x" * (2 * FRAME))
                with pytest.raises(PeerRefusedError, match="broker's max_frame_bytes"):
                    asker.publish_remote("hub", big, timeout=WAIT)
                assert broker.oversized >= 1
        finally:
            hub.close(timeout=WAIT)


def test_a_brokers_smaller_frames_do_not_shrink_answers_on_a_direct_link(tmp_path: Path) -> None:
    """b follows persistent a directly and links to a broker with smaller frames too.

    The broker's limit applies to what comes through it only: the first version
    applied it to every ask, so b, restarted, had a's large journaled event
    skipped as "no longer held" (and announced lost), and a query of a over the
    direct link failed.
    """
    from actors import Broker  # noqa: PLC0415
    from actors._model.config import MIN_FRAME_BYTES  # noqa: PLC0415

    fast = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}
    with Broker(f"ipc://{tmp_path}/hub.sock", max_frame_bytes=MIN_FRAME_BYTES) as broker:
        a_node = NodeConfig(name="a", listen=f"ipc://{tmp_path}/a.sock", **fast)
        a = PersistentEventBus(EventConfig(persistence_path=tmp_path / "a"), node=a_node)
        b_node = NodeConfig(name="b", peers=(f"ipc://{tmp_path}/a.sock", broker.endpoint), **fast)
        try:
            b = PersistentEventBus(EventConfig(persistence_path=tmp_path / "b"), node=b_node)
            b.subscribe("big.*", lambda e: None, durable="d")
            assert b.wait_for_peers(["a"], WAIT)
            b.close(WAIT)
            a.publish("big.x", "x" * 100_001).get(timeout=WAIT)  # while b is down
            a.publish("big.x", "z").get(timeout=WAIT)
            got: list[int] = []
            lost: list[Any] = []
            b = PersistentEventBus(EventConfig(persistence_path=tmp_path / "b"), node=b_node)
            try:
                b.subscribe("big.*", lambda e: got.append(len(e.data)), durable="d")
                b.subscribe("$bus.peer.lost", lambda e: lost.append(e.data))
                assert wait_for(lambda: len(got) + len(lost) >= 2)
                assert (got, lost) == ([100_001, 1], [])
                found = b.query(EventQuery(event_types=["big.x"]), node="a", timeout=WAIT)
                assert [len(e.data) for e in found] == [100_001, 1]  # type: ignore[arg-type]
            finally:
                b.close(WAIT)
        finally:
            a.close(WAIT)


def test_a_hello_that_says_broker_does_not_change_what_a_node_asks_for(tmp_path: Path) -> None:
    """Only a broker this node links to, in its WELCOME, tells a limit it obeys: any
    connection's HELLO saying ``kind: broker`` with small frames made the node ask
    every peer for answers within them (and its query of a large event failed)."""
    import zmq  # noqa: PLC0415

    from actors._cluster.wire import HELLO, Request, decode_request, encode_request  # noqa: PLC0415
    from actors._model.config import MIN_FRAME_BYTES  # noqa: PLC0415

    a_node = NodeConfig(name="a", listen=f"ipc://{tmp_path}/a.sock")
    b_node = NodeConfig(
        name="b", listen=f"ipc://{tmp_path}/b.sock", peers=(f"ipc://{tmp_path}/a.sock",)
    )
    a_config = EventConfig(persistence_path=tmp_path / "a")
    with PersistentEventBus(a_config, node=a_node) as a, EventBus(node=b_node) as b:
        assert b.wait_for_peers(["a"], WAIT)
        a.publish("big.x", "x" * 100_000).get(timeout=WAIT)
        ctx = zmq.Context()
        try:
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.connect(f"ipc://{tmp_path}/b.sock")
            body = {"kind": "broker", "max_frame_bytes": MIN_FRAME_BYTES}
            dealer.send_multipart(encode_request(Request(HELLO, "", "mallory", "h", body)))
            assert dealer.poll(int(WAIT * 1000))  # b answered it: it was handled
            decode_request(dealer.recv_multipart(), 1 << 20)
        finally:
            ctx.destroy(0)
        found = b.query(EventQuery(event_types=["big.x"]), node="a", timeout=WAIT)
        assert [len(e.data) for e in found] == [100_000]  # type: ignore[arg-type]
