"""The demo runs end to end on a real journal and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actors import demo


def test_demo_runs_the_workflow(tmp_path: Path) -> None:
    lines: list[str] = []
    assert demo.run(tmp_path / "journal", out=lines.append) == 0
    text = "\n".join(lines)
    for expected in (
        "workflow.start",
        "task.assigned",
        "$bus.deadletter",
        "review.approved",
        "review.escalated",
        "workflow.complete",
        "The workflow's causal trace:",
        "ConnectionError: flaky-api",
        "tool.invoke.reply",
        "tool.invoke.error",
        "12 events replayed.",
    ):
        assert expected in text, expected
    # The trace is a tree rooted at the start event.
    trace_start = lines.index("\nThe workflow's causal trace:")
    rendered = lines[trace_start + 1].splitlines()
    assert rendered[0].startswith("workflow ")
    assert "workflow.start" in rendered[1]
    assert "(12 events" in rendered[0]
    # Each tool reply hangs under its request in the trace (request -> reply).
    invoke = next(i for i, line in enumerate(rendered) if "tool.invoke  [worker-1" in line)
    assert "tool.invoke.reply" in rendered[invoke + 1]


def test_demo_can_run_twice_on_one_journal(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    first: list[str] = []
    second: list[str] = []
    assert demo.run(journal, out=first.append) == 0
    assert demo.run(journal, out=second.append) == 0
    # Sequences continue across runs; each run replays only its own workflow.
    assert "12 events replayed." in second
    assert any("#13" in line for line in second)


def test_a_demo_whose_journal_is_held_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A second demo on the same folder printed JournalLockedError's traceback.
    journal = tmp_path / "journal"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(journal)],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "held\n"
        assert demo.main(["--journal", str(journal), "--no-cluster"]) == 1
    finally:
        child.communicate("", timeout=30)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"Error: journal '{journal}' is locked by another process")
    assert line.endswith("run the demo with another --journal folder")


HOLD = """
import sys
from actors import EventConfig, PersistentEventBus
bus = PersistentEventBus(EventConfig(persistence_path=sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
bus.close()
"""
