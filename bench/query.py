"""Query latency on a 1,000,000-event journal.

The journal is built once through ``PersistentEventBus.publish_many``
(batches of 1000, async durability) and cached in the temp dir, keyed by the
package version, the source of the storage layout and codec, and the size:
a rebuild happens only when one of those changes.  Its events: 10 types
(``agent.kind0`` .. ``agent.kind9``, interleaved), one correlation id per 100
events (spread over the whole journal: event ``i`` belongs to correlation
``i % (N / 100)``), timestamps 1 ms apart, ~300 bytes each.

Each run opens the journal with a ``PersistentEventBus`` and times 50
queries of each kind from the caller's side (``bus.query`` returns decoded
``Event`` objects), at random positions (fixed seed per run):
- by type: ``event_types=["agent.kindK"], after_sequence=random, limit=100``;
- by correlation id: ``correlation_id=random``, 100 events;
- by time range: a random 200 ms window, ``limit=100``.

Baseline: raw rocksdict reading 100 consecutive records of the same journal
(the default column family, no index, no decoding), after the bus closed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from actors import Event, EventConfig, EventQuery, PersistentEventBus
from bench._common import (
    Figure,
    Params,
    Result,
    bench_event,
    disk_of,
    latency_summary,
    median_dict,
)

NAME = "query"
QUERIES = 50
LIMIT = 100
TYPES = 10
PER_CID = 100
BASE = datetime(2025, 1, 1, tzinfo=UTC)
_SEQ = struct.Struct(">Q")
_KEYED_SOURCES = ("_journal", "_codec", "_model")  # folders whose code shapes the journal


def _cache_key(n: int) -> str:
    import actors  # noqa: PLC0415

    digest = hashlib.sha256()
    root = Path(actors.__file__).parent
    for name in _KEYED_SOURCES:
        for source in sorted((root / name).rglob("*.py")):
            digest.update(source.read_bytes())
    version = metadata.version("llmspell-events")
    return f"journal-{version}-{digest.hexdigest()[:12]}-{n}"


def _cid(k: int) -> uuid.UUID:
    return uuid.UUID(int=(0xB0 << 120) | k)


def build_journal(path: Path, n: int) -> float:
    """Write ``n`` events to a new journal at ``path``; return the seconds it took."""
    cids = n // PER_CID
    pad = bench_event(0).data["pad"]  # type: ignore[index]
    start = time.perf_counter()
    with PersistentEventBus(EventConfig(persistence_path=path)) as bus:
        last = None
        for first in range(0, n, 1000):
            batch = [
                Event(
                    event_type=f"agent.kind{i % TYPES}",
                    data={"i": i, "pad": pad},
                    timestamp=BASE + timedelta(milliseconds=i),
                    correlation_id=_cid(i % cids),
                    source=f"agent-{i % 50}",
                )
                for i in range(first, min(first + 1000, n))
            ]
            futures = bus.publish_many(batch)
            # Bound memory: at most ~50 batches in flight.
            if last is not None and (first // 1000) % 50 == 0:
                last.get(timeout=600)
            last = futures[-1]
        bus.flush(timeout=600)
    return time.perf_counter() - start


def cache_root() -> Path:
    """Return where built journals are kept: ``$LLMSPELL_BENCH_CACHE`` or the temp dir."""
    configured = os.environ.get("LLMSPELL_BENCH_CACHE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "llmspell-bench-cache"


def cached_journal(n: int) -> tuple[Path, float | None]:
    """Return the cached journal of ``n`` events (building it if needed) and its build time."""
    root = cache_root()
    path = root / _cache_key(n)
    marker = path / "BENCH_COMPLETE"
    if marker.exists():
        return path, None
    if path.exists():
        shutil.rmtree(path)
    root.mkdir(parents=True, exist_ok=True)
    # Drop journals of other versions: they are big and will not be read again.
    for old in root.glob(f"journal-*-{n}"):
        shutil.rmtree(old, ignore_errors=True)
    print(f"  building a {n:,}-event journal at {path} (cached for later runs) ...")
    seconds = build_journal(path, n)
    marker.write_text(json.dumps({"events": n, "build_seconds": seconds}))
    print(f"  built in {seconds:.1f} s")
    return path, seconds


def _time(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(path: Path, n: int, seed: int) -> dict[str, Any]:
    """Return p50/p99 (s) of 50 queries of each kind against the journal at ``path``."""
    rng = random.Random(seed)
    cids = n // PER_CID
    out: dict[str, Any] = {}
    opened, bus = _time(lambda: PersistentEventBus(EventConfig(persistence_path=path)))
    out["open_seconds"] = opened
    with bus:
        kinds = {
            "by_type": lambda: EventQuery(
                event_types=[f"agent.kind{rng.randrange(TYPES)}"],
                after_sequence=rng.randrange(n - LIMIT * TYPES * 2),
                limit=LIMIT,
            ),
            "by_correlation": lambda: EventQuery(
                correlation_id=_cid(rng.randrange(cids)), limit=LIMIT
            ),
            "by_time_range": lambda: _time_query(rng.randrange(n - 2 * LIMIT)),
        }
        bus.query(kinds["by_type"]())  # warm-up: first reads open files and caches
        for kind, make in kinds.items():
            samples = []
            sizes = set()
            for _ in range(QUERIES):
                query = make()
                seconds, events = _time(lambda q=query: bus.query(q))
                samples.append(seconds)
                sizes.add(len(events))
            out[kind] = {**latency_summary(samples), "result_sizes": sorted(sizes)}
    out["raw_rocksdict"] = _raw_reads(path, n, rng)
    return out


def _time_query(first_ms: int) -> EventQuery:
    low = BASE + timedelta(milliseconds=first_ms)
    return EventQuery(time_range=(low, low + timedelta(milliseconds=2 * LIMIT)), limit=LIMIT)


def _raw_reads(path: Path, n: int, rng: random.Random) -> dict[str, Any]:
    import rocksdict  # noqa: PLC0415

    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        samples = []
        for _ in range(QUERIES):
            key = _SEQ.pack(1 + rng.randrange(n - LIMIT))

            def read(key: bytes = key) -> list[Any]:
                out = []
                for item in db.items(from_key=key):
                    out.append(item)
                    if len(out) == LIMIT:
                        break
                return out

            seconds, rows = _time(read)
            assert len(rows) == LIMIT
            samples.append(seconds)
    finally:
        db.close()
    return latency_summary(samples)


def run(params: Params) -> Result:
    """Build (or reuse) the journal, then time the queries ``params.runs`` times."""
    n = params.size(1_000_000, 10_000)
    path, built = cached_journal(n)
    disk = disk_of(path)
    result = Result(
        NAME,
        {
            "journal events": n,
            "journal": f"{path} on {disk['device']} ({disk['fstype']}, mount {disk['mount']})",
            "built this run": f"{built:.1f} s" if built is not None else "no (cached)",
            "layout": f"{TYPES} types interleaved, {PER_CID} events per correlation id "
            "spread over the journal, timestamps 1 ms apart, ~300-byte events",
            "queries": f"{QUERIES} per kind, limit {LIMIT}, random positions, timed around "
            "bus.query() (decoded Events returned)",
            "baseline": f"raw rocksdict: {LIMIT} consecutive records of the default column "
            "family (no index, no decoding)",
            "runs": params.runs,
        },
    )
    for k in range(params.runs):
        r = measure(path, n, seed=k)
        result.runs.append(r)
        parts = [
            f"{kind} p50 {r[kind]['p50'] * 1e3:.2f} ms p99 {r[kind]['p99'] * 1e3:.2f} ms"
            f" ({r[kind]['result_sizes']} events)"
            for kind in ("by_type", "by_correlation", "by_time_range")
        ]
        raw = r["raw_rocksdict"]
        parts.append(f"raw p50 {raw['p50'] * 1e3:.2f} ms p99 {raw['p99'] * 1e3:.2f} ms")
        print("  run: " + "; ".join(parts))
    m = median_dict(result.runs)
    if built is not None:
        m["build_seconds"] = built
    result.medians = m
    raw = m["raw_rocksdict"]
    figures = []
    for kind, label in (
        ("by_type", "type"),
        ("by_correlation", "correlation id"),
        ("by_time_range", "time range"),
    ):
        for q in ("p50", "p99"):
            figures.append(
                Figure(
                    f"query 100 by {label}, {q}, {n:,} events",
                    "s",
                    m[kind][q],
                    ("<", 0.005),
                    f"raw rocksdict 100 rows {q}",
                    raw[q],
                )
            )
    result.figures = figures
    return result
