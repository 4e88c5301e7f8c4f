"""The acknowledged high-water side file (``actors._journal.highwater``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from actors._journal.highwater import FILE_NAME, HighWaterMark


def test_the_mark_rises_never_falls_and_survives_a_reopen(tmp_path: Path) -> None:
    mark = HighWaterMark(str(tmp_path), writable=True)
    assert mark.value == 0
    mark.advance(10, sync=True)
    mark.advance(7, sync=False)
    assert mark.value == 10
    mark.advance(12, sync=False)
    mark.close()
    mark.close()  # idempotent
    assert HighWaterMark(str(tmp_path), writable=False).value == 12


def test_a_reader_creates_nothing(tmp_path: Path) -> None:
    reader = HighWaterMark(str(tmp_path), writable=False)
    reader.advance(5, sync=True)
    assert reader.value == 0
    assert not (tmp_path / FILE_NAME).exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_mark_is_ignored_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    mark = HighWaterMark(str(tmp_path), writable=True)
    mark.advance(99, sync=True)
    mark.close()
    file = tmp_path / FILE_NAME
    raw = file.read_bytes()
    file.write_bytes(raw[:5] if damage == "truncate" else bytes([raw[0] ^ 1]) + raw[1:])
    with caplog.at_level(logging.WARNING, logger="actors.storage"):
        assert HighWaterMark(str(tmp_path), writable=False).value == 0
    assert "high-water file" in caplog.text


def test_an_empty_mark_is_no_mark_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer killed between creating the file and its first write leaves it empty:
    that is a journal with nothing acknowledged yet, not damage."""
    HighWaterMark(str(tmp_path), writable=True).close()  # created, never advanced
    assert (tmp_path / FILE_NAME).read_bytes() == b""
    with caplog.at_level(logging.INFO, logger="actors.storage"):
        assert HighWaterMark(str(tmp_path), writable=False).value == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "holds no mark yet" in caplog.text
