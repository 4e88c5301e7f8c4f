"""The command line, run as real processes (``python -m actors``).

The parent synchronises on the children's output lines only.
"""

from __future__ import annotations

import importlib.metadata
import json
import queue
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import Event, EventBus, EventConfig, NodeConfig, PersistentEventBus

WAIT = 60.0
CLI = [sys.executable, "-m", "actors"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=WAIT)


class Running:
    """A CLI process that runs on; its stdout and stderr lines arrive on queues."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: object, lines: queue.Queue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line.rstrip("\n"))
        lines.put("<eof>")

    def line(self, lines: queue.Queue[str] | None = None) -> str:
        return (lines or self.out).get(timeout=WAIT)

    def finish(self) -> int:
        return self.proc.wait(WAIT)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Running, str, Path]]:
    journal = tmp_path / "journal"
    node = Running(
        "serve", "--name", "hub", "--listen", "tcp://127.0.0.1:0", "--journal", str(journal)
    )
    try:
        lines = dict(node.line().split(" ", 1) for _ in range(4))
        assert lines["node"] == "hub"
        assert lines["journal"] == str(journal.resolve())
        assert lines["publish"].startswith("tcp://127.0.0.1:")
        assert lines["publish"] != lines["request"]
        yield node, lines["request"], journal
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(WAIT)


# -- keygen -------------------------------------------------------------------------------


def test_keygen_prints_a_fresh_pair() -> None:
    first, second = cli("keygen"), cli("keygen")
    assert first.returncode == 0, first.stderr
    keys = dict(line.split(" ", 1) for line in first.stdout.splitlines())
    assert len(keys["public"]) == 40
    assert len(keys["secret"]) == 40
    assert keys["public"] != keys["secret"]
    assert first.stdout != second.stdout


def test_keygen_writes_key_files(tmp_path: Path) -> None:
    result = cli("keygen", "--out", str(tmp_path / "node"))
    assert result.returncode == 0, result.stderr
    public = (tmp_path / "node.key").read_text().strip()
    secret_file = tmp_path / "node.key_secret"
    assert len(secret_file.read_text().strip()) == 40
    assert f"public {public}" in result.stdout
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


# -- the journal ----------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> tuple[Path, uuid.UUID]:
    """A closed journal: one workflow of three causally linked events, plus noise."""
    path = tmp_path / "journal"
    cid = uuid.uuid4()
    with PersistentEventBus(EventConfig(persistence_path=str(path)), name="origin") as bus:
        start = Event(event_type="workflow.start", data={"job": "x"}, correlation_id=cid)
        step = Event(event_type="workflow.step", correlation_id=cid, causation_id=start.id)
        done = Event(event_type="workflow.done", correlation_id=cid, causation_id=step.id)
        bus.publish_many([start, step, Event(event_type="user.login", source="web"), done])
        bus.flush(WAIT)
    return path, cid


def test_query_reads_a_journal(journal: tuple[Path, uuid.UUID]) -> None:
    path, cid = journal
    result = cli("query", "--journal", str(path), "--type", "workflow.*", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event_type"] for e in events] == ["workflow.start", "workflow.step", "workflow.done"]
    assert {e["correlation_id"] for e in events} == {str(cid)}

    newest = cli("query", "--journal", str(path), "--desc", "--limit", "1")
    assert newest.returncode == 0, newest.stderr
    (line,) = newest.stdout.splitlines()
    assert line.startswith("#4 ")
    assert " origin workflow.done " in line

    by_source = cli("query", "--journal", str(path), "--source", "web")
    assert "user.login web→-" in by_source.stdout
    assert len(by_source.stdout.splitlines()) == 1


def test_trace_renders_the_causal_tree(journal: tuple[Path, uuid.UUID]) -> None:
    path, cid = journal
    result = cli("trace", str(cid), "--journal", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "(3 events" in lines[0]
    assert "workflow.start" in lines[1]
    assert "workflow.step" in lines[2]
    assert lines[2].startswith("   └─ ")  # a child of the start
    assert "workflow.done" in lines[3]
    assert lines[4] == "origins: origin (3)"

    unknown = cli("trace", str(uuid.uuid4()), "--journal", str(path))
    assert unknown.returncode == 1
    assert "no events with correlation id" in unknown.stderr


def test_stats_counts_by_type(journal: tuple[Path, uuid.UUID]) -> None:
    path, _ = journal
    result = cli("stats", "--journal", str(path))
    assert result.returncode == 0, result.stderr
    assert "events 4" in result.stdout
    assert "sequences 1..4" in result.stdout
    assert "       1  workflow.start" in result.stdout

    prom = cli("stats", "--journal", str(path), "--prometheus")
    assert prom.returncode == 0, prom.stderr
    assert 'llmspell_events_stored_events{event_type="user.login"} 1' in prom.stdout
    assert "# TYPE llmspell_events_stored_events gauge" in prom.stdout


def test_errors_are_one_line_with_a_nonzero_status(tmp_path: Path) -> None:
    missing = cli("query", "--journal", str(tmp_path / "nothing"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"Error: no journal at {tmp_path / 'nothing'}"
    assert not (tmp_path / "nothing").exists()

    both = cli("query")
    assert both.returncode == 2
    assert "exactly one of --journal DIR and --peer ENDPOINT" in both.stderr

    bad_json = cli("pub", "user.login", "{not json", "--peer", "tcp://127.0.0.1:1")
    assert bad_json.returncode == 2
    assert "not JSON" in bad_json.stderr

    reserved = cli("pub", "$bus.deadletter", "--peer", "tcp://127.0.0.1:1")
    assert reserved.returncode == 1
    assert "reserved" in reserved.stderr


# -- across processes ------------------------------------------------------------------------


@pytest.mark.slow
def test_sub_receives_exactly_what_pub_sent_in_order(
    served: tuple[Running, str, Path],
) -> None:
    node, endpoint, path = served
    cid = uuid.uuid4()
    tail = Running("sub", "user.*", "--peer", endpoint, "--count", "3", "--json")
    assert tail.line(tail.err) == "subscribed to user.* at hub"
    sent = [{"n": i, "who": f"user-{i}"} for i in range(3)]
    for data in sent:
        result = cli(
            "pub", "user.login", json.dumps(data), "--peer", endpoint,
            "--correlation-id", str(cid), "--source", "cli",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("published user.login on hub ")
    received = [json.loads(tail.line()) for _ in range(3)]
    assert tail.line() == "<eof>"
    assert tail.finish() == 0
    assert [e["data"] for e in received] == sent
    assert {(e["origin"], e["source"], e["correlation_id"]) for e in received} == {
        ("hub", "cli", str(cid))
    }

    # The running node holds its journal: say so, and point at --peer.
    locked = cli("query", "--journal", str(path))
    assert locked.returncode == 1
    assert "in use by another process" in locked.stderr
    assert "--peer" in locked.stderr
    assert len(locked.stderr.strip().splitlines()) == 1

    remote = cli("query", "--peer", endpoint, "--type", "user.*", "--json")
    assert remote.returncode == 0, remote.stderr
    assert [json.loads(line)["data"] for line in remote.stdout.splitlines()] == sent

    traced = cli("trace", str(cid), "--peer", endpoint)
    assert traced.returncode == 0, traced.stderr
    assert "(3 events" in traced.stdout
    assert "origins: hub (3)" in traced.stdout

    node.proc.send_signal(signal.SIGTERM)
    assert node.line() == "closed"
    assert node.finish() == 0

    stored = cli("query", "--journal", str(path), "--type", "user.login", "--json")
    assert [json.loads(line)["data"] for line in stored.stdout.splitlines()] == sent


@pytest.mark.slow
def test_pub_reports_the_nodes_refusal(tmp_path: Path) -> None:
    with EventBus(node=NodeConfig(name="plain", listen="tcp://127.0.0.1:*")) as bus:
        endpoint = bus.endpoints["request"]
        assert endpoint is not None
        result = cli("pub", "$bus.fake", "--peer", endpoint, "--timeout", "5")
    assert result.returncode == 1
    assert "reserved" in result.stderr


@pytest.mark.slow
def test_broker_prints_its_endpoints_and_stops_on_sigint() -> None:
    hub = Running("broker", "tcp://127.0.0.1:*")
    lines = dict(hub.line().split(" ", 1) for _ in range(3))
    assert set(lines) == {"request", "subscribe", "publish"}
    assert all(v.startswith("tcp://127.0.0.1:") for v in lines.values())
    hub.proc.send_signal(signal.SIGINT)
    assert hub.line() == "closed"
    assert hub.finish() == 0


def test_python_dash_m_and_the_entry_point_are_one_cli() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("serve", "broker", "pub", "sub", "query", "trace", "stats", "keygen"):
        assert command in result.stdout
    (script,) = [
        ep for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name == "llmspell-events"
    ]  # fmt: skip
    assert script.value == "actors.cli:main"
