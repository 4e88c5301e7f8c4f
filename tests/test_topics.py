"""Tests of the topic grammar, the pattern matcher and the routing trie."""

from __future__ import annotations

import itertools
import pickle
import re
from fnmatch import fnmatchcase
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actors._model.topics as topics
from actors._errors import EventBusError, InvalidEventError, InvalidPatternError
from actors._model.topics import Pattern, TopicTrie, is_reserved, validate_event_type

# ------------------------------------------------------------------ reference


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


# ----------------------------------------------------------------- strategies

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


# ------------------------------------------------------------------ the table

SPEC_TABLE = [
    ("user.*", ["user.login"], ["user", "user.login.failed"]),
    ("*.error", ["db.error"], ["error", "a.b.error"]),
    ("workflow.*.complete", ["workflow.etl.complete"], ["workflow.complete"]),
    ("**.error", ["error", "a.error", "a.b.error"], ["error.x"]),
    ("agent.**", ["agent", "agent.x", "agent.x.y"], ["agents.x"]),
    ("**", ["user", "user.login", "a.b.c.d"], ["$bus.deadletter"]),
    ("tool.{start,end}", ["tool.start", "tool.end"], ["tool.stop"]),
    ("user.log?n", ["user.login"], ["user.logon.x"]),
    ("user.log*", ["user.login", "user.log"], ["user.logs.x", "user.lo"]),
    ("$bus.**", ["$bus.deadletter", "$bus"], ["bus.deadletter"]),
]
SPEC_ROWS = [(p, t, True) for p, yes, _ in SPEC_TABLE for t in yes] + [
    (p, t, False) for p, _, no in SPEC_TABLE for t in no
]


@pytest.mark.parametrize(("pattern", "event_type", "expected"), SPEC_ROWS)
def test_spec_table(pattern: str, event_type: str, expected: bool) -> None:
    assert Pattern.parse(pattern).matches(event_type) is expected
    assert reference_matches(pattern, event_type) is expected
    trie: TopicTrie[str] = TopicTrie()
    trie.add(Pattern.parse(pattern), "hit")
    assert trie.match(event_type) == (("hit",) if expected else ())


# ---------------------------------------------------------------- event types


@pytest.mark.parametrize(
    "event_type",
    ["a", "user.login", "$bus.deadletter", "a-b_c:d/e,f@g", "ünïcode.事件", "x" * 255, "a.$b"],
)
def test_valid_event_types(event_type: str) -> None:
    assert validate_event_type(event_type) is event_type
    assert validate_event_type(event_type) is event_type  # cached path


@pytest.mark.parametrize(
    ("event_type", "reason"),
    [
        ("", "empty"),
        (".a", "segment 0 ('') is empty"),
        ("a.", "segment 1 ('') is empty"),
        ("a..b", "is empty"),
        ("a b", "whitespace"),
        ("a.b\n", "whitespace"),
        ("a\u00a0b", "whitespace"),
        ("user.*", "contains '*'"),
        ("user.log?n", "contains '?'"),
        ("a[b", "contains '['"),
        ("a]b", "contains ']'"),
        ("a{b", "contains '{'"),
        ("a}b", "contains '}'"),
        ("x" * 256, "more than 255"),
        (None, "must be a str, not NoneType"),
        (b"user.login", "not bytes"),
        (42, "not int"),
    ],
)
def test_invalid_event_types(event_type: object, reason: str) -> None:
    with pytest.raises(InvalidEventError, match=re.escape(reason)) as raised:
        validate_event_type(event_type)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, EventBusError)


def test_validate_accepts_str_subclass() -> None:
    class Topic(str):
        __slots__ = ()

    topic = Topic("user.login")
    assert validate_event_type(topic) is topic
    with pytest.raises(InvalidEventError):
        validate_event_type(Topic("user..login"))


def test_validate_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "CACHE_LIMIT", 3)
    monkeypatch.setattr(topics, "_valid_types", set())
    for index in range(10):
        validate_event_type(f"t.{index}")
        assert len(topics._valid_types) <= 3


@given(st.text(max_size=20))
def test_validate_agrees_with_definition(text: str) -> None:
    segments = text.split(".")
    valid = (
        0 < len(text) <= 255
        and all(segments)
        and not any(c.isspace() or c in "*?[]{}" for c in text)
    )
    if valid:
        assert validate_event_type(text) == text
    else:
        with pytest.raises(InvalidEventError):
            validate_event_type(text)


def test_is_reserved() -> None:
    assert is_reserved("$bus.deadletter")
    assert is_reserved("$")
    assert not is_reserved("bus.$deadletter")
    assert not is_reserved("user.login")


# ------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "must not be empty"),
        (".a", "empty segment"),
        ("a.", "empty segment"),
        ("a..b", "empty segment"),
        ("***", "mixes '**'"),
        ("a.***", "mixes '**'"),
        ("a**", "mixes '**'"),
        ("**b", "mixes '**'"),
        ("a.[bc", "unbalanced '['"),
        ("a.b]", "unbalanced ']'"),
        ("a.{b,c", "unbalanced '{'"),
        ("a.b}", "unbalanced '}'"),
        ("a.{b,{c}}", "nested '{'"),
        ("a.{}", "empty '{}'"),
        ("a.[]", "empty character class"),
        ("a.[!]", "empty character class"),
        ("a.[z-a]", "reversed range"),
        ("a.[a*]", "inside a character class"),
        ("a.[a{]", "inside a character class"),
        ("user. login", "whitespace"),
        ("user.login\t", "whitespace"),
        ("a." + "{a,b}" * 9, "alternatives"),
        ("a" * 1025, "more than 1024"),
    ],
)
def test_invalid_patterns(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidPatternError, match=re.escape(reason)) as raised:
        Pattern.parse(pattern)
    assert isinstance(raised.value, ValueError)


def test_pattern_must_be_str() -> None:
    with pytest.raises(InvalidPatternError, match="must be a str"):
        Pattern.parse(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("user.login", "user.login", True),
        ("user.login", "user.logins", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.**.b", "a.b", True),
        ("a.**.b", "a.x.y.b", True),
        ("a.**.b", "a.x.y.c", False),
        ("**.x.**", "x", True),
        ("**.x.**", "a.x.b.c", True),
        ("**.x.**", "a.b.c", False),
        ("a.**.**.b", "a.b", True),
        ("**.*", "a", True),
        ("*.**", "a.b.c", True),
        ("a.[abc]", "a.b", True),
        ("a.[abc]", "a.d", False),
        ("a.[a-c]x", "a.bx", True),
        ("a.[!a]", "a.b", True),
        ("a.[!a]", "a.a", False),
        ("a.[-a]", "a.-", True),
        ("a.[a-]", "a.-", True),
        ("a.[^a]", "a.^", True),  # ^ is literal; only ! negates
        ("a.{b*,c?}", "a.bxyz", True),
        ("a.{b*,c?}", "a.cx", True),
        ("a.{b*,c?}", "a.cxy", False),
        ("a.log{,in}", "a.log", True),
        ("a.log{,in}", "a.login", True),
        ("a.*in", "a.in", True),  # in-segment * may match nothing
        ("a.*in", "a.login", True),
        ("a,b", "a,b", True),  # a comma outside braces is literal
        ("a\\b", "a\\b", True),  # no escapes: backslash is literal
        ("$bus.*", "$bus.deadletter", True),
        ("$b*.x", "$bus.x", True),  # the first segment starts with a literal "$"
        ("?bus.x", "$bus.x", False),
        ("[$]bus.x", "$bus.x", False),
        ("{$bus,a}.x", "$bus.x", False),
        ("*.deadletter", "$bus.deadletter", False),
        ("**.deadletter", "$bus.deadletter", False),
        ("**.$bus.x", "$bus.x", False),
        ("a.*", "a.$b", True),  # "$" only reserves the first segment
        ("**", "a.$b", True),
    ],
)
def test_pattern_matches(pattern: str, event_type: str, expected: bool) -> None:
    assert Pattern.parse(pattern).matches(event_type) is expected
    assert reference_matches(pattern, event_type) is expected


def test_glob_does_not_backtrack_catastrophically() -> None:
    pattern = Pattern.parse("x.*a*a*a*a*a*a*a*a*a*b")
    assert not pattern.matches("x." + "a" * 250)
    assert pattern.matches("x." + "a" * 250 + "b")
    many = Pattern.parse(".".join(["**", "a"] * 20))
    assert not many.matches(".".join(["a"] * 100 + ["b"]))


def test_pattern_value_semantics() -> None:
    pattern = Pattern.parse("user.*")
    assert pattern == Pattern("user.*")
    assert hash(pattern) == hash(Pattern("user.*"))
    assert pattern != Pattern.parse("user.**")
    assert str(pattern) == pattern.text == "user.*"
    assert pickle.loads(pickle.dumps(pattern)) == pattern
    assert pickle.loads(pickle.dumps(pattern)).matches("user.login")
    assert Pattern.parse("a.b").is_literal
    assert not Pattern.parse("a.b?").is_literal
    with pytest.raises(AttributeError):
        pattern.text = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("workflow.*.complete", "workflow."),
        ("user.log?n", "user.log"),
        ("*.error", ""),
        ("**", ""),
        ("**.error", ""),
        ("agent.**", "agent"),
        ("agent.**.**", "agent"),
        ("agent.**.x", "agent."),
        ("agent.x.**", "agent.x"),
        ("a.b", "a.b"),
        ("$bus.**", "$bus"),
        ("tool.{start,stop}", "tool.st"),
        ("tool.x{a,b}", "tool.x"),
        ("tool.{a*,b}", "tool."),
        ("tool.[ab]x", "tool."),
    ],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert Pattern.parse(pattern).literal_prefix == prefix


@settings(max_examples=300, deadline=None)
@given(patterns, st.lists(event_types, max_size=10))
def test_matches_agrees_with_reference(pattern: str, extra: list[str]) -> None:
    parsed = Pattern.parse(pattern)
    for event_type in UNIVERSE + extra:
        expected = reference_matches(pattern, event_type)
        assert parsed.matches(event_type) is expected, (pattern, event_type)
        if expected:  # literal_prefix is sound
            assert event_type.startswith(parsed.literal_prefix), (pattern, event_type)


# ----------------------------------------------------------------------- trie


@settings(max_examples=200, deadline=None)
@given(
    st.lists(patterns, min_size=1, max_size=8),
    st.lists(event_types, max_size=10),
    st.data(),
)
def test_trie_agrees_with_reference(
    texts: list[str], extra: list[str], data: st.DataObject
) -> None:
    trie: TopicTrie[int] = TopicTrie()
    live = dict(enumerate(texts))
    for index, text in live.items():
        trie.add(Pattern.parse(text), index)
    removed = data.draw(st.sets(st.sampled_from(sorted(live))))
    for index in removed:
        assert trie.remove(Pattern.parse(live.pop(index)), index)
    assert len(trie) == len(live)
    for event_type in UNIVERSE + extra:
        expected = tuple(i for i, text in live.items() if reference_matches(text, event_type))
        assert trie.match(event_type) == expected, event_type
        assert trie.match(event_type) == expected, event_type  # cached
    for index in sorted(live):
        trie.remove(Pattern.parse(live[index]), index)
    assert len(trie) == 0
    assert trie._root.is_empty()  # every node was pruned


def test_match_order_is_add_order() -> None:
    trie: TopicTrie[str] = TopicTrie()
    for value, text in [("1", "**"), ("2", "user.login"), ("3", "user.*"), ("4", "*.login")]:
        trie.add(Pattern.parse(text), value)
    trie.add(Pattern.parse("user.{login,x}"), "5")
    trie.add(Pattern.parse("**.login"), "6")
    assert trie.match("user.login") == ("1", "2", "3", "4", "5", "6")
    assert trie.match("user.x") == ("1", "3", "5")
    assert trie.match("nobody.home") == ("1",)
    assert trie.match("$bus.deadletter") == ()


def test_value_under_several_matching_patterns_appears_once() -> None:
    trie: TopicTrie[object] = TopicTrie()
    first, second = object(), ["unhashable"]
    trie.add(Pattern.parse("a.*"), first)
    trie.add(Pattern.parse("a.**"), second)
    trie.add(Pattern.parse("**.b"), first)
    trie.add(Pattern.parse("a.b"), second)
    assert trie.match("a.b") == (first, second)


def test_duplicate_add_and_remove() -> None:
    trie: TopicTrie[str] = TopicTrie()
    pattern = Pattern.parse("a.*")
    trie.add(pattern, "v")
    trie.add(pattern, "v")
    assert len(trie) == 2
    assert trie.match("a.b") == ("v",)
    assert trie.remove(pattern, "v")
    assert trie.match("a.b") == ("v",)
    assert trie.remove(pattern, "v")
    assert not trie.remove(pattern, "v")
    assert not trie.remove(Pattern.parse("x.y.z"), "v")
    assert not trie.remove(Pattern.parse("a.[bc]"), "v")
    assert trie.match("a.b") == ()
    assert len(trie) == 0


def test_remove_needs_the_same_pattern() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add(Pattern.parse("a.**.**"), "v")
    assert not trie.remove(Pattern.parse("a.**"), "v")  # equal by text, not by meaning
    assert trie.remove(Pattern.parse("a.**.**"), "v")


def test_cache_is_invalidated_on_add_and_remove() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add(Pattern.parse("user.*"), "a")
    first = trie.match("user.login")
    assert first == ("a",)
    assert trie.match("user.login") is first  # served from the cache
    assert trie.match("other") == ()
    trie.add(Pattern.parse("**.login"), "b")
    assert trie.match("user.login") == ("a", "b")
    assert trie.match("other.login") == ("b",)
    assert trie.remove(Pattern.parse("user.*"), "a")
    assert trie.match("user.login") == ("b",)
    assert not trie.remove(Pattern.parse("user.*"), "a")
    assert trie.match("user.login") == ("b",)


def test_trie_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "CACHE_LIMIT", 4)
    trie: TopicTrie[str] = TopicTrie()
    trie.add(Pattern.parse("**"), "all")
    for index in range(20):
        assert trie.match(f"t.{index}") == ("all",)
        assert len(trie._cache) <= 4


def test_items_lists_entries_in_add_order() -> None:
    trie: TopicTrie[int] = TopicTrie()
    texts = ["b.*", "a", "**", "a.{x,y}", "a.b"]
    for index, text in enumerate(texts):
        trie.add(Pattern.parse(text), index)
    assert trie.items() == [(Pattern.parse(t), i) for i, t in enumerate(texts)]


def test_non_matching_literal_subscriptions_are_never_visited() -> None:
    # The routing-cost rule, checked structurally: 10,000 literal and prefix
    # patterns that do not match leave the walk with the same live states.
    trie: TopicTrie[int] = TopicTrie()
    for index in range(5_000):
        trie.add(Pattern.parse(f"svc{index}.event"), index)
        trie.add(Pattern.parse(f"svc{index}.**"), index)
    trie.add(Pattern.parse("user.*"), -1)
    assert trie.match("user.login") == (-1,)
    assert trie.match("svc7.event") == (7,)
    assert trie.match("svc7.x.y") == (7,)
    assert len(trie._root.literal) == 5_001
    assert trie._root.star is None
    assert not trie._root.globs


def test_non_matching_globs_are_skipped_by_their_lead() -> None:
    trie: TopicTrie[int] = TopicTrie()
    for index in range(2_000):
        trie.add(Pattern.parse(f"svc{index}?.event"), index)
        trie.add(Pattern.parse(f"user.x{index}y*"), index)
    trie.add(Pattern.parse("user.{login,logout}"), -1)
    trie.add(Pattern.parse("user.?ogin"), -2)
    user = trie._root.literal["user"]
    assert len(user.lead_lengths) <= 6  # "", "x0y".."x1999y", "login", "logout"
    assert trie.match("user.login") == (-1, -2)
    assert trie.match("user.x17yz") == (17,)
    assert trie.match("svc12a.event") == (12,)
    assert trie.remove(Pattern.parse("user.{login,logout}"), -1)
    assert "logout" not in user.glob_index
    assert trie.match("user.login") == (-2,)


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("a.**.b", ["a.b", "a.x.b", "a.x.y.b"], ["a.x.c"]),
        ("**.x.**", ["x", "a.x", "x.b", "a.x.b"], ["a.b"]),
        ("user.log*", ["user.log", "user.login", "user.logout"], ["user.login.x"]),
        ("v[0-9].*", ["v1.ready"], ["vx.ready"]),
        ("$bus.**", ["$bus.deadletter", "$bus.backpressure.started"], ["bus.deadletter"]),
    ],
)
def test_docs_table(pattern: str, yes: list[str], no: list[str]) -> None:
    parsed = Pattern.parse(pattern)
    assert all(parsed.matches(t) for t in yes)
    assert not any(parsed.matches(t) for t in no)
