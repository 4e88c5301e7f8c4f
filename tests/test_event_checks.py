"""The checks of Event's fields: every invalid value raises InvalidEventError with the reason."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from actors._errors import InvalidEventError
from actors._model.event import MAX_DATA_DEPTH, Event


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
