"""Figures, retries and time bounds of subscriptions that ``close`` or ``unsubscribe`` end.

docs/architecture.md ("Handler policies", "Statistics account for every
event", "``close(timeout)`` keeps one deadline"): once a subscription is
ended, its statistics balance and show nothing queued or in flight when no
handler runs any more; no attempt is made after ``unsubscribe`` returns or
after a ``close`` that gave up on the subscription (no retry, no dead
letter); ``close`` returns what it gave up on, within its timeout plus its
grace, whatever the handlers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    PersistentEventBus,
    Subscription,
    SubscriptionStatistics,
)
from tests._support import WAIT, finished, in_background, wait_for


def balanced(st: SubscriptionStatistics) -> bool:
    """Return whether every accepted event is accounted for exactly once."""
    return st.accepted == (
        st.delivered + st.expired + st.dead_letters + st.dropped + st.queued + st.in_flight
    )


def settled(st: SubscriptionStatistics) -> bool:
    """Return whether nothing is queued or in flight any more."""
    return st.queued == 0 and st.in_flight == 0


def comes_to_rest(sub: Subscription) -> bool:
    """Return True once ``sub`` shows nothing queued or in flight (False after ``WAIT``)."""
    return wait_for(lambda: settled(sub.statistics()))


class Failing:
    """A synchronous handler that counts its calls, can block in the first, and raises."""

    def __init__(self, *, block_first: bool = False) -> None:
        self.calls: list[Any] = []
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.block_first = block_first
        self.after: list[Any] = []  # calls begun once ``ended`` was set
        self.ended = threading.Event()

    def __call__(self, event: Event) -> None:
        late = self.ended.is_set()
        with self.lock:
            self.calls.append(event.data)
            if late:
                self.after.append(event.data)
            first = len(self.calls) == 1
        self.entered.set()
        if first and self.block_first:
            self.release.wait(WAIT)
        raise RuntimeError("fails")


# -- a failure after the end is neither retried nor a dead letter -----------------------


@pytest.mark.parametrize("ender", ["unsubscribe", "close"])
@pytest.mark.parametrize("options", ["shared", "dedicated", "timeout", "move_on"])
def test_a_call_failing_after_the_end_is_not_retried(ender: str, options: str) -> None:
    """The call running when the subscription ends raises afterwards: with retries
    left and no backoff, it is still not tried again and is no dead letter; it and
    the events behind it are dropped, and the figures balance with nothing left."""
    bus = EventBus(EventConfig(threads=2))
    handler = Failing(block_first=True)
    kwargs: dict[str, Any] = {"retries": 5, "retry_backoff": 0.0}
    if options in {"dedicated", "move_on"}:
        kwargs["dedicated_thread"] = True
    if options == "timeout":
        kwargs["timeout"] = 60.0
    if options == "move_on":
        kwargs["timeout"] = WAIT * 3  # never reached: the call is not left behind
    try:
        sub = bus.subscribe("f.*", handler, **kwargs)
        for i in range(4):
            bus.publish("f.e", i).get(timeout=WAIT)
        assert handler.entered.wait(WAIT)
        if ender == "unsubscribe":
            sub.unsubscribe()
            handler.ended.set()
        else:
            given_up = bus.close(timeout=0.05)
            handler.ended.set()
            assert [s.id for s in given_up] == [sub.id]
            assert given_up[0].in_flight + given_up[0].queued == 4, given_up
        handler.release.set()
        assert wait_for(lambda: settled(sub.statistics())), sub.statistics()
        st = sub.statistics()
        assert balanced(st), st
        assert (st.delivered, st.dead_letters, st.dropped) == (0, 0, 4), st
        assert handler.calls == [0], handler.calls
        assert handler.after == []
        assert not sub.active
        if ender == "unsubscribe":
            assert bus.dead_letters() == []
    finally:
        handler.release.set()
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("ender", ["unsubscribe", "close"])
def test_a_call_left_behind_and_the_next_one_both_outlive_the_end(ender: str) -> None:
    """With ``timeout`` on a dedicated thread the late call is left behind and the next
    event runs at once; ending the subscription while both are inside the handler,
    then letting both fail, makes no retry and no dead letter, and the figures end
    balanced: each call left behind delivered, the rest dropped."""
    bus = EventBus(EventConfig(threads=2))
    inside: list[Any] = []
    lock = threading.Lock()
    second = threading.Event()
    release = threading.Event()
    ended = threading.Event()
    late: list[Any] = []

    def handler(event: Event) -> None:
        with lock:
            inside.append(event.data)
            if ended.is_set():
                late.append(event.data)
        if event.data == 1:
            second.set()
        release.wait(WAIT)
        raise RuntimeError("fails")

    sub = bus.subscribe(
        "m.*", handler, dedicated_thread=True, timeout=0.05, retries=3, retry_backoff=0.0
    )
    try:
        for i in range(4):
            bus.publish("m.e", i).get(timeout=WAIT)
        assert second.wait(WAIT)  # event 0 was left behind, event 1 runs
        if ender == "unsubscribe":
            sub.unsubscribe()
        else:
            given_up = bus.close(timeout=0.05)
            assert [s.id for s in given_up] == [sub.id]
        ended.set()
        release.set()
        assert wait_for(lambda: settled(sub.statistics())), sub.statistics()
        st = sub.statistics()
        assert balanced(st), st
        assert st.dead_letters == 0, st
        # Each call left behind counts as delivered (the handler has its event); a
        # call that overran once close stopped its dispatcher is waited for instead.
        assert 1 <= st.delivered <= st.timeouts, st
        assert st.dropped == 4 - st.delivered, st
        assert inside[:2] == [0, 1], inside
        assert late == []
    finally:
        release.set()
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_that_unsubscribes_itself_and_then_fails_is_not_retried(kind: str) -> None:
    """A handler that ends its own subscription and then raises: retries remain but
    none is made, nothing becomes a dead letter, the figures balance."""
    bus = EventBus(EventConfig(threads=2))
    calls: list[Any] = []
    holder: list[Any] = []
    ready = threading.Event()
    if kind == "async":

        async def handler(event: Event) -> None:
            assert ready.wait(WAIT)
            calls.append(event.data)
            holder[0].unsubscribe()
            raise RuntimeError("fails")

    else:

        def handler(event: Event) -> None:  # type: ignore[misc]
            assert ready.wait(WAIT)
            calls.append(event.data)
            holder[0].unsubscribe()
            raise RuntimeError("fails")

    try:
        sub = bus.subscribe("u.*", handler, retries=4, retry_backoff=0.0)
        holder.append(sub)
        for i in range(3):
            bus.publish("u.e", i).get(timeout=WAIT)
        ready.set()
        assert wait_for(lambda: not sub.active and settled(sub.statistics())), sub.statistics()
        st = sub.statistics()
        assert balanced(st), st
        assert (st.delivered, st.dead_letters, st.errors) == (0, 0, 1), st
        assert st.dropped == 3, st
        assert calls == [0]
        assert bus.dead_letters() == []
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_that_closes_its_bus_and_then_fails_is_not_retried(kind: str) -> None:
    """``close`` called inside a handler gives up on the events queued behind it in
    its own subscription (it cannot wait for itself) and reports them, without the
    event calling ``close``; the failure that follows is not retried, and the
    subscription's figures end balanced with nothing left."""
    bus = EventBus(EventConfig(threads=2))
    calls: list[Any] = []
    reported: list[Any] = []
    ready = threading.Event()
    if kind == "async":

        async def handler(event: Event) -> None:
            assert ready.wait(WAIT)
            calls.append(event.data)
            reported.append(bus.close(timeout=0.05))
            raise RuntimeError("fails")

    else:

        def handler(event: Event) -> None:  # type: ignore[misc]
            assert ready.wait(WAIT)
            calls.append(event.data)
            reported.append(bus.close(timeout=0.05))
            raise RuntimeError("fails")

    sub = bus.subscribe("c.*", handler, retries=4, retry_backoff=0.0)
    for i in range(3):
        bus.publish("c.e", i).get(timeout=WAIT)
    ready.set()
    assert wait_for(lambda: len(reported) == 1 and settled(sub.statistics())), (
        reported,
        sub.statistics(),
    )
    assert wait_for(lambda: not sub.active)
    st = sub.statistics()
    assert balanced(st), st
    assert [s.id for s in reported[0]] == [sub.id]
    own = reported[0][0]
    assert own.queued + own.in_flight == 2, own  # events 1 and 2; 0 is the caller's
    assert balanced(own), own
    assert (st.delivered, st.dead_letters, st.dropped) == (0, 0, 3), st
    assert calls == [0]
    assert bus.close(timeout=WAIT) == ()


# -- unsubscribe racing a stream of retries ----------------------------------------------


@pytest.mark.parametrize("backoff", [0.0, 0.001])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_unsubscribe_during_a_retry_storm_stops_it(kind: str, backoff: float) -> None:
    """A handler that always fails, with many retries and (almost) no backoff, is
    unsubscribed while it retries: at most the attempt under way when
    ``unsubscribe`` returned runs; nothing becomes a dead letter; figures balance."""
    bus = EventBus(EventConfig(threads=2))
    count = [0]
    after = [0]
    ended = threading.Event()
    tried = threading.Event()

    def note() -> None:
        count[0] += 1
        if ended.is_set():
            after[0] += 1
        if count[0] >= 8:
            tried.set()

    if kind == "async":

        async def handler(event: Event) -> None:
            note()
            raise RuntimeError("fails")

    else:

        def handler(event: Event) -> None:  # type: ignore[misc]
            note()
            raise RuntimeError("fails")

    try:
        sub = bus.subscribe("s.*", handler, retries=1_000_000, retry_backoff=backoff)
        for i in range(3):
            bus.publish("s.e", i).get(timeout=WAIT)
        assert tried.wait(WAIT)
        sub.unsubscribe()
        ended.set()
        assert wait_for(lambda: not sub.active and settled(sub.statistics())), sub.statistics()
        st = sub.statistics()
        assert balanced(st), st
        assert (st.delivered, st.dead_letters, st.dropped) == (0, 0, 3), st
        assert after[0] <= 1, after
        assert st.errors == count[0], (st, count)
    finally:
        bus.close(timeout=WAIT)


# -- close while a retry waits -----------------------------------------------------------


def test_close_while_an_async_handler_on_a_user_loop_waits_to_retry() -> None:
    """An ``AsyncEventBus`` handler waiting for its retry when ``close`` gives up: the
    wait ends at once, ``close`` reports it, and the figures are final when it returns."""
    calls: list[Any] = []
    late: list[Any] = []
    reported: list[Any] = []
    ended = threading.Event()

    async def main() -> SubscriptionStatistics:
        bus = AsyncEventBus()

        async def handler(event: Event) -> None:
            calls.append(event.data)
            if ended.is_set():
                late.append(event.data)
            raise RuntimeError("fails")

        sub = await bus.subscribe("a.*", handler, retries=3, retry_backoff=120.0)
        for i in range(3):
            await bus.publish("a.e", i)
        while sub.statistics().errors < 1:
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        reported.append(await loop.run_in_executor(None, bus.sync.close, 0.05))
        ended.set()
        await bus.aclose()
        return sub.statistics()

    st = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert balanced(st), st
    assert settled(st), st
    assert (st.delivered, st.dead_letters, st.dropped) == (0, 0, 3), st
    # A retry may come before close gives up (its wait is drawn from [0, 30] s), never after.
    assert set(calls) == {0}, calls
    assert late == []
    assert len(reported[0]) == 1


# -- close never waits past its deadline for handlers -----------------------------------


def test_close_returns_while_handlers_of_every_kind_are_still_stuck() -> None:
    """A synchronous handler that does not return, an ``async`` one awaiting for ever
    and an ``async`` one blocking its loop: ``close`` returns with all three given up
    on while each is still inside its handler; once let go, the figures settle."""
    bus = EventBus(EventConfig(threads=2))
    release = threading.Event()
    entered = {name: threading.Event() for name in ("sync", "await", "block")}
    gone = asyncio.Event()  # never set: the awaiting handler is cancelled or let go

    def stuck(event: Event) -> None:
        entered["sync"].set()
        release.wait(WAIT)

    async def awaiting(event: Event) -> None:
        entered["await"].set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), WAIT)

    async def blocking(event: Event) -> None:
        entered["block"].set()
        release.wait(WAIT)

    loop_bus_subs = [
        bus.subscribe("k.*", stuck, retries=2, retry_backoff=0.0),
        bus.subscribe("k.*", blocking, retries=2, retry_backoff=0.0),
    ]
    # The awaiting handler gets its own loop, so the blocking one does not hide it.
    own_loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=own_loop.run_forever, daemon=True)
    loop_thread.start()

    async def subscribe_awaiting() -> Any:
        return bus.subscribe("k.*", awaiting)

    try:
        sub_await = asyncio.run_coroutine_threadsafe(subscribe_awaiting(), own_loop).result(WAIT)
        subs = [*loop_bus_subs, sub_await]
        for i in range(3):
            bus.publish("k.e", i).get(timeout=WAIT)
        for flag in entered.values():
            assert flag.wait(WAIT)
        thread, outcome = in_background(lambda: bus.close(timeout=0.1))
        given_up = finished(thread, outcome, WAIT)
        still_stuck = not release.is_set()
        assert still_stuck
        assert sorted(s.id for s in given_up) == sorted(s.id for s in subs), given_up
        release.set()
        own_loop.call_soon_threadsafe(gone.set)
        for sub in subs:
            assert comes_to_rest(sub), sub.statistics()
            st = sub.statistics()
            assert balanced(st), st
            assert st.dead_letters == 0, st
    finally:
        release.set()
        own_loop.call_soon_threadsafe(own_loop.stop)
        loop_thread.join(WAIT)
        if not own_loop.is_running():
            own_loop.close()


# -- publishers racing close --------------------------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_publishers_racing_close_leave_every_subscription_balanced(trial: int) -> None:
    """Four threads publish while ``close`` runs, to a sync subscription failing one
    event in two with retries, and an ``async`` one: each publish is either refused
    with ``BusClosedError`` or handled; every subscription ends balanced, settled,
    and its figures count exactly the published events."""
    bus = EventBus(EventConfig(threads=2))
    handled_async: list[Any] = []
    tries: dict[Any, int] = {}
    lock = threading.Lock()

    def flaky(event: Event) -> None:
        with lock:
            tries[event.data] = tries.get(event.data, 0) + 1
            n = tries[event.data]
        if event.data[1] % 2 and n == 1:  # type: ignore[index,operator]
            raise RuntimeError("once")

    async def quiet(event: Event) -> None:
        handled_async.append(event.data)

    subs = [
        bus.subscribe("p.*", flaky, retries=2, retry_backoff=0.0),
        bus.subscribe("p.*", quiet),
    ]
    start = threading.Barrier(5)
    accepted: list[int] = [0] * 4
    refused: list[int] = [0] * 4
    wrong: list[BaseException] = []

    def publisher(n: int) -> None:
        start.wait(WAIT)
        for i in range(400):
            try:
                bus.publish("p.e", (n, i)).get(timeout=WAIT)
            except BusClosedError:
                refused[n] += 1
                return
            except BaseException as exc:  # reported below
                wrong.append(exc)
                return
            accepted[n] += 1

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    start.wait(WAIT)
    given_up = bus.close(timeout=WAIT)
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert wrong == []
    assert given_up == ()
    total = sum(accepted)
    for sub in subs:
        st = sub.statistics()
        assert balanced(st), st
        assert settled(st), st
        assert (st.accepted, st.delivered, st.dead_letters, st.dropped) == (total, total, 0, 0), st
    assert len(handled_async) == total


# -- durable subscriptions ----------------------------------------------------------------


def test_a_durable_catch_up_given_up_at_close_drops_its_history_page(tmp_path: Path) -> None:
    """A durable subscription resuming from its checkpoint is given up on at ``close``
    while its handler holds the first stored event: the stored events it read count as
    accepted, the unhandled ones as dropped, and the next start resumes at the event
    the handler never finished."""
    config = EventConfig(persistence_path=str(tmp_path / "j"))
    bus = PersistentEventBus(config)
    first = bus.subscribe("d.*", lambda e: None, durable="w")
    bus.flush(WAIT)
    first.unsubscribe()
    for i in range(6):
        bus.publish("d.e", i).get(timeout=WAIT)
    bus.close(timeout=WAIT)

    bus = PersistentEventBus(config)
    entered = threading.Event()
    release = threading.Event()
    seen: list[Any] = []

    def slow(event: Event) -> None:
        seen.append(event.data)
        entered.set()
        release.wait(WAIT)
        raise RuntimeError("fails")

    sub = bus.subscribe("d.*", slow, durable="w", retries=3, retry_backoff=0.0)
    try:
        assert entered.wait(WAIT)
        given_up = bus.close(timeout=0.1)
        assert [s.id for s in given_up] == [sub.id]
    finally:
        release.set()
    assert wait_for(lambda: settled(sub.statistics())), sub.statistics()
    st = sub.statistics()
    assert balanced(st), st
    assert st.dead_letters == 0, st
    assert st.delivered == 0, st
    assert seen == [0]

    bus = PersistentEventBus(config)
    again: list[Any] = []
    done = threading.Event()

    def note(event: Event) -> None:
        again.append(event.data)
        if event.data == 5:
            done.set()

    bus.subscribe("d.*", note, durable="w")
    try:
        assert done.wait(WAIT)
        assert again == list(range(6))
    finally:
        bus.close(timeout=WAIT)


def test_a_durable_subscription_waiting_to_retry_at_close(tmp_path: Path) -> None:
    """A durable live subscription parked for a retry when ``close`` gives up: figures
    final at once (nothing in flight, the waiting event and those behind dropped), no
    dead letter, and a new start delivers from the event that failed."""
    config = EventConfig(persistence_path=str(tmp_path / "j"))
    bus = PersistentEventBus(config)
    calls: list[Any] = []

    ended = threading.Event()
    late: list[Any] = []

    def handler(event: Event) -> None:
        calls.append(event.data)
        if ended.is_set():
            late.append(event.data)
        if event.data in {2, 3, 4}:
            raise RuntimeError("fails")

    sub = bus.subscribe("r.*", handler, durable="w", retries=3, retry_backoff=120.0)
    for i in range(5):
        bus.publish("r.e", i).get(timeout=WAIT)
    assert wait_for(lambda: sub.statistics().errors == 1)
    given_up = bus.close(timeout=0.05)
    ended.set()
    st = sub.statistics()
    assert [s.id for s in given_up] == [sub.id]
    assert balanced(st), st
    assert settled(st), st
    assert (st.delivered, st.dead_letters, st.dropped) == (2, 0, 3), st
    # A retry may come before close gives up (its wait is drawn from [0, 30] s), never after.
    assert calls[:3] == [0, 1, 2], calls
    assert set(calls[3:]) <= {2}, calls
    assert late == []

    bus = PersistentEventBus(config)
    again: list[Any] = []
    done = threading.Event()

    def note(event: Event) -> None:
        again.append(event.data)
        if event.data == 4:
            done.set()

    bus.subscribe("r.*", note, durable="w")
    try:
        assert done.wait(WAIT)
        assert again == [2, 3, 4]
        assert bus.dead_letters() == []
    finally:
        bus.close(timeout=WAIT)


# -- more endings racing handlers -------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 3])
def test_an_async_handler_on_a_loop_that_ends_after_close_gave_up(retries: int) -> None:
    """``close`` gives up on an ``async`` handler that awaits for ever; the loop it
    runs on then ends (cancelling it).  The subscription was given up on first, so
    its events are dropped, not made dead letters, and the figures settle."""
    entered = threading.Event()
    box: list[Any] = []

    async def main() -> None:
        bus = AsyncEventBus()

        async def handler(event: Event) -> None:
            entered.set()
            await asyncio.Event().wait()

        sub = await bus.subscribe("o.*", handler, retries=retries, retry_backoff=0.0)
        for i in range(3):
            await bus.publish("o.e", i)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, entered.wait, WAIT)
        box.append(sub)
        box.append(await loop.run_in_executor(None, bus.sync.close, 0.05))

    asyncio.run(asyncio.wait_for(main(), WAIT))
    sub, given_up = box
    assert [s.id for s in given_up] == [sub.id]
    assert comes_to_rest(sub), sub.statistics()
    st = sub.statistics()
    assert balanced(st), st
    assert (st.delivered, st.dead_letters, st.dropped) == (0, 0, 3), st


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_timed_out_attempts_stop_at_close(kind: str) -> None:
    """A handler that overruns its ``timeout`` at every attempt (an ``async`` one is
    cancelled; a synchronous one on the shared pool is waited for), with retries left:
    ``close`` gives up on it; no attempt begins once ``close`` returned, beyond one
    under way; no dead letter; the figures settle."""
    bus = EventBus(EventConfig(threads=2))
    count = [0]
    after = [0]
    ended = threading.Event()
    second = threading.Event()

    def note() -> None:
        count[0] += 1
        if ended.is_set():
            after[0] += 1
        if count[0] >= 2:
            second.set()

    if kind == "async":

        async def handler(event: Event) -> None:
            note()
            await asyncio.sleep(WAIT)

    else:

        def handler(event: Event) -> None:  # type: ignore[misc]
            note()
            if count[0] == 1:  # overruns its timeout, then fails
                assert wait_for(lambda: subs[0].statistics().timeouts >= 1)
                raise RuntimeError("late")
            ended.wait(WAIT)
            raise RuntimeError("fails")

    subs: list[Subscription] = []
    sub = bus.subscribe("t.*", handler, timeout=0.01, retries=1_000, retry_backoff=0.0)
    subs.append(sub)
    for i in range(3):
        bus.publish("t.e", i).get(timeout=WAIT)
    assert second.wait(WAIT)
    given_up = bus.close(timeout=0.05)
    ended.set()
    assert [s.id for s in given_up] == [sub.id]
    assert comes_to_rest(sub), sub.statistics()
    st = sub.statistics()
    assert balanced(st), st
    assert (st.delivered, st.dead_letters, st.dropped) == (0, 0, 3), st
    assert after[0] <= 1, after
    assert st.timeouts >= 1, st


@pytest.mark.parametrize("trial", range(3))
def test_publishers_racing_a_close_that_gives_up_on_a_stuck_handler(trial: int) -> None:
    """Four threads publish while ``close`` gives up on a stuck handler: each publish
    is handled, dropped with the stuck subscription, or refused; once the handler is
    let go every event the subscription accepted is delivered or dropped."""
    bus = EventBus(EventConfig(threads=2))
    entered = threading.Event()
    release = threading.Event()

    def stuck(event: Event) -> None:
        entered.set()
        release.wait(WAIT)

    sub = bus.subscribe("q.*", stuck, retries=2, retry_backoff=0.0)
    bus.publish("q.e", -1).get(timeout=WAIT)
    assert entered.wait(WAIT)
    start = threading.Barrier(5)
    accepted = [0] * 4
    wrong: list[BaseException] = []

    def publisher(n: int) -> None:
        start.wait(WAIT)
        for i in range(300):
            try:
                bus.publish("q.e", (n, i)).get(timeout=WAIT)
            except BusClosedError:
                return
            except BaseException as exc:  # reported below
                wrong.append(exc)
                return
            accepted[n] += 1

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        start.wait(WAIT)
        given_up = bus.close(timeout=0.05)
        for t in threads:
            t.join(WAIT)
            assert not t.is_alive()
        assert [s.id for s in given_up] == [sub.id]
        assert not release.is_set()
    finally:
        release.set()
    assert wrong == []
    assert comes_to_rest(sub), sub.statistics()
    st = sub.statistics()
    assert balanced(st), st
    assert st.accepted == 1 + sum(accepted), (st, accepted)
    assert st.delivered == 1, st
    assert st.dropped == sum(accepted), st
    assert st.dead_letters == 0, st


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_unsubscribe_and_close_together_on_a_batch_waiting_to_retry(kind: str) -> None:
    """``unsubscribe`` from one thread and ``close`` from another, both at once, while
    the subscription waits for a retry: both return, no attempt follows, no dead
    letter, and the figures are final and settled."""
    bus = EventBus(EventConfig(threads=2))
    calls: list[Any] = []

    if kind == "async":

        async def handler(event: Event) -> None:
            calls.append(event.data)
            raise RuntimeError("fails")

    else:

        def handler(event: Event) -> None:  # type: ignore[misc]
            calls.append(event.data)
            raise RuntimeError("fails")

    sub = bus.subscribe("w.*", handler, retries=3, retry_backoff=120.0)
    for i in range(3):
        bus.publish("w.e", i).get(timeout=WAIT)
    assert wait_for(lambda: sub.statistics().errors >= 1)
    both = threading.Barrier(2)

    def unsubscribe() -> None:
        both.wait(WAIT)
        sub.unsubscribe()

    def close() -> tuple[SubscriptionStatistics, ...]:
        both.wait(WAIT)
        return bus.close(timeout=0.05)

    u_thread, u_out = in_background(unsubscribe)
    c_thread, c_out = in_background(close)
    assert finished(u_thread, u_out, WAIT) is None
    given_up = finished(c_thread, c_out, WAIT)
    returned = list(calls)
    assert isinstance(given_up, tuple), given_up
    assert comes_to_rest(sub), sub.statistics()
    st = sub.statistics()
    assert balanced(st), st
    assert (st.delivered, st.dead_letters, st.dropped) == (0, 0, 3), st
    # A retry may come before both begin (its wait is drawn from [0, 30] s), never after.
    assert set(calls) == {0}, calls
    assert not sub.active
    assert calls == returned  # nothing once both returned and the subscription stopped
