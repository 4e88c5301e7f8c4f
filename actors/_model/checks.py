"""The argument checks of the facades' public methods (``EventBus``, ``AsyncEventBus``).

Each function checks every argument of one method (or one family of
methods) and raises ``TypeError`` or ``ValueError`` naming the argument, so
the facade calls it on its first line, before any state changes.  Built from
the primitives in ``guards``; the decisions are listed in
``docs/architecture.md`` ("Arguments").
"""

from __future__ import annotations

import sys
import threading

import pykka

from actors._model.config import MAX_SIZE, EventConfig, NodeConfig, OverflowStrategy
from actors._model.event import Event
from actors._model.guards import (
    check_bool,
    check_callable,
    check_each,
    check_enum,
    check_instance,
    check_int,
    check_number,
    check_str,
    check_timeout,
    check_uuid,
)
from actors._model.patterns import Pattern
from actors._model.query import EventQuery

__all__ = [
    "check_async_bus",
    "check_bus",
    "check_correlated",
    "check_events",
    "check_names",
    "check_policy",
    "check_query",
    "check_remote",
    "check_replay",
    "check_request",
    "check_stream",
    "check_subscribe",
    "check_timeout",
]


def check_bus(config: object, name: object = None, node: object = None) -> None:
    """Check ``EventBus(config, name=, node=)``."""
    check_instance("config", config, EventConfig, optional=True)
    check_str("name", name, optional=True)
    check_instance("node", node, NodeConfig, optional=True)


def check_names(names: object, timeout: object) -> None:
    """Check ``wait_for_peers(names, timeout)``: node names (never one bare ``str``)."""
    for item in check_each("names", names, str):
        check_str("names", item)
    check_timeout("timeout", timeout)


def check_remote(node: object, timeout: object) -> None:
    """Check the node name and timeout of a call to a connected node."""
    check_str("node", node)
    check_timeout("timeout", timeout)


def check_request(timeout: object, max_replies: object, node: object) -> None:
    """Check the arguments of ``request``/``request_all`` before anything is published."""
    check_timeout("timeout", timeout)
    check_int("max_replies", max_replies, minimum=1, optional=True)
    check_str("node", node, optional=True)


def check_events(events: object) -> list[Event]:
    """Return ``publish_many``'s events as a list; raise ``TypeError`` unless all are Events."""
    return list(check_each("events", events, Event))


def check_correlated(correlation_id: object, timeout: object = None) -> None:
    """Check ``get_correlated``/``trace``/``publish_correlated``: a ``uuid.UUID`` (not a str)."""
    check_uuid("correlation_id", correlation_id)
    check_timeout("timeout", timeout)


def check_subscribe(  # noqa: PLR0917 - mirrors subscribe()'s own arguments
    pattern: object,
    handler: object,
    filter: object,
    capacity: object,
    overflow: object,
    from_sequence: object,
    durable: object,
    dedicated_thread: object,
) -> None:
    """Check every argument of ``subscribe`` (the pattern's grammar is checked by ``Pattern``)."""
    Pattern.parse(pattern)  # type: ignore[arg-type] # InvalidPatternError for a non-str too
    if not (callable(handler) or isinstance(handler, pykka.ActorRef)):
        raise TypeError(f"handler must be callable or a pykka.ActorRef, not {handler!r}")
    check_stream(filter, capacity, overflow, from_sequence)
    check_str("durable", durable, optional=True)
    if isinstance(durable, str) and not durable.isascii():
        try:
            durable.encode("utf-8")  # the checkpoint's key in the journal
        except UnicodeEncodeError as exc:
            raise ValueError(f"durable is not valid Unicode: {exc}") from None
    check_bool("dedicated_thread", dedicated_thread)


def check_policy(timeout: object, retry_backoff: object, retries: object) -> None:
    """Check a handler policy (``subscribe``/``respond``): each ``None`` or a finite number.

    ``timeout`` seconds ``> 0``; ``retry_backoff`` seconds ``>= 0`` (0 retries
    at once); ``retries`` an ``int >= 0`` (None: ``EventConfig.handler_retries``).
    """
    check_number("timeout", timeout, positive=True, maximum=threading.TIMEOUT_MAX, optional=True)
    check_number(
        "retry_backoff", retry_backoff, minimum=0, maximum=threading.TIMEOUT_MAX, optional=True
    )
    check_int("retries", retries, minimum=0, maximum=sys.maxsize, optional=True)


def check_stream(filter: object, capacity: object, overflow: object, from_sequence: object) -> None:
    """Check the subscription options shared by ``subscribe`` and ``stream``."""
    if filter is not None and not callable(filter):
        raise TypeError(
            f"filter must be None, an EventFilter or a callable, not {type(filter).__name__}"
        )
    check_int("capacity", capacity, minimum=1, maximum=MAX_SIZE, optional=True)
    check_enum("overflow", overflow, OverflowStrategy, optional=True)
    check_int("from_sequence", from_sequence, minimum=0, optional=True)


def check_query(query: object, node: object = None, timeout: object = None) -> None:
    """Check ``query(query, node=, timeout=)``."""
    check_instance("query", query, EventQuery)
    check_str("node", node, optional=True)
    check_timeout("timeout", timeout)


def check_replay(query: object, handler: object, speed: object, page_size: object) -> None:
    """Check ``replay(query, handler, speed=, page_size=)``."""
    check_instance("query", query, EventQuery)
    check_callable("handler", handler)
    check_number("speed", speed, positive=True, optional=True)
    check_int("page_size", page_size, minimum=1)


def check_async_bus(config: object, bus: object, bus_type: type) -> None:
    """Check ``AsyncEventBus(config, bus=)``: at most one of the two."""
    check_instance("config", config, EventConfig, optional=True)
    check_instance("bus", bus, bus_type, optional=True)
    if config is not None and bus is not None:
        raise TypeError("pass either config or bus, not both (the bus has its own config)")
