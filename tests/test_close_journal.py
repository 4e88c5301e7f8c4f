"""``close(timeout)`` returns with the journal's files closed: it can be opened again at once.

The bus's own actors get ``CLOSE_GRACE`` past the deadline to stop; the
journal's stop writes what it holds and closes RocksDB (which flushes its
memtables), and on a slow disk or a loaded machine that takes longer.
Regression: ``close`` returned when the journal's stop was answered, before
its files were closed, so opening the journal again right after ``close``
(the same process, or another one) raised ``JournalLockedError``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from actors import Event, EventConfig, EventQuery, PersistentEventBus
from actors._journal.rocks import RocksStorage
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
