"""``bench`` (``actors/cli/bench.py``): it measures, and counts every event it sent."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from actors import EventBus, NodeConfig
from actors.cli import main
from tests._cli_support import cli, one_error_line


def test_bench_in_process_prints_a_table() -> None:
    result = CliRunner().invoke(main, ["bench", "--count", "2000", "--size", "64"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "bench in-process: 2000 events of 64 B, 1 subscriber(s)"
    assert lines[1].split() == ["events/s", "MB/s", "p50", "ms", "p99", "ms", "max", "ms"]
    assert lines[2].split()[0] == "pub"
    assert lines[3].split()[0] == "sub"
    assert len(lines[3].split()) == 6


def test_bench_json_counts_every_subscriber() -> None:
    result = CliRunner().invoke(main, ["bench", "--count", "1000", "--subs", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["where"] == "in-process"
    assert (figures["events"], figures["subscribers"]) == (1000, 3)
    assert figures["pub_per_s"] > 0
    assert figures["sub_per_s"] > 0
    assert 0 <= figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]


def test_bench_through_a_node() -> None:
    with EventBus(node=NodeConfig(name="target", listen="tcp://127.0.0.1:*")) as node:
        endpoint = node.endpoints["request"]
        assert endpoint is not None
        result = CliRunner().invoke(
            main, ["bench", "--peer", endpoint, "--count", "200", "--clients", "2", "--json"]
        )
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["where"] == f"through {endpoint}"
    assert figures["events"] == 200
    assert figures["sub_per_s"] > 0


def test_bench_rate_paces_the_publisher() -> None:
    result = CliRunner().invoke(main, ["bench", "--count", "200", "--rate", "2000", "--json"])
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    # 200 events at 2000/s take at least 199/2000 s: the rate cannot be beaten.
    assert 0 < figures["pub_per_s"] <= 2000 * 200 / 199 + 1


# Regression: each printed a traceback (OverflowError, or EventConfig's ValueError).
@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--size", str(10**30), "--count", "1"], "--size"),
        (["--count", str(10**22)], "--count"),
        (["--count", "2", "--rate", "1e-300"], "--rate"),
        (["--count", "1", "--subs", str(10**11)], "--subs"),
    ],
)
def test_bench_options_past_what_it_can_run_are_one_error_line(
    args: list[str], option: str
) -> None:
    result = cli("bench", *args)
    assert result.returncode == 2
    assert f"Invalid value for '{option}'" in one_error_line(result)


def test_bench_waits_at_most_what_the_clock_can_wait() -> None:
    """``--timeout`` is checked against the clock's limit, but bench waits it plus
    its own share per event: past the limit, an OverflowError traceback."""
    result = cli("bench", "--count", "2000", "--timeout", "9223372036")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bench in-process: 2000 events")
