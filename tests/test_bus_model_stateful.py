"""A stateful model of one real ``EventBus`` (docs/topics.md, docs/architecture.md).

Hypothesis drives one bus through random subscribes (patterns from the whole grammar
of docs/topics.md: literals, ``*``, ``**``, globs, braces, classes, ``$`` patterns),
unsubscribes (mid-stream, repeated, of one of two equal patterns), publishes,
``publish_many``, publishes from two threads at once, poison events whose dead
letters are the bus's own ``$bus.deadletter`` events, and flushes.  After each
flush every subscription's deliveries are checked against a model whose matcher is
written here from the grammar (not the product's, nor ``tests/_support``'s): exactly
the matching events, once each, in sequence and per-publisher order, nothing handled
that began after ``unsubscribe()`` returned, and an ended subscription's deliveries a
gap-free prefix of what was routed to it.  The statistics equations the docs state
("Statistics account for every event", docs/observability.md) are checked against
the model too.  A second machine runs the same on a journal and adds catch-up
subscriptions (``from_sequence``), whose history read has to apply the same grammar,
the ``$`` rule included, and close-and-reopen of the journal, after which sequences
go on and a catch-up reads across the restart (docs/persistence.md).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from actors import (
    BusFuture,
    Event,
    EventBus,
    EventConfig,
    PersistentEventBus,
    Subscription,
    SubscriptionStatistics,
)
from tests._support import WAIT, wait_for

# -- the reference matcher, written from docs/topics.md ---------------------------------

WILD = "*?[{"


def expand(segment: str) -> list[str]:
    """Expand every ``{a,b}`` group of a glob segment (braces do not nest)."""
    variants = [""]
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "[":  # a class holds no brace: copy it whole
            j = segment.index("]", i + 1)
            variants = [v + segment[i : j + 1] for v in variants]
            i = j + 1
        elif c == "{":
            j = segment.index("}", i)
            options = segment[i + 1 : j].split(",")
            variants = [v + o for v in variants for o in options]
            i = j + 1
        else:
            variants = [v + c for v in variants]
            i += 1
    return variants


Token = tuple[str, Any]


def tokens(glob: str) -> tuple[Token, ...]:
    """``?``, ``*``, a class ``(negated, ((lo, hi), ...))`` or a literal character."""
    out: list[Token] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "[":
            j = glob.index("]", i + 1)
            body = glob[i + 1 : j]
            negated = body.startswith("!")
            body = body[1:] if negated else body
            members: list[tuple[str, str]] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":  # a range; '-' last is literal
                    members.append((body[k], body[k + 2]))
                    k += 3
                else:
                    members.append((body[k], body[k]))
                    k += 1
            out.append(("class", (negated, tuple(members))))
            i = j + 1
        else:
            out.append((c, None) if c in "?*" else ("lit", c))
            i += 1
    return tuple(out)


def fits(toks: tuple[Token, ...], text: str) -> bool:
    @cache
    def at(i: int, j: int) -> bool:
        if i == len(toks):
            return j == len(text)
        kind, arg = toks[i]
        if kind == "*":  # any run, none included, within the segment
            return any(at(i + 1, k) for k in range(j, len(text) + 1))
        if j == len(text):
            return False
        ch = text[j]
        if kind == "?":
            ok = True
        elif kind == "lit":
            ok = ch == arg
        else:
            negated, members = arg
            ok = any(lo <= ch <= hi for lo, hi in members) != negated
        return ok and at(i + 1, j + 1)

    return at(0, 0)


def segment_matches(segment: str, part: str) -> bool:
    if not any(c in WILD for c in segment):
        return segment == part
    return any(fits(tokens(variant), part) for variant in expand(segment))


def model_matches(pattern: str, event_type: str) -> bool:
    wanted, parts = pattern.split("."), event_type.split(".")
    if event_type.startswith("$") and wanted[0][0] in WILD:  # the $ rule
        return False

    @cache
    def at(i: int, j: int) -> bool:
        if i == len(wanted):
            return j == len(parts)
        if wanted[i] == "**":
            return any(at(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and segment_matches(wanted[i], parts[j]) and at(i + 1, j + 1)

    return at(0, 0)


def test_the_model_matcher_agrees_with_the_docs_table() -> None:
    """The model's matcher is itself checked on the docs' examples, so it can be trusted."""
    table = [
        ("user.*", ["user.login"], ["user", "user.login.failed"]),
        ("*.error", ["db.error"], ["error", "a.b.error"]),
        ("**.error", ["error", "a.error", "a.b.error"], ["error.x"]),
        ("agent.**", ["agent", "agent.x", "agent.x.y"], ["agents.x"]),
        ("a.**.b", ["a.b", "a.x.b", "a.x.y.b"], ["a.x.c"]),
        ("**.x.**", ["x", "a.x", "x.b", "a.x.b"], ["a.b"]),
        ("**", ["a", "a.$b"], ["$bus.deadletter"]),
        ("tool.{start,end}", ["tool.start", "tool.end"], ["tool.stop"]),
        ("user.log?n", ["user.login", "user.logon"], ["user.logon.x"]),
        ("user.log*", ["user.log", "user.login", "user.logout"], ["user.login.x"]),
        ("v[0-9].*", ["v1.ready"], ["vx.ready"]),
        ("$bus.**", ["$bus.deadletter", "$bus.backpressure.started"], ["bus.deadletter"]),
        ("$b*.deadletter", ["$bus.deadletter"], []),
        ("log{,in}", ["log", "login"], ["logi"]),
        ("{log*,auth?}", ["logout", "auth1"], ["auth"]),
        ("[!a].[-a].[a-]", ["b.-.a"], ["a.-.a", "b.b.a"]),
        ("[^a]", ["^"], ["b"]),
    ]
    for pattern, yes, no in table:
        for t in yes:
            assert model_matches(pattern, t), (pattern, t)
        for t in no:
            assert not model_matches(pattern, t), (pattern, t)
    for pattern in ("*.deadletter", "**.deadletter", "?bus.x", "[$]bus.x", "{$bus,a}.x"):
        assert not model_matches(pattern, "$bus.deadletter".replace("deadletter", "x"))
        assert not model_matches(pattern, "$bus.deadletter")


# -- strategies ---------------------------------------------------------------------------

POISON = "zz"  # published only by publish_poison; its handler fails: each is a dead letter
COMMON = ["a", "b", "ab"]
RARE = ["é", "$a", "a$", "deadletter"]  # '$' later in a type is ordinary
GLOBS = ["a*", "*b", "?", "??", "[ab]", "[!a]", "[a-b]", "[-a]", "[$a]?", "{a,b}", "a{,b}",
         "{a*,?b}", "{ab,é}", "*$*", "[é]", "z?", "[^a]*"]  # fmt: skip
DOLLAR_FIRST = ["$bus", "$b*", "$*", "$bu?", "$bus{,x}", "[$]bus", "?bus", "{$bus,a}", "*", "**"]
DOLLAR_REST = ["deadletter", "dead*", "*", "**", "{x,deadletter}"]


def one(common: list[str], rare: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(common), st.sampled_from(common), st.sampled_from(rare))


event_types = (
    st.lists(one(COMMON, RARE), min_size=1, max_size=3)
    .filter(lambda parts: not parts[0].startswith("$"))
    .map(".".join)
)
user_segment = st.one_of(
    st.sampled_from(["*", "**", *COMMON]), st.sampled_from(GLOBS), st.sampled_from(RARE)
)
user_patterns = (
    st.lists(user_segment, min_size=1, max_size=3)
    .filter(lambda parts: not parts[0].startswith("$"))
    .map(".".join)
)
dollar_patterns = st.builds(
    lambda first, rest: ".".join([first, *rest]),
    st.sampled_from(DOLLAR_FIRST),
    st.lists(st.sampled_from(DOLLAR_REST), min_size=1, max_size=2),
)
any_patterns = st.one_of(user_patterns, user_patterns, dollar_patterns)


@st.composite
def patterns_for(draw: st.DrawFn, event_type: str) -> str:
    """A pattern made from a type: each segment kept, or put as a wildcard or a glob."""
    out: list[str] = []
    for part in event_type.split("."):
        choices = [part, "*", "**", part[0] + "*", "?" * len(part), "{" + part + ",x}"]
        choices += [f"[{part[0]}]{part[1:]}", f"[!{part[0]}]{part[1:]}", "**." + part]
        out.append(draw(st.sampled_from(choices)))
    if draw(st.booleans()):
        out.append(draw(st.sampled_from(["**", "*", "a"])))
    return ".".join(out)


# -- the model ----------------------------------------------------------------------------


@dataclass
class Sent:
    """One event the model knows was published (a user event or a dead letter)."""

    key: str
    event_type: str
    publisher: str
    index: int  # its place in its publisher's order
    future: BusFuture[Event] | None
    sequence: int | None = None


class Probe:
    """A cheap handler: appends under a lock; notes calls that began after the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[Event] = []
        self.late: list[Event] = []
        self.ended = False  # set once unsubscribe() has returned

    def __call__(self, event: Event) -> None:
        with self.lock:
            if self.ended:
                self.late.append(event)
            self.got.append(event)


def poison(event: Event) -> None:
    raise RuntimeError(f"poison {event.data}")


def key_of(event: Event) -> str:
    if event.event_type == "$bus.deadletter":
        data: Any = event.data
        return f"d{data['event']['data']}"
    return f"u{event.data}"


@dataclass
class Tracked:
    sub: Subscription
    probe: Probe
    pattern: str
    expected: list[str] = field(default_factory=list)  # keys routed to it, as known
    catch_up: bool = False
    ended: bool = False


def at_rest(s: SubscriptionStatistics) -> bool:
    return s.queued == 0 and s.in_flight == 0


class BusModel(RuleBasedStateMachine):
    persistent = False

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="bus-model-") if self.persistent else None
        self.sent: dict[str, Sent] = {}
        self.counts: dict[str, int] = {}  # per publisher
        self.tokens = 0
        self.open()

    def open(self) -> None:
        """Open the bus (again, on the same journal): a fresh set of subscriptions."""
        if self.folder is not None:
            config = EventConfig(persistence_path=f"{self.folder}/journal", threads=2)
            self.bus: EventBus = PersistentEventBus(config)
        else:
            self.bus = EventBus(EventConfig(threads=2))
        self.before = len(self.sent)  # the events earlier buses published
        self.tracked: list[Tracked] = []
        self.poison_sub = self.bus.subscribe(POISON, poison, retries=0)
        self.poisoned = 0
        # Sees every dead letter, so the model learns their sequences.
        self.watch = self.track("$bus.**")

    def teardown(self) -> None:
        try:
            self.bus.close(timeout=WAIT)
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    # -- bookkeeping --------------------------------------------------------------------

    def track(self, pattern: str, **options: Any) -> Tracked:
        probe = Probe()
        sub = self.bus.subscribe(pattern, probe, **options)
        assert sub.pattern == pattern
        assert sub.active
        t = Tracked(sub, probe, pattern, catch_up="from_sequence" in options)
        self.tracked.append(t)
        return t

    def note(self, event_type: str, publisher: str) -> Event:
        """Make the next user event of ``publisher`` (its data is its unique token)."""
        self.tokens += 1
        return Event(event_type=event_type, data=self.tokens, source=publisher)

    def record(self, event: Event, future: BusFuture[Event]) -> None:
        publisher = event.source or "?"
        index = self.counts.get(publisher, 0)
        self.counts[publisher] = index + 1
        key = f"u{event.data}"
        self.sent[key] = Sent(key, event.event_type, publisher, index, future)
        self.route(key)

    def route(self, key: str) -> None:
        """The event ``key`` was published: every live matching subscription is owed it."""
        for t in self.tracked:
            if not t.ended and model_matches(t.pattern, self.sent[key].event_type):
                t.expected.append(key)

    def sequence(self, key: str) -> int:
        sent = self.sent[key]
        if sent.sequence is None:
            assert sent.future is not None
            published = sent.future.get(timeout=WAIT)
            assert published.event_type == sent.event_type
            assert published.sequence is not None
            sent.sequence = published.sequence
        return sent.sequence

    def live(self) -> list[Tracked]:
        return [t for t in self.tracked if not t.ended and t is not self.watch]

    # -- rules ----------------------------------------------------------------------------

    @initialize(chosen=st.lists(any_patterns, min_size=1, max_size=5))
    def subscribe_several(self, chosen: list[str]) -> None:
        for pattern in chosen:
            self.track(pattern)

    @rule(pattern=any_patterns)
    def subscribe(self, pattern: str) -> None:
        self.track(pattern)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def subscribe_near_a_published_type(self, data: st.DataObject) -> None:
        """A pattern made from a type already published, so that it often matches."""
        seen = sorted({s.event_type for s in self.sent.values()})
        self.track(data.draw(patterns_for(data.draw(st.sampled_from(seen)))))

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    def subscribe_an_equal_pattern(self, data: st.DataObject) -> None:
        """A second subscription with the same text: the trie holds both, each gets all."""
        self.track(data.draw(st.sampled_from([t.pattern for t in self.live()])))

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), twice=st.booleans())
    def unsubscribe(self, data: st.DataObject, twice: bool, chosen: Tracked | None = None) -> None:
        t = chosen or data.draw(st.sampled_from(self.live()))
        t.sub.unsubscribe()
        if twice:
            t.sub.unsubscribe()  # idempotent
        with t.probe.lock:
            t.probe.ended = True
        t.ended = True
        assert not t.sub.active, "active after unsubscribe() returned"

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), size=st.integers(20, 300))
    def unsubscribe_behind_a_burst(self, data: st.DataObject, size: int) -> None:
        """Unsubscribe while a burst it matches is queued: the rest is discarded, no gap."""
        t = data.draw(st.sampled_from(self.live()))
        seen = sorted({s.event_type for s in self.sent.values()} - {POISON, "$bus.deadletter"})
        fitting = [e for e in seen if model_matches(t.pattern, e)] or ["a"]
        event_type = data.draw(st.sampled_from(fitting))
        self.publish_many([event_type] * size)
        self.unsubscribe(data, twice=False, chosen=t)

    @rule(event_type=event_types)
    def publish(self, event_type: str) -> None:
        event = self.note(event_type, "main")
        self.record(event, self.bus.publish(event))

    @rule(types=st.lists(event_types, min_size=1, max_size=6))
    def publish_many(self, types: list[str]) -> None:
        events = [self.note(t, "main") for t in types]
        futures = self.bus.publish_many(events)
        assert len(futures) == len(events)
        for event, future in zip(events, futures, strict=True):
            self.record(event, future)

    @rule(
        first=st.lists(event_types, min_size=1, max_size=6),
        second=st.lists(event_types, min_size=1, max_size=6),
        batched=st.booleans(),
    )
    def publish_from_two_threads(self, first: list[str], second: list[str], batched: bool) -> None:
        """Two publishers at once: each one's order must hold in every subscription."""
        step = len(self.counts)
        plans = [
            [self.note(t, f"t{step}-{n}") for t in types] for n, types in enumerate((first, second))
        ]
        start = threading.Barrier(2)
        done: list[list[tuple[Event, BusFuture[Event]]]] = [[], []]

        def run(n: int) -> None:
            start.wait(WAIT)
            events = plans[n]
            if batched and n == 0:
                done[n] = list(zip(events, self.bus.publish_many(events), strict=True))
            else:
                done[n] = [(e, self.bus.publish(e)) for e in events]

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        assert [len(d) for d in done] == [len(p) for p in plans], "a publisher thread failed"
        for pairs in done:
            for event, future in pairs:
                self.record(event, future)

    @rule(count=st.integers(1, 2))
    def publish_poison(self, count: int) -> None:
        """Each poison event becomes a ``$bus.deadletter`` event, routed like any other."""
        events = [self.note(POISON, "main") for _ in range(count)]
        for event in events:
            self.record(event, self.bus.publish(event))
        self.bus.flush(WAIT)
        self.bus.flush(WAIT)  # the dead letters the first flush's handlers made
        self.poisoned += count
        letters = {key_of(e): e for e in self.watch.probe.got}
        for event in events:
            key = f"d{event.data}"
            assert key in letters, f"no dead letter for poison {event.data}"
            self.sent[key] = Sent(key, "$bus.deadletter", "bus", 0, None, letters[key].sequence)
            self.route(key)

    @precondition(lambda self: self.persistent)
    @rule(pattern=any_patterns, data=st.data())
    def subscribe_from_sequence(self, pattern: str, data: st.DataObject) -> None:
        """A catch-up subscription: every stored matching event from ``n`` on, then live."""
        known = sorted(self.sent, key=self.sequence)
        top = self.sequence(known[-1]) if known else 0
        start = data.draw(st.integers(1, top + 1))
        t = self.track(pattern, from_sequence=start)
        t.expected = [
            k
            for k in known
            if self.sequence(k) >= start and model_matches(pattern, self.sent[k].event_type)
        ]

    @precondition(lambda self: self.persistent)
    @rule(data=st.data())
    def reopen(self, data: st.DataObject) -> None:
        """Close and open the journal again: history and sequences carry on; catch up."""
        self.flush()
        assert self.bus.close(timeout=WAIT) == (), "close gave up on a cheap handler"
        assert not any(t.sub.active for t in self.tracked)
        self.check_bus(sum(t.sub.statistics().dropped for t in self.tracked), closed=True)
        self.open()
        seen = sorted({s.event_type for s in self.sent.values()}) or ["a"]
        near = patterns_for(data.draw(st.sampled_from(seen)))
        self.subscribe_from_sequence(data.draw(st.one_of(near, any_patterns)), data)

    @rule()
    def flush(self) -> None:
        self.bus.flush(WAIT)
        self.check()

    # -- checks -------------------------------------------------------------------------

    @invariant()
    def every_subscription_balances(self) -> None:
        for t in self.tracked:
            s = t.sub.statistics()
            placed = s.delivered + s.expired + s.dead_letters + s.dropped + s.queued + s.in_flight
            assert s.accepted == placed, s

    def check_order(self, t: Tracked, keys: list[str], got: list[Event]) -> None:
        assert len(set(keys)) == len(keys), f"{t.pattern!r}: a duplicate in {keys}"
        for key, event in zip(keys, got, strict=True):
            sent = self.sent.get(key)
            assert sent is not None, f"{t.pattern!r} got an event never published: {event}"
            assert event.event_type == sent.event_type
            assert event.sequence == self.sequence(key), (key, event.sequence)
        sequences = [e.sequence or 0 for e in got]
        assert sequences == sorted(sequences), f"{t.pattern!r}: out of sequence {sequences}"
        for publisher in {self.sent[k].publisher for k in keys}:
            order = [self.sent[k].index for k in keys if self.sent[k].publisher == publisher]
            assert order == sorted(order), f"{t.pattern!r}: {publisher} out of order: {order}"

    def check(self) -> None:
        sequences = [self.sequence(k) for k in self.sent]
        assert len(set(sequences)) == len(sequences), "two events share a sequence"
        ended_dropped = 0
        for t in self.tracked:
            with t.probe.lock:
                got, late = list(t.probe.got), list(t.probe.late)
            keys = [key_of(e) for e in got]
            self.check_order(t, keys, got)
            assert late == [], f"{t.pattern!r}: handled after unsubscribe() returned: {late}"
            if not t.ended:
                missing = [k for k in t.expected if k not in set(keys)]
                extra = [k for k in keys if k not in set(t.expected)]
                info = {k: self.sent[k].event_type for k in missing + extra}
                where = f"{t.pattern!r} (catch-up={t.catch_up})"
                assert (missing, extra) == ([], []), (
                    f"{where}: missing/extra {missing} {extra}: {info}"
                )
                s = t.sub.statistics()
                assert (s.queued, s.in_flight, s.dropped, s.errors) == (0, 0, 0, 0), s
                assert (s.delivered, s.accepted) == (len(got), len(t.expected)), (t.pattern, s)
                continue
            # Ended: a gap-free prefix, in sequence, of what was routed before the end.
            assert set(keys) <= set(t.expected), (t.pattern, keys, t.expected)
            routed = sorted(t.expected, key=self.sequence)
            assert keys == routed[: len(keys)], f"{t.pattern!r}: a gap: {keys} of {routed}"
            assert wait_for(lambda: at_rest(t.sub.statistics())), t.sub.statistics()  # noqa: B023
            s = t.sub.statistics()
            assert (s.delivered, s.errors) == (len(got), 0), (t.pattern, s, len(got))
            assert s.accepted == s.delivered + s.dropped, s
            if not t.catch_up:
                assert s.accepted == len(t.expected), (t.pattern, s, t.expected)
            ended_dropped += s.dropped
        self.check_bus(ended_dropped)

    def check_bus(self, ended_dropped: int, *, closed: bool = False) -> None:
        m = self.bus.metrics()
        delivered = sum(len(t.probe.got) for t in self.tracked)
        assert m.published == len(self.sent) - self.before, (m.published, self.before)
        assert (m.delivered, m.dropped) == (delivered, ended_dropped), m
        assert m.dead_letters == m.handler_errors == self.poisoned, m
        assert m.rejected == m.expired == 0, m
        live = {t.sub.id for t in self.tracked if not t.ended} | {self.poison_sub.id}
        live = set() if closed else live
        assert m.subscriptions == len(live), (m.subscriptions, live)
        assert {s.id for s in m.per_subscription} == live
        if not closed:
            assert {s.id for s in self.bus.subscriptions()} == live
        if self.persistent:
            assert m.journal_written == m.published, m


FAST = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestBusModel = BusModel.TestCase
TestBusModel.settings = FAST


class JournalBusModel(BusModel):
    persistent = True


TestJournalBusModel = JournalBusModel.TestCase
TestJournalBusModel.settings = settings(FAST, max_examples=20, stateful_step_count=25)
