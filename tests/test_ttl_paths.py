"""``Event.ttl`` on every path a user can take (SPEC: "an expired event is not delivered").

Live delivery under each overflow strategy, handler retries, catch-up and
durable subscriptions (a real RocksDB journal, across a restart),
``replay``/``query``, request/reply, two nodes over tcp, async handlers and
streams, and the edge values of ``ttl``.

Expiry without waiting: an event stamped a minute in the past with a ttl of
a second is expired from the start.  Where an event must expire *while*
queued or handled, a handler holds on a ``threading.Event`` and the test
waits for ``event.expired()`` with a bounded poll (``wait_for``), never a
sleep.  The decisions are in docs/architecture.md ("``ttl``: when an event
expires").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    InvalidEventError,
    OverflowStrategy,
    PersistentEventBus,
    RequestTimeoutError,
    Subscription,
)
from tests._cluster_support import node as bridge
from tests._cluster_support import request_endpoint as endpoint
from tests._support import WAIT, Collector, wait_for

LONG_AGO = timedelta(seconds=60)
# Long enough for the event to be still fresh when its batch starts (even on a
# loaded machine), short enough for the test to wait it out by polling.
SHORT_TTL = 0.5


def stale(data: Any, event_type: str = "t") -> Event:
    """An event stamped a minute ago with a one-second ttl: expired from the start."""
    return Event(event_type=event_type, data=data, timestamp=datetime.now(UTC) - LONG_AGO, ttl=1.0)


def expire(event: Event) -> None:
    """Wait (bounded poll) until ``event``'s ttl has passed."""
    assert wait_for(event.expired), "the event never expired"


class Holder:
    """A handler that records data and holds inside the events whose data is in ``gates``."""

    def __init__(self, *held: Any) -> None:
        self.gates = {d: (threading.Event(), threading.Event()) for d in held}
        self.seen: list[Any] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(event.data)
        if event.data in self.gates:
            entered, release = self.gates[event.data]
            entered.set()
            assert release.wait(WAIT), "the test never released the handler"

    def entered(self, data: Any) -> None:
        assert self.gates[data][0].wait(WAIT), f"the handler never got {data!r}"

    def release(self, data: Any) -> None:
        self.gates[data][1].set()


def assert_expired_only(bus: EventBus, sub: Subscription, expired: int, delivered: int) -> None:
    """The subscription and the bus count ``expired`` expiries; no dead letter, nothing lost."""
    stats = sub.statistics()
    assert (stats.expired, stats.delivered) == (expired, delivered)
    assert (stats.dead_letters, stats.dropped, stats.in_flight, stats.queued) == (0, 0, 0, 0)
    assert stats.accepted == expired + delivered
    metrics = bus.metrics()
    assert metrics.expired == expired
    assert metrics.dead_letters == 0
    assert bus.dead_letters() == []


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[Callable[[], EventBus]]:
    """Open ``PersistentEventBus``es on one journal, one at a time; close what is left."""
    opened: list[EventBus] = []

    def opener() -> EventBus:
        for old in opened:
            if not old.closed:
                old.close(timeout=WAIT)
        bus = PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"), threads=2))
        opened.append(bus)
        return bus

    yield opener
    for bus in opened:
        if not bus.closed:
            bus.close(timeout=WAIT)


# -- 1. live delivery ----------------------------------------------------------------


@pytest.mark.parametrize("overflow", list(OverflowStrategy))
def test_live_event_expiring_in_the_mailbox_is_skipped_and_counted(
    bus: EventBus, overflow: OverflowStrategy
) -> None:
    """Live path: an event that expires queued behind a held handler is skipped.

    Counted as ``expired`` by its subscription and by ``bus.metrics()``; no
    dead letter; its publish future resolves (the event is sequenced).
    """
    hold = Holder("hold")
    sub = bus.subscribe("t", hold, capacity=4, overflow=overflow)
    bus.publish("t", "hold")
    hold.entered("hold")
    short = bus.publish("t", "short", ttl=0.05).get(timeout=WAIT)
    assert short.sequence == 2
    expire(short)
    hold.release("hold")
    bus.flush(WAIT)
    assert hold.seen == ["hold"]
    assert_expired_only(bus, sub, expired=1, delivered=1)


def test_live_event_expired_at_publish_is_published_but_never_delivered(bus: EventBus) -> None:
    """Live path: an already expired event is sequenced but no handler sees it."""
    got = Collector()
    sub = bus.subscribe("t", got)
    published = bus.publish(stale("old")).get(timeout=WAIT)
    assert published.sequence == 1
    assert published.expired()
    bus.publish("t", "fresh").get(timeout=WAIT)
    bus.flush(WAIT)
    assert got.data == ["fresh"]
    assert_expired_only(bus, sub, expired=1, delivered=1)
    assert bus.metrics().published == 2


@pytest.mark.parametrize("overflow", list(OverflowStrategy))
def test_live_event_expiring_while_its_batch_runs_is_not_delivered(
    bus: EventBus, overflow: OverflowStrategy
) -> None:
    """Live path: "first" and "short" wait together and are taken as one batch.

    "short" expires while the handler holds on "first": a user expects it
    skipped and counted like any expired event, not handed to the handler.
    """
    hold = Holder("hold", "first")
    sub = bus.subscribe("t", hold, capacity=4, overflow=overflow)
    bus.publish("t", "hold")
    hold.entered("hold")
    bus.publish("t", "first")
    short = bus.publish("t", "short", ttl=SHORT_TTL).get(timeout=WAIT)
    assert wait_for(lambda: sub.statistics().queued == 2)
    hold.release("hold")
    hold.entered("first")
    expire(short)
    hold.release("first")
    bus.flush(WAIT)
    assert hold.seen == ["hold", "first"]
    assert_expired_only(bus, sub, expired=1, delivered=2)


def test_async_handler_event_expiring_while_its_batch_runs_is_not_delivered() -> None:
    """Live path, ``async def`` handler: an event expiring during its batch is not delivered."""

    async def main() -> tuple[list[Any], int]:
        abus = AsyncEventBus(EventConfig(threads=2))
        seen: list[Any] = []
        go = asyncio.Event()

        async def handler(event: Event) -> None:
            seen.append(event.data)
            if event.data == "first":
                await go.wait()

        try:
            sub = await abus.subscribe("t", handler)
            futures = abus.sync.publish_many(
                [
                    Event(event_type="t", data="first"),
                    Event(event_type="t", data="short", ttl=SHORT_TTL),
                ]
            )
            short = futures[1].get(timeout=WAIT)
            await asyncio.to_thread(expire, short)
            go.set()
            await asyncio.to_thread(abus.sync.flush, WAIT)
            return seen, sub.statistics().expired
        finally:
            await abus.aclose()

    seen, expired = asyncio.run(main())
    assert seen == ["first"]
    assert expired == 1


def test_stream_does_not_yield_an_event_that_expired_unread() -> None:
    """``AsyncEventBus.stream``: an event that expires before the reader takes it is skipped."""

    async def main() -> tuple[Any, int]:
        abus = AsyncEventBus(EventConfig(threads=2))
        try:
            stream = abus.stream("s")
            short = await abus.publish("s", "short", ttl=0.05)
            await asyncio.to_thread(abus.sync.flush, WAIT)
            await asyncio.to_thread(expire, short)
            await abus.publish("s", "fresh")
            first = await asyncio.wait_for(anext(stream), WAIT)
            expired = stream.expired  # it expired unread, in the stream's buffer
            await stream.aclose()
            return first.data, expired
        finally:
            await abus.aclose()

    first, expired = asyncio.run(main())
    assert first == "fresh"
    assert expired == 1


# -- 2. handler retries --------------------------------------------------------------


def test_retry_is_not_attempted_once_the_event_expired(bus: EventBus) -> None:
    """Retry path: the first attempt fails after the ttl passed; no retry, no dead letter.

    A user expects an expired event not to be handed to the handler again:
    it counts as expired, not as a dead letter.
    """
    calls: list[Event] = []

    def failing(event: Event) -> None:
        calls.append(event)
        expire(event)
        raise RuntimeError("failed after the ttl passed")

    sub = bus.subscribe("t", failing, retries=2, retry_backoff=0.0)
    bus.publish("t", "r", ttl=0.05).get(timeout=WAIT)
    bus.flush(WAIT)
    stats = sub.statistics()
    assert len(calls) == 1
    assert (stats.expired, stats.dead_letters, stats.errors) == (1, 0, 1)
    assert bus.dead_letters() == []


def test_expired_event_is_never_tried_so_never_a_dead_letter(bus: EventBus) -> None:
    """Retry path: a failing handler is not called for an event already expired."""
    calls: list[Event] = []

    def failing(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("boom")

    sub = bus.subscribe("t", failing, retries=3, retry_backoff=0.0)
    bus.publish(stale("old")).get(timeout=WAIT)
    bus.flush(WAIT)
    assert calls == []
    assert_expired_only(bus, sub, expired=1, delivered=0)
    assert sub.statistics().errors == 0


# -- 3. catch-up and durable subscriptions -----------------------------------------


def test_catch_up_skips_expired_history_and_counts_it_also_after_a_restart(
    persistent: Callable[[], EventBus],
) -> None:
    """Catch-up path (``from_sequence=1``): expired journaled events are not delivered.

    Before and after a restart: the journal keeps them, the catch-up skips
    them and counts them as expired.
    """
    bus = persistent()
    bus.publish(stale("old")).get(timeout=WAIT)
    bus.publish("t", "long", ttl=3600.0).get(timeout=WAIT)
    bus.publish("t", "zero", ttl=0).get(timeout=WAIT)
    bus.publish("t", "none").get(timeout=WAIT)
    bus.flush(WAIT)
    for reopened in (False, True):
        if reopened:
            bus = persistent()
        got = Collector()
        sub = bus.subscribe("t", got, from_sequence=1)
        bus.flush(WAIT)
        assert got.data == ["long", "none"], f"reopened={reopened}"
        assert_expired_only(bus, sub, expired=2, delivered=2)


def test_catch_up_event_expiring_while_its_page_runs_is_not_delivered(
    persistent: Callable[[], EventBus],
) -> None:
    """Catch-up path: "short" expires while the handler holds on "first" of the same page."""
    bus = persistent()
    bus.publish("t", "first").get(timeout=WAIT)
    short = bus.publish("t", "short", ttl=SHORT_TTL).get(timeout=WAIT)
    hold = Holder("first")
    sub = bus.subscribe("t", hold, from_sequence=1)
    hold.entered("first")
    expire(short)
    hold.release("first")
    bus.flush(WAIT)
    assert hold.seen == ["first"]
    assert sub.statistics().expired == 1


def test_durable_resume_skips_events_that_expired_while_it_was_away(
    persistent: Callable[[], EventBus],
) -> None:
    """Durable path: events journaled while the bus was down are read on resume.

    The expired one is skipped and counted; the checkpoint moves past it, so
    the next resume neither delivers nor counts it again.
    """
    bus = persistent()
    first = Collector()
    bus.subscribe("t", first, durable="d")
    bus.publish("t", "a").get(timeout=WAIT)
    bus.flush(WAIT)
    assert first.data == ["a"]
    bus = persistent()  # closes the first one: the subscription is away
    bus.publish(stale("old")).get(timeout=WAIT)
    bus.publish("t", "fresh", ttl=3600.0).get(timeout=WAIT)
    bus = persistent()
    resumed = Collector()
    sub = bus.subscribe("t", resumed, durable="d")
    bus.flush(WAIT)
    assert resumed.data == ["fresh"]
    assert_expired_only(bus, sub, expired=1, delivered=1)
    bus = persistent()
    again = Collector()
    sub = bus.subscribe("t", again, durable="d")
    bus.publish("t", "later").get(timeout=WAIT)
    bus.flush(WAIT)
    assert again.data == ["later"]
    assert_expired_only(bus, sub, expired=0, delivered=1)


# -- 4. replay and query -------------------------------------------------------------


def test_query_and_replay_return_expired_events_as_history(
    persistent: Callable[[], EventBus],
) -> None:
    """Query and replay paths: the journal is history, expired events included.

    ``replay`` hands every stored event to its handler (it is not a
    subscription delivery); neither counts an expiry.
    """
    bus = persistent()
    bus.publish(stale("old")).get(timeout=WAIT)
    bus.publish("t", "fresh", ttl=3600.0).get(timeout=WAIT)
    bus.flush(WAIT)
    stored = bus.query(EventQuery(event_types=["t"]))
    assert [e.data for e in stored] == ["old", "fresh"]
    assert stored[0].expired()
    assert (stored[0].ttl, stored[1].ttl) == (1.0, 3600.0)
    replayed: list[Any] = []
    assert bus.replay(EventQuery(event_types=["t"]), lambda e: replayed.append(e.data)) == 2
    assert replayed == ["old", "fresh"]
    assert bus.metrics().expired == 0


# -- 5. request/reply ----------------------------------------------------------------


def test_request_ttl_reaches_the_responder_and_the_reply_has_none(bus: EventBus) -> None:
    """Request path: ``request(..., ttl=...)`` sets the request's ttl; the reply has no ttl."""
    requests: list[Event] = []

    def answer(event: Event) -> Any:
        requests.append(event)
        return {"echo": event.data}

    bus.respond("job.run", answer)
    reply = bus.request("job.run", 1, ttl=30.0, timeout=WAIT)
    assert reply.data == {"echo": 1}
    assert requests[0].ttl == 30.0
    assert reply.ttl is None


def test_expired_request_gets_no_reply_and_times_out(bus: EventBus) -> None:
    """Request path: an expired request is skipped by the responder (counted), so it times out.

    No error reply and no dead letter; ``request_all`` returns no reply.
    """
    calls: list[Event] = []
    sub = bus.respond("job.run", calls.append)
    old = datetime.now(UTC) - LONG_AGO
    with pytest.raises(RequestTimeoutError):
        bus.request("job.run", 1, ttl=1.0, timestamp=old, timeout=0.3)
    assert bus.request_all("job.run", 2, ttl=1.0, timestamp=old, timeout=0.3) == []
    bus.flush(WAIT)
    assert calls == []
    assert_expired_only(bus, sub, expired=2, delivered=0)


# -- 6. two nodes --------------------------------------------------------------------


@pytest.fixture
def pair(nodes: Callable[..., EventBus]) -> tuple[EventBus, EventBus]:
    """Node ``a`` and node ``b`` joined over tcp on 127.0.0.1, ``b`` following ``a``."""
    a = nodes("a", listen="tcp://127.0.0.1:*")
    b = nodes("b", listen="tcp://127.0.0.1:*", peers=(endpoint(a),))
    return a, b


def test_event_expired_in_transit_is_dropped_and_counted_on_the_receiving_node(
    pair: tuple[EventBus, EventBus],
) -> None:
    """Cluster path: an expired event from node ``a`` is not delivered on ``b``; ``b`` counts it."""
    a, b = pair
    got = Collector(2)
    sub = b.subscribe("t", got)
    assert bridge(a).wait_for_peers(["b"], WAIT)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    a.publish(stale("old")).get(timeout=WAIT)
    a.publish("t", "fresh", ttl=3600.0).get(timeout=WAIT)
    a.publish("t", "end").get(timeout=WAIT)
    assert got.done.wait(WAIT)
    b.flush(WAIT)
    assert got.data == ["fresh", "end"]
    assert [(e.origin, e.ttl) for e in got.events] == [("a", 3600.0), ("a", None)]
    assert_expired_only(b, sub, expired=1, delivered=2)


def test_event_expiring_queued_on_the_receiving_node_is_dropped_there(
    pair: tuple[EventBus, EventBus],
) -> None:
    """Cluster path: a remote event expires in ``b``'s mailbox behind a held handler."""
    a, b = pair
    hold = Holder("hold")
    sub = b.subscribe("t", hold)
    assert bridge(a).wait_for_peers(["b"], WAIT)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    a.publish("t", "hold")
    hold.entered("hold")
    short = a.publish("t", "short", ttl=0.05).get(timeout=WAIT)
    assert wait_for(lambda: sub.statistics().queued == 1)
    expire(short)
    hold.release("hold")
    b.flush(WAIT)
    assert hold.seen == ["hold"]
    assert_expired_only(b, sub, expired=1, delivered=1)


# -- 7. edge values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        (-1, "ttl must be finite and >= 0"),
        (-1e-9, "ttl must be finite and >= 0"),
        (float("nan"), "ttl must be finite and >= 0"),
        (float("inf"), "ttl must be finite and >= 0"),
        (float("-inf"), "ttl must be finite and >= 0"),
        (10**400, "ttl is too large"),
        (True, "ttl must be a number of seconds, not bool"),
        (False, "ttl must be a number of seconds, not bool"),
        ("1", "ttl must be a number of seconds, not str"),
    ],
)
def test_refused_ttl_values_raise_invalid_event_error(
    bus: EventBus, ttl: Any, message: str
) -> None:
    """Edge values: refused by ``Event`` and by ``publish`` alike, before anything is published."""
    with pytest.raises(InvalidEventError, match=message):
        Event(event_type="t", ttl=ttl)
    with pytest.raises(InvalidEventError, match=message):
        bus.publish("t", None, ttl=ttl)
    assert bus.metrics().published == 0


@pytest.mark.parametrize(
    ("ttl", "stored", "delivered"),
    [(0, 0.0, False), (-0.0, 0.0, False), (5, 5.0, True), (1e300, 1e300, True)],
)
def test_accepted_ttl_values_are_floats_and_zero_never_delivers(
    bus: EventBus, ttl: float, stored: float, delivered: bool
) -> None:
    """Edge values: ints become floats; 0 (and -0.0) mean "already expired", 1e300 never expires.

    Each survives the wire encoding unchanged.
    """
    got = Collector()
    sub = bus.subscribe("t", got)
    event = bus.publish("t", "x", ttl=ttl).get(timeout=WAIT)
    assert isinstance(event.ttl, float)
    assert event.ttl == stored
    assert Event.from_bytes(event.to_bytes()).ttl == stored
    bus.flush(WAIT)
    assert got.data == (["x"] if delivered else [])
    assert_expired_only(bus, sub, expired=0 if delivered else 1, delivered=int(delivered))
