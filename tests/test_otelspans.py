"""Span and trace ids derived from events (``actors._model.otelspans``)."""

from __future__ import annotations

import uuid

from actors import Event
from actors._model.otelspans import event_attributes, parent_span_id, span_id_of, trace_id_of


def test_ids_are_deterministic_valid_and_distinct() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert span_id_of(a) == span_id_of(uuid.UUID(str(a)))
    assert span_id_of(a) != span_id_of(b)
    assert 0 < span_id_of(a) < 2**64


def test_a_workflow_is_one_trace_and_a_cause_is_the_parent() -> None:
    cid = uuid.uuid4()
    start = Event(event_type="wf.start", correlation_id=cid)
    step = Event(event_type="wf.step", correlation_id=cid, causation_id=start.id)
    assert trace_id_of(start) == trace_id_of(step) == cid.int
    assert parent_span_id(start) is None
    assert parent_span_id(step) == span_id_of(start.id)


def test_an_uncorrelated_event_is_a_trace_of_its_own_without_parent() -> None:
    first = Event(event_type="x")
    caused = Event(event_type="y", causation_id=first.id)
    assert trace_id_of(first) != trace_id_of(caused)
    assert 0 < trace_id_of(first) < 2**128
    assert parent_span_id(caused) is None


def test_attributes_leave_out_what_the_event_does_not_have() -> None:
    attrs = event_attributes(Event(event_type="a.b"))
    assert attrs["messaging.destination.name"] == "a.b"
    assert "llmspell.event.source" not in attrs
    assert "messaging.message.conversation_id" not in attrs
