"""``BusMetrics`` as JSON, for a node's figures asked over the wire (``METRICS``).

Unknown keys are ignored and missing ones take their defaults, so nodes of
neighbouring versions still understand each other.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields
from typing import Any

from actors._errors import FrameError
from actors._model.event import Event
from actors._model.metrics import BridgeStatistics, BusMetrics, SubscriptionStatistics

__all__ = ["metrics_answer", "metrics_from_answer", "metrics_from_json", "metrics_to_json"]


def metrics_to_json(metrics: BusMetrics) -> dict[str, Any]:
    """Return ``metrics`` as a JSON-able dict (tuples become lists)."""
    out = asdict(metrics)
    if out.get("bridge") is not None:
        out["bridge"].pop("counters", None)
    result: dict[str, Any] = json.loads(json.dumps(out))
    return result


def _build(cls: type[Any], raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise FrameError(f"malformed {cls.__name__}: {raw!r:.80}")
    known = {f.name: f for f in fields(cls) if f.init and f.name != "counters"}
    args = {k: v for k, v in raw.items() if k in known}
    missing = [
        n
        for n, f in known.items()
        if n not in args and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise FrameError(f"malformed {cls.__name__}: missing {', '.join(missing)}")
    for name, value in args.items():
        if not _fits(known[name].type, value):
            raise FrameError(f"malformed {cls.__name__}: {name} is {value!r:.40}")
    return cls(**args)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# A field's type (as written: the module uses postponed annotations) -> its check.
_CHECKS: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _number,
    "float | None": lambda v: v is None or _number(v),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "tuple[str, ...]": lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) for x in v),
}


def _fits(annotation: Any, value: Any) -> bool:
    """Return whether ``value`` has the type a field of ``annotation`` holds (others: unchecked)."""
    check = _CHECKS.get(annotation) if isinstance(annotation, str) else None
    return check is None or bool(check(value))


def metrics_from_json(raw: Any) -> BusMetrics:
    """Rebuild ``BusMetrics`` from ``metrics_to_json``'s output; ``FrameError`` if malformed."""
    if not isinstance(raw, dict):
        raise FrameError(f"malformed metrics: {raw!r:.80}")
    data = dict(raw)
    subs = data.get("per_subscription") or []
    if not isinstance(subs, list):
        raise FrameError("malformed metrics: per_subscription is not a list")
    data["per_subscription"] = tuple(_build(SubscriptionStatistics, s) for s in subs)
    bridge = data.get("bridge")
    if bridge is not None:
        bridge = _build(BridgeStatistics, bridge)
        data["bridge"] = BridgeStatistics(
            **{
                **{f.name: getattr(bridge, f.name) for f in fields(bridge) if f.name != "counters"},
                "peers_alive": tuple(bridge.peers_alive),
                "synced_peers": tuple(bridge.synced_peers),
                "credit_receivers": tuple(bridge.credit_receivers),
                "lagging_peers": tuple(bridge.lagging_peers),
            }
        )
    result: BusMetrics = _build(BusMetrics, data)
    return result


def metrics_answer(metrics: BusMetrics, heard: dict[str, float]) -> Event:
    """Return the event that carries a node's figures in its answer to ``METRICS``.

    ``heard``: per peer, the seconds since the node last heard from it.
    """
    data: Any = {"metrics": metrics_to_json(metrics), "heard": heard}
    return Event(event_type="node.metrics", data=data)


def metrics_from_answer(events: list[Event]) -> tuple[BusMetrics, dict[str, float]]:
    """Return the figures ``metrics_answer`` carried; ``FrameError`` if malformed."""
    data: Any = events[0].data if events else None
    if not isinstance(data, dict) or not isinstance(data.get("heard"), dict):
        raise FrameError("malformed metrics answer")
    try:
        heard = {str(k): float(v) for k, v in data["heard"].items()}
    except (TypeError, ValueError, OverflowError) as exc:  # 10**400 is no float
        raise FrameError(f"malformed metrics answer: {exc}") from exc
    return metrics_from_json(data.get("metrics")), heard
