"""A write that reaches the journal but cannot be made durable (docs/persistence.md, *Faults*).

The fault is a real device's: the journal's ``ACKNOWLEDGED`` side file is
replaced by a link to ``/dev/full``, so every write of the acknowledged mark
fails with ``ENOSPC`` after RocksDB has taken the batch, as on a disk that
fills up between the two.  The events of that batch fail; the journal takes
no more writes until it is reopened; and what it holds stays consistent:
no type id is handed out twice, so a query by type finds exactly the events
of that type, before and after the reopen.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors import EventBus, EventConfig, EventQuery, JournalError

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


def _types(bus: EventBus, event_type: str | None = None) -> list[tuple[int, str]]:
    query = EventQuery() if event_type is None else EventQuery(event_types=[event_type])
    return [(e.sequence or 0, e.event_type) for e in bus.query(query)]


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_mark_that_cannot_be_written_fails_the_batch_and_every_later_write(
    tmp_path: Path, durability: str
) -> None:
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)):
        pass
    mark = path / "ACKNOWLEDGED"
    mark.unlink()
    mark.symlink_to("/dev/full")
    config = EventConfig(persistence_path=path, durability=durability)  # type: ignore[arg-type]
    with EventBus(config) as bus:
        with pytest.raises(JournalError, match="high-water mark"):
            bus.publish("type.a", {"n": 1}).get(timeout=30)
        with pytest.raises(JournalError, match="takes no more writes until it is reopened"):
            bus.publish("type.b", {"n": 2}).get(timeout=30)
        # The first batch reached the database before its mark failed: it is
        # there, under its own type; the refused one is not.
        assert _types(bus, "type.a") == [(1, "type.a")]
        assert _types(bus, "type.b") == []
    mark.unlink()
    with EventBus(config) as bus:
        bus.publish("type.b", {"n": 3}).get(timeout=30)
        bus.publish("type.c", {"n": 4}).get(timeout=30)
        assert _types(bus, "type.a") == [(1, "type.a")]
        assert [t for _, t in _types(bus, "type.b")] == ["type.b"]
        assert [t for _, t in _types(bus, "type.c")] == ["type.c"]
        assert [t for _, t in _types(bus)] == ["type.a", "type.b", "type.c"]
