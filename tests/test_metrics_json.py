"""A node's figures as JSON (the ``METRICS`` answer), and what a malformed answer does."""

from __future__ import annotations

import json

import pytest

from actors import BridgeError
from actors._model.metrics import BridgeStatistics, BusMetrics, SubscriptionStatistics
from actors._model.metrics_json import (
    metrics_answer,
    metrics_from_answer,
    metrics_from_json,
    metrics_to_json,
)

METRICS = BusMetrics(
    published=10,
    delivered=9,
    dropped=1,
    rejected=0,
    expired=0,
    handler_errors=2,
    dead_letters=1,
    subscriptions=1,
    events_per_second=3.0,
    peak_events_per_second=4.0,
    latency_p50=None,
    latency_p90=None,
    latency_p99=None,
    latency_max=None,
    per_subscription=(SubscriptionStatistics("sub-1", "a.*", 9, 1, 2, 0, 10),),
    journal_write_latency=0.0001,
    bridge=BridgeStatistics(frames_sent=3, peers_alive=("b", "c"), synced_peers=("b",)),
)


def test_metrics_round_trip_through_json_text() -> None:
    text = json.dumps(metrics_to_json(METRICS))
    assert metrics_from_json(json.loads(text)) == METRICS


def test_an_answer_carries_the_figures_and_the_peers_silence() -> None:
    event = metrics_answer(METRICS, {"b": 0.25})
    back = type(event).from_bytes(event.to_bytes())
    assert metrics_from_answer([back]) == (METRICS, {"b": 0.25})


def test_unknown_keys_are_ignored_and_missing_defaults_filled() -> None:
    raw = metrics_to_json(METRICS)
    raw["from_a_newer_node"] = 1
    del raw["journal_size_bytes"]
    assert metrics_from_json(raw).journal_size_bytes == 0


@pytest.mark.parametrize(
    "raw",
    [None, [], {"published": 1}, {**metrics_to_json(METRICS), "per_subscription": "x"}],
)
def test_malformed_figures_raise_bridge_error(raw: object) -> None:
    with pytest.raises(BridgeError, match="malformed"):
        metrics_from_json(raw)


def test_a_malformed_answer_raises_bridge_error() -> None:
    with pytest.raises(BridgeError, match="malformed"):
        metrics_from_answer([])
    bad = metrics_answer(METRICS, {"b": 0.1})
    with pytest.raises(BridgeError, match="malformed"):
        metrics_from_answer([type(bad)(event_type="node.metrics", data={"heard": {"b": "x"}})])
