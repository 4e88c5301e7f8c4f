"""Edges of the retention floor, cancellable timers, coalesced pattern updates,
subscribe racing close and start-failure cleanup.

Real RocksDB in ``tmp_path``, real ZeroMQ on ipc://, real threads.  Promises checked come
from docs/persistence.md ("Catch-up subscriptions", "Retention"), docs/architecture.md
(timers, handler policies) and docs/cluster.md (subscriptions reach peers).
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pykka
import pytest

from actors import BusClosedError, Event, EventBus, EventConfig, EventQuery, PersistentEventBus
from actors._core import wiring
from actors._core.subscriber import SubscriberActor
from actors._journal import actor as journal_actor
from actors._runtime.dispatcher import DispatchedActor
from actors._runtime.timers import Timers
from tests._cluster_support import ipc, node, request_endpoint
from tests._support import WAIT, Collector, Gate, Recorder, publish_all, wait_for

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)


def stored(bus: EventBus) -> list[int]:
    """Sequences in the journal; a journal turn, so retention has run at its end."""
    return [e.sequence or 0 for e in bus.query(EventQuery())]


def running(function: str) -> bool:
    """Whether some thread is inside ``function`` now (stack introspection, no hook)."""
    for frame in sys._current_frames().values():  # noqa: SLF001
        f = frame
        while f is not None:
            if f.f_code.co_name == function:
                return True
            f = f.f_back
    return False


@pytest.fixture
def retention_every_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)


# -- 1. the retention floor of catch-up subscriptions --------------------------------------


@pytest.mark.usefixtures("retention_every_turn")
def test_several_gated_catch_ups_each_get_every_live_event_then_the_journal_trims_back(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus(max_events=50)
    publish_all(bus, [Event(event_type="f.e", data=i) for i in range(200)])
    gates = [Gate() for _ in range(3)]
    seen = [Recorder() for _ in range(3)]
    subs = []
    for gate, rec in zip(gates, seen, strict=True):

        def handler(event: Event, gate: Gate = gate, rec: Recorder = rec) -> None:
            if not gate.entered.is_set():
                gate(event)
            rec(event)

        subs.append(bus.subscribe("f.*", handler, from_sequence=1))
        assert gate.entered.wait(WAIT)
    live = publish_all(bus, [Event(event_type="f.e", data=f"l{i}") for i in range(300)])
    kept = set(stored(bus))
    assert {e.sequence for e in live} <= kept, "retention deleted what a catch-up must read"
    # One ends by unsubscribing while still in history, the others go live one by one.
    subs[0].unsubscribe()
    gates[0].release.set()
    for gate, rec in zip(gates[1:], seen[1:], strict=True):
        gate.release.set()
        rec.wait_for(live[-1])
        got = rec.sequences
        assert got == sorted(set(got)), "out of order or duplicated"
        assert {e.sequence for e in live} <= set(got)
    bus.flush(timeout=WAIT)  # every catch-up is live: its floor went before this
    last = bus.publish("f.e", "after").get(timeout=WAIT)
    assert stored(bus) == list(range((last.sequence or 0) - 49, (last.sequence or 0) + 1))


@pytest.mark.usefixtures("retention_every_turn")
def test_catch_ups_unsubscribed_at_every_point_leave_no_floor_behind(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus(max_events=20)
    publish_all(bus, [Event(event_type="u.e", data=i) for i in range(600)])  # two pages
    stop = threading.Event()

    def publisher() -> None:
        while not stop.is_set():
            bus.publish("u.e", "noise").get(timeout=WAIT)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    try:
        for i in range(60):
            rec = Recorder()
            sub = bus.subscribe("u.*", rec, from_sequence=1 + (i * 7) % 600)
            if i % 3 == 1:  # unsubscribe after it read something
                wait_for(lambda rec=rec: bool(rec.events))
            elif i % 3 == 2:  # ... or once it is live
                marker = bus.publish("u.e", "m").get(timeout=WAIT)
                rec.wait_for(marker)
            sub.unsubscribe()
    finally:
        stop.set()
        thread.join(WAIT)
    last = bus.publish("u.e", "after").get(timeout=WAIT)
    assert stored(bus) == list(range((last.sequence or 0) - 19, (last.sequence or 0) + 1))


@pytest.mark.usefixtures("retention_every_turn")
def test_a_durable_subscription_resuming_after_restart_keeps_its_floor_until_live(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus()
    first = Recorder()
    done = publish_all(bus, [Event(event_type="d.e", data=i) for i in range(5)])
    sub = bus.subscribe("d.*", first, durable="w", from_sequence=1)
    first.wait_for(done[-1])
    bus.flush(timeout=WAIT)
    sub.unsubscribe()  # its checkpoint stays at 5: the 700 below are missed
    publish_all(bus, [Event(event_type="d.e", data=f"m{i}") for i in range(700)])
    bus.close()
    bus = open_bus(max_events=600)  # trims to 600 at open: a history of two pages left
    gate = Gate()
    seen = Recorder()

    def handler(event: Event) -> None:
        if not gate.entered.is_set():
            gate(event)
        seen(event)

    bus.subscribe("d.*", handler, durable="w", from_sequence=1)
    assert gate.entered.wait(WAIT)
    live = publish_all(bus, [Event(event_type="d.e", data=f"l{i}") for i in range(900)])
    assert {e.sequence for e in live} <= set(stored(bus))
    gate.release.set()
    seen.wait_for(live[-1])
    assert {e.sequence for e in live} <= set(seen.sequences)
    assert seen.sequences == sorted(set(seen.sequences))
    bus.flush(timeout=WAIT)  # every catch-up is live: its floor went before this
    last = bus.publish("d.e", "after").get(timeout=WAIT)
    assert len(stored(bus)) == 600
    assert stored(bus)[-1] == last.sequence


@pytest.mark.usefixtures("retention_every_turn")
def test_old_timestamped_events_published_after_subscribe_reach_the_catch_up(
    open_bus: Callable[..., EventBus],
) -> None:
    """retention_days with caller timestamps out of order: the floor holds whatever their age."""
    bus = open_bus(retention_days=1)
    publish_all(bus, [Event(event_type="o.e", data=i) for i in range(600)])
    gate = Gate()
    seen = Recorder()

    def handler(event: Event) -> None:
        if not gate.entered.is_set():
            gate(event)
        seen(event)

    bus.subscribe("o.*", handler, from_sequence=1)
    assert gate.entered.wait(WAIT)
    stamps = [OLD if i % 2 else NOW for i in range(40)] + [OLD]
    live = publish_all(
        bus, [Event(event_type="o.e", data=f"l{i}", timestamp=t) for i, t in enumerate(stamps)]
    )
    assert {e.sequence for e in live} <= set(stored(bus))
    gate.release.set()
    seen.wait_for(live[-1])
    assert {e.sequence for e in live} <= set(seen.sequences), "an old live event was lost"
    bus.flush(timeout=WAIT)  # every catch-up is live: its floor went before this
    bus.publish("o.e", "after").get(timeout=WAIT)
    left = {e.id for e in bus.query(EventQuery())}
    assert not left & {e.id for e in live if e.timestamp == OLD}, "old events never trimmed"
    assert {e.id for e in live if e.timestamp == NOW} <= left


@pytest.mark.usefixtures("retention_every_turn")
def test_close_during_catch_up_then_reopen_trims_back_to_max_events(
    open_bus: Callable[..., EventBus],
) -> None:
    bus = open_bus(max_events=30)
    publish_all(bus, [Event(event_type="c.e", data=i) for i in range(100)])
    gate = Gate()
    bus.subscribe("c.*", gate, from_sequence=1)
    assert gate.entered.wait(WAIT)
    live = publish_all(bus, [Event(event_type="c.e", data=f"l{i}") for i in range(200)])
    closer = threading.Thread(target=bus.close, kwargs={"timeout": WAIT})
    closer.start()
    gate.release.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    bus = open_bus(max_events=30)
    assert stored(bus) == [e.sequence for e in live[-30:]]


# Regression: Core.subscribe read catchup.live after starting the subscriber; a catch-up that
# went live meanwhile was subscribed at the router twice, and unsubscribe removed one of them.
def test_a_catch_up_live_before_subscribe_returns_is_gone_from_peers_once_unsubscribed(
    tmp_path: Path, nodes: Callable[..., EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = nodes("a", persistent=True, listen=ipc(tmp_path, "a"))
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),))
    assert node(a).wait_for_peers(["b"], WAIT)
    assert node(b).wait_for_peers(["a"], WAIT)
    publish_all(a, [Event(event_type="h.e", data=i) for i in range(3)])
    got = Collector()
    out: dict[str, object] = {}
    # The window is real (seen with sys.setswitchinterval(1e-5) in a plain loop); it is
    # widened here: once subscribe has started the subscriber and lets go of the core's
    # lock, it goes on only when the catch-up is live (it went live on its own thread).
    core = a.core
    real_lock = core._lock  # noqa: SLF001
    started: list[SubscriberActor] = []
    real_start = wiring.start_actor

    def start(actor: DispatchedActor) -> None:
        real_start(actor)
        if isinstance(actor, SubscriberActor):
            started.append(actor)

    class SlowRelease:
        def __enter__(self) -> None:
            real_lock.acquire()

        def __exit__(self, *exc: object) -> None:
            real_lock.release()
            if threading.current_thread() is thread and started:
                catchup = started[0].catchup
                assert catchup is not None
                assert wait_for(lambda: catchup.live)

    monkeypatch.setattr(wiring, "start_actor", start)
    monkeypatch.setattr(core, "_lock", SlowRelease())
    thread = threading.Thread(
        target=lambda: out.setdefault("sub", a.subscribe("h.*", got, from_sequence=1))
    )
    thread.start()
    thread.join(WAIT)
    sub = out["sub"]
    assert wait_for(lambda: len(got.events) == 3)
    sub.unsubscribe()  # type: ignore[attr-defined]
    # A sentinel pattern subscribed last: once b's z events arrive, b has a's latest patterns.
    zs = Collector()
    a.subscribe("z.*", zs)
    count = iter(range(10**6))

    def sentinel_arrived() -> bool:
        b.publish("z.e", next(count))
        return bool(zs.events)

    assert wait_for(sentinel_arrived)
    b.publish("z.e", "sync")  # per-origin order: every sentinel before it has arrived then
    assert wait_for(lambda: "sync" in zs.data)
    before = node(a).statistics().events_received
    b.publish("h.e", "after-unsubscribe")
    b.publish("z.e", "marker")
    assert wait_for(lambda: "marker" in zs.data)
    received = node(a).statistics().events_received - before
    assert received == 1, f"b still sends h.* to a after its only h.* subscription went: {received}"


# -- 2. cancellable timers -----------------------------------------------------------------


def test_cancels_racing_the_timer_firing_run_each_callback_at_most_once() -> None:
    timers = Timers(name="attack-timers")
    try:
        runs = [0] * 3000
        lock = threading.Lock()

        def fn(i: int) -> Callable[[], None]:
            def run() -> None:
                with lock:
                    runs[i] += 1

            return run

        handles = [timers.call_later(0.0, fn(i)) for i in range(len(runs))]
        cancelled_after: list[int] = []

        def cancel_all() -> None:
            for i, h in enumerate(handles):
                timers.cancel(h)
                timers.cancel(h)  # idempotent
                cancelled_after.append(i)

        threads = [threading.Thread(target=cancel_all) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert max(runs) <= 1
        assert timers.pending() == 0
        # Whatever was cancelled before it ran never runs later.
        snapshot = list(runs)
        fired = threading.Event()
        timers.call_later(0.0, fired.set)
        assert fired.wait(WAIT), "the timer thread died"
        assert runs == snapshot
        assert timers.pending() == 0
    finally:
        timers.shutdown()


def test_many_far_deadlines_cancelled_keep_the_heap_small_and_near_ones_fire() -> None:
    timers = Timers(name="attack-far")
    try:
        fired = threading.Event()
        for round_ in range(20):
            handles = [timers.call_later(3600.0 + i, lambda: None) for i in range(500)]
            for h in handles:
                timers.cancel(h)
            assert timers.pending() == 0
            heap = len(timers._heap)  # noqa: SLF001 - the heap itself: it must stay small
            assert heap <= 2 * 64 + 2, f"round {round_}: {heap} entries"
        timers.call_later(0.01, fired.set)
        assert fired.wait(WAIT)
        # A cancelled head with a far deadline, then an earlier one: the earlier one fires.
        head = timers.call_later(3600.0, lambda: None)
        timers.cancel(head)
        early = threading.Event()
        timers.call_later(0.0, early.set)
        assert early.wait(WAIT)
    finally:
        timers.shutdown()


def test_cancel_and_call_after_shutdown_are_quiet_and_run_nothing() -> None:
    timers = Timers(name="attack-shut")
    ran = threading.Event()
    pending = timers.call_later(0.5, ran.set)
    timers.shutdown()
    timers.cancel(pending)
    late = timers.call_later(0.0, ran.set)
    timers.cancel(late)
    timers.cancel(late)
    timers.shutdown()
    assert timers.pending() == 0
    # The shut-down thread never runs them: a fresh Timers proves time passed.
    other = Timers(name="attack-after")
    try:
        seen = threading.Event()
        other.call_later(0.6, seen.set)
        assert seen.wait(WAIT)
        assert not ran.is_set()
    finally:
        other.shutdown()


def test_handler_timeouts_still_reported_after_other_watched_subscriptions_go() -> None:
    with EventBus(EventConfig(threads=2)) as bus:
        # Watched subscriptions with far deadlines, each in a call, then unsubscribed.
        gates = []
        subs = []
        for i in range(20):
            gate = Gate()
            gates.append(gate)
            subs.append(bus.subscribe(f"far{i}.*", gate, timeout=3600.0))
            bus.publish(f"far{i}.e", i)
            assert gate.entered.wait(WAIT)
        assert bus.core.timers.pending() >= 20
        for sub, gate in zip(subs, gates, strict=True):
            sub.unsubscribe()
            gate.release.set()
        assert wait_for(lambda: bus.core.timers.pending() == 0), bus.core.timers.pending()
        # A live subscription with a short timeout: each slow call is reported, re-armed.
        holder: dict[str, object] = {}

        def slow(event: Event) -> None:
            sub = holder["sub"]
            want = event.data
            assert wait_for(lambda: sub.statistics().timeouts >= want)  # type: ignore[attr-defined]

        holder["sub"] = bus.subscribe("slow.*", slow, timeout=0.02)
        for i in (1, 2, 3):
            bus.publish("slow.e", i)
        bus.flush(timeout=WAIT)
        assert holder["sub"].statistics().timeouts == 3  # type: ignore[attr-defined]
        assert bus.metrics().handler_timeouts == 3


# -- 3. coalesced pattern updates to peers -----------------------------------------------


def test_rapid_pattern_churn_leaves_peers_subscribed_to_exactly_the_current_patterns(
    tmp_path: Path, nodes: Callable[..., EventBus]
) -> None:
    a = nodes("a", listen=ipc(tmp_path, "a"))
    b = nodes("b", listen=ipc(tmp_path, "b"), peers=(request_endpoint(a),))
    assert node(a).wait_for_peers(["b"], WAIT)
    assert node(b).wait_for_peers(["a"], WAIT)
    rng = random.Random(7)
    patterns = [f"k{i}.*" for i in range(6)]
    live: dict[str, list[tuple[object, Collector]]] = {p: [] for p in patterns}
    for _ in range(400):
        p = rng.choice(patterns)
        if live[p] and rng.random() < 0.5:
            sub, _ = live[p].pop(rng.randrange(len(live[p])))
            sub.unsubscribe()  # type: ignore[attr-defined]
        else:
            col = Collector()
            live[p].append((a.subscribe(p, col), col))
    # Fixed endings: k0 unsubscribed last, k1 subscribed last, k2 twice then one gone.
    for sub, _ in live["k0.*"]:
        sub.unsubscribe()  # type: ignore[attr-defined]
    live["k0.*"] = []
    for sub, _ in live["k2.*"]:
        sub.unsubscribe()  # type: ignore[attr-defined]
    live["k2.*"] = [(a.subscribe("k2.*", c), c) for c in (Collector(), Collector())]
    gone, _ = live["k2.*"].pop()
    gone.unsubscribe()  # type: ignore[attr-defined]
    col = Collector()
    live["k1.*"].append((a.subscribe("k1.*", col), col))
    zs = Collector()
    a.subscribe("z.*", zs)
    count = iter(range(10**6))

    def sentinel_arrived() -> bool:
        b.publish("z.e", next(count))
        return bool(zs.events)

    assert wait_for(sentinel_arrived)
    b.publish("z.e", "sync")  # per-origin order: every sentinel before it has arrived then
    assert wait_for(lambda: "sync" in zs.data)
    for p in patterns:
        for _, c in live[p]:
            c.events.clear()
    before = node(a).statistics().events_received
    for p in patterns:
        b.publish(p.replace("*", "e"), p)
    b.publish("z.e", "marker")
    assert wait_for(lambda: "marker" in zs.data)
    current = {p for p in patterns if live[p]}
    assert {"k1.*", "k2.*"} <= current
    assert "k0.*" not in current
    for p in patterns:
        for _, c in live[p]:
            assert c.data == [p], f"{p}: {c.data}"
    received = node(a).statistics().events_received - before
    assert received == len(current) + 1, (received, sorted(current))


# -- 4. subscribe racing close -------------------------------------------------------------


def test_subscribes_racing_close_either_work_or_are_refused_and_leave_nothing_running(
    tmp_path: Path,
) -> None:
    # Actors of earlier tests still stopping on a loaded machine are not this bus's.
    earlier = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    bus = PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j")))
    publish_all(bus, [Event(event_type="r.e", data=i) for i in range(50)])
    outcomes: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def subscriber(k: int) -> None:
        go.wait(WAIT)
        for i in range(40):
            try:
                bus.subscribe(
                    "r.*",
                    lambda e: None,
                    from_sequence=1 if (i + k) % 2 else None,
                    dedicated_thread=(i + k) % 3 == 0,
                )
                result = "ok"
            except BusClosedError:
                result = "refused"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=subscriber, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    go.set()
    assert wait_for(lambda: len(outcomes) >= 10)
    bus.close(timeout=WAIT)
    for t in threads:
        t.join(WAIT)
    assert len(outcomes) == 160
    assert "refused" in outcomes
    assert wait_for(
        lambda: (
            not [
                t for t in threading.enumerate() if t.name.endswith("-thread") and "sub-" in t.name
            ]
        )
    )
    leftover = [
        r for r in pykka.ActorRegistry.get_all() if r.is_alive() and r.actor_urn not in earlier
    ]
    assert wait_for(lambda: not [r for r in leftover if r.is_alive()]), leftover


# -- 5. a bus that fails to start ----------------------------------------------------------


@pytest.mark.parametrize("fragment", ["-system-", "journal", "-1"])
def test_a_failed_start_leaves_no_actor_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fragment: str
) -> None:
    real = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if fragment in self.name:
            raise RuntimeError("can't start new thread")
        real(self)

    before = set(pykka.ActorRegistry.get_all())
    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError):
        PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j")), name="atk")
    monkeypatch.undo()
    left = [r for r in pykka.ActorRegistry.get_all() if r not in before]
    assert not left, left
    with PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"))) as bus:
        assert bus.publish("s.e").get(timeout=WAIT).sequence == 1
