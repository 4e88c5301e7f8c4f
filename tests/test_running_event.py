"""Which event a publish inherits causation from: the handler running in its context.

The handled event lives in a context variable (set per delivery on the hot
path): these tests pin what a publish made from each place inherits (another
thread, a batch, a nested replay, a retry after a wait, a copy of the
handler's context on another loop or an executor), so a cheaper holder that
breaks one of them fails here.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable

from actors import AsyncEventBus, Event, EventBus, EventConfig, EventQuery, OverflowStrategy
from tests._support import WAIT, Collector


def _effects(bus: EventBus, expected: int) -> Collector:
    effects = Collector(expected)
    bus.subscribe("effect.*", effects)
    return effects


def test_a_publish_from_another_thread_while_a_handler_runs_inherits_nothing(
    bus: EventBus,
) -> None:
    inside = threading.Event()
    release = threading.Event()

    def slow(_event: Event) -> None:
        inside.set()
        release.wait(WAIT)

    effects = _effects(bus, 1)
    bus.subscribe("cause.*", slow)
    bus.publish_correlated("cause.start", None, uuid.uuid4())
    assert inside.wait(WAIT)
    try:
        bus.publish("effect.outside", None).get(timeout=WAIT)  # this thread runs no handler
    finally:
        release.set()
    assert effects.done.wait(WAIT)
    assert effects.events[0].causation_id is None
    assert effects.events[0].correlation_id is None


def test_each_event_of_a_batch_is_the_cause_of_what_its_own_call_publishes(
    bus: EventBus,
) -> None:
    effects = _effects(bus, 200)
    gate = threading.Event()
    first = threading.Event()

    def react(event: Event) -> None:
        if not first.is_set():
            first.set()
            gate.wait(WAIT)  # the rest queue up: they are handled as one batch
        bus.publish("effect.of", {"n": event.data})

    bus.subscribe("cause.*", react, capacity=1000)
    causes = [bus.publish("cause.n", 0).get(timeout=WAIT)]
    assert first.wait(WAIT)
    causes += [bus.publish("cause.n", i).get(timeout=WAIT) for i in range(1, 200)]
    gate.set()
    assert effects.done.wait(WAIT)
    by_data = {e.data["n"]: e for e in effects.events}
    assert sorted(by_data) == list(range(200))
    for cause in causes:
        assert by_data[cause.data].causation_id == cause.id


def test_a_replay_inside_a_handler_nests_and_the_handler_s_own_event_comes_back(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    effects = _effects(bus, 3)
    old = bus.publish("old.one", None).get(timeout=WAIT)
    bus.flush(timeout=WAIT)

    def react(event: Event) -> None:
        bus.publish("effect.before", None)
        bus.replay(
            EventQuery(event_types=["old.*"]),
            lambda replayed: bus.publish("effect.replayed", {"of": str(replayed.id)}),
        )
        bus.publish("effect.after", None)

    bus.subscribe("cause.*", react)
    cause = bus.publish("cause.start", None).get(timeout=WAIT)
    assert effects.done.wait(WAIT)
    got = {e.event_type: e for e in effects.events}
    assert got["effect.before"].causation_id == cause.id
    assert got["effect.replayed"].causation_id == old.id
    assert got["effect.after"].causation_id == cause.id


def test_a_retried_call_after_a_wait_publishes_with_its_event(bus: EventBus) -> None:
    # The first call raises; the retry runs later from the retry timer's wake
    # (the batch parked and resumed), and what it publishes is still caused
    # by the event it retries.
    effects = _effects(bus, 2)
    calls: list[int] = []

    def flaky(event: Event) -> None:
        calls.append(event.data)
        if calls.count(event.data) == 1:
            raise RuntimeError("first call fails")
        bus.publish("effect.retried", {"of": event.data})

    bus.subscribe("cause.*", flaky, retries=2, retry_backoff=0.01)
    cid = uuid.uuid4()
    causes = [bus.publish_correlated("cause.n", i, cid).get(timeout=WAIT) for i in range(2)]
    assert effects.done.wait(WAIT)
    by_data = {e.data["of"]: e for e in effects.events}
    for cause in causes:
        assert by_data[cause.data].causation_id == cause.id
        assert by_data[cause.data].correlation_id == cid


def test_asyncio_run_inside_a_sync_handler_publishes_with_the_handler_s_event() -> None:
    # With a BLOCK subscription a publish may wait, so the async facade
    # publishes from an executor thread, in a copy of the caller's context:
    # the sync handler's event (held by its thread) must travel in that copy.
    async def main() -> tuple[Event, list[Event]]:
        abus = AsyncEventBus(EventConfig(threads=2))
        effects = Collector(1)
        await abus.subscribe("effect.*", effects, overflow=OverflowStrategy.BLOCK)

        def react(_event: Event) -> None:
            asyncio.run(abus.publish("effect.from_sync", None))

        await abus.subscribe("cause.*", react)
        cause = await abus.publish_correlated("cause.start", None, uuid.uuid4())
        await asyncio.get_running_loop().run_in_executor(None, effects.done.wait, WAIT)
        await abus.aclose(timeout=WAIT)
        return cause, effects.events

    cause, events = asyncio.run(main())
    assert len(events) == 1
    assert events[0].causation_id == cause.id
    assert events[0].correlation_id == cause.correlation_id


def test_a_handler_under_a_timeout_policy_passes_its_event_on_as_well(bus: EventBus) -> None:
    effects = _effects(bus, 1)
    bus.subscribe("cause.*", lambda _e: bus.publish("effect.timed", None), timeout=WAIT)
    cause = bus.publish_correlated("cause.start", None, uuid.uuid4()).get(timeout=WAIT)
    assert effects.done.wait(WAIT)
    assert effects.events[0].causation_id == cause.id
    assert effects.events[0].correlation_id == cause.correlation_id


def test_a_coroutine_handed_to_another_loop_from_a_sync_handler_keeps_the_cause(
    bus: EventBus,
) -> None:
    # ``run_coroutine_threadsafe`` runs the coroutine on the loop's thread, in
    # a copy of the handler's context: its publish is caused by the handled
    # event, as it would be inside the handler.  (Why the handled event lives
    # in a context variable, not in a per-thread holder: see performance.md.)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        effects = _effects(bus, 1)

        async def work() -> None:
            bus.publish("effect.from_loop", None)

        def react(_event: Event) -> None:
            asyncio.run_coroutine_threadsafe(work(), loop).result(WAIT)

        bus.subscribe("cause.*", react)
        cause = bus.publish_correlated("cause.start", None, uuid.uuid4()).get(timeout=WAIT)
        assert effects.done.wait(WAIT)
        assert effects.events[0].causation_id == cause.id
        assert effects.events[0].correlation_id == cause.correlation_id
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(WAIT)
        loop.close()
