"""Handlers and constants the behaviour tests share."""

from __future__ import annotations

import threading
from typing import Any

from actors import Event, EventBus

WAIT = 10.0
"""Upper bound for every wait in a test: reaching it means the test failed."""


class Collector:
    """A handler that records events and can signal once it saw ``expected`` of them."""

    def __init__(self, expected: int | None = None) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.expected = expected
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if self.expected is not None and len(self.events) >= self.expected:
                self.done.set()

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e.event_type for e in self.events]


class Gate:
    """A handler that blocks inside each event until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.entered.set()
        if not self.release.wait(WAIT):
            raise AssertionError("the test never released the gate")
        self.events.append(event)

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]


def publish_all(bus: EventBus, events: list[Event]) -> list[Event]:
    return [f.get(timeout=30) for f in bus.publish_many(events)]


class Recorder:
    """A handler that records events and lets the test wait for one of them.

    ``flush()`` does not wait for a catch-up subscription that has not joined
    live delivery yet (see ``test_flush_waits_for_a_catching_up_subscription``),
    so tests of catch-up wait for a known last event instead.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]

    @property
    def sequences(self) -> list[int]:
        return [e.sequence or 0 for e in self.events]

    def wait_for(self, last: Event, timeout: float = 30.0) -> None:
        """Wait until ``last`` (or anything after it) was handled."""
        target = last.sequence or 0
        with self._cond:
            reached = self._cond.wait_for(
                lambda: bool(self.events) and (self.events[-1].sequence or 0) >= target, timeout
            )
        assert reached, f"event {target} never reached the handler"
