"""Edges of BLOCK admission in pieces and of giving up on a subscription.

Every blocking handler waits on a ``threading.Event`` the test sets at its
end; nothing sleeps.  Waits are bounded by ``WAIT`` (reaching it is a failure).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors import Event, EventBus, EventConfig
from actors._errors import BackpressureError, BusClosedError
from tests._support import WAIT, wait_for


def balanced(stats: Any) -> bool:
    return stats.accepted == (
        stats.delivered
        + stats.expired
        + stats.dead_letters
        + stats.dropped
        + stats.queued
        + stats.in_flight
    )


class Holder:
    """A handler that blocks in the events ``hold`` selects until ``release`` is set."""

    def __init__(self, hold: Any = None, fail: bool = False) -> None:
        self.hold = hold if hold is not None else (lambda e: True)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail = fail
        self.seen: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.seen.append(event)
        if self.hold(event):
            self.entered.set()
            assert self.release.wait(WAIT), "never released"
        if self.fail:
            raise RuntimeError("fails on purpose")


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.release.set()


def holder(made: list[Holder], **kw: Any) -> Holder:
    h = Holder(**kw)
    made.append(h)
    return h


# -- BLOCK publish_many in pieces ---------------------------------------------------------


# A publish_many whose first piece is refused raises and publishes nothing:
# metrics().rejected counts the whole batch, not only that piece.
def test_publish_many_refused_first_piece_counts_whole_batch(holders: list[Holder]) -> None:
    bus = EventBus(EventConfig(threads=2, block_timeout=0.2))
    try:
        h = holder(holders)
        bus.subscribe("t.*", h, capacity=2, overflow="block")
        bus.publish("t.x", 0)
        assert h.entered.wait(WAIT)
        bus.publish("t.x", 1)
        bus.publish("t.x", 2)  # the mailbox is now full (2 queued), the router marked it
        before = bus.metrics()
        with pytest.raises(BackpressureError):
            bus.publish_many([Event(event_type="t.x", data=i) for i in range(5)])
        after = bus.metrics()
        assert after.published == before.published  # nothing of the batch was published
        assert after.rejected - before.rejected == 5
    finally:
        for x in holders:
            x.release.set()
        bus.close(timeout=WAIT)


def test_publish_many_single_event_refused_counts_one(holders: list[Holder]) -> None:
    bus = EventBus(EventConfig(threads=2, block_timeout=0.2))
    try:
        h = holder(holders)
        bus.subscribe("t.*", h, capacity=1, overflow="block")
        bus.publish("t.x", 0)
        assert h.entered.wait(WAIT)
        bus.publish("t.x", 1)
        with pytest.raises(BackpressureError):
            bus.publish_many([Event(event_type="t.x", data=9)])
        assert bus.metrics().rejected == 1
    finally:
        for x in holders:
            x.release.set()
        bus.close(timeout=WAIT)


# Each piece of a publish_many is cut on the room left once the piece before
# was routed, not on the room read before anything was sent: else a later piece,
# admitted as soon as the mailbox is under capacity again, lands whole and the
# BLOCK mailbox holds far more than its capacity.
def test_publish_many_later_piece_does_not_overfill_block_mailbox(holders: list[Holder]) -> None:
    capacity = 300  # over the dispatcher's throughput (256): a take leaves some queued
    bus = EventBus(EventConfig(threads=2, block_timeout=WAIT))
    second = threading.Event()
    try:
        # Blocks in the first event, then in the first event of the batch.
        h = holder(holders, hold=lambda e: e.data in ("first", 0))
        first_release = threading.Event()

        def handler(event: Event) -> None:
            if event.data == "first":
                assert first_release.wait(WAIT)
                return
            h(event)

        sub = bus.subscribe("t.*", handler, capacity=capacity, overflow="block")
        bus.publish("t.x", "first")
        assert wait_for(lambda: sub.statistics().in_flight == 1)
        total = 3 * capacity
        errors: list[BaseException] = []

        def publish_batch() -> None:
            try:
                bus.publish_many([Event(event_type="t.x", data=i) for i in range(total)])
            except BaseException as exc:
                errors.append(exc)
            finally:
                second.set()

        t = threading.Thread(target=publish_batch)
        t.start()
        # The first piece fills the mailbox: the publisher waits for room.
        assert wait_for(lambda: sub.statistics().queued >= capacity)
        first_release.set()  # the subscriber takes 256 of them and blocks in event 0
        assert h.entered.wait(WAIT)
        # Whatever piece is admitted now lands while the handler is blocked.
        assert wait_for(lambda: sub.statistics().accepted > 1 + capacity)
        # Give the router its turn: let whatever was admitted be routed.
        bus.publish("other", None)
        assert wait_for(lambda: bus.metrics().published >= sub.statistics().accepted + 1)
        stats = sub.statistics()
        assert stats.queued <= capacity + 1, stats
    finally:
        for x in holders:
            x.release.set()
        second.wait(WAIT)
        bus.close(timeout=WAIT)


def test_publish_many_pieces_with_filter_and_two_block_subscriptions(
    holders: list[Holder],
) -> None:
    bus = EventBus(EventConfig(threads=4, block_timeout=WAIT))
    try:
        small = holder(holders, hold=lambda e: e.data == 0)
        big = holder(holders, hold=lambda e: e.data == 0)
        s_small = bus.subscribe(
            "t.*", small, capacity=2, overflow="block", filter=lambda e: e.data % 2 == 0
        )
        s_big = bus.subscribe("t.*", big, capacity=50, overflow="block")
        done = threading.Event()
        futures: list[Any] = []

        def go() -> None:
            futures.extend(bus.publish_many([Event(event_type="t.x", data=i) for i in range(40)]))
            done.set()

        t = threading.Thread(target=go)
        t.start()
        assert small.entered.wait(WAIT)
        assert big.entered.wait(WAIT)
        # small holds event 0, and at most its capacity (+1) queued behind.
        assert wait_for(lambda: s_small.statistics().queued >= 2)
        assert s_small.statistics().queued <= 3
        assert not done.is_set()
        small.release.set()
        big.release.set()
        assert done.wait(WAIT)
        t.join(WAIT)
        assert [f.get(WAIT).data for f in futures] == list(range(40))
        bus.flush(timeout=WAIT)
        assert [e.data for e in small.seen] == list(range(0, 40, 2))
        assert [e.data for e in big.seen] == list(range(40))
        for s in (s_small, s_big):
            st = s.statistics()
            assert balanced(st), st
    finally:
        for x in holders:
            x.release.set()
        bus.close(timeout=WAIT)


# -- handlers that publish into BLOCK subscriptions ----------------------------------


@pytest.mark.parametrize("where", ["pool", "dedicated", "async", "responder"])
def test_handler_publishing_into_block_with_one_thread_does_not_stall(
    where: str, holders: list[Holder]
) -> None:
    """threads=1, max_threads=1: the handler's publish waits for the router's routing.

    block_timeout is far over WAIT: a wait for a router that cannot run shows as a failure.
    """
    bus = EventBus(EventConfig(threads=1, max_threads=1, block_timeout=60.0))
    done = threading.Event()
    got: list[Any] = []
    try:
        # Room for everything: only the wait for the routing is at stake.
        bus.subscribe("out.*", lambda e: got.append(e.data), capacity=100, overflow="block")

        def work(event: Event) -> Any:
            for i in range(8):
                bus.publish("out.x", i)
            done.set()
            return {"ok": True}

        if where == "pool":
            bus.subscribe("in.*", work)
            bus.publish("in.x", None)
        elif where == "dedicated":
            bus.subscribe("in.*", work, dedicated_thread=True)
            bus.publish("in.x", None)
        elif where == "async":

            async def awork(event: Event) -> None:
                work(event)

            bus.subscribe("in.*", awork)
            bus.publish("in.x", None)
        else:
            bus.respond("in.*", work)
            reply = bus.request("in.x", None, timeout=WAIT)
            assert reply.data == {"ok": True}
        assert done.wait(WAIT), "the handler's publishes stalled"
        bus.flush(timeout=WAIT)
        assert got == list(range(8))
    finally:
        bus.close(timeout=WAIT)


def test_handler_publish_many_into_small_block_from_pool_thread(holders: list[Holder]) -> None:
    bus = EventBus(EventConfig(threads=1, max_threads=1, block_timeout=60.0))
    done = threading.Event()
    got: list[Any] = []
    try:
        # On its own thread: it can make room while the handler holds the pool's one thread.
        sub = bus.subscribe(
            "out.*",
            lambda e: got.append(e.data),
            capacity=2,
            overflow="block",
            dedicated_thread=True,
        )

        def work(event: Event) -> None:
            bus.publish_many([Event(event_type="out.x", data=i) for i in range(9)])
            done.set()

        bus.subscribe("in.*", work)
        bus.publish("in.x", None)
        assert done.wait(WAIT), "publish_many from a handler stalled"
        bus.flush(timeout=WAIT)
        assert got == list(range(9))
        assert balanced(sub.statistics())
    finally:
        bus.close(timeout=WAIT)


# -- concurrent publishers, REJECT in the same batch, close mid-batch --------------


def test_publish_many_with_reject_subscription_in_same_batch(holders: list[Holder]) -> None:
    bus = EventBus(EventConfig(threads=4, block_timeout=WAIT))
    try:
        blk = holder(holders, hold=lambda e: e.data == 0)
        rej = holder(holders, hold=lambda e: e.data == 0)
        s_blk = bus.subscribe("t.*", blk, capacity=3, overflow="block")
        s_rej = bus.subscribe("t.*", rej, capacity=3, overflow="reject")
        futures: list[Any] = []
        done = threading.Event()

        def go() -> None:
            futures.extend(bus.publish_many([Event(event_type="t.x", data=i) for i in range(10)]))
            done.set()

        t = threading.Thread(target=go)
        t.start()
        assert blk.entered.wait(WAIT)
        assert rej.entered.wait(WAIT)
        assert wait_for(lambda: s_blk.statistics().queued >= 3)
        blk.release.set()
        rej.release.set()
        assert done.wait(WAIT)
        t.join(WAIT)
        bus.flush(timeout=WAIT)
        refused = [f for f in futures if f.exception() is not None]
        assert all(isinstance(f.exception(), BackpressureError) for f in refused)
        # Each refusal is counted once in rejected, and nothing else is.
        assert bus.metrics().rejected == len(refused)
        published = [f.get(WAIT).data for f in futures if f.exception() is None]
        assert [e.data for e in rej.seen] == published
        assert [e.data for e in blk.seen] == published
        for s in (s_blk, s_rej):
            assert balanced(s.statistics()), s.statistics()
    finally:
        for x in holders:
            x.release.set()
        bus.close(timeout=WAIT)


def test_concurrent_publish_many_into_block_keep_order_and_counts(holders: list[Holder]) -> None:
    bus = EventBus(EventConfig(threads=2, block_timeout=WAIT))
    try:
        got: list[Event] = []
        sub = bus.subscribe("t.*", got.append, capacity=3, overflow="block")
        n_pub, per = 3, 40
        start = threading.Barrier(n_pub)
        errors: list[BaseException] = []

        def go(k: int) -> None:
            try:
                start.wait(WAIT)
                fs = bus.publish_many([Event(event_type="t.x", data=[k, i]) for i in range(per)])
                for f in fs:
                    f.get(WAIT)
            except BaseException as exc:
                errors.append(exc)

        ts = [threading.Thread(target=go, args=(k,)) for k in range(n_pub)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT)
        assert not errors
        bus.flush(timeout=WAIT)
        for k in range(n_pub):
            assert [e.data[1] for e in got if e.data[0] == k] == list(range(per))
        st = sub.statistics()
        assert st.delivered == n_pub * per
        assert balanced(st)
        assert bus.metrics().rejected == 0
    finally:
        bus.close(timeout=WAIT)


def test_close_racing_a_batch_waiting_for_room(holders: list[Holder]) -> None:
    bus = EventBus(EventConfig(threads=2, block_timeout=60.0))
    h = holder(holders, hold=lambda e: e.data == 0)
    sub = bus.subscribe("t.*", h, capacity=2, overflow="block")
    result: list[Any] = []
    done = threading.Event()

    def go() -> None:
        try:
            result.append(bus.publish_many([Event(event_type="t.x", data=i) for i in range(8)]))
        except BaseException as exc:
            result.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=go)
    t.start()
    closer = threading.Thread(target=bus.close, kwargs={"timeout": WAIT})
    try:
        assert h.entered.wait(WAIT)
        assert wait_for(lambda: sub.statistics().queued >= 2)
        closer.start()
        assert wait_for(lambda: bus.closed)
        h.release.set()  # room comes while the bus closes
        assert done.wait(WAIT), "the batch's publisher never returned after close"
        closer.join(WAIT)
        assert not closer.is_alive()
        out = result[0]
        assert isinstance(out, list), out  # the first piece was published
        for f in out:
            assert wait_for(f.done)
            exc = f.exception()
            assert exc is None or isinstance(exc, BusClosedError), exc
        assert bus.metrics().rejected == 0  # a close is not a refusal
        assert balanced(sub.statistics())
    finally:
        h.release.set()
        if closer.is_alive():
            closer.join(WAIT)
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("many", [False, True])
def test_a_publish_waiting_for_room_is_told_the_bus_closed_when_close_begins(
    holders: list[Holder], many: bool
) -> None:
    """Room that comes during close's flush is for what was published before it:
    a publish waiting for room gets ``BusClosedError`` at once, not after
    ``block_timeout`` as a ``BackpressureError`` (a close is not a refusal)."""
    bus = EventBus(EventConfig(threads=2, block_timeout=600.0))
    h = holder(holders, hold=lambda e: e.data == 0)
    sub = bus.subscribe("t.*", h, capacity=1, overflow="block")
    outcome: list[BaseException | None] = []
    done = threading.Event()

    batch = [Event(event_type="t.x", data=i) for i in (2, 3)]

    def go() -> None:
        try:
            if many:
                bus.publish_many(batch)
            else:
                bus.publish("t.x", 2)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    # Close waits for the held handler longer than the test waits for the publisher.
    closer = threading.Thread(target=bus.close, kwargs={"timeout": 6 * WAIT})
    try:
        bus.publish("t.x", 0)
        assert h.entered.wait(WAIT)
        bus.publish("t.x", 1)  # the mailbox is full
        assert wait_for(lambda: sub.statistics().queued == 1)
        publisher = threading.Thread(target=go)
        publisher.start()
        closer.start()
        assert done.wait(WAIT), "the waiting publish outlived the start of close"
        assert len(outcome) == 1
        assert isinstance(outcome[0], BusClosedError), outcome
        h.release.set()
        closer.join(WAIT)
        assert not closer.is_alive()
        assert bus.metrics().rejected == 0
        assert [e.data for e in h.seen] == [0, 1]  # what was published before close
    finally:
        h.release.set()
        if closer.is_alive():
            closer.join(WAIT)
        bus.close(timeout=WAIT)


# -- no retry, no dead letter after unsubscribe -------------------------------------


# A failure after unsubscribe() is not retried and does not become a dead
# letter (it counts as dropped), even with no retries left (handler_retries=0,
# the default), where a failure would otherwise be dead-lettered at once.
@pytest.mark.parametrize("kind", ["sync", "sync_timeout", "async"])
def test_failure_after_unsubscribe_is_no_dead_letter(holders: list[Holder], kind: str) -> None:
    bus = EventBus(EventConfig(threads=2))
    try:
        h = holder(holders, fail=True)
        handler: Any = h
        if kind == "async":

            async def handler(event: Event) -> None:
                await asyncio.to_thread(h, event)

        options: dict[str, Any] = {"timeout": 60.0} if kind == "sync_timeout" else {}
        sub = bus.subscribe("t.*", handler, retries=0, **options)
        bus.publish("t.x", 0)
        bus.publish("t.x", 1)
        assert h.entered.wait(WAIT)
        sub.unsubscribe()
        h.release.set()  # the running call fails after unsubscribe returned
        assert wait_for(lambda: sub.statistics().in_flight == 0 and not sub.active)
        st = sub.statistics()
        assert balanced(st), st
        assert st.dead_letters == 0, st
        assert bus.dead_letters() == []
        assert st.dropped == 2, st  # the failed event and the one behind it
        assert [e.data for e in h.seen] == [0]
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("kind", ["sync", "sync_timeout", "async"])
def test_unsubscribe_ends_a_batch_parked_for_a_retry(kind: str) -> None:
    bus = EventBus(EventConfig(threads=2))
    failed = threading.Event()
    calls: list[int] = []
    try:
        if kind == "async":

            async def handler(event: Event) -> None:
                calls.append(event.data)
                failed.set()
                raise RuntimeError("fails")

        else:

            def handler(event: Event) -> None:  # type: ignore[misc]
                calls.append(event.data)
                failed.set()
                raise RuntimeError("fails")

        options: dict[str, Any] = {"retries": 3, "retry_backoff": 120.0}
        if kind == "sync_timeout":
            options["timeout"] = 60.0
        sub = bus.subscribe("t.*", handler, **options)
        bus.publish_many([Event(event_type="t.x", data=i) for i in range(3)])
        assert failed.wait(WAIT)
        assert wait_for(lambda: sub.statistics().in_flight == 3)
        sub.unsubscribe()
        assert wait_for(lambda: sub.statistics().in_flight == 0), sub.statistics()
        st = sub.statistics()
        assert balanced(st), st
        assert (st.dropped, st.dead_letters, st.delivered) == (3, 0, 0), st
        assert calls == [0]  # no retry after unsubscribe
    finally:
        bus.close(timeout=WAIT)


def test_close_gives_up_on_async_retry_wait_at_once() -> None:
    bus = EventBus(EventConfig(threads=2))
    failed = threading.Event()

    async def handler(event: Event) -> None:
        failed.set()
        raise RuntimeError("fails")

    sub = bus.subscribe("t.*", handler, retries=2, retry_backoff=120.0)
    bus.publish("t.x", 1)
    assert failed.wait(WAIT)
    # The handler sets ``failed`` before it raises: wait until its error is counted, so the
    # retry's wait has begun (on a loaded machine close could otherwise come first).
    assert wait_for(lambda: sub.statistics().errors == 1)
    unfinished = bus.close(timeout=0.5)
    st = sub.statistics()
    assert balanced(st), (st, unfinished)
    assert (st.in_flight, st.dead_letters) == (0, 0), st


def test_close_gives_up_on_sync_retry_wait_and_its_figures_are_final() -> None:
    bus = EventBus(EventConfig(threads=2))

    def handler(event: Event) -> None:
        raise RuntimeError("fails")

    sub = bus.subscribe("t.*", handler, retries=2, retry_backoff=120.0)
    for i in range(3):
        bus.publish("t.x", i)
    assert wait_for(lambda: sub.statistics().errors == 1)
    unfinished = bus.close(timeout=0.5)
    st = sub.statistics()
    assert [s.id for s in unfinished] == [sub.id]
    assert balanced(st), (st, unfinished)
    assert (st.in_flight, st.queued, st.dead_letters, st.dropped) == (0, 0, 0, 3), st


def test_close_ends_an_async_batch_between_two_events_and_its_figures_are_final() -> None:
    bus = EventBus(EventConfig(threads=2))
    first = threading.Event()
    release = threading.Event()

    async def handler(event: Event) -> None:
        if event.data == 0:
            first.set()
            # Blocks the loop's thread: close gives up while this event runs, and the
            # next events of the batch are never started.
            release.wait(WAIT)

    sub = bus.subscribe("t.*", handler)
    try:
        for i in range(3):
            bus.publish("t.x", i)
        assert first.wait(WAIT)
        unfinished = bus.close(timeout=0.2)
        assert [s.id for s in unfinished] == [sub.id]
    finally:
        release.set()
    # The handler returns once released and the batch stops before its next event.
    assert wait_for(lambda: sub.statistics().in_flight == 0)
    st = sub.statistics()
    assert balanced(st), st
    assert (st.delivered, st.dropped, st.dead_letters) == (1, 2, 0), st
