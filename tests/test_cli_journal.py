"""``query``, ``trace`` and ``stats`` on a journal folder (``actors/cli/journal.py``).

Run in-process through click's runner against a real RocksDB journal.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from actors import Event, EventBus, EventConfig
from actors.cli import main
from tests._cli_support import CLI, make_journal
from tests._support import flip_byte, publish_all


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def journal(tmp_path: Path) -> tuple[Path, uuid.UUID]:
    path = tmp_path / "journal"
    return path, make_journal(path)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_query_reads_a_journal(journal: tuple[Path, uuid.UUID]) -> None:
    path, cid = journal
    result = run("query", "--journal", str(path), "--type", "workflow.*", "--json")
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event_type"] for e in events] == ["workflow.start", "workflow.step", "workflow.done"]
    assert {e["correlation_id"] for e in events} == {str(cid)}

    newest = run("query", "--journal", str(path), "--desc", "--limit", "1")
    assert newest.exit_code == 0, newest.stderr
    (line,) = newest.stdout.splitlines()
    assert line.startswith("#4 ")
    assert " origin workflow.done " in line

    by_source = run("query", "--journal", str(path), "--source", "web")
    assert by_source.stdout.splitlines()[0].endswith("user.login web→-")
    assert len(by_source.stdout.splitlines()) == 1


def test_query_after_and_correlation_id(journal: tuple[Path, uuid.UUID]) -> None:
    path, cid = journal
    after = run("query", "--journal", str(path), "--after", "2", "--json")
    assert [json.loads(line)["sequence"] for line in after.stdout.splitlines()] == [3, 4]
    workflow = run("query", "--journal", str(path), "--correlation-id", str(cid), "--json")
    assert len(workflow.stdout.splitlines()) == 3
    other = run("query", "--journal", str(path), "--correlation-id", str(uuid.uuid4()))
    assert (other.exit_code, other.stdout) == (0, "")


def test_trace_data_shows_each_events_data(journal: tuple[Path, uuid.UUID]) -> None:
    path, cid = journal
    plain = run("trace", str(cid), "--journal", str(path))
    with_data = run("trace", str(cid), "--journal", str(path), "--data")
    assert with_data.exit_code == 0, with_data.stderr
    assert '"job"' not in plain.stdout
    assert '"job"' in with_data.stdout


def test_query_since_and_until(journal: tuple[Path, uuid.UUID]) -> None:
    path, _ = journal
    recent = run("query", "--journal", str(path), "--since", "10m", "--json")
    assert recent.exit_code == 0, recent.stderr
    assert len(recent.stdout.splitlines()) == 4
    old = run("query", "--journal", str(path), "--until", "10m")
    assert old.exit_code == 0, old.stderr
    assert old.stdout == ""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert run("query", "--journal", str(path), "--since", later).stdout == ""
    assert len(run("query", "--journal", str(path), "--until", later).stdout.splitlines()) == 4

    bad = run("query", "--journal", str(path), "--since", "yesterday")
    assert bad.exit_code == 2
    assert "neither ISO 8601" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1


def test_follow_needs_a_peer(journal: tuple[Path, uuid.UUID]) -> None:
    path, _ = journal
    result = run("query", "--journal", str(path), "--follow")
    assert result.exit_code == 2
    assert "--follow needs --peer" in result.stderr


def test_trace_renders_the_causal_tree(journal: tuple[Path, uuid.UUID]) -> None:
    path, cid = journal
    result = run("trace", str(cid), "--journal", str(path))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "(3 events" in lines[0]
    assert "workflow.start" in lines[1]
    assert "workflow.step" in lines[2]
    assert lines[2].startswith("   └─ ")  # a child of the start
    assert "workflow.done" in lines[3]
    assert lines[4] == "origins: origin (3)"

    unknown = run("trace", str(uuid.uuid4()), "--journal", str(path))
    assert unknown.exit_code == 1
    assert "no events with correlation id" in unknown.stderr


def test_trace_json_gives_each_events_depth_and_parent(journal: tuple[Path, uuid.UUID]) -> None:
    path, cid = journal
    result = run("trace", str(cid), "--journal", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["event_type"], e["depth"]) for e in events] == [
        ("workflow.start", 0),
        ("workflow.step", 1),
        ("workflow.done", 2),
    ]
    assert events[0]["parent"] is None
    assert events[2]["parent"] == events[1]["id"]


def test_stats_counts_by_type(journal: tuple[Path, uuid.UUID]) -> None:
    path, _ = journal
    result = run("stats", "--journal", str(path))
    assert result.exit_code == 0, result.stderr
    assert "events 4" in result.stdout
    assert "sequences 1..4" in result.stdout
    assert "       1  workflow.start" in result.stdout

    figures = json.loads(run("stats", "--journal", str(path), "--json").stdout)
    assert figures["events"] == 4
    assert (figures["first_sequence"], figures["last_sequence"]) == (1, 4)
    assert figures["by_type"]["user.login"] == 1
    assert figures["journal"] == str(path.resolve())
    assert figures["size_bytes"] > 0


def test_stats_prometheus_escapes_event_types_in_label_values(tmp_path: Path) -> None:
    # The Prometheus text format: a label value escapes backslash, double
    # quote and line feed; an event type may hold the first two.
    path = tmp_path / "journal"
    types = ['say."hi"', "back\\slash.x", "ok.type"]
    with EventBus(EventConfig(persistence_path=path)) as bus:
        publish_all(bus, [Event(event_type=t, data=1) for t in types])
    prom = run("stats", "--journal", str(path), "--prometheus")
    assert prom.exit_code == 0, prom.stderr
    stored = {
        sample.labels["event_type"]: sample.value
        for family in text_string_to_metric_families(prom.stdout)
        for sample in family.samples
        if sample.name == "llmspell_events_stored_events"
    }
    assert stored == dict.fromkeys(types, 1.0)


def test_stats_prometheus_escapes_what_a_terminal_would_act_on(tmp_path: Path) -> None:
    # docs/cli.md: control characters in an event type are printed escaped in
    # every readable line (a C1 CSI, U+009B, included).
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        publish_all(bus, [Event(event_type="bell\x07\x1b.x\x9b2J", data=1)])
    prom = run("stats", "--journal", str(path), "--prometheus")
    assert prom.exit_code == 0, prom.stderr
    assert not {"\x07", "\x1b", "\x9b"} & set(prom.stdout)
    labels = [
        sample.labels["event_type"]
        for family in text_string_to_metric_families(prom.stdout)
        for sample in family.samples
        if sample.name == "llmspell_events_stored_events"
    ]
    assert labels == ["bell\\x07\\x1b.x\\x9b2J"]


def test_stats_prometheus_prints_the_journals_figures_only(
    journal: tuple[Path, uuid.UUID],
) -> None:
    path, _ = journal
    prom = run("stats", "--journal", str(path), "--prometheus")
    assert prom.exit_code == 0, prom.stderr
    assert 'llmspell_events_stored_events{event_type="user.login"} 1' in prom.stdout
    assert "# TYPE llmspell_events_stored_events gauge" in prom.stdout
    assert "llmspell_events_journal_last_sequence 4" in prom.stdout
    metrics = {
        line.split("{")[0].split(" ")[0]
        for line in prom.stdout.splitlines()
        if not line.startswith("#")
    }
    # Nothing of the short-lived bus that opened the journal (its zeros).
    assert metrics == {
        "llmspell_events_stored_events",
        "llmspell_events_journal_last_sequence",
        "llmspell_events_journal_size_bytes",
        "llmspell_events_journal_unreadable_records",  # what the scan found, 0 here
    }


@pytest.mark.parametrize("command", [["query"], ["stats"], ["trace", str(uuid.uuid4())]])
def test_a_folder_that_is_no_journal_is_an_error_and_left_untouched(
    tmp_path: Path, command: list[str]
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "app.py").write_text("print('hi')\n")
    before = listing(project)
    result = run(*command, "--journal", str(project))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: no journal at {project} (a node makes one: "
        f"llmspell-events serve --journal {project})"
    ]
    assert listing(project) == before

    missing = run(*command, "--journal", str(tmp_path / "nothing"))
    assert missing.exit_code == 1
    assert not (tmp_path / "nothing").exists()


def test_reading_a_journal_writes_no_event(journal: tuple[Path, uuid.UUID]) -> None:
    path, _ = journal
    for _ in range(2):
        assert run("stats", "--journal", str(path)).exit_code == 0
        assert run("query", "--journal", str(path)).exit_code == 0
    figures = json.loads(run("stats", "--journal", str(path), "--json").stdout)
    assert figures["events"] == 4
    assert figures["last_sequence"] == 4


def test_stats_and_query_say_how_many_records_a_damaged_journal_could_not_give(
    tmp_path: Path,
) -> None:
    """A flipped byte in the record table: the scan skips the damaged block's records
    and says so (stats: a line, a JSON field, a gauge; query: a note on stderr),
    never a journal that is merely shorter without a word."""
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        publish_all(
            bus, [Event(event_type="t.a", data={"i": i, "pad": "x" * 100}) for i in range(20_000)]
        )
    records = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    flip_byte(records, records.stat().st_size // 2)

    stats = run("stats", "--journal", str(path), "--json")
    assert stats.exit_code == 0, stats.stderr
    figures = json.loads(stats.stdout)
    assert figures["unreadable_records"] > 0
    assert figures["events"] + figures["unreadable_records"] == 20_000
    text = run("stats", "--journal", str(path))
    assert f"unreadable records {figures['unreadable_records']}" in text.stdout
    gauge = run("stats", "--journal", str(path), "--prometheus")
    assert f"llmspell_events_journal_unreadable_records {figures['unreadable_records']}" in (
        gauge.stdout
    )
    query = run("query", "--journal", str(path), "--json")
    assert query.exit_code == 0, query.stderr
    assert len(query.stdout.splitlines()) == figures["events"]
    assert f"{figures['unreadable_records']} stored record(s) could not be read" in query.stderr


def test_stats_of_a_sound_journal_reports_no_unreadable_record(
    journal: tuple[Path, uuid.UUID],
) -> None:
    path, _ = journal
    figures = json.loads(run("stats", "--journal", str(path), "--json").stdout)
    assert figures["unreadable_records"] == 0
    assert "unreadable" not in run("stats", "--journal", str(path)).stdout
    assert "could not be read" not in run("query", "--journal", str(path)).stderr


def test_control_characters_in_event_types_never_reach_the_terminal(tmp_path: Path) -> None:
    # An event type may hold a backspace or an escape sequence (ESC c resets
    # a terminal): query, stats and trace print it escaped, as they print a
    # source.
    path = tmp_path / "journal"
    cid = uuid.uuid4()
    forged = "ok\b\b\bFORGED.x"
    reset = "reset\x1bc.x"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        publish_all(
            bus, [Event(event_type=t, data={}, correlation_id=cid) for t in (forged, reset)]
        )
    outputs = [
        run("query", "--journal", str(path)),
        run("stats", "--journal", str(path)),
        run("trace", str(cid), "--journal", str(path)),
    ]
    for result in outputs:
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stdout
        assert "\b" not in result.stdout
    assert "ok\\x08\\x08\\x08FORGED.x" in outputs[0].stdout
    assert "reset\\x1bc.x" in outputs[1].stdout
    assert "reset\\x1bc.x" in outputs[2].stdout


def test_output_in_an_encoding_without_a_character_is_escaped_not_a_traceback(
    tmp_path: Path,
) -> None:
    # PYTHONIOENCODING=latin-1 (or a latin-1 locale) has no euro sign.
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        publish_all(bus, [Event(event_type="price.set", data={"c": "€"}, source="shop€")])
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    got = subprocess.run(
        [*CLI, "query", "--journal", str(path)],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert b"Traceback" not in got.stderr
    assert b"shop\\u20ac" in got.stdout


def test_stats_prometheus_gives_each_label_one_series(tmp_path: Path) -> None:
    """A type holding ESC is printed as ``\\x1b``, which a type holding those four
    characters also reads as: two samples of one label set, and a scraper refuses
    the whole exposition.  Their counts go in one series."""
    path = tmp_path / "journal"
    with EventBus(EventConfig(persistence_path=path)) as bus:
        publish_all(bus, [Event(event_type=t, data=1) for t in ("a\x1bb", "a\\x1bb", "a\\x1bb")])
    prom = run("stats", "--journal", str(path), "--prometheus")
    assert prom.exit_code == 0, prom.stderr
    samples = [
        (sample.labels["event_type"], sample.value)
        for family in text_string_to_metric_families(prom.stdout)
        for sample in family.samples
        if sample.name == "llmspell_events_stored_events"
    ]
    assert samples == [("a\\x1bb", 3.0)]
