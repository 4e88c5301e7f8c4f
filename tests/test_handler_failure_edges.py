"""Handler failures at the edges: what a handler raises never strands its subscription."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from actors import AsyncEventBus, Event, EventBus, EventConfig, PersistentEventBus
from tests._support import WAIT, run_python, wait_for


class _NotesBreak(Exception):
    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("the notes cannot be read")


def _unformattable(kind: str) -> BaseException:
    if kind == "syntax":  # a parser of bytes may build one: ``text`` is bytes
        return SyntaxError("bad token", ("input.txt", 1, 5, b"some bytes"))
    return _NotesBreak("x")


@pytest.mark.parametrize("kind", ["syntax", "notes"])
def test_an_exception_traceback_cannot_format_is_a_dead_letter(kind: str) -> None:
    seen: list[int] = []

    def handler(event: Event) -> None:
        seen.append(event.data)  # type: ignore[arg-type]
        if event.data == 0:
            raise _unformattable(kind)

    with EventBus() as bus:
        sub = bus.subscribe("a", handler)
        for i in range(8):
            bus.publish("a", i)
        bus.flush(timeout=WAIT)  # before the fix: never done, events 1.. stranded
        assert seen == list(range(8))
        stats = sub.statistics()
        assert (stats.delivered, stats.dead_letters, stats.in_flight) == (7, 1, 0)
        [letter] = bus.dead_letters()
        assert letter.error_type == type(_unformattable(kind)).__name__
        assert "could not be formatted" in letter.error
        assert bus.metrics().dead_letters == 1


@pytest.mark.parametrize("kind", ["syntax", "notes"])
def test_an_async_handler_raising_what_cannot_be_formatted_goes_on(kind: str) -> None:
    seen: list[int] = []

    async def handler(event: Event) -> None:
        seen.append(event.data)  # type: ignore[arg-type]
        if event.data == 0:
            raise _unformattable(kind)

    async def main() -> None:
        async with AsyncEventBus() as bus:
            sub = await bus.subscribe("a", handler)
            for i in range(8):
                await bus.publish("a", i)
            await bus.flush(timeout=WAIT)
            assert seen == list(range(8))
            stats = sub.statistics()
            assert (stats.delivered, stats.dead_letters, stats.in_flight) == (7, 1, 0)
            [letter] = bus.dead_letters()
            assert "could not be formatted" in letter.error

    asyncio.run(main())


_STOPPED_BY_PYKKA = """
import logging, sys, threading
import pykka
from actors import BusClosedError, EventBus

logging.basicConfig(level=logging.WARNING)

class Bails(pykka.ThreadingActor):
    def on_receive(self, message):
        raise SystemExit("the worker bails out")  # pykka then stops every actor

threads = set(threading.enumerate())
bus = EventBus()
bus.subscribe("other", lambda e: None)
if sys.argv[1] == "stop_all":
    pykka.ActorRegistry.stop_all()
else:
    bus.subscribe("job", Bails.start())
    bus.publish("job", 1)
    while pykka.ActorRegistry.get_all():  # stop_all, on the worker's thread
        threading.Event().wait(0.01)
try:
    bus.publish("other", 2).get(timeout=30)
except BusClosedError:
    print("refused")
print(bus.close(timeout=30), bus.close(timeout=30))  # before: BusClosedError
left = {t for t in threading.enumerate() if not t.name.startswith("Bails")} - threads
print(sorted(t.name for t in left if t.is_alive()))
"""


@pytest.mark.parametrize("how", ["actor raises SystemExit", "stop_all"])
def test_close_ends_a_bus_whose_actors_pykka_stopped(how: str) -> None:
    """In a process of its own: ``stop_all`` stops every pykka actor of the process."""
    result = run_python(_STOPPED_BY_PYKKA, how)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["refused", "() ()", "[]"]
    assert "the bus's actors were stopped before close" in result.stderr


def test_aclose_returns_what_it_gave_up_on_as_close_does() -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck(event: Event) -> None:
        started.set()
        release.wait(WAIT)

    async def main() -> None:
        bus = AsyncEventBus()
        sub = await bus.subscribe("a", stuck)
        for i in range(3):
            await bus.publish("a", i)
        assert started.wait(WAIT)
        try:
            given_up = await bus.aclose(timeout=0.1)  # before: None
        finally:
            release.set()
        assert [(s.id, s.in_flight + s.queued) for s in given_up] == [(sub.id, 3)]
        assert await bus.aclose() == ()

    asyncio.run(main())


@pytest.mark.parametrize("dedicated", [True, False])
def test_only_a_shared_pool_warns_that_others_wait_for_its_thread(
    dedicated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``dedicated_thread`` subscription has its one thread to itself: a slow call
    there is no "max_threads reached; others wait" (it was logged at every slow
    call).  A shared pool at its limit still says so."""
    caplog.set_level(logging.DEBUG, logger="actors.dispatcher")
    release = threading.Event()
    config = EventConfig(threads=1, max_threads=1, blocking_threshold=0.05)
    with EventBus(config) as bus:
        bus.subscribe("slow", lambda event: release.wait(WAIT), dedicated_thread=dedicated)
        try:
            bus.publish("slow", 1)
            assert wait_for(lambda: "has run one turn for over" in caplog.text)  # seen blocked
        finally:
            release.set()
        bus.flush(WAIT)
    # The bus closed: its watchdogs ended, the scan that saw the call blocked too.
    warned = "reached; others wait" in caplog.text
    assert warned is not dedicated


def test_a_dead_letter_whose_message_holds_a_lone_surrogate_is_journaled(tmp_path: Path) -> None:
    """A file name read with ``surrogateescape`` in the exception's message: UTF-8
    cannot carry it, and the dead letter's announcement was not journaled."""

    def handler(event: Event) -> None:
        raise FileNotFoundError(b"/data/caf\xe9.txt".decode("utf-8", "surrogateescape"))

    with PersistentEventBus(EventConfig(persistence_path=tmp_path / "j")) as bus:
        bus.subscribe("files.*", handler)
        bus.publish("files.open", 1)
        bus.flush(WAIT)
        [letter] = bus.dead_letters()  # read from the journal
    assert "caf\\udce9.txt" in letter.error


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_close_says_a_subscription_waiting_to_retry_is_not_retried(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``close(timeout)`` while a failed event waits out its ``retry_backoff``: the
    warning said "its handler is still running and is abandoned", though no
    handler ran; it says the event is not retried."""
    failed = threading.Event()

    def handler(event: Event) -> None:
        failed.set()
        raise RuntimeError("no")

    async def async_handler(event: Event) -> None:
        handler(event)

    bus = EventBus()
    try:
        chosen = handler if kind == "sync" else async_handler
        bus.subscribe("r.*", chosen, retries=3, retry_backoff=3600.0)
        bus.publish("r.x", 1)
        assert failed.wait(WAIT)
        assert wait_for(lambda: bus.metrics().per_subscription[0].errors == 1)
    finally:
        with caplog.at_level(logging.WARNING, logger="actors.bus"):
            (given_up,) = bus.close(timeout=0.2)
    assert given_up.in_flight == 1
    gave_up = [r.getMessage() for r in caplog.records if "gave up on subscription" in r.message]
    assert len(gave_up) == 1, caplog.text
    assert "waiting out its retry_backoff: it is not retried" in gave_up[0]
    assert "still running" not in caplog.text


@pytest.mark.parametrize("returns", [False, True], ids=["never-returns", "returns-late"])
def test_an_async_handler_that_swallows_its_timeout_is_counted_at_the_deadline(
    returns: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``async def`` handler that catches its timeout's cancellation and goes on
    was counted in ``timeouts`` only when it returned: one that never did was never
    counted.  It is counted (and logged) just after the deadline, and once only."""
    release = threading.Event()
    caught = threading.Event()

    async def stubborn(event: Event) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            caught.set()
        while not release.is_set():  # goes on past its cancellation
            await asyncio.sleep(0.01)

    bus = EventBus()
    try:
        with caplog.at_level(logging.WARNING, logger="actors.subscriber"):
            bus.subscribe("s.*", stubborn, timeout=0.05, retries=0)
            bus.publish("s.x", 1)
            assert caught.wait(WAIT)
            assert wait_for(lambda: bus.metrics().per_subscription[0].timeouts == 1)
            assert not release.is_set()  # counted while it still runs
            if returns:
                release.set()
                bus.flush(WAIT)
                assert bus.metrics().per_subscription[0].timeouts == 1  # not twice
    finally:
        release.set()
        bus.close(WAIT)
    late = [r.getMessage() for r in caplog.records if "longer than its timeout" in r.message]
    assert len(late) == 1, late
    assert "it had not returned two turns of its loop later" in late[0]


def test_close_still_tells_of_an_unsubscribed_handler_beside_one_waiting_to_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscription waiting to retry is no handler running: it must not hide
    the warning about the handler of an unsubscribed subscription still running."""
    release, started, failed = threading.Event(), threading.Event(), threading.Event()

    def failing(event: Event) -> None:
        failed.set()
        raise RuntimeError("no")

    def stuck(event: Event) -> None:
        started.set()
        release.wait(WAIT)

    bus = EventBus()
    try:
        bus.subscribe("r.*", failing, retries=3, retry_backoff=3600.0)
        sub = bus.subscribe("u.*", stuck)
        bus.publish("r.x", 1)
        bus.publish("u.x", 1)
        assert failed.wait(WAIT)
        assert started.wait(WAIT)
        sub.unsubscribe()
        with caplog.at_level(logging.WARNING, logger="actors.bus"):
            bus.close(timeout=0.2)
    finally:
        release.set()
    assert "unsubscribed before close was still running" in caplog.text
    assert "waiting out its retry_backoff: it is not retried" in caplog.text
