"""``close`` racing publishers: every publish is either refused or handled.

A publish that overlaps ``close`` ends one of two ways: its event is routed
before ``close`` began and is handled before ``close`` returns, or the
publish is refused (``BusClosedError``, raised or in its future).  Never a
future that resolves to a published event that no handler saw, never a
future that stays pending.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from actors import BusClosedError, BusFuture, Event, EventBus, EventConfig, OverflowStrategy
from tests._support import WAIT, Gate, wait_for


def _inside(thread: threading.Thread, function: str) -> bool:
    """Return whether ``thread`` is running ``function`` (somewhere on its stack) now."""
    frame = sys._current_frames().get(thread.ident or -1)  # noqa: SLF001 - CPython's own
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_a_publish_waiting_for_room_when_close_begins_is_refused_not_lost() -> None:
    bus = EventBus(EventConfig(block_timeout=WAIT))
    gate = Gate()
    bus.subscribe("x.*", gate, capacity=2, overflow=OverflowStrategy.BLOCK, dedicated_thread=True)
    bus.publish("x.e", 0).get(timeout=WAIT)
    assert gate.entered.wait(WAIT)
    for i in (1, 2):
        bus.publish("x.e", i).get(timeout=WAIT)
    outcome: list[Any] = []

    def publisher() -> None:
        try:
            outcome.append(bus.publish("x.e", 3).get(timeout=WAIT))
        except Exception as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=publisher)
    waiting.start()
    assert wait_for(lambda: _inside(waiting, "wait_for_room"))
    closed: list[object] = []
    closer = threading.Thread(target=lambda: closed.append(bus.close(timeout=WAIT)))
    closer.start()
    assert wait_for(lambda: _inside(closer, "_flush"))  # close has begun: it waits for 0-2
    gate.release.set()
    closer.join(WAIT)
    waiting.join(WAIT)
    assert not closer.is_alive()
    assert not waiting.is_alive()
    assert closed == [()]  # nothing given up on
    assert gate.data == [0, 1, 2]
    assert len(outcome) == 1
    assert isinstance(outcome[0], BusClosedError)


@pytest.mark.parametrize("trial", range(5))
def test_publishes_racing_close_are_handled_or_refused_never_lost_or_pending(trial: int) -> None:
    bus = EventBus()
    handled: set[int] = set()
    lock = threading.Lock()

    def handler(event: Event) -> None:
        with lock:
            handled.add(event.data)

    bus.subscribe("r.*", handler)
    futures: list[BusFuture[Event]] = []
    refused = 0
    going = threading.Barrier(5)

    def publisher(first: int) -> None:
        nonlocal refused
        going.wait(WAIT)
        n = first
        while True:
            try:
                future = bus.publish("r.e", n)
            except BusClosedError:
                with lock:
                    refused += 1
                return
            with lock:
                futures.append(future)
            n += 1

    threads = [threading.Thread(target=publisher, args=(k * 10**9,)) for k in range(4)]
    for t in threads:
        t.start()
    going.wait(WAIT)
    assert wait_for(lambda: len(futures) >= 2000)
    bus.close(timeout=WAIT)
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert refused == 4  # every publisher saw the bus closed in the end
    published: set[int] = set()
    for future in futures:
        assert future.done()  # nothing left pending once close returned
        if future.exception() is None:
            published.add(future.get().data)
        else:
            assert isinstance(future.exception(), BusClosedError)
    assert published == handled  # acknowledged as published means handled


def test_a_flush_waiting_when_close_gives_up_on_a_stuck_handler_is_refused() -> None:
    bus = EventBus()
    gate = Gate()
    bus.subscribe("x.*", gate, dedicated_thread=True)
    bus.publish("x.e", 0)
    assert gate.entered.wait(WAIT)
    outcome: list[BaseException | None] = []

    def flush() -> None:
        try:
            bus.flush()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=flush, daemon=True)
    waiter.start()
    try:
        # Its flush is in the router's mailbox before close's own.
        assert wait_for(lambda: _inside(waiter, "get"))
        gave_up = bus.close(timeout=0.2)
        assert [s.pattern for s in gave_up] == ["x.*"]
        waiter.join(WAIT)
        assert not waiter.is_alive(), "flush() was left waiting after close"
        assert len(outcome) == 1
        assert isinstance(outcome[0], BusClosedError)
    finally:
        gate.release.set()


def child_result(module: str, *args: str, timeout: float) -> Any:
    """Run ``python -m module args`` in a process of its own; return its last line, as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["flush", "stop", "handler", "async"])
def test_close_interrupted_by_ctrl_c_is_finished_by_the_next_close(
    tmp_path: Any, mode: str
) -> None:
    # docs/architecture.md: a close interrupted (a KeyboardInterrupt while it
    # waits, for the flush or for the stop) is seen through by the next close,
    # from outside, from the handler it waited for, or by aclose; the next
    # used to return at once (or raise, or hang) with the actors running,
    # the journal locked and the address bound.
    result = child_result("tests._close_interrupt_child", str(tmp_path), mode, timeout=6 * WAIT)
    assert result == {"interrupted": True, "alive": [], "reopened": True}


def test_a_ctrl_c_inside_the_constructor_leaves_the_journal_free(tmp_path: Any) -> None:
    # docs/persistence.md: a failed constructor releases the journal's lock
    # before the error reaches the caller; a KeyboardInterrupt is such a
    # failure (the open's database used to live on in the traceback).
    result = child_result("tests._ctor_interrupt_child", str(tmp_path), timeout=12 * WAIT)
    assert result["inside"] > 0  # the case was met
    assert result["locked"] == 0, result


def test_a_close_after_a_handlers_own_close_keeps_to_its_own_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A stop a handler's close began has no deadline; a later close waits for
    # it within its own timeout and grace only (no journal or node has files
    # to release here): it used to add 10 s for them.
    release, closed_inside = threading.Event(), threading.Event()
    bus = EventBus(name="afterinside")

    def closes_then_runs(event: Event) -> None:
        bus.close()  # from inside: begins the stop and returns
        closed_inside.set()
        release.wait(WAIT)

    bus.subscribe("c.*", closes_then_runs)
    bus.publish("c.x").get(timeout=WAIT)
    assert closed_inside.wait(WAIT)
    try:
        with caplog.at_level("WARNING", logger="actors.bus"):
            assert bus.close(timeout=0.2) == ()
        assert "still under way after 0.7 s" in caplog.text
    finally:
        release.set()
    assert bus.close(timeout=WAIT) == ()  # this one sees the stop through
    assert wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("bus-afterinside")]
    )


def test_an_error_while_stopping_reaches_the_caller_of_close(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stop runs on a thread of its own: what it raises is raised by the
    # close that waited for it (it used to die on that thread, unseen).
    bus = EventBus(EventConfig(persistence_path=tmp_path / "j"), name="stoperr")
    journal = bus._journal  # noqa: SLF001 - the fault is injected into the journal's close
    assert journal is not None

    def broken(timeout: float | None) -> bool:
        raise OSError("disk gone while closing")

    monkeypatch.setattr(journal, "wait_closed", broken)
    with pytest.raises(OSError, match="disk gone"):
        bus.close(timeout=WAIT)
    assert bus.close(timeout=WAIT) == ()  # told once
    # and the other steps ran: none of the bus's threads is left
    assert wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("bus-stoperr")]
    )


# Regression: the async handlers' loop thread and the timer thread outlived close().
def test_close_returns_with_the_loop_and_timer_threads_ended() -> None:
    """An attacker counted the ``bus-async`` thread alive right after ``close(5)`` in
    15 of 30 buses, the timer thread in 6: their stop was only asked for."""

    async def handler(event: Event) -> None:
        return None

    before = set(threading.enumerate())
    left = []
    for _ in range(20):
        bus = EventBus()
        bus.subscribe("a.*", handler)  # off any loop: the bus's own loop thread
        bus.subscribe("a.*", lambda e: None, timeout=60)  # its deadlines: the timer thread
        for _ in range(100):
            bus.publish("a.b")
        bus.close(5)
        left += [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []
