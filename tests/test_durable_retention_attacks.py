"""Fault injection on durable and catch-up subscriptions, their checkpoints and retention.

Promises checked (docs/persistence.md "Retention", "Catch-up subscriptions",
"Durable subscriptions"; docs/storage.md "Retention"):

- a durable subscription killed with SIGKILL resumes after the last checkpoint that
  reached the journal: none skipped, order kept, whatever the handler kind (plain,
  ``async def``, dedicated thread), with a pattern and a filter selecting a subset,
  and with events that became dead letters (they count as handled: a checkpoint
  past one means its ``$bus.deadletter`` is journaled);
- a new durable subscription that starts live saves its starting point at once, so
  a kill before its first batch finished loses nothing published meanwhile;
- retention (``max_events`` and ``retention_days``) deletes no event published
  after ``subscribe`` while the subscription is not live (``KeepFrom``), also on
  disk when the process is killed, and trims again once it is live;
- checkpoints are not events: retention that empties the journal keeps them;
- a checkpoint is a sequence: reopened with another pattern or another
  ``from_sequence`` it resumes at the checkpoint plus one;
- a name's checkpoint belongs to its latest subscription: an earlier one still
  live never moves it.

Real RocksDB journals in ``tmp_path`` and real child processes killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import actors._journal.actor as journal_actor
from actors import Event, EventBus, EventConfig, EventFilter, EventQuery, PersistentEventBus
from actors._journal.rocks import RocksStorage
from tests._support import WAIT, Recorder, publish_all, wait_for

ROOT = Path(__file__).resolve().parent.parent
OLD = datetime.now(UTC) - timedelta(days=40)

# -- a child process, written to tmp_path at test time ---------------------------------------

CHILD = r"""
import json, signal, sys, threading
import actors._journal.actor as journal_actor
# A runner started in the background (SIGINT ignored) passes SIG_IGN on: take Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)
from actors import Event, EventConfig, EventFilter, EventQuery, PersistentEventBus

cfg = json.loads(sys.argv[1])
lock = threading.Lock()

def say(text):
    with lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

def mixed(i):
    return Event(
        event_type="a.x" if i % 3 else "b.x",
        data={"i": i},
        priority=0 if i % 5 == 0 else 1,
    )

mode = cfg["mode"]
settings = {}
if mode == "retain":
    journal_actor.RETENTION_INTERVAL = 0.0  # retention at every journal turn
    settings["max_events"] = 50
bus = PersistentEventBus(EventConfig(persistence_path=cfg["path"], **settings))
forever = threading.Event()

if mode == "history":
    kind = cfg["kind"]
    for f in bus.publish_many([mixed(i) for i in range(cfg["count"])]):
        f.get(timeout=60)
    if cfg["publishing"]:
        def publisher():  # keeps publishing through the catch-up, its join and after
            i = cfg["count"]
            while True:
                for f in bus.publish_many([mixed(i + k) for k in range(25)]):
                    f.get(timeout=60)
                i += 25
        threading.Thread(target=publisher, daemon=True).start()
    if kind == "async":
        async def handler(event):
            say(f"h {event.sequence}")
    elif kind == "dead":
        def handler(event):
            if event.data["i"] % 7 == 3:
                raise RuntimeError("always fails")
            say(f"h {event.sequence}")
    else:
        def handler(event):
            say(f"h {event.sequence}")
    bus.subscribe(
        "a.*", handler, durable="w", from_sequence=1, filter=EventFilter(min_priority=1),
        dedicated_thread=kind == "thread", retries=0,
    )
    say("subscribed")
elif mode == "blocked-live":
    def handler(event):
        say(f"h {event.sequence}")
        forever.wait()  # never finishes its first batch
    bus.subscribe("a.*", handler, durable="w", dedicated_thread=True)
    say("subscribed")
    for i in range(20):
        say(f"ack {bus.publish('a.x', {'i': i}).get(timeout=60).sequence}")
    say("done")
elif mode == "retain":
    for f in bus.publish_many([Event(event_type="a.x", data=i) for i in range(200)]):
        f.get(timeout=60)
    def handler(event):
        say(f"h {event.sequence}")
        forever.wait()  # stuck in its first history page: never live
    bus.subscribe("a.*", handler, durable="w", from_sequence=1, dedicated_thread=True)
    say("subscribed")
    for k in range(12):
        fs = bus.publish_many([Event(event_type="a.x", data=f"{k}-{j}") for j in range(50)])
        say("ack " + " ".join(str(f.get(timeout=60).sequence) for f in fs))
    say(f"stored {len(bus.query(EventQuery()))}")
    say("done")
elif mode == "sigint":
    bus.close()
    try:
        with PersistentEventBus(EventConfig(persistence_path=cfg["path"])) as bus:
            for f in bus.publish_many([Event(event_type="a.x", data=i) for i in range(3000)]):
                f.get(timeout=60)
            def handler(event):
                say(f"h {event.sequence}")
            bus.subscribe("a.*", handler, durable="w", from_sequence=1)
            say("subscribed")
            forever.wait()
    except KeyboardInterrupt:
        say("closed")
        raise SystemExit(0)
forever.wait()
"""


class Kid:
    """A child process printing lines; the parent waits on them and kills it with SIGKILL."""

    def __init__(self, tmp_path: Path, **config: object) -> None:
        script = tmp_path / "durable_attack_child.py"
        script.write_text(CHILD)
        self.err = tmp_path / f"child-{len(list(tmp_path.glob('child-*')))}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), json.dumps(config)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                cwd=ROOT,
            )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith("\n"):  # a line cut by the kill: never acknowledged
                break
            with self._cond:
                self.lines.append(raw.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_until(self, condition: Callable[[list[str]], bool], timeout: float = WAIT) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._eof or condition(self.lines), timeout)
            ok = condition(self.lines)
        assert ok, f"the child never got there; stderr:\n{self.err.read_text()}"

    def kill9(self) -> list[str]:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT)
        assert self.proc.returncode == -signal.SIGKILL
        with self._cond:
            assert self._cond.wait_for(lambda: self._eof, WAIT)
            return list(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def kids() -> Iterator[list[Kid]]:
    started: list[Kid] = []
    yield started
    for kid in started:
        kid.close()


def numbers(lines: list[str], prefix: str) -> list[int]:
    return [int(n) for line in lines if line.startswith(prefix) for n in line.split()[1:]]


def index_of(event: Event) -> int:
    data = event.data
    assert isinstance(data, dict)
    i = data["i"]
    assert isinstance(i, int)
    return i


def count_handled(n: int) -> Callable[[list[str]], bool]:
    return lambda lines: sum(1 for line in lines if line.startswith("h ")) >= n


def checkpoint_of(path: Path, name: str = "w") -> int | None:
    storage = RocksStorage(str(path), read_only=True)
    try:
        return storage.get_checkpoint(f"sub:{name}")
    finally:
        storage.close()


def resume(
    path: Path, pattern: str, marker: Event, *, flt: EventFilter | None = None
) -> tuple[list[Event], list[int], list[Event]]:
    """Reopen (no retention), resume durable ``w``; return (stored, resumed, dead letters)."""
    bus = PersistentEventBus(EventConfig(persistence_path=str(path)))
    try:
        stored = bus.query(EventQuery(event_types=[pattern]))
        letters = [d.event for d in bus.dead_letters()]
        rec = Recorder()
        bus.subscribe(pattern, rec, durable="w", from_sequence=1, filter=flt)
        last = bus.publish(marker).get(timeout=WAIT)
        rec.wait_for(last, timeout=WAIT)
        bus.flush(WAIT)
        assert rec.sequences[-1] == last.sequence
        return stored, rec.sequences[:-1], letters
    finally:
        bus.close(timeout=30)


# -- SIGKILL of a durable subscription mid-history -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "publishing", "kill_at"),
    [
        ("sync", False, 520),
        ("async", False, 520),
        ("thread", False, 520),
        ("dead", False, 520),
        ("sync", True, 700),
        ("sync", True, 1000),
        ("async", True, 1600),
    ],
)
def test_kill9_mid_catch_up_with_pattern_filter_and_dead_letters_skips_nothing(
    tmp_path: Path, kids: list[Kid], kind: str, publishing: bool, kill_at: int
) -> None:
    """Killed past its first history page (in history, or around and after its join while
    publishers run): the checkpoint covers only events handled or dead-lettered (their
    ``$bus.deadletter`` journaled), and the restart delivers every match after it, in order."""
    path = tmp_path / "journal"
    kid = Kid(
        tmp_path, mode="history", path=str(path), kind=kind, count=1500, publishing=publishing
    )
    kids.append(kid)
    # Past the first page (512 a.x events, about 410 of them pass the filter).
    kid.wait_until(count_handled(kill_at))
    handled = numbers(kid.kill9(), "h ")
    checkpoint = checkpoint_of(path)

    flt = EventFilter(min_priority=1)
    marker = Event(event_type="a.x", data={"i": -1}, priority=1)
    stored, resumed, letters = resume(path, "a.*", marker, flt=flt)
    matching = [e for e in stored if e.priority >= 1]
    assert len(matching) >= 800
    failing = {e.sequence for e in matching if kind == "dead" and index_of(e) % 7 == 3}
    succeeding = [e.sequence or 0 for e in matching if e.sequence not in failing]
    # In order, nothing skipped, nothing twice, nothing outside the pattern and filter.
    # (A handler may run before its event is journaled: one the kill kept off the disk
    # was never acknowledged, and its sequence is handed out again.)
    last_stored = max(e.sequence or 0 for e in stored)
    handled = [s for s in handled if s <= last_stored]
    assert handled == succeeding[: len(handled)]
    # The first page's batch finished before the second page was read: it was saved.
    assert checkpoint is not None
    dead = {e.sequence for e in letters}
    covered = [e.sequence for e in matching if (e.sequence or 0) <= checkpoint]
    unaccounted = [s for s in covered if s not in set(handled) and s not in dead]
    assert unaccounted == [], f"checkpoint {checkpoint} passes unhandled {unaccounted[:5]}"
    if kind == "dead":
        assert {s for s in failing if (s or 0) <= checkpoint} <= dead
        assert dead, "no dead letter was journaled"
    # Resumes at the checkpoint plus one: every match after it, in order, once.
    assert resumed == [e.sequence for e in matching if (e.sequence or 0) > checkpoint]


@pytest.mark.slow
def test_kill9_before_a_new_live_durable_finished_its_first_batch_loses_nothing(
    tmp_path: Path, kids: list[Kid]
) -> None:
    """A new durable subscription (live) blocked in its first event: its starting point was
    saved at once, so every acknowledged event comes back after the kill."""
    path = tmp_path / "journal"
    kid = Kid(tmp_path, mode="blocked-live", path=str(path))
    kids.append(kid)
    kid.wait_until(lambda lines: "done" in lines)
    lines = kid.kill9()
    acked = numbers(lines, "ack ")
    assert len(acked) == 20
    assert numbers(lines, "h ") == acked[:1]
    assert checkpoint_of(path) == acked[0] - 1
    stored, resumed, _ = resume(path, "a.*", Event(event_type="a.x", data="end"))
    assert [e.sequence for e in stored] == acked
    assert resumed == acked


@pytest.mark.slow
def test_kill9_of_a_lagging_durable_under_count_retention_keeps_what_it_had_to_read(
    tmp_path: Path, kids: list[Kid]
) -> None:
    """max_events=50, retention at every journal turn, a durable catch-up stuck in its
    first history event while 600 events are published after ``subscribe``: none of them
    is trimmed (the journal holds far more than 50), still so on disk after SIGKILL, and
    the restart delivers them all, in order."""
    path = tmp_path / "journal"
    kid = Kid(tmp_path, mode="retain", path=str(path))
    kids.append(kid)
    kid.wait_until(lambda lines: "done" in lines and any(x.startswith("h ") for x in lines))
    lines = kid.kill9()
    after = numbers(lines, "ack ")
    assert len(after) == 600
    stored_then = numbers(lines, "stored ")
    assert stored_then, "the child never counted its journal"
    assert stored_then[0] >= 600, stored_then  # the floor held: not trimmed to 50
    assert checkpoint_of(path) is None  # its first batch never finished
    stored, resumed, _ = resume(path, "a.*", Event(event_type="a.x", data="end"))
    kept = {e.sequence for e in stored}
    lost = [s for s in after if s not in kept]
    assert lost == [], f"retention trimmed {len(lost)} unread event(s), e.g. {lost[:3]}"
    assert resumed == [e.sequence for e in stored]


@pytest.mark.slow
def test_sigint_mid_catch_up_closes_cleanly_and_resumes_exactly_after_the_last_event(
    tmp_path: Path, kids: list[Kid]
) -> None:
    """SIGINT in the middle of a durable catch-up: the ``with`` block's close flushes
    (the catch-up finishes and its last checkpoint is written); the restart delivers
    nothing twice."""
    path = tmp_path / "journal"
    kid = Kid(tmp_path, mode="sigint", path=str(path))
    kids.append(kid)
    kid.wait_until(count_handled(600))
    kid.proc.send_signal(signal.SIGINT)
    assert kid.proc.wait(timeout=WAIT) == 0, kid.err.read_text()
    kid.wait_until(lambda lines: "closed" in lines)
    handled = numbers(kid.lines, "h ")
    assert handled == list(range(1, 3001))
    assert checkpoint_of(path) == 3000
    stored, resumed, _ = resume(path, "a.*", Event(event_type="a.x", data="end"))
    assert len(stored) == 3000
    assert resumed == []


# -- age retention while a catch-up lags -------------------------------------------------------


@pytest.fixture
def fast_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention at every journal turn instead of every 60 s."""
    monkeypatch.setattr(journal_actor, "RETENTION_INTERVAL", 0.0)


@pytest.mark.parametrize("durable", [None, "aged"])
def test_age_retention_keeps_old_stamped_events_published_after_subscribe(
    open_bus: Callable[..., EventBus], fast_retention: None, durable: str | None
) -> None:
    """retention_days=1: events stamped 40 days ago but published after ``subscribe``
    returned are kept until the catch-up is live, all delivered, then trimmed."""
    bus = open_bus(retention_days=1)
    history = publish_all(bus, [Event(event_type="r.e", data=i) for i in range(600)])
    entered, release = threading.Event(), threading.Event()
    rec = Recorder()

    def handler(event: Event) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(WAIT)
        rec(event)

    bus.subscribe("r.*", handler, from_sequence=1, durable=durable)
    assert entered.wait(WAIT)  # in its first history page of two
    old = publish_all(
        bus, [Event(event_type="r.e", data=f"old{i}", timestamp=OLD) for i in range(300)]
    )
    # A journal turn after those writes: retention ran with the floor in place.
    assert {e.id for e in old} <= {e.id for e in bus.query(EventQuery())}
    release.set()
    marker = bus.publish("r.e", "end").get(timeout=WAIT)
    rec.wait_for(marker)
    assert [e.id for e in rec.events] == [e.id for e in [*history, *old, marker]]
    bus.flush(WAIT)  # live now: the floor is gone, the next turns trim the old ones
    bus.publish("r.e", "trim").get(timeout=WAIT)
    old_ids = {e.id for e in old}
    assert wait_for(lambda: not old_ids & {e.id for e in bus.query(EventQuery())})
    assert len(bus.query(EventQuery())) == 602


def test_one_catch_up_released_keeps_the_floor_of_another_still_in_history(
    open_bus: Callable[..., EventBus], fast_retention: None
) -> None:
    """Two catch-ups hold retention back; unsubscribing the later one lifts only its own
    floor: the earlier one, still in history, still gets everything published after it."""
    bus = open_bus(max_events=100)
    publish_all(bus, [Event(event_type="h.e", data=i) for i in range(100)])
    blocks = [(threading.Event(), threading.Event()) for _ in range(2)]
    rec = Recorder()

    def blocking(which: int) -> Callable[[Event], None]:
        entered, release = blocks[which]

        def handler(event: Event) -> None:
            if not entered.is_set():
                entered.set()
                assert release.wait(WAIT)
            if which == 0:
                rec(event)

        return handler

    bus.subscribe("h.*", blocking(0), from_sequence=1)
    assert blocks[0][0].wait(WAIT)
    first = publish_all(bus, [Event(event_type="h.e", data=f"x{i}") for i in range(200)])
    later = bus.subscribe("h.*", blocking(1), from_sequence=1)
    assert blocks[1][0].wait(WAIT)
    later.unsubscribe()
    blocks[1][1].set()
    second = publish_all(bus, [Event(event_type="h.e", data=f"y{i}") for i in range(200)])
    kept = {e.id for e in bus.query(EventQuery())}  # a journal turn: retention ran
    assert {e.id for e in [*first, *second]} <= kept
    blocks[0][1].set()
    rec.wait_for(second[-1])
    got = [e.id for e in rec.events]
    assert got[-400:] == [e.id for e in [*first, *second]]
    assert len(got) == len(set(got))


# -- checkpoints, names, patterns ------------------------------------------------------------


def test_checkpoint_survives_retention_that_empties_the_journal(
    open_bus: Callable[..., EventBus], journal: str
) -> None:
    """Checkpoints are not events: a journal trimmed to nothing still resumes the name
    after its checkpoint (an event published before the resubscribe is delivered)."""
    bus = open_bus()
    done = publish_all(bus, [Event(event_type="k.e", data=i) for i in range(30)])
    rec = Recorder()
    bus.subscribe("k.*", rec, durable="keep", from_sequence=1)
    rec.wait_for(done[-1])
    bus.close(timeout=WAIT)
    assert checkpoint_of(Path(journal), "keep") == 30

    bus = open_bus(retention_days=1e-9)  # retention at open deletes every event
    assert bus.query(EventQuery()) == []
    before = bus.publish("k.e", "before").get(timeout=WAIT)
    assert before.sequence == 31
    again = Recorder()
    bus.subscribe("k.*", again, durable="keep")  # no from_sequence: only the checkpoint
    after = bus.publish("k.e", "after").get(timeout=WAIT)
    again.wait_for(after)
    assert again.sequences == [31, 32]


def test_durable_reopened_with_another_pattern_or_from_sequence_resumes_at_the_checkpoint(
    open_bus: Callable[..., EventBus], journal: str
) -> None:
    """The checkpoint is the last handled sequence, whatever pattern handled it."""
    bus = open_bus()
    kinds = ["p.a" if i < 40 and i % 2 else "p.b" for i in range(60)]
    events = publish_all(bus, [Event(event_type=t, data=i) for i, t in enumerate(kinds)])
    last_a = max(e.sequence or 0 for e in events if e.event_type == "p.a")
    rec = Recorder()
    bus.subscribe("p.a", rec, durable="d", from_sequence=1)
    rec.wait_for(next(e for e in events if e.sequence == last_a))
    bus.close(timeout=WAIT)
    assert checkpoint_of(Path(journal), "d") == last_a

    bus = open_bus()
    other = Recorder()
    bus.subscribe("p.b", other, durable="d", from_sequence=1)
    marker = bus.publish("p.b", "end").get(timeout=WAIT)
    other.wait_for(marker)
    want = [e.sequence for e in events if e.event_type == "p.b" and (e.sequence or 0) > last_a]
    assert other.sequences == [*want, marker.sequence]
    bus.close(timeout=WAIT)

    # A from_sequence far ahead is only for a name without a checkpoint.
    bus = open_bus()
    third = Recorder()
    bus.subscribe("p.*", third, durable="d", from_sequence=10**6)
    new = bus.publish("p.a", "new").get(timeout=WAIT)
    third.wait_for(new)
    assert third.sequences == [new.sequence]


def test_an_earlier_live_subscription_of_a_name_never_moves_its_checkpoint(
    open_bus: Callable[..., EventBus],
) -> None:
    """Two live subscriptions of one name: the latest owns the checkpoint.  The earlier one
    handles everything, the latest is stuck in its first event when close gives up on it:
    the restart resumes at that event, not after the earlier one's progress."""
    bus = open_bus()
    early = Recorder()
    bus.subscribe("job.*", early, durable="d")
    bus.flush(WAIT)
    entered, release = threading.Event(), threading.Event()

    def stuck(event: Event) -> None:
        entered.set()
        release.wait(WAIT)

    bus.subscribe("job.*", stuck, durable="d")
    events = publish_all(bus, [Event(event_type="job.run", data=i) for i in range(50)])
    early.wait_for(events[-1])  # the earlier one's batches end: its saves must not count
    assert entered.wait(WAIT)
    try:
        bus.close(timeout=0.2)  # gives up on the stuck one
    finally:
        release.set()

    bus = open_bus()
    rec = Recorder()
    bus.subscribe("job.*", rec, durable="d")
    marker = bus.publish("job.run", "end").get(timeout=WAIT)
    rec.wait_for(marker)
    assert rec.sequences == [*(e.sequence for e in events), marker.sequence]
