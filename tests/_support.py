"""Handlers and constants the behaviour tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from actors import Event

WAIT = 10.0
"""Upper bound for every wait in a test: reaching it means the test failed."""


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Return True once ``condition()`` holds, False if it still does not after ``timeout``.

    For states that only a clock can bring about (the dispatcher's watchdog
    notices a blocked handler after ``blocking_threshold``): the condition is
    what the test waits for, re-checked every few milliseconds, never a
    guessed duration.
    """
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.005)
    return True


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
