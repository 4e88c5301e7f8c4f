"""The fault harness (``bench/faults.py``): its checker, and a short seeded run of it.

The checker is tested on files written by hand (a check that cannot fail
is a defect); the run starts real processes (a broker, a persistent
publisher, a durable and a live subscriber), injects kill -9 and
SIGSTOP/SIGCONT faults and asserts a clean verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import (
    EVERY_FAULT,
    Received,
    Report,
    Volatile,
    check,
    check_received,
    check_volatile,
    run,
)


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
    assert got.late_redeliveries == 0
    assert got.torn_lines == 1
    assert got.ids == {"e0", "e1", "e2", "x1", "e3", "w0"}
    assert got.resumed_at == 2


def test_checker_orders_events_handled_again_and_wants_them_first(tmp_path: Path) -> None:
    received = write(
        tmp_path / "dur.received",
        "1 pub 0 e0\n1 pub 1 e1\n1 pub 2 e2\n"
        # incarnation 2 handles e2, e0 again (out of order), then e3, then e1 again (late)
        "2 pub 2 e2\n2 pub 0 e0\n2 pub 3 e3\n2 pub 1 e1\n",
    )
    got = check_received(received)
    assert got.redelivered_after_crash == 3
    assert got.most_redelivered == 3  # all by incarnation 2
    assert got.order_violations == 2  # e0 after e2, e1 after e3
    assert got.late_redeliveries == 1  # e1, after the first new event e3


def test_checker_wants_events_handled_again_first_per_origin_only(tmp_path: Path) -> None:
    """A new event of ``vol`` before ``pub``'s events fetched again is no fault."""
    received = write(
        tmp_path / "dur.received",
        "1 pub 0 e0\n1 pub 1 e1\n"
        # incarnation 2: vol's v0 (new), then e1 again (pub's first), then e2 (new)
        "2 vol 5 v0\n2 pub 1 e1\n2 pub 2 e2\n"
        # incarnation 3: pub's e3 (new), then e2 again: late, whatever vol did
        "3 pub 3 e3\n3 pub 2 e2\n",
    )
    got = check_received(received)
    assert got.redelivered_after_crash == 2
    assert got.late_redeliveries == 1  # e2 in incarnation 3 only


@pytest.mark.parametrize(
    "received",
    [
        Received(duplicates=1),
        Received(order_violations=1),
        Received(late_redeliveries=1),
    ],
)
def test_each_fault_of_a_subscriber_fails_the_verdict(received: Received) -> None:
    assert Report().ok
    assert not Report(durable=received).ok
    assert not Report(live=received).ok
    assert not Report(live_lost=1).ok
    assert not Report(lost_acknowledged=1).ok


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
    assert report.live_missed == 3  # not a fault: before its last incarnation heard the origin
    assert report.live_lost == 0
    assert not report.ok
    write(tmp_path / "dur.received", "1 pub 0 e0\n1 pub 1 e1\n2 pub 1 e1\n2 pub 2 e2\n2 pub 3 e3\n")
    report = check(tmp_path, Report())
    assert report.lost_acknowledged == 0
    assert report.durable.redelivered_after_crash == 1
    assert report.ok
    # Live's last incarnation heard e1: e2 and e3 are owed, and e3 did not come.
    write(tmp_path / "live.received", "7 pub 0 e0\n8 pub 1 e1\n8 pub 2 e2\n")
    report = check(tmp_path, Report())
    assert (report.live_missed, report.live_lost) == (1, 1)
    assert not report.ok


def test_checker_finds_a_silent_loss_of_the_non_persistent_origin(tmp_path: Path) -> None:
    """vol's incarnation A (killed) then B; ``live``'s last incarnation 9 synced at n 15.

    Owed: A's events after 15 up to the last 9 got of A (A's queue died with
    it), and all of B after 15.  A's 30 is missing inside a range 9
    announced, B's 60 missing and announced nowhere: one silent loss.
    """
    write(
        tmp_path / "vol.published",
        # incarnation n sequence id
        "A 10 1 a1\nA 20 2 a2\nA 30 3 a3\nA 40 4 a4\nA 50 5 a5\nB 55 1 b1\nB 60 2 b2\nB 70 3 b3\n",
    )
    write(tmp_path / "live.synced", "8 1\n9 15\n")
    # 9 got a1 (before its sync: not owed either way), a2, a4 (a5 died with A), b1, b3.
    received = "8 vol 10 a1\n9 vol 10 a1\n9 vol 20 a2\n9 vol 40 a4\n9 vol 55 b1\n9 vol 70 b3\n"
    write(tmp_path / "live.received", received)
    write(tmp_path / "live.lost", "8 vol 2 3\n9 vol 3 3\n9 pub 2 2\n")  # only 9's, of vol, count
    got = check_volatile(tmp_path, "live")
    assert got == Volatile(
        incarnations=2, synced=True, owed=6, received=4, announced=1, silent=1, not_owed=2
    )
    assert not Report(vol_live=got).ok
    write(tmp_path / "live.lost", "9 vol 3 3\n9 vol 2 2\n")  # B's 60 is sequence 2 too
    got = check_volatile(tmp_path, "live")
    assert (got.announced, got.silent) == (2, 0)
    assert Report(vol_live=got).ok
    # A last incarnation that never synced with vol is a fault, whatever it got.
    write(tmp_path / "live.synced", "8 1\n")
    got = check_volatile(tmp_path, "live")
    assert (got.synced, got.owed) == (False, 0)
    assert not Report(vol_live=got).ok


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_fault_run_of_every_kind_loses_nothing(tmp_path: Path) -> None:
    """Each role killed (-9) and restarted, and paused past the heartbeat timeout, once."""
    report = run(0, seed=1, folder=tmp_path, plan=EVERY_FAULT)
    figures = report.figures()
    assert len(figures["faults_by_kind"]) == 10, figures
    assert report.acknowledged > 1000, figures
    assert report.lost_acknowledged == 0, figures
    assert report.live_lost == 0, figures
    for received in (report.durable, report.live):
        assert received.duplicates == 0, figures
        assert received.order_violations == 0, figures
        assert received.late_redeliveries == 0, figures
    assert report.durable.incarnations == 2, figures  # its kill made a second
    assert report.live.resumed_at is not None, figures  # heard the origin after its restart
    # The non-persistent origin: nothing owed missing without an announcement.
    for vol in (report.vol_durable, report.vol_live):
        assert vol.synced, figures
        assert vol.owed > 0, figures
        assert vol.silent == 0, figures
        assert vol.received + vol.announced == vol.owed, figures
    assert report.vol_live.incarnations == 2, figures  # its kill made a second
