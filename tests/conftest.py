"""Fixtures the behaviour tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from actors import EventBus, EventConfig
from tests._support import WAIT

# A per-example deadline is a timed assertion: on a loaded machine it fails
# without a bug behind it, so property tests run without one.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@pytest.fixture
def bus() -> Iterator[EventBus]:
    """An in-memory bus on two dispatcher threads, closed after the test."""
    b = EventBus(EventConfig(threads=2))
    yield b
    b.close(timeout=WAIT)
