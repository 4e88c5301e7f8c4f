"""Fault injection on request/reply and handler policies, in one process.

Each test tries to break a promise of ``docs/requests.md`` or of
``docs/architecture.md`` ("Handler policies"): a full pending table, callers
that vanish (a loop closed by hand, cancellations racing replies),
misbehaving responders, backoff draws and dead letters, requests abandoned
while their publish waits for room.  No sleeps: every wait is on an event, a
future or ``wait_for``, bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BackpressureError,
    BusClosedError,
    Event,
    EventBus,
    EventBusError,
    EventConfig,
    EventQuery,
    OverflowStrategy,
    RemoteHandlerError,
    RequestTimeoutError,
)
from actors._core import policies
from tests._support import WAIT, Collector, wait_for

SHORT = 0.3
"""A request timeout meant to run out (nobody answers in time by construction)."""


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 60))


def _ask(bus: EventBus, flavour: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``bus.<method>``, or await ``AsyncEventBus(bus=bus).<method>`` for "async"."""
    if flavour != "async":
        return getattr(bus, method)(*args, **kwargs)

    async def main() -> Any:
        return await getattr(AsyncEventBus(bus=bus), method)(*args, **kwargs)

    return asyncio.run(main())


@pytest.fixture
def no_bus_errors(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Fail the test if any ``actors`` logger reported an ERROR (a failed done callback...)."""
    caplog.set_level(logging.WARNING, logger="actors")
    yield caplog
    errors = [r for r in caplog.records if r.name.startswith("actors") and r.levelno >= 40]
    assert errors == [], [r.getMessage() for r in errors]


# -- the pending table: bounded, and emptied whatever becomes of its callers ---------------------


def test_a_full_pending_table_refuses_before_publishing_and_sweeps_a_vanished_caller() -> None:
    # requests.md: the table is bounded (65,536 waiting requests; beyond that
    # request raises BackpressureError); bad input fails before anything is
    # published; an entry more than 1 s past its timeout is ended at the next
    # sweep, which runs "when the table is full"; timeout=None entries are
    # ended only by their caller, their reply or close.
    bus = EventBus(EventConfig(threads=2))
    try:
        asked = Collector()
        bus.subscribe("svc.full", asked)  # sees every request published
        bus.respond("svc.full", functools.partial(_says, "ok"))
        table = bus.request_client.requester.table
        assert table.limit == 65_536
        forever = [uuid.uuid4() for _ in range(table.limit)]
        entries = [table.open(rid, timeout=None) for rid in forever]  # callers that never return
        assert bus.pending_requests() == table.limit
        for flavour, method in [("sync", "request"), ("sync", "request_all"), ("async", "request")]:
            with pytest.raises(BackpressureError):
                _ask(bus, flavour, method, "svc.full", flavour, timeout=WAIT)
        bus.flush(WAIT)
        assert asked.events == []  # not one of them was published
        # One caller vanishes with a timeout: once past it and its grace, a
        # request that finds the table full sweeps it out and gets through.
        table.close(entries.pop())
        table.open(uuid.uuid4(), timeout=0.0)

        def answered() -> bool:
            try:
                return bus.request("svc.full", "later", timeout=WAIT).data == "ok"
            except BackpressureError:
                return False

        assert wait_for(answered)
        assert [e.data for e in asked.events] == ["later"]
        assert bus.pending_requests() == table.limit - 1  # the timeout=None ones stay
    finally:
        bus.close(timeout=WAIT)
    assert bus.pending_requests() == 0
    for entry in (entries[0], entries[-2]):
        with pytest.raises(BusClosedError):
            entry.future.get(timeout=0)


def test_async_callers_whose_loop_was_closed_by_hand_leave_the_table(
    no_bus_errors: pytest.LogCaptureFixture,
) -> None:
    # requests.md: a caller that never comes back (its loop closed by hand)
    # is ended 1 s past its timeout at the next sweep (a read of
    # pending_requests() is one); with timeout=None only by its reply or close.
    # Neither may break the thread that completes it (the router, close).
    bus = EventBus(EventConfig(threads=2))
    release = threading.Event()
    try:
        asked = threading.Event()

        def gated(event: Event) -> str:
            asked.set()
            assert release.wait(WAIT)
            return "late"

        bus.respond("svc.gated", gated, dedicated_thread=True)
        bus.subscribe("svc.silent", lambda e: None)
        abus = AsyncEventBus(bus=bus)
        loop = asyncio.new_event_loop()
        loop_errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
        tasks = [
            loop.create_task(abus.request("svc.silent", timeout=0.05)),
            loop.create_task(abus.request_all("svc.silent", timeout=0.05)),
            loop.create_task(abus.request("svc.silent", timeout=None)),
            loop.create_task(abus.request("svc.gated", timeout=None)),
        ]
        waiting = asyncio.to_thread(wait_for, lambda: bus.pending_requests() == len(tasks))
        assert loop.run_until_complete(waiting)  # the loop runs the requests meanwhile
        assert asked.wait(WAIT)
        loop.close()  # by hand, with the four requests still awaited
        release.set()  # the gated reply now finds a caller that is gone
        assert wait_for(lambda: bus.pending_requests() == 1)  # the timed ones swept, reply taken
        bus.flush(WAIT)
        assert bus.pending_requests() == 1  # the timeout=None silent one stays...
        bus.respond("svc.after", lambda e: "fine")
        assert bus.request("svc.after", timeout=WAIT).data == "fine"
    finally:
        release.set()
        bus.close(timeout=WAIT)  # ...until close, which must not trip over its dead loop
    assert bus.pending_requests() == 0
    assert all(not t.done() for t in tasks)  # their loop never ran them again
    assert loop_errors == []


def test_async_requests_cancelled_as_their_replies_arrive_never_leak_or_misroute(
    no_bus_errors: pytest.LogCaptureFixture,
) -> None:
    # requests.md: AsyncEventBus.request awaits a future fed by the table;
    # each caller removes its own entry whatever happens; a reply goes only to
    # the request it answers.  Cancel each request at a different point of
    # its round trip (before it runs, while its reply is on its way, after).
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:
            loop = asyncio.get_running_loop()
            loop_errors: list[dict[str, Any]] = []
            loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
            await abus.respond("svc.echo", lambda e: e.data)
            cancelled = 0
            for i in range(300):
                rid = uuid.uuid4()
                task = asyncio.create_task(abus.request("svc.echo", i, timeout=WAIT, id=rid))
                for _ in range(i % 9):
                    await asyncio.sleep(0)
                task.cancel()
                (outcome,) = await asyncio.gather(task, return_exceptions=True)
                if isinstance(outcome, asyncio.CancelledError):
                    cancelled += 1
                else:
                    assert isinstance(outcome, Event), outcome
                    assert (outcome.causation_id, outcome.data) == (rid, i)
                assert abus.sync.pending_requests() == 0
            assert cancelled > 0  # the early cancellations at least
            await abus.flush(WAIT)
            rid = uuid.uuid4()
            reply = await abus.request("svc.echo", "after", timeout=WAIT, id=rid)
            assert (reply.causation_id, reply.data) == (rid, "after")
            assert abus.sync.pending_requests() == 0
            assert loop_errors == []

    run(main())


# -- request_all's max_replies at its edges --------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("max_replies", [0, -1, -(2**70)])
def test_request_all_with_max_replies_below_one_fails_before_publishing(
    bus: EventBus, flavour: str, max_replies: int
) -> None:
    # requests.md: "max_replies < 1 raises ValueError", before anything is
    # published, "sync and async alike".
    asked = Collector()
    bus.respond("svc.count", asked)
    with pytest.raises(ValueError, match="max_replies"):
        _ask(bus, flavour, "request_all", "svc.count", timeout=WAIT, max_replies=max_replies)
    bus.flush(WAIT)
    assert asked.events == []
    assert bus.pending_requests() == 0


def _says(name: str, event: Event) -> str:
    if name == "error":
        raise KeyError(name)
    return name


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_request_all_with_a_huge_max_replies_returns_every_reply_at_its_timeout(
    bus: EventBus, flavour: str
) -> None:
    # requests.md: request_all returns every reply within timeout, or as soon
    # as max_replies arrived: an unreachable max_replies is only the timeout.
    for name in ("a", "b", "c", "error"):  # an error reply is gathered too
        bus.respond("quote.get", functools.partial(_says, name))
    replies = _ask(bus, flavour, "request_all", "quote.get", timeout=SHORT, max_replies=2**200)
    assert sorted(r.event_type for r in replies) == ["quote.get.error"] + ["quote.get.reply"] * 3
    assert sorted(str(r.data) for r in replies if r.event_type.endswith("reply")) == list("abc")
    assert len({r.causation_id for r in replies}) == 1
    assert bus.pending_requests() == 0


@pytest.mark.parametrize(
    ("flavour", "method"), [("sync", "request"), ("sync", "request_all"), ("async", "request")]
)
def test_a_request_through_a_node_on_a_bus_that_is_no_node_fails_typed_and_unpublished(
    bus: EventBus, flavour: str, method: str
) -> None:
    # requests.md: node="b" has the connected node b publish the request; a
    # bus without NodeConfig has none: a typed error, nothing published or waiting.
    asked = Collector()
    bus.respond("svc.far", asked)
    with pytest.raises(EventBusError):
        _ask(bus, flavour, method, "svc.far", timeout=WAIT, node="b")
    bus.flush(WAIT)
    assert asked.events == []
    assert bus.pending_requests() == 0


# -- requests made inside handlers, and their trace ----------------------------------------------


def _next(event: Event) -> int:
    return int(str(event.data)) + 1


def test_requests_nested_three_deep_in_async_responders_trace_parent_to_child() -> None:
    # requests.md: a request inside a handler inherits the handled event's
    # correlation id and takes its id as causation id; the reply is caused by
    # the request; an async def responder awaits AsyncEventBus.request on its
    # loop.  Mixed with a sync responder on its own thread at the bottom.
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:
            await abus.respond("tool.c", lambda e: {"c": e.data}, source="c", dedicated_thread=True)

            async def b(event: Event) -> Any:
                inner = await abus.request("tool.c", _next(event), source="b", timeout=WAIT)
                return {"b": inner.data}

            async def a(event: Event) -> Any:
                inner = await abus.request("tool.b", _next(event), source="a", timeout=WAIT)
                return {"a": inner.data}

            await abus.respond("tool.b", b, source="b-svc")
            await abus.respond("tool.a", a, source="a-svc")
            cid = uuid.uuid4()
            reply = await abus.request(
                "tool.a", 1, source="user", correlation_id=cid, timeout=WAIT * 2
            )
            assert (reply.data, reply.target) == ({"a": {"b": {"c": 3}}}, "user")
            await abus.flush(WAIT)
            trace = await abus.trace(cid)
            by_type = {e.event_type: e for e in trace.events}
            assert set(by_type) == {f"tool.{k}{end}" for k in "abc" for end in ("", ".reply")}
            assert all(e.correlation_id == cid for e in trace.events)
            assert by_type["tool.b"].causation_id == by_type["tool.a"].id
            assert by_type["tool.c"].causation_id == by_type["tool.b"].id
            for kind in "abc":
                assert by_type[f"tool.{kind}.reply"].causation_id == by_type[f"tool.{kind}"].id
            assert by_type["tool.c.reply"].target == "b"
            chain = trace.chain(by_type["tool.c.reply"].id)
            expected = ["tool.a", "tool.b", "tool.c", "tool.c.reply"]
            assert [e.event_type for e in chain] == expected
            assert abus.sync.pending_requests() == 0

    run(main())


# -- responders that misbehave -------------------------------------------------------------------


class _Halt(BaseException):
    """A BaseException of the user's own, neither an Exception nor a known one."""


@pytest.mark.parametrize(
    "raised",
    [GeneratorExit, KeyboardInterrupt, SystemExit, _Halt],
    ids=lambda c: c.__name__,
)
def test_a_sync_responder_raising_a_base_exception_answers_once_even_with_retries(
    bus: EventBus, raised: type[BaseException]
) -> None:
    # requests.md: when fn raises, the error reply is the answer: handled, not
    # retried (retries= notwithstanding), no dead letter; the subscription is
    # not stranded by a BaseException on its thread.
    calls: list[Event] = []

    def stop(event: Event) -> Any:
        calls.append(event)
        raise raised("stop here")

    sub = bus.respond("svc.base", stop, retries=3, retry_backoff=0)
    for _ in range(2):
        with pytest.raises(RemoteHandlerError) as caught:
            bus.request("svc.base", timeout=WAIT)
        assert caught.value.remote_type == raised.__name__
        assert caught.value.remote_message == "stop here"
    bus.flush(WAIT)
    assert len(calls) == 2
    stats = sub.statistics()
    assert (stats.dead_letters, stats.errors, stats.delivered) == (0, 0, 2)
    assert bus.dead_letters() == []
    assert bus.pending_requests() == 0


def test_a_huge_reply_on_a_persistent_bus_reaches_its_caller_whole_and_is_journaled(
    open_bus: Callable[..., EventBus],
) -> None:
    # requests.md: the reply's data is the return value, journaled; the caller
    # gets the event the journal stores.  Only a node bounds an event's size.
    bus = open_bus()
    blob = {"rows": [{"i": i, "text": "x" * 1000} for i in range(24_000)]}
    bus.respond("svc.dump", lambda e: blob if e.data == "all" else None)
    reply = bus.request("svc.dump", "all", timeout=WAIT * 3)
    assert reply.event_type == "svc.dump.reply"
    assert reply.data == blob
    stored = bus.query(EventQuery(event_types=["svc.dump.*"]))
    assert [(e.id, e.sequence) for e in stored] == [(reply.id, reply.sequence)]
    assert stored[0].data == blob
    assert bus.pending_requests() == 0
    assert bus.dead_letters() == []


def test_an_async_responder_that_catches_its_timeout_and_returns_answers_at_once() -> None:
    # architecture.md: an async handler that catches its cancellation and
    # returns counts as handled (late), counted in timeouts; requests.md: a
    # responder past its timeout does not leave the caller waiting for its own
    # timeout, and an answer is neither retried nor a dead letter.
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:
            calls: list[Event] = []

            async def swallow(event: Event) -> Any:
                calls.append(event)
                try:
                    await asyncio.Event().wait()  # never set: only the timeout ends it
                except asyncio.CancelledError:
                    return "caught it"

            sub = await abus.respond("svc.swallow", swallow, timeout=0.05, retries=2)
            try:
                outcome: object = await abus.request("svc.swallow", timeout=WAIT)
            except RemoteHandlerError as exc:
                outcome = exc
            if isinstance(outcome, RemoteHandlerError):
                assert outcome.remote_type == "TimeoutError"
            else:
                assert isinstance(outcome, Event)
                assert outcome.data == "caught it"
            await abus.flush(WAIT)
            assert len(calls) == 1
            assert (sub.statistics().timeouts, sub.statistics().dead_letters) == (1, 0)
            assert abus.sync.pending_requests() == 0

    run(main())


def test_an_async_responder_that_swallows_its_timeout_and_goes_on_still_replies_at_once() -> None:
    # requests.md: "An async def responder still running at its timeout is
    # cancelled and replies at once with an error reply of error_type
    # TimeoutError, so request raises RemoteHandlerError instead of waiting
    # for its own timeout."  One that swallows the cancellation and keeps
    # running is still running at its timeout.
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:
            go_on = asyncio.Event()

            async def stubborn(event: Event) -> Any:
                with contextlib.suppress(asyncio.CancelledError):  # swallowed
                    await asyncio.Event().wait()  # never set: only the timeout ends it
                await go_on.wait()
                return "much later"

            sub = await abus.respond("svc.stubborn", stubborn, timeout=0.05)
            try:
                outcome: object = await abus.request("svc.stubborn", timeout=WAIT)
            except (RemoteHandlerError, RequestTimeoutError) as exc:
                outcome = exc
            finally:
                go_on.set()
            await abus.flush(WAIT)
            assert sub.statistics().timeouts == 1
            assert abus.sync.pending_requests() == 0
            assert isinstance(outcome, RemoteHandlerError), outcome
            assert outcome.remote_type == "TimeoutError"

    run(main())


# -- retry backoff as the subscriptions draw it, and dead letters ---------------------------------


class _Draws:
    """Stands in for ``random`` in ``actors._core.policies``: records each range, waits 0."""

    def __init__(self) -> None:
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.ranges.append((low, high))
        return low  # retry at once: the test waits for nothing


def _failing(calls: list[int], flavour: str) -> Callable[[Event], Any]:
    def fail(event: Event) -> None:  # the async one alternates with a BaseException
        calls.append(1)
        kind = ValueError if flavour == "sync" or len(calls) % 2 else KeyboardInterrupt
        raise kind(f"attempt {len(calls)}")

    async def afail(event: Event) -> None:
        fail(event)

    return fail if flavour == "sync" else afail


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize(
    ("base", "retries", "bounds"),
    [
        (0.004, 4, [0.004, 0.008, 0.016, 0.032]),
        (20.0, 3, [20.0, 30.0, 30.0]),  # capped at 30 s
        (threading.TIMEOUT_MAX, 2, [30.0, 30.0]),  # the largest base allowed
        (0.0, 3, []),  # retry_backoff=0 retries at once: nothing is drawn
    ],
)
def test_each_retry_draws_full_jitter_up_to_its_doubling_bound_and_the_last_error_is_kept(
    monkeypatch: pytest.MonkeyPatch,
    flavour: str,
    base: float,
    retries: int,
    bounds: list[float],
) -> None:
    # architecture.md "Handler policies": before retry n the wait is drawn
    # uniformly from [0, min(30, retry_backoff * 2**(n-1))]; after the last
    # attempt the event is a dead letter recording the attempts (tries plus
    # retries) and the last attempt's error.
    draws = _Draws()
    monkeypatch.setattr(policies, "random", draws)
    calls: list[int] = []
    handler = _failing(calls, flavour)
    with EventBus(EventConfig(threads=2, handler_retries=7)) as bus:
        sub = bus.subscribe("job.*", handler, retries=retries, retry_backoff=base)
        bus.publish("job.run", "x")
        bus.flush(WAIT)
        assert len(calls) == retries + 1
        assert [low for low, _ in draws.ranges] == [0.0] * len(bounds)
        assert [high for _, high in draws.ranges] == pytest.approx(bounds)
        (letter,) = bus.dead_letters()
        assert letter.attempts == retries + 1
        assert letter.subscription_id == sub.id
        assert f"attempt {retries + 1}" in letter.error
        last = "ValueError" if flavour == "sync" or (retries + 1) % 2 else "KeyboardInterrupt"
        assert letter.error_type == last
        stats = sub.statistics()
        assert (stats.errors, stats.dead_letters, stats.in_flight) == (retries + 1, 1, 0)


# -- async requests abandoned while their publish waits for room --------------------------------


def test_async_requests_given_up_while_waiting_for_room_do_not_starve_the_bus() -> None:
    # requests.md: a publish that may wait for room "alone runs in an executor
    # thread and the request's timeout still bounds the whole call".  Requests
    # that gave up on a full BLOCK responder must not keep a healthy responder
    # from answering the next async request, nor aclose(timeout) from returning.
    release = threading.Event()

    async def main() -> None:
        abus = AsyncEventBus(EventConfig(threads=2, block_timeout=WAIT * 6))
        bus = abus.sync
        try:
            entered = threading.Event()

            def gate(event: Event) -> Any:
                entered.set()
                assert release.wait(WAIT * 6)
                return event.data

            bus.respond(
                "svc.room", gate, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
            )
            bus.respond("svc.ok", lambda e: "ok")
            assert (await abus.request("svc.ok", timeout=WAIT)).data == "ok"
            bus.publish("svc.room", 0).get(timeout=WAIT)
            assert await asyncio.to_thread(entered.wait, WAIT)
            bus.publish("svc.room", 1).get(timeout=WAIT)  # the responder's mailbox is full
            # More than the default executor's threads (at most 32) give up.
            gave_up = await asyncio.gather(
                *(abus.request("svc.room", i, timeout=0.05) for i in range(40)),
                return_exceptions=True,
            )
            assert all(isinstance(o, RequestTimeoutError) for o in gave_up), gave_up
            assert bus.pending_requests() == 0
            healthy = await abus.request("svc.ok", timeout=WAIT)
            assert healthy.data == "ok"
            await asyncio.wait_for(abus.aclose(timeout=1.0), WAIT)
            assert bus.closed
        finally:
            release.set()
            await asyncio.to_thread(bus.close, WAIT)

    try:
        run(main())
    finally:
        release.set()
