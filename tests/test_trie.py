"""Tests of the routing trie: it agrees with the reference matcher and skips what cannot match."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._model.patterns import Pattern
from actors._model.trie import TopicTrie
from tests._support import UNIVERSE, event_types, patterns, reference_matches


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
    assert trie.statistics().nodes == 1  # every node but the root was pruned


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


def test_trie_cache_is_bounded() -> None:
    trie: TopicTrie[str] = TopicTrie(cache_limit=4)
    trie.add(Pattern.parse("**"), "all")
    for index in range(20):
        assert trie.match(f"t.{index}") == ("all",)
        assert trie.statistics().cached_types <= 4


@pytest.mark.parametrize("limit", [0, -1, True, 2.5])
def test_cache_limit_must_be_a_positive_int(limit: object) -> None:
    with pytest.raises(ValueError, match="cache_limit"):
        TopicTrie(cache_limit=limit)  # type: ignore[arg-type]


def test_items_lists_entries_in_add_order() -> None:
    trie: TopicTrie[int] = TopicTrie()
    texts = ["b.*", "a", "**", "a.{x,y}", "a.b"]
    for index, text in enumerate(texts):
        trie.add(Pattern.parse(text), index)
    assert trie.items() == [(Pattern.parse(t), i) for i, t in enumerate(texts)]


def _work(trie: TopicTrie[int], event_type: str) -> int:
    """Return what matching ``event_type`` (a cache miss) cost the trie."""
    before = trie.statistics().work
    trie.match(event_type)
    return trie.statistics().work - before


def test_non_matching_literal_subscriptions_are_never_visited() -> None:
    # The routing-cost rule: 10,000 literal and prefix patterns that do not
    # match add nothing to the walk of a type they cannot match.
    small: TopicTrie[int] = TopicTrie()
    small.add(Pattern.parse("user.*"), -1)
    big: TopicTrie[int] = TopicTrie()
    for index in range(5_000):
        big.add(Pattern.parse(f"svc{index}.event"), index)
        big.add(Pattern.parse(f"svc{index}.**"), index)
    big.add(Pattern.parse("user.*"), -1)
    assert big.match("user.login") == small.match("user.login") == (-1,)
    assert _work(big, "user.logout") == _work(small, "user.logout")
    assert big.match("svc7.event") == (7,)
    assert big.match("svc7.x.y") == (7,)


def test_non_matching_globs_are_skipped_by_their_lead() -> None:
    small: TopicTrie[int] = TopicTrie()
    big: TopicTrie[int] = TopicTrie()
    for index in range(2_000):
        big.add(Pattern.parse(f"svc{index}?.event"), index)
        big.add(Pattern.parse(f"user.x{index}y*"), index)
    for trie in (small, big):
        trie.add(Pattern.parse("user.{login,logout}"), -1)
        trie.add(Pattern.parse("user.?ogin"), -2)
    assert big.match("user.login") == (-1, -2)
    assert _work(big, "user.logout") == _work(small, "user.logout")
    assert big.match("user.x17yz") == (17,)
    assert big.match("svc12a.event") == (12,)
    assert big.remove(Pattern.parse("user.{login,logout}"), -1)
    assert big.match("user.login") == (-2,)
    assert big.match("user.logout") == ()
