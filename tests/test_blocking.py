"""Handlers that block (an LLM call, a tool, an HTTP API) stall only their own subscription.

Every blocking handler here waits on a ``threading.Event`` that the test sets
at its end; nothing sleeps.  ``close`` under a blocked handler runs in a
child process, which the parent waits for with a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import Event, EventBus, EventConfig
from tests._support import WAIT, Collector, Gate, wait_for

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("_blocking_child.py")


class Stuck:
    """A handler that blocks in its first event until ``release`` is set."""

    def __init__(self, release: threading.Event, fail_on: str | None = None) -> None:
        self.release = release
        self.entered = threading.Event()
        self.fail_on = fail_on
        self.handled = 0

    def __call__(self, event: Event) -> None:
        if event.event_type == self.fail_on:
            raise RuntimeError("this handler fails on purpose")
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the handler"
        self.handled += 1


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.mark.parametrize("blocking", [2, 4, 16])
def test_blocking_handlers_stall_only_their_own_subscriptions(
    blocking: int, release: threading.Event
) -> None:
    bus = EventBus()  # the defaults: 2 handler threads
    try:
        assert bus.metrics().handler_threads == EventConfig().threads == 2
        stuck = [Stuck(release) for _ in range(blocking)]
        subs = [bus.subscribe("job.**", handler) for handler in stuck]
        fast = Collector(2001)
        other = bus.subscribe("job.**", fast)
        bus.publish("job.first").get(timeout=WAIT)
        assert all(h.entered.wait(WAIT) for h in stuck), "a blocking handler never ran"
        futures = [bus.publish("job.step", i) for i in range(2000)]
        for future in futures:
            assert future.get(timeout=WAIT).sequence is not None
        assert fast.done.wait(WAIT), f"the other subscription got {len(fast.events)} of 2001"
        assert fast.data[1:] == list(range(2000))
        assert wait_for(lambda: bus.metrics().blocked_handlers == blocking)
        # The watchdog marks a turn blocked, then adds its thread: a read between the
        # two sees one thread short, so the count is waited for too.
        assert wait_for(lambda: bus.metrics().handler_threads >= 2 + blocking)
        metrics = bus.metrics()
        assert metrics.handler_threads >= 2 + blocking
        assert metrics.handler_threads <= EventConfig().max_threads
        blocked = {s.id for s in metrics.per_subscription if s.blocked}
        assert blocked == {s.id for s in subs}
        assert other.id not in blocked
        for sub in subs:
            stats = sub.statistics()
            assert stats.blocked
            assert stats.blocked_seconds > 0
            assert stats.accepted == 2001
            assert (stats.delivered, stats.in_flight, stats.queued) == (0, 1, 2000)
    finally:
        release.set()
        bus.close(timeout=WAIT)
    assert all(h.handled == 2001 for h in stuck)


def test_statistics_add_up_while_a_handler_is_blocked(release: threading.Event) -> None:
    with EventBus() as bus:
        handler = Stuck(release, fail_on="job.fail")
        sub = bus.subscribe("job.**", handler, capacity=100)
        bus.publish("job.fail")
        bus.publish("job.block")
        assert handler.entered.wait(WAIT)
        futures = [bus.publish("job.step", i) for i in range(300)]
        for future in futures:
            future.get(timeout=WAIT)
        s = sub.statistics()
        # Everything accepted is somewhere, and the blocked batch is in flight.
        assert s.accepted == 302
        assert s.dead_letters == 1
        assert s.dropped == 200
        assert s.queued == 100
        assert s.in_flight == 1
        assert (
            s.delivered + s.expired + s.dead_letters + s.dropped + s.queued + s.in_flight
            == s.accepted
        )
        release.set()
        bus.flush(WAIT)
        s = sub.statistics()
        assert (s.delivered, s.in_flight, s.queued) == (101, 0, 0)
        assert s.delivered + s.dead_letters + s.dropped == s.accepted


def test_blocked_handlers_show_in_prometheus(release: threading.Event) -> None:
    with EventBus() as bus:
        handler = Stuck(release)
        sub = bus.subscribe("job.**", handler)
        bus.publish("job.block")
        assert handler.entered.wait(WAIT)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 1)
        text = bus.prometheus()
        assert "llmspell_events_blocked_handlers 1\n" in text
        assert f'llmspell_events_subscription_blocked{{id="{sub.id}",pattern="job.**"}} 1' in text
        assert f'llmspell_events_subscription_in_flight{{id="{sub.id}",pattern="job.**"}} 1' in text
        release.set()
        bus.flush(WAIT)
        assert wait_for(lambda: bus.metrics().blocked_handlers == 0)
        assert "llmspell_events_blocked_handlers 0\n" in bus.prometheus()


def test_a_blocked_dedicated_thread_is_reported_and_takes_no_shared_thread(
    release: threading.Event,
) -> None:
    with EventBus() as bus:
        handler = Stuck(release)
        sub = bus.subscribe("job.**", handler, dedicated_thread=True)
        bus.publish("job.block")
        assert handler.entered.wait(WAIT)
        assert wait_for(lambda: sub.statistics().blocked)
        # Under load another turn (the router's) can outlast the threshold and
        # add a shared thread for a while; it retires once idle.  A shared
        # thread taken by this handler would stay for as long as it blocks.
        assert wait_for(lambda: bus.metrics().handler_threads == 2)
        release.set()


def test_extra_threads_retire_once_handlers_return(release: threading.Event) -> None:
    config = EventConfig(threads=1, blocking_threshold=0.02)
    with EventBus(config) as bus:
        handlers = [Stuck(release) for _ in range(3)]
        for h in handlers:
            bus.subscribe("job.**", h)
        bus.publish("job.block")
        assert all(h.entered.wait(WAIT) for h in handlers)
        assert bus.metrics().handler_threads >= 3
        release.set()
        bus.flush(WAIT)
        # Idle extras leave after their keepalive (1 s by default).
        assert wait_for(lambda: bus.metrics().handler_threads == 1)


def test_routing_goes_on_while_every_handler_thread_is_blocked(release: threading.Event) -> None:
    # A single handler thread, blocked, with no room to add one: the router
    # and the correlation actor move to their own thread, and publish,
    # routing and correlation keep going regardless.
    config = EventConfig(threads=1, max_threads=1)
    with EventBus(config) as bus:
        handler = Stuck(release)
        bus.subscribe("job.**", handler)
        bus.publish("job.block")
        assert handler.entered.wait(WAIT)
        cid = uuid.uuid4()
        for i in range(50):
            bus.publish_correlated("job.step", i, cid).get(timeout=WAIT)
        assert len(bus.get_correlated(cid, timeout=WAIT)) == 50
        release.set()


@pytest.mark.slow
def test_close_under_a_blocked_handler_returns_within_its_timeout(tmp_path: Path) -> None:
    # The child closes with timeout=3 while a handler is blocked for a minute;
    # before the fix this took about 3x the timeout.
    timeout = 3.0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    err_path = tmp_path / "child.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(timeout)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=ROOT,
        )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "blocked", err_path.read_text()
        # From here the child only closes: timeout plus a generous margin,
        # still well under what three sequential timeouts would take.
        out, _ = proc.communicate(timeout=timeout + 3.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err_path.read_text()
    report = json.loads(out)
    assert report["other_received"] == 101
    [abandoned] = report["abandoned"]
    assert abandoned["pattern"] == "job.**"
    assert abandoned["in_flight"] == 1
    assert abandoned["queued"] == 100
    log = err_path.read_text()
    assert f"gave up on subscription {abandoned['id']}" in log
    assert "101 event(s) unhandled" in log
    assert "abandoned" in log


def test_an_abandoned_handler_stops_at_the_next_event() -> None:
    gates = [threading.Event(), threading.Event()]
    entered = [threading.Event(), threading.Event()]
    handled: list[int] = []
    threads: list[threading.Thread] = []

    def handler(event: Event) -> None:
        k = event.data
        if k < 2:
            threads.append(threading.current_thread())
            entered[k].set()
            assert gates[k].wait(WAIT), "the test never released the handler"
        handled.append(k)

    bus = EventBus()
    try:
        bus.subscribe("job.**", handler)
        bus.publish("job.step", 0)
        assert entered[0].wait(WAIT)
        # Queued behind the blocked first event, then taken as one batch.
        for future in [bus.publish("job.step", i) for i in range(1, 50)]:
            future.get(timeout=WAIT)
        gates[0].set()
        assert entered[1].wait(WAIT)
        abandoned = bus.close(timeout=0.2)
        assert [(s.in_flight, s.queued) for s in abandoned] == [(49, 0)]
    finally:
        for gate in gates:
            gate.set()
    threads[-1].join(WAIT)  # the dispatcher was shut down: the thread ends with its turn
    assert not threads[-1].is_alive()
    assert handled == [0, 1], "the rest of the abandoned batch ran after close"


def test_close_says_which_subscription_never_got_a_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(EventConfig(threads=1, max_threads=1))
    gate = Gate()
    try:
        held = bus.subscribe("held.*", gate)
        starved = bus.subscribe("starved.*", Collector())
        bus.publish("held.e")
        assert gate.entered.wait(WAIT)  # the only thread is inside it now
        bus.publish("starved.e")
        with caplog.at_level(logging.WARNING, logger="actors.bus"):
            given_up = bus.close(timeout=0.2)
    finally:
        gate.release.set()
    assert {s.id for s in given_up} == {held.id, starved.id}
    lines = {
        s.id: [r.getMessage() for r in caplog.records if s.id in r.getMessage()] for s in given_up
    }
    assert any("its handler is still running" in line for line in lines[held.id])
    assert any("never got a thread" in line for line in lines[starved.id])
    assert not any("still running" in line for line in lines[starved.id])
