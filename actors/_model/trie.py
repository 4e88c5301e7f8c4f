"""The segment trie that routes event types to the values of matching patterns.

Pure (no threads, no I/O); one owner (the router actor) calls it.  It
indexes literal children by text and glob children by their literal leads,
so subscriptions that cannot match are not visited; results are cached per
event type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from actors._model.patterns import (
    CACHE_LIMIT,
    GLOBSTAR,
    LITERAL,
    STAR,
    Pattern,
    Segment,
    parse_segments,
)

__all__ = ["TopicTrie", "TrieStatistics"]


@dataclass(frozen=True, slots=True)
class TrieStatistics:
    """Figures of a ``TopicTrie``: its size and how much its walks cost."""

    entries: int
    """(pattern, value) entries."""
    nodes: int
    """Nodes, the root included (1 when empty: every other node is pruned)."""
    cached_types: int
    """Event types whose result is cached."""
    work: int
    """Node steps and glob-segment tests of every walk (cache miss) so far."""


T = TypeVar("T")


_GlobChild = tuple[Segment, "_Node[T]"]


class _Node(Generic[T]):
    __slots__ = (
        "entries",
        "glob_index",
        "globs",
        "globstar",
        "lead_lengths",
        "literal",
        "loop",
        "star",
    )

    def __init__(self, *, loop: bool = False) -> None:
        self.literal: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.globstar: _Node[T] | None = None
        self.globs: dict[str, _GlobChild[T]] = {}  # by segment text
        # Glob children by literal lead, so a segment is tested only against
        # globs whose lead it starts with: one lookup per distinct lead length.
        self.glob_index: dict[str, list[_GlobChild[T]]] = {}
        self.lead_lengths: tuple[int, ...] = ()  # ascending
        self.entries: list[tuple[int, Pattern, T]] = []  # (add order, pattern, value)
        self.loop = loop  # reached through "**": consumes any segment and stays

    def is_empty(self) -> bool:
        return not (self.entries or self.literal or self.star or self.globstar or self.globs)

    def add_glob(self, segment: Segment, child: _Node[T]) -> None:
        self.globs[segment.text] = (segment, child)
        for lead in segment.leads:
            self.glob_index.setdefault(lead, []).append((segment, child))
        self.lead_lengths = tuple(sorted({len(lead) for lead in self.glob_index}))

    def drop_glob(self, segment: Segment) -> None:
        del self.globs[segment.text]
        for lead in segment.leads:
            bucket = [glob for glob in self.glob_index[lead] if glob[0].text != segment.text]
            if bucket:
                self.glob_index[lead] = bucket
            else:
                del self.glob_index[lead]
        self.lead_lengths = tuple(sorted({len(lead) for lead in self.glob_index}))

    def glob_children(
        self, part: str, work: list[int], *, reserved: bool = False
    ) -> list[_Node[T]]:
        """Return the glob children matching ``part`` (literal-led ones only if ``reserved``).

        Add the number of glob segments tested to ``work[0]``.
        """
        found: list[_Node[T]] = []
        size = len(part)
        for length in self.lead_lengths:
            if length > size:
                break
            for segment, child in self.glob_index.get(part[:length], ()):
                work[0] += 1
                if (not reserved or not segment.wildcard_led) and segment.test(part):
                    found.append(child)
        return found


class _Resolved(dict[str, tuple[T, ...]]):
    """The trie's cache: a hit is one C-level dict lookup, a miss walks the trie."""

    __slots__ = ("limit", "root", "work")

    def __init__(self, root: _Node[T], limit: int) -> None:
        super().__init__()
        self.root = root
        self.limit = limit
        self.work = [0]  # node steps and glob tests of every walk so far

    def __missing__(self, event_type: str) -> tuple[T, ...]:
        result = _resolve(self.root, event_type, self.work)
        if len(self) >= self.limit:
            self.clear()
        self[event_type] = result
        return result


class TopicTrie(Generic[T]):
    """Map patterns to values and find every value whose pattern matches a type.

    A segment trie: literal children in a dict, one ``*`` child, one ``**``
    child, and glob-segment children tested one by one.  Not thread-safe: one
    owner (the router actor) calls it.

    ``match(event_type) -> tuple[T, ...]`` returns every value whose pattern
    matches ``event_type``, in the order the entries were added; a value (the
    same object) added under several matching patterns appears once, at its
    first position.  ``event_type`` is assumed valid (see
    ``validate_event_type``); nothing is raised.  Results are cached per event
    type, so a repeated type costs one dict lookup (``match`` *is* the cache's
    ``__getitem__``); ``add`` and ``remove`` clear the cache, and so does
    reaching ``cache_limit`` cached types.  ``statistics()`` counts entries,
    nodes, cached types and the work of every walk.
    """

    __slots__ = ("_cache", "_count", "_root", "_seq", "match")

    match: Callable[[str], tuple[T, ...]]

    def __init__(self, *, cache_limit: int = CACHE_LIMIT) -> None:
        if isinstance(cache_limit, bool) or not isinstance(cache_limit, int) or cache_limit < 1:
            raise ValueError(f"cache_limit must be an int >= 1, not {cache_limit!r}")
        self._root: _Node[T] = _Node()
        self._cache: _Resolved[T] = _Resolved(self._root, cache_limit)
        self._count = 0
        self._seq = 0
        self.match = self._cache.__getitem__

    def __len__(self) -> int:
        """Return the number of (pattern, value) entries."""
        return self._count

    def add(self, pattern: Pattern, value: T) -> None:
        """Add ``value`` under ``pattern``; adding the same pair twice stores it twice."""
        node = self._root
        for segment in parse_segments(pattern.text):
            node = _child(node, segment)
        node.entries.append((self._seq, pattern, value))
        self._seq += 1
        self._count += 1
        self._cache.clear()

    def remove(self, pattern: Pattern, value: T) -> bool:
        """Remove the earliest entry of ``value`` (by identity or ``==``) under ``pattern``.

        Return whether one was removed; nothing is raised for an unknown pair.
        """
        path: list[tuple[_Node[T], Segment]] = []
        node: _Node[T] | None = self._root
        for segment in parse_segments(pattern.text):
            assert node is not None
            path.append((node, segment))
            node = _existing_child(node, segment)
            if node is None:
                return False
        assert node is not None
        for index, (_, entry_pattern, entry_value) in enumerate(node.entries):
            if entry_pattern == pattern and (entry_value is value or entry_value == value):
                del node.entries[index]
                break
        else:
            return False
        self._count -= 1
        self._cache.clear()
        for parent, segment in reversed(path):
            if not node.is_empty():
                break
            _drop_child(parent, segment)
            node = parent
        return True

    def statistics(self) -> TrieStatistics:
        """Return the trie's figures (walks every node: not for the hot path)."""
        nodes = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            nodes += 1
            stack.extend(_children(node))
        return TrieStatistics(self._count, nodes, len(self._cache), self._cache.work[0])

    def items(self) -> list[tuple[Pattern, T]]:
        """Return every (pattern, value) entry in the order added."""
        found: list[tuple[int, Pattern, T]] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            found.extend(node.entries)
            stack.extend(_children(node))
        found.sort(key=lambda entry: entry[0])
        return [(pattern, value) for _, pattern, value in found]


def _children(node: _Node[T]) -> list[_Node[T]]:
    children = [*node.literal.values(), *(child for _, child in node.globs.values())]
    return children + [child for child in (node.star, node.globstar) if child is not None]


def _resolve(root: _Node[T], event_type: str, work: list[int]) -> tuple[T, ...]:
    """Walk the trie with the set of live nodes; return the matching values.

    Add the nodes stepped through and the glob segments tested to ``work[0]``.

    Each step visits only nodes that can still match, so the cost does not
    depend on how many entries cannot.  A dict is the ordered set: ``**``
    nodes can be reached twice in one step.
    """
    parts = event_type.split(".")
    states: dict[_Node[T], None] = {}
    if event_type[:1] == "$":
        # Only a literal-led first segment may match a reserved type.
        first = parts.pop(0)
        child = root.literal.get(first)
        if child is not None:
            states[child] = None
            if child.globstar is not None:
                states[child.globstar] = None
        for child in root.glob_children(first, work, reserved=True) if root.globs else ():
            states[child] = None
            if child.globstar is not None:
                states[child.globstar] = None
    else:
        states[root] = None
        if root.globstar is not None:
            states[root.globstar] = None
    for part in parts:
        if not states:
            return ()
        following: dict[_Node[T], None] = {}
        work[0] += len(states)
        for node in states:
            if node.loop:
                following[node] = None
            child = node.literal.get(part)
            if child is not None:
                following[child] = None
                if child.globstar is not None:
                    following[child.globstar] = None
            child = node.star
            if child is not None:
                following[child] = None
                if child.globstar is not None:
                    following[child.globstar] = None
            if node.globs:
                for child in node.glob_children(part, work):
                    following[child] = None
                    if child.globstar is not None:
                        following[child.globstar] = None
        states = following
    entries: list[tuple[int, Pattern, T]] = []
    for node in states:
        if node.entries:
            entries += node.entries
    if len(entries) <= 1:
        return (entries[0][2],) if entries else ()
    entries.sort()  # the add counter comes first and is unique: patterns are never compared
    seen: set[int] = set()
    values: list[T] = []
    for entry in entries:
        if id(entry[2]) not in seen:
            seen.add(id(entry[2]))
            values.append(entry[2])
    return tuple(values)


def _child(node: _Node[T], segment: Segment) -> _Node[T]:
    child = _existing_child(node, segment)
    if child is not None:
        return child
    child = _Node(loop=segment.kind == GLOBSTAR)
    if segment.kind == LITERAL:
        node.literal[segment.text] = child
    elif segment.kind == STAR:
        node.star = child
    elif segment.kind == GLOBSTAR:
        node.globstar = child
    else:
        node.add_glob(segment, child)
    return child


def _existing_child(node: _Node[T], segment: Segment) -> _Node[T] | None:
    if segment.kind == LITERAL:
        return node.literal.get(segment.text)
    if segment.kind == STAR:
        return node.star
    if segment.kind == GLOBSTAR:
        return node.globstar
    glob = node.globs.get(segment.text)
    return None if glob is None else glob[1]


def _drop_child(node: _Node[T], segment: Segment) -> None:
    if segment.kind == LITERAL:
        del node.literal[segment.text]
    elif segment.kind == STAR:
        node.star = None
    elif segment.kind == GLOBSTAR:
        node.globstar = None
    else:
        node.drop_glob(segment)
