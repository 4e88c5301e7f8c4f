"""``close(timeout)`` returns with the journal's files and the node's sockets closed.

The bus's own actors get ``CLOSE_GRACE`` past the deadline to stop; the
journal's stop writes what it holds and closes RocksDB (which flushes its
memtables), and on a slow disk or a loaded machine that takes longer.
Regression: ``close`` returned when the journal's stop was answered, before
its files were closed, so opening the journal again right after ``close``
(the same process, or another one) raised ``JournalLockedError``; the
node's sockets likewise, and a node started again on the same address failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from actors import (
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    NodeConfig,
    PersistentEventBus,
)
from actors._cluster.bridge import Bridge
from actors._journal.rocks import RocksStorage
from actors._runtime.future import BusFuture
from tests._cluster_support import free_port
from tests._support import WAIT, wait_for

SLOW_CLOSE = 1.0
"""How long the stand-in for a slow disk takes to close the journal: twice the grace."""


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every journal close take ``SLOW_CLOSE`` seconds; yield the paths closed so far."""
    closed: list[str] = []
    real = RocksStorage.close
    never = threading.Event()

    def slow(self: RocksStorage) -> None:
        never.wait(SLOW_CLOSE)  # a disk that takes this long to flush
        real(self)
        closed.append(self._path)

    monkeypatch.setattr(RocksStorage, "close", slow)
    return closed


def test_a_journal_closing_slowly_is_closed_when_close_returns(
    tmp_path: Path, slow_disk: list[str]
) -> None:
    path = str(tmp_path / "journal")
    bus = PersistentEventBus(EventConfig(persistence_path=path))
    futures = [bus.publish("job.run", i) for i in range(100)]
    for future in futures:
        future.get(timeout=WAIT)
    assert bus.close(timeout=0.1) == ()
    assert slow_disk == [path]  # closed before close returned
    again = PersistentEventBus(EventConfig(persistence_path=path))  # no JournalLockedError
    try:
        stored = again.query(EventQuery(event_types=["job.run"]))
        assert [e.data for e in stored] == list(range(100))
    finally:
        again.close(timeout=WAIT)


def test_close_gives_up_on_a_retry_wait_and_the_journal_opens_again_at_once(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "journal")
    bus = PersistentEventBus(EventConfig(persistence_path=path))
    handled: list[int] = []

    def handler(event: Event) -> None:
        if event.data == 2:
            raise ValueError("not yet")
        handled.append(event.data)

    sub = bus.subscribe("job.*", handler, durable="w", retries=2, retry_backoff=60.0)
    for i in range(5):
        bus.publish("job.run", i)
    assert wait_for(lambda: sub.statistics().errors >= 1)
    unfinished = bus.close(timeout=0.2)
    assert [s.id for s in unfinished] == [sub.id]
    again = PersistentEventBus(EventConfig(persistence_path=path))
    try:
        got: list[int] = []
        again.subscribe("job.*", lambda e: got.append(e.data), durable="w")
        again.flush(timeout=WAIT)
        assert got == [2, 3, 4]  # the failed event and the rest, again
        assert handled == [0, 1]
    finally:
        again.close(timeout=WAIT)


# -- the node's sockets ------------------------------------------------------------------


def test_a_node_closing_slowly_frees_its_address_when_close_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Bridge._teardown  # noqa: SLF001 - where the slow close is injected
    never = threading.Event()

    def slow(self: Bridge) -> None:
        never.wait(SLOW_CLOSE)  # sockets that take this long to close
        real(self)

    monkeypatch.setattr(Bridge, "_teardown", slow)
    address = f"tcp://127.0.0.1:{free_port()}"
    bus = EventBus(node=NodeConfig(name="a", listen=address))
    assert bus.close(timeout=0.1) == ()
    again = EventBus(node=NodeConfig(name="a", listen=address))  # the address is free
    try:
        assert again.node is not None
        assert again.node.endpoints["request"] == address
    finally:
        again.close(timeout=WAIT)


def outcome_of(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``call`` on a thread; the list gets what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the test reads it
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


# Regression: a bridge thread reading the journal (a peer's watermark) when the bus closed put
# its message into the router after the router stopped: nobody answered it, the dispatcher that
# would have run it was gone, and the thread waited its whole timeout, holding the process's exit.
def test_the_bridges_waits_on_the_journal_end_when_the_bus_closes(tmp_path: Path) -> None:
    bus = EventBus(
        EventConfig(persistence_path=str(tmp_path / "j")),
        node=NodeConfig(name="a", listen=f"ipc://{tmp_path}/a.sock"),
    )
    bridge = bus._bridge  # noqa: SLF001 - the node's own wiring, as its threads use it
    assert bridge is not None
    local = bridge._local  # noqa: SLF001
    assert local.journal is not None
    assert local.journal.load_checkpoint("bridge:b", WAIT) is None  # answered while open
    # A wait in progress at close (a message the stopped router never handles).
    waiting, raised_waiting = outcome_of(lambda: local.waits.get(BusFuture(), None))
    assert wait_for(lambda: bool(local.waits._futures), WAIT)  # noqa: SLF001
    bus.close()
    # And waits begun after it: a watermark, a journal read, a correlation.
    late = [
        outcome_of(lambda: local.journal.load_checkpoint("bridge:b", None)),
        outcome_of(lambda: local.journal.read(EventQuery(limit=1), None)),
        outcome_of(lambda: local.local_correlated(uuid.uuid4(), None)),
    ]
    for thread, raised in [(waiting, raised_waiting), *late]:
        thread.join(WAIT)
        assert not thread.is_alive()
        assert [type(exc) for exc in raised] == [BusClosedError]


CHILD = Path(__file__).parent / "_exit_close_child.py"


# Regression: an interpreter exiting while a daemon thread closed a journal died of SIGABRT.
@pytest.mark.slow
def test_an_interpreter_exiting_while_a_journal_closes_exits_cleanly(tmp_path: Path) -> None:
    """A Ctrl-C during ``close()`` leaves the stop going on (docs/architecture.md);
    a program that then ends, as the demo does, exited by SIGABRT about one time
    in six: rocksdict's close came back into an interpreter finalizing.  An
    exiting interpreter waits for a close under way."""
    statuses = []
    for run in range(8):  # the old abort needed the close to end during finalization
        folder = tmp_path / str(run)
        folder.mkdir()
        child = subprocess.run(  # a script, not -m: runpy's exit path narrows the window
            [sys.executable, str(CHILD), str(folder), "close"],
            env={**os.environ, "PYTHONPATH": str(CHILD.parent.parent)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        statuses.append((child.returncode, child.stderr[-500:]))
    assert statuses == [(0, "")] * 8


def _exit_child(folder: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), str(folder), mode],
        env={**os.environ, "PYTHONPATH": str(CHILD.parent.parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_child_forked_while_a_call_is_under_way_exits_at_once(tmp_path: Path) -> None:
    """The child has neither the call nor its thread: its exit does not wait for it."""
    child = _exit_child(tmp_path, "fork")
    assert (child.returncode, child.stdout, child.stderr) == (0, "child 0\n", "")


def test_an_interpreter_exiting_while_a_journal_syncs_its_log_exits_cleanly(
    tmp_path: Path,
) -> None:
    """``durability="sync"`` fsyncs the WAL without the GIL on the journal's daemon
    thread: a script that ended without ``close()`` while it did died of SIGABRT."""
    statuses = []
    for run in range(4):
        folder = tmp_path / str(run)
        folder.mkdir()
        child = _exit_child(folder, "sync")
        statuses.append((child.returncode, child.stderr[-500:]))
    assert statuses == [(0, "")] * 4
