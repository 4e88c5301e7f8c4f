"""``AsyncEventBus`` mirrors the bus (SPEC 8): replay, query on a node, dead letters, metrics."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from actors import AsyncEventBus, Event, EventBus, EventConfig, EventQuery, PersistentEventBus
from actors._core.replay import LONGEST_WAIT, _Pace
from tests._support import WAIT


def run(test: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 4 * WAIT))


@pytest.mark.parametrize("kind", ["plain", "async def"])
def test_replay_delivers_in_order_on_the_loop_and_publishes_inherit(
    tmp_path: Path, kind: str
) -> None:
    async def main() -> None:
        config = EventConfig(persistence_path=tmp_path / "j")
        async with AsyncEventBus(bus=PersistentEventBus(config)) as bus:
            cid = uuid.uuid4()
            stored = [await bus.publish_correlated("job.step", i, cid) for i in range(5)]
            seen: list[int] = []
            made: list[Event] = []
            loop = asyncio.get_running_loop()

            def plain(event: Event) -> None:
                assert asyncio.get_running_loop() is loop  # called on the loop
                seen.append(event.data)

            async def awaited(event: Event) -> None:
                await asyncio.sleep(0)
                seen.append(event.data)
                if event.data == 4:
                    made.append(await bus.publish("job.again", event.data))

            handler = plain if kind == "plain" else awaited
            count = await bus.replay(EventQuery(event_types=["job.step"]), handler, page_size=2)
            assert count == 5
            assert seen == [0, 1, 2, 3, 4]
            if made:
                assert (made[0].causation_id, made[0].correlation_id) == (stored[4].id, cid)
            with pytest.raises(ValueError, match="speed"):
                await bus.replay(EventQuery(), handler, speed=0)

    run(main)


def test_replay_with_a_limit_or_descending_reads_one_page(tmp_path: Path) -> None:
    async def main() -> None:
        config = EventConfig(persistence_path=tmp_path / "j")
        async with AsyncEventBus(bus=PersistentEventBus(config)) as bus:
            await bus.publish_many([Event(event_type="t.x", data=i) for i in range(7)])
            seen: list[int] = []
            n = await bus.replay(
                EventQuery(descending=True, limit=3), lambda e: seen.append(e.data)
            )
            assert (n, seen) == (3, [6, 5, 4])

    run(main)


def test_query_a_connected_node_and_read_dead_letters_and_metrics(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    remote = nodes("far", persistent=True, listen=f"ipc://{tmp_path}/far.sock")
    remote.publish("far.x", 1).get(timeout=WAIT)
    near = nodes("near", peers=(f"ipc://{tmp_path}/far.sock",))
    assert near.node is not None
    assert near.node.wait_for_peers(["far"], WAIT)

    async def main() -> None:
        bus = AsyncEventBus(bus=near)
        [event] = await bus.query(EventQuery(event_types=["far.x"]), node="far", timeout=WAIT)
        assert (event.data, event.origin) == (1, "far")

        def fail(event: Event) -> None:
            raise RuntimeError("no")

        await bus.subscribe("bad.*", fail, retries=0)
        for i in range(3):
            await bus.publish("bad.x", i)
        await bus.flush(WAIT)
        assert [d.event.data for d in bus.dead_letters(limit=2)] == [0, 1]  # oldest first
        with (
            bus.serve_metrics() as server,
            urllib.request.urlopen(server.url, timeout=WAIT) as answer,
        ):
            assert b"llmspell_events_dead_letters_total 3" in answer.read()

    run(main)


def test_a_tiny_speed_asks_for_ages_but_never_overflows_the_clock() -> None:
    # replay(speed=1e-12) passed the checks and then raised OverflowError from
    # time.sleep after the first event: the wait is now as long as one can be.
    pace = _Pace(1e-12)
    first = Event(event_type="t.x", data=0)
    later = Event(event_type="t.x", data=1, timestamp=first.timestamp + timedelta(seconds=1))
    assert pace.delay(first) == 0.0
    assert pace.delay(later) == LONGEST_WAIT < threading.TIMEOUT_MAX
