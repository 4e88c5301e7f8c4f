"""The Event envelope: defaults, immutability, copies, the dict form, expiry."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from actors._errors import InvalidEventError
from actors._model.event import Event, expired_unix, stamped, with_fields
from actors._model.uuid7 import uuid7

# -- construction and defaults ----------------------------------------------------


def test_keyword_construction_and_defaults() -> None:
    before = datetime.now(UTC)
    event = Event(event_type="user.login", data={"user_id": "123"})
    after = datetime.now(UTC)
    assert event.event_type == "user.login"
    assert event.data == {"user_id": "123"}
    assert isinstance(event.id, uuid.UUID)
    assert event.id.version == 7
    assert before <= event.timestamp <= after
    assert event.timestamp.tzinfo is UTC
    assert event.correlation_id is None
    assert event.causation_id is None
    assert event.source is None
    assert event.target is None
    assert event.tags == ()
    assert event.priority == 0
    assert event.ttl is None
    assert event.language == "python"
    assert dict(event.metadata) == {}
    assert event.sequence is None
    assert event.origin is None


def test_field_names_follow_the_spec() -> None:
    names = [f.name for f in dataclasses.fields(Event)]
    assert names == [
        "event_type",
        "data",
        "id",
        "timestamp",
        "correlation_id",
        "causation_id",
        "source",
        "target",
        "tags",
        "priority",
        "ttl",
        "language",
        "metadata",
        "sequence",
        "origin",
    ]


def test_event_requires_keywords_and_event_type() -> None:
    with pytest.raises(TypeError):
        Event("user.login")  # type: ignore[misc]
    with pytest.raises(TypeError):
        Event()  # type: ignore[call-arg]


def test_event_is_frozen_and_slotted() -> None:
    event = Event(event_type="a.b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.priority = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del event.data  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


def test_every_field_can_be_given() -> None:
    ts = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    cid, caid, eid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    event = Event(
        event_type="workflow.step",
        data=[1, 2.5, "x", None, True, {"k": []}],
        id=eid,
        timestamp=ts,
        correlation_id=cid,
        causation_id=caid,
        source="agent-1",
        target="agent-2",
        tags=["a", "b"],
        priority=-5,
        ttl=30,
        language="rust",
        metadata={"k": "v"},
        sequence=9,
        origin="node-a",
    )
    assert (event.id, event.timestamp, event.correlation_id, event.causation_id) == (
        eid,
        ts,
        cid,
        caid,
    )
    assert event.tags == ("a", "b")
    assert event.ttl == 30.0
    assert isinstance(event.ttl, float)
    assert event.metadata == {"k": "v"}
    assert (event.sequence, event.origin, event.language) == (9, "node-a", "rust")


def test_ids_are_fresh_and_time_ordered() -> None:
    events = [Event(event_type="a") for _ in range(1000)]
    ids = [e.id for e in events]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)


# -- equality, hashing, copies ------------------------------------------------------


def _sample() -> Event:
    return Event(
        event_type="a.b",
        data={"k": [1, 2.0]},
        correlation_id=uuid7(),
        tags=("t",),
        metadata={"m": "n"},
        ttl=3.0,
    )


def test_equality_compares_every_field_and_hash_uses_id() -> None:
    event = _sample()
    same = with_fields(event)
    assert same == event
    assert same is not event
    assert hash(same) == hash(event) == hash(event.id)
    assert stamped(event, 1, None) != event
    assert with_fields(event, priority=1) != event
    assert {event, same} == {event}


def test_stamped_sets_sequence_and_origin_only() -> None:
    event = _sample()
    marked = stamped(event, 42, "node-a")
    assert (marked.sequence, marked.origin) == (42, "node-a")
    assert (event.sequence, event.origin) == (None, None)
    assert type(marked) is Event
    assert with_fields(marked, sequence=None, origin=None) == event
    with pytest.raises(dataclasses.FrozenInstanceError):
        marked.sequence = 1  # type: ignore[misc]


def test_with_changes_fields_without_validation() -> None:
    event = _sample()
    cid, caid = uuid7(), uuid7()
    changed = with_fields(event, correlation_id=cid, causation_id=caid)
    assert (changed.correlation_id, changed.causation_id) == (cid, caid)
    assert changed.data is event.data
    assert event.correlation_id != cid
    with pytest.raises(TypeError, match="nope"):
        with_fields(event, nope=1)


def test_dataclasses_replace_validates() -> None:
    event = _sample()
    assert dataclasses.replace(event, priority=3).priority == 3
    with pytest.raises(InvalidEventError):
        dataclasses.replace(event, event_type="")


def test_pickle_and_copy() -> None:
    event = stamped(_sample(), 7, "n")
    for clone in (pickle.loads(pickle.dumps(event)), copy.copy(event), copy.deepcopy(event)):
        assert clone == event
        assert type(clone.metadata) is type(event.metadata)
    assert pickle.loads(pickle.dumps(Event(event_type="a"))).metadata == {}


# -- dict form ----------------------------------------------------------------------


def test_to_dict_is_plain_json() -> None:
    event = stamped(_sample(), 3, "n")
    d = event.to_dict()
    assert d["id"] == str(event.id)
    assert d["timestamp"] == event.timestamp.isoformat()
    assert d["tags"] == ["t"]
    assert type(d["metadata"]) is dict
    assert Event.from_dict(json.loads(json.dumps(d))) == event


def test_from_dict_minimal_and_errors() -> None:
    event = Event.from_dict({"event_type": "a.b", "data": [1]})
    assert (event.event_type, event.data, event.sequence) == ("a.b", [1], None)
    assert Event.from_dict({"event_type": "a", "tags": None, "metadata": None}).tags == ()
    with pytest.raises(InvalidEventError, match="unknown"):
        Event.from_dict({"event_type": "a", "typo": 1})
    with pytest.raises(InvalidEventError, match="event_type"):
        Event.from_dict({"data": 1})
    with pytest.raises(InvalidEventError, match="mapping"):
        Event.from_dict([("event_type", "a")])  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="correlation_id"):
        Event.from_dict({"event_type": "a", "correlation_id": "not-a-uuid"})
    with pytest.raises(InvalidEventError, match="ISO 8601"):
        Event.from_dict({"event_type": "a", "timestamp": "yesterday"})
    with pytest.raises(InvalidEventError, match="timezone-aware"):
        Event.from_dict({"event_type": "a", "timestamp": "2024-01-01T00:00:00"})
    with pytest.raises(InvalidEventError, match="priority"):
        Event.from_dict({"event_type": "a", "priority": "high"})


# -- expiry ---------------------------------------------------------------------------


def test_expiry() -> None:
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    forever = Event(event_type="a", timestamp=ts)
    assert not forever.expired()
    assert not expired_unix(forever, time.time())
    event = Event(event_type="a", timestamp=ts, ttl=10)
    assert not event.expired(ts + timedelta(seconds=10))
    assert event.expired(ts + timedelta(seconds=10, microseconds=1))
    assert event.expired()
    assert not expired_unix(event, ts.timestamp() + 10)
    assert expired_unix(event, ts.timestamp() + 10.5)
    fresh = Event(event_type="a", ttl=3600)
    assert not fresh.expired()
    assert not expired_unix(fresh, time.time())
