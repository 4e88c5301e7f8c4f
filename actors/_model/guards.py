"""Argument guards: the primitive checks every model class and facade uses.

Every public constructor and method calls these first, before it changes any
state, so a mistyped argument raises at once instead of failing later (or
silently) somewhere else.  A wrong *type* raises ``TypeError``, a value of the
right type out of its range raises ``ValueError``; both messages start with
the argument's name.  ``bool`` is never accepted where a number is expected
(it is an ``int`` to Python, never what the caller meant), and numbers must
be finite.  ``docs/architecture.md`` ("Arguments") lists the decisions; the checks of
the facades' methods, built from these, live in ``checks``.
"""

from __future__ import annotations

import enum
import math
import os
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_each",
    "check_enum",
    "check_instance",
    "check_int",
    "check_mapping",
    "check_node_fields",
    "check_number",
    "check_path",
    "check_str",
    "check_strings",
    "check_timeout",
    "check_uuid",
]

E = TypeVar("E", bound=enum.Enum)


def _kind(value: object) -> str:
    return type(value).__name__


def _number(value: float) -> str:
    """Show a number in a message; a huge int by its size (its repr may be refused)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an int of {value.bit_length()} bits"
    return repr(value)


def check_instance(
    name: str, value: object, cls: type | tuple[type, ...], *, optional: bool = False
) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of ``cls`` (or None if ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, cls):
        names = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
        raise TypeError(
            f"{name} must be {'None or ' if optional else ''}{names}, not {_kind(value)}"
        )


def check_bool(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {_kind(value)}")


def check_int(
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> None:
    """Raise unless ``value`` is an ``int`` (not ``bool``) in ``[minimum, maximum]``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {_kind(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    if maximum is not None and value > maximum:
        shown = f"a {value.bit_length()}-bit int" if value.bit_length() > 64 else f"{value:,}"
        raise ValueError(f"{name} must be <= {maximum:,}, not {shown}")


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    optional: bool = False,
) -> None:
    """Raise unless ``value`` is a finite ``int`` or ``float`` (not ``bool``) in range.

    ``minimum`` and ``maximum`` are inclusive; ``positive`` requires ``value > 0``.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {_number(value)}")
    if isinstance(value, int) and not -sys.float_info.max <= value <= sys.float_info.max:
        # 10**400: finite, but every use of it as a float raises OverflowError
        raise ValueError(f"{name} must be finite as a float, not {_number(value)}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, not {_number(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {_number(value)}")
    if maximum is not None and value > maximum:
        # The bound as it is (``:g`` showed 999999999 as 1e+09, above the value refused).
        raise ValueError(f"{name} must be <= {_number(maximum)}, not {_number(value):.40}")


def check_timeout(name: str, value: object) -> None:
    """Raise unless ``value`` is None (no limit) or a finite number of seconds ``>= 0``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be None or a number of seconds, not {_kind(value)}")
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise ValueError(
            f"{name} must be finite and >= 0 (None waits without limit): {_number(value)}"
        )
    if value > threading.TIMEOUT_MAX:  # no lock or condition can wait that long
        most = f"{threading.TIMEOUT_MAX:.0f}"
        raise ValueError(f"{name} is at most {most} s (None waits without limit): {_number(value)}")


def check_str(name: str, value: object, *, optional: bool = False, empty: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``str``; ``ValueError`` if it is empty."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {'None or ' if optional else ''}a str, not {_kind(value)}")
    if not value and not empty:
        raise ValueError(f"{name} must not be empty")


def check_strings(name: str, value: object, *, bare: bool) -> tuple[str, ...]:
    """Return an iterable of ``str`` as a tuple; raise ``TypeError`` for anything else.

    A bare ``str`` is one item if ``bare``, else a ``TypeError`` (iterating it
    would give its characters).  ``bytes`` are never accepted.
    """
    if isinstance(value, str):
        if bare:
            return (value,)
        raise TypeError(f"{name} must be an iterable of str, not a bare str (wrap it: [{value!r}])")
    if isinstance(value, bytes | bytearray) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an iterable of str, not {_kind(value)}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold only str, not {_kind(item)}")
    return items


def check_uuid(name: str, value: object, *, optional: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``uuid.UUID`` (strings are refused)."""
    if value is None and optional:
        return
    if not isinstance(value, uuid.UUID):
        hint = " (parse it first: uuid.UUID(text))" if isinstance(value, str) else ""
        raise TypeError(
            f"{name} must be {'None or ' if optional else ''}a uuid.UUID, not {_kind(value)}{hint}"
        )


def check_enum(name: str, value: object, cls: type[E], *, optional: bool = False) -> E | None:
    """Return ``value`` as a member of ``cls``: a member, or a member's value string.

    Raise ``TypeError`` for another type, ``ValueError`` for an unknown string.
    """
    if value is None and optional:
        return None
    if isinstance(value, cls):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a {cls.__name__} or its value, not {_kind(value)}")
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in cls)
        raise ValueError(f"{name} must be one of {choices}, not {value!r}") from None


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {_kind(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def check_callable(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {_kind(value)}")


def check_path(name: str, value: object, *, optional: bool = False) -> None:
    """Raise unless ``value`` is a non-empty ``str`` or ``os.PathLike``."""
    if value is None and optional:
        return
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, not {_kind(value)}")
    if not os.fspath(value):
        raise ValueError(f"{name} must not be empty")


def check_mapping(
    name: str, value: object, *, keys: type = str, values: type | None = None
) -> Mapping[Any, Any]:
    """Return ``value`` if it is a ``Mapping`` with ``keys``/``values`` of the given types."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, not {_kind(value)}")
    for key, item in value.items():
        if not isinstance(key, keys):
            raise TypeError(f"{name} keys must be {keys.__name__}, not {_kind(key)}")
        if values is not None and not isinstance(item, values):
            raise TypeError(f"{name}[{key!r}] must be {values.__name__}, not {_kind(item)}")
    return value


def check_each(name: str, value: object, cls: type) -> tuple[Any, ...]:
    """Return an iterable (not a ``str``/``bytes``) as a tuple whose items are all ``cls``."""
    if isinstance(value, str | bytes | bytearray) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an iterable of {cls.__name__}, not {_kind(value)}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, cls):
            raise TypeError(f"{name} must hold only {cls.__name__}, not {_kind(item)}")
    return items


class NodeFields(Protocol):
    """The fields of ``NodeConfig`` checked here (endpoints and names are checked with it)."""

    @property
    def curve_public_key(self) -> bytes | None: ...
    @property
    def curve_secret_key(self) -> bytes | None: ...
    @property
    def authorized_keys(self) -> tuple[bytes, ...]: ...
    @property
    def peer_public_keys(self) -> dict[str, bytes]: ...
    @property
    def heartbeat_interval(self) -> float: ...
    @property
    def heartbeat_timeout(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def max_frame_bytes(self) -> int: ...
    @property
    def recovery_ring(self) -> int: ...
    @property
    def send_hwm(self) -> int: ...
    @property
    def receive_hwm(self) -> int: ...
    @property
    def credit_window(self) -> int: ...
    @property
    def send_queue(self) -> int: ...
    @property
    def lag_policy(self) -> str: ...


_C_INT_MAX = 2**31 - 1  # a ZeroMQ high-water mark is a C int
MAX_FRAME_BYTES = sys.maxsize // 2
"""The largest ``max_frame_bytes``: a socket reads parts up to twice it (an int64 option)."""


def check_node_fields(node: NodeFields) -> None:
    """Check the keys, timings and sizes of a ``NodeConfig`` (not its endpoints or name)."""
    check_instance("curve_public_key", node.curve_public_key, bytes, optional=True)
    check_instance("curve_secret_key", node.curve_secret_key, bytes, optional=True)
    check_each("authorized_keys", node.authorized_keys, bytes)
    check_mapping("peer_public_keys", node.peer_public_keys, keys=str, values=bytes)
    check_number("heartbeat_interval", node.heartbeat_interval, positive=True)
    check_number("heartbeat_timeout", node.heartbeat_timeout, positive=True)
    if node.heartbeat_timeout <= node.heartbeat_interval:
        raise ValueError(
            f"heartbeat_timeout ({node.heartbeat_timeout}) must be longer than "
            f"heartbeat_interval ({node.heartbeat_interval})"
        )
    # Upper bounds: what a deque, or ZeroMQ's int options, can hold (refused here,
    # not as an OverflowError when the node starts).
    check_int("batch_size", node.batch_size, minimum=1, maximum=sys.maxsize)
    check_int("max_frame_bytes", node.max_frame_bytes, minimum=1, maximum=MAX_FRAME_BYTES)
    check_int("recovery_ring", node.recovery_ring, minimum=1, maximum=sys.maxsize)
    check_int("send_hwm", node.send_hwm, minimum=0, maximum=_C_INT_MAX)
    check_int("receive_hwm", node.receive_hwm, minimum=0, maximum=_C_INT_MAX)
    check_int("credit_window", node.credit_window, minimum=1, maximum=sys.maxsize)
    check_int("send_queue", node.send_queue, minimum=1, maximum=sys.maxsize)
    if node.recovery_ring + 2 * node.send_queue > sys.maxsize:  # one ring holds them all
        raise ValueError(
            f"recovery_ring + 2 * send_queue must be <= {sys.maxsize:,} (the bridge's ring), "
            f"not {node.recovery_ring + 2 * node.send_queue:,}"
        )
    if node.lag_policy not in ("block", "drop"):
        raise ValueError(f"lag_policy must be 'block' or 'drop', not {node.lag_policy!r}")
