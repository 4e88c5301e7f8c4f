"""The planner's reordering of time-index entries (``actors._journal.planner``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors._journal.planner import in_sequence_order


@st.composite
def skewed_journal(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int]:
    """Sequences 1..n whose timestamps run backwards by at most the returned skew."""
    steps = draw(st.lists(st.integers(-50, 100), min_size=0, max_size=60))
    stamps, ts = [], 0
    for step in steps:
        ts += step
        stamps.append(ts)
    skew = max((max(stamps[:i]) - t for i, t in enumerate(stamps) if i), default=0)
    return [(t, seq) for seq, t in enumerate(stamps, start=1)], max(skew, 0)


@given(skewed_journal(), st.booleans())
def test_entries_in_time_order_come_out_in_sequence_order(
    journal: tuple[list[tuple[int, int]], int], descending: bool
) -> None:
    entries, skew = journal
    by_time = sorted(entries, reverse=descending)
    out = list(in_sequence_order(iter(by_time), skew, descending))
    assert out == sorted((seq for _, seq in entries), reverse=descending)


def test_a_limited_read_stops_early_without_skew() -> None:
    consumed = 0

    def entries() -> object:
        nonlocal consumed
        for seq in range(1, 1_000_000):
            consumed += 1
            yield seq * 10, seq

    ordered = in_sequence_order(entries(), 0, False)  # type: ignore[arg-type]
    assert [next(ordered) for _ in range(3)] == [1, 2, 3]
    assert consumed <= 5
