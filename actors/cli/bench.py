"""``bench``: publish/subscribe throughput and latency, in-process or through a node.

In-process, one bus publishes ``--count`` events that ``--subs``
subscriptions receive.  With ``--peer``, a short-lived node subscribes on
the running node and has it publish the events (publish requests from
``--clients`` threads): the figures then include the network path both
ways.  Latency is from the publish call to the handler, on the wall clock
(both ends are on one machine).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click

from actors._bus import EventBus
from actors._model.config import EventConfig
from actors._model.event import Event
from actors.cli.connect import peer_name, running, short_lived_node
from actors.cli.options import Connection, connection_options
from actors.cli.output import fail, json_line, say
from actors.cli.pubsub import DATA_LIMIT, publish_through

__all__ = ["Receiver", "bench"]


@dataclass
class Receiver:
    """A subscription handler that records each event's latency (one writer: its thread)."""

    expected: int
    latencies: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    last: float = 0.0

    def __call__(self, event: Event) -> None:
        now = time.time_ns()
        data = event.data
        sent = data.get("t") if isinstance(data, dict) else None
        if not isinstance(sent, int):
            return  # not a bench event
        self.latencies.append((now - sent) / 1e6)
        if len(self.latencies) >= self.expected:
            self.last = time.perf_counter()
            self.done.set()


def _event(topic: str, pad: str) -> Event:
    return Event(event_type=topic, data={"t": time.time_ns(), "pad": pad})


MAX_COUNT = 100_000_000
"""The most events one bench run publishes (each is held until it is handled)."""

MAX_SUBS = 10_000
"""The most subscriptions one bench run makes (SPEC 11 sizes a bus for 10,000)."""

MIN_RATE, MAX_RATE = 0.001, 1e9
"""The range of ``--rate``, events per second (a rate near 0 would wait past the clock's range)."""


class _Rate(click.FloatRange):
    """``--rate``: a number in ``MIN_RATE..MAX_RATE`` (NaN passes a range's comparisons)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rate = super().convert(value, param, ctx)
        if math.isnan(rate):
            self.fail(f"{value!r} is not a number of events per second", param, ctx)
        return rate


@click.command()
@click.option(
    "--count", type=click.IntRange(min=1, max=MAX_COUNT), default=20_000, show_default=True
)
@click.option(
    "--size",
    type=click.IntRange(min=0, max=DATA_LIMIT),
    default=128,
    show_default=True,
    help="bytes of data",
)
@click.option(
    "--subs", type=click.IntRange(min=1, max=MAX_SUBS), default=1, show_default=True,
    help="subscribers",
)  # fmt: skip
@click.option(
    "--clients", type=click.IntRange(min=1), default=4, show_default=True,
    help="threads sending publish requests (with --peer)",
)  # fmt: skip
@click.option(
    "--rate",
    type=_Rate(min=MIN_RATE, max=MAX_RATE),
    help="publish at most this many events per second (default: as fast as possible)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
@connection_options("a running node to measure through (default: in-process)", peer_required=False)
def bench(
    *,
    count: int,
    size: int,
    subs: int,
    clients: int,
    rate: float | None,
    as_json: bool,
    connection: Connection,
) -> None:
    """Measure publish and delivery rates and latency, in-process or against --peer."""
    topic = f"bench.{os.getpid()}"
    pad = "x" * size
    receivers = [Receiver(count) for _ in range(subs)]
    if connection.peer is None:
        where = "in-process"
        with running(lambda: EventBus(EventConfig(buffer_size=max(count, 1024)))) as bus:
            for receiver in receivers:
                bus.subscribe(topic, receiver)
            started = time.perf_counter()
            for n in range(count):
                if rate is not None:
                    _pace(started, n, rate)
                bus.publish(_event(topic, pad))
            published = time.perf_counter()
            _wait(receivers, connection.timeout + count / 1000)
    else:
        where = f"through {connection.peer}"
        if rate is not None:
            raise click.UsageError("--rate is for the in-process bench")
        started, published = _through_node(connection, topic, pad, receivers, clients)
    _report(
        where,
        count=count,
        size=size,
        receivers=receivers,
        started=started,
        published=published,
        as_json=as_json,
    )


def _through_node(
    connection: Connection, topic: str, pad: str, receivers: list[Receiver], clients: int
) -> tuple[float, float]:
    count = receivers[0].expected
    with short_lived_node(connection, "bench") as bus:
        for receiver in receivers:
            bus.subscribe(topic, receiver, capacity=max(count, 1024))
        name = peer_name(bus, connection, time.monotonic() + connection.timeout)
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(
                pool.map(
                    lambda _: publish_through(bus, name, _event(topic, pad), connection.timeout),
                    range(count),
                )
            )
        published = time.perf_counter()
        _wait(receivers, connection.timeout + count / 100)
    return started, published


def _pace(started: float, n: int, rate: float) -> None:
    """Wait until event ``n`` is due: ``n / rate`` seconds after ``started``."""
    delay = started + n / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _wait(receivers: list[Receiver], timeout: float) -> None:
    timeout = min(timeout, threading.TIMEOUT_MAX)  # --timeout plus the run's own share
    for receiver in receivers:
        if not receiver.done.wait(timeout):
            got = len(receiver.latencies)
            fail(f"a subscriber received {got} of {receiver.expected} events in {timeout:g} s")


def _report(
    where: str,
    *,
    count: int,
    size: int,
    receivers: list[Receiver],
    started: float,
    published: float,
    as_json: bool,
) -> None:
    latencies = sorted(ms for r in receivers for ms in r.latencies)
    delivered = len(latencies)
    last = max(r.last for r in receivers)
    figures: dict[str, Any] = {
        "where": where,
        "events": count,
        "size": size,
        "subscribers": len(receivers),
        "pub_per_s": round(count / max(published - started, 1e-9)),
        "sub_per_s": round(delivered / max(last - started, 1e-9)),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[min(delivered - 1, int(delivered * 0.99))], 3),
        "max_ms": round(latencies[-1], 3),
    }
    if as_json:
        say(json_line(figures))
        return
    mb = (size + 60) / 1e6  # the data plus the event's fields, roughly
    say(f"bench {where}: {count} events of {size} B, {len(receivers)} subscriber(s)")
    say(f"{'':6}{'events/s':>12}{'MB/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    say(f"{'pub':6}{figures['pub_per_s']:>12,}{figures['pub_per_s'] * mb:>9.1f}")
    say(
        f"{'sub':6}{figures['sub_per_s']:>12,}{figures['sub_per_s'] * mb:>9.1f}"
        f"{figures['p50_ms']:>9.3f}{figures['p99_ms']:>9.3f}{figures['max_ms']:>9.3f}"
    )
