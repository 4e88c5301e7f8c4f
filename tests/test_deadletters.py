"""Dead letters read back from the journal, page by page (``actors._journal.deadletters``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import Event, EventBus, EventConfig
from actors._journal.deadletters import letter_from_event
from tests._support import WAIT, wait_for


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


@pytest.mark.parametrize("persistent", [False, True], ids=["memory", "journal"])
def test_a_handler_failing_on_dead_letter_announcements_does_not_feed_itself(
    tmp_path: Path, persistent: bool
) -> None:
    # Regression: its failure on an announcement was announced in turn, to
    # the same handler, each announcement nesting the last, about 100 deep
    # until the data grew too deep to be an event (an ERROR in the router).
    calls: list[Event] = []

    def fails(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("cannot handle dead letters either")

    path = tmp_path / "j" if persistent else None
    with EventBus(EventConfig(threads=2, persistence_path=path)) as bus:
        bus.subscribe("$bus.deadletter", fails)
        bus.subscribe("job.run", lambda e: 1 / 0)
        bus.publish("job.run").get(timeout=WAIT)
        assert wait_for(lambda: bus.metrics().dead_letters == 2)
        for _ in range(3):
            bus.flush(WAIT)
        assert [e.event_type for e in calls] == ["$bus.deadletter"]
        assert bus.metrics().dead_letters == 2
        assert bus.metrics().published == 2  # job.run and its one announcement
        letters = bus.dead_letters()
        assert [d.event.event_type for d in letters] == (
            ["job.run"] if persistent else ["job.run", "$bus.deadletter"]
        )
