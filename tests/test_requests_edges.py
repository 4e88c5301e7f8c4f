"""Request/reply at its edges (``docs/requests.md``): cases a user can hit.

Each test states the promise of ``docs/requests.md`` it holds the bus to.
A request that hangs in a failing run is bounded by a short request timeout
(``HANG``), never by a sleep.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from actors import (
    AsyncEventBus,
    BackpressureError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    InvalidPatternError,
    OverflowStrategy,
    RemoteHandlerError,
    RequestTimeoutError,
)
from tests._support import WAIT, Gate, wait_for

HANG = 2.0
"""The timeout of a request that must be answered at once: reaching it means it hung."""


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 60))


# -- a responder's failure is its answer, whatever the failure ---------------------------------


class Unprintable(Exception):
    """An exception whose message cannot be built (a ``__str__`` that raises)."""

    def __str__(self) -> str:
        raise RuntimeError("this exception has no printable message")


def _raise_unprintable_sync(calls: list[Event]) -> Callable[[Event], Any]:
    def fn(event: Event) -> Any:
        calls.append(event)
        raise Unprintable

    return fn


def _raise_unprintable_async(calls: list[Event]) -> Callable[[Event], Any]:
    async def fn(event: Event) -> Any:
        calls.append(event)
        raise Unprintable

    return fn


@pytest.mark.parametrize("make", [_raise_unprintable_sync, _raise_unprintable_async])
def test_a_responder_whose_exception_cannot_be_printed_still_answers_with_an_error(
    make: Callable[[list[Event]], Callable[[Event], Any]],
) -> None:
    # docs/requests.md: "When fn raises, the error reply is the answer: the
    # handler counts as handled, so it is not retried and no dead letter is made."
    with EventBus(EventConfig(threads=2, handler_retries=2)) as bus:
        calls: list[Event] = []
        bus.respond("svc.unprintable", make(calls), retry_backoff=0)
        with pytest.raises(RemoteHandlerError) as caught:
            bus.request("svc.unprintable", timeout=HANG)
        assert caught.value.remote_type == "Unprintable"
        bus.flush(WAIT)
        assert len(calls) == 1  # not retried
        assert bus.dead_letters() == []
        assert bus.pending_requests() == 0


@pytest.mark.parametrize("source", [5, "x" * 100_000])
def test_a_responder_source_its_replies_cannot_carry_fails_at_once(
    bus: EventBus, source: Any
) -> None:
    # Bad input fails before anything is published; at the very least a
    # caller is told (an error reply), not left waiting for its timeout with
    # a dead letter per request.
    try:
        bus.respond("svc.source", lambda e: "fine", source=source)
    except (TypeError, ValueError):
        return  # refused at once
    with pytest.raises(RemoteHandlerError):
        bus.request("svc.source", timeout=HANG)
    bus.flush(WAIT)
    assert bus.dead_letters() == []


def test_a_reply_no_node_could_carry_answers_with_an_error_at_once(nodes: Any) -> None:
    # A surrogate in the reply's text: built and handed over in one process,
    # but no node could carry it, so the caller elsewhere would wait out its
    # timeout. It is an error reply, on one bus as on a node.
    for bus in (nodes("a"), EventBus()):
        try:
            bus.respond("svc.sur", lambda e: {"name": "file-\udcff"})
            with pytest.raises(RemoteHandlerError) as caught:
                bus.request("svc.sur", timeout=HANG)
            assert caught.value.remote_type == "InvalidEventError"
            assert "surrogate" in str(caught.value)
        finally:
            if bus.node is None:
                bus.close(timeout=WAIT)


class SurrogateError(Exception):
    """A message with a lone surrogate (a file name decoded with surrogateescape)."""

    def __str__(self) -> str:
        return "cannot read file-\udcff"


def test_an_error_whose_message_no_node_could_carry_still_reaches_the_caller(
    nodes: Any, tmp_path: Any
) -> None:
    # docs/requests.md: the error reply always goes out, and a caller on
    # another node never waits out its timeout.  The lone surrogate is
    # escaped; before, the responder's node could not send the error reply
    # (and a journal could not store it), and the caller timed out.
    a = nodes("a", persistent=True, listen=f"ipc://{tmp_path}/a.sock")
    b = nodes("b", listen=f"ipc://{tmp_path}/b.sock", peers=[f"ipc://{tmp_path}/a.sock"])
    assert a.wait_for_peers(["b"], WAIT)
    assert b.wait_for_peers(["a"], WAIT)

    def fail(event: Event) -> None:
        raise SurrogateError

    a.respond("svc.sur", fail)
    for caller in (a, b):
        with pytest.raises(RemoteHandlerError) as caught:
            caller.request("svc.sur", timeout=WAIT)
        assert caught.value.remote_type == "SurrogateError"
        assert caught.value.remote_message == "cannot read file-\\udcff"
    a.flush(WAIT)
    stored = a.query(EventQuery(event_types=["svc.sur.error"]))
    assert len(stored) == 2  # journaled, the one asked from b too


def test_a_reply_too_large_for_a_node_answers_with_an_error(nodes: Any) -> None:
    # As a return value that is not JSON: a return value that cannot be a
    # reply (EventTooLargeError on a node) becomes an error reply, at once.
    node = nodes("a", max_frame_bytes=256 * 1024)
    node.respond("svc.big", lambda e: "y" * 500_000)
    with pytest.raises(RemoteHandlerError) as caught:
        node.request("svc.big", timeout=HANG)
    assert caught.value.remote_type == "EventTooLargeError"
    node.flush(WAIT)
    assert node.dead_letters() == []


def test_a_peer_without_a_stream_holds_up_neither_requests_nor_wait_for_peers(
    nodes: Any, tmp_path: Any
) -> None:
    # A node without ``listen`` (a client) has no stream to sync with: every
    # request of a new type waited half its timeout for it, and one without a
    # timeout waited until close.
    hub = nodes("hub", listen=f"ipc://{tmp_path}/hub.sock")
    responder = nodes(
        "far", listen=f"ipc://{tmp_path}/far.sock", peers=(f"ipc://{tmp_path}/hub.sock",)
    )
    nodes("client", peers=(f"ipc://{tmp_path}/hub.sock",))  # no listen
    assert hub.node is not None
    assert hub.node.wait_for_peers(["far", "client"], WAIT)
    responder.respond("svc.far", lambda e: "there")
    hub.respond("svc.here", lambda e: "here")
    answers: list[str] = []
    asking = threading.Thread(
        target=lambda: answers.extend(
            hub.request(t, timeout=None).data for t in ("svc.here", "svc.far")
        ),
        daemon=True,
    )
    asking.start()
    asking.join(WAIT)
    assert not asking.is_alive(), "a request waited for a peer that has nothing to sync"
    assert answers == ["here", "there"]


def test_a_responder_raising_with_a_huge_message_on_a_node_still_answers(nodes: Any) -> None:
    # "When fn raises, the error reply is the answer ... no dead letter is made."
    node = nodes("a", max_frame_bytes=256 * 1024)

    def fail(event: Event) -> None:
        raise ValueError("z" * 500_000)

    node.respond("svc.loud", fail)
    with pytest.raises(RemoteHandlerError) as caught:
        node.request("svc.loud", timeout=HANG)
    assert caught.value.remote_type in {"ValueError", "EventTooLargeError"}
    node.flush(WAIT)
    assert node.dead_letters() == []


def test_a_reply_refused_by_a_full_reject_subscription_is_not_lost_silently() -> None:
    # "retries and retry_backoff only matter if publishing the reply itself
    # fails": here it fails (a full REJECT subscription on the replies), and
    # the caller must learn it, not wait out its timeout while the responder
    # counts the request as handled (no retry, no dead letter, no error).
    with EventBus(EventConfig(threads=2)) as bus:
        audit = Gate()
        bus.subscribe(
            "svc.audited.reply",
            audit,
            capacity=1,
            overflow=OverflowStrategy.REJECT,
            dedicated_thread=True,
        )
        bus.publish("svc.audited.reply", 0).get(timeout=WAIT)
        assert audit.entered.wait(WAIT)
        bus.publish("svc.audited.reply", 1).get(timeout=WAIT)  # the audit log is full now
        sub = bus.respond("svc.audited", lambda e: "answer", retries=2, retry_backoff=0)
        try:
            outcome: object = bus.request("svc.audited", timeout=HANG)
        except RequestTimeoutError as exc:
            outcome = exc
        except (RemoteHandlerError, BackpressureError):
            outcome = None  # told at once: fine
        audit.release.set()
        bus.flush(WAIT)
        assert not isinstance(outcome, RequestTimeoutError), (
            f"the refused reply was dropped silently; responder {sub.statistics()}, "
            f"dead letters {bus.dead_letters()}"
        )


# -- a timeout longer than any wait can be -----------------------------------------------------


@pytest.mark.parametrize("too_long", [1e10, 10**400], ids=["1e10", "10**400"])
@pytest.mark.parametrize("method", ["request", "request_all", "flush", "async request"])
def test_a_timeout_past_what_a_wait_can_take_is_refused_before_anything_is_published(
    bus: EventBus, method: str, too_long: float
) -> None:
    # 1e10 s is past threading.TIMEOUT_MAX: no lock can wait that long.  It
    # is bad input, refused before the request goes out (a responder would
    # otherwise do the work and its answer be lost to an OverflowError).
    # An int too large for a float is refused the same way (it raised
    # OverflowError from the check itself).
    handled: list[Event] = []
    bus.respond("svc.patient", handled.append)
    t = too_long
    calls: dict[str, Callable[[], object]] = {
        "request": lambda: bus.request("svc.patient", timeout=t),
        "request_all": lambda: bus.request_all("svc.patient", timeout=t),
        "flush": lambda: bus.flush(t),
        "async request": lambda: run(AsyncEventBus(bus=bus).request("svc.patient", timeout=t)),
    }
    with pytest.raises(ValueError, match="at most"):
        calls[method]()
    assert bus.request("svc.patient", timeout=WAIT).data is None  # the bus goes on
    assert len(handled) == 1
    assert bus.pending_requests() == 0


@pytest.mark.parametrize("policy", ["timeout", "retry_backoff"])
def test_a_policy_given_an_int_too_large_for_a_float_is_a_value_error(
    bus: EventBus, policy: str
) -> None:
    with pytest.raises(ValueError, match=policy):
        bus.respond("svc.policy", lambda e: None, **{policy: 10**400})  # type: ignore[arg-type]


# -- async: cancellation and causation (not covered in test_requests*.py) -----------------------


def test_cancelling_an_awaited_request_leaves_nothing_waiting() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:
            asked = asyncio.Event()
            loop = asyncio.get_running_loop()
            abus.sync.subscribe("svc.silent", lambda e: loop.call_soon_threadsafe(asked.set))
            # asyncio.wait_for shorter than the request's own timeout.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(abus.request("svc.silent", timeout=WAIT * 6), 0.01)
            assert abus.sync.pending_requests() == 0
            # task.cancel() while it waits for its reply.
            task = asyncio.create_task(abus.request_all("svc.silent", timeout=WAIT * 6))
            await asyncio.wait_for(asked.wait(), WAIT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert abus.sync.pending_requests() == 0
            # Cancelled before it ever ran.
            early = asyncio.create_task(abus.request("svc.silent", timeout=WAIT * 6))
            early.cancel()
            with pytest.raises(asyncio.CancelledError):
                await early
            assert abus.sync.pending_requests() == 0
            # The bus still answers afterwards.
            await abus.respond("svc.after", lambda e: "ok")
            assert (await abus.request("svc.after", timeout=WAIT)).data == "ok"

    run(main())


def test_a_request_awaited_in_an_async_handler_is_the_reply_s_parent_in_the_trace() -> None:
    async def main() -> None:
        async with AsyncEventBus(EventConfig(threads=2)) as abus:

            async def tool(event: Event) -> dict[str, int]:
                await asyncio.sleep(0)
                return {"hits": 3}

            await abus.respond("tool.invoke", tool, source="tools")
            answered: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

            async def planner(event: Event) -> None:
                reply = await abus.request("tool.invoke", {"q": 1}, source="planner", timeout=WAIT)
                answered.set_result(reply)

            await abus.subscribe("job.start", planner)
            cid = uuid.uuid4()
            start = await abus.publish("job.start", None, correlation_id=cid)
            reply = await asyncio.wait_for(answered, WAIT)
            assert reply.correlation_id == cid
            assert reply.target == "planner"
            await abus.flush(WAIT)
            trace = await abus.trace(cid)
            assert [e.event_type for e in trace.chain(reply.id)] == [
                "job.start",
                "tool.invoke",
                "tool.invoke.reply",
            ]
            request = next(e for e in trace.events if e.event_type == "tool.invoke")
            assert request.causation_id == start.id
            correlated = await abus.get_correlated(cid)
            assert {e.id for e in correlated} >= {start.id, request.id, reply.id}

    run(main())


# -- a reply taken just as the caller's time runs out --------------------------------------------


def test_a_reply_taken_from_the_table_as_the_wait_times_out_is_returned() -> None:
    # PendingTable.offer removes a complete entry under its lock and sets the
    # future after releasing it.  A caller whose wait times out in between
    # finds no entry (close -> None) and a future not done yet: Requester.wait
    # then returns [] (RequestTimeoutError) although its reply was taken,
    # which is what its own "completed just as the time ran out" branch
    # means to prevent.  The reply is then lost to the caller.
    from actors._core.pending import Pending  # noqa: PLC0415
    from actors._core.requests import ReplyFuture, Requester, reply_event  # noqa: PLC0415
    from actors._runtime.future import BusFuture  # noqa: PLC0415

    gave_up = threading.Event()

    class SetsLate(ReplyFuture[list[Event]]):
        __slots__ = ()

        def set(self, value: Any = None) -> None:
            assert gave_up.wait(WAIT)
            super().set(value)

    requester = Requester(lambda pattern, handler, wanted: None)
    table = requester.table
    closing = table.close

    def close(entry: Pending) -> list[Event] | None:
        late = closing(entry)
        gave_up.set()  # the caller's time ran out and it looked for its entry
        return late

    table.close = close  # type: ignore[method-assign]
    request = Event(event_type="svc.race")
    pending = requester.send(request, BusFuture.completed)
    pending.future = SetsLate()
    reply = reply_event(request, "just in time")
    offering = threading.Thread(target=requester.table.offer, args=(reply,))
    offering.start()
    assert wait_for(lambda: not requester.table.waiting(request.id))  # taken, not yet set
    try:
        got = requester.wait(pending, 0.0)
    finally:
        gave_up.set()
        offering.join(WAIT)
    assert [r.id for r in got] == [reply.id]


@pytest.mark.parametrize("pattern", ["$bus.*", "$bus.deadletter", "$bus.**"])
def test_a_responder_to_reserved_types_is_refused_at_respond(bus: EventBus, pattern: str) -> None:
    # Its replies would be reserved ('$') types, which only the bus
    # publishes: every one would be refused, after the work was done.
    with pytest.raises(InvalidPatternError, match="reserved"):
        bus.respond(pattern, lambda e: "answer")
    assert bus.subscriptions() == []


def test_a_remote_handler_error_pickles_and_copies_whole() -> None:
    import copy  # noqa: PLC0415
    import pickle  # noqa: PLC0415

    reply = Event(event_type="q.error", data={"error_type": "ValueError", "error": "no"})
    error = RemoteHandlerError("ValueError", "no", reply)
    error.add_note("while pricing the order")
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert isinstance(again, RemoteHandlerError)
        assert (again.remote_type, again.remote_message, str(again)) == (
            "ValueError",
            "no",
            str(error),
        )
        assert again.reply == reply
        assert again.__notes__ == ["while pricing the order"]
