"""Time-ordered UUIDv7 ids."""

from __future__ import annotations

import itertools
import pickle
import threading
import time
import uuid

from actors._model.uuid7 import uuid7, uuid_from_int


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
