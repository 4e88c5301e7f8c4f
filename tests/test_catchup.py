"""Catch-up and durable subscriptions (``actors._core.catchup``): history, then live.

Every test runs a real RocksDB journal in ``tmp_path``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actors import Event, EventBus, EventBusError
from tests._support import WAIT, Recorder, publish_all, wait_for


@pytest.fixture
def cpu_burner() -> Iterator[None]:
    """A real process spinning on a CPU while the test runs (it widens thread races)."""
    burner = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait(WAIT)


def test_flush_returns_once_the_last_history_page_is_handled(
    open_bus: Callable[..., EventBus], cpu_burner: None
) -> None:
    """A catch-up subscription is live the moment it delivered past its last page.

    ``flush`` used to wait for ever when the gap read while joining (events
    published between the last history page and the join) was handled in the
    turn that switched to live, and no live event followed.  Publishing
    while the subscription joins, then stopping, puts events in that gap.
    """
    bus = open_bus()
    publish_all(bus, [Event(event_type="h.x", data=-1) for _ in range(600)])
    for round_ in range(25):
        seen: list[Event] = []
        published: list[Event] = []
        going = threading.Event()

        def publisher(
            published: list[Event] = published, going: threading.Event = going, data: int = round_
        ) -> None:
            going.set()
            for _ in range(30):
                batch = [Event(event_type="h.x", data=data) for _ in range(10)]
                published.extend(publish_all(bus, batch))

        t = threading.Thread(target=publisher)
        t.start()
        assert going.wait(WAIT)
        start = (published[-1].sequence or 1) if published else 1
        sub = bus.subscribe("h.*", seen.append, from_sequence=start)
        t.join(WAIT)
        bus.flush(timeout=WAIT)
        sequences = [e.sequence or 0 for e in seen]
        assert sequences == list(range(start, sequences[-1] + 1))
        assert published[-1].sequence == sequences[-1]
        sub.unsubscribe()


def test_a_catch_up_subscription_is_active_and_listed(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    publish_all(bus, [Event(event_type="h.x", data=i) for i in range(10)])
    sub = bus.subscribe("h.*", lambda e: None, from_sequence=1)
    assert sub.active
    assert [s.id for s in bus.subscriptions()] == [sub.id]
    bus.flush(timeout=WAIT)
    sub.unsubscribe()
    assert not sub.active


def test_catch_up_from_sequence_while_others_publish(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    history = publish_all(bus, [Event(event_type="load.tick", data=i) for i in range(3000)])
    start = history[1234].sequence or 0
    stop = threading.Event()
    lock = threading.Lock()
    published: list[Event] = list(history)

    def publisher() -> None:
        futures = []
        for i in range(40_000):  # a cap, in case stop never comes
            if stop.is_set():
                break
            futures.append(bus.publish("load.tick", i))
            if i % 100 == 99:
                futures[-1].get(timeout=30)
        done = [f.get(timeout=30) for f in futures]
        with lock:
            published.extend(done)

    recorder = Recorder()
    stop_after: list[int] = []

    def handler(event: Event) -> None:
        recorder(event)
        if stop_after and (event.sequence or 0) >= stop_after[0]:
            stop.set()

    threads = [threading.Thread(target=publisher) for _ in range(3)]
    for t in threads:
        t.start()
    bus.subscribe("load.*", handler, from_sequence=start, capacity=1_000_000)
    marker = bus.publish("load.marker").get(timeout=30)
    published.append(marker)
    # Keep publishing until the subscriber is well into live delivery.
    stop_after.append((marker.sequence or 0) + 1500)
    for t in threads:
        t.join()
    last = bus.publish("load.marker").get(timeout=30)
    published.append(last)
    recorder.wait_for(last, timeout=60)
    bus.flush(timeout=60)
    expected = sorted(e.sequence or 0 for e in published if (e.sequence or 0) >= start)
    seen = recorder.sequences
    assert stop.is_set(), "publishers ran out before the subscriber went live"
    assert len(seen) == len(set(seen)), "duplicates"
    assert seen == expected


def test_catch_up_subscription_filters_pattern_and_then_goes_live(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, [Event(event_type="a.x" if i % 3 else "b.x", data=i) for i in range(1, 1201)])
    seen = Recorder()
    bus.subscribe("a.*", seen, from_sequence=600)
    bus.publish("b.x", "not mine")
    live = bus.publish("a.x", "live").get(timeout=10)
    seen.wait_for(live)
    bus.flush(timeout=30)
    assert seen.data == [i for i in range(600, 1201) if i % 3] + ["live"]


def test_flush_waits_for_a_catching_up_subscription(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    publish_all(bus, [Event(event_type="a.x", data=i) for i in range(20_000)])
    seen: list[Any] = []
    bus.subscribe("a.*", lambda e: seen.append(e.data), from_sequence=1)
    bus.publish("a.x", "live")
    bus.flush(timeout=60)
    assert seen[-1:] == ["live"]
    assert len(seen) == 20_001


def test_catch_up_needs_a_journal() -> None:
    with EventBus() as bus, pytest.raises(EventBusError, match="no journal"):
        bus.subscribe("a.*", print, from_sequence=1)


# -- durable subscriptions ---------------------------------------------------------------


def test_durable_subscription_resumes_exactly_across_clean_close(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, [Event(event_type="job.old", data="before") for _ in range(3)])
    seen: list[Any] = []
    # New, without a starting point: starts live.
    bus.subscribe("job.*", lambda e: seen.append(e.data), durable="worker")
    publish_all(bus, [Event(event_type="job.run", data=i) for i in range(10)])
    bus.close()
    assert seen == list(range(10))

    bus = open_bus()  # no durable subscriber while these are published
    publish_all(bus, [Event(event_type="job.run", data=i) for i in range(10, 15)])
    bus.close()

    resumed = Recorder()
    bus = open_bus()
    bus.subscribe("job.*", resumed, durable="worker")
    last = publish_all(bus, [Event(event_type="job.run", data=i) for i in range(15, 18)])[-1]
    resumed.wait_for(last)
    bus.flush(timeout=30)
    assert resumed.data == list(range(10, 18))


def test_durable_names_are_independent(open_bus: Callable[..., EventBus]) -> None:
    bus = open_bus()
    a: list[Any] = []
    sub = bus.subscribe("job.*", lambda e: a.append(e.data), durable="a")
    publish_all(bus, [Event(event_type="job.run", data=i) for i in range(4)])
    bus.flush(timeout=30)
    sub.unsubscribe()
    publish_all(bus, [Event(event_type="job.run", data=i) for i in range(4, 6)])
    bus.close()

    bus = open_bus()
    ra, rb = Recorder(), Recorder()
    bus.subscribe("job.*", ra, durable="a")
    bus.subscribe("job.*", rb, durable="b", from_sequence=1)
    last = bus.publish("job.run", 6).get(timeout=10)
    ra.wait_for(last)
    rb.wait_for(last)
    assert ra.data == [4, 5, 6]
    assert rb.data == list(range(7))


def test_unsubscribing_a_catch_up_subscription_never_strands_a_flush(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    publish_all(bus, [Event(event_type="h.x", data=i) for i in range(3000)])
    entered = threading.Event()
    release = threading.Event()

    def slow(event: Event) -> None:
        entered.set()
        assert release.wait(WAIT)

    sub = bus.subscribe("h.*", slow, from_sequence=1, dedicated_thread=True)
    assert entered.wait(WAIT)  # parked inside its first history page
    flushed = threading.Event()
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            bus.flush(timeout=None)  # waits for the catch-up...
        except BaseException as exc:
            errors.append(exc)
        flushed.set()

    t = threading.Thread(target=flusher)
    t.start()
    sub.unsubscribe()  # ... until it is gone
    assert flushed.wait(WAIT), "flush kept waiting for an unsubscribed catch-up"
    assert errors == []
    release.set()
    t.join(WAIT)


# Regression: a catch-up subscription whose history ran out just after it was unsubscribed
# joined the router all the same (its Subscribe came after the Unsubscribe): a route nobody
# would remove, to a stopped actor, so every later flush waited for ever on its events.
def test_a_catch_up_unsubscribed_before_it_joined_never_becomes_a_route(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    for i in range(5):
        bus.publish("hist.x", i)
    bus.flush()
    sub = bus.subscribe("hist.*", lambda _: None, from_sequence=1)
    actor = sub._actor  # noqa: SLF001 - its catch-up, to end its history late
    assert actor.catchup is not None
    sub.unsubscribe()
    assert wait_for(actor.actor_stopped.is_set, WAIT)
    # What its last turn does when the end of history comes after the unsubscribe.
    actor.catchup._join(actor.catchup.route, lambda _: None)  # noqa: SLF001
    bus.publish("hist.x", "after")
    bus.flush(timeout=WAIT)  # raised TimeoutError: the event waited in the stopped mailbox
    assert bus.subscriptions() == []
