"""Topic grammar: event types and patterns (``docs/topics.md`` is the user's guide).

Pure (no threads, no I/O).  An *event type* is one or more non-empty segments
joined by ``.``; a *pattern* adds ``*`` (one segment), ``**`` (zero or more
segments) and in-segment globs (``?``, ``[abc]``, ``[a-z]``, ``[!a]``,
``{a,b}``, ``*``).  A pattern whose first segment starts with a wildcard never
matches a reserved ``$`` type.

Glob segments compile to one regex each, translated the way :mod:`fnmatch`
does it (every in-segment ``*`` but the last is an atomic lazy group), so a
segment never backtracks catastrophically; ``{...}`` alternatives are expanded
first, so each alternative may itself hold ``?``, ``*`` and classes.
``**`` is matched by a set-of-states walk, never by backtracking, so the cost
is at most (pattern segments) x (type segments).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from actors._errors import InvalidEventError, InvalidPatternError

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "Pattern",
    "Segment",
    "cached_type_count",
    "is_reserved",
    "parse_segments",
    "validate_event_type",
]

MAX_EVENT_TYPE_LENGTH: Final = 255
MAX_PATTERN_LENGTH: Final = 1024
MAX_ALTERNATIVES: Final = 256  # expanded {a,b} variants per segment
CACHE_LIMIT: Final = 100_000  # the type caches are cleared when they reach this size

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


def cached_type_count() -> int:
    """Return how many validated event types the cache holds (a test and diagnostics hook)."""
    return len(_valid_types)


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

LITERAL, STAR, GLOBSTAR, GLOB = range(4)

# A glob token is (kind, regex): kind "lit" (one literal char), "any" (?),
# "star" (*) or "class" ([...]).
_Token = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Segment:
    """One parsed segment of a pattern: its kind, text and matcher (the trie's unit)."""

    kind: int
    text: str
    test: Callable[[str], object]  # truthy when one type segment matches
    wildcard_led: bool  # starts with a wildcard, so never matches a leading "$" segment
    lead: str  # literal text every matching segment starts with
    leads: tuple[str, ...] = ("",)  # each {a,b} variant's literal lead: the trie's index keys


def _parse_segment(text: str, pattern: str) -> Segment:
    if not text:
        raise InvalidPatternError(f"pattern {pattern!r} has an empty segment")
    if text == "**":
        return Segment(GLOBSTAR, text, len, True, "")
    if text == "*":
        return Segment(STAR, text, len, True, "")
    if "**" in text:
        raise InvalidPatternError(
            f"pattern {pattern!r}: segment {text!r} mixes '**' with other characters "
            "('**' must be a whole segment)"
        )
    if _GLOB_CHARS.isdisjoint(text):
        return Segment(LITERAL, text, text.__eq__, False, text)
    variants = _expand(_tokenize(text, pattern), text, pattern)
    regex = "|".join(dict.fromkeys(_translate(variant) for variant in variants))
    fullmatch = re.compile(f"(?:{regex})", re.DOTALL).fullmatch
    leads = [
        "".join(t[1] for t in itertools.takewhile(lambda t: t[0] == "lit", v)) for v in variants
    ]
    return Segment(
        GLOB,
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
    _segments: tuple[Segment, ...] = field(init=False, repr=False, compare=False)
    _literal_prefix: str = field(init=False, repr=False, compare=False)
    _fixed: bool = field(init=False, repr=False, compare=False)  # no "**": one segment each

    def __post_init__(self) -> None:
        text = self.text
        if not isinstance(text, str):
            raise InvalidPatternError(f"pattern must be a str, not {type(text).__name__}")
        if type(text) is not str:  # a str subclass: its text, as a plain str (its own
            text = str.__str__(text)  # __hash__ or __eq__ take no part)
            object.__setattr__(self, "text", text)
        segments = parse_segments(text)
        object.__setattr__(self, "_segments", segments)
        object.__setattr__(self, "_literal_prefix", _literal_prefix(segments))
        object.__setattr__(self, "_fixed", all(s.kind != GLOBSTAR for s in segments))

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
        return all(segment.kind == LITERAL for segment in self._segments)

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


def _literal_prefix(segments: tuple[Segment, ...]) -> str:
    literals: list[str] = []
    for index, segment in enumerate(segments):
        if segment.kind == LITERAL:
            literals.append(segment.text)
        elif segment.kind == GLOBSTAR and index == len(segments) - 1:
            break
        else:
            return "".join(f"{text}." for text in literals) + segment.lead
    return ".".join(literals)


def _walk(segments: tuple[Segment, ...], parts: list[str]) -> bool:
    """Match with ``**`` by tracking the set of reachable pattern positions."""
    end = len(segments)

    def close(states: set[int]) -> set[int]:
        # No two "**" are adjacent after parsing, so one step of closure suffices.
        return states | {i + 1 for i in states if i < end and segments[i].kind == GLOBSTAR}

    states = close({0})
    for part in parts:
        following: set[int] = set()
        for index in states:
            if index == end:
                continue
            segment = segments[index]
            if segment.kind == GLOBSTAR:
                following.add(index)
            elif segment.test(part):
                following.add(index + 1)
        if not following:
            return False
        states = close(following)
    return end in states


@lru_cache(maxsize=4096)
def parse_segments(text: str) -> tuple[Segment, ...]:
    """Return the segments of the pattern ``text``; raise ``InvalidPatternError`` if invalid."""
    if not text:
        raise InvalidPatternError("pattern must not be empty")
    if len(text) > MAX_PATTERN_LENGTH:
        raise InvalidPatternError(
            f"pattern is {len(text)} characters, more than {MAX_PATTERN_LENGTH}"
        )
    if _has_space(text):
        raise InvalidPatternError(f"pattern {text!r} contains whitespace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # no event type can hold it: it would match nothing
        raise InvalidPatternError(f"pattern {text!r} is not valid Unicode: {exc.reason}") from None
    segments: list[Segment] = []
    for raw in text.split("."):
        segment = _parse_segment(raw, text)
        # "**.**" means the same as "**"; collapsing keeps the state walk small.
        if not (segment.kind == GLOBSTAR and segments and segments[-1].kind == GLOBSTAR):
            segments.append(segment)
    return tuple(segments)
