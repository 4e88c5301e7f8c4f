"""The size limit across nodes: whatever ``publish`` accepts on a node is sent to its peers.

Real nodes over ipc in one process; every wait is on a condition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from actors import Event, EventBus, EventTooLargeError
from actors._cluster.limits import FRAME_OVERHEAD
from actors._codec.events import encode_event
from tests._support import WAIT, Collector

MAX = 128 * 1024
BUDGET = MAX - FRAME_OVERHEAD


def sized(total: int) -> Event:
    """An event of type ``t.big`` whose encoding (unstamped) is ``total`` bytes."""
    size = total
    event = Event(event_type="t.big", data="x" * size)
    for _ in range(10):
        missing = total - len(encode_event(event))
        if not missing:
            return event
        size += missing
        event = Event(event_type="t.big", data="x" * size)
    raise AssertionError(f"no event of exactly {total} bytes")


@pytest.mark.parametrize("name_length", [1, 200])
def test_an_event_publish_accepts_near_the_limit_is_sent(
    tmp_path: Path, nodes: Callable[..., EventBus], name_length: int
) -> None:
    name = "o" * name_length
    a = nodes(name, listen=f"ipc://{tmp_path}/a.sock", max_frame_bytes=MAX)
    b = nodes("b", peers=(f"ipc://{tmp_path}/a.sock",), max_frame_bytes=MAX)
    got = Collector()
    b.subscribe("t.*", got, capacity=1000)
    assert b.node is not None
    assert b.node.wait_for_peers([name], WAIT)
    accepted: list[int] = []
    refusals: list[str] = []
    for under in (0, 1, 5, 10, 16, 20, 50, 100, 200, 260, 300, 600):
        event = sized(BUDGET - under)
        try:
            a.publish(event).get(timeout=WAIT)
        except EventTooLargeError as exc:
            refusals.append(str(exc))
            continue
        accepted.append(under)
    assert accepted  # the limit is near, not far below
    assert all("for its origin and sequence" in r for r in refusals)
    done = Collector(expected=1)
    b.subscribe("t.end", done)
    assert b.node.wait_for_peers([name], WAIT)
    a.publish("t.end", None).get(timeout=WAIT)
    assert done.done.wait(WAIT)  # the origin's order: everything it sent before is here
    assert a.node is not None
    assert a.node.statistics().events_too_large == 0
    assert len([e for e in got.events if e.event_type == "t.big"]) == len(accepted)
