"""A subscription that resumes past what retention removed is told: ``$bus.subscription.lost``.

``docs/persistence.md``, "What the guarantee does not cover": retention wins
over a lagging durable subscription, and the loss is never silent.  A real
RocksDB journal in a temp folder; retention by ``max_events`` at open.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from actors import Event, EventConfig, PersistentEventBus
from tests._support import WAIT

LOST = "$bus.subscription.lost"


def publish(path: Path, count: int, **config: Any) -> None:
    """Open the journal at ``path``, publish ``count`` ``job.run`` events, close it."""
    with PersistentEventBus(EventConfig(persistence_path=str(path), **config)) as bus:
        for n in range(count):
            bus.publish("job.run", n)
        bus.flush(WAIT)


def handled_by_w(path: Path, count: int) -> None:
    """The durable name ``w`` handles ``count`` events of a fresh journal, then it closes."""
    got: list[Event] = []
    with PersistentEventBus(EventConfig(persistence_path=str(path))) as bus:
        bus.subscribe("job.*", got.append, durable="w")
        for n in range(count):
            bus.publish("job.run", n)
        bus.flush(WAIT)
    assert [e.data for e in got] == list(range(count))


def resume(path: Path, **subscribe: Any) -> tuple[list[Event], list[Event]]:
    """Reopen with ``max_events=10`` (retention at open); subscribe; return (handled, lost)."""
    got: list[Event] = []
    lost: list[Event] = []
    with PersistentEventBus(EventConfig(persistence_path=str(path), max_events=10)) as bus:
        bus.subscribe(LOST, lost.append)
        bus.subscribe("job.*", got.append, **subscribe)
        bus.flush(WAIT)  # the catch-up read its history (and announced what it lacked) ...
        bus.flush(WAIT)  # ... and the announcement, published meanwhile, is handled
    return got, lost


def test_a_durable_name_that_resumes_past_retention_is_told_what_it_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events"
    handled_by_w(path, 5)  # w's checkpoint: 5
    publish(path, 20)  # 6..25 while w is away
    with caplog.at_level(logging.WARNING, logger="actors.subscriber"):
        got, lost = resume(path, durable="w")  # retention keeps 16..25
    assert [e.sequence for e in got] == list(range(16, 26))
    assert len(lost) == 1, lost
    data = lost[0].data
    assert isinstance(data, dict)
    assert (data["durable"], data["first"], data["last"]) == ("w", 6, 15), data
    assert (data["pattern"], data["reason"]) == ("job.*", "retention"), data
    assert lost[0].source == "bus"
    assert "resumed past sequences 6..15" in caplog.text


def test_a_durable_name_retention_did_not_reach_announces_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events"
    handled_by_w(path, 5)
    publish(path, 5)  # 6..10: all kept by max_events=10
    got, lost = resume(path, durable="w")
    assert [e.sequence for e in got] == list(range(6, 11))
    assert lost == []


@pytest.mark.parametrize("how", ["a new durable name", "a catch-up"])
def test_a_first_read_below_the_journal_start_just_starts_there(tmp_path: Path, how: str) -> None:
    """No checkpoint owed anything: from_sequence=1 on a trimmed journal starts at its start."""
    path = tmp_path / "events"
    publish(path, 25)
    options: dict[str, Any] = {"from_sequence": 1}
    if how == "a new durable name":
        options["durable"] = "fresh"
    got, lost = resume(path, **options)
    assert [e.sequence for e in got] == list(range(16, 26))
    assert lost == []
