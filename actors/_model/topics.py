"""The topic grammar in one import: patterns and event types (``patterns``), the trie (``trie``).

``docs/topics.md`` is the user's guide.
"""

from __future__ import annotations

from actors._model.patterns import (
    MAX_EVENT_TYPE_LENGTH,
    Pattern,
    is_reserved,
    validate_event_type,
)
from actors._model.trie import TopicTrie

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "Pattern",
    "TopicTrie",
    "is_reserved",
    "validate_event_type",
]
