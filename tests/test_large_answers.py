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
from tests._support import WAIT

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
                bridge = asker.node._bridge  # type: ignore[union-attr]  # noqa: SLF001
                bridge._asked_max = NodeConfig(name="x").max_frame_bytes  # noqa: SLF001
                refused = broker.oversized
                every = asker.query(EventQuery(event_types=["big.*"]), node="hub", timeout=WAIT)
                assert [e.data["i"] for e in every] == list(range(EVENTS))  # type: ignore[index]
                assert broker.oversized > refused
                big = Event(event_type="big.one", data="x" * (2 * FRAME))
                with pytest.raises(PeerRefusedError, match="broker's max_frame_bytes"):
                    asker.publish_remote("hub", big, timeout=WAIT)
                assert broker.oversized >= 1
        finally:
            hub.close(timeout=WAIT)
