"""Request/reply and handler policies at their edges, in one process.

Each test holds the bus to a promise of ``docs/requests.md`` or of
``docs/architecture.md`` ("Handler policies", "close(timeout) keeps one
deadline"), or, where the docs are silent, to what a user of an event bus
would plainly expect (said so in a comment).

No sleeps: every wait is on a condition (``wait_for``), an event or a
future, bounded by ``WAIT``; a handler that blocks waits on a
``threading.Event`` the test sets in a ``finally``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BackpressureError,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventFilter,
    InvalidEventError,
    OverflowStrategy,
    RemoteHandlerError,
    RequestTimeoutError,
)
from tests._support import WAIT, Collector, Gate, wait_for

SHORT = 0.3
"""A request timeout meant to run out (nobody answers in time by construction)."""


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 60))


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


# -- what a responder returns ------------------------------------------------------------------


NOT_JSON: dict[str, Any] = {
    "event": Event(event_type="not.data"),
    "set": {1, 2},
    "nan": float("nan"),
    "inf": float("inf"),
    "int_keys": {1: "a"},
    "bytes": b"raw",
    "tuple": (1, 2),
    "too_deep": _deep(250),
    "huge_int": 10**5000,
    "object": object(),
}


@pytest.mark.parametrize("name", sorted(NOT_JSON))
def test_a_responder_returning_what_is_not_json_answers_with_invalid_event_error(
    bus: EventBus, name: str
) -> None:
    value = NOT_JSON[name]
    # docs/requests.md: "A return value that is not JSON becomes an error
    # reply (InvalidEventError)"; the handler counts as handled (no dead letter).
    sub = bus.respond(f"bad.{name}", lambda e: value)
    with pytest.raises(RemoteHandlerError) as caught:
        bus.request(f"bad.{name}", timeout=WAIT)
    assert caught.value.remote_type == "InvalidEventError"
    assert caught.value.reply.event_type == f"bad.{name}.error"
    bus.flush(WAIT)
    assert bus.dead_letters() == []
    assert sub.statistics().dead_letters == 0
    assert bus.pending_requests() == 0


def test_a_responder_returning_none_replies_with_null_data(bus: EventBus) -> None:
    # docs/requests.md: the reply's data is "the responder's return value".
    bus.respond("svc.none", lambda e: None)
    reply = bus.request("svc.none", timeout=WAIT)
    assert reply.event_type == "svc.none.reply"
    assert reply.data is None


class _BrokenList(list[Any]):
    """A list whose iteration fails (say, a lazy collection whose session closed)."""

    def __iter__(self) -> Any:
        raise RuntimeError("the collection cannot be read any more")


# A responder's failure is its answer, whatever fails: a return value whose
# check raises something other than ValueError (a list subclass whose __iter__
# raises, as a lazy collection whose session closed) still gets an error reply,
# not a dead letter and a caller waiting out its timeout.
def test_a_return_value_that_breaks_when_checked_still_gets_an_error_reply(
    bus: EventBus,
) -> None:
    bus.respond("svc.lazy", lambda e: _BrokenList([1, 2]))
    try:
        outcome: object = bus.request("svc.lazy", timeout=WAIT)
    except (RemoteHandlerError, RequestTimeoutError) as exc:
        outcome = exc
    bus.flush(WAIT)
    assert isinstance(outcome, RemoteHandlerError), (
        f"no error reply: {outcome!r}; dead letters {bus.dead_letters()}"
    )
    assert bus.dead_letters() == []


class _StrStops(Exception):
    """An exception whose message cannot be built: its __str__ raises a BaseException."""

    def __str__(self) -> str:
        raise SystemExit("str() of this exception stops")


# The error reply always goes out, even when str(exc) raises a BaseException
# that is not an Exception (SystemExit, KeyboardInterrupt).
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_exception_whose_str_raises_a_base_exception_still_answers(
    bus: EventBus, flavour: str
) -> None:
    def fail(event: Event) -> Any:
        raise _StrStops

    async def afail(event: Event) -> Any:
        raise _StrStops

    bus.respond("svc.mute", fail if flavour == "sync" else afail)
    try:
        outcome: object = bus.request("svc.mute", timeout=WAIT)
    except (RemoteHandlerError, RequestTimeoutError) as exc:
        outcome = exc
    bus.flush(WAIT)
    assert isinstance(outcome, RemoteHandlerError), (
        f"no error reply: {outcome!r}; dead letters {bus.dead_letters()}"
    )
    assert outcome.remote_type == "_StrStops"
    assert "could not be built" in outcome.remote_message
    assert bus.dead_letters() == []


def test_request_data_over_the_depth_bound_fails_before_anything_is_published(
    bus: EventBus,
) -> None:
    # docs/requests.md: "Bad input fails before anything is published";
    # docs/architecture.md: data nests at most 200 lists and dicts deep.
    asked = Collector()
    bus.respond("svc.deep", asked)
    with pytest.raises(InvalidEventError):
        bus.request("svc.deep", _deep(250), timeout=WAIT)
    with pytest.raises(InvalidEventError):
        bus.request_all("svc.deep", _deep(250), timeout=WAIT)
    bus.flush(WAIT)
    assert asked.events == []
    assert bus.pending_requests() == 0


# -- async responders raising BaseExceptions ----------------------------------------------------


@pytest.mark.parametrize(
    "raised",
    [
        asyncio.CancelledError("raised by the responder itself"),
        KeyboardInterrupt("stop"),
        SystemExit(3),
        GeneratorExit(),
    ],
    ids=["CancelledError", "KeyboardInterrupt", "SystemExit", "GeneratorExit"],
)
@pytest.mark.parametrize("timeout", [None, WAIT], ids=["no-timeout", "timeout"])
def test_an_async_responder_raising_a_base_exception_answers_with_an_error(
    raised: BaseException, timeout: float | None
) -> None:
    # docs/requests.md: whatever fn raises is its answer; architecture.md: a
    # CancelledError escaping an async def handler (not its batch being
    # cancelled) is the handler's failure.  Not retried, no dead letter.
    # With a timeout fn runs as a task of its own, whose KeyboardInterrupt
    # or SystemExit asyncio raised out of the caller's loop (asyncio.run).
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:
            calls: list[Event] = []

            async def responder(event: Event) -> Any:
                calls.append(event)
                raise raised

            sub = await abus.respond(
                "svc.base", responder, retries=2, retry_backoff=0, timeout=timeout
            )
            with pytest.raises(RemoteHandlerError) as caught:
                await abus.request("svc.base", timeout=WAIT)
            assert caught.value.remote_type == type(raised).__name__
            # The responder's subscription is not stranded: it answers again.
            with pytest.raises(RemoteHandlerError):
                await abus.request("svc.base", timeout=WAIT)
            await abus.flush(WAIT)
            assert len(calls) == 2
            assert abus.dead_letters() == []
            assert sub.statistics().dead_letters == 0
            assert abus.sync.pending_requests() == 0

    run(main())


def test_an_async_responder_cancelled_at_its_timeout_is_not_retried() -> None:
    # docs/requests.md: an async def responder past its timeout replies a
    # TimeoutError at once; "like any error reply, it is neither retried nor
    # a dead letter" -- even with retries= on the responder.
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:
            calls: list[Event] = []
            never = asyncio.Event()

            async def hang(event: Event) -> Any:
                calls.append(event)
                await never.wait()

            sub = await abus.respond("svc.hang", hang, timeout=0.05, retries=3, retry_backoff=0)
            with pytest.raises(RemoteHandlerError) as caught:
                await abus.request("svc.hang", timeout=WAIT)
            assert caught.value.remote_type == "TimeoutError"
            await abus.flush(WAIT)
            assert len(calls) == 1
            stats = sub.statistics()
            assert stats.timeouts == 1
            assert stats.dead_letters == 0
            assert abus.dead_letters() == []
            assert abus.sync.pending_requests() == 0

    run(main())


# -- a synchronous responder that does not return -----------------------------------------------


def test_a_late_reply_from_a_left_behind_call_reaches_no_later_request() -> None:
    # docs/requests.md: with dedicated_thread=True the subscription answers the
    # next requests past a stuck call; "A reply that arrives after its caller
    # gave up finds nobody and is only an event"; each caller removes its own
    # entry.  The late reply must not be handed to the next request.
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2))
    try:
        entered = threading.Event()

        def responder(event: Event) -> Any:
            if event.data == "stuck":
                entered.set()
                assert release.wait(WAIT)
            return {"answer": event.data}

        sub = bus.respond("svc.stuck", responder, timeout=0.05, dedicated_thread=True)
        replies = Collector()
        bus.subscribe("svc.stuck.reply", replies)
        first = uuid.uuid4()
        with pytest.raises(RequestTimeoutError):
            bus.request("svc.stuck", "stuck", timeout=SHORT, id=first)
        assert entered.is_set()
        assert bus.pending_requests() == 0
        second = uuid.uuid4()
        reply = bus.request("svc.stuck", "next", timeout=WAIT, id=second)
        assert reply.causation_id == second
        assert reply.data == {"answer": "next"}
        release.set()
        # The late reply is published (an ordinary event), to nobody.
        assert wait_for(lambda: any(e.causation_id == first for e in replies.events))
        third = uuid.uuid4()
        reply = bus.request("svc.stuck", "third", timeout=WAIT, id=third)
        assert reply.causation_id == third
        assert reply.data == {"answer": "third"}
        bus.flush(WAIT)
        assert bus.pending_requests() == 0
        assert sub.statistics().timeouts == 1
        assert bus.dead_letters() == []
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_request_all_gathers_the_late_reply_of_a_left_behind_call() -> None:
    # docs/requests.md: "the late reply still reaches a caller that is still
    # waiting" -- a request_all gathering replies is such a caller.
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2))
    try:
        entered = threading.Event()

        def stuck(event: Event) -> Any:
            entered.set()
            assert release.wait(WAIT)
            return "late"

        bus.respond("quote.get", lambda e: "fast")
        bus.respond("quote.get", stuck, timeout=0.05, dedicated_thread=True)
        seen = Collector()
        bus.subscribe("quote.get.reply", seen)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            gathering = pool.submit(bus.request_all, "quote.get", timeout=WAIT * 3, max_replies=2)
            assert entered.wait(WAIT)
            assert wait_for(lambda: seen.data == ["fast"])
            assert not gathering.done()
            release.set()
            replies = gathering.result(timeout=WAIT)
        assert sorted(r.data for r in replies) == ["fast", "late"]
        assert len({r.causation_id for r in replies}) == 1
        assert bus.pending_requests() == 0
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_a_pool_responder_past_its_timeout_answers_late_and_is_not_retried() -> None:
    # architecture.md: a synchronous handler past its timeout on the shared
    # pool is counted once in `timeouts` and waited for; "when it returns, its
    # outcome counts as usual".  requests.md: "its reply is published
    # whenever fn returns" and reaches a caller still waiting.
    release = threading.Event()
    bus = EventBus(EventConfig(threads=1))
    try:
        entered = threading.Event()
        calls: list[Any] = []

        def slow(event: Event) -> Any:
            calls.append(event.data)
            if event.data == "slow":
                entered.set()
                assert release.wait(WAIT)
            return event.data

        sub = bus.respond("svc.slow", slow, timeout=0.05, retries=2, retry_backoff=0)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow_reply = pool.submit(bus.request, "svc.slow", "slow", timeout=WAIT * 3)
            assert entered.wait(WAIT)
            assert wait_for(lambda: sub.statistics().timeouts == 1)
            fast_reply = pool.submit(bus.request, "svc.slow", "fast", timeout=WAIT * 3)
            release.set()
            assert slow_reply.result(timeout=WAIT).data == "slow"
            assert fast_reply.result(timeout=WAIT).data == "fast"
        bus.flush(WAIT)
        assert calls == ["slow", "fast"]  # nothing retried
        assert sub.statistics().timeouts == 1
        assert bus.dead_letters() == []
        assert bus.pending_requests() == 0
    finally:
        release.set()
        bus.close(timeout=WAIT)


# -- replies racing timeouts, many callers ------------------------------------------------------


def test_replies_racing_tiny_timeouts_never_reach_the_wrong_caller(bus: EventBus) -> None:
    # requests.md: each caller removes its own entry whatever happens; a reply
    # finds only the caller of its own request.  Timeouts of 0 to 2 ms race
    # the replies; every outcome is either that caller's reply or a timeout.
    bus.respond("svc.echo", lambda e: e.data)
    wrong: list[tuple[Any, Any]] = []
    outcomes = {"reply": 0, "timeout": 0}
    lock = threading.Lock()

    def caller(k: int) -> None:
        for i in range(150):
            token = f"{k}-{i}"
            rid = uuid.uuid4()
            try:
                reply = bus.request("svc.echo", token, timeout=0.0005 * (i % 5), id=rid)
            except RequestTimeoutError:
                with lock:
                    outcomes["timeout"] += 1
                continue
            with lock:
                outcomes["reply"] += 1
                if reply.data != token or reply.causation_id != rid:
                    wrong.append((token, reply.data))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 6)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []
    assert outcomes["reply"] + outcomes["timeout"] == 900
    bus.flush(WAIT)
    assert bus.pending_requests() == 0
    # Late replies are only events; the bus still answers at once afterwards.
    assert bus.request("svc.echo", "after", timeout=WAIT).data == "after"


def test_sync_threads_and_several_event_loops_share_one_table_without_mixups() -> None:
    # requests.md: one pending table per bus, fed for sync and async callers
    # alike; no reply delivered to the wrong caller; the table empties.
    with EventBus(EventConfig(threads=2)) as bus:
        bus.respond("svc.echo", lambda e: e.data)
        wrong: list[Any] = []

        def sync_caller(k: int) -> None:
            for i in range(100):
                token = f"s{k}-{i}"
                if bus.request("svc.echo", token, timeout=WAIT).data != token:
                    wrong.append(token)

        def loop_caller(k: int) -> None:
            async def main() -> None:
                abus = AsyncEventBus(bus=bus)
                tokens = [f"a{k}-{i}" for i in range(200)]
                replies = await asyncio.gather(
                    *(abus.request("svc.echo", t, timeout=WAIT) for t in tokens)
                )
                wrong.extend(t for t, r in zip(tokens, replies, strict=True) if r.data != t)
                gathered = await abus.request_all("svc.echo", k, timeout=WAIT, max_replies=1)
                wrong.extend(r.data for r in gathered if r.data != k)

            run(main())

        threads = [threading.Thread(target=sync_caller, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=loop_caller, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 6)
        assert not any(t.is_alive() for t in threads)
        assert wrong == []
        assert bus.pending_requests() == 0


def test_request_all_stops_at_max_replies_and_extra_replies_go_nowhere(bus: EventBus) -> None:
    # requests.md: request_all "returns as soon as max_replies arrived"; the
    # other replies are ordinary events that find nobody.
    for n in range(5):
        bus.respond("quote.many", lambda e, n=n: n)
    all_replies = Collector()
    bus.subscribe("quote.many.reply", all_replies)
    ids = []
    for _ in range(30):
        rid = uuid.uuid4()
        ids.append(rid)
        replies = bus.request_all("quote.many", timeout=WAIT, max_replies=2, id=rid)
        assert len(replies) == 2
        assert {r.causation_id for r in replies} == {rid}
        assert len({r.data for r in replies}) == 2
    bus.flush(WAIT)
    assert len(all_replies.events) == 150  # every responder answered every request
    assert bus.pending_requests() == 0
    # A single request afterwards gets its own reply, not a leftover.
    rid = uuid.uuid4()
    assert bus.request("quote.many", timeout=WAIT, id=rid).causation_id == rid


class _RefusalSeen(logging.Handler):
    """Sets ``seen`` once ``actors.requests`` logs a refused reply (its documented WARNING)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "was refused" in record.getMessage():
            self.seen.set()


# A reply the bus refuses (a full REJECT subscription on the replies) fails a
# waiting `request` at once, while a `request_all`, whatever its max_replies,
# goes on gathering the other replies (and returns [] if none comes).
@pytest.mark.parametrize("responders", ["one", "two"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_request_all_with_max_replies_one_goes_on_gathering_past_a_refused_reply(
    flavour: str, responders: str
) -> None:
    release = threading.Event()
    refusals = _RefusalSeen()
    logging.getLogger("actors.requests").addHandler(refusals)
    bus = EventBus(EventConfig(threads=2))
    try:
        entered = threading.Event()

        def audit(event: Event) -> None:
            entered.set()
            assert release.wait(WAIT)

        # A full REJECT subscription that wants only responder "a"'s replies.
        bus.subscribe(
            "quote.one.reply",
            audit,
            filter=EventFilter(source="a"),
            capacity=1,
            overflow=OverflowStrategy.REJECT,
            dedicated_thread=True,
        )
        bus.publish("quote.one.reply", 0, source="a").get(timeout=WAIT)
        assert entered.wait(WAIT)
        bus.publish("quote.one.reply", 1, source="a").get(timeout=WAIT)  # full now
        bus.respond("quote.one", lambda e: "from a", source="a")
        if responders == "two":

            def after_the_refusal(event: Event) -> str:
                # Answers once a's reply was refused, so the refusal comes first.
                assert refusals.seen.wait(WAIT)
                return "from b"

            bus.respond("quote.one", after_the_refusal, source="b", dedicated_thread=True)
        timeout = WAIT if responders == "two" else SHORT

        def gather() -> list[Event]:
            if flavour == "sync":
                return bus.request_all("quote.one", timeout=timeout, max_replies=1)

            async def main() -> list[Event]:
                return await AsyncEventBus(bus=bus).request_all(
                    "quote.one", timeout=timeout, max_replies=1
                )

            return asyncio.run(asyncio.wait_for(main(), 60))

        try:
            outcome: object = [r.data for r in gather()]
        except BackpressureError as exc:
            outcome = exc
        assert refusals.seen.is_set()
        assert outcome == (["from b"] if responders == "two" else [])
        release.set()  # the flush waits for the audit subscription too
        bus.flush(WAIT)
        assert bus.pending_requests() == 0
    finally:
        release.set()
        refusals.seen.set()
        logging.getLogger("actors.requests").removeHandler(refusals)
        bus.close(timeout=WAIT)


# -- nested requests and traces ----------------------------------------------------------------


def test_a_request_made_inside_a_responder_on_a_one_thread_pool_answers_and_traces() -> None:
    # requests.md: a request inside a handler takes the handled event as its
    # cause, the reply is caused by the request; architecture.md: the pool
    # adds a thread for a blocked handler, so the inner responder runs.
    with EventBus(EventConfig(threads=1)) as bus:
        bus.respond("tool.inner", lambda e: {"inner": e.data}, source="inner")

        def outer(event: Event) -> Any:
            return {"outer": bus.request("tool.inner", 7, timeout=WAIT, source="outer").data}

        bus.respond("tool.outer", outer, source="outer-svc")
        cid = uuid.uuid4()
        reply = bus.request("tool.outer", timeout=WAIT * 2, correlation_id=cid, source="user")
        assert reply.data == {"outer": {"inner": 7}}
        assert reply.target == "user"
        bus.flush(WAIT)
        trace = bus.trace(cid)
        by_type = {e.event_type: e for e in trace.events}
        assert set(by_type) == {"tool.outer", "tool.inner", "tool.inner.reply", "tool.outer.reply"}
        assert by_type["tool.inner"].causation_id == by_type["tool.outer"].id
        assert by_type["tool.inner.reply"].causation_id == by_type["tool.inner"].id
        assert by_type["tool.inner.reply"].target == "outer"
        assert by_type["tool.outer.reply"].causation_id == by_type["tool.outer"].id
        assert [e.event_type for e in trace.chain(by_type["tool.inner.reply"].id)] == [
            "tool.outer",
            "tool.inner",
            "tool.inner.reply",
        ]
        assert bus.pending_requests() == 0


def test_a_request_made_inside_a_pool_handler_with_one_thread_does_not_deadlock() -> None:
    # requests.md: a synchronous handler that waits holds a dispatcher
    # thread; architecture.md: the watchdog adds a thread for it (up to
    # max_threads, 64), so the responder still runs.
    with EventBus(EventConfig(threads=1)) as bus:
        bus.respond("tool.q", lambda e: e.data * 2)
        answers: list[Any] = []
        done = threading.Event()

        def handler(event: Event) -> None:
            answers.append(bus.request("tool.q", event.data, timeout=WAIT).data)
            if len(answers) == 3:
                done.set()

        bus.subscribe("job.go", handler)
        for i in range(3):
            bus.publish("job.go", i)
        assert done.wait(WAIT * 2)
        assert answers == [0, 2, 4]
        assert bus.pending_requests() == 0


def test_a_nested_request_with_no_thread_to_spare_ends_at_its_timeout_not_in_a_hang() -> None:
    # requests.md: "with every dispatcher thread waiting, nothing runs the
    # responder (until the timeout)": with max_threads=1 the inner request
    # times out, the outer responder answers that error, and the bus recovers.
    with EventBus(EventConfig(threads=1, max_threads=1)) as bus:
        bus.respond("tool.inner", lambda e: "inner")
        bus.respond("tool.outer", lambda e: bus.request("tool.inner", timeout=SHORT).data)
        with pytest.raises(RemoteHandlerError) as caught:
            bus.request("tool.outer", timeout=WAIT * 2)
        assert caught.value.remote_type == "RequestTimeoutError"
        assert bus.request("tool.inner", timeout=WAIT).data == "inner"
        bus.flush(WAIT)
        assert bus.pending_requests() == 0


def test_a_self_recursive_dedicated_responder_moves_on_past_its_own_waiting_call() -> None:
    # architecture.md: with dedicated_thread=True and timeout= the
    # subscription leaves a call past its timeout behind and runs the next
    # events (up to 16 left behind); requests.md: the late reply still reaches
    # its waiting caller.  So a responder that asks itself recursively works.
    with EventBus(EventConfig(threads=2)) as bus:

        def factorial(event: Event) -> int:
            n = int(event.data)
            if n <= 1:
                return 1
            return n * int(bus.request("math.fact", n - 1, timeout=WAIT).data)

        sub = bus.respond("math.fact", factorial, timeout=0.05, dedicated_thread=True)
        assert bus.request("math.fact", 5, timeout=WAIT * 2).data == 120
        bus.flush(WAIT)
        assert sub.statistics().timeouts >= 1
        assert bus.pending_requests() == 0
        assert bus.dead_letters() == []


# -- requests and close ---------------------------------------------------------------------------


def test_requests_from_many_threads_across_close_end_with_bus_closed_error() -> None:
    # requests.md: close() fails every request still waiting with
    # BusClosedError; architecture.md: publishes overlapping close are
    # refused with BusClosedError.  No caller may hang or see another error.
    bus = EventBus(EventConfig(threads=2))
    bus.respond("svc.echo", lambda e: e.data)
    outcomes: dict[int, BaseException] = {}
    answered: list[int] = []

    def hammer(k: int) -> None:
        n = 0
        while True:
            try:
                if bus.request("svc.echo", n, timeout=WAIT).data != n:
                    raise AssertionError("wrong reply")
            except BaseException as exc:
                outcomes[k] = exc
                return
            answered.append(k)
            n += 1

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(set(answered)) == 6)  # every caller is under way
    bus.close(timeout=WAIT)
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(o, BusClosedError) for o in outcomes.values()), outcomes
    assert bus.pending_requests() == 0


def test_a_responder_still_running_at_close_gives_its_caller_bus_closed_error() -> None:
    # requests.md: "a responder still running when close() begins cannot
    # publish its reply: its caller gets BusClosedError" -- also when close
    # gives up on it (close(timeout) with the responder blocked).
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2))
    try:
        entered = threading.Event()

        def stuck(event: Event) -> Any:
            entered.set()
            assert release.wait(WAIT)
            return "too late"

        bus.respond("svc.stuck", stuck)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asking = pool.submit(bus.request, "svc.stuck", timeout=None)
            assert entered.wait(WAIT)
            bus.close(timeout=SHORT)
            with pytest.raises(BusClosedError):
                asking.result(timeout=WAIT)
        assert bus.pending_requests() == 0
    finally:
        release.set()


@pytest.mark.parametrize("answers", [0, 3])
@pytest.mark.parametrize("gather", [False, True])
def test_a_handler_waiting_without_a_timeout_for_a_reply_nobody_sends_is_ended_by_close(
    gather: bool, answers: int
) -> None:
    # requests.md: once the replies routed before close() are delivered, a
    # handler's request still waiting gets BusClosedError, and its
    # request_all the replies it has (BusClosedError without any).  Before,
    # close()'s flush waited for the handler, which waited for a reply no one
    # would send: close() without a timeout never returned.
    bus = EventBus(EventConfig(threads=2))
    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
    asking = threading.Event()
    replies = Collector()
    bus.subscribe("svc.ask.reply", replies)
    for k in range(answers):
        bus.respond("svc.ask", lambda e, k=k: f"r{k}")

    def worker(event: Event) -> None:
        asking.set()
        try:
            if gather:
                outcome.set_result(bus.request_all("svc.ask", timeout=None))
            else:
                outcome.set_result(bus.request("svc.nobody", timeout=None))
        except BaseException as exc:  # the outcome is what is checked
            outcome.set_result(exc)

    bus.subscribe("task.assigned", worker, dedicated_thread=True)
    bus.publish("task.assigned")
    assert asking.wait(WAIT)
    assert wait_for(lambda: bus.pending_requests() == 1)
    if gather:  # every reply there is was handed over
        assert wait_for(lambda: len(replies.events) == answers)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        closing = pool.submit(bus.close)  # no timeout
        got = outcome.result(timeout=WAIT)
        if gather and answers:
            assert sorted(e.data for e in got) == [f"r{k}" for k in range(answers)]
        else:
            assert isinstance(got, BusClosedError)
        assert closing.result(timeout=WAIT) == ()
    assert bus.pending_requests() == 0


def test_a_thread_a_handler_began_is_no_handler_of_the_bus_for_its_requests() -> None:
    # Only a handler running now is ended early by close: a thread it began
    # with a copy of its context waits as any outside caller does.
    with EventBus(EventConfig(threads=2)) as bus:
        marks: list[bool] = []
        done = threading.Event()

        def handler(event: Event) -> None:
            marks.append(bus.request_client.inside())
            thread = threading.Thread(
                target=contextvars.copy_context().run,
                args=(lambda: marks.append(bus.request_client.inside()),),
            )
            thread.start()
            thread.join()
            done.set()

        bus.subscribe("task.assigned", handler)
        bus.publish("task.assigned")
        assert done.wait(WAIT)
        assert marks == [True, False]
        assert bus.request_client.inside() is False


def test_a_reply_routed_before_close_still_reaches_the_handler_waiting_for_it() -> None:
    # The early failure waits for the reply routes: a reply routed before
    # close() began, still queued in its reply route, reaches the handler.
    bus = EventBus(EventConfig(threads=1))
    stall = Gate()  # holds the pool's one thread, so the reply route waits
    bus.subscribe("stall.*", stall)
    seen: concurrent.futures.Future[Event] = concurrent.futures.Future()
    got: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def worker(event: Event) -> None:
        try:
            got.set_result(bus.request("tool.find", timeout=None).data)
        except BaseException as exc:  # the outcome is what is checked
            got.set_result(exc)

    bus.subscribe("tool.find", seen.set_result, dedicated_thread=True)
    bus.subscribe("task.assigned", worker, dedicated_thread=True)
    bus.publish("stall.now")
    assert stall.entered.wait(WAIT)
    bus.publish("task.assigned")
    request = seen.result(timeout=WAIT)
    reply = Event(
        event_type="tool.find.reply",
        data="found",
        causation_id=request.id,
        correlation_id=request.correlation_id,
        target=request.source,
    )
    bus.publish(reply).get(timeout=WAIT)  # routed: queued in the stalled reply route
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        closing = pool.submit(bus.close)
        assert wait_for(lambda: bus.closed)
        stall.release.set()
        assert got.result(timeout=WAIT) == "found"
        assert closing.result(timeout=WAIT) == ()
    assert bus.pending_requests() == 0


@pytest.mark.parametrize("gather", [False, True])
def test_a_handler_waiting_on_a_request_when_close_begins_gets_bus_closed_error(
    gather: bool,
) -> None:
    # requests.md: a responder still running when close() begins cannot
    # publish its reply: its caller gets BusClosedError.  Regression: when
    # that caller was itself a handler, close()'s flush waited for it while
    # it waited for a reply that close() refused: close() hung (timeout=None)
    # or the caller got RequestTimeoutError at its own timeout.
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2))
    outcome: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()
    try:
        entered = threading.Event()

        def tool(event: Event) -> Any:
            entered.set()
            assert release.wait(WAIT)
            return "too late"

        def worker(event: Event) -> None:
            try:
                if gather:
                    bus.request_all("tool.search", timeout=WAIT * 3)
                else:
                    bus.request("tool.search", timeout=WAIT * 3)
            except BaseException as exc:  # the outcome is what is checked
                outcome.set_result(exc)
            else:
                outcome.set_result(None)

        bus.respond("tool.search", tool, dedicated_thread=True)
        bus.subscribe("task.assigned", worker, dedicated_thread=True)
        bus.publish("task.assigned")
        assert entered.wait(WAIT)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            closing = pool.submit(bus.close)
            assert wait_for(lambda: bus.closed)
            release.set()
            assert isinstance(outcome.result(timeout=WAIT), BusClosedError)
            assert closing.result(timeout=WAIT) == ()
        assert bus.pending_requests() == 0
    finally:
        release.set()


def test_a_responder_whose_reply_the_closing_bus_refuses_is_not_run_again() -> None:
    # A closed bus stays closed: a failure to publish because of it is not
    # retried (regression: a responder with retries=3 ran four times during
    # close(), each run's reply refused).
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2))
    calls: list[int] = []
    try:
        entered = threading.Event()

        def tool(event: Event) -> Any:
            calls.append(1)
            entered.set()
            assert release.wait(WAIT)
            return "too late"

        sub = bus.respond("tool.run", tool, retries=3, retry_backoff=0)
        bus.publish("tool.run")
        assert entered.wait(WAIT)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            closing = pool.submit(bus.close)
            assert wait_for(lambda: bus.closed)
            release.set()
            closing.result(timeout=WAIT)
        assert calls == [1]
        assert sub.statistics().dead_letters == 1
    finally:
        release.set()


def test_a_responder_that_closes_the_bus_fails_its_caller_with_bus_closed_error() -> None:
    # architecture.md: close() inside a handler stops the actors without
    # waiting; requests.md: the caller of a request the closing bus cannot
    # answer gets BusClosedError, not a timeout.
    bus = EventBus(EventConfig(threads=2))
    try:
        bus.respond("svc.close", lambda e: bus.close(timeout=WAIT) and "closed")
        with pytest.raises(BusClosedError):
            bus.request("svc.close", timeout=WAIT * 3)
        assert bus.pending_requests() == 0
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_request_waiting_for_room_when_close_begins_ends_with_bus_closed_error(
    flavour: str,
) -> None:
    # architecture.md: "A publish waiting for room in a full BLOCK
    # subscription when close begins is refused once it wakes"; requests.md:
    # close fails waiting requests with BusClosedError.  It must not hang
    # until its (long) timeout nor end with another error.
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2, block_timeout=WAIT * 6))
    try:
        entered = threading.Event()

        def gate(event: Event) -> Any:
            entered.set()
            assert release.wait(WAIT * 3)
            return "r"

        bus.respond(
            "svc.b", gate, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
        )
        bus.publish("svc.b", 0).get(timeout=WAIT)
        assert entered.wait(WAIT)
        bus.publish("svc.b", 1).get(timeout=WAIT)  # the responder's mailbox is full

        def ask() -> Any:
            if flavour == "sync":
                return bus.request("svc.b", 2, timeout=WAIT * 6)

            async def main() -> Any:
                return await AsyncEventBus(bus=bus).request("svc.b", 2, timeout=WAIT * 6)

            return asyncio.run(main())

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asking = pool.submit(ask)
            assert wait_for(lambda: bus.pending_requests() == 1)
            bus.close(timeout=SHORT)
            with pytest.raises(BusClosedError):
                asking.result(timeout=WAIT)
        assert bus.pending_requests() == 0
    finally:
        release.set()


def test_awaiting_requests_fail_with_bus_closed_error_when_the_bus_closes() -> None:
    # requests.md: close() fails every request still waiting (async ones too).
    async def main() -> None:
        abus = AsyncEventBus(EventConfig(threads=2))
        asked = threading.Event()
        abus.sync.subscribe("svc.silent", lambda e: asked.set())
        tasks = [asyncio.create_task(abus.request("svc.silent", timeout=None)) for _ in range(5)]
        tasks.append(asyncio.create_task(abus.request_all("svc.silent", timeout=WAIT * 6)))
        assert await asyncio.to_thread(asked.wait, WAIT)
        assert await asyncio.to_thread(wait_for, lambda: abus.sync.pending_requests() == 6)
        await abus.aclose(timeout=WAIT)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
        assert all(isinstance(o, BusClosedError) for o in outcomes), outcomes
        assert abus.sync.pending_requests() == 0

    run(main())


# -- a responder that cannot take the request -----------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_request_to_a_full_reject_responder_is_refused_at_once(flavour: str) -> None:
    # requests.md: request "also raises what publish raises"; a full REJECT
    # mailbox refuses the event (BackpressureError), so the caller learns it
    # at once instead of waiting out its timeout (RequestTimeoutError).
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2))
    try:
        entered = threading.Event()

        def slow(event: Event) -> Any:
            entered.set()
            assert release.wait(WAIT * 3)
            return event.data

        sub = bus.respond(
            "svc.full", slow, capacity=1, overflow=OverflowStrategy.REJECT, dedicated_thread=True
        )
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            first = pool.submit(bus.request, "svc.full", 1, timeout=WAIT * 3)
            assert entered.wait(WAIT)
            second = pool.submit(bus.request, "svc.full", 2, timeout=WAIT * 3)
            assert wait_for(lambda: sub.statistics().queued == 1)

            def ask() -> Any:
                if flavour == "sync":
                    return bus.request("svc.full", 3, timeout=WAIT * 6)

                async def main() -> Any:
                    return await AsyncEventBus(bus=bus).request("svc.full", 3, timeout=WAIT * 6)

                return asyncio.run(main())

            third = pool.submit(ask) if flavour == "async" else None
            if third is None:
                with pytest.raises(BackpressureError):
                    ask()
            else:
                with pytest.raises(BackpressureError):
                    third.result(timeout=WAIT)
            assert bus.pending_requests() == 2
            release.set()
            assert first.result(timeout=WAIT).data == 1
            assert second.result(timeout=WAIT).data == 2
        assert bus.pending_requests() == 0
    finally:
        release.set()
        bus.close(timeout=WAIT)


def test_a_responder_whose_filter_refuses_the_request_leaves_the_caller_to_time_out(
    bus: EventBus,
) -> None:
    # requests.md: respond takes every option of subscribe (filter= too); a
    # request the filter refuses is not answered: RequestTimeoutError, and
    # nothing stays waiting.  request_all gets [] (it never raises for silence).
    asked = Collector()

    def answer(event: Event) -> Any:
        asked(event)
        return "yes"

    bus.respond("svc.vip", answer, filter=EventFilter(source="vip"))
    with pytest.raises(RequestTimeoutError):
        bus.request("svc.vip", timeout=SHORT, source="nobody")
    assert bus.request_all("svc.vip", timeout=SHORT, source="nobody") == []
    assert bus.request("svc.vip", timeout=WAIT, source="vip").data == "yes"
    assert [e.source for e in asked.events] == ["vip"]
    assert bus.pending_requests() == 0


def test_a_reply_publish_that_publish_refuses_is_retried_then_dead_lettered() -> None:
    # requests.md: "A failure to publish the reply that publish raises itself
    # (no room within block_timeout, ...) fails the handler, so retries,
    # retry_backoff and dead letters apply to it."
    release = threading.Event()
    bus = EventBus(EventConfig(threads=2, block_timeout=0.05))
    try:
        entered = threading.Event()

        def audit(event: Event) -> None:
            entered.set()
            assert release.wait(WAIT * 3)

        bus.subscribe(
            "svc.x.reply", audit, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
        )
        bus.publish("svc.x.reply", 0).get(timeout=WAIT)
        assert entered.wait(WAIT)
        bus.publish("svc.x.reply", 1).get(timeout=WAIT)  # no room for replies now
        calls: list[Event] = []
        sub = bus.respond("svc.x", lambda e: calls.append(e) or "v", retries=2, retry_backoff=0.01)
        with pytest.raises((RequestTimeoutError, BackpressureError)):
            bus.request("svc.x", timeout=SHORT)
        assert wait_for(lambda: len(bus.dead_letters()) == 1)
        (letter,) = bus.dead_letters()
        assert letter.event.event_type == "svc.x"
        assert letter.attempts == 3
        assert "BackpressureError" in letter.error
        assert len(calls) == 3
        assert sub.statistics().dead_letters == 1
        assert bus.pending_requests() == 0
    finally:
        release.set()
        bus.close(timeout=WAIT)


# -- cancelling an awaiting request -------------------------------------------------------------


def test_cancelling_an_async_request_while_its_publish_waits_for_room() -> None:
    # requests.md: the publish that waits for room runs in an executor; "such
    # a request may still be published once room appears, and its reply is
    # then only an event".  Cancelling must leave nothing waiting, and the
    # late reply must not reach the next request.
    release = threading.Event()

    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2, block_timeout=WAIT)) as abus:
            bus = abus.sync
            entered = threading.Event()

            def gate(event: Event) -> Any:
                entered.set()
                assert release.wait(WAIT * 3)
                return event.data

            bus.respond(
                "svc.room", gate, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True
            )
            bus.publish("svc.room", 0).get(timeout=WAIT)
            assert await asyncio.to_thread(entered.wait, WAIT)
            bus.publish("svc.room", 1).get(timeout=WAIT)  # full
            replies = Collector()
            bus.subscribe("svc.room.reply", replies)
            task = asyncio.create_task(abus.request("svc.room", "cancelled", timeout=WAIT * 3))
            assert await asyncio.to_thread(wait_for, lambda: bus.pending_requests() == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert bus.pending_requests() == 0
            release.set()
            rid = uuid.uuid4()
            reply = await abus.request("svc.room", "next", timeout=WAIT, id=rid)
            assert reply.causation_id == rid
            assert reply.data == "next"
            await abus.flush(WAIT)
            assert bus.pending_requests() == 0
            # Whatever became of the cancelled request, nothing failed.
            assert abus.dead_letters() == []
            assert set(replies.data) <= {0, 1, "cancelled", "next"}

    try:
        run(main())
    finally:
        release.set()


# -- handler policies on respond: checks and the backoff's bounds --------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"retry_backoff": -1}, ValueError),
        ({"retry_backoff": float("nan")}, ValueError),
        ({"retry_backoff": float("inf")}, ValueError),
        ({"retry_backoff": True}, TypeError),
        ({"timeout": 0}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"retries": -1}, ValueError),
        ({"retries": True}, TypeError),
    ],
)
def test_respond_checks_its_handler_policies_before_subscribing(
    bus: EventBus, options: dict[str, Any], error: type[Exception]
) -> None:
    # architecture.md "Handler policies": respond takes them, "checked like
    # every argument before anything changes (TypeError or ValueError naming
    # timeout, retry_backoff or retries)".
    before = len(bus.subscriptions())
    with pytest.raises(error, match=next(iter(options))):
        bus.respond("svc.policy", lambda e: 1, **options)
    assert len(bus.subscriptions()) == before


def test_backoff_stays_within_full_jitter_bounds_at_extreme_bases_and_retries() -> None:
    # architecture.md: retry n waits uniformly in [0, min(30, retry_backoff *
    # 2**(n-1))]; a huge base or retry number must neither overflow nor
    # exceed the 30 s cap, and a tiny base stays within its own bound.
    import random  # noqa: PLC0415

    from actors._core.policies import MAX_BACKOFF, backoff_delay  # noqa: PLC0415

    rng = random.Random(7)
    for base in (1e300, 1e-300, 5e-324, 0.001, 7.0):
        for retry in (1, 2, 10, 64, 65, 2000, 10**6):
            bound = min(MAX_BACKOFF, base * 2.0 ** min(retry - 1, 1000))
            draws = [backoff_delay(base, retry, rng) for _ in range(50)]
            assert all(0.0 <= d <= bound for d in draws), (base, retry, max(draws))
    assert backoff_delay(0.0, 10**6, rng) == 0.0


def test_a_request_reusing_the_id_of_a_waiting_one_does_not_disturb_it(bus: EventBus) -> None:
    # docs/requests.md: a reused request id is a typed error (InvalidEventError,
    # a ValueError) for the second call alone, without taking or closing the
    # first caller's entry.
    release = threading.Event()
    try:

        def held(event: Event) -> Any:
            assert release.wait(WAIT)
            return event.data

        bus.respond("svc.same", held, dedicated_thread=True)
        rid = uuid.uuid4()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(bus.request, "svc.same", "first", timeout=WAIT, id=rid)
            assert wait_for(lambda: bus.pending_requests() == 1)
            with pytest.raises(InvalidEventError, match="already waiting"):
                bus.request("svc.same", "second", timeout=WAIT, id=rid)
            assert bus.pending_requests() == 1
            release.set()
            reply = first.result(timeout=WAIT)
        assert reply.data == "first"
        assert reply.causation_id == rid
        assert bus.pending_requests() == 0
    finally:
        release.set()
