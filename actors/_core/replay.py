"""Replay: stored events re-delivered to one handler, in order, at an optional speed."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

from actors._core.subscriber import current_event
from actors._errors import BusClosedError
from actors._model.event import Event
from actors._model.query import EventQuery

__all__ = ["HEAD", "head_of", "iter_query", "replay", "replay_async"]


HEAD = EventQuery(descending=True, limit=1)
"""The query of the journal's last event: a replay goes no further than it was."""


def head_of(last: list[Event]) -> int:
    """Return the sequence of the journal's last event (the answer to ``HEAD``), 0 if none."""
    return (last[0].sequence or 0) if last else 0


def up_to(page: list[Event], ceiling: int | None) -> tuple[list[Event], bool]:
    """Return ``page`` cut at sequence ``ceiling`` (None: no ceiling), and whether it reached it."""
    if ceiling is None or not page or (page[-1].sequence or 0) < ceiling:
        return page, False
    return [e for e in page if (e.sequence or 0) <= ceiling], True


def iter_query(
    read: Callable[[EventQuery], list[Event]],
    query: EventQuery,
    page_size: int,
    ceiling: int | None = None,
) -> Iterator[Event]:
    """Yield a query's events page by page (bounded memory for big replays).

    With a ``ceiling``, only events up to that sequence: paging ends there,
    though publishers go on (a replay ends, whatever is published meanwhile).
    """
    if query.descending or query.limit is not None:
        yield from read(query)
        return
    after = query.after_sequence
    while True:
        page, last = up_to(read(replace(query, after_sequence=after, limit=page_size)), ceiling)
        yield from page
        if last or len(page) < page_size:
            return
        after = page[-1].sequence


LONGEST_WAIT = 100 * 365 * 86_400.0
"""The longest replay waits between two events (seconds): a century."""


class _Pace:
    """The wait before each event that keeps the original spacing, ``speed`` times faster."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self.started: float | None = None
        self.first_ts = 0.0

    def delay(self, event: Event) -> float:
        """Return the seconds to wait before ``event`` (the first one: none)."""
        ts = event.timestamp.timestamp()
        if self.started is None or self.speed is None:
            self.started, self.first_ts = time.monotonic(), ts
            return 0.0
        # A tiny ``speed`` asks for ages: a century at most, never an error
        # from the clock (``time.sleep(1e20)`` overflows, and on Linux even
        # ``time.sleep(threading.TIMEOUT_MAX)`` is refused with EINVAL).
        wait = self.started + (ts - self.first_ts) / self.speed - time.monotonic()
        return min(wait, LONGEST_WAIT)


CLOSED = "the bus was closed during the replay"
"""What a replay under way raises (``BusClosedError``) once its bus closes."""


def replay(
    events: Iterator[Event],
    handler: Callable[[Event], Any],
    speed: float | None,
    closing: threading.Event,
) -> int:
    """Call ``handler`` with each event, as if handling it; return how many.

    ``speed=1.0`` keeps the original spacing between the events' timestamps
    (2.0 twice as fast); None delivers as fast as possible.  An exception from
    ``handler`` stops the replay and propagates.  Once ``closing`` is set (the
    bus's ``close`` began) no handler call follows: ``BusClosedError``, a wait
    for the spacing included.
    """
    count = 0
    pace = _Pace(speed)
    for event in events:
        if speed is not None and (delay := pace.delay(event)) > 0:
            closing.wait(delay)
        if closing.is_set():
            raise BusClosedError(CLOSED)
        token = current_event.set(event)
        try:
            handler(event)
        finally:
            current_event.reset(token)
        count += 1
    return count


async def replay_async(
    read: Callable[[EventQuery], Awaitable[list[Event]]],
    query: EventQuery,
    handler: Callable[[Event], Any],
    speed: float | None,
    page_size: int,
    *,
    closing: threading.Event,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """``replay`` on an event loop: pages read by ``read`` (awaited), spacing waited
    with ``pause`` (``BusClosedError`` if the bus stops first), an ``async def``
    handler awaited; return how many."""
    count = 0
    pace = _Pace(speed)
    whole = query.descending or query.limit is not None
    ceiling = None if whole else head_of(await read(HEAD))
    after = query.after_sequence
    while True:
        page = await read(query if whole else replace(query, after_sequence=after, limit=page_size))
        page, last = up_to(page, ceiling)
        for event in page:
            if speed is not None and (delay := pace.delay(event)) > 0:
                await pause(delay)
            if closing.is_set():
                raise BusClosedError(CLOSED)
            token = current_event.set(event)
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            finally:
                current_event.reset(token)
            count += 1
        if whole or last or len(page) < page_size:
            return count
        after = page[-1].sequence
