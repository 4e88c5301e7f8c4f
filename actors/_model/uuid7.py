"""Time-ordered UUIDs (RFC 9562 version 7), monotonic within one process.

Layout of the 128 bits::

    unix_ts_ms (48) | ver=7 (4) | counter[41:30] (12)
    | var=0b10 (2) | counter[29:0] (30) | random (32)

``counter`` is the 42-bit "fixed bit-length dedicated counter" of RFC 9562
section 6.2, method 1: each new millisecond seeds it with 41 random bits (the
top bit starts at 0, which leaves at least 2**41 increments before it can roll
over); within one millisecond every call adds 1.  Should it roll over anyway,
the timestamp is advanced by one millisecond, as the RFC allows.  If the clock
steps backwards the last timestamp is kept, so ids never go backwards.
The low 32 bits are fresh random bits for every id.

Randomness comes from a private ``random.Random`` seeded from ``os.urandom``
and reseeded in a forked child, so ``random.seed()`` calls elsewhere cannot
make two processes produce the same ids.  These ids are unique and ordered, not
secret: do not use them as capabilities.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

__all__ = ["uuid7", "uuid_from_int"]

_rng = random.Random(os.urandom(32))  # uniqueness, not secrecy


def _reseed() -> None:
    _rng.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)

_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)
_COUNTER_MAX = (1 << 42) - 1
_COUNTER_LO_MASK = (1 << 30) - 1

_lock = threading.Lock()
_acquire = _lock.acquire
_release = _lock.release
_last_ms = 0
_counter = 0

_time_ns = time.time_ns
_bits = _rng.getrandbits
_UUID = uuid.UUID
_new = object.__new__
_set_int = _UUID.__dict__["int"].__set__
_set_is_safe = _UUID.__dict__["is_safe"].__set__
_UNKNOWN = uuid.SafeUUID.unknown


def uuid_from_int(value: int) -> uuid.UUID:
    """Return the ``UUID`` with this 128-bit integer value, skipping ``UUID.__init__``.

    No checks: the caller guarantees ``0 <= value < 2**128``.
    """
    u = _new(_UUID)
    _set_int(u, value)
    _set_is_safe(u, _UNKNOWN)
    return u


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7, greater than every one this process returned before.

    Thread-safe (a short lock guards the counter); never raises.
    """
    global _last_ms, _counter
    now_ms: int = _time_ns() // 1_000_000
    _acquire()  # not ``with``: acquire/release are cheaper on this hot path
    try:
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = counter = _bits(41)
        else:
            counter = _counter + 1
            if counter > _COUNTER_MAX:
                _last_ms += 1
                counter = _bits(41)
            _counter = counter
        ms = _last_ms
    finally:
        _release()
    value = (
        (ms << 80)
        | _VERSION_VARIANT
        | ((counter >> 30) << 64)
        | ((counter & _COUNTER_LO_MASK) << 32)
        | _bits(32)
    )
    u = _new(_UUID)
    _set_int(u, value)
    _set_is_safe(u, _UNKNOWN)
    return u
