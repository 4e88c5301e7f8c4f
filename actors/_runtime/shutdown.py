"""Stopping actors by a deadline: one clock for a whole shutdown.

A shutdown made of steps that each wait up to ``timeout`` takes a multiple of
it; here every step waits only for what is left of one ``Deadline``, and
whatever has not stopped by then is abandoned and reported, never waited for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pykka

__all__ = ["Deadline", "send_stop", "wait_stopped"]


class Deadline:
    """A point in time (``time.monotonic``), or none at all (wait forever)."""

    __slots__ = ("at",)

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + max(0.0, timeout)

    def remaining(self) -> float | None:
        """Return the seconds left (never negative), or None without a deadline."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def extended(self, grace: float) -> Deadline:
        """Return a deadline ``grace`` seconds later than this one."""
        later = Deadline(None)
        later.at = None if self.at is None else self.at + grace
        return later


def send_stop(refs: Iterable[pykka.ActorRef[Any]]) -> list[tuple[pykka.ActorRef[Any], Any]]:
    """Ask every live actor of ``refs`` to stop; return each with its stop future.

    Never blocks: the stop goes behind the control messages already queued,
    ahead of the actor's events.
    """
    sent = []
    for ref in refs:
        if not ref.is_alive():
            continue
        try:
            sent.append((ref, ref.stop(block=False)))
        except pykka.ActorDeadError:  # stopped meanwhile
            continue
    return sent


def wait_stopped(
    sent: list[tuple[pykka.ActorRef[Any], Any]], deadline: Deadline
) -> list[pykka.ActorRef[Any]]:
    """Wait, until ``deadline`` at most, for the stops ``send_stop`` sent.

    Returns the actors that had not stopped by then (left to themselves).
    """
    late = []
    for ref, future in sent:
        try:
            future.get(timeout=deadline.remaining())
        except pykka.Timeout:
            late.append(ref)
    return late
