from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("schema_version", "event_type", "id", "timestamp_us", "data_json", "correlation_id", "causation_id", "source", "target", "tags", "priority", "ttl", "language", "metadata", "sequence", "origin")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    CAUSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    event_type: str
    id: bytes
    timestamp_us: int
    data_json: bytes
    correlation_id: bytes
    causation_id: bytes
    source: str
    target: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    priority: int
    ttl: float
    language: str
    metadata: _containers.ScalarMap[str, str]
    sequence: int
    origin: str
    def __init__(self, schema_version: _Optional[int] = ..., event_type: _Optional[str] = ..., id: _Optional[bytes] = ..., timestamp_us: _Optional[int] = ..., data_json: _Optional[bytes] = ..., correlation_id: _Optional[bytes] = ..., causation_id: _Optional[bytes] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., priority: _Optional[int] = ..., ttl: _Optional[float] = ..., language: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., sequence: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...
