"""A recovery answer that comes after its try ran out, from an origin that stalled.

A receiver that restarted asks its origin for what it missed (``RECOVER``).
If the origin stalls past the try's wait (a GC pause, a busy host), the
receiver declares it dead and parks the request, uncounted; the origin then
answers, with its heartbeats.  The answer used to be dropped (nothing waited
for it), the request was asked again at the next tick, its answer came as
late, and so on for as long as the stalls lasted: the receiver never synced
and never received its downtime.  Here every ``RECOVER`` stalls the origin's
I/O thread past the try's wait; the downtime must still arrive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors import Event, EventConfig, NodeConfig, PersistentEventBus
from actors._cluster.wire import RECOVER
from tests._cluster_support import WAIT, ipc, node, request_endpoint

HB = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.3}
STALL = 1.0  # past heartbeat_timeout (declared dead) and the try's wait (2 x heartbeat_timeout)


class Seen:
    """A durable handler's events; ``done`` once ``want`` of them arrived."""

    def __init__(self, want: int) -> None:
        self.data: list[int] = []
        self.want = want
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        assert isinstance(event.data, int)
        self.data.append(event.data)
        if len(self.data) >= self.want:
            self.done.set()


def receiver(tmp_path: Path, a: PersistentEventBus) -> PersistentEventBus:
    config = NodeConfig(name="d", peers=(request_endpoint(a),), **HB)
    return PersistentEventBus(EventConfig(persistence_path=tmp_path / "d"), node=config)


def stall_on_recover(a: PersistentEventBus, asked: list[str]) -> Callable[[], None]:
    """Make ``a``'s I/O thread stall ``STALL`` s at each RECOVER it takes; return the undo."""
    workers = node(a)._bridge._workers  # noqa: SLF001 - the origin's answering, entered on its I/O thread
    submit = workers.submit

    def stalling(fn: Callable[..., Any], message: Any, *rest: Any) -> Any:
        if getattr(message, "kind", None) == RECOVER:
            asked.append(message.rid)
            threading.Event().wait(STALL)  # the fault: no heartbeat, no answer meanwhile
        return submit(fn, message, *rest)

    workers.submit = stalling  # type: ignore[method-assign]
    return lambda: setattr(workers, "submit", submit)


@pytest.mark.slow
def test_a_late_recovery_answer_from_a_stalled_origin_is_taken(tmp_path: Path) -> None:
    a_config = NodeConfig(name="a", listen=ipc(tmp_path, "a"), **HB)
    with PersistentEventBus(EventConfig(persistence_path=tmp_path / "a"), node=a_config) as a:
        first = Seen(10)
        with receiver(tmp_path, a) as d:
            d.subscribe("job.*", first, durable="jobs")
            assert d.wait_for_peers(["a"], timeout=WAIT)
            for i in range(10):
                a.publish("job.step", i).get(timeout=WAIT)
            assert first.done.wait(WAIT), first.data
        # d is down: what a publishes now, d must fetch when it comes back.
        for i in range(10, 30):
            a.publish("job.step", i).get(timeout=WAIT)
        asked: list[str] = []
        undo = stall_on_recover(a, asked)
        try:
            second = Seen(20)
            with receiver(tmp_path, a) as d:
                d.subscribe("job.*", second, durable="jobs")
                got_all = second.done.wait(WAIT)
                stats = node(d).statistics()
        finally:
            undo()
    assert asked, "the receiver never asked for its downtime: nothing was tested"
    assert got_all, f"downtime not received: {second.data}; RECOVERs {len(asked)}; {stats}"
    assert second.data == list(range(10, 30))
