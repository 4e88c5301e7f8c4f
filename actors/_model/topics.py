"""Topic grammar: event types, patterns, and the segment trie that routes them.

Everything here is pure (no threads, no I/O); ``docs/topics.md`` is the user's
guide.  An *event type* is one or more non-empty segments joined by ``.``; a
*pattern* adds ``*`` (one segment), ``**`` (zero or more segments) and
in-segment globs (``?``, ``[abc]``, ``[a-z]``, ``[!a]``, ``{a,b}``, ``*``).
A pattern whose first segment starts with a wildcard never matches a reserved
``$`` type.

Glob segments compile to one regex each, translated the way :mod:`fnmatch`
does it (every in-segment ``*`` but the last is an atomic lazy group), so a
segment never backtracks catastrophically; ``{...}`` alternatives are expanded
first, so each alternative may itself hold ``?``, ``*`` and classes.
``**`` is matched by a set-of-states walk, never by backtracking, so the cost
is at most (pattern segments) x (type segments).  The trie indexes literal
children by text and glob children by their literal leads, so subscriptions
that cannot match are not visited.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, Generic, TypeVar

from actors._errors import InvalidEventError, InvalidPatternError

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "Pattern",
    "TopicTrie",
    "is_reserved",
    "validate_event_type",
]

MAX_EVENT_TYPE_LENGTH: Final = 255
MAX_PATTERN_LENGTH: Final = 1024
MAX_ALTERNATIVES: Final = 256  # expanded {a,b} variants per segment
CACHE_LIMIT: Final = 100_000  # both caches are cleared when they reach this size

_GLOB_CHARS: Final = frozenset("*?[]{}")
_WILDCARD_LEAD: Final = frozenset("*?[{")
_SEGMENT_RE: Final = r"[^\s.*?\[\]{}]+"
_type_fullmatch = re.compile(rf"{_SEGMENT_RE}(?:\.{_SEGMENT_RE})*").fullmatch
_has_space = re.compile(r"\s").search
# Already-validated types; set membership is ~4x cheaper than the regex.  Plain
# set operations are atomic, so concurrent publishers may share it.
_valid_types: set[str] = set()


# ---------------------------------------------------------------- event types


def validate_event_type(event_type: object) -> str:
    """Return ``event_type`` unchanged if it is a valid event type.

    Raise ``InvalidEventError`` naming the reason otherwise: not a ``str``,
    empty, longer than 255 characters, an empty segment, whitespace, or one of
    ``* ? [ ] { }`` in a segment.
    """
    if type(event_type) is str:
        if event_type in _valid_types:
            return event_type
        if len(event_type) <= MAX_EVENT_TYPE_LENGTH and _type_fullmatch(event_type):
            if len(_valid_types) >= CACHE_LIMIT:
                _valid_types.clear()
            _valid_types.add(event_type)
            return event_type
    reason = _explain_invalid_type(event_type)
    if reason is None and isinstance(event_type, str):
        return event_type  # a valid str subclass; not cached, its hash may differ
    raise InvalidEventError(reason)


def _explain_invalid_type(event_type: object) -> str | None:
    if not isinstance(event_type, str):
        return f"event_type must be a str, not {type(event_type).__name__}"
    if not event_type:
        return "event_type must not be empty"
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        return (
            f"event_type is {len(event_type)} characters, more than {MAX_EVENT_TYPE_LENGTH}: "
            f"{event_type[:40]!r}..."
        )
    for index, segment in enumerate(event_type.split(".")):
        problem = (
            "is empty"
            if not segment
            else "contains whitespace"
            if _has_space(segment)
            else next((f"contains {c!r}" for c in segment if c in _GLOB_CHARS), None)
        )
        if problem is not None:
            return f"event_type {event_type!r}: segment {index} ({segment!r}) {problem}"
    return None


def is_reserved(event_type: str) -> bool:
    """Return whether ``event_type`` is reserved for the bus (first segment starts with ``$``)."""
    return event_type[:1] == "$"


# ------------------------------------------------------------------- segments

_LITERAL, _STAR, _GLOBSTAR, _GLOB = range(4)

# A glob token is (kind, regex): kind "lit" (one literal char), "any" (?),
# "star" (*) or "class" ([...]).
_Token = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _Segment:
    kind: int
    text: str
    test: Callable[[str], object]  # truthy when one type segment matches
    wildcard_led: bool  # starts with a wildcard, so never matches a leading "$" segment
    lead: str  # literal text every matching segment starts with
    leads: tuple[str, ...] = ("",)  # each {a,b} variant's literal lead: the trie's index keys


def _parse_segment(text: str, pattern: str) -> _Segment:
    if not text:
        raise InvalidPatternError(f"pattern {pattern!r} has an empty segment")
    if text == "**":
        return _Segment(_GLOBSTAR, text, len, True, "")
    if text == "*":
        return _Segment(_STAR, text, len, True, "")
    if "**" in text:
        raise InvalidPatternError(
            f"pattern {pattern!r}: segment {text!r} mixes '**' with other characters "
            "('**' must be a whole segment)"
        )
    if _GLOB_CHARS.isdisjoint(text):
        return _Segment(_LITERAL, text, text.__eq__, False, text)
    variants = _expand(_tokenize(text, pattern), text, pattern)
    regex = "|".join(dict.fromkeys(_translate(variant) for variant in variants))
    fullmatch = re.compile(f"(?:{regex})", re.DOTALL).fullmatch
    leads = [
        "".join(t[1] for t in itertools.takewhile(lambda t: t[0] == "lit", v)) for v in variants
    ]
    return _Segment(
        _GLOB,
        text,
        fullmatch,
        text[0] in _WILDCARD_LEAD,
        _common_prefix(leads),
        tuple(dict.fromkeys(leads)),
    )


def _common_prefix(leads: list[str]) -> str:
    shortest = min(leads, key=len)
    for index, char in enumerate(shortest):
        if any(lead[index] != char for lead in leads):
            return shortest[:index]
    return shortest


def _tokenize(text: str, pattern: str) -> list[list[list[_Token]]]:
    """Split a glob segment into choices; each choice is a list of alternatives."""
    choices: list[list[list[_Token]]] = []
    group: list[list[_Token]] | None = None
    index = 0
    while index < len(text):
        char = text[index]
        token: _Token
        if char == "[":
            index, token = _parse_class(text, index, pattern)
        else:
            index += 1
            if char in "]}" and (char == "]" or group is None):
                raise InvalidPatternError(f"pattern {pattern!r}: unbalanced {char!r} in {text!r}")
            if char == "{":
                if group is not None:
                    raise InvalidPatternError(
                        f"pattern {pattern!r}: nested '{{' in {text!r} is not supported"
                    )
                group = [[]]
                continue
            if group is not None and char == "}":
                if group == [[]]:
                    raise InvalidPatternError(f"pattern {pattern!r}: empty '{{}}' in {text!r}")
                choices.append(group)
                group = None
                continue
            if group is not None and char == ",":
                group.append([])
                continue
            token = ("any", "") if char == "?" else ("star", "") if char == "*" else ("lit", char)
        if group is None:
            choices.append([[token]])
        else:
            group[-1].append(token)
    if group is not None:
        raise InvalidPatternError(f"pattern {pattern!r}: unbalanced '{{' in {text!r}")
    return choices


def _parse_class(text: str, start: int, pattern: str) -> tuple[int, _Token]:
    end = text.find("]", start + 1)
    if end < 0:
        raise InvalidPatternError(f"pattern {pattern!r}: unbalanced '[' in {text!r}")
    body = text[start + 1 : end]
    negate = body.startswith("!")
    if negate:
        body = body[1:]
    if not body:
        raise InvalidPatternError(f"pattern {pattern!r}: empty character class in {text!r}")
    for char in body:
        if char in "[{}*?":
            raise InvalidPatternError(
                f"pattern {pattern!r}: {char!r} inside a character class in {text!r}"
            )
    items: list[str] = []
    index = 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            low, high = body[index], body[index + 2]
            if low > high:
                raise InvalidPatternError(
                    f"pattern {pattern!r}: reversed range {low}-{high} in {text!r}"
                )
            items.append(f"{re.escape(low)}-{re.escape(high)}")
            index += 3
        else:
            items.append(re.escape(body[index]))
            index += 1
    return end + 1, ("class", f"[{'^' if negate else ''}{''.join(items)}]")


def _expand(choices: list[list[list[_Token]]], text: str, pattern: str) -> list[list[_Token]]:
    count = 1
    for alternatives in choices:
        count *= len(alternatives)
    if count > MAX_ALTERNATIVES:
        raise InvalidPatternError(
            f"pattern {pattern!r}: {text!r} expands to {count} alternatives, "
            f"more than {MAX_ALTERNATIVES}"
        )
    return [list(itertools.chain.from_iterable(p)) for p in itertools.product(*choices)]


def _translate(tokens: list[_Token]) -> str:
    """Translate brace-free glob tokens to a regex that never backtracks badly."""
    chunks = [""]  # literal-ish runs separated by (collapsed) stars
    for kind, payload in tokens:
        if kind == "star":
            if len(chunks) == 1 or chunks[-1]:
                chunks.append("")
        else:
            chunks[-1] += re.escape(payload) if kind == "lit" else "." if kind == "any" else payload
    if len(chunks) == 1:
        return chunks[0]
    # Fixed-length chunks: the leftmost match of each middle chunk is always as
    # good as any later one, so commit to it (as fnmatch does).
    middle = "".join(f"(?>.*?{chunk})" for chunk in chunks[1:-1])
    return f"{chunks[0]}{middle}.*{chunks[-1]}"


# ------------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed subscription pattern; compare and hash by ``text``.

    Construct with ``Pattern.parse(text)`` (cached) or ``Pattern(text)``; both
    raise ``InvalidPatternError`` if ``text`` does not follow the grammar.
    """

    text: str
    _segments: tuple[_Segment, ...] = field(init=False, repr=False, compare=False)
    _literal_prefix: str = field(init=False, repr=False, compare=False)
    _fixed: bool = field(init=False, repr=False, compare=False)  # no "**": one segment each

    def __post_init__(self) -> None:
        text = self.text
        if not isinstance(text, str):
            raise InvalidPatternError(f"pattern must be a str, not {type(text).__name__}")
        if not text:
            raise InvalidPatternError("pattern must not be empty")
        if len(text) > MAX_PATTERN_LENGTH:
            raise InvalidPatternError(
                f"pattern is {len(text)} characters, more than {MAX_PATTERN_LENGTH}"
            )
        if _has_space(text):
            raise InvalidPatternError(f"pattern {text!r} contains whitespace")
        segments: list[_Segment] = []
        for raw in text.split("."):
            segment = _parse_segment(raw, text)
            # "**.**" means the same as "**"; collapsing keeps the state walk small.
            if not (segment.kind == _GLOBSTAR and segments and segments[-1].kind == _GLOBSTAR):
                segments.append(segment)
        object.__setattr__(self, "_segments", tuple(segments))
        object.__setattr__(self, "_literal_prefix", _literal_prefix(segments))
        object.__setattr__(self, "_fixed", all(s.kind != _GLOBSTAR for s in segments))

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Return the pattern for ``text``; raise ``InvalidPatternError`` if it is invalid."""
        return _parse_cached(text) if type(text) is str else cls(text)

    def __str__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple[type[Pattern], tuple[str]]:
        return (Pattern, (self.text,))

    @property
    def is_literal(self) -> bool:
        """Whether the pattern has no wildcard, so it matches exactly one type."""
        return all(segment.kind == _LITERAL for segment in self._segments)

    @property
    def literal_prefix(self) -> str:
        """Return the literal text every matching event type starts with.

        It is the leading literal segments, each followed by ``.``, plus the
        literal leading characters of the first non-literal segment (for
        ``{a,b}`` alternatives, the common prefix of the alternatives'
        leading literals).  Exceptions: a pattern of literal segments only
        gives its own text (no trailing ``.``), and a pattern whose first
        non-literal segment is a final ``**`` gives the literal segments
        joined by ``.`` with no trailing ``.``, because ``agent.**`` matches
        ``agent``.  Usable as a ZeroMQ prefix subscription: necessary, not
        sufficient (``agent`` also prefixes ``agents.x``).
        """
        return self._literal_prefix

    def matches(self, event_type: str) -> bool:
        """Return whether ``event_type`` (assumed valid) matches this pattern."""
        segments = self._segments
        parts = event_type.split(".")
        if event_type[:1] == "$" and segments[0].wildcard_led:
            return False
        if not self._fixed:
            return _walk(segments, parts)
        if len(parts) != len(segments):
            return False
        for segment, part in zip(segments, parts, strict=True):  # noqa: SIM110 (all() is 2x slower)
            if not segment.test(part):
                return False
        return True


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> Pattern:
    return Pattern(text)


def _literal_prefix(segments: list[_Segment]) -> str:
    literals: list[str] = []
    for index, segment in enumerate(segments):
        if segment.kind == _LITERAL:
            literals.append(segment.text)
        elif segment.kind == _GLOBSTAR and index == len(segments) - 1:
            break
        else:
            return "".join(f"{text}." for text in literals) + segment.lead
    return ".".join(literals)


def _walk(segments: tuple[_Segment, ...], parts: list[str]) -> bool:
    """Match with ``**`` by tracking the set of reachable pattern positions."""
    end = len(segments)

    def close(states: set[int]) -> set[int]:
        # No two "**" are adjacent after parsing, so one step of closure suffices.
        return states | {i + 1 for i in states if i < end and segments[i].kind == _GLOBSTAR}

    states = close({0})
    for part in parts:
        following: set[int] = set()
        for index in states:
            if index == end:
                continue
            segment = segments[index]
            if segment.kind == _GLOBSTAR:
                following.add(index)
            elif segment.test(part):
                following.add(index + 1)
        if not following:
            return False
        states = close(following)
    return end in states


# ----------------------------------------------------------------------- trie

T = TypeVar("T")


_GlobChild = tuple[_Segment, "_Node[T]"]


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

    def add_glob(self, segment: _Segment, child: _Node[T]) -> None:
        self.globs[segment.text] = (segment, child)
        for lead in segment.leads:
            self.glob_index.setdefault(lead, []).append((segment, child))
        self.lead_lengths = tuple(sorted({len(lead) for lead in self.glob_index}))

    def drop_glob(self, segment: _Segment) -> None:
        del self.globs[segment.text]
        for lead in segment.leads:
            bucket = [glob for glob in self.glob_index[lead] if glob[0].text != segment.text]
            if bucket:
                self.glob_index[lead] = bucket
            else:
                del self.glob_index[lead]
        self.lead_lengths = tuple(sorted({len(lead) for lead in self.glob_index}))

    def glob_children(self, part: str, *, reserved: bool = False) -> list[_Node[T]]:
        """Return the glob children matching ``part`` (literal-led ones only if ``reserved``)."""
        found: list[_Node[T]] = []
        size = len(part)
        for length in self.lead_lengths:
            if length > size:
                break
            for segment, child in self.glob_index.get(part[:length], ()):
                if (not reserved or not segment.wildcard_led) and segment.test(part):
                    found.append(child)
        return found


class _Resolved(dict[str, tuple[T, ...]]):
    """The trie's cache: a hit is one C-level dict lookup, a miss walks the trie."""

    __slots__ = ("root",)

    def __init__(self, root: _Node[T]) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, event_type: str) -> tuple[T, ...]:
        result = _resolve(self.root, event_type)
        if len(self) >= CACHE_LIMIT:
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
    reaching 100,000 cached types.
    """

    __slots__ = ("_cache", "_count", "_root", "_seq", "match")

    match: Callable[[str], tuple[T, ...]]

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._cache: _Resolved[T] = _Resolved(self._root)
        self._count = 0
        self._seq = 0
        self.match = self._cache.__getitem__

    def __len__(self) -> int:
        """Return the number of (pattern, value) entries."""
        return self._count

    def add(self, pattern: Pattern, value: T) -> None:
        """Add ``value`` under ``pattern``; adding the same pair twice stores it twice."""
        node = self._root
        for segment in pattern._segments:
            node = _child(node, segment)
        node.entries.append((self._seq, pattern, value))
        self._seq += 1
        self._count += 1
        self._cache.clear()

    def remove(self, pattern: Pattern, value: T) -> bool:
        """Remove the earliest entry of ``value`` (by identity or ``==``) under ``pattern``.

        Return whether one was removed; nothing is raised for an unknown pair.
        """
        path: list[tuple[_Node[T], _Segment]] = []
        node: _Node[T] | None = self._root
        for segment in pattern._segments:
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

    def items(self) -> list[tuple[Pattern, T]]:
        """Return every (pattern, value) entry in the order added."""
        found: list[tuple[int, Pattern, T]] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            found.extend(node.entries)
            stack.extend(node.literal.values())
            stack.extend(child for _, child in node.globs.values())
            stack.extend(child for child in (node.star, node.globstar) if child is not None)
        found.sort(key=lambda entry: entry[0])
        return [(pattern, value) for _, pattern, value in found]


def _resolve(root: _Node[T], event_type: str) -> tuple[T, ...]:
    """Walk the trie with the set of live nodes; return the matching values.

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
        for child in root.glob_children(first, reserved=True) if root.globs else ():
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
                for child in node.glob_children(part):
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


def _child(node: _Node[T], segment: _Segment) -> _Node[T]:
    child = _existing_child(node, segment)
    if child is not None:
        return child
    child = _Node(loop=segment.kind == _GLOBSTAR)
    if segment.kind == _LITERAL:
        node.literal[segment.text] = child
    elif segment.kind == _STAR:
        node.star = child
    elif segment.kind == _GLOBSTAR:
        node.globstar = child
    else:
        node.add_glob(segment, child)
    return child


def _existing_child(node: _Node[T], segment: _Segment) -> _Node[T] | None:
    if segment.kind == _LITERAL:
        return node.literal.get(segment.text)
    if segment.kind == _STAR:
        return node.star
    if segment.kind == _GLOBSTAR:
        return node.globstar
    glob = node.globs.get(segment.text)
    return None if glob is None else glob[1]


def _drop_child(node: _Node[T], segment: _Segment) -> None:
    if segment.kind == _LITERAL:
        del node.literal[segment.text]
    elif segment.kind == _STAR:
        node.star = None
    elif segment.kind == _GLOBSTAR:
        node.globstar = None
    else:
        node.drop_glob(segment)
