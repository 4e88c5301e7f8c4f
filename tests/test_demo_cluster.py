"""The demo's workflow across two OS processes (``actors.demo.cluster``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.demo import cluster as demo_cluster

pytestmark = pytest.mark.slow


def test_the_trace_spans_both_nodes_and_holds_the_dead_letter(tmp_path: Path) -> None:
    lines: list[str] = []
    assert demo_cluster.run(tmp_path / "journal", out=lines.append) == 0
    text = "\n".join(lines)

    flow = [line for line in lines if line.startswith("  #")]
    assert any(" planner  workflow.start" in line for line in flow)
    assert any(" workers  tool.invoke" in line for line in flow)
    assert any(" workers  $bus.deadletter" in line for line in flow)

    trace = lines[lines.index("\nThe workflow's trace, gathered from both nodes:") + 1]
    rendered = trace.splitlines()
    assert "(12 events" in rendered[0]
    assert "workflow.start" in rendered[1]
    for expected in (
        "tool.invoke.reply",
        "tool.invoke.error",
        "$bus.deadletter",
        "review.escalated",
        "workflow.complete",
    ):
        assert expected in trace, expected
    assert "Events per node: planner 6, workers 6" in lines

    assert "ConnectionError: flaky-api: upstream timed out" in text
    assert "node workers stopped (exit status 0)." in text[-200:]
    assert (tmp_path / "journal" / "planner").is_dir()
    assert (tmp_path / "journal" / "workers").is_dir()


def test_a_second_run_on_the_same_journals_sees_only_its_own_workflow(tmp_path: Path) -> None:
    assert demo_cluster.run(tmp_path / "journal", out=lambda _line: None) == 0
    lines: list[str] = []
    assert demo_cluster.run(tmp_path / "journal", out=lines.append) == 0
    assert "Events per node: planner 6, workers 6" in lines
    letters = lines[
        lines.index("\nDead letters on node workers (a query over the wire to its journal):") :
    ]
    assert sum("flaky-api" in line for line in letters) == 1
