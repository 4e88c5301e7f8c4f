"""Requests and replies (``actors/_core/requests.py`` and the bus's ``respond``/``request``).

The table and the reply builders are tested without threads first, then the
bus in one process, sync and async.  Across processes: ``test_requests_cluster.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Coroutine
from pathlib import Path
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
    InvalidEventError,
    OverflowStrategy,
    PersistentEventBus,
    RemoteHandlerError,
    RequestTimeoutError,
)
from actors._core import pending
from actors._core.pending import PendingTable
from actors._core.requests import (
    ReplyFuture,
    Requester,
    Responder,
    error_event,
    is_reply,
    reply_event,
    reply_pattern,
    reply_result,
)
from actors._errors import FutureTimeoutError
from actors._model.topics import Pattern
from actors._runtime.future import BusFuture
from tests._support import WAIT, Collector, Gate

# -- the parts, without threads ----------------------------------------------------------------


def _request(**fields: Any) -> Event:
    return Event(event_type="tool.invoke", data={"q": 1}, **fields)


def test_reply_event_is_caused_by_the_request_and_goes_back_to_its_source() -> None:
    cid = uuid.uuid4()
    request = _request(correlation_id=cid, source="planner")
    reply = reply_event(request, {"hits": 3}, source="tools")
    assert reply.event_type == "tool.invoke.reply"
    assert reply.data == {"hits": 3}
    assert reply.causation_id == request.id
    assert reply.correlation_id == cid
    assert reply.target == "planner"
    assert reply.source == "tools"
    assert is_reply(reply)
    assert not is_reply(request)
    assert reply_result(reply) is reply


def test_error_event_carries_the_exception_and_raises_as_remote_handler_error() -> None:
    request = _request(source="planner")
    error = error_event(request, KeyError("missing"))
    assert error.event_type == "tool.invoke.error"
    assert error.data == {"error_type": "KeyError", "error": "'missing'"}
    with pytest.raises(RemoteHandlerError) as caught:
        reply_result(error)
    assert caught.value.remote_type == "KeyError"
    assert caught.value.remote_message == "'missing'"
    assert caught.value.reply is error


def test_reply_pattern_matches_replies_and_errors_only() -> None:
    pattern = Pattern.parse(reply_pattern("tool.invoke"))
    assert pattern.matches("tool.invoke.reply")
    assert pattern.matches("tool.invoke.error")
    assert not pattern.matches("tool.invoke")
    assert not pattern.matches("tool.invoke.other")
    assert not pattern.matches("tool.invoked.reply")


def test_table_gives_a_reply_to_its_request_once() -> None:
    table = PendingTable()
    request = _request()
    pending = table.open(request.id)
    reply = reply_event(request, 1)
    assert table.wanted(reply)
    assert not table.wanted(reply_event(_request(), 1))  # another request's reply
    assert table.offer(reply)
    assert pending.future.get(timeout=0) == [reply]
    assert len(table) == 0
    assert not table.offer(reply)  # nobody waits any more
    assert not table.offer(request)  # no causation id


def test_table_gathers_up_to_max_replies_and_ignores_duplicates() -> None:
    table = PendingTable()
    request = _request()
    pending = table.open(request.id, max_replies=2)
    first = reply_event(request, 1)
    assert table.offer(first)
    assert not table.offer(first)  # the same event twice (hand-over and route)
    assert not pending.future.done()
    second = reply_event(request, 2)
    assert table.offer(second)
    assert pending.future.get(timeout=0) == [first, second]
    assert len(table) == 0


def test_table_close_returns_what_arrived_and_empties() -> None:
    table = PendingTable()
    request = _request()
    entry = table.open(request.id, max_replies=None)
    reply = reply_event(request, 1)
    table.offer(reply)
    assert table.close(entry) == [reply]
    assert table.close(entry) is None
    assert len(table) == 0


def test_table_close_removes_only_its_own_entry() -> None:
    """Two callers of one request id, one after the other: the first one's clean-up,
    after its reply took its entry, removed the second one's entry, whose caller then
    waited for ever past its timeout (nothing left to complete it)."""
    table = PendingTable()
    request = _request()
    first = table.open(request.id)
    assert table.offer(reply_event(request, 1))  # its reply takes the entry
    second = table.open(request.id)  # a retry with the same id, before the first returned
    assert table.close(first) is None  # the first caller's clean-up
    assert table.waiting(request.id)
    assert table.close(second) == []


def test_a_callers_clean_up_leaves_a_later_callers_wait_of_the_same_id() -> None:
    requester = Requester(lambda pattern, handler, wanted: None)
    request = _request()
    first = requester.send(request, BusFuture.completed)
    assert requester.table.offer(reply_event(request, 1))
    second = requester.send(request, BusFuture.completed)  # the id is free again
    assert [r.data for r in requester.wait(first, WAIT)] == [1]
    assert requester.table.waiting(request.id)  # before: removed by the first's clean-up
    assert requester.table.offer(reply_event(request, 2))
    assert [r.data for r in requester.wait(second, WAIT)] == [2]


def test_table_is_bounded() -> None:
    table = PendingTable(limit=2)
    table.open(uuid.uuid4())
    table.open(uuid.uuid4())
    with pytest.raises(BackpressureError):
        table.open(uuid.uuid4())
    assert len(table) == 2
    with pytest.raises(ValueError, match="limit"):
        PendingTable(limit=0)
    with pytest.raises(ValueError, match="max_replies"):
        table.open(uuid.uuid4(), max_replies=0)


def test_table_sweep_ends_entries_past_their_timeout_as_a_timeout_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pending, "SWEEP_GRACE", -1.0)  # every entry with a timeout is past it
    table = PendingTable(limit=2)
    forever = table.open(uuid.uuid4())  # no timeout: only its caller ends it
    stranded = table.open(uuid.uuid4(), max_replies=None, gathers=True, timeout=0.0)
    reply = reply_event(Event(event_type="job.ask"), 1)
    # A full table sweeps before it refuses: the stranded entry makes room.
    fresh = table.open(uuid.uuid4(), timeout=WAIT)
    assert stranded.future.done()
    assert stranded.future.get() == []  # the replies so far, as its own timeout gives
    assert table.close(stranded) is None  # its caller, back late, finds it gone
    assert not forever.future.done()
    assert not fresh.future.done()
    assert table.offer(reply) is False
    assert len(table) == 2  # a sweep on reading the size keeps what is not past its time
    assert not fresh.future.done()
    assert table.close(fresh) == []
    assert table.close(forever) == []


def test_responder_publishes_reply_or_error_and_never_answers_replies() -> None:
    sent: list[Event] = []

    def publish(event: Event) -> BusFuture[Event]:
        sent.append(event)
        return BusFuture.completed(event)

    def fn(event: Event) -> Any:
        if event.data == "boom":
            raise ValueError("bad input")
        if event.data == "set":
            return {1, 2}  # not JSON
        return event.data

    responder = Responder(fn, publish)
    request = _request()
    responder(request)
    responder(Event(event_type="tool.invoke", data="boom"))
    responder(Event(event_type="tool.invoke", data="set"))
    responder(reply_event(request, 1))  # a reply is not a request
    assert [e.event_type for e in sent] == [
        "tool.invoke.reply",
        "tool.invoke.error",
        "tool.invoke.error",
    ]
    assert sent[0].data == {"q": 1}
    assert sent[1].data == {"error_type": "ValueError", "error": "bad input"}
    assert isinstance(sent[2].data, dict)
    assert sent[2].data["error_type"] == "InvalidEventError"
    with pytest.raises(TypeError, match="fn"):
        Responder(42, publish)  # type: ignore[arg-type]


def test_responder_hands_a_local_reply_to_the_table() -> None:
    table = PendingTable()
    request = _request()
    pending = table.open(request.id)
    published: list[Event] = []

    def publish(event: Event) -> BusFuture[Event]:
        assert not table.wanted(event), "the reply route must skip a handed-over reply"
        published.append(event)
        return BusFuture.completed(event)

    Responder(lambda e: "done", publish, table)(request)
    assert pending.future.get(timeout=0) == published
    assert len(table) == 0


def test_reply_future_wakes_every_reader_once_set_and_times_out_before() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    with pytest.raises(FutureTimeoutError):
        future.get(timeout=0)
    got: list[int] = []
    readers = [
        threading.Thread(target=lambda: got.append(future.get(timeout=WAIT))) for _ in range(3)
    ]
    for reader in readers:
        reader.start()
    future.set(7)
    future.set(8)  # a second completion is ignored
    for reader in readers:
        reader.join(WAIT)
    assert got == [7, 7, 7]
    assert future.get(timeout=0) == 7


def test_reply_future_raises_what_it_failed_with() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    future.set_exception(BusClosedError("closed"))
    with pytest.raises(BusClosedError):
        future.get(timeout=0)
    with pytest.raises(BusClosedError):
        future.get()


# -- the bus, in one process ---------------------------------------------------------------


def test_request_returns_the_reply_event(bus: EventBus) -> None:
    bus.respond("math.double", lambda e: e.data * 2, source="math")
    cid = uuid.uuid4()
    reply = bus.request("math.double", 21, correlation_id=cid, source="me", timeout=WAIT)
    assert reply.event_type == "math.double.reply"
    assert reply.data == 42
    assert reply.correlation_id == cid
    assert reply.target == "me"
    assert reply.source == "math"
    assert reply.sequence is not None
    request = next(e for e in bus.get_correlated(cid) if e.event_type == "math.double")
    assert reply.causation_id == request.id
    assert bus.pending_requests() == 0


def test_replies_are_ordinary_events(bus: EventBus) -> None:
    seen = Collector(expected=1)
    bus.subscribe("**.reply", seen)
    bus.respond("svc.ask", lambda e: "yes")
    reply = bus.request("svc.ask", timeout=WAIT)
    assert seen.done.wait(WAIT)
    assert seen.events[0].id == reply.id


def test_replies_are_journaled(tmp_path: Path) -> None:
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as pbus:
        pbus.respond("svc.ask", lambda e: e.data)
        reply = pbus.request("svc.ask", "x", timeout=WAIT)
        stored = pbus.query(EventQuery(event_types=["svc.ask.*"]))
        assert [e.id for e in stored] == [reply.id]


def test_raising_responder_gives_remote_handler_error_and_no_dead_letter(bus: EventBus) -> None:
    def fail(event: Event) -> None:
        raise PermissionError("not allowed")

    bus.respond("db.drop", fail)
    with pytest.raises(RemoteHandlerError) as caught:
        bus.request("db.drop", timeout=WAIT)
    assert isinstance(caught.value, EventBusError)
    assert caught.value.remote_type == "PermissionError"
    assert caught.value.remote_message == "not allowed"
    assert isinstance(caught.value.reply, Event)
    assert caught.value.reply.event_type == "db.drop.error"
    bus.flush(WAIT)
    assert bus.dead_letters() == []
    assert bus.metrics().dead_letters == 0


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_a_responder_raising_a_base_exception_answers_with_an_error(
    bus: EventBus, raised: type[BaseException]
) -> None:
    def stop(event: Event) -> None:
        raise raised("stop")

    bus.respond("svc.stop", stop)
    with pytest.raises(RemoteHandlerError) as caught:
        bus.request("svc.stop", timeout=WAIT)
    assert caught.value.remote_type == raised.__name__
    bus.flush(WAIT)
    assert bus.dead_letters() == []


def test_an_async_responder_whose_awaited_work_is_cancelled_answers_with_an_error(
    bus: EventBus,
) -> None:
    async def cancelled_under_it(event: Event) -> None:
        inner = asyncio.get_running_loop().create_future()
        inner.cancel()
        await inner

    bus.respond("svc.cancel", cancelled_under_it)
    with pytest.raises(RemoteHandlerError) as caught:
        bus.request("svc.cancel", timeout=WAIT)
    assert caught.value.remote_type == "CancelledError"
    bus.flush(WAIT)
    assert bus.dead_letters() == []


def test_request_without_responder_times_out_and_leaves_nothing(bus: EventBus) -> None:
    with pytest.raises(RequestTimeoutError) as caught:
        bus.request("nobody.home", timeout=0.05)
    assert isinstance(caught.value, EventBusError)
    assert isinstance(caught.value, TimeoutError)
    assert "nobody.home" in str(caught.value)
    assert bus.pending_requests() == 0


def test_scatter_gather_from_three_responders(bus: EventBus) -> None:
    for name in ("a", "b", "c"):
        bus.respond("quote.get", lambda e, name=name: name)
    replies = bus.request_all("quote.get", timeout=WAIT, max_replies=3)
    assert sorted(r.data for r in replies) == ["a", "b", "c"]
    assert len({r.causation_id for r in replies}) == 1
    assert bus.pending_requests() == 0


def test_request_all_returns_what_arrived_within_the_timeout(bus: EventBus) -> None:
    release = threading.Event()
    bus.respond("quote.get", lambda e: "fast")
    bus.respond("quote.get", lambda e: 1 / 0)  # an error reply is gathered too
    # A responder that answers only after the caller gave up (on its own thread).
    bus.respond("quote.get", lambda e: release.wait(WAIT), dedicated_thread=True)
    replies = bus.request_all("quote.get", timeout=1.0)
    release.set()
    assert sorted(r.event_type for r in replies) == ["quote.get.error", "quote.get.reply"]
    assert [r.data for r in replies if r.event_type.endswith("reply")] == ["fast"]
    assert bus.request_all("nobody.home", timeout=0.01) == []
    bus.flush(WAIT)  # the late reply arrives and finds nobody waiting
    assert bus.pending_requests() == 0


def test_request_inside_a_handler_is_the_replys_parent_in_the_trace(bus: EventBus) -> None:
    bus.respond("tool.invoke", lambda e: {"hits": 3}, source="tools")
    answers: list[Event] = []
    done = threading.Event()

    def planner(event: Event) -> None:
        answers.append(bus.request("tool.invoke", {"q": "x"}, source="planner", timeout=WAIT))
        done.set()

    # A handler that waits on a request gets a thread of its own (docs/requests.md).
    bus.subscribe("job.start", planner, dedicated_thread=True)
    cid = uuid.uuid4()
    start = bus.publish_correlated("job.start", None, cid).get(timeout=WAIT)
    assert done.wait(WAIT)
    reply = answers[0]
    assert reply.correlation_id == cid
    bus.flush(WAIT)
    trace = bus.trace(cid)
    request = next(e for e in trace.events if e.event_type == "tool.invoke")
    assert request.causation_id == start.id
    assert [e.id for e in trace.children(request.id)] == [reply.id]
    assert [e.event_type for e in trace.chain(reply.id)] == [
        "job.start",
        "tool.invoke",
        "tool.invoke.reply",
    ]


def test_a_broad_responder_does_not_answer_replies(bus: EventBus) -> None:
    asked = Collector()
    bus.respond("**", asked)
    reply = bus.request("any.thing", timeout=WAIT)
    assert reply.event_type == "any.thing.reply"
    bus.flush(WAIT)
    assert asked.types == ["any.thing"]


def test_request_rejects_bad_input(bus: EventBus) -> None:
    with pytest.raises(InvalidEventError):
        bus.request("$bus.x")
    with pytest.raises(InvalidEventError):
        bus.request("bad..type")
    with pytest.raises(ValueError, match="event_type"):
        bus.request("a" * 250)
    with pytest.raises(ValueError, match="max_replies"):
        bus.request_all("a.b", max_replies=0)
    for reply_like in ("a.reply", "a.b.error"):  # inside a handler it would pass for a reply
        with pytest.raises(ValueError, match="cannot end in"):
            bus.request(reply_like)
    with pytest.raises(TypeError, match="fn"):
        bus.respond("a.b", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown Event field"):
        bus.request("a.b", colour="red")
    assert bus.pending_requests() == 0
    bus.respond("a.b", lambda e: "fine")
    assert bus.request("a.b", timeout=WAIT).data == "fine"  # nothing else was lost


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda b: b.request("svc.a", timeout="1"), TypeError),
        (lambda b: b.request("svc.a", timeout=float("nan")), ValueError),
        (lambda b: b.request("svc.a", timeout=-1), ValueError),
        (lambda b: b.request("svc.a", timeout=True), TypeError),
        (lambda b: b.request("svc.a", node=3), TypeError),
        (lambda b: b.request_all("svc.a", timeout=float("inf")), ValueError),
        (lambda b: b.request_all("svc.a", max_replies=1.5), TypeError),
        (lambda b: b.request_all("svc.a", max_replies=True), TypeError),
    ],
)
def test_request_arguments_are_checked_before_anything_is_published(
    bus: EventBus, call: Any, error: type[Exception]
) -> None:
    seen = Collector()
    bus.subscribe("svc.**", seen)
    with pytest.raises(error):
        call(bus)
    bus.publish("svc.after").get(timeout=WAIT)
    bus.flush(WAIT)
    assert seen.types == ["svc.after"]  # the bad request never went out
    assert bus.pending_requests() == 0


def test_a_request_waiting_for_room_ends_at_its_own_timeout() -> None:
    # block_timeout is long; the request's own timeout bounds its wait for room.
    with EventBus(EventConfig(block_timeout=WAIT)) as b:
        gate = Gate()
        b.respond("svc.*", gate, capacity=1, overflow=OverflowStrategy.BLOCK, dedicated_thread=True)
        b.publish("svc.a", 0).get(timeout=WAIT)
        assert gate.entered.wait(WAIT)
        b.publish("svc.a", 1).get(timeout=WAIT)  # fills the responder's mailbox
        with pytest.raises(RequestTimeoutError):
            b.request("svc.a", 2, timeout=0.05)
        assert b.request_all("svc.a", 3, timeout=0.05) == []  # it never raises for silence
        assert b.pending_requests() == 0
        gate.release.set()
        b.flush(WAIT)
        assert gate.data == [0, 1]  # the request was not published


def test_request_on_a_closed_bus_raises() -> None:
    closed = EventBus()
    closed.close()
    with pytest.raises(EventBusError):
        closed.request("a.b")


# -- async -----------------------------------------------------------------------------------


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 60))


def test_async_request_and_async_responder() -> None:
    async def main() -> None:
        async with AsyncEventBus() as abus:

            async def double(event: Event) -> int:
                await asyncio.sleep(0)
                return int(event.data) * 2

            await abus.respond("math.double", double)
            reply = await abus.request("math.double", 4, timeout=WAIT)
            assert reply.data == 8
            results = await asyncio.gather(
                *(abus.request("math.double", i, timeout=WAIT) for i in range(50))
            )
            assert [r.data for r in results] == [i * 2 for i in range(50)]

            async def fail(event: Event) -> None:
                raise LookupError("gone")

            await abus.respond("math.fail", fail)
            with pytest.raises(RemoteHandlerError, match="LookupError: gone"):
                await abus.request("math.fail", timeout=WAIT)
            with pytest.raises(RequestTimeoutError):
                await abus.request("math.nobody", timeout=0.05)
            await abus.respond("math.any", lambda e: "sync responder")
            gathered = await abus.request_all("math.any", timeout=WAIT, max_replies=1)
            assert [r.data for r in gathered] == ["sync responder"]
            assert abus.sync.pending_requests() == 0

    run(main())


def test_ten_thousand_requests_that_time_out_leave_the_table_empty() -> None:
    async def main() -> None:
        async with AsyncEventBus() as abus:
            outcomes = await asyncio.gather(
                *(abus.request("nobody.home", i, timeout=1.0) for i in range(10_000)),
                return_exceptions=True,
            )
            assert len(outcomes) == 10_000
            assert all(isinstance(o, RequestTimeoutError) for o in outcomes)
            assert abus.sync.pending_requests() == 0

    run(main())


def test_closing_the_bus_fails_waiting_requests() -> None:
    closing = EventBus()
    asked = threading.Event()
    closing.subscribe("nobody.answers", lambda e: asked.set())  # sees it, never replies
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            closing.request("nobody.answers", timeout=WAIT * 6)
        except BaseException as exc:
            outcome.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    assert asked.wait(WAIT)
    closing.close(timeout=WAIT)
    asker.join(WAIT)
    assert not asker.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], BusClosedError)
    assert closing.pending_requests() == 0


def test_fail_all_empties_the_table() -> None:
    table = PendingTable()
    entries = [table.open(uuid.uuid4()) for _ in range(3)]
    assert table.fail_all(BusClosedError("closed")) == 3
    assert len(table) == 0
    for entry in entries:
        with pytest.raises(BusClosedError):
            entry.future.get(timeout=0)


def test_requester_makes_one_reply_route_per_type_and_asks_until_synced() -> None:
    made: list[str] = []

    def subscribe(pattern: str, handler: Any, wanted: Any) -> str:
        made.append(pattern)
        return pattern

    requester = Requester(subscribe)
    assert requester.route("tool.invoke")
    assert requester.route("tool.invoke")  # not acknowledged yet: callers wait again
    requester.synced("tool.invoke")
    assert not requester.route("tool.invoke")
    assert requester.route("other.ask")
    assert made == ["tool.invoke.{reply,error}", "other.ask.{reply,error}"]
    assert requester.routes == 2


def test_an_event_of_another_type_caused_by_a_request_is_not_its_reply() -> None:
    """A reply is of type ``<request type>.reply`` or ``.error``: an ``other.reply``
    caused by a ``q`` request (a handler's own event, once anything on the bus had
    requested ``other``) was returned as ``q``'s reply."""
    with EventBus() as bus:
        bus.respond("other", lambda event: "its own")
        assert bus.request("other", timeout=WAIT).data == "its own"  # a route for other.*
        asked: list[Event] = []
        seen = threading.Event()
        bus.subscribe("q", lambda event: (asked.append(event), seen.set()))
        outcome: concurrent.futures.Future[Event] = concurrent.futures.Future()
        threading.Thread(
            target=lambda: outcome.set_result(bus.request("q", timeout=WAIT)), daemon=True
        ).start()
        assert seen.wait(WAIT)
        [request] = asked
        bus.publish("other.reply", {"not": "an answer to q"}, causation_id=request.id)
        bus.flush(WAIT)  # offered to the waiting request, which must not take it
        assert not outcome.done()
        bus.publish("q.reply", "the answer", causation_id=request.id)
        assert outcome.result(WAIT).event_type == "q.reply"
