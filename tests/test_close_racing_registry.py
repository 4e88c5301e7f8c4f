"""A subscribe or unsubscribe overlapping ``close`` leaves no actor registered.

An actor whose stop is sent after ``close`` ended the pool is never stopped:
it stays in pykka's registry for good, and ``pykka.ActorRegistry.stop_all()``
would wait on it forever.  Each test runs ``close`` at the exact point of the
call where that used to happen, and lets the call go on once ``close`` has
ended or is waiting for the call.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import pykka
import pytest

from actors import BusClosedError, EventBus, EventConfig
from actors._core import wiring
from actors._core.backpressure import BlockGuard
from actors._core.subscriber import SubscriberActor
from actors._runtime.dispatcher import DispatchedActor
from tests._support import WAIT, wait_for


def _inside(thread: threading.Thread, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)  # noqa: SLF001
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def _close_meanwhile(bus: EventBus) -> threading.Thread:
    """Close ``bus`` on a thread; return once close ended or waits for the caller's lock."""
    closer = threading.Thread(target=bus.close, kwargs={"timeout": WAIT}, daemon=True)
    closer.start()
    assert wait_for(
        lambda: (
            not closer.is_alive()
            or _inside(closer, "start_flush")  # both take the core's lock
            or _inside(closer, "take_subscribers")
        )
    )
    return closer


def _mine(earlier: set[str]) -> list[pykka.ActorRef[Any]]:
    return [r for r in pykka.ActorRegistry.get_all() if r.actor_urn not in earlier]


@pytest.mark.parametrize("dedicated_thread", [False, True])
def test_a_subscribe_whose_subscriber_started_as_close_began_is_stopped(
    monkeypatch: pytest.MonkeyPatch, dedicated_thread: bool
) -> None:
    earlier = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    bus = EventBus(EventConfig(threads=1))
    closers: list[threading.Thread] = []
    real_start = wiring.start_actor

    def start(actor: DispatchedActor) -> None:
        real_start(actor)
        if isinstance(actor, SubscriberActor) and not closers:
            closers.append(_close_meanwhile(bus))

    monkeypatch.setattr(wiring, "start_actor", start)
    try:
        sub = bus.subscribe("a.*", lambda _: None, dedicated_thread=dedicated_thread)
    except BusClosedError:
        sub = None
    closers[0].join(WAIT)
    assert not closers[0].is_alive()
    assert sub is None or not sub.active
    assert bus.subscriptions() == []
    assert wait_for(lambda: not [r for r in _mine(earlier) if r.is_alive()]), _mine(earlier)


def test_an_unsubscribe_overlapping_close_stops_its_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    earlier = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    bus = EventBus(EventConfig(threads=1))
    sub = bus.subscribe("a.*", lambda _: None)
    closers: list[threading.Thread] = []
    real_discard: Callable[[BlockGuard, str], None] = BlockGuard.discard

    def discard(guard: BlockGuard, sub_id: str) -> None:  # the subscriber is taken out
        real_discard(guard, sub_id)
        if not closers:
            closers.append(_close_meanwhile(bus))

    monkeypatch.setattr(BlockGuard, "discard", discard)
    sub.unsubscribe()
    closers[0].join(WAIT)
    assert not closers[0].is_alive()
    assert not sub.active
    assert wait_for(lambda: not [r for r in _mine(earlier) if r.is_alive()]), _mine(earlier)
