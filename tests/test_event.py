"""The Event envelope: defaults, validation, immutability, copies, expiry, uuid7."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import pickle
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from actors._errors import InvalidEventError
from actors._model.event import MAX_DATA_DEPTH, Event
from actors._model.uuid7 import uuid7, uuid_from_int

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


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["", "a..b", ".a", "a.", "a b", "a.*", "x" * 256, 5, None])
def test_invalid_event_type(event_type: object) -> None:
    with pytest.raises(InvalidEventError):
        Event(event_type=event_type)  # type: ignore[arg-type]


def test_event_type_str_subclass_is_stored_as_str() -> None:
    class Topic(str):
        __slots__ = ()

    event = Event(event_type=Topic("user.login"))
    assert type(event.event_type) is str
    assert event.event_type == "user.login"


def test_reserved_types_can_be_constructed() -> None:
    assert Event(event_type="$bus.deadletter").event_type == "$bus.deadletter"


@pytest.mark.parametrize(
    "data",
    [
        None,
        0,
        -(2**80),
        1.5,
        -0.0,
        "text",
        "\ud800",
        True,
        [],
        {},
        {"a": [1, {"b": None}]},
        [[[[1]]]],
    ],
)
def test_valid_data(data: object) -> None:
    assert Event(event_type="a", data=data).data == data  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({1, 2}, "set"),
        ((1, 2), "tuple"),
        (b"x", "bytes"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ({"a": [1, float("-inf")]}, "data['a'][1]"),
        ({1: "x"}, "key 1"),
        ({"a": {("t",): 1}}, "data['a']"),
        ({"when": datetime.now(UTC)}, "datetime"),
        pytest.param(2**20000, "too large", id="huge-int"),
        ([object()], "object"),
    ],
)
def test_invalid_data_names_the_reason(data: object, reason: str) -> None:
    with pytest.raises(InvalidEventError, match=None) as info:
        Event(event_type="a", data=data)  # type: ignore[arg-type]
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_data_subclasses_are_accepted() -> None:
    class D(dict):  # type: ignore[type-arg]
        pass

    class L(list):  # type: ignore[type-arg]
        pass

    class S(str):
        pass

    event = Event(event_type="a", data=D(x=L([S("y"), 1])))
    assert event.data == {"x": ["y", 1]}


def test_cyclic_and_too_deep_data_rejected() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(InvalidEventError, match="deeper"):
        Event(event_type="a", data=cyclic)  # type: ignore[arg-type]
    deep: object = 1
    for _ in range(MAX_DATA_DEPTH + 1):
        deep = [deep]
    with pytest.raises(InvalidEventError, match="deeper"):
        Event(event_type="a", data=deep)  # type: ignore[arg-type]
    ok: object = 1
    for _ in range(MAX_DATA_DEPTH):
        ok = [ok]
    Event(event_type="a", data=ok)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["id", "correlation_id", "causation_id"])
def test_ids_must_be_uuids(name: str) -> None:
    with pytest.raises(InvalidEventError, match=name):
        Event(event_type="a", **{name: str(uuid.uuid4())})  # type: ignore[arg-type]


def test_uuid_subclass_is_accepted() -> None:
    class MyUUID(uuid.UUID):
        pass

    value = MyUUID(int=5)
    assert Event(event_type="a", id=value).id == uuid.UUID(int=5)


def test_timestamp_must_be_aware_and_becomes_utc() -> None:
    with pytest.raises(InvalidEventError, match="timezone-aware"):
        Event(event_type="a", timestamp=datetime(2024, 1, 1))
    with pytest.raises(InvalidEventError, match="datetime"):
        Event(event_type="a", timestamp=1700000000.0)  # type: ignore[arg-type]
    plus2 = timezone(timedelta(hours=2))
    event = Event(event_type="a", timestamp=datetime(2024, 1, 1, 12, tzinfo=plus2))
    assert event.timestamp == datetime(2024, 1, 1, 10, tzinfo=UTC)
    assert event.timestamp.tzinfo is UTC
    folded = Event(event_type="a", timestamp=datetime(2024, 1, 1, tzinfo=UTC, fold=1))
    assert folded.timestamp.fold == 0
    with pytest.raises(InvalidEventError, match="out of range"):
        Event(event_type="a", timestamp=datetime.max.replace(tzinfo=timezone(-timedelta(hours=1))))


def test_tags_are_coerced_to_a_tuple_of_str() -> None:
    assert Event(event_type="a", tags=["x", "y"]).tags == ("x", "y")
    assert Event(event_type="a", tags=iter(["x"])).tags == ("x",)
    with pytest.raises(InvalidEventError, match="tags"):
        Event(event_type="a", tags="xy")
    with pytest.raises(InvalidEventError, match="tag"):
        Event(event_type="a", tags=("x", 1))  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="tags"):
        Event(event_type="a", tags=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [True, 1.0, "1", 2**63, -(2**63) - 1])
def test_invalid_priority(priority: object) -> None:
    with pytest.raises(InvalidEventError, match="priority"):
        Event(event_type="a", priority=priority)  # type: ignore[arg-type]


def test_priority_bounds() -> None:
    assert Event(event_type="a", priority=2**63 - 1).priority == 2**63 - 1
    assert Event(event_type="a", priority=-(2**63)).priority == -(2**63)


@pytest.mark.parametrize("ttl", [-1, float("nan"), float("inf"), True, "5", 10**400])
def test_invalid_ttl(ttl: object) -> None:
    with pytest.raises(InvalidEventError, match="ttl"):
        Event(event_type="a", ttl=ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize("sequence", [-1, 2**64, True, 1.0])
def test_invalid_sequence(sequence: object) -> None:
    with pytest.raises(InvalidEventError, match="sequence"):
        Event(event_type="a", sequence=sequence)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["source", "target", "origin", "language"])
def test_text_fields_must_be_valid_str(name: str) -> None:
    with pytest.raises(InvalidEventError, match=name):
        Event(event_type="a", **{name: 5})  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match=name):
        Event(event_type="a", **{name: "bad\ud800"})  # type: ignore[arg-type]
    assert getattr(Event(event_type="a", **{name: "ünï"}), name) == "ünï"  # type: ignore[arg-type]


def test_metadata_is_an_immutable_copy() -> None:
    source = {"k": "v"}
    event = Event(event_type="a", metadata=source)
    source["k"] = "changed"
    assert event.metadata == {"k": "v"}
    with pytest.raises(TypeError):
        event.metadata["k"] = "x"  # type: ignore[index]
    with pytest.raises(InvalidEventError, match="metadata"):
        Event(event_type="a", metadata={"k": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidEventError, match="metadata"):
        Event(event_type="a", metadata={1: "v"})  # type: ignore[dict-item]
    with pytest.raises(InvalidEventError, match="metadata"):
        Event(event_type="a", metadata=[("k", "v")])  # type: ignore[arg-type]
    assert Event(event_type="a", metadata={}).metadata is Event(event_type="a").metadata


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
    same = event._with()
    assert same == event
    assert same is not event
    assert hash(same) == hash(event) == hash(event.id)
    assert event._stamped(1, None) != event
    assert event._with(priority=1) != event
    assert {event, same} == {event}


def test_stamped_sets_sequence_and_origin_only() -> None:
    event = _sample()
    stamped = event._stamped(42, "node-a")
    assert (stamped.sequence, stamped.origin) == (42, "node-a")
    assert (event.sequence, event.origin) == (None, None)
    assert type(stamped) is Event
    assert stamped._with(sequence=None, origin=None) == event
    with pytest.raises(dataclasses.FrozenInstanceError):
        stamped.sequence = 1  # type: ignore[misc]


def test_with_changes_fields_without_validation() -> None:
    event = _sample()
    cid, caid = uuid7(), uuid7()
    changed = event._with(correlation_id=cid, causation_id=caid)
    assert (changed.correlation_id, changed.causation_id) == (cid, caid)
    assert changed.data is event.data
    assert event.correlation_id != cid
    with pytest.raises(TypeError, match="nope"):
        event._with(nope=1)


def test_dataclasses_replace_validates() -> None:
    event = _sample()
    assert dataclasses.replace(event, priority=3).priority == 3
    with pytest.raises(InvalidEventError):
        dataclasses.replace(event, event_type="")


def test_pickle_and_copy() -> None:
    event = _sample()._stamped(7, "n")
    for clone in (pickle.loads(pickle.dumps(event)), copy.copy(event), copy.deepcopy(event)):
        assert clone == event
        assert type(clone.metadata) is type(event.metadata)
    assert pickle.loads(pickle.dumps(Event(event_type="a"))).metadata == {}


# -- dict form ----------------------------------------------------------------------


def test_to_dict_is_plain_json() -> None:
    event = _sample()._stamped(3, "n")
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
    assert not forever._expired_unix(time.time())
    event = Event(event_type="a", timestamp=ts, ttl=10)
    assert not event.expired(ts + timedelta(seconds=10))
    assert event.expired(ts + timedelta(seconds=10, microseconds=1))
    assert event.expired()
    assert not event._expired_unix(ts.timestamp() + 10)
    assert event._expired_unix(ts.timestamp() + 10.5)
    fresh = Event(event_type="a", ttl=3600)
    assert not fresh.expired()
    assert not fresh._expired_unix(time.time())


# -- uuid7 ----------------------------------------------------------------------------


def test_uuid7_layout() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after + 1
    assert value == uuid.UUID(str(value))
    assert pickle.loads(pickle.dumps(value)) == value


def test_uuid7_is_strictly_increasing() -> None:
    values = [uuid7() for _ in range(20_000)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_uuid7_is_unique_and_monotonic_across_threads() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def work(out: list[uuid.UUID]) -> None:
        start.wait(timeout=10)
        out.extend(uuid7() for _ in range(5000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    every = [u for out in results for u in out]
    assert len(set(every)) == len(every) == 20_000
    for out in results:
        assert out == sorted(out)


def test_uuid_from_int() -> None:
    value = uuid_from_int(2**128 - 1)
    assert value == uuid.UUID(int=2**128 - 1)
    assert value.is_safe is uuid.SafeUUID.unknown
    assert hash(value) == hash(uuid.UUID(int=2**128 - 1))
