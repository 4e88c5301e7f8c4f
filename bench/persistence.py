"""Persistent throughput: ``async`` and ``sync`` durability.

Every configuration gets a fresh journal in a temp dir (its disk and
filesystem are printed: not tmpfs, so fsyncs reach the device) and one
subscription with a trivial handler.

- ``async``: publish ``n`` pre-built events one by one, then ``flush()``;
  events/s from the first publish to the return of ``flush``.
- ``sync``, awaiting: 1 publisher thread, then 8, each doing
  ``publish(e).get()`` in a loop for a fixed time; the ratio of their rates
  is the group-commit factor (8 publishers share an fsync).
- ``sync``, pipelined: publish ``n`` events without waiting, then wait for
  every future; events/s until the last one resolved.

Baselines: raw rocksdict ``WriteBatch`` of 1000 puts (WAL on) unsynced and
synced, and single synced puts from 1 and from 8 threads.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from actors import Event, EventConfig, PersistentEventBus
from bench import baselines
from bench._common import (
    EVENT_BYTES,
    Figure,
    Params,
    Result,
    bench_event,
    disk_of,
    median_dict,
    run_for,
    scratch_dir,
)

NAME = "persistence"


def _bus(path: str, durability: str) -> PersistentEventBus:
    bus = PersistentEventBus(EventConfig(persistence_path=path, durability=durability))  # type: ignore[arg-type]
    bus.subscribe("bench.*", lambda _e: None)
    return bus


def async_throughput(path: str, events: Sequence[Event], *, batch: int | None) -> float:
    """Return events/s of publishing then flushing ``events`` with ``async`` durability."""
    with _bus(path, "async") as bus:
        bus.publish_many(events[:1000])
        bus.flush(timeout=60)
        gc.collect()  # garbage of earlier measurements is not this one's cost
        start = time.perf_counter()
        if batch is None:
            publish = bus.publish
            for event in events:
                publish(event)
        else:
            for first in range(0, len(events), batch):
                bus.publish_many(events[first : first + batch])
        bus.flush(timeout=600)
        return len(events) / (time.perf_counter() - start)


def sync_awaiting(path: str, events: Sequence[Event], publishers: int, seconds: float) -> float:
    """Return events/s of ``publishers`` threads each awaiting every ``sync`` publish."""
    with _bus(path, "sync") as bus:
        bus.publish(events[0]).get(timeout=30)
        share = len(events) // publishers

        def make_step(k: int) -> Callable[[int], Any]:
            mine = events[k * share : (k + 1) * share]
            publish = bus.publish
            return lambda i: publish(mine[i % share]).get(timeout=60)

        return run_for(seconds, publishers, make_step)


def sync_pipelined(path: str, events: Sequence[Event]) -> float:
    """Return events/s of ``sync`` publishes issued without waiting, until all resolved."""
    with _bus(path, "sync") as bus:
        bus.publish(events[0]).get(timeout=30)
        publish = bus.publish
        start = time.perf_counter()
        futures = [publish(event) for event in events]
        for future in futures:
            future.get(timeout=600)
        return len(events) / (time.perf_counter() - start)


def run(params: Params) -> Result:
    """Measure the journal's throughput, ``params.runs`` times, with its baselines."""
    n_async = params.size(100_000, 2_000)
    n_pipe = params.size(100_000, 2_000)
    seconds = 1.5 if not params.quick else 0.2
    events = [bench_event(i) for i in range(max(n_async, n_pipe))]
    with scratch_dir("persistence") as scratch:
        disk = disk_of(scratch)
        result = Result(
            NAME,
            {
                "journal dir": f"{scratch} on {disk['device']} ({disk['fstype']}, "
                f"mount {disk['mount']})",
                "payload": f"~{EVENT_BYTES} bytes encoded, events pre-built",
                "subscriptions": "1, trivial handler",
                "async": f"{n_async} events: publish() loop (and publish_many of 1000) "
                "then flush()",
                "sync awaiting": f"1 and 8 publisher threads, publish(e).get() for {seconds} s",
                "sync pipelined": f"{n_pipe} publish() calls, then wait for every future",
                "baselines": "raw rocksdict WriteBatch of 1000 puts of 300 bytes (WAL on), "
                f"unsynced and synced; single synced puts from 1 and 8 threads for {seconds} s; "
                "the floor: the same events encoded by the bus's codec into WriteBatches of "
                "1000 on one thread (unsynced)",
                "runs": params.runs,
            },
        )
        for k in range(params.runs):

            def path(name: str, k: int = k) -> str:
                return os.path.join(scratch, f"{name}-{k}")

            r: dict[str, Any] = {
                "async_publish": async_throughput(path("a"), events[:n_async], batch=None),
                "async_publish_many": async_throughput(path("b"), events[:n_async], batch=1000),
                "sync_1_awaiting": sync_awaiting(path("c"), events, 1, seconds),
                "sync_8_awaiting": sync_awaiting(path("d"), events, 8, seconds),
                "sync_pipelined": sync_pipelined(path("e"), events[:n_pipe]),
                "rocks_batch_1000": baselines.rocksdict_batches(n_async),
                "encode_batch_1000": baselines.encode_and_batch(events[:n_async]),
                "rocks_batch_1000_sync": baselines.rocksdict_batches(n_pipe, sync=True),
                "rocks_sync_put_1": baselines.rocksdict_sync_puts(1, seconds),
                "rocks_sync_put_8": baselines.rocksdict_sync_puts(8, seconds),
            }
            r["group_commit"] = r["sync_8_awaiting"] / r["sync_1_awaiting"]
            r["rocks_group_commit"] = r["rocks_sync_put_8"] / r["rocks_sync_put_1"]
            result.runs.append(r)
            print(
                "  run: async {:,.0f}/s (many {:,.0f}); sync 1 pub {:,.0f}/s, 8 pubs {:,.0f}/s "
                "({:.1f}x); pipelined {:,.0f}/s; rocksdict batch {:,.0f}/s, "
                "encoded {:,.0f}/s".format(
                    r["async_publish"],
                    r["async_publish_many"],
                    r["sync_1_awaiting"],
                    r["sync_8_awaiting"],
                    r["group_commit"],
                    r["sync_pipelined"],
                    r["rocks_batch_1000"],
                    r["encode_batch_1000"],
                )
            )
    m = median_dict(result.runs)
    result.medians = m
    result.figures = [
        Figure(
            "persistent, async, publish(), vs encode + WriteBatch",
            "events/s",
            m["async_publish"],
            (">=", 0.5),
            "encode + WriteBatch 1000, one thread",
            m["encode_batch_1000"],
            target_on_ratio=True,
        ),
        Figure(
            "persistent, async, publish()",
            "events/s",
            m["async_publish"],
            None,
            "rocksdict WriteBatch 1000",
            m["rocks_batch_1000"],
        ),
        Figure(
            "persistent, async, publish_many()",
            "events/s",
            m["async_publish_many"],
            None,
            "rocksdict WriteBatch 1000",
            m["rocks_batch_1000"],
        ),
        Figure(
            "sync: 8 awaiting publishers vs 1",
            "ratio",
            m["group_commit"],
            (">=", 5.0),
            "rocksdict sync puts 8 vs 1 threads",
            m["rocks_group_commit"],
            note=f"1 publisher {m['sync_1_awaiting']:,.0f}/s, 8: {m['sync_8_awaiting']:,.0f}/s",
        ),
        Figure(
            "sync, 1 publisher awaiting each",
            "events/s",
            m["sync_1_awaiting"],
            None,
            "rocksdict 1 synced put/write",
            m["rocks_sync_put_1"],
        ),
        Figure(
            "sync, publishes pipelined",
            "events/s",
            m["sync_pipelined"],
            (">=", 50_000),
            "rocksdict synced WriteBatch 1000",
            m["rocks_batch_1000_sync"],
        ),
    ]
    return result
