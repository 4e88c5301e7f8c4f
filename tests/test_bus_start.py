"""A bus that fails to start leaves nothing behind: no thread, no journal lock.

The OS can refuse a thread (``RuntimeError: can't start new thread`` at a
process's thread limit); a node's ``listen`` address can be taken.  Either
failure reaches the caller, and the same process can open the journal again
at once.  A dispatcher that cannot grow (the watchdog adding a stand-in for a
blocked handler) keeps its watchdog and its other threads.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zmq

from actors import EventBus, EventConfig, NodeConfig, PersistentEventBus
from actors._runtime.dispatcher import Dispatcher
from tests._support import WAIT, Collector, wait_for

REFUSED = "can't start new thread"


@pytest.fixture
def refuse_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``Thread.start`` fail, as at the OS's limit, for names containing any given text."""
    fragments: list[str] = []
    real = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if any(f in self.name for f in fragments):
            raise RuntimeError(REFUSED)
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return fragments


def ours(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())


@pytest.mark.parametrize(
    "fragment",
    ["-0", "-1", "watchdog", "-system-", "journal"],
    ids=["first-pool-thread", "second-pool-thread", "watchdog", "system", "journal"],
)
def test_a_bus_whose_thread_cannot_start_leaves_no_thread_and_frees_its_journal(
    tmp_path: Path, refuse_threads: list[str], fragment: str
) -> None:
    path = str(tmp_path / "journal")
    before = set(threading.enumerate())
    refuse_threads.append(fragment)
    with pytest.raises(RuntimeError, match=REFUSED):
        PersistentEventBus(EventConfig(persistence_path=path, threads=2), name="start")
    refuse_threads.clear()
    assert wait_for(lambda: not ours(before)), ours(before)
    # The lock is free: this process opens the journal again, and it works.
    with PersistentEventBus(EventConfig(persistence_path=path)) as bus:
        got = Collector(1)
        bus.subscribe("job.*", got)
        stored = bus.publish("job.done", 1).get(timeout=WAIT)
        assert got.done.wait(WAIT)
        assert stored.sequence == 1


def test_a_bus_without_a_journal_whose_thread_cannot_start_leaves_no_thread(
    refuse_threads: list[str],
) -> None:
    before = set(threading.enumerate())
    refuse_threads.append("-system-")
    with pytest.raises(RuntimeError, match=REFUSED):
        EventBus(name="plain")
    refuse_threads.clear()
    assert wait_for(lambda: not ours(before)), ours(before)


def test_a_node_whose_listen_address_is_taken_frees_its_journal_and_threads(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "journal")
    ctx = zmq.Context.instance()
    taken = ctx.socket(zmq.ROUTER)
    taken.setsockopt(zmq.LINGER, 0)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        before = set(threading.enumerate())
        node = NodeConfig(name="n", listen=f"tcp://127.0.0.1:{port}")
        with pytest.raises(Exception) as caught:
            PersistentEventBus(EventConfig(persistence_path=path), node=node)
        assert str(port) in str(caught.value) or "in use" in str(caught.value).lower()
        assert wait_for(lambda: not ours(before)), ours(before)
        with PersistentEventBus(EventConfig(persistence_path=path)) as bus:
            assert bus.publish("job.done").get(timeout=WAIT).sequence == 1
    finally:
        taken.close()


def test_a_pool_that_cannot_add_a_stand_in_keeps_watching(
    refuse_threads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The watchdog's stand-in for a blocked turn is refused: it logs, keeps
    watching, and adds the thread at a later scan once the OS allows it."""
    pool = Dispatcher(1, name="grow", max_threads=3, blocking_threshold=0.05)
    release = threading.Event()
    entered = threading.Event()
    ran = threading.Event()

    class Blocked:
        def actor_turn(self, throughput: int) -> None:
            entered.set()
            release.wait(WAIT)

    class Quick:
        def actor_turn(self, throughput: int) -> None:
            ran.set()

    try:
        refuse_threads.append("grow-")
        pool.schedule(Blocked())
        assert entered.wait(WAIT)
        assert wait_for(lambda: "could not add a thread" in caplog.text), caplog.text
        pool.schedule(Quick())  # waits behind the blocked turn: no thread for it yet
        refuse_threads.clear()
        assert ran.wait(WAIT), "the watchdog stopped adding threads after one was refused"
        assert not release.is_set()  # the stand-in ran it, not the blocked thread
        assert pool.threads == 2
    finally:
        release.set()
        assert pool.shutdown(WAIT)
