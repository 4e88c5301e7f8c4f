"""Random subscribe/unsubscribe/publish sequences over three real nodes, checked against a model.

Three buses in one process, joined over ZeroMQ on 127.0.0.1 (a mesh, then the
same through a ``Broker``).  Each seeded run goes in rounds:

1. *ops*: on random nodes, subscribe a random pattern (``docs/topics.md``),
   unsubscribe, ``publish``, ``publish_many``;
2. *sync*: every node ``wait_for_peers`` the others (``docs/cluster.md``, "When
   delivery starts"): every subscription made so far is in force from then on;
3. *barrier*: every event the model says must have arrived has arrived, each
   node published a sentinel that every other node's sentinel subscription
   received, every bus flushed; then the deliveries are checked;
4. *probe*: with no subscription changing, every node publishes a batch of
   random types, then another barrier, and the wire is checked: a node
   receives an event only if one of its patterns' literal prefixes starts its
   type ("Matching only"), so a pattern nobody on a node wants any more is no
   longer sent there.

The model (written from the docs, with its own matcher and literal prefix):
for a subscription S on node X, an event of origin O matching S's pattern

- must reach S once when it was published after S was in force (local: after
  ``subscribe`` returned; remote: after the sync that followed it) and before
  the last barrier ahead of S's ``unsubscribe`` (events still queued at
  ``unsubscribe`` are discarded, ``docs/architecture.md``);
- may reach S when it was published before that (remote only: "the first
  events of a subscription added at runtime may include a few published just
  before it") or between that barrier and the ``unsubscribe``;
- never reaches S otherwise: a local event published before ``subscribe``
  (the router's FIFO), any event after ``unsubscribe`` returned (no handler
  call starts then but the one that may be running).

Whatever reaches S reaches it once, in per-origin order.  Figures:
``gaps == gaps_recovered + gaps_unrecovered + gaps_open``, nothing unrecovered,
rejected or dropped on the wire, and per subscription ``accepted == delivered
+ expired + dead_letters + dropped + queued + in_flight`` (an unsubscribed one:
nothing queued or in flight, what it did not handle counted in ``dropped``).
"""

from __future__ import annotations

import functools
import random
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from actors import Event, EventBus, Subscription
from actors._cluster.broker import Broker
from actors._cluster.streams import Inbound
from tests._cluster_support import WAIT, Until, request_endpoint
from tests._cluster_support import node as bridge
from tests._support import WAIT as BRIEF
from tests._support import wait_for

NAMES = ("a", "b", "c")
SENTINEL = "zz"
"""The sentinel type; every node keeps a subscription of exactly it."""

SEGMENTS = ("a", "b", "ab", "ba", "a1", "x-y")
GLOBS = "a* *b ? ?? [ab] [ab]* [!b]* {a,b} {a,ab} a{,1} x-? {a*,b} b? [a-b]1"
GLOB_SEGMENTS = tuple(GLOBS.split())


# -- the grammar, from docs/topics.md --------------------------------------------------


def _class(body: str) -> str:
    negate = body.startswith("!")
    body = body[1:] if negate else body
    chars: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            chars.extend(chr(c) for c in range(ord(body[k]), ord(body[k + 2]) + 1))
            k += 3
        else:
            chars.append(body[k])
            k += 1
    return "[" + ("^" if negate else "") + "".join(re.escape(c) for c in chars) + "]"


def _glob(segment: str) -> str:
    """The regex of one pattern segment that is not ``**``."""
    out: list[str] = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "?":
            out.append("[^.]")
        elif c == "*":
            out.append("[^.]*")
        elif c == "[":
            j = segment.index("]", i)
            out.append(_class(segment[i + 1 : j]))
            i = j
        elif c == "{":
            j = segment.index("}", i)
            alternatives = segment[i + 1 : j].split(",")
            out.append("(?:" + "|".join(_glob(a) for a in alternatives) + ")")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@functools.cache
def matches(pattern: str, event_type: str) -> bool:
    """Whether ``pattern`` matches ``event_type`` (no ``$`` types are published here)."""
    p = pattern.split(".")
    t = event_type.split(".")
    regexes = [None if s == "**" else re.compile(_glob(s)) for s in p]

    @functools.cache
    def at(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(t)
        regex = regexes[i]
        if regex is None:  # ** : zero or more segments
            return at(i + 1, j) or (j < len(t) and at(i, j + 1))
        return j < len(t) and regex.fullmatch(t[j]) is not None and at(i + 1, j + 1)

    return at(0, 0)


def _lead(segment: str) -> str:
    out = ""
    for i, c in enumerate(segment):
        if c in "*?[":
            return out
        if c == "{":
            alternatives = segment[i + 1 : segment.index("}", i)].split(",")
            leads = [_lead(a) for a in alternatives]
            common = min(leads, key=len)
            while not all(lead.startswith(common) for lead in leads):
                common = common[:-1]
            return out + common
        out += c
    return out


def literal_prefix(pattern: str) -> str:
    """The literal prefix by the rule of docs/topics.md ("Literal prefixes")."""
    segments = pattern.split(".")
    literals: list[str] = []
    for k, s in enumerate(segments):
        if not any(c in s for c in "*?[{"):
            literals.append(s)
            continue
        if s == "**" and k == len(segments) - 1:
            return ".".join(literals)
        return "".join(f"{lit}." for lit in literals) + _lead(s)
    return ".".join(literals)


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("user.log*", "user.log", True),
        ("user.log*", "user.login.x", False),
        ("a.**.b", "a.b", True),
        ("**.x.**", "x", True),
        ("**.x.**", "a.b", False),
        ("log{,in}", "log", True),
        ("v[0-9].*", "v1.ready", True),
        ("[!a]x", "bx", True),
        ("[!a]x", "ax", False),
        ("*.error", "a.b.error", False),
        ("agent.**", "agent", True),
        ("agent.**", "agents.x", False),
    ],
)
def test_the_model_matcher_follows_the_documented_table(
    pattern: str, event_type: str, expected: bool
) -> None:
    assert matches(pattern, event_type) is expected


def test_the_model_literal_prefix_follows_the_documented_table() -> None:
    table = {
        "a.b": "a.b",
        "workflow.*.complete": "workflow.",
        "user.log?n": "user.log",
        "tool.{start,stop}": "tool.st",
        "agent.**": "agent",
        "agent.**.x": "agent.",
        "*.error": "",
        "**": "",
        "**.error": "",
    }
    assert {p: literal_prefix(p) for p in table} == table


# -- the model -----------------------------------------------------------------------------


@dataclass
class Pub:
    origin: str
    n: int
    type: str
    t: int


@dataclass(eq=False)
class Sub:
    node: str
    pattern: str
    t: int  # when subscribe returned
    handle: Subscription | None = None
    in_force: float = float("inf")  # the sync after it
    ended: bool = False
    unsub_t: float = float("inf")
    barrier_before_unsub: float = float("inf")
    got: list[tuple[str, int, str]] = field(default_factory=list)
    late: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: Event) -> None:
        data = event.data
        n = data.get("n") if isinstance(data, dict) else None
        origin = event.origin or ""
        with self.lock:
            if self.ended:
                self.late.append((origin, n if isinstance(n, int) else -1))
            self.got.append((origin, n if isinstance(n, int) else -1, event.event_type))

    def mandatory(self, pub: Pub) -> bool:
        if not matches(self.pattern, pub.type) or pub.t >= self.barrier_before_unsub:
            return False
        return pub.t > (self.t if pub.origin == self.node else self.in_force)

    def allowed(self, pub: Pub) -> bool:
        if not matches(self.pattern, pub.type) or pub.t > self.unsub_t:
            return False
        return pub.origin != self.node or pub.t > self.t


class Run:
    """Three node buses, the ops on them and the model of what each subscription gets."""

    def __init__(self, buses: dict[str, EventBus], rng: random.Random) -> None:
        self.buses = buses
        self.rng = rng
        self.clock = 0
        self.pubs: dict[tuple[str, int], Pub] = {}
        self.counter = dict.fromkeys(NAMES, 0)
        self.subs: list[Sub] = []
        self.last_barrier = 0
        self.rounds_checked = 0
        for name in NAMES:
            self.subscribe(name, SENTINEL)

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    # -- ops

    def subscribe(self, name: str, pattern: str) -> None:
        sub = Sub(name, pattern, 0)
        sub.handle = self.buses[name].subscribe(pattern, sub)
        sub.t = self.tick()
        self.subs.append(sub)

    def unsubscribe(self, sub: Sub) -> None:
        sub.barrier_before_unsub = self.last_barrier
        sub.unsub_t = self.tick()
        assert sub.handle is not None
        sub.handle.unsubscribe()
        with sub.lock:
            sub.ended = True
        self.tick()

    def _event(self, name: str, event_type: str) -> Event:
        self.counter[name] += 1
        n = self.counter[name]
        self.pubs[(name, n)] = Pub(name, n, event_type, self.tick())
        return Event(event_type=event_type, data={"n": n})

    def publish(self, name: str, event_type: str) -> None:
        event = self._event(name, event_type)
        self.buses[name].publish(event_type, event.data)

    def publish_many(self, name: str, types: list[str]) -> None:
        self.buses[name].publish_many([self._event(name, t) for t in types])

    def random_type(self) -> str:
        return ".".join(self.rng.choice(SEGMENTS) for _ in range(self.rng.randint(1, 3)))

    def random_pattern(self) -> str:
        segments = []
        for _ in range(self.rng.randint(1, 3)):
            kind = self.rng.choices(["lit", "*", "**", "glob"], [4, 2, 1, 3])[0]
            if kind == "lit":
                segments.append(self.rng.choice(SEGMENTS))
            elif kind == "glob":
                segments.append(self.rng.choice(GLOB_SEGMENTS))
            else:
                segments.append(kind)
        return ".".join(segments)

    def active(self, name: str | None = None) -> list[Sub]:
        return [s for s in self.subs if not s.ended and (name is None or s.node == name)]

    def ops(self, count: int) -> None:
        for _ in range(count):
            name = self.rng.choice(NAMES)
            op = self.rng.choices(["sub", "unsub", "pub", "many"], [3, 2, 3, 2])[0]
            removable = [s for s in self.active() if s.pattern != SENTINEL]
            if op == "unsub" and removable:
                self.unsubscribe(self.rng.choice(removable))
            elif op == "sub" or op == "unsub":
                self.subscribe(name, self.random_pattern())
            elif op == "pub":
                self.publish(name, self.random_type())
            else:
                self.publish_many(name, [self.random_type() for _ in range(self.rng.randint(1, 5))])

    # -- synchronisation (documented waits only)

    def sync(self) -> None:
        for name, bus in self.buses.items():
            others = [m for m in NAMES if m != name]
            assert bridge(bus).wait_for_peers(others, WAIT), f"{name} never synced with {others}"
        now = self.tick()
        for sub in self.active():
            sub.in_force = min(sub.in_force, now)

    def missing(self) -> list[tuple[str, str, tuple[str, int]]]:
        out = []
        for sub in self.subs:
            with sub.lock:
                got = {(o, n) for o, n, _ in sub.got}
            for key, pub in self.pubs.items():
                if key not in got and sub.mandatory(pub):
                    out.append((sub.node, sub.pattern, key))
        return out

    def barrier(self) -> None:
        for name in NAMES:
            self.publish(name, SENTINEL)
        ok = wait_for(lambda: not self.missing(), WAIT)
        assert ok, f"never delivered (node, pattern, (origin, n)): {self.missing()[:10]}"
        for bus in self.buses.values():
            bus.flush(WAIT)
        self.last_barrier = self.tick()
        self.check()

    # -- checks

    def check(self) -> None:
        for sub in self.subs:
            with sub.lock:
                got, late = list(sub.got), list(sub.late)
            where = f"{sub.pattern!r} on {sub.node}"
            keys = [(o, n) for o, n, _ in got]
            assert len(keys) == len(set(keys)), f"{where} got a duplicate: {keys}"
            assert len(late) <= 1, f"{where} handled {late} after unsubscribe() returned"
            for origin, n, event_type in got:
                pub = self.pubs.get((origin, n))
                assert pub is not None, f"{where} got an event never published: {origin} {n}"
                assert event_type == pub.type, f"{where}: {origin} {n} came as {event_type!r}"
                assert sub.allowed(pub), f"{where} must not get {pub}"
            for origin in NAMES:
                seen = [n for o, n in keys if o == origin]
                assert seen == sorted(seen), f"{where}: {origin}'s events out of order: {seen}"
            self.check_figures(sub, len(got))
        for name, bus in self.buses.items():
            s = bridge(bus).statistics()
            assert s.gaps == s.gaps_recovered + s.gaps_unrecovered + s.gaps_open, (name, s)
            assert (s.gaps_unrecovered, s.sequences_rejected, s.frames_dropped) == (0, 0, 0), s
            remote = set()
            for sub in self.subs:
                if sub.node == name:
                    with sub.lock:
                        remote |= {(o, n) for o, n, _ in sub.got if o != name}
            # Each remote event handled here was injected once (duplicates removed).
            assert len(remote) <= s.events_delivered <= s.events_received + s.events_recovered
        self.rounds_checked += 1

    def check_figures(self, sub: Sub, handled: int) -> None:
        assert sub.handle is not None
        st = sub.handle.statistics()
        parts = st.delivered + st.expired + st.dead_letters + st.dropped + st.queued
        assert st.accepted == parts + st.in_flight, st
        assert st.errors == st.dead_letters == st.expired == 0, st
        if sub.ended:
            assert st.queued == st.in_flight == 0, st
            assert st.delivered == handled, (st, handled)
            must = sum(sub.mandatory(p) for p in self.pubs.values())
            may = sum(sub.allowed(p) for p in self.pubs.values())
            assert must <= st.accepted <= may, (st, must, may)

    def probe(self) -> None:
        """Publish with no subscription changing; check what crossed the wire to each node."""
        before = {n: bridge(b).statistics() for n, b in self.buses.items()}
        start = self.clock
        for name in NAMES:
            self.publish_many(name, [self.random_type() for _ in range(self.rng.randint(4, 8))])
        self.barrier()  # its sentinels are probes too: every node wants them
        for name, bus in self.buses.items():
            after = bridge(bus).statistics()
            prefixes = {literal_prefix(s.pattern) for s in self.active(name)}
            patterns = {s.pattern for s in self.active(name)}
            sent = [p for p in self.pubs.values() if p.t > start and p.origin != name]
            may = sum(any(p.type.startswith(x) for x in prefixes) for p in sent)
            must = sum(any(matches(x, p.type) for x in patterns) for p in sent)
            received = after.events_received - before[name].events_received
            assert received <= may, (
                f"{name} received {received} events of the probe, only {may} start with one of "
                f"its prefixes {sorted(prefixes)}"
            )
            if after.gaps == before[name].gaps:  # nothing lost: all came on the live stream
                assert received >= must, (name, received, must)


def run_rounds(buses: dict[str, EventBus], seed: int, rounds: int) -> Run:
    run = Run(buses, random.Random(seed))
    run.sync()
    run.barrier()
    for _ in range(rounds):
        run.ops(run.rng.randint(6, 12))
        run.sync()
        run.barrier()
        run.probe()
    # The end: everything still subscribed is unsubscribed, every figure settles.
    for sub in run.active():
        run.unsubscribe(sub)
    for bus in buses.values():
        bus.flush(WAIT)
    run.check()
    return run


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A broker on 127.0.0.1; ask for it before ``nodes`` so the nodes close first."""
    with Broker("tcp://127.0.0.1:*") as hub:
        yield hub


TIGHT = {"send_hwm": 1, "receive_hwm": 1, "batch_size": 1}
"""One frame per event and high-water marks of one: frames are lost and fetched again."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "settings"),
    [
        *((seed, {}) for seed in range(1, 9)),
        (5, TIGHT),
    ],
    ids=[*map(str, range(1, 9)), "5-tight"],
)
def test_random_subscriptions_over_a_tcp_mesh_match_the_model(
    nodes: Callable[..., EventBus], seed: int, settings: dict[str, int]
) -> None:
    buses: dict[str, EventBus] = {}
    for name in NAMES:
        peers = tuple(request_endpoint(b) for b in buses.values())
        buses[name] = nodes(name, listen="tcp://127.0.0.1:*", peers=peers, **settings)
    run = run_rounds(buses, seed, rounds=8)
    assert run.rounds_checked == 2 * 8 + 2
    assert len(run.subs) > len(NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [10, 11])
def test_random_subscriptions_through_a_broker_match_the_model(
    broker: Broker, nodes: Callable[..., EventBus], seed: int
) -> None:
    buses = {name: nodes(name, peers=(broker.endpoint,)) for name in NAMES}
    run = run_rounds(buses, seed, rounds=6)
    assert run.rounds_checked == 2 * 6 + 2
    assert len(run.subs) > len(NAMES)


@pytest.mark.slow
@pytest.mark.parametrize(
    "through",
    ["mesh", "broker"],
)
def test_a_prefix_only_the_origin_itself_wants_does_not_hold_its_stream(
    broker: Broker, nodes: Callable[..., EventBus], through: str
) -> None:
    """Found by the random runs: barriers through a broker took heartbeat_timeout (5 s).

    ``b`` subscribes ``z*`` (prefix ``z``), which no other node wants, and ``a``
    subscribes ``zz``; both are synced.  Every event ``b`` publishes of type
    ``zz`` must reach ``a``.  Through a broker, ``b``'s own SUB subscribes ``z``
    at the broker, whose proxy passes it up to every publisher, ``b`` included:
    ``b``'s flow control takes it for a receiver whose first ``CREDIT`` has not
    come (``SendQueue.pending``, window 1), lets one run out and holds the next
    until ``heartbeat_timeout`` (here a minute) passes.
    """
    slow = {"heartbeat_timeout": 60.0}
    if through == "broker":
        a = nodes("a", peers=(broker.endpoint,), **slow)
        b = nodes("b", peers=(broker.endpoint,), **slow)
    else:
        a = nodes("a", listen="tcp://127.0.0.1:*", **slow)
        b = nodes("b", listen="tcp://127.0.0.1:*", peers=(request_endpoint(a),), **slow)
    first, second = Until(1), Until(2)
    a.subscribe("zz", first)
    a.subscribe("zz", second)
    b.subscribe("z*", lambda event: None)
    assert bridge(a).wait_for_peers(["b"], WAIT)
    assert bridge(b).wait_for_peers(["a"], WAIT)
    b.publish("zz", 1).get(timeout=WAIT)
    first.wait()  # the first run went out
    b.publish("zz", 2).get(timeout=WAIT)
    assert second.done.wait(BRIEF), f"a got {second.data} of [1, 2]: b's stream is held"
    assert second.data == [1, 2]


def test_merged_recovery_ranges_keep_per_origin_order() -> None:
    """What the tight runs hit, step by step on the receiver's state machine (no sockets).

    Node c follows origin b with ``a.*`` and ``zz``; b's event 1 (``x``) is not
    for c.  c subscribes ``*`` (prefix ``""``, synced at head 2) and gets 3.
    While a fetch of ``(3, 4]`` is out, a frame shows ``""`` lost ``(5, 7]`` and
    a heartbeat shows ``a.`` lost ``(0, 7]`` (c never had an ``a.`` frame) and
    ``zz`` ``(2, 4]``: the deferred ranges merge into ``(0, 7]`` for every
    prefix, which fetches 1 under ``""``.  Event 1 then reaches ``*`` after 3.
    """
    types = {1: "x", 2: "zz", 3: "y", 4: "zz", 5: "w", 6: "a.y", 7: "a.z", 8: "v"}
    ring = {n: Event(event_type=t, data=n, origin="b", sequence=n) for n, t in types.items()}
    inbound = Inbound("c", 10_000)
    out: list[Event] = []

    def frame(n: int, chains: list[tuple[bytes, int]]) -> None:
        out.extend(
            inbound.on_data("b", epoch=1, first=n, last=n, chains=chains, events=[ring[n]], now=0)
        )

    def answer() -> None:
        (request,) = inbound.requests
        inbound.requests.clear()
        fetched = [
            e
            for n, e in ring.items()
            if request.after < n <= request.upto
            and any(e.event_type.startswith(p) for p in request.prefixes)
        ]
        out.extend(inbound.on_recovered(request.rid, fetched, True, 0, False))

    inbound.set_patterns(["a.*", "zz"], 0)
    out.extend(inbound.on_sync("b", 1, 1, 0, 0))
    frame(2, [(b"", 1), (b"zz", 0)])
    inbound.set_patterns(["a.*", "zz", "*"], 0)
    out.extend(inbound.on_sync("b", 1, 1, 2, 0, 2, {b"": 2, b"a.": 0, b"zz": 2}))
    frame(3, [(b"", 2)])
    frame(5, [(b"", 4)])  # 4 lost: (3, 4] is asked for
    frame(8, [(b"", 7)])  # 6 and 7 lost: (5, 7] waits its turn
    chains = {b"": 8, b"a.": 7, b"zz": 4}
    out.extend(inbound.on_heartbeat("b", epoch=1, base=1, head=8, chains=chains, now=0))
    answer()  # (3, 4]; the merged range goes next
    answer()
    delivered = [e.sequence or 0 for e in out]
    assert delivered[:2] == [2, 3]
    assert delivered == sorted(delivered), f"b's events reached c out of order: {delivered}"
