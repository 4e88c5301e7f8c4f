"""Router figures read during ``close``, and subscriptions made from odd places or racing it.

``docs/observability.md``: a router that ``close`` has stopped and that has
not yet published its final figures gives a reader on another thread the
last figures seen, never zeros, and the counters are never lower than an
earlier read.  ``docs/architecture.md``: a ``subscribe`` overlapping ``close``
either returns a subscription that ``close`` stops, or raises
``BusClosedError``.

The moment between the router's stop and its final figures is held open by
pausing the router's thread in ``BlockGuard.release_all``, which it runs
there (``RouterActor._on_stopped``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import BackpressureError, BusClosedError, Event, EventBus, EventConfig
from actors._core import router_reads, wiring
from actors._core.router import RouterActor
from actors._model.metrics import BusMetrics
from actors._runtime.future import BusFuture
from actors.cli.connect import running
from tests._support import WAIT, wait_for


def _on_thread(call: Callable[[], Any]) -> Future[Any]:
    """Run ``call`` on a daemon thread; its outcome is the returned future's."""
    outcome: Future[Any] = Future()

    def run() -> None:
        try:
            outcome.set_result(call())
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def _inside(thread: threading.Thread, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)  # noqa: SLF001
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def _read_between_stop_and_final(
    monkeypatch: pytest.MonkeyPatch, bus: EventBus, read: Callable[[], Any]
) -> Future[Any]:
    """Arrange for ``read`` to run on another thread while the router is stopped, figures unset.

    The router's thread holds there until the reader has answered or waits for the
    final figures.  Returns the future of what ``read`` returned; ``close`` must be
    called for it to run.
    """
    router = bus._core.router  # noqa: SLF001
    real = RouterActor._on_stopped  # noqa: SLF001
    outcome: Future[Any] = Future()

    def on_stopped(self: RouterActor) -> None:
        if self is router and self.final is None and not outcome.done():
            answer: Future[Any] = Future()

            def run() -> None:
                try:
                    answer.set_result(read())
                except BaseException as exc:
                    answer.set_exception(exc)

            reader = threading.Thread(target=run, daemon=True)
            reader.start()
            held = wait_for(lambda: answer.done() or _inside(reader, "_final"))
            real(self)
            try:
                assert held, "the reader neither answered nor waited"
                outcome.set_result(answer.result(WAIT))
            except BaseException as exc:
                outcome.set_exception(exc)
            return
        real(self)

    monkeypatch.setattr(RouterActor, "_on_stopped", on_stopped)
    return outcome


def test_metrics_read_while_the_router_stops_is_never_zeros(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus(EventConfig(threads=1))
    seen: list[int] = []
    bus.subscribe("job.*", lambda e: seen.append(e.data))
    for i in range(5):
        bus.publish("job.done", i).get(timeout=WAIT)
    bus.flush(WAIT)
    assert seen == list(range(5))
    during = _read_between_stop_and_final(monkeypatch, bus, bus.metrics)
    bus.close(timeout=WAIT)
    assert during.done(), "the router never stopped with its figures unset"
    after = bus.metrics()
    assert after.published >= 5
    read: BusMetrics = during.result(0)
    assert read.published >= 5, read


def test_metrics_read_while_the_router_stops_gives_the_figures_seen_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus(EventConfig(threads=1))
    bus.subscribe("job.*", lambda _: None)
    for i in range(4):
        bus.publish("job.done", i).get(timeout=WAIT)
    bus.flush(WAIT)
    before = bus.metrics()  # seen once: the fallback has something to give
    assert before.published == 4
    during = _read_between_stop_and_final(monkeypatch, bus, bus.metrics)
    bus.close(timeout=WAIT)
    read: BusMetrics = during.result(0)
    assert read.published >= before.published
    assert bus.metrics().published >= before.published


def test_dead_letters_read_while_the_router_stops_are_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus(EventConfig(threads=1, handler_retries=0))
    failed = threading.Event()

    def broken(_: Event) -> None:
        failed.set()
        raise ValueError("broken handler")

    bus.subscribe("job.*", broken)
    bus.publish("job.bad", 1).get(timeout=WAIT)
    assert failed.wait(WAIT)
    bus.flush(WAIT)
    assert wait_for(lambda: bus.metrics().dead_letters == 1)
    during = _read_between_stop_and_final(monkeypatch, bus, bus.dead_letters)
    bus.close(timeout=WAIT)
    assert len(bus.dead_letters()) == 1
    assert len(during.result(0)) == 1


def test_rejected_never_goes_back_for_a_reader_once_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus(EventConfig(threads=2))
    started, release = threading.Event(), threading.Event()

    def held(_: Event) -> None:
        started.set()
        release.wait(WAIT)

    bus.subscribe("job.*", held, overflow="reject", capacity=1)
    bus.publish("job.one", 1).get(timeout=WAIT)
    assert started.wait(WAIT)  # the handler holds the first event
    bus.publish("job.two", 2).get(timeout=WAIT)  # the mailbox is full now

    # A reader on another thread gets the router's answer, and is slow to keep it.
    got, go = threading.Event(), threading.Event()

    class SlowFuture(BusFuture[Any]):
        def get(self, timeout: float | None = None) -> Any:
            value = super().get(timeout)
            if threading.current_thread().name == "slow-reader":
                got.set()
                go.wait(WAIT)
            return value

    monkeypatch.setattr(router_reads, "BusFuture", SlowFuture)
    slow: Future[BusMetrics] = Future()
    reader = threading.Thread(
        target=lambda: slow.set_result(bus.metrics()), name="slow-reader", daemon=True
    )
    reader.start()
    assert got.wait(WAIT)
    with pytest.raises(BackpressureError):
        bus.publish("job.three", 3).get(timeout=WAIT)
    seen = bus.metrics()
    assert seen.rejected == 1
    go.set()
    # Its answer came before the rejection; it returns after another reader saw it.
    assert slow.result(WAIT).rejected == 1
    release.set()
    bus.flush(WAIT)
    during = _read_between_stop_and_final(monkeypatch, bus, bus.metrics)
    bus.close(timeout=WAIT)
    read: BusMetrics = during.result(0)
    assert read.published >= seen.published
    assert read.rejected >= seen.rejected, (seen.rejected, read.rejected)


def test_metrics_read_from_many_threads_during_close_never_go_back() -> None:
    bus = EventBus(EventConfig(threads=2))
    bus.subscribe("job.*", lambda _: None)
    for i in range(50):
        bus.publish("job.done", i).get(timeout=WAIT)
    bus.flush(WAIT)
    floor = bus.metrics().published
    assert floor == 50
    stop = threading.Event()
    barrier = threading.Barrier(5)
    lows: list[tuple[int, int]] = []

    def read() -> int:
        barrier.wait(WAIT)
        last = 0
        reads = 0
        while not stop.is_set() or reads < 3:
            published = bus.metrics().published
            if published < max(last, floor):
                lows.append((last, published))
            last = max(last, published)
            reads += 1
        return reads

    readers = [_on_thread(read) for _ in range(4)]
    barrier.wait(WAIT)
    bus.close(timeout=WAIT)
    stop.set()
    assert all(r.result(WAIT) >= 3 for r in readers)
    assert lows == []
    assert bus.metrics().published >= floor


# -- subscriptions made from inside the bus, and racing close ------------------------------


def _mine(earlier: set[str]) -> list[pykka.ActorRef[Any]]:
    return [r for r in pykka.ActorRegistry.get_all() if r.actor_urn not in earlier]


def test_subscribe_from_a_filter_does_not_deadlock_and_is_stopped_by_close() -> None:
    earlier = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    bus = EventBus(EventConfig(threads=1))
    made: list[Any] = []
    inner = threading.Event()

    def filter_(event: Event) -> bool:
        if not made:
            made.append(bus.subscribe("inner.*", lambda _: inner.set()))
        return True

    bus.subscribe("outer.*", lambda _: None, filter=filter_)
    bus.publish("outer.go", 1).get(timeout=WAIT)
    assert wait_for(lambda: len(made) == 1)
    bus.publish("inner.go", 1).get(timeout=WAIT)
    assert inner.wait(WAIT)
    bus.close(timeout=WAIT)
    assert not made[0].active
    assert wait_for(lambda: not [r for r in _mine(earlier) if r.is_alive()]), _mine(earlier)


def test_unsubscribe_from_inside_its_own_handler_stops_it() -> None:
    bus = EventBus(EventConfig(threads=1))
    subs: list[Any] = []
    calls: list[int] = []
    done = threading.Event()

    def handler(event: Event) -> None:
        calls.append(event.data)
        subs[0].unsubscribe()
        done.set()

    subs.append(bus.subscribe("job.*", handler, dedicated_thread=True))
    bus.publish("job.a", 1).get(timeout=WAIT)
    assert done.wait(WAIT)
    assert not subs[0].active
    assert wait_for(lambda: not subs[0]._actor.actor_ref.is_alive())  # noqa: SLF001
    bus.publish("job.a", 2).get(timeout=WAIT)
    bus.flush(WAIT)
    assert calls == [1]
    bus.close(timeout=WAIT)


@pytest.mark.parametrize("kind", ["sync", "async", "dedicated"])
def test_close_from_a_handler_while_handlers_subscribe(kind: str) -> None:
    earlier = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    bus = EventBus(EventConfig(threads=2))
    outcomes: list[Any] = []
    subscribed = threading.Event()
    closed = threading.Event()

    def subscribe_once() -> None:
        try:
            outcomes.append(bus.subscribe("late.*", lambda _: None))
        except BusClosedError as exc:
            outcomes.append(exc)
        subscribed.set()

    def closer(_: Event) -> None:
        bus.close(timeout=WAIT)
        closed.set()

    if kind == "async":

        async def subscriber(_: Event) -> None:
            await asyncio.sleep(0)
            subscribe_once()

        bus.subscribe("go.*", subscriber)
    else:
        bus.subscribe("go.*", lambda _: subscribe_once(), dedicated_thread=kind == "dedicated")
    bus.subscribe("go.*", closer, dedicated_thread=True)
    bus.publish("go.now", 1).get(timeout=WAIT)
    assert closed.wait(WAIT)
    assert wait_for(lambda: not [r for r in _mine(earlier) if r.is_alive()]), _mine(earlier)
    # Every subscriber stopped: the subscribing handler ran (to its end), or never will.
    if subscribed.is_set():
        assert len(outcomes) == 1
        outcome = outcomes[0]
        assert isinstance(outcome, BusClosedError) or not outcome.active
    else:
        assert outcomes == []
    assert bus.subscriptions() == []


@pytest.mark.parametrize("dedicated_thread", [False, True])
def test_subscribes_racing_close_leave_no_actor(dedicated_thread: bool) -> None:
    earlier = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    bus = EventBus(EventConfig(threads=2))
    start = threading.Barrier(5)

    def subscribe_many() -> list[Any]:
        start.wait(WAIT)
        made: list[Any] = []
        for _ in range(30):
            try:
                made.append(bus.subscribe("x.*", lambda _: None, dedicated_thread=dedicated_thread))
            except BusClosedError:
                break
        return made

    makers = [_on_thread(subscribe_many) for _ in range(4)]
    start.wait(WAIT)
    bus.close(timeout=WAIT)
    made = [s for m in makers for s in m.result(WAIT)]
    assert all(not s.active for s in made)
    assert bus.subscriptions() == []
    assert wait_for(lambda: not [r for r in _mine(earlier) if r.is_alive()]), _mine(earlier)


@pytest.mark.parametrize("durable", [False, True])
def test_a_catch_up_subscribe_racing_close_is_refused_promptly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, durable: bool
) -> None:
    bus = EventBus(EventConfig(persistence_path=str(tmp_path / "journal")))
    bus.publish("job.done", 1).get(timeout=WAIT)
    bus.flush(WAIT)
    inside, go = threading.Event(), threading.Event()
    real = wiring.as_predicate

    def as_predicate(filter_: Any) -> Any:  # past the facade's closed check
        if threading.current_thread().name == "late-subscriber":
            inside.set()
            go.wait(WAIT)
        return real(filter_)

    monkeypatch.setattr(wiring, "as_predicate", as_predicate)
    outcome: Future[Any] = Future()

    def late() -> None:
        try:
            kwargs: dict[str, Any] = {"durable": "worker"} if durable else {"from_sequence": 1}
            outcome.set_result(bus.subscribe("job.*", lambda _: None, **kwargs))
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=late, name="late-subscriber", daemon=True).start()
    assert inside.wait(WAIT)
    bus.close(timeout=WAIT)
    go.set()
    try:
        result = outcome.result(WAIT)
    except BusClosedError:
        return
    except Exception as exc:
        pytest.fail(f"a subscribe overlapping close raised {exc!r}, not BusClosedError")
    assert not result.active


# -- the command line's bus under signals ----------------------------------------------------


def _held() -> set[signal.Signals]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) & {signal.SIGINT, signal.SIGTERM}


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_running_takes_a_sigint_sent_during_the_start_and_closes_the_bus() -> None:
    # Python's own handler, whatever the suite was started with (a process
    # started with SIGINT ignored, as some job runners do, keeps it ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_during_start()
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_during_start() -> None:
    before = _held()
    built: list[EventBus] = []
    reached = []

    def start() -> EventBus:
        # To this thread, which holds it until the bus is built.
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        bus = EventBus(EventConfig(threads=1))
        built.append(bus)
        return bus

    with pytest.raises(KeyboardInterrupt), running(start):
        reached.append(True)
    assert len(built) == 1
    assert built[0].closed
    assert reached == []
    assert _held() == before


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_running_gives_the_signals_back_when_the_start_fails() -> None:
    before = _held()

    def start() -> EventBus:
        assert _held() == {signal.SIGINT, signal.SIGTERM}
        raise ValueError("no bus")

    with pytest.raises(ValueError, match="no bus"), running(start):
        pass
    assert _held() == before
