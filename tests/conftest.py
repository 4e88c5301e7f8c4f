"""Fixtures the behaviour tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import EventBus, EventConfig
from tests._support import WAIT


@pytest.fixture
def bus() -> Iterator[EventBus]:
    """An in-memory bus on two dispatcher threads, closed after the test."""
    b = EventBus(EventConfig(threads=2))
    yield b
    b.close(timeout=WAIT)
