"""The fault harness (``bench/faults.py``): its checker, and a short seeded run of it.

The checker is tested on files written by hand (a check that cannot fail
is a defect); the run starts real processes (a broker, a persistent
publisher, a durable and a live subscriber), injects kill -9 and
SIGSTOP/SIGCONT faults and asserts a clean verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import Report, check, check_received, run


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_checker_counts_duplicates_order_and_redelivery(tmp_path: Path) -> None:
    received = write(
        tmp_path / "dur.received",
        # incarnation 1: n 0, 1, 2 then event e1 again (a duplicate), then n 1 (out of order)
        "1 pub 0 e0\n1 pub 1 e1\n1 pub 2 e2\n1 pub 1 e1\n1 pub 1 x1\n"
        # incarnation 2 (after a crash): e2 again is a redelivery; n restarts without fault
        "2 pub 2 e2\n2 pub 3 e3\n"
        # a warm-up event (n = -1) is not ordered; a torn last line is skipped
        "2 pub -1 w0\n2 pub 4",
    )
    got = check_received(received)
    assert got.incarnations == 2
    assert got.duplicates == 1
    assert got.order_violations == 1
    assert got.redelivered_after_crash == 1
    assert got.torn_lines == 1
    assert got.ids == {"e0", "e1", "e2", "x1", "e3", "w0"}


def test_checker_reports_acknowledged_events_missing_at_the_durable_subscriber(
    tmp_path: Path,
) -> None:
    write(tmp_path / "acked", "0 e0\n1 e1\n2 e2\n3 e3\n")
    write(tmp_path / "dur.received", "1 pub 0 e0\n1 pub 2 e2\n1 pub 3 e3\n")
    write(tmp_path / "live.received", "7 pub 3 e3\n")
    report = check(tmp_path, Report())
    assert report.acknowledged == 4
    assert report.lost_acknowledged == 1
    assert report.lost_sample == [1]
    assert report.live_missed == 3  # not a fault: live may be down or paused
    assert not report.ok
    write(tmp_path / "dur.received", "1 pub 0 e0\n1 pub 1 e1\n2 pub 1 e1\n2 pub 2 e2\n2 pub 3 e3\n")
    report = check(tmp_path, Report())
    assert report.lost_acknowledged == 0
    assert report.durable.redelivered_after_crash == 1
    assert report.ok


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_seeded_fault_run_loses_nothing(tmp_path: Path) -> None:
    report = run(6, seed=1, folder=tmp_path)
    figures = report.figures()
    assert len(report.faults) == 6
    assert report.acknowledged > 1000, figures
    assert report.lost_acknowledged == 0, figures
    assert report.durable.duplicates == 0, figures
    assert report.durable.order_violations == 0, figures
    assert report.live.duplicates == 0, figures
    assert report.live.order_violations == 0, figures
    assert report.durable.lines >= report.acknowledged, figures
    assert report.ok
