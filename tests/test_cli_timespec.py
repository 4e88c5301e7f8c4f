"""Moments on the command line (``actors/cli/timespec.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from actors.cli.timespec import parse_moment

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_a_duration_is_that_long_ago(text: str, ago: timedelta) -> None:
    assert parse_moment(text, NOW) == NOW - ago


def test_iso_8601_with_or_without_a_zone() -> None:
    assert parse_moment("2026-12-01T14:00:00+01:00", NOW) == datetime(
        2026, 12, 1, 14, tzinfo=timezone(timedelta(hours=1))
    )
    assert parse_moment("2026-12-01T14:00:00Z", NOW) == datetime(2026, 12, 1, 14, tzinfo=UTC)
    assert parse_moment("2026-12-01", NOW) == datetime(2026, 12, 1, tzinfo=UTC)  # naive is UTC


@pytest.mark.parametrize(
    "text", ["yesterday", "10 minutes", "-5m", "10x", "", "\u0661\u0662m", "1\u00b2h"]
)
def test_anything_else_is_refused_with_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"neither ISO 8601 .* nor a time ago \(10m, 2h, 3d\)"):
        parse_moment(text, NOW)
