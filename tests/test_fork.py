"""A forked child (``os.fork``, ``multiprocessing``'s fork start method) and the buses it inherits.

The child has the parent's buses without their threads: a call used to
wait for actors that do not exist (``publish(...).get()``, ``flush()``,
``close()`` hung).  It raises ``BusClosedError`` saying whose bus it is, and
``close()`` returns at once; the parent's bus goes on; the child's own bus
works (one without a journal: see docs/architecture.md on fork).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from pathlib import Path
from typing import Any

from actors import AsyncEventBus, BusClosedError, EventBus, EventConfig, EventQuery
from tests._support import WAIT, Collector

_inherited: EventBus | None = None


def _child(results: Any) -> None:
    bus = _inherited
    assert bus is not None
    out: dict[str, Any] = {"closed": bus.closed}
    for name, call in {
        "publish": lambda: bus.publish("a.b", 2).get(timeout=WAIT),
        "flush": lambda: bus.flush(WAIT),
        "subscribe": lambda: bus.subscribe("b.*", print),
        "query": lambda: bus.query(EventQuery(limit=1)),
        "metrics": bus.metrics,  # the figures are the parent's: its actors would answer
    }.items():
        try:
            call()
            out[name] = "returned"
        except BusClosedError as exc:
            out[name] = str(exc)
    out["close"] = bus.close(timeout=WAIT)
    aclose = AsyncEventBus(bus=bus).aclose()
    out["aclose"] = asyncio.run(asyncio.wait_for(aclose, WAIT))  # (): returned, nothing given up
    with EventBus() as own:  # a journal here would share RocksDB's state with the parent's
        out["own"] = own.publish("c.d", 3).get(timeout=WAIT).sequence
    results.put(out)


def test_a_forked_child_gets_a_clear_error_from_an_inherited_bus(tmp_path: Path) -> None:
    global _inherited
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    seen = Collector(expected=2)
    with EventBus(EventConfig(persistence_path=tmp_path / "parent")) as bus:
        _inherited = bus
        bus.subscribe("a.*", seen)
        bus.publish("a.b", 1).get(timeout=WAIT)
        child = context.Process(target=_child, args=(results,))
        child.start()
        out = results.get(timeout=4 * WAIT)
        child.join(WAIT)
        assert child.exitcode == 0
        bus.publish("a.b", 3).get(timeout=WAIT)  # the parent's bus goes on
        assert seen.done.wait(WAIT)
    _inherited = None
    mine = f"the bus belongs to process {os.getpid()}: a forked child opens its own"
    assert out == {
        "closed": True,
        "publish": mine,
        "flush": mine,
        "subscribe": mine,
        "query": mine,
        "metrics": mine,
        "close": (),
        "aclose": (),
        "own": 1,
    }
