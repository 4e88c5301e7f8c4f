"""Fixtures the behaviour tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from actors import EventBus, EventConfig, NodeConfig, PersistentEventBus, _async_offloop
from tests._support import WAIT

# A per-example deadline is a timed assertion: on a loaded machine it fails
# without a bug behind it, so property tests run without one.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def _off_loop_threads_restored() -> Iterator[None]:
    """Give back the async bus's own off-loop threads after a test that chose them."""
    saved = _async_offloop._pool  # noqa: SLF001 - tests/_support.use_off_loop_threads sets it
    yield
    _async_offloop._pool = saved  # noqa: SLF001


@pytest.fixture
def bus() -> Iterator[EventBus]:
    """An in-memory bus on two dispatcher threads, closed after the test."""
    b = EventBus(EventConfig(threads=2))
    yield b
    b.close(timeout=WAIT)


@pytest.fixture
def journal(tmp_path: Path) -> str:
    return str(tmp_path / "journal")


@pytest.fixture
def open_bus(journal: str) -> Iterator[Callable[..., EventBus]]:
    """Open buses on the test's journal; close whatever is left open at the end."""
    opened: list[EventBus] = []

    def opener(**settings: Any) -> EventBus:
        bus = PersistentEventBus(EventConfig(persistence_path=journal, **settings))
        opened.append(bus)
        return bus

    yield opener
    for bus in opened:
        bus.close(timeout=30)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., EventBus]]:
    """Open buses joined as nodes (``NodeConfig`` keywords); ``persistent=True`` gives a journal."""
    opened: list[EventBus] = []

    def make(name: str, *, persistent: bool = False, **node: Any) -> EventBus:
        config = EventConfig(persistence_path=str(tmp_path / name)) if persistent else None
        bus_type = PersistentEventBus if persistent else EventBus
        bus = bus_type(config or EventConfig(), node=NodeConfig(name=name, **node))
        opened.append(bus)
        return bus

    yield make
    for bus in reversed(opened):
        bus.close(timeout=10)
