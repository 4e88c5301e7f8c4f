"""Fault injection on ``publish`` / ``publish_many`` admission (SPEC 4, 4.1, 9, 10).

What the docs promise (``EventBus.publish_many`` docstring, docs/architecture.md
"Decisions where the specification is silent", "BLOCK without parking the
router", "close(timeout) keeps one deadline"):

- validation, rate limiting, the BLOCK wait and the closed check apply to the
  whole batch before anything is published; a batch that fits the room of the
  BLOCK mailboxes is one piece: all or nothing;
- a larger batch goes in pieces: a refused later piece fails its futures and
  the rest's, the earlier pieces are published in order; every event not
  published counts in ``rejected`` and gives its rate-limit token back;
- sequences are assigned by the router when an event is accepted: the journal
  and every subscriber see a gap-free sequence;
- a publish waiting for room when ``close`` begins ends with
  ``BusClosedError`` (not counted in ``rejected``); ``unsubscribe`` releases it;
- a handler publishing into its own full BLOCK subscription waits until
  ``block_timeout`` and gets ``BackpressureError``;
- a BLOCK mailbox holds ``capacity`` plus at most about one event per
  concurrent publisher.

No sleeps: handlers wait on ``threading.Event``s, timeouts are hang guards only.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import (
    BackpressureError,
    BusClosedError,
    Event,
    EventBus,
    EventConfig,
    EventQuery,
    EventTooLargeError,
    InvalidEventError,
    NodeConfig,
    PersistentEventBus,
    RateLimitedError,
)
from tests._support import wait_for

HANG = 30.0  # hang guard for every wait; reaching it fails the test


# --------------------------------------------------------------------------- helpers


class Gated:
    """A handler that records ``event.data`` and blocks on ``gate`` while it is clear."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seen: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.seen.append(event)
        self.entered.set()
        self.gate.wait(HANG * 2)

    @property
    def data(self) -> list[object]:
        with self._lock:
            return [e.data for e in self.seen]


@pytest.fixture
def world() -> Iterator[dict[str, list]]:
    """Gates released and buses closed at teardown, whatever the test did."""
    things: dict[str, list] = {"gates": [], "buses": []}
    yield things
    for gate in things["gates"]:
        gate.set()
    for bus in things["buses"]:
        with contextlib.suppress(Exception):
            bus.close(timeout=10)


def gated(world: dict[str, list]) -> Gated:
    h = Gated()
    world["gates"].append(h.gate)
    return h


def persistent(world: dict[str, list], path: Path, **cfg: object) -> EventBus:
    bus = PersistentEventBus(
        EventConfig(persistence_path=str(path), durability="async", **cfg)  # type: ignore[arg-type]
    )
    world["buses"].append(bus)
    return bus


def memory(world: dict[str, list], **cfg: object) -> EventBus:
    bus = EventBus(EventConfig(**cfg))  # type: ignore[arg-type]
    world["buses"].append(bus)
    return bus


def journal_of(path: Path) -> list[Event]:
    """Every stored event (``$bus`` ones included), read by reopening the journal."""
    bus = PersistentEventBus(EventConfig(persistence_path=str(path), read_only=True))
    try:
        return bus.query(EventQuery(), timeout=HANG)
    finally:
        bus.close(timeout=HANG)


def assert_gap_free(events: list[Event]) -> None:
    seqs = [e.sequence for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """Return whether ``thread``'s stack is inside ``function`` now (introspection only)."""
    frame = sys._current_frames().get(thread.ident)  # noqa: SLF001
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def outcome(future) -> object:
    """The event a future resolved to, or the type of the typed error it failed with."""
    try:
        return future.get(HANG)
    except (BackpressureError, BusClosedError) as exc:
        return type(exc)


def fill(bus: EventBus, h: Gated, capacity: int, event_type: str = "a.x") -> None:
    """Park ``h`` on one event, then fill its BLOCK mailbox; the router has marked it full."""
    bus.publish(event_type, "parked").get(HANG)
    assert h.entered.wait(HANG)
    for i in range(capacity):
        bus.publish(event_type, f"fill{i}").get(HANG)
    bus.metrics()  # a round trip through the router: every publish before it was routed


# --------------------------------------------------------------------------- validation


def test_invalid_member_refuses_the_whole_batch_and_takes_no_sequence(world, tmp_path) -> None:
    """A reserved type, a non-Event or a failing iterable anywhere in a batch: nothing published."""
    path = tmp_path / "j"
    bus = persistent(world, path)
    seen: list[Event] = []
    bus.subscribe("**", seen.append)
    first = bus.publish("a.x", "first").get(HANG)

    def broken():
        yield Event(event_type="a.x", data="gen0")
        yield Event(event_type="a.x", data="gen1")
        raise RuntimeError("the iterable broke")

    with pytest.raises(InvalidEventError):
        bus.publish_many(
            [
                Event(event_type="a.x", data="r0"),
                Event(event_type="$bus.fake", data="r1"),
                Event(event_type="a.x", data="r2"),
            ]
        )
    with pytest.raises(TypeError):
        bus.publish_many([Event(event_type="a.x", data="t0"), "a.x", Event(event_type="a.x")])
    with pytest.raises(RuntimeError):
        bus.publish_many(broken())
    last = bus.publish("a.x", "last").get(HANG)
    assert last.sequence == first.sequence + 1
    bus.flush(HANG)
    assert [e.data for e in seen] == ["first", "last"]
    m = bus.metrics()
    assert (m.published, m.rejected, m.rate_limited) == (2, 0, 0)
    bus.close(timeout=HANG)
    stored = journal_of(path)
    assert [e.data for e in stored] == ["first", "last"]
    assert_gap_free(stored)


def test_oversized_member_refuses_the_whole_batch_on_a_node(world) -> None:
    """On a node an event too large for a frame fails ``publish_many`` before anything is sent."""
    bus = EventBus(node=NodeConfig(name="solo", max_frame_bytes=66560))
    world["buses"].append(bus)
    seen: list[object] = []
    bus.subscribe("a.*", lambda e: seen.append(e.data))
    first = bus.publish("a.x", "first").get(HANG)
    batch = [
        Event(event_type="a.x", data="ok0"),
        Event(event_type="a.x", data="x" * 100_000),
        Event(event_type="a.x", data="ok2"),
    ]
    with pytest.raises(EventTooLargeError):
        bus.publish_many(batch)
    last = bus.publish("a.x", "last").get(HANG)
    assert last.sequence == first.sequence + 1
    bus.flush(HANG)
    assert seen == ["first", "last"]
    assert bus.metrics().published == 2


def test_same_event_twice_in_a_batch_gets_two_sequences_and_is_not_mutated(world) -> None:
    bus = memory(world)
    seen: list[Event] = []
    bus.subscribe("a.*", seen.append)
    ev = Event(event_type="a.x", data="twice")
    a, b = (f.get(HANG) for f in bus.publish_many([ev, ev]))
    assert ev.sequence is None  # the caller's event is not stamped in place
    assert (a.id, b.id) == (ev.id, ev.id)
    assert b.sequence == a.sequence + 1
    bus.flush(HANG)
    assert [e.sequence for e in seen] == [a.sequence, b.sequence]


# --------------------------------------------------------------------------- BLOCK + rate limit


def test_block_refused_batch_is_not_journaled_and_gives_tokens_back(world, tmp_path) -> None:
    """A batch that fits when room comes, refused after ``block_timeout``: all or nothing."""
    path = tmp_path / "j"
    # Burst 5: parked + fill take 2, the refused batch 2 (given back), then 3 pass.
    bus = persistent(world, path, block_timeout=0.2, rate_limit=0.001, burst=5)
    h = gated(world)
    sub = bus.subscribe("a.*", h, capacity=1, overflow="block")
    fill(bus, h, 1)
    accepted = sub.statistics().accepted
    before = bus.metrics()
    with pytest.raises(BackpressureError):
        bus.publish_many([Event(event_type="a.x", data="r0"), Event(event_type="a.x", data="r1")])
    after = bus.metrics()
    assert after.rejected == before.rejected + 2
    assert after.published == before.published
    assert after.rate_limited == 0
    assert sub.statistics().accepted == accepted
    h.gate.set()
    bus.flush(HANG)
    futures = bus.publish_many([Event(event_type="b.x", data=f"p{i}") for i in range(3)])
    assert [f.get(HANG).data for f in futures] == ["p0", "p1", "p2"]
    with pytest.raises(RateLimitedError):  # the bucket is empty now: it was exactly 5
        bus.publish("b.x", "one too many")
    bus.flush(HANG)
    assert h.data == ["parked", "fill0"]
    bus.close(timeout=HANG)
    stored = journal_of(path)
    assert_gap_free(stored)
    assert [e.data for e in stored if not e.event_type.startswith("$")] == [
        "parked",
        "fill0",
        "p0",
        "p1",
        "p2",
    ]


def test_later_piece_refused_publishes_a_journaled_prefix(world, tmp_path) -> None:
    """A batch larger than the room goes in pieces; a refused piece leaves a gap-free prefix."""
    path = tmp_path / "j"
    bus = persistent(world, path, block_timeout=0.2)
    h = gated(world)
    other: list[object] = []
    sub = bus.subscribe("a.*", h, capacity=2, overflow="block")
    bus.subscribe("**", lambda e: other.append(e.data))
    bus.publish("a.x", "parked").get(HANG)
    assert h.entered.wait(HANG)
    batch = [Event(event_type="a.x", data=i) for i in range(5)]
    results = [outcome(f) for f in bus.publish_many(batch)]
    assert [r.data for r in results[:2]] == [0, 1]
    assert results[2:] == [BackpressureError] * 3
    assert results[1].sequence == results[0].sequence + 1
    assert bus.metrics().rejected == 3
    assert sub.statistics().accepted == 3
    h.gate.set()
    bus.flush(HANG)
    assert h.data == ["parked", 0, 1]
    assert other == ["parked", 0, 1]
    bus.close(timeout=HANG)
    stored = journal_of(path)
    assert_gap_free(stored)
    assert [e.data for e in stored if not e.event_type.startswith("$")] == ["parked", 0, 1]


# --------------------------------------------------------------------------- close / unsubscribe


def _run(target) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def body() -> None:
        try:
            out.append(target())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def test_close_ends_batches_waiting_for_room_with_bus_closed(world, tmp_path) -> None:
    """One whole batch and one later piece wait for room; ``close`` ends both, uncounted."""
    path = tmp_path / "j"
    bus = persistent(world, path, block_timeout=300)  # a timeout would be BackpressureError
    ha, hb = gated(world), gated(world)
    bus.subscribe("a.*", ha, capacity=2, overflow="block")
    bus.subscribe("b.*", hb, capacity=2, overflow="block")
    fill(bus, ha, 2, "a.x")  # full: a batch for it waits as a whole
    bus.publish("b.x", "b-parked").get(HANG)
    assert hb.entered.wait(HANG)
    bus.publish("b.x", "b-fill0").get(HANG)  # room for one more: a batch goes in pieces
    whole, whole_out = _run(
        lambda: bus.publish_many([Event(event_type="a.x", data=f"w{i}") for i in range(2)])
    )
    pieces, pieces_out = _run(
        lambda: bus.publish_many([Event(event_type="b.x", data=f"p{i}") for i in range(4)])
    )
    assert wait_for(lambda: waiting_in(whole, "wait_for_room"), HANG)
    assert wait_for(lambda: waiting_in(pieces, "wait_for_room"), HANG)
    closer, close_out = _run(lambda: bus.close(timeout=HANG))
    whole.join(HANG)
    pieces.join(HANG)
    assert not whole.is_alive()
    assert not pieces.is_alive()
    ha.gate.set()
    hb.gate.set()
    closer.join(HANG * 2)
    assert not closer.is_alive()
    assert close_out == [()]
    assert isinstance(whole_out[0], BusClosedError), whole_out
    results = [outcome(f) for f in pieces_out[0]]  # type: ignore[union-attr]
    assert results[0].data == "p0"
    assert results[1:] == [BusClosedError] * 3
    assert bus.metrics().rejected == 0  # a close is not a refusal
    assert ha.data == ["parked", "fill0", "fill1"]
    assert hb.data == ["b-parked", "b-fill0", "p0"]
    stored = journal_of(path)
    assert_gap_free(stored)
    user = [e.data for e in stored if not e.event_type.startswith("$")]
    assert user == ["parked", "fill0", "fill1", "b-parked", "b-fill0", "p0"]


def test_unsubscribe_releases_a_batch_waiting_for_room(world) -> None:
    bus = memory(world, block_timeout=300)
    h = gated(world)
    sub = bus.subscribe("a.*", h, capacity=1, overflow="block")
    seen: list[object] = []
    bus.subscribe("a.*", lambda e: seen.append(e.data))
    fill(bus, h, 1)
    t, out = _run(
        lambda: bus.publish_many([Event(event_type="a.x", data=f"w{i}") for i in range(3)])
    )
    assert wait_for(lambda: waiting_in(t, "wait_for_room"), HANG)
    sub.unsubscribe()
    t.join(HANG)
    assert not t.is_alive()
    futures = out[0]
    assert not isinstance(futures, BaseException), futures
    events = [f.get(HANG) for f in futures]  # type: ignore[union-attr]
    assert [e.data for e in events] == ["w0", "w1", "w2"]
    assert [e.sequence for e in events] == list(range(events[0].sequence, events[0].sequence + 3))
    h.gate.set()
    bus.flush(HANG)
    assert seen == ["parked", "fill0", "w0", "w1", "w2"]
    assert bus.metrics().rejected == 0


# --------------------------------------------------------------------------- re-entrant publish


def test_handler_publish_many_into_its_own_full_block_subscription(world) -> None:
    """Documented: it waits until ``block_timeout``, then ``BackpressureError``; no deadlock."""
    bus = memory(world, block_timeout=2.0, threads=2)
    capacity = 3
    done = threading.Event()
    futures: list[object] = []
    handled: list[object] = []

    def handler(event: Event) -> None:
        handled.append(event.data)
        if event.data == "start":
            try:
                futures.extend(
                    bus.publish_many(
                        [Event(event_type="loop.x", data=i) for i in range(capacity + 3)]
                    )
                )
            except BaseException as exc:
                futures.append(exc)
            finally:
                done.set()

    bus.subscribe("loop.*", handler, capacity=capacity, overflow="block")
    bus.publish("loop.start", "start").get(HANG)
    assert done.wait(HANG)
    assert not any(isinstance(f, BaseException) for f in futures), futures
    results = [outcome(f) for f in futures]
    assert [r.data for r in results[:capacity]] == list(range(capacity))
    assert results[capacity:] == [BackpressureError] * 3
    bus.flush(HANG)
    assert handled == ["start", *range(capacity)]
    m = bus.metrics()
    assert m.rejected == 3
    assert bus.publish("loop.x", "after").get(HANG).data == "after"  # the bus still flows
    bus.flush(HANG)
    assert handled[-1] == "after"


# --------------------------------------------------------------------------- concurrency


def test_concurrent_publishers_with_unsubscribe_and_close(world, tmp_path) -> None:
    """Threads publish (singly and in batches) into tiny BLOCK/REJECT/DROP_OLDEST mailboxes
    while one BLOCK subscription is unsubscribed and then the bus is closed."""
    path = tmp_path / "j"
    bus = persistent(world, path, block_timeout=0.05, threads=2)
    lock = threading.Lock()
    seen: dict[str, list[Event]] = {"keep": [], "gone": [], "rej": [], "drop": []}
    gone_going = threading.Event()

    def recorder(name: str):
        def handle(event: Event) -> None:
            with lock:
                seen[name].append(event)
                if name == "gone" and len(seen["gone"]) >= 5:
                    gone_going.set()

        return handle

    keep = bus.subscribe("t.*", recorder("keep"), capacity=2, overflow="block")
    gone = bus.subscribe("t.*", recorder("gone"), capacity=1, overflow="block")
    rej = bus.subscribe("t.*", recorder("rej"), capacity=3, overflow="reject")
    drop = bus.subscribe("t.*", recorder("drop"), capacity=1, overflow="drop_oldest")
    publishers, per = 4, 90
    barrier = threading.Barrier(publishers + 1)
    halfway = threading.Semaphore(0)
    outcomes: dict[int, list[tuple[int, object]]] = {k: [] for k in range(publishers)}
    crashes: list[BaseException] = []

    def publisher(k: int) -> None:
        barrier.wait(HANG)
        try:
            i = 0
            while i < per:
                if k % 2 == 0:
                    batch = [Event(event_type="t.x", data=[k, i])]
                else:
                    batch = [Event(event_type="t.x", data=[k, i + j]) for j in range(3)]
                try:
                    got = [bus.publish(batch[0])] if k % 2 == 0 else bus.publish_many(batch)
                    outcomes[k].extend((i + j, f) for j, f in enumerate(got))
                except (BackpressureError, BusClosedError) as exc:
                    outcomes[k].extend((i + j, type(exc)) for j in range(len(batch)))
                i += len(batch)
                if i == per // 2:
                    halfway.release()
        except BaseException as exc:
            crashes.append(exc)
            halfway.release()

    threads = [
        threading.Thread(target=publisher, args=(k,), daemon=True) for k in range(publishers)
    ]
    for t in threads:
        t.start()
    barrier.wait(HANG)
    assert gone_going.wait(HANG)
    gone.unsubscribe()
    for _ in range(publishers):
        assert halfway.acquire(timeout=HANG)
    assert bus.close(timeout=HANG) == ()
    for t in threads:
        t.join(HANG)
        assert not t.is_alive()
    assert not crashes, crashes
    # Every batch gave back the room its pieces reserved, whatever ended it.
    assert bus._core.guard._reserved == {}  # noqa: SLF001

    ok: dict[tuple[int, int], Event] = {}
    refused = 0
    for k, rows in outcomes.items():
        assert [i for i, _ in rows] == list(range(per)), k
        last_seq = 0
        for i, res in rows:
            if isinstance(res, type):
                refused += res is BackpressureError
                continue
            result = outcome(res)  # every future resolves: a value or a typed error
            if isinstance(result, type):
                refused += result is BackpressureError
                continue
            assert result.data == [k, i]
            assert result.sequence > last_seq, (k, i)  # per-publisher order of sequences
            last_seq = result.sequence
            ok[(k, i)] = result
    by_seq = sorted(ok.values(), key=lambda e: e.sequence)
    # BLOCK (kept) and REJECT lose nothing they accepted; every one is handled in order.
    for name in ("keep", "rej"):
        assert [e.id for e in seen[name]] == [e.id for e in by_seq], name
    for name in ("gone", "drop"):
        seqs = [e.sequence for e in seen[name]]
        assert seqs == sorted(seqs), name
        assert {e.id for e in seen[name]} <= {e.id for e in by_seq}, name
    for sub in (keep, gone, rej, drop):
        s = sub.statistics()
        assert s.queued == 0, s
        assert s.in_flight == 0, s
        assert s.accepted == s.delivered + s.dropped + s.expired + s.dead_letters, s
    assert keep.statistics().accepted == len(ok) == rej.statistics().accepted
    assert drop.statistics().accepted == len(ok)
    m = bus.metrics()
    assert m.rejected == refused
    stored = journal_of(path)
    assert_gap_free(stored)
    assert m.published == len(stored)
    assert [e.id for e in stored if e.event_type == "t.x"] == [e.id for e in by_seq]


def test_concurrent_batches_keep_block_mailbox_near_capacity(world) -> None:
    """docs/architecture.md: a BLOCK mailbox holds ``capacity`` plus at most about one event
    per concurrent publisher.  Two batch publishers act while the router is busy (a slow
    filter of another subscription, which runs on the router), as under load: they share
    the room (the first batch's piece reserves it), so one batch lands and the other
    waits for that piece, then for room, until the handler takes events."""
    bus = memory(world, block_timeout=HANG, threads=2)
    h = gated(world)
    stalled, release = threading.Event(), threading.Event()
    world["gates"].append(release)

    def slow_filter(event: Event) -> bool:
        if event.data == "stall":
            stalled.set()
            release.wait(HANG * 2)
        return True

    capacity = 4
    sub = bus.subscribe("a.*", h, capacity=capacity, overflow="block")
    bus.subscribe("s.*", lambda e: None, filter=slow_filter)
    bus.publish("a.x", "parked").get(HANG)
    assert h.entered.wait(HANG)
    bus.publish("s.x", "stall")
    assert stalled.wait(HANG)
    runs = [
        _run(
            lambda k=k: bus.publish_many(
                [Event(event_type="a.x", data=[k, i]) for i in range(capacity)]
            )
        )
        for k in range(2)
    ]
    # One sends its piece (the router is busy); the other waits for the room it reserved.
    assert wait_for(
        lambda: (
            sorted(waiting_in(t, "_send") for t, _ in runs) == [False, True]
            and any(waiting_in(t, "wait_unreserved") for t, _ in runs)
        ),
        HANG,
    )
    release.set()

    def one_landed_one_waits() -> bool:
        done = [t for t, _ in runs if not t.is_alive()]
        waiting = [t for t, _ in runs if waiting_in(t, "wait_for_room")]
        return len(done) == 1 and len(waiting) == 1

    assert wait_for(one_landed_one_waits, HANG), (
        f"expected one batch published and one waiting for room; the mailbox holds "
        f"{sub.statistics().queued} of capacity {capacity}"
    )
    bus.metrics()  # every piece sent so far is routed
    queued = sub.statistics().queued
    assert queued <= capacity + 1, f"BLOCK mailbox of capacity {capacity} held {queued}"
    h.gate.set()  # the handler takes events: the waiting batch goes on
    for t, _ in runs:
        t.join(HANG)
        assert not t.is_alive()
    for _, out in runs:
        assert len(out) == 1, out
        assert isinstance(out[0], list), out
        datas = [f.get(HANG).data for f in out[0]]  # every event of both batches published
        assert datas == [[datas[0][0], i] for i in range(capacity)]
    bus.flush(HANG)
    got = [d for d in h.data if d != "parked"]
    for k in range(2):
        assert [d for d in got if d[0] == k] == [[k, i] for i in range(capacity)]
