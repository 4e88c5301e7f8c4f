"""Closing a journal releases its ``LOCK`` without a full garbage collection, unless it must.

RocksDB releases a journal's ``LOCK`` when the last reference to its
database goes.  ``close`` closes every handle it holds; a full collection
(tens of milliseconds in a large process) is run only when something else
still refers to one of them (a reference cycle), and an open that finds
this process holding the ``LOCK`` of a journal it closed collects and looks
again.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors._journal.rocks import RocksStorage
from tests._support import WAIT

OPEN_ELSEWHERE = (
    "import sys; from actors._journal.rocks import RocksStorage; "
    "RocksStorage(sys.argv[1]).close(); print('opened')"
)


@pytest.fixture
def no_automatic_collection() -> Iterator[list[int]]:
    """Turn the collector's automatic runs off; yield the generations it collected since."""
    collected: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    enabled = gc.isenabled()
    gc.disable()
    gc.callbacks.append(note)
    try:
        yield collected
    finally:
        gc.callbacks.remove(note)
        if enabled:
            gc.enable()


def opened_by_another_process(path: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_ELSEWHERE, str(path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    return done.returncode == 0 and done.stdout.strip() == "opened"


def test_a_journal_nothing_else_refers_to_closes_without_a_full_collection(
    tmp_path: Path, no_automatic_collection: list[int]
) -> None:
    path = tmp_path / "journal"
    storage = RocksStorage(str(path))
    storage.close()
    assert 2 not in no_automatic_collection, "close ran a full collection it did not need"
    assert opened_by_another_process(path)


def held_by_a_cycle(storage: RocksStorage) -> list[object]:
    """Return a reference cycle that holds one of ``storage``'s column-family handles."""
    cycle: list[object] = [storage._type_h]  # noqa: SLF001 - a handle someone else kept
    cycle.append(cycle)
    return cycle


def test_a_cycle_holding_a_handle_is_collected_at_close(
    tmp_path: Path, no_automatic_collection: list[int]
) -> None:
    path = tmp_path / "journal"
    storage = RocksStorage(str(path))
    held_by_a_cycle(storage)  # garbage at once, but only a collection frees it
    storage.close()
    assert 2 in no_automatic_collection
    assert opened_by_another_process(path)


def test_an_open_collects_a_closed_journal_that_a_cycle_still_held(
    tmp_path: Path, no_automatic_collection: list[int]
) -> None:
    path = tmp_path / "journal"
    storage = RocksStorage(str(path))
    cycle = held_by_a_cycle(storage)
    storage.close()  # the cycle is still referenced here: it keeps the database open
    del cycle
    again = RocksStorage(str(path))  # this process holds the LOCK: collected, then opened
    again.close()
    assert opened_by_another_process(path)
