"""``query``, ``trace`` and ``stats``: read a journal folder (read-only) or a running node's."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from actors._bus import EventBus
from actors._model.event import Event
from actors._model.metrics import escape_label
from actors._model.query import EventQuery
from actors._model.trace import printable
from actors.cli.connect import open_source
from actors.cli.follow import JournalTail, last_sequence
from actors.cli.options import PATTERN, SEQUENCE_MAX, Source, source_options
from actors.cli.output import emit, ended_by_signal, fail, json_line, note, say, stop_on_signals
from actors.cli.timespec import MOMENT

__all__ = ["query", "stats", "trace"]

PAGE = 1000


@click.command()
@click.option(
    "--type", "types", type=PATTERN, multiple=True, help="event type pattern (repeatable)"
)
@click.option("--correlation-id", type=click.UUID, help="one workflow's events")
@click.option("--source", "event_source", help="events from this source")
@click.option("--after", type=click.IntRange(0, SEQUENCE_MAX), help="only sequences after this one")
@click.option("--since", type=MOMENT, help="from this time: ISO 8601, or ago: 10m, 2h, 3d")
@click.option("--until", type=MOMENT, help="before this time: ISO 8601, or ago: 10m, 2h, 3d")
@click.option("--limit", type=click.IntRange(min=1), help="at most this many events")
@click.option("--desc", is_flag=True, help="newest first")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per event")
@click.option("--follow", is_flag=True, help="then print new events as they are journaled")
@source_options("endpoint of a running node to ask instead of --journal")
def query(
    *,
    types: tuple[str, ...],
    correlation_id: uuid.UUID | None,
    event_source: str | None,
    after: int | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    desc: bool,
    as_json: bool,
    follow: bool,
    source: Source,
) -> None:
    """Print the stored events a query selects, from --journal or a running --peer.

    --follow (with --peer) goes on printing new events as the node journals
    them, until Ctrl-C.
    """
    if follow and source.journal is not None:
        raise click.UsageError("--follow needs --peer: a journal folder grows only in its node")
    if follow and (desc or limit is not None):
        raise click.UsageError("--follow prints every new event: drop --desc and --limit")
    if since is not None and until is not None and since > until:
        raise click.UsageError("--since is after --until: the range selects nothing")
    q = EventQuery(
        event_types=list(types) or None,
        time_range=None if since is None and until is None else (since, until),
        correlation_id=correlation_id,
        source=event_source,
        after_sequence=after,
        limit=limit,
        descending=desc,
    )
    if follow:
        stop_on_signals()
    with open_source(source, "query") as (bus, node):
        if follow:
            _follow(bus, node, q, source, as_json)
            return
        events = bus.query(q, node=node, timeout=source.connection.timeout)
        unreadable = _unreadable(bus, node)
    for event in events:
        emit(event, as_json)
    if unreadable:
        note(
            f"{unreadable} stored record(s) could not be read and were skipped: "
            "the journal is damaged (docs/persistence.md, 'Damage')"
        )


def _unreadable(bus: EventBus, node: str | None) -> int | None:
    """Return how many stored records this bus's reads skipped (None for a --peer node)."""
    return bus.metrics().journal_corrupt_records if node is None else None


def _follow(bus: EventBus, node: str | None, q: EventQuery, source: Source, as_json: bool) -> None:
    assert node is not None
    tail = JournalTail(bus, q, source.connection.timeout)
    tail.node = node
    for pattern in q.event_types or ["**"]:
        bus.subscribe(pattern, tail.wake)
    if not bus.wait_for_peers([node], source.connection.timeout):
        fail(f"node {node!r} did not acknowledge the subscription in time")
    last_sequence(bus, node, source.connection.timeout)  # fails here without a journal
    with ended_by_signal():  # from the line on, a signal exits with 0
        note(f"following the journal of {printable(node)}")
        tail.run(lambda event: emit(event, as_json))


@click.command()
@click.argument("correlation_id", type=click.UUID)
@click.option("--data", "show_data", is_flag=True, help="show each event's data")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per event, with its depth")
@source_options("endpoint of a running node: gathers from every node it reaches")
def trace(*, correlation_id: uuid.UUID, show_data: bool, as_json: bool, source: Source) -> None:
    """Print the causal tree of the workflow CORRELATION_ID."""
    with open_source(source, "trace") as (bus, _node):
        result = bus.trace(correlation_id, timeout=source.connection.timeout)
    if not result.events:
        fail(f"no events with correlation id {correlation_id}")
    if as_json:
        for event, depth in result.walk():
            parent = result.parent(event.id)
            line = event.to_dict() | {
                "depth": depth,
                "parent": None if parent is None else str(parent.id),
            }
            say(json_line(line))
        return
    say(result.render(show_data=show_data))
    origins = Counter(e.origin or "-" for e in result.events)
    say("origins: " + ", ".join(f"{printable(o)} ({n})" for o, n in sorted(origins.items())))


@click.command()
@click.option("--prometheus", is_flag=True, help="Prometheus text format (the journal's figures)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@source_options("endpoint of a running node whose journal to count")
def stats(*, prometheus: bool, as_json: bool, source: Source) -> None:
    """Count the stored events by type, with the journal's figures."""
    if prometheus and as_json:
        raise click.UsageError("give one of --prometheus and --json")
    with open_source(source, "stats") as (bus, node):
        by_type, first, last = _count(bus, node, source.connection.timeout)
        # A --peer node's live figures do not travel: only its journal's counts do.
        size = bus.metrics().journal_size_bytes if node is None else None
        unreadable = _unreadable(bus, node)
    figures: dict[str, Any] = {
        "journal": str(Path(source.journal).resolve()) if source.journal else None,
        "node": node,
        "events": sum(by_type.values()),
        "first_sequence": first.sequence if first else None,
        "last_sequence": last.sequence if last else None,
        "first_time": first.timestamp.isoformat() if first else None,
        "last_time": last.timestamp.isoformat() if last else None,
        "dead_letters": by_type.get("$bus.deadletter", 0),
        "unreadable_records": unreadable,
        "size_bytes": size,
        "by_type": dict(sorted(by_type.items())),
    }
    if as_json:
        say(json_line(figures))
    elif prometheus:
        say(_prometheus(figures))
    else:
        _print_stats(figures)


def _count(bus: EventBus, node: str | None, timeout: float) -> tuple[Counter[str], Any, Any]:
    """Scan the journal page by page: counts by type, the first and the last event."""
    by_type: Counter[str] = Counter()
    first: Event | None = None
    last: Event | None = None
    after: int | None = None
    while True:
        page = bus.query(EventQuery(after_sequence=after, limit=PAGE), node=node, timeout=timeout)
        by_type.update(event.event_type for event in page)
        first = first or (page[0] if page else None)
        last = page[-1] if page else last
        if len(page) < PAGE:
            return by_type, first, last
        after = page[-1].sequence


def _prometheus(figures: dict[str, Any]) -> str:
    """The journal's figures as gauges (never a short-lived bus's own counters)."""
    stored = "llmspell_events_stored_events"
    lines = [f"# HELP {stored} Events in the journal, by type.", f"# TYPE {stored} gauge"]
    # Control characters escaped (``\\x1b``): a type holding one may then read as
    # another type holding the escape's text; their counts go in one series
    # (two samples of one label set would make the whole exposition invalid).
    by_label: Counter[str] = Counter()
    for t, n in figures["by_type"].items():
        by_label[printable(t)] += n
    lines += [f'{stored}{{event_type="{escape_label(t)}"}} {n}' for t, n in by_label.items()]
    gauges = [
        (
            "llmspell_events_journal_last_sequence",
            "The newest sequence in the journal.",
            "last_sequence",
        ),
        ("llmspell_events_journal_size_bytes", "Bytes the journal's files take.", "size_bytes"),
        (
            "llmspell_events_journal_unreadable_records",
            "Stored records the scan skipped: they could not be read (damage).",
            "unreadable_records",
        ),
    ]
    for metric, text, key in gauges:
        if figures[key] is not None:
            lines += [
                f"# HELP {metric} {text}",
                f"# TYPE {metric} gauge",
                f"{metric} {figures[key]}",
            ]
    return "\n".join(lines)


def _print_stats(figures: dict[str, Any]) -> None:
    node = figures["node"]
    say(f"node {printable(node)}" if node else f"journal {figures['journal']}")
    say(f"events {figures['events']}")
    if figures["first_sequence"] is not None:
        say(f"sequences {figures['first_sequence']}..{figures['last_sequence']}")
        say(f"time {figures['first_time']} .. {figures['last_time']}")
    say(f"dead letters {figures['dead_letters']}")
    if figures["unreadable_records"]:
        say(f"unreadable records {figures['unreadable_records']} (skipped: the journal is damaged)")
    if figures["size_bytes"] is not None:
        say(f"size {figures['size_bytes']} bytes")
    say("by type:")
    for event_type, n in sorted(figures["by_type"].items(), key=lambda item: (-item[1], item[0])):
        say(f"  {n:>8}  {printable(event_type)}")
