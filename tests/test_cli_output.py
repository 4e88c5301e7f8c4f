"""What the commands print (``actors/cli/output.py``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import pytest

from actors import Event
from actors.cli.output import fail, format_event, json_line


def test_an_event_line_shows_sequence_time_origin_type_route_and_data() -> None:
    event = Event(
        event_type="user.login",
        data={"user_id": "123"},
        source="cli",
        timestamp=datetime(2026, 12, 1, 9, 14, 3, 512_000, tzinfo=UTC),
        sequence=7,
        origin="hub",
    )
    assert format_event(event) == '#7 09:14:03.512 hub user.login cli→- {"user_id":"123"}'


def test_an_event_without_data_or_origin_has_no_trailing_space() -> None:
    event = Event(event_type="tick", timestamp=datetime(2026, 12, 1, tzinfo=UTC), sequence=1)
    assert format_event(event) == "#1 00:00:00.000 - tick -→-"


def test_json_lines_are_compact_and_keep_unicode() -> None:
    line = json_line({"name": "Zoë", "n": [1, 2]})
    assert line == '{"name":"Zoë","n":[1,2]}'
    assert json.loads(line) == {"name": "Zoë", "n": [1, 2]}


@pytest.mark.parametrize("text", ["x\x9b31m", "a\u2028b", "c\x85", "tag\U000e0001"])
def test_json_lines_escape_what_a_terminal_would_act_on(text: str) -> None:
    # U+009B is a CSI to a terminal, U+2028 and U+0085 break lines: escaped
    # as JSON escapes, so the line reads back the same.
    line = json_line({"k": text})
    assert line.isprintable()
    assert json.loads(line) == {"k": text}


def test_fail_is_a_click_error_with_status_1() -> None:
    with pytest.raises(click.ClickException) as caught:
        fail("it broke")
    assert caught.value.exit_code == 1
    assert caught.value.format_message() == "it broke"
