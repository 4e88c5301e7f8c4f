"""Bad arguments fail at the call site with TypeError/ValueError naming the argument.

One table of bad calls over every public signature (``actors._model.checks``
and ``guards``), then the behaviours behind the issues that led to it: a bad
call changes nothing, and the values each signature accepts.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    Event,
    EventBus,
    EventConfig,
    EventFilter,
    EventQuery,
    NodeConfig,
    OverflowStrategy,
    PersistentEventBus,
    Trace,
)
from tests._support import WAIT

NAN = float("nan")
INF = float("inf")
CID = uuid.uuid4()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Env:
    """Buses made on first use and closed after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._bus: EventBus | None = None
        self._pbus: PersistentEventBus | None = None

    @property
    def bus(self) -> EventBus:
        if self._bus is None:
            self._bus = EventBus()
        return self._bus

    @property
    def pbus(self) -> PersistentEventBus:
        if self._pbus is None:
            self._pbus = PersistentEventBus(EventConfig(persistence_path=str(self.tmp_path / "j")))
        return self._pbus

    @property
    def abus(self) -> AsyncEventBus:
        return AsyncEventBus(bus=self.bus)

    def close(self) -> None:
        for bus in (self._bus, self._pbus):
            if bus is not None:
                bus.close(timeout=WAIT)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def _h(_event: Event) -> None:
    return None


async def _stream(env: Env, **options: Any) -> None:
    env.abus.stream("a.*", **options)


@dataclass(frozen=True)
class Bad:
    call: Callable[[Env], Any]
    error: type[Exception]
    match: str


BAD: dict[str, Bad] = {
    # -- EventBus / PersistentEventBus ----------------------------------------------
    "bus-config-dict": Bad(lambda e: EventBus({}), TypeError, "config"),  # type: ignore[arg-type]
    "bus-name-int": Bad(lambda e: EventBus(name=5), TypeError, "name"),  # type: ignore[arg-type]
    "bus-name-empty": Bad(lambda e: EventBus(name=""), ValueError, "name"),
    "bus-node-str": Bad(lambda e: EventBus(node="a"), TypeError, "node"),  # type: ignore[arg-type]
    "persistent-no-path": Bad(
        lambda e: PersistentEventBus(EventConfig()), ValueError, "persistence_path"
    ),
    "persistent-config-dict": Bad(
        lambda e: PersistentEventBus({}),  # type: ignore[arg-type]
        TypeError,
        "config",
    ),
    "event-expired-now-float": Bad(
        lambda e: Event(event_type="a.b", ttl=1).expired(12.5),  # type: ignore[arg-type]
        TypeError,
        "now",
    ),
    "event-expired-now-naive": Bad(
        lambda e: Event(event_type="a.b").expired(datetime(2026, 1, 1)), TypeError, "now"
    ),
    "get_correlated-str": Bad(
        lambda e: e.bus.get_correlated(str(CID)),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "get_correlated-str-persistent": Bad(
        lambda e: e.pbus.get_correlated(str(CID)),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "get_correlated-none": Bad(
        lambda e: e.bus.get_correlated(None),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "get_correlated-timeout-negative": Bad(
        lambda e: e.bus.get_correlated(CID, timeout=-1), ValueError, "timeout"
    ),
    "get_correlated-timeout-nan": Bad(
        lambda e: e.bus.get_correlated(CID, timeout=NAN), ValueError, "timeout"
    ),
    "get_correlated-timeout-inf": Bad(
        lambda e: e.bus.get_correlated(CID, timeout=INF), ValueError, "timeout"
    ),
    "get_correlated-timeout-bool": Bad(
        lambda e: e.bus.get_correlated(CID, timeout=True), TypeError, "timeout"
    ),
    "trace-str": Bad(lambda e: e.bus.trace("abc"), TypeError, "correlation_id"),  # type: ignore[arg-type]
    "trace-timeout-str": Bad(
        lambda e: e.bus.trace(CID, timeout="1"),  # type: ignore[arg-type]
        TypeError,
        "timeout",
    ),
    "publish_correlated-str": Bad(
        lambda e: e.bus.publish_correlated("a.b", {}, str(CID)),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "publish_many-bare-str": Bad(
        lambda e: e.bus.publish_many("a.b"),  # type: ignore[arg-type]
        TypeError,
        "events",
    ),
    "publish_many-not-iterable": Bad(
        lambda e: e.bus.publish_many(5),  # type: ignore[arg-type]
        TypeError,
        "events",
    ),
    "publish_many-str-item": Bad(
        lambda e: e.bus.publish_many([Event(event_type="a.b"), "a.c"]),  # type: ignore[list-item]
        TypeError,
        "events",
    ),
    "subscribe-filter-str": Bad(
        lambda e: e.bus.subscribe("a.*", _h, filter="x"),  # type: ignore[arg-type]
        TypeError,
        "filter",
    ),
    "subscribe-handler-int": Bad(
        lambda e: e.bus.subscribe("a.*", 5),  # type: ignore[arg-type]
        TypeError,
        "handler",
    ),
    "subscribe-capacity-str": Bad(
        lambda e: e.bus.subscribe("a.*", _h, capacity="5"),  # type: ignore[arg-type]
        TypeError,
        "capacity",
    ),
    "subscribe-capacity-bool": Bad(
        lambda e: e.bus.subscribe("a.*", _h, capacity=True), TypeError, "capacity"
    ),
    "subscribe-capacity-zero": Bad(
        lambda e: e.bus.subscribe("a.*", _h, capacity=0), ValueError, "capacity"
    ),
    # Regression: accepted, then the router's turn failed with OverflowError at each match.
    "subscribe-capacity-10**400": Bad(
        lambda e: e.bus.subscribe("a.*", _h, capacity=10**400), ValueError, "capacity"
    ),
    "subscribe-capacity-2**63": Bad(
        lambda e: e.bus.subscribe("a.*", _h, capacity=2**63), ValueError, "capacity"
    ),
    "respond-capacity-10**400": Bad(
        lambda e: e.bus.respond("a.*", _h, capacity=10**400), ValueError, "capacity"
    ),
    "subscribe-capacity-float": Bad(
        lambda e: e.bus.subscribe("a.*", _h, capacity=2.5),  # type: ignore[arg-type]
        TypeError,
        "capacity",
    ),
    "subscribe-overflow-unknown": Bad(
        lambda e: e.bus.subscribe("a.*", _h, overflow="drop_all"), ValueError, "overflow"
    ),
    "subscribe-overflow-int": Bad(
        lambda e: e.bus.subscribe("a.*", _h, overflow=1),  # type: ignore[arg-type]
        TypeError,
        "overflow",
    ),
    "subscribe-from_sequence-negative": Bad(
        lambda e: e.pbus.subscribe("a.*", _h, from_sequence=-1), ValueError, "from_sequence"
    ),
    "subscribe-from_sequence-str": Bad(
        lambda e: e.pbus.subscribe("a.*", _h, from_sequence="1"),  # type: ignore[arg-type]
        TypeError,
        "from_sequence",
    ),
    "subscribe-durable-int": Bad(
        lambda e: e.pbus.subscribe("a.*", _h, durable=5),  # type: ignore[arg-type]
        TypeError,
        "durable",
    ),
    "subscribe-durable-empty": Bad(
        lambda e: e.pbus.subscribe("a.*", _h, durable=""), ValueError, "durable"
    ),
    "subscribe-dedicated_thread-str": Bad(
        lambda e: e.bus.subscribe("a.*", _h, dedicated_thread="yes"),  # type: ignore[arg-type]
        TypeError,
        "dedicated_thread",
    ),
    "query-not-a-query": Bad(
        lambda e: e.pbus.query({"event_types": ["a.*"]}),  # type: ignore[arg-type]
        TypeError,
        "query",
    ),
    "query-node-int": Bad(
        lambda e: e.pbus.query(EventQuery(), node=5),  # type: ignore[arg-type]
        TypeError,
        "node",
    ),
    "query-timeout-negative": Bad(
        lambda e: e.pbus.query(EventQuery(), timeout=-0.5), ValueError, "timeout"
    ),
    "replay-speed-nan": Bad(
        lambda e: e.pbus.replay(EventQuery(), _h, speed=NAN), ValueError, "speed"
    ),
    "replay-speed-past-a-float": Bad(
        lambda e: e.pbus.replay(EventQuery(), _h, speed=10**400), ValueError, "speed"
    ),
    "replay-speed-zero": Bad(
        lambda e: e.pbus.replay(EventQuery(), _h, speed=0), ValueError, "speed"
    ),
    "replay-speed-str": Bad(
        lambda e: e.pbus.replay(EventQuery(), _h, speed="2"),  # type: ignore[arg-type]
        TypeError,
        "speed",
    ),
    "replay-page_size-zero": Bad(
        lambda e: e.pbus.replay(EventQuery(), _h, page_size=0), ValueError, "page_size"
    ),
    "replay-handler-int": Bad(
        lambda e: e.pbus.replay(EventQuery(), 5),  # type: ignore[arg-type]
        TypeError,
        "handler",
    ),
    "replay-query-none": Bad(
        lambda e: e.pbus.replay(None, _h),  # type: ignore[arg-type]
        TypeError,
        "query",
    ),
    "flush-timeout-negative": Bad(lambda e: e.bus.flush(timeout=-1), ValueError, "timeout"),
    "flush-timeout-nan": Bad(lambda e: e.bus.flush(timeout=NAN), ValueError, "timeout"),
    "flush-timeout-str": Bad(
        lambda e: e.bus.flush(timeout="1"),  # type: ignore[arg-type]
        TypeError,
        "timeout",
    ),
    "close-timeout-negative": Bad(lambda e: e.bus.close(timeout=-1), ValueError, "timeout"),
    "wait_for_peers-bare-str": Bad(lambda e: e.bus.wait_for_peers("hub"), TypeError, "names"),
    "wait_for_peers-timeout-nan": Bad(
        lambda e: e.bus.wait_for_peers(["hub"], timeout=NAN), ValueError, "timeout"
    ),
    "linked_nodes-timeout-negative": Bad(
        lambda e: e.bus.linked_nodes(timeout=-1), ValueError, "timeout"
    ),
    "publish_remote-node-int": Bad(
        lambda e: e.bus.publish_remote(5, "a.b"),  # type: ignore[arg-type]
        TypeError,
        "node",
    ),
    # -- AsyncEventBus ----------------------------------------------------------------
    "async-config-dict": Bad(lambda e: AsyncEventBus({}), TypeError, "config"),  # type: ignore[arg-type]
    "async-bus-and-config": Bad(
        lambda e: AsyncEventBus(EventConfig(), bus=e.bus), TypeError, "config"
    ),
    "async-bus-wrong": Bad(
        lambda e: AsyncEventBus(bus=object()),  # type: ignore[arg-type]
        TypeError,
        "bus",
    ),
    "async-get_correlated-str": Bad(
        lambda e: e.abus.get_correlated("abc"),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "async-trace-str": Bad(
        lambda e: e.abus.trace("abc"),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "async-query-none": Bad(
        lambda e: e.abus.query(None),  # type: ignore[arg-type]
        TypeError,
        "query",
    ),
    "async-flush-timeout-negative": Bad(lambda e: e.abus.flush(-1), ValueError, "timeout"),
    "async-aclose-timeout-nan": Bad(lambda e: e.abus.aclose(NAN), ValueError, "timeout"),
    "async-publish_correlated-str": Bad(
        lambda e: e.abus.publish_correlated("a.b", {}, "abc"),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "async-stream-capacity-str": Bad(lambda e: _stream(e, capacity="3"), TypeError, "capacity"),
    "async-stream-capacity-10**400": Bad(
        lambda e: _stream(e, capacity=10**400), ValueError, "capacity"
    ),
    "async-stream-filter-str": Bad(lambda e: _stream(e, filter="x"), TypeError, "filter"),
    "async-stream-overflow-unknown": Bad(
        lambda e: _stream(e, overflow="nope"), ValueError, "overflow"
    ),
    # -- EventConfig --------------------------------------------------------------------
    "config-retention_days-negative": Bad(
        lambda e: EventConfig(retention_days=-1), ValueError, "retention_days"
    ),
    "config-retention_days-zero": Bad(
        lambda e: EventConfig(retention_days=0), ValueError, "retention_days"
    ),
    "config-retention_days-nan": Bad(
        lambda e: EventConfig(retention_days=NAN), ValueError, "retention_days"
    ),
    "config-retention_days-str": Bad(
        lambda e: EventConfig(retention_days="30"),  # type: ignore[arg-type]
        TypeError,
        "retention_days",
    ),
    "config-max_events-zero": Bad(lambda e: EventConfig(max_events=0), ValueError, "max_events"),
    "config-max_events-bool": Bad(lambda e: EventConfig(max_events=True), TypeError, "max_events"),
    "config-persistence_path-int": Bad(
        lambda e: EventConfig(persistence_path=5),  # type: ignore[arg-type]
        TypeError,
        "persistence_path",
    ),
    "config-persistence_path-empty": Bad(
        lambda e: EventConfig(persistence_path=""), ValueError, "persistence_path"
    ),
    "config-durability-unknown": Bad(
        lambda e: EventConfig(durability="fast"),  # type: ignore[arg-type]
        ValueError,
        "durability",
    ),
    "config-buffer_size-str": Bad(
        lambda e: EventConfig(buffer_size="10"),  # type: ignore[arg-type]
        TypeError,
        "buffer_size",
    ),
    "config-buffer_size-zero": Bad(lambda e: EventConfig(buffer_size=0), ValueError, "buffer_size"),
    "config-overflow-unknown": Bad(
        lambda e: EventConfig(overflow="drop_all"),  # type: ignore[arg-type]
        ValueError,
        "overflow",
    ),
    "config-overflow-int": Bad(
        lambda e: EventConfig(overflow=1),  # type: ignore[arg-type]
        TypeError,
        "overflow",
    ),
    "config-block_timeout-negative": Bad(
        lambda e: EventConfig(block_timeout=-1), ValueError, "block_timeout"
    ),
    "config-block_timeout-nan": Bad(
        lambda e: EventConfig(block_timeout=NAN), ValueError, "block_timeout"
    ),
    "config-rate_limit-nan": Bad(lambda e: EventConfig(rate_limit=NAN), ValueError, "rate_limit"),
    "config-rate_limit-zero": Bad(lambda e: EventConfig(rate_limit=0), ValueError, "rate_limit"),
    "config-rate_limit-past-a-float": Bad(
        lambda e: EventConfig(rate_limit=10**400), ValueError, "rate_limit"
    ),
    "config-block_timeout-past-a-float": Bad(
        lambda e: EventConfig(block_timeout=-(10**400)), ValueError, "block_timeout"
    ),
    "config-burst-zero": Bad(lambda e: EventConfig(rate_limit=10, burst=0), ValueError, "burst"),
    "config-handler_retries-float": Bad(
        lambda e: EventConfig(handler_retries=1.5),  # type: ignore[arg-type]
        TypeError,
        "handler_retries",
    ),
    "config-handler_retries-negative": Bad(
        lambda e: EventConfig(handler_retries=-1), ValueError, "handler_retries"
    ),
    "config-max_traces-zero": Bad(lambda e: EventConfig(max_traces=0), ValueError, "max_traces"),
    "config-max_events_per_trace-zero": Bad(
        lambda e: EventConfig(max_events_per_trace=0), ValueError, "max_events_per_trace"
    ),
    "config-trace_ttl-negative": Bad(lambda e: EventConfig(trace_ttl=-1), ValueError, "trace_ttl"),
    "config-threads-bool": Bad(lambda e: EventConfig(threads=True), TypeError, "threads"),
    "config-threads-zero": Bad(lambda e: EventConfig(threads=0), ValueError, "threads"),
    "config-dead_letter_limit-negative": Bad(
        lambda e: EventConfig(dead_letter_limit=-1), ValueError, "dead_letter_limit"
    ),
    "config-blocking_threshold-nan": Bad(
        lambda e: EventConfig(blocking_threshold=NAN), ValueError, "blocking_threshold"
    ),
    "config-max_threads-below-threads": Bad(
        lambda e: EventConfig(threads=4, max_threads=2), ValueError, "max_threads"
    ),
    "config-recover-unknown": Bad(
        lambda e: EventConfig(recover="ignore"),  # type: ignore[arg-type]
        ValueError,
        "recover",
    ),
    "config-read_only-str": Bad(
        lambda e: EventConfig(read_only="yes"),  # type: ignore[arg-type]
        TypeError,
        "read_only",
    ),
    # -- NodeConfig (fields other than the name and the endpoints) --------------------
    "node-heartbeat_interval-zero": Bad(
        lambda e: NodeConfig(name="a", heartbeat_interval=0), ValueError, "heartbeat_interval"
    ),
    "node-heartbeat_timeout-nan": Bad(
        lambda e: NodeConfig(name="a", heartbeat_timeout=NAN), ValueError, "heartbeat_timeout"
    ),
    "node-heartbeat_timeout-shorter": Bad(
        lambda e: NodeConfig(name="a", heartbeat_interval=2, heartbeat_timeout=1),
        ValueError,
        "heartbeat_timeout",
    ),
    "node-batch_size-zero": Bad(
        lambda e: NodeConfig(name="a", batch_size=0), ValueError, "batch_size"
    ),
    # Regression: accepted, then an OverflowError when the node started.
    "node-recovery_ring-2**63": Bad(
        lambda e: NodeConfig(name="a", recovery_ring=2**63), ValueError, "recovery_ring"
    ),
    "node-send_queue-2**63": Bad(
        lambda e: NodeConfig(name="a", send_queue=2**63), ValueError, "send_queue"
    ),
    "node-send_hwm-2**31": Bad(
        lambda e: NodeConfig(name="a", send_hwm=2**31), ValueError, "send_hwm"
    ),
    "node-receive_hwm-2**31": Bad(
        lambda e: NodeConfig(name="a", receive_hwm=2**31), ValueError, "receive_hwm"
    ),
    "node-max_frame_bytes-2**63": Bad(
        lambda e: NodeConfig(name="a", max_frame_bytes=2**63), ValueError, "max_frame_bytes"
    ),
    "node-recovery_ring-maxsize": Bad(  # its ring also holds twice send_queue
        lambda e: NodeConfig(name="a", recovery_ring=sys.maxsize), ValueError, "recovery_ring"
    ),
    "node-max_frame_bytes-2**62": Bad(  # a socket reads parts up to twice it
        lambda e: NodeConfig(name="a", max_frame_bytes=2**62), ValueError, "max_frame_bytes"
    ),
    "node-credit_window-10**400": Bad(
        lambda e: NodeConfig(name="a", credit_window=10**400), ValueError, "credit_window"
    ),
    "node-max_frame_bytes-str": Bad(
        lambda e: NodeConfig(name="a", max_frame_bytes="16M"),  # type: ignore[arg-type]
        TypeError,
        "max_frame_bytes",
    ),
    "node-recovery_ring-zero": Bad(
        lambda e: NodeConfig(name="a", recovery_ring=0), ValueError, "recovery_ring"
    ),
    "node-send_hwm-negative": Bad(
        lambda e: NodeConfig(name="a", send_hwm=-1), ValueError, "send_hwm"
    ),
    "node-receive_hwm-bool": Bad(
        lambda e: NodeConfig(name="a", receive_hwm=False), TypeError, "receive_hwm"
    ),
    "node-curve_public_key-str": Bad(
        lambda e: NodeConfig(name="a", curve_public_key="k" * 40),  # type: ignore[arg-type]
        TypeError,
        "curve_public_key",
    ),
    "node-authorized_keys-str-item": Bad(
        lambda e: NodeConfig(name="a", authorized_keys=("k" * 40,)),  # type: ignore[arg-type]
        TypeError,
        "authorized_keys",
    ),
    "node-peer_public_keys-str-value": Bad(
        lambda e: NodeConfig(name="a", peer_public_keys={"ipc:///tmp/x": "k" * 40}),  # type: ignore[dict-item]
        TypeError,
        "peer_public_keys",
    ),
    # -- EventFilter ------------------------------------------------------------------------
    "filter-min_priority-str": Bad(
        lambda e: EventFilter(min_priority="5"),  # type: ignore[arg-type]
        TypeError,
        "min_priority",
    ),
    "filter-min_priority-bool": Bad(
        lambda e: EventFilter(min_priority=True), TypeError, "min_priority"
    ),
    "filter-source-int": Bad(
        lambda e: EventFilter(source=5),  # type: ignore[arg-type]
        TypeError,
        "source",
    ),
    "filter-tags_any-int-item": Bad(
        lambda e: EventFilter(tags_any=("a", 1)),  # type: ignore[arg-type]
        TypeError,
        "tags_any",
    ),
    "filter-tags_any-int": Bad(
        lambda e: EventFilter(tags_any=5),  # type: ignore[arg-type]
        TypeError,
        "tags_any",
    ),
    "filter-data_equals-list": Bad(
        lambda e: EventFilter(data_equals=[("a", 1)]),  # type: ignore[arg-type]
        TypeError,
        "data_equals",
    ),
    "filter-data_equals-int-key": Bad(
        lambda e: EventFilter(data_equals={1: "a"}),  # type: ignore[dict-item]
        TypeError,
        "data_equals",
    ),
    "filter-from_dict-str": Bad(
        lambda e: EventFilter.from_dict("source=a"),  # type: ignore[arg-type]
        TypeError,
        "mapping",
    ),
    # -- EventQuery -------------------------------------------------------------------------
    "query-correlation_id-str": Bad(
        lambda e: EventQuery(correlation_id="abc"),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "query-time_range-strs": Bad(
        lambda e: EventQuery(time_range=("x", "y")),  # type: ignore[arg-type]
        TypeError,
        "time_range",
    ),
    "query-time_range-one": Bad(
        lambda e: EventQuery(time_range=(T0,)),  # type: ignore[arg-type]
        ValueError,
        "time_range",
    ),
    "query-time_range-int": Bad(
        lambda e: EventQuery(time_range=5),  # type: ignore[arg-type]
        TypeError,
        "time_range",
    ),
    "query-time_range-reversed": Bad(
        lambda e: EventQuery(time_range=(T0, T0 - timedelta(days=1))), ValueError, "time_range"
    ),
    "query-event_types-int-item": Bad(
        lambda e: EventQuery(event_types=["a.*", 5]),  # type: ignore[list-item]
        TypeError,
        "event_types",
    ),
    "query-event_types-bytes": Bad(
        lambda e: EventQuery(event_types=b"a.*"),  # type: ignore[arg-type]
        TypeError,
        "event_types",
    ),
    "query-source-int": Bad(
        lambda e: EventQuery(source=5),  # type: ignore[arg-type]
        TypeError,
        "source",
    ),
    "query-after_sequence-negative": Bad(
        lambda e: EventQuery(after_sequence=-1), ValueError, "after_sequence"
    ),
    "query-after_sequence-str": Bad(
        lambda e: EventQuery(after_sequence="3"),  # type: ignore[arg-type]
        TypeError,
        "after_sequence",
    ),
    "query-limit-str": Bad(
        lambda e: EventQuery(limit="5"),  # type: ignore[arg-type]
        TypeError,
        "limit",
    ),
    "query-limit-negative": Bad(lambda e: EventQuery(limit=-1), ValueError, "limit"),
    "query-descending-str": Bad(
        lambda e: EventQuery(descending="yes"),  # type: ignore[arg-type]
        TypeError,
        "descending",
    ),
    # -- Trace ------------------------------------------------------------------------------
    "trace-correlation_id-str": Bad(
        lambda e: Trace("abc"),  # type: ignore[arg-type]
        TypeError,
        "correlation_id",
    ),
    "trace-get-str": Bad(
        lambda e: Trace(CID).get("abc"),  # type: ignore[arg-type]
        TypeError,
        "event_id",
    ),
    "trace-children-str": Bad(
        lambda e: Trace(CID).children("abc"),  # type: ignore[arg-type]
        TypeError,
        "event_id",
    ),
    "trace-render-show_data-str": Bad(
        lambda e: Trace(CID).render(show_data="yes"),  # type: ignore[arg-type]
        TypeError,
        "show_data",
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_a_bad_argument_fails_at_the_call_site_naming_it(env: Env, case: Bad) -> None:
    with pytest.raises(case.error, match=case.match):
        _call(case, env)


def _call(case: Bad, env: Env) -> None:
    """Call; run a coroutine's body (a coroutine checks its arguments when awaited)."""
    result = case.call(env)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: Any) -> Any:
    return await awaitable


# -- a refused call changes nothing ---------------------------------------------------------


def test_a_refused_subscribe_leaves_no_subscription(bus: EventBus) -> None:
    for options in ({"filter": "x"}, {"capacity": "5"}, {"overflow": "nope"}):
        with pytest.raises((TypeError, ValueError)):
            bus.subscribe("a.*", _h, **options)
    assert bus.subscriptions() == []
    assert bus.metrics().subscriptions == 0


def test_a_refused_close_leaves_the_bus_open(bus: EventBus) -> None:
    with pytest.raises(ValueError, match="timeout"):
        bus.close(timeout=-1)
    assert not bus.closed
    assert bus.publish("a.b").get(timeout=WAIT).sequence == 1


def test_negative_retention_never_reaches_the_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    with PersistentEventBus(EventConfig(persistence_path=path)) as bus:
        bus.publish("a.b", {"n": 1}).get(timeout=WAIT)
    with pytest.raises(ValueError, match="retention_days"):
        PersistentEventBus(EventConfig(persistence_path=path, retention_days=-1))
    with PersistentEventBus(EventConfig(persistence_path=path)) as bus:
        assert [e.data for e in bus.query(EventQuery())] == [{"n": 1}]


# -- what is accepted ---------------------------------------------------------------------


def test_overflow_takes_the_enum_or_its_value_everywhere(bus: EventBus) -> None:
    for value in ("drop_newest", OverflowStrategy.DROP_NEWEST):
        assert EventConfig(overflow=value).overflow is OverflowStrategy.DROP_NEWEST  # type: ignore[arg-type]
        bus.subscribe("a.*", _h, overflow=value).unsubscribe()


def test_a_bare_str_in_tags_any_is_one_tag() -> None:
    flt = EventFilter(tags_any="urgent")
    assert flt.tags_any == ("urgent",)
    assert flt(Event(event_type="a.b", tags=("urgent",)))
    assert not flt(Event(event_type="a.b", tags=("u",)))
    assert EventFilter.from_dict(flt.to_dict()) == flt


def test_min_priority_filters_by_number() -> None:
    flt = EventFilter(min_priority=5)
    assert flt(Event(event_type="a.b", priority=5))
    assert not flt(Event(event_type="a.b", priority=4))


def test_query_accepts_a_str_pattern_open_ranges_and_naive_times() -> None:
    query = EventQuery(event_types="a.*", time_range=(None, datetime(2026, 1, 1)))
    assert query.event_types == ("a.*",)
    assert EventQuery(time_range=[T0, None]).time_range == (T0, None)
    assert EventQuery(time_range=(T0, T0)).time_range == (T0, T0)


def test_zero_timeouts_and_ints_are_accepted(bus: EventBus) -> None:
    bus.publish_correlated("a.b", {}, CID).get(timeout=WAIT)
    assert [e.event_type for e in bus.get_correlated(CID, timeout=WAIT)] == ["a.b"]
    bus.flush(timeout=int(WAIT))
    assert len(bus.trace(CID, timeout=WAIT)) == 1
