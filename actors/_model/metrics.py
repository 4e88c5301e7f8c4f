"""Metrics: snapshots, the latency window, the rate meter, Prometheus text."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "BRIDGE_COUNTERS",
    "BridgeStatistics",
    "Counters",
    "BusMetrics",
    "COUNTER_METRICS",
    "LatencyWindow",
    "METRIC_HELP",
    "RateMeter",
    "SUBSCRIPTION_GAUGES",
    "SubscriptionStatistics",
    "escape_label",
    "to_prometheus",
]


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """A snapshot of one subscription (trio's ``MemoryChannelStatistics`` is the model).

    Every event the subscription accepted is in exactly one place::

        accepted == delivered + expired + dead_letters + dropped + queued + in_flight

    ``queued`` events wait in the mailbox; ``in_flight`` ones were taken by
    the subscriber and their batch is not finished (a blocked handler holds
    its whole batch in flight).  ``accepted`` counts the events routed to the
    subscription, plus stored events a catch-up subscription read, minus
    live events it skipped because it had read them from the journal.
    ``blocked`` is True while the subscriber's current turn has run longer
    than ``EventConfig.blocking_threshold``, for ``blocked_seconds`` so far.
    ``timeouts`` counts handler calls that ran past the subscription's
    ``timeout`` (a synchronous one is counted once, while it still runs).
    """

    id: str
    pattern: str
    delivered: int
    dropped: int
    errors: int
    queued: int
    capacity: int
    expired: int = 0
    dead_letters: int = 0
    in_flight: int = 0
    accepted: int = 0
    blocked: bool = False
    blocked_seconds: float = 0.0
    timeouts: int = 0


@dataclass(frozen=True, slots=True)
class BusMetrics:
    """A snapshot of the bus's figures.

    Latencies are publish-to-handler, in seconds, over the most recent
    deliveries (a window of ``LatencyWindow.size``); they are ``None`` before
    the first delivery.  ``events_per_second`` is the rate of the last
    complete second; ``peak_events_per_second`` the highest such rate seen.
    ``blocked_handlers`` counts the subscriptions whose handler has run one
    turn for longer than ``EventConfig.blocking_threshold``;
    ``handler_threads`` is the number of threads that run handlers now
    (``EventConfig.threads`` plus one for each blocked handler, up to
    ``max_threads``).  ``handler_timeouts`` counts handler calls that ran
    past their subscription's ``timeout``.  ``traces`` is the number of
    correlations whose events the bus holds in memory for ``trace()`` now;
    ``traces_evicted`` counts those dropped to keep within ``max_traces`` or
    past ``trace_ttl`` (``trace()`` then reads the journal, where there is
    one), ``traces_truncated`` those that lost their oldest events (outgrew
    ``max_events_per_trace``, or came back after their eviction), each once.
    """

    published: int
    delivered: int
    dropped: int
    rejected: int
    expired: int
    handler_errors: int
    dead_letters: int
    subscriptions: int
    events_per_second: float
    peak_events_per_second: float
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    latency_max: float | None
    per_subscription: tuple[SubscriptionStatistics, ...]
    journal_written: int = 0
    journal_write_latency: float | None = None
    journal_size_bytes: int = 0
    rate_limited: int = 0
    journal_corrupt_records: int = 0
    bridge: BridgeStatistics | None = None
    blocked_handlers: int = 0
    handler_threads: int = 0
    journal_lost_events: int = 0
    handler_timeouts: int = 0
    traces: int = 0
    traces_evicted: int = 0
    traces_truncated: int = 0


class LatencyWindow:
    """The most recent ``size`` latency samples; appends are thread-safe."""

    def __init__(self, size: int = 65_536) -> None:
        self.size = size
        self.samples: deque[float] = deque(maxlen=size)

    def percentiles(self) -> tuple[float | None, float | None, float | None, float | None]:
        """Return (p50, p90, p99, max) of the window, or four Nones when empty."""
        data = sorted(self.samples.copy())
        if not data:
            return None, None, None, None
        last = len(data) - 1

        def pick(q: float) -> float:
            return data[min(last, int(q * len(data)))]

        return pick(0.50), pick(0.90), pick(0.99), data[-1]


class RateMeter:
    """Count events per whole second; report the last complete second and the peak.

    Called by one thread (the router); readers only read plain numbers.
    """

    def __init__(self) -> None:
        self._second = int(time.monotonic())
        self._count = 0
        self.last_rate = 0.0
        self.peak_rate = 0.0

    def add(self, n: int, now: float | None = None) -> None:
        """Record ``n`` events at ``now`` (monotonic seconds)."""
        second = int(time.monotonic() if now is None else now)
        if second != self._second:
            self._roll(second)
        self._count += n

    def current(self, now: float | None = None) -> float:
        """Return the rate of the last complete second (0 if it was idle)."""
        second = int(time.monotonic() if now is None else now)
        if second == self._second:
            return self.last_rate
        if second == self._second + 1:
            return float(self._count)
        return 0.0

    def peak(self) -> float:
        """Return the highest per-second rate seen."""
        return self.peak_rate

    def _roll(self, second: int) -> None:
        rate = float(self._count) if second == self._second + 1 else 0.0
        self.peak_rate = max(self.peak_rate, float(self._count))
        self.last_rate = rate
        self._second = second
        self._count = 0


# The exported BusMetrics fields and their HELP text (Prometheus text and client forms).
METRIC_HELP = {
    "published": "Events accepted and sequenced by the bus ($bus events included).",
    "delivered": "Events handed to handlers.",
    "dropped": "Events dropped by full mailboxes.",
    "rejected": "Publishes rejected by REJECT mailboxes or BLOCK timeouts.",
    "expired": "Events not delivered because their ttl had passed.",
    "handler_errors": "Exceptions raised by handlers (each attempt).",
    "handler_timeouts": "Handler calls that ran past their subscription's timeout.",
    "dead_letters": "Events given up after the handler retries.",
    "subscriptions": "Live subscriptions.",
    "events_per_second": "Published events in the last complete second.",
    "peak_events_per_second": "Highest published events per second seen.",
    "journal_written": "Events written to the journal.",
    "journal_size_bytes": "Approximate size of the journal on disk.",
    "rate_limited": "Publishes refused by the rate limit.",
    "blocked_handlers": "Subscriptions whose handler has run one turn past blocking_threshold.",
    "handler_threads": "Threads that run handlers now (grows while handlers block).",
    "journal_corrupt_records": "Stored records skipped because they could not be read.",
    "journal_lost_events": "Acknowledged events a damaged journal no longer held at open.",
    "traces": "Correlations whose events are held in memory for trace().",
    "traces_evicted": "Traces dropped from memory (max_traces or trace_ttl).",
    "traces_truncated": "Traces that lost their oldest events (max_events_per_trace, or eviction).",
}

# Those of them exported as counters (``*_total``); the rest are gauges.
COUNTER_METRICS = {
    "published",
    "delivered",
    "dropped",
    "rejected",
    "expired",
    "handler_errors",
    "handler_timeouts",
    "dead_letters",
    "journal_written",
    "rate_limited",
    "journal_corrupt_records",
    "traces_evicted",
    "traces_truncated",
}

# The BridgeStatistics fields exported as counters (``*_bridge_<name>_total``).
BRIDGE_COUNTERS = (
    "frames_sent",
    "frames_received",
    "frames_dropped",
    "events_received",
    "events_recovered",
    "gaps",
    "gaps_unrecovered",
    "duplicates",
    "auth_refused",
    "events_too_large",
    "frames_too_large",
    "sequences_rejected",
    "hellos_refused",
)

# The SubscriptionStatistics fields exported as gauges (``id`` and ``pattern`` labels).
SUBSCRIPTION_GAUGES = (
    "delivered",
    "dropped",
    "errors",
    "queued",
    "in_flight",
    "capacity",
    "blocked",
    "timeouts",
)


def escape_label(value: str) -> str:
    """Escape a Prometheus label value (backslash, double quote, line feed)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_prometheus(metrics: BusMetrics, *, prefix: str = "llmspell_events") -> str:
    """Render ``metrics`` in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for f in fields(metrics):
        name = f.name
        value: Any = getattr(metrics, name)
        if name not in METRIC_HELP or value is None:
            continue
        kind = "counter" if name in COUNTER_METRICS else "gauge"
        metric = f"{prefix}_{name}_total" if kind == "counter" else f"{prefix}_{name}"
        lines += [
            f"# HELP {metric} {METRIC_HELP[name]}",
            f"# TYPE {metric} {kind}",
            f"{metric} {value}",
        ]
    lat = f"{prefix}_latency_seconds"
    lines += [
        f"# HELP {lat} Publish-to-handler latency over the recent window.",
        f"# TYPE {lat} gauge",
    ]
    for q, v in (
        ("0.5", metrics.latency_p50),
        ("0.9", metrics.latency_p90),
        ("0.99", metrics.latency_p99),
    ):
        if v is not None:
            lines.append(f'{lat}{{quantile="{q}"}} {v}')
    if metrics.latency_max is not None:  # as the prometheus-client form names it too
        top = f"{prefix}_latency_max_seconds"
        lines += [
            f"# HELP {top} Highest publish-to-handler latency in the recent window.",
            f"# TYPE {top} gauge",
            f"{top} {metrics.latency_max}",
        ]
    if metrics.journal_write_latency is not None:
        jw = f"{prefix}_journal_write_latency_seconds"
        lines += [
            f"# HELP {jw} Mean time of one journal batch write.",
            f"# TYPE {jw} gauge",
            f"{jw} {metrics.journal_write_latency}",
        ]
    if metrics.bridge is not None:
        bridge = metrics.bridge
        for name in BRIDGE_COUNTERS:
            metric = f"{prefix}_bridge_{name}_total"
            lines += [
                f"# HELP {metric} ZeroMQ bridge: {name.replace('_', ' ')}.",
                f"# TYPE {metric} counter",
                f"{metric} {getattr(bridge, name)}",
            ]
        metric = f"{prefix}_bridge_peers_alive"
        lines += [
            f"# HELP {metric} Peers heard within the heartbeat timeout.",
            f"# TYPE {metric} gauge",
            f"{metric} {len(bridge.peers_alive)}",
        ]
    for stat_name in SUBSCRIPTION_GAUGES:
        metric = f"{prefix}_subscription_{stat_name}"
        lines += [f"# HELP {metric} Per-subscription {stat_name}.", f"# TYPE {metric} gauge"]
        for s in metrics.per_subscription:
            labels = f'id="{escape_label(s.id)}",pattern="{escape_label(s.pattern)}"'
            lines.append(f"{metric}{{{labels}}} {int(getattr(s, stat_name))}")
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Counters:
    """The bridge's running counts (written by its I/O thread)."""

    frames_sent: int = 0
    frames_unsent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0
    events_received: int = 0
    events_delivered: int = 0
    events_recovered: int = 0
    auth_refused: int = 0
    recovery_retries: int = 0
    events_too_large: int = 0
    frames_too_large: int = 0
    sequences_rejected: int = 0
    hellos_refused: int = 0
    credit_stalls: int = 0
    events_dropped_lagging: int = 0
    publishers_held: int = 0
    credits_sent: int = 0
    requests_resent: int = 0


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    """A snapshot of the bridge's figures.

    ``frames_dropped`` counts garbage, truncated, oversized and unknown-version
    frames; ``frames_unsent`` frames the XPUB could not queue; ``gaps`` lost
    ranges detected, ``gaps_recovered`` / ``gaps_unrecovered`` how they ended
    and ``gaps_open`` those still being fetched (``gaps`` is their sum;
    ``recovery_retries`` counts requests asked again after no answer);
    ``events_too_large`` events this node could not send (over
    ``max_frame_bytes``), ``frames_too_large`` frames received over it (both
    logged at WARNING); ``sequences_rejected`` events whose origin sequence is
    out of range (forged or garbage); ``hellos_refused`` HELLOs refused (a
    duplicate name, a name bound to another key);
    ``duplicates`` remote events dropped by id; ``peers_alive`` the nodes heard
    within ``heartbeat_timeout``; ``synced_peers`` those that acknowledged this
    node's current subscriptions (events they publish from then on arrive).

    Flow control (``docs/cluster.md``): ``credit_stalls`` times the send
    queue stopped because a live peer was out of credit; ``send_queued`` the
    events waiting in it now, ``send_queue_peak`` the most that ever did;
    ``publishers_held`` times the queue filled and publishers were held
    (``BLOCK``: those still held after ``block_timeout`` count in the bus's
    ``rejected``); ``events_dropped_lagging`` events dropped for peers that
    asked to be dropped rather than hold anyone (``lag_policy="drop"``);
    ``credits_sent`` grants this node sent; ``credit_receivers`` the peers
    whose credit this node follows, ``lagging_peers`` those holding its
    queue now.

    Requests (``publish_remote``, remote queries and figures):
    ``requests_waiting`` this node's requests waiting for an answer now;
    ``requests_resent`` those sent again because their peer's route changed
    (it restarted on a new connection).
    """

    frames_sent: int = 0
    frames_unsent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0
    events_received: int = 0
    events_delivered: int = 0
    events_recovered: int = 0
    gaps: int = 0
    gaps_recovered: int = 0
    gaps_unrecovered: int = 0
    duplicates: int = 0
    auth_refused: int = 0
    recovery_retries: int = 0
    events_too_large: int = 0
    frames_too_large: int = 0
    sequences_rejected: int = 0
    hellos_refused: int = 0
    gaps_open: int = 0
    peers_alive: tuple[str, ...] = ()
    synced_peers: tuple[str, ...] = ()
    credit_stalls: int = 0
    events_dropped_lagging: int = 0
    publishers_held: int = 0
    credits_sent: int = 0
    send_queued: int = 0
    send_queue_peak: int = 0
    credit_receivers: tuple[str, ...] = ()
    lagging_peers: tuple[str, ...] = ()
    requests_waiting: int = 0
    requests_resent: int = 0
    counters: Counters = field(default_factory=Counters, repr=False, compare=False)
