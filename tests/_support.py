"""Handlers and constants the behaviour tests share."""

from __future__ import annotations

import itertools
import re
import threading
from fnmatch import fnmatchcase
from functools import cache
from typing import Any

from hypothesis import strategies as st

from actors import Event

WAIT = 10.0
"""Upper bound for every wait in a test: reaching it means the test failed."""


class Collector:
    """A handler that records events and can signal once it saw ``expected`` of them."""

    def __init__(self, expected: int | None = None) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.expected = expected
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if self.expected is not None and len(self.events) >= self.expected:
                self.done.set()

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e.event_type for e in self.events]


class Gate:
    """A handler that blocks inside each event until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.entered.set()
        if not self.release.wait(WAIT):
            raise AssertionError("the test never released the gate")
        self.events.append(event)

    @property
    def data(self) -> list[Any]:
        return [e.data for e in self.events]


# -- the topic grammar's reference matcher and strategies (test_patterns, test_trie) --------


def expand_braces(glob: str) -> list[str]:
    """Expand the first {a,b} group, recursively (no nesting, no commas in classes)."""
    found = re.search(r"\{([^{}]*)\}", glob)
    if found is None:
        return [glob]
    head, tail = glob[: found.start()], glob[found.end() :]
    return [
        variant
        for alternative in found.group(1).split(",")
        for variant in expand_braces(head + alternative + tail)
    ]


def reference_matches(pattern: str, event_type: str) -> bool:
    """Match segment by segment, obviously: recursion for * and **, fnmatch for globs."""
    wanted = pattern.split(".")
    parts = event_type.split(".")
    if event_type.startswith("$") and wanted[0][0] in "*?[{":
        return False

    @cache
    def match_from(i: int, j: int) -> bool:
        if i == len(wanted):
            return j == len(parts)
        if wanted[i] == "**":
            return any(match_from(i + 1, k) for k in range(j, len(parts) + 1))
        if j == len(parts):
            return False
        if wanted[i] == "*":
            return match_from(i + 1, j + 1)
        hit = any(fnmatchcase(parts[j], variant) for variant in expand_braces(wanted[i]))
        return hit and match_from(i + 1, j + 1)

    return match_from(0, 0)


TYPE_SEGMENTS = ["a", "b", "ab", "ba", "$", "$a", "a$b"]
UNIVERSE = [
    ".".join(parts)
    for length in range(1, 4)
    for parts in itertools.product(TYPE_SEGMENTS, repeat=length)
]

type_segment = st.text(alphabet="ab$", min_size=1, max_size=3)
event_types = st.lists(type_segment, min_size=1, max_size=5).map(".".join)

glob_piece = st.sampled_from(["a", "b", "$", "?", "*", "[ab]", "[!a]", "[a-b]", "[$a]"])
alternative = st.lists(glob_piece, max_size=2).map("".join)
brace_group = (
    st.lists(alternative, min_size=1, max_size=3)
    .filter(lambda alts: alts != [""])
    .map(lambda alts: "{" + ",".join(alts) + "}")
)


def _collapse_stars(segment: str) -> str:
    while "**" in segment:
        segment = segment.replace("**", "*")
    return segment


glob_segment = st.lists(st.one_of(glob_piece, brace_group), min_size=1, max_size=4).map(
    lambda pieces: _collapse_stars("".join(pieces))
)
pattern_segment = st.one_of(type_segment, st.just("*"), st.just("**"), glob_segment)
patterns = st.lists(pattern_segment, min_size=1, max_size=5).map(".".join)
