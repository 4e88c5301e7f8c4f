"""Workflow traces: the causal tree of the events of one correlation.

Pure and thread-free: a ``Trace`` is built once from a batch of events and is
read-only afterwards. The parent -> children index is built in the
constructor in O(n log n) (the sort) plus O(n), so every query is cheap even
for traces of thousands of events.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from actors._model.guards import check_bool, check_uuid

if TYPE_CHECKING:
    from actors._model.event import Event

__all__ = ["Trace", "causes_first", "first_copies", "merge_events", "trace_order_key"]

#: Width, in characters, of the data column of ``Trace.render(show_data=True)``.
DATA_WIDTH = 60

#: Levels ``Trace.render`` indents; deeper lines keep that indent and say their depth.
RENDER_DEPTH = 40

_ZERO = datetime.timedelta(0)


def causes_first(events: Iterable[Event]) -> list[Event]:
    """Return ``events`` in their order, except that none comes before its cause.

    An event whose cause is among ``events`` but later waits until its cause
    is placed (events merged from several nodes: each node numbers its own
    sequences).  Events of a causation cycle keep their order, at the end.
    """
    ordered = list(events)
    present = {e.id for e in ordered}
    placed: set[uuid.UUID] = set()
    waiting: dict[uuid.UUID, list[Event]] = {}
    out: list[Event] = []
    for event in ordered:
        cause = event.causation_id
        if cause is not None and cause in present and cause not in placed and cause != event.id:
            waiting.setdefault(cause, []).append(event)
            continue
        stack = [event]
        while stack:
            ready = stack.pop()
            out.append(ready)
            placed.add(ready.id)
            stack.extend(reversed(waiting.pop(ready.id, [])))
    for left in waiting.values():  # a cycle: never placed by its cause
        out.extend(e for e in left if e.id not in placed)
    return out


def first_copies(events: Sequence[Event]) -> list[Event]:
    """Return ``events`` with each id once (its first copy), in their order.

    An ``Event`` object published twice is two events with one id (two
    sequences); every reader that knows events by id keeps the first.
    """
    seen: set[uuid.UUID] = set()
    out: list[Event] = []
    for e in events:
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out


def merge_events(stored: Sequence[Event], live: Sequence[Event]) -> list[Event]:
    """Union of journal and memory (or local and remote) events by id, in sequence order.

    The first list's copy of an event wins.  Sequences of several nodes are
    not comparable, so when the events come from more than one origin none
    is put before its cause (``causes_first``); events of one origin keep
    their sequence order, whatever causes the caller gave them.
    """
    seen: dict[uuid.UUID, Event] = {}
    for e in (*stored, *live):  # an id twice within a list too: its first copy wins
        seen.setdefault(e.id, e)
    ordered = sorted(seen.values(), key=lambda e: (e.sequence or 0, e.timestamp))
    if len({e.origin for e in ordered}) > 1:
        return causes_first(ordered)
    return ordered


def trace_order_key(event: Event) -> tuple[int, int, datetime.datetime, int]:
    """Return the sort key that puts events in trace order.

    Sequenced events come first, by sequence; events without a sequence (not
    yet published on a bus) follow by timestamp. The event id breaks ties so
    the order is deterministic.
    """
    seq = event.sequence
    if seq is None:
        return (1, 0, event.timestamp, event.id.int)
    return (0, seq, event.timestamp, event.id.int)


class Trace:
    """Hold the events of one correlation as a causal forest.

    An event's parent is the event named by its ``causation_id`` when that
    event is in the trace. Events without a parent are roots: those with no
    ``causation_id`` and those whose cause is missing (evicted, truncated, or
    on a node that did not answer). Causation cycles cannot come from the bus,
    but a hand-built or corrupt trace may hold one; the earliest event of each
    cycle (in trace order) is then treated as a root, so the structure is
    always a forest and every walk terminates.

    Events are stored in trace order (see ``trace_order_key``). An event id
    seen twice is kept once (the first in trace order), as at-least-once
    delivery between nodes may repeat an event.

    Raise ``TypeError`` if ``correlation_id`` is not a ``uuid.UUID`` and
    ``ValueError`` if an event belongs to another correlation.
    """

    __slots__ = (
        "_by_id",
        "_children",
        "_correlation_id",
        "_cycle_heads",
        "_depth",
        "_events",
        "_parent",
        "_roots",
    )

    def __init__(self, correlation_id: uuid.UUID, events: Iterable[Event] = ()) -> None:
        check_uuid("correlation_id", correlation_id)
        self._correlation_id = correlation_id
        by_id: dict[uuid.UUID, Event] = {}
        for event in sorted(events, key=trace_order_key):
            if event.correlation_id != correlation_id:
                raise ValueError(
                    f"event {event.id} has correlation_id {event.correlation_id}, "
                    f"not {correlation_id}"
                )
            by_id.setdefault(event.id, event)
        self._by_id = by_id
        self._events: tuple[Event, ...] = tuple(by_id.values())

        parent: dict[uuid.UUID, uuid.UUID | None] = {}
        for event in self._events:
            cause = event.causation_id
            parent[event.id] = cause if cause is not None and cause in by_id else None
        self._cycle_heads = _break_cycles(self._events, parent)
        self._parent = parent

        children: dict[uuid.UUID, list[Event]] = {}
        roots: list[Event] = []
        for event in self._events:
            pid = parent[event.id]
            if pid is None:
                roots.append(event)
            else:
                children.setdefault(pid, []).append(event)
        self._children = children
        self._roots = roots
        self._depth = _forest_depth(roots, children)

    # -- container protocol -------------------------------------------------

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._by_id

    def __repr__(self) -> str:
        return f"Trace(correlation_id={self._correlation_id}, events={len(self._events)})"

    # -- properties ---------------------------------------------------------

    @property
    def correlation_id(self) -> uuid.UUID:
        """Return the correlation id shared by every event of the trace."""
        return self._correlation_id

    @property
    def events(self) -> tuple[Event, ...]:
        """Return every event, in trace order."""
        return self._events

    @property
    def depth(self) -> int:
        """Return the number of events on the longest root-to-leaf chain (0 if empty)."""
        return self._depth

    @property
    def duration(self) -> datetime.timedelta:
        """Return the time from the earliest to the latest timestamp (zero below 2 events)."""
        if len(self._events) < 2:
            return _ZERO
        stamps: list[datetime.datetime] = [e.timestamp for e in self._events]
        return max(stamps) - min(stamps)

    # -- tree queries -------------------------------------------------------

    def get(self, event_id: uuid.UUID) -> Event:
        """Return the event with ``event_id``; raise ``KeyError`` if it is not in the trace.

        Raise ``TypeError`` if ``event_id`` is not a ``uuid.UUID``.
        """
        check_uuid("event_id", event_id)
        try:
            return self._by_id[event_id]
        except KeyError:
            raise KeyError(f"event {event_id} is not in trace {self._correlation_id}") from None

    def roots(self) -> list[Event]:
        """Return the events without a parent in the trace, in trace order."""
        return list(self._roots)

    def parent(self, event_id: uuid.UUID) -> Event | None:
        """Return the parent of ``event_id`` in the trace, or None for a root.

        Raise ``KeyError`` if ``event_id`` is not in the trace.
        """
        self.get(event_id)
        pid = self._parent[event_id]
        return None if pid is None else self._by_id[pid]

    def children(self, event_id: uuid.UUID) -> list[Event]:
        """Return the events caused by ``event_id``, in trace order.

        Raise ``KeyError`` if ``event_id`` is not in the trace.
        """
        self.get(event_id)
        return list(self._children.get(event_id, ()))

    def chain(self, event_id: uuid.UUID) -> list[Event]:
        """Return the path from the root of ``event_id`` down to it, both included.

        Raise ``KeyError`` if ``event_id`` is not in the trace.
        """
        path = [self.get(event_id)]
        pid = self._parent[event_id]
        while pid is not None:
            path.append(self._by_id[pid])
            pid = self._parent[pid]
        path.reverse()
        return path

    def walk(self) -> Iterator[tuple[Event, int]]:
        """Yield every event with its depth (a root: 0), in tree order (depth first)."""
        stack = [(root, 0) for root in reversed(self._roots)]
        while stack:
            event, depth = stack.pop()
            yield event, depth
            stack.extend((kid, depth + 1) for kid in reversed(self._children.get(event.id, ())))

    def leaves(self) -> list[Event]:
        """Return the events that caused no other event in the trace, in trace order."""
        return [e for e in self._events if e.id not in self._children]

    # -- export -------------------------------------------------------------

    def to_otel(self, tracer_provider: Any = None) -> int:
        """Export the trace as finished OpenTelemetry spans; return how many.

        One span per event, named after its type, from the event's timestamp
        to the latest timestamp among its descendants (so children lie inside
        their parent); trace and span ids are those ``actors.otel.instrument``
        gives live spans (see ``actors._model.otelspans``); the event closing a
        causation cycle (forged ids) is a root, as ``render`` shows it.
        ``tracer_provider`` defaults to the global one.  Needs the ``[otel]`` extra
        (``ImportError`` without it).
        """
        from actors._model.otelspans import export_spans  # noqa: PLC0415 - the [otel] extra

        end: dict[uuid.UUID, datetime.datetime] = {}
        order: list[Event] = []
        stack = list(self._roots)
        while stack:  # pre-order; reversed, every child comes before its parent
            event = stack.pop()
            order.append(event)
            stack.extend(self._children.get(event.id, ()))
        for event in reversed(order):
            latest = event.timestamp
            for kid in self._children.get(event.id, ()):
                latest = max(latest, end[kid.id])
            end[event.id] = latest
        # A causation cycle's head is a root here as in ``render``: no span is its own ancestor.
        items = [(e, end[e.id]) for e in self._events]
        return export_spans(items, tracer_provider, self._cycle_heads)

    # -- rendering ----------------------------------------------------------

    def render(self, *, show_data: bool = False) -> str:
        """Return the trace as a text tree with timings relative to its earliest event.

        Each line shows the offset in milliseconds, the event type and
        ``[source → target]`` when set; a root whose cause is missing or that
        closes a causation cycle says so. With ``show_data``, each line ends
        with the event's data as compact JSON, cut to ``DATA_WIDTH`` characters.
        """
        check_bool("show_data", show_data)
        n = len(self._events)
        header = (
            f"workflow {_short(self._correlation_id)}  "
            f"({n} event{'' if n == 1 else 's'}, {_ms(self.duration):.1f} ms)"
        )
        lines = [header]
        if not n:
            return header
        base = min(e.timestamp for e in self._events)
        # Iterative depth-first walk: a long causal chain must not hit the
        # recursion limit. Each stack entry is (event, indent, is_last, depth).
        # Past RENDER_DEPTH levels the indent stops growing and each line says
        # its depth: a chain of n events would otherwise print n**2 / 2 blanks.
        stack: list[tuple[Event, str, bool, int]] = [
            (root, "", i == 0, 0) for i, root in enumerate(reversed(self._roots))
        ]
        while stack:
            event, indent, last, depth = stack.pop()
            mark = f"[depth {depth}] " if depth > RENDER_DEPTH else ""
            lines.append(
                f"{indent}{'└─ ' if last else '├─ '}{mark}{self._describe(event, base, show_data)}"
            )
            kids = self._children.get(event.id)
            if kids:
                if depth < RENDER_DEPTH:
                    child_indent = indent + ("   " if last else "│  ")
                else:
                    child_indent = indent
                stack.extend(
                    (kid, child_indent, i == 0, depth + 1) for i, kid in enumerate(reversed(kids))
                )
        return "\n".join(lines)

    def _describe(self, event: Event, base: datetime.datetime, show_data: bool) -> str:
        parts = [f"+{_ms(event.timestamp - base):.3f} ms  {printable(event.event_type)}"]
        source = None if event.source is None else printable(event.source)
        target = None if event.target is None else printable(event.target)
        if source is not None and target is not None:
            parts.append(f"[{source} → {target}]")
        elif source is not None:
            parts.append(f"[{source}]")
        elif target is not None:
            parts.append(f"[→ {target}]")
        if event.id in self._cycle_heads:
            parts.append("(causation cycle)")
        elif self._parent[event.id] is None and event.causation_id is not None:
            parts.append(f"(cause {_short(event.causation_id)} not in trace)")
        if show_data and event.data is not None:
            parts.append(_compact_json(event.data))
        return "  ".join(parts)


def _break_cycles(
    events: tuple[Event, ...], parent: dict[uuid.UUID, uuid.UUID | None]
) -> frozenset[uuid.UUID]:
    """Cut every causation cycle in ``parent`` in place; return the ids made roots.

    Each node has at most one parent, so a cycle is found by walking up from
    each unvisited node; every node is walked once, O(n) in all.
    """
    order = {e.id: i for i, e in enumerate(events)}
    state: dict[uuid.UUID, int] = {}  # absent: unvisited, 1: on the current path, 2: done
    heads: set[uuid.UUID] = set()
    for event in events:
        path: list[uuid.UUID] = []
        cur: uuid.UUID | None = event.id
        while cur is not None and cur not in state:
            state[cur] = 1
            path.append(cur)
            cur = parent[cur]
        if cur is not None and state[cur] == 1:
            cycle = path[path.index(cur) :]
            head = min(cycle, key=order.__getitem__)
            parent[head] = None
            heads.add(head)
        for node in path:
            state[node] = 2
    return frozenset(heads)


def _forest_depth(roots: list[Event], children: dict[uuid.UUID, list[Event]]) -> int:
    """Return the number of events on the longest root-to-leaf path of the forest."""
    depth = 0
    level = [e.id for e in roots]
    while level:
        depth += 1
        level = [kid.id for eid in level for kid in children.get(eid, ())]
    return depth


def _ms(delta: datetime.timedelta) -> float:
    return delta / datetime.timedelta(milliseconds=1)


def _short(ident: uuid.UUID) -> str:
    return f"{str(ident)[:8]}…"


def _compact_json(data: object) -> str:
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=repr)
    except ValueError:  # a circular structure; events never hold one, but render must not fail
        text = repr(data)
    if len(text) > DATA_WIDTH:
        text = text[: DATA_WIDTH - 1] + "…"
    return printable(text)


def printable(text: str) -> str:
    """Return ``text`` with control characters escaped (``\\n``, ``\\x1b``), one line.

    What a terminal would act on (a newline, an escape sequence) must not
    reach it from an event's fields: it could forge lines or retitle it.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
