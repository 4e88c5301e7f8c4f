"""The checkpoints a persistent node keeps of the origins it receives (``_cluster.checkpoints``).

The journal stores checkpoints in the order they were set, so a crash keeps a
prefix of the writes: every prefix must read back as something true.
"""

from __future__ import annotations

from collections.abc import Callable

from actors._cluster.checkpoints import load_left, save_left
from actors._cluster.origins import LEFT_NUMBERINGS
from actors._model.event import Event
from actors._model.query import EventQuery


class Checkpoints:
    """A journal of checkpoints only, that records the order of its writes."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.writes: list[tuple[str, int]] = []

    def read(self, query: EventQuery, timeout: float | None) -> list[Event]:
        return []

    def load_checkpoint(self, name: str, timeout: float | None) -> int | None:
        return self.values.get(name)

    def save_checkpoint(self, name: str, sequence: int) -> None:
        self.values[name] = sequence
        self.writes.append((name, sequence))

    def after_written(self, callback: Callable[[], None]) -> None:
        callback()


def crashed(before: Checkpoints, writes: list[tuple[str, int]]) -> Checkpoints:
    """``before`` with the first ``writes`` of a later save applied."""
    after = Checkpoints()
    after.values = dict(before.values)
    for name, value in writes:
        after.values[name] = value
    return after


def test_the_numberings_left_read_back_as_saved() -> None:
    journal = Checkpoints()
    assert load_left(journal, "a", 1.0) == ()
    save_left(journal, "a", {11: 100, 22: 40})
    assert load_left(journal, "a", 1.0) == ((11, 100), (22, 40))
    save_left(journal, "a", {22: 40})
    assert load_left(journal, "a", 1.0) == ((22, 40),)
    save_left(journal, "a", {})
    assert load_left(journal, "a", 1.0) == ()


def test_a_crash_in_any_save_of_the_numberings_left_never_pairs_a_numbering_with_another() -> None:
    lists: list[dict[int, int]] = [
        {11: 100},
        {11: 100, 22: 40, 33: 7, 44: 9},
        {22: 40, 55: 3},
        {22: 41, 55: 3, 66: 1},
        {},
        {77: 5},
    ]
    journal = Checkpoints()
    for left in lists:
        before = Checkpoints()
        before.values = dict(journal.values)
        old = load_left(before, "a", 1.0)
        journal.writes.clear()
        save_left(journal, "a", left)
        writes = list(journal.writes)
        for n in range(len(writes) + 1):
            read = load_left(crashed(before, writes[:n]), "a", 1.0)
            # The old list, the new one, or none (fetched from the start: more, never less).
            assert read in (old, tuple(left.items()), ()), (left, n, read)
        assert load_left(journal, "a", 1.0) == tuple(left.items())
        assert len(left) <= LEFT_NUMBERINGS
