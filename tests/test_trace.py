"""Tests for actors._model.trace: the causal tree of one correlation."""

from __future__ import annotations

import datetime
import itertools
import random
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._model.event import Event
from actors._model.trace import DATA_WIDTH, RENDER_DEPTH, Trace

CID = uuid.UUID("3f2a9c1e-0000-7000-8000-000000000000")
T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)


def ev(
    event_type: str = "step",
    seq: int | None = None,
    *,
    cause: Any = None,
    ms: float = 0.0,
    cid: uuid.UUID = CID,
    **fields: Any,
) -> Event:
    """Build an event of correlation ``cid``, ``ms`` milliseconds after T0."""
    return Event(
        event_type=event_type,
        id=fields.pop("id", None) or uuid.uuid4(),
        timestamp=T0 + datetime.timedelta(milliseconds=ms),
        correlation_id=cid,
        causation_id=cause.id if cause is not None and not isinstance(cause, uuid.UUID) else cause,
        sequence=seq,
        **fields,
    )


def types(events: list[Event]) -> list[str]:
    return [e.event_type for e in events]


# -- construction and order ------------------------------------------------------


def test_empty_trace() -> None:
    trace = Trace(CID)
    assert len(trace) == 0
    assert list(trace) == []
    assert trace.events == ()
    assert trace.roots() == []
    assert trace.leaves() == []
    assert trace.depth == 0
    assert trace.duration == datetime.timedelta(0)
    assert trace.correlation_id == CID
    assert trace.render() == "workflow 3f2a9c1e…  (0 events, 0.0 ms)"


def test_events_sorted_by_sequence_then_unsequenced_by_timestamp() -> None:
    a = ev("a", 1, ms=5)
    b = ev("b", 2, ms=1)  # sequence wins over timestamp
    c = ev("c", 3, ms=2)
    x = ev("x", None, ms=9)
    y = ev("y", None, ms=0)
    events = [x, c, a, y, b]
    random.Random(1).shuffle(events)
    trace = Trace(CID, events)
    assert types(list(trace.events)) == ["a", "b", "c", "y", "x"]
    assert list(trace) == list(trace.events)
    assert len(trace) == 5


def test_duplicate_ids_kept_once() -> None:
    a = ev("a", 1)
    trace = Trace(CID, [a, a, ev("b", 2, cause=a), a])
    assert types(list(trace.events)) == ["a", "b"]


def test_other_correlation_rejected() -> None:
    with pytest.raises(ValueError, match="correlation_id"):
        Trace(CID, [ev("a", 1), ev("b", 2, cid=uuid.uuid4())])
    with pytest.raises(ValueError, match="correlation_id"):
        Trace(CID, [Event(event_type="a")])


# -- tree queries ----------------------------------------------------------------


def test_fan_out() -> None:
    root = ev("root", 1)
    kids = [ev(f"k{i}", 2 + i, cause=root, ms=i) for i in range(3)]
    trace = Trace(CID, [*reversed(kids), root])
    assert trace.roots() == [root]
    assert trace.children(root.id) == kids
    assert trace.leaves() == kids
    assert trace.depth == 2
    assert trace.chain(kids[1].id) == [root, kids[1]]
    assert trace.parent(kids[2].id) == root
    assert trace.parent(root.id) is None
    assert trace.children(kids[0].id) == []


def test_linear_chain() -> None:
    events = [ev("e0", 0)]
    for i in range(1, 5):
        events.append(ev(f"e{i}", i, cause=events[-1], ms=i))
    trace = Trace(CID, events)
    assert trace.roots() == [events[0]]
    assert trace.leaves() == [events[-1]]
    assert trace.depth == 5
    assert trace.chain(events[3].id) == events[:4]
    assert trace.chain(events[0].id) == [events[0]]


def test_multiple_roots_and_depth_of_longest_branch() -> None:
    r1 = ev("r1", 1)
    r2 = ev("r2", 2)
    a = ev("a", 3, cause=r2)
    b = ev("b", 4, cause=a)
    c = ev("c", 5, cause=r1)
    trace = Trace(CID, [b, c, a, r2, r1])
    assert trace.roots() == [r1, r2]
    assert trace.leaves() == [b, c]
    assert trace.depth == 3
    assert trace.chain(b.id) == [r2, a, b]


def test_missing_parent_makes_a_root() -> None:
    gone = uuid.uuid4()
    r = ev("r", 1)
    orphan = ev("orphan", 5, cause=gone)
    kid = ev("kid", 6, cause=orphan)
    trace = Trace(CID, [r, orphan, kid])
    assert trace.roots() == [r, orphan]
    assert trace.chain(kid.id) == [orphan, kid]
    assert trace.parent(orphan.id) is None
    assert gone not in trace
    assert orphan.id in trace


def test_cycle_is_cut_at_its_earliest_event() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    # a <- b <- c <- a: each names the previous as its cause, a names c.
    a = ev("a", 1, id=ids[0], cause=ids[2])
    b = ev("b", 2, id=ids[1], cause=ids[0])
    c = ev("c", 3, id=ids[2], cause=ids[1])
    d = ev("d", 4, cause=b)
    trace = Trace(CID, [c, d, b, a])
    assert trace.roots() == [a]
    assert trace.chain(c.id) == [a, b, c]
    assert trace.chain(d.id) == [a, b, d]
    assert trace.children(c.id) == []
    assert trace.children(b.id) == [c, d]
    assert trace.depth == 3
    assert trace.leaves() == [c, d]


def test_self_cause_is_a_root() -> None:
    me = uuid.uuid4()
    a = ev("a", 1, id=me, cause=me)
    trace = Trace(CID, [a])
    assert trace.roots() == [a]
    assert trace.chain(me) == [a]
    assert trace.children(me) == []
    assert trace.depth == 1


def test_unknown_id_raises_key_error() -> None:
    trace = Trace(CID, [ev("a", 1)])
    unknown = uuid.uuid4()
    for query in (trace.chain, trace.children, trace.parent, trace.get):
        with pytest.raises(KeyError, match=str(unknown)):
            query(unknown)


def test_duration() -> None:
    assert Trace(CID, [ev("a", 1, ms=3)]).duration == datetime.timedelta(0)
    # From the earliest to the latest timestamp, whatever the sequence order.
    trace = Trace(CID, [ev("a", 1, ms=4), ev("b", 2, ms=1), ev("c", 3, ms=12.5)])
    assert trace.duration == datetime.timedelta(milliseconds=11.5)


def test_deep_chain_needs_no_recursion() -> None:
    events = [ev("e", 0)]
    for i in range(1, 3000):
        events.append(ev("e", i, cause=events[-1], ms=i / 1000))
    trace = Trace(CID, events)
    assert trace.depth == 3000
    assert trace.chain(events[-1].id) == events
    assert len(trace.render().splitlines()) == 3001


# -- render ------------------------------------------------------------------------


def test_render_tree() -> None:
    start = ev("workflow.start", 1, source="planner")
    t1 = ev("task.assigned", 2, cause=start, ms=1.204, source="planner", target="worker-1")
    done = ev("task.done", 4, cause=t1, ms=5.991, source="worker-1")
    t2 = ev("task.assigned", 3, cause=start, ms=1.31, source="planner", target="worker-2")
    other = ev("audit", 5, ms=12.4, target="log")
    lost = ev("late", 6, cause=uuid.UUID("0badc0de-0000-7000-8000-000000000000"), ms=7)
    anon = ev("tick", 7, cause=lost, ms=8)
    trace = Trace(CID, [anon, done, other, t2, lost, t1, start])
    assert trace.render().splitlines() == [
        "workflow 3f2a9c1e…  (7 events, 12.4 ms)",
        "├─ +0.000 ms  workflow.start  [planner]",
        "│  ├─ +1.204 ms  task.assigned  [planner → worker-1]",
        "│  │  └─ +5.991 ms  task.done  [worker-1]",
        "│  └─ +1.310 ms  task.assigned  [planner → worker-2]",
        "├─ +12.400 ms  audit  [→ log]",
        "└─ +7.000 ms  late  (cause 0badc0de… not in trace)",
        "   └─ +8.000 ms  tick",
    ]


def test_render_of_a_deep_chain_stops_indenting_and_says_the_depth() -> None:
    # Indenting every level made a chain of n events print n**2 / 2 blanks
    # (600 M characters for 20,000); past RENDER_DEPTH each line says its depth.
    n = 5000
    events = [ev("e", 0)]
    for i in range(1, n):
        events.append(ev("e", i, cause=events[-1], ms=i / 1000))
    lines = Trace(CID, events).render().splitlines()
    assert len(lines) == n + 1
    assert max(len(line) for line in lines) <= 3 * RENDER_DEPTH + 60
    assert "[depth" not in lines[RENDER_DEPTH + 1]  # the root is depth 0, on line 1
    assert lines[RENDER_DEPTH + 2].endswith(
        f"[depth {RENDER_DEPTH + 1}] +0.{RENDER_DEPTH + 1:03d} ms  e"
    )
    assert lines[-1].endswith(f"[depth {n - 1}] +4.999 ms  e")
    assert lines[-1].startswith(" " * (3 * RENDER_DEPTH) + "└─ ")


def test_render_single_root_and_singular_header() -> None:
    trace = Trace(CID, [ev("only", 1, source="me")])
    assert trace.render().splitlines() == [
        "workflow 3f2a9c1e…  (1 event, 0.0 ms)",
        "└─ +0.000 ms  only  [me]",
    ]


def test_render_marks_cycles() -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    a = ev("a", 1, id=ids[0], cause=ids[1])
    b = ev("b", 2, id=ids[1], cause=ids[0], ms=1)
    assert Trace(CID, [a, b]).render().splitlines()[1:] == [
        "└─ +0.000 ms  a  (causation cycle)",
        "   └─ +1.000 ms  b",
    ]


def test_render_offsets_from_earliest_timestamp() -> None:
    # Sequence order and clock order disagree (events from two nodes).
    a = ev("a", 1, ms=2)
    b = ev("b", 2, cause=a, ms=0)
    assert Trace(CID, [a, b]).render().splitlines()[1:] == [
        "└─ +2.000 ms  a",
        "   └─ +0.000 ms  b",
    ]


def test_render_show_data() -> None:
    a = ev("a", 1, data={"user_id": "123", "ok": True})
    b = ev("b", 2, cause=a, ms=1, data={"text": "x" * 200}, source="s")
    c = ev("c", 3, cause=a, ms=2)  # no data: nothing shown
    lines = Trace(CID, [a, b, c]).render(show_data=True).splitlines()
    assert lines[1] == '└─ +0.000 ms  a  {"user_id":"123","ok":true}'
    prefix = "   ├─ +1.000 ms  b  [s]  "
    assert lines[2].startswith(prefix + '{"text":"xxx')
    data = lines[2][len(prefix) :]
    assert len(data) == DATA_WIDTH
    assert data.endswith("…")
    assert lines[3] == "   └─ +2.000 ms  c"
    assert "user_id" not in Trace(CID, [a]).render()


# -- properties ----------------------------------------------------------------------


@st.composite
def forests(draw: st.DrawFn) -> tuple[list[Any], list[int | None]]:
    """Draw events whose causes point at earlier events, at nothing, or outside the trace."""
    n = draw(st.integers(min_value=0, max_value=40))
    parents: list[int | None] = []
    events: list[Any] = []
    for i in range(n):
        kind = draw(st.sampled_from(["root", "child", "child", "child", "missing"]))
        p = draw(st.integers(0, i - 1)) if kind == "child" and i else None
        parents.append(p)
        cause = events[p].id if p is not None else (uuid.uuid4() if kind == "missing" else None)
        seq = draw(st.one_of(st.none(), st.integers(0, 1000)))
        events.append(ev(f"e{i}", seq, cause=cause, ms=draw(st.floats(0, 1000))))
    return draw(st.permutations(events)), parents


def check_forest_invariants(trace: Trace) -> None:
    roots = trace.roots()
    root_ids = {r.id for r in roots}
    seen = 0
    longest = 0
    for e in trace:
        chain = trace.chain(e.id)
        assert chain[-1] == e
        assert chain[0].id in root_ids
        assert len({x.id for x in chain}) == len(chain)
        longest = max(longest, len(chain))
        for up, down in itertools.pairwise(chain):
            assert trace.parent(down.id) == up
            assert down in trace.children(up.id)
        kids = trace.children(e.id)
        seen += len(kids)
        for kid in kids:
            assert trace.parent(kid.id) == e
        assert (trace.parent(e.id) is None) == (e.id in root_ids)
    assert seen + len(roots) == len(trace)
    assert trace.depth == longest
    assert trace.leaves() == [e for e in trace if not trace.children(e.id)]
    order = {e.id: i for i, e in enumerate(trace.events)}
    assert [order[r.id] for r in roots] == sorted(order[r.id] for r in roots)


@settings(max_examples=150, deadline=None)
@given(forests())
def test_property_forest(drawn: tuple[list[Any], list[int | None]]) -> None:
    events, _ = drawn
    trace = Trace(CID, events)
    assert len(trace) == len(events)
    check_forest_invariants(trace)
    # Every event whose cause is absent from the trace is a root, and only those.
    ids = {e.id for e in events}
    assert {r.id for r in trace.roots()} == {
        e.id for e in events if e.causation_id is None or e.causation_id not in ids
    }
    assert len(trace.render(show_data=True).splitlines()) == len(events) + 1


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_arbitrary_causes_including_cycles(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=30))
    ids = [uuid.uuid4() for _ in range(n)]
    causes = data.draw(
        st.lists(st.one_of(st.none(), st.integers(0, n - 1)), min_size=n, max_size=n)
    )
    events = [
        ev(f"e{i}", i, id=ids[i], cause=None if c is None else ids[c]) for i, c in enumerate(causes)
    ]
    trace = Trace(CID, data.draw(st.permutations(events)))
    check_forest_invariants(trace)
    # Links that are not part of a cycle are kept as they were given.
    for e in trace:
        p = trace.parent(e.id)
        assert p is None or p.id == e.causation_id
