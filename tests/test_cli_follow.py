"""Following a journal and durable checkpoints (``actors/cli/follow.py``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

from actors import Event, EventConfig, EventQuery, PersistentEventBus
from actors.cli.follow import Checkpoint, JournalTail, last_sequence
from tests._support import WAIT


def test_a_tail_prints_the_journal_then_what_is_journaled_later(tmp_path: Path) -> None:
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as bus:
        bus.publish("a.one", 1).get(timeout=WAIT)
        bus.publish("b.skip", 0).get(timeout=WAIT)
        bus.publish("a.two", 2).get(timeout=WAIT)
        assert last_sequence(bus, None, WAIT) == 3
        tail = JournalTail(bus, EventQuery(event_types=["a.*"]), WAIT)
        bus.subscribe("a.*", tail.wake)
        printed: list[Event] = []
        caught_up = threading.Event()

        def show(event: Event) -> None:
            printed.append(event)
            if len(printed) == 2:
                caught_up.set()

        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(tail.run, show, 4)
            assert caught_up.wait(WAIT)
            bus.publish("a.three", 3)
            bus.publish("a.four", 4)
            assert running.result(timeout=WAIT) == 4
    assert [e.data for e in printed] == [1, 2, 3, 4]
    assert [e.sequence for e in printed] == [1, 3, 4, 5]
    assert tail.after == 5


def test_a_tail_starts_after_its_position(tmp_path: Path) -> None:
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as bus:
        for n in range(5):
            bus.publish("a.n", n)
        bus.flush(WAIT)
        tail = JournalTail(bus, EventQuery(), WAIT)
        tail.after = 3
        printed: list[Event] = []
        assert tail.run(printed.append, 2) == 2
    assert [e.data for e in printed] == [3, 4]


def test_an_empty_journals_last_sequence_is_zero(tmp_path: Path) -> None:
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as bus:
        assert last_sequence(bus, None, WAIT) == 0


def test_a_checkpoint_survives_and_starts_empty(tmp_path: Path) -> None:
    point = Checkpoint(tmp_path / "state", "hub", "audit")
    assert point.load() is None
    point.save(41)
    point.save(42)
    assert Checkpoint(tmp_path / "state", "hub", "audit").load() == 42
    assert Checkpoint(tmp_path / "state", "hub", "other").load() is None
    assert Checkpoint(tmp_path / "state", "edge", "audit").load() is None


@pytest.mark.parametrize("node", ["ABSOLUTE", "../up", "..", "a/b", "x\ny"])
def test_a_checkpoint_stays_in_its_folder_whatever_the_node_calls_itself(
    tmp_path: Path, node: str
) -> None:
    # The remote node names itself: a name with '/' or '..' once put the
    # checkpoint (and the folders it named) outside --state-dir.
    state = tmp_path / "state"
    if node == "ABSOLUTE":  # under tmp_path, should a regression write there
        node = str(tmp_path / "elsewhere" / "node")
    point = Checkpoint(state, node, "audit")
    point.save(7)
    assert point.path.parent == state
    assert [p.name for p in tmp_path.iterdir()] == ["state"]
    assert Checkpoint(state, node, "audit").load() == 7
    assert Checkpoint(state, "hub", "audit").load() is None


def test_a_damaged_checkpoint_or_a_bad_name_is_refused(tmp_path: Path) -> None:
    point = Checkpoint(tmp_path, "hub", "audit")
    point.path.write_text("garbage")
    with pytest.raises(click.ClickException, match="damaged"):
        point.load()
    with pytest.raises(click.BadParameter, match="letters, digits"):
        Checkpoint(tmp_path, "hub", "../escape")
