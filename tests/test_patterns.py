"""Tests of the topic grammar: event types, the pattern parser and the matcher."""

from __future__ import annotations

import pickle
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actors._model.patterns as patterns_module
from actors._errors import EventBusError, InvalidEventError, InvalidPatternError
from actors._model.patterns import Pattern, is_reserved, validate_event_type
from actors._model.trie import TopicTrie
from tests._support import UNIVERSE, event_types, patterns, reference_matches

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
    monkeypatch.setattr(patterns_module, "CACHE_LIMIT", 3)
    prefix = f"bounded{uuid.uuid4().hex}"  # types no earlier test cached
    for index in range(10):
        validate_event_type(f"{prefix}.{index}")
        assert patterns_module.cached_type_count() <= 3
    assert validate_event_type(f"{prefix}.0") == f"{prefix}.0"  # evicted, still valid


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
