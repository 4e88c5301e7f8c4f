"""Dead letters read back from the journal, page by page (``actors._journal.deadletters``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import Event, EventBus, EventConfig
from actors._journal.deadletters import letter_from_event


def failing(event: Event) -> None:
    raise RuntimeError(f"cannot handle {event.data}")


@pytest.fixture
def bus(tmp_path: Path) -> EventBus:
    bus = EventBus(EventConfig(persistence_path=tmp_path / "journal"))
    bus.subscribe("job.*", failing)
    for i in range(25):
        bus.publish("job.run", i).get(timeout=30)
    bus.flush(timeout=30)
    return bus


def test_dead_letters_page_with_limit_and_after(bus: EventBus) -> None:
    try:
        pages: list[list[int]] = []
        after = None
        while True:
            page = bus.dead_letters(limit=10, after=after)
            if not page:
                break
            pages.append([d.event.data for d in page])  # type: ignore[misc]
            assert page[-1].letter is not None
            after = page[-1].letter.sequence
        assert pages == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
        assert [d.event.data for d in bus.dead_letters()] == list(range(25))
    finally:
        bus.close()


def test_bad_paging_arguments_are_refused(bus: EventBus, tmp_path: Path) -> None:
    try:
        with pytest.raises(ValueError, match="limit"):
            bus.dead_letters(limit=-1)
        with pytest.raises(TypeError, match="after"):
            bus.dead_letters(after="5")  # type: ignore[arg-type]
    finally:
        bus.close()
    with EventBus() as memory:
        with pytest.raises(ValueError, match="after"):
            memory.dead_letters(after=3)
        assert memory.dead_letters(limit=0) == []


def test_an_unreadable_announcement_is_skipped() -> None:
    assert letter_from_event(Event(event_type="x.y", data={"event": "not a dict"})) is None
    assert letter_from_event(Event(event_type="x.y", data=[1, 2])) is None
