"""Pick and open the journal's backend; check what an open lost; repair.

``open_journal(config)`` is what a bus calls: it opens the RocksDB backend
for a ``persistence_path`` (``None`` without one), compares the stored
sequences with the acknowledged high-water mark (``highwater.py``), applies
the ``recover`` policy, runs retention and returns the first free sequence.
``repair(path)`` is what an operator (or the CLI) calls on a journal that
refuses to open.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from actors._errors import JournalDamagedError
from actors._journal.actor import enforce_retention
from actors._journal.highwater import FILE_NAME
from actors._journal.rebuild import PARTS, disagree_message
from actors._journal.records import HIGH_WATER
from actors._journal.rocks import Recover, RocksStorage, repair_files
from actors._model.config import EventConfig

__all__ = ["OpenedJournal", "RecoveryReport", "open_journal", "repair"]

logger = logging.getLogger("actors.journal")


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening (or repairing) a journal found.

    ``acknowledged`` is the highest sequence the journal ever acknowledged;
    ``last_sequence`` the highest it holds now; ``lost`` how many
    acknowledged sequences it no longer holds (``lost_range``, inclusive);
    ``wal_damaged`` whether RocksDB found the write-ahead log damaged;
    ``repaired`` whether RocksDB's repair ran; ``rebuilt`` the parts of the
    secondary state (``"types"``, ``"count"``, ``"skew"``, ``"by_type"``,
    ``"by_time"``, ``"by_cid"``) found not to match the records and rebuilt
    from them, empty if none.
    """

    path: str
    acknowledged: int
    last_sequence: int
    lost: int
    lost_range: tuple[int, int] | None
    wal_damaged: bool
    repaired: bool = False
    rebuilt: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OpenedJournal:
    """An open storage, the sequence to hand out next, and what the open found."""

    storage: RocksStorage
    first_sequence: int
    recovery: RecoveryReport


def _check_retention(retention_days: float | None, max_events: int | None) -> None:
    if retention_days is not None and not retention_days > 0:
        msg = f"retention_days must be positive, got {retention_days!r}"
        raise ValueError(msg)
    if max_events is not None and max_events < 1:
        msg = f"max_events must be at least 1, got {max_events!r}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class _Reconciled:
    """What ``_reconcile`` did: the parts rebuilt, and records found gone below the last."""

    rebuilt: tuple[str, ...] = ()
    holes: int = 0
    holes_range: tuple[int, int] | None = None


def _inspect(storage: RocksStorage, path: str, done: _Reconciled) -> RecoveryReport:
    """Report the acknowledged events the journal no longer holds: its tail, and any holes."""
    kept = max(storage.last_sequence(), storage.get_checkpoint(HIGH_WATER) or 0)
    acknowledged = storage.acknowledged()
    tail = (kept + 1, acknowledged) if acknowledged > kept else None
    lost = 0 if tail is None else tail[1] - tail[0] + 1
    lost_range = tail
    if done.holes_range is not None:  # records gone below the last one (a table set aside)
        lost += done.holes
        low, high = done.holes_range
        lost_range = (low, high if tail is None else tail[1])
    return RecoveryReport(
        path=path,
        acknowledged=acknowledged,
        last_sequence=storage.last_sequence(),
        lost=lost,
        lost_range=lost_range,
        wal_damaged=storage.wal_damaged,
        repaired=storage.repaired,
        rebuilt=done.rebuilt,
    )


def _reconcile(
    storage: RocksStorage, path: str, *, full: bool, recover: Recover, repaired: bool = False
) -> _Reconciled:
    """Check the secondary state against the records; rebuild it where it disagrees.

    ``full`` surveys every record and index entry (``repair`` and after
    RocksDB's repair); otherwise a few point reads decide, and a survey
    follows only if they find a problem.  Returns the parts rebuilt.  With
    ``recover="refuse"`` a problem raises ``JournalDamagedError`` instead; a
    read-only storage with ``recover="truncate"`` is only warned about.
    """
    problems = [] if full else storage.quick_problems()
    if not full and not problems:
        return _Reconciled()
    if recover == "refuse" and not full:
        raise JournalDamagedError(disagree_message(path, problems))
    if storage.read_only:
        logger.warning(
            "journal %s: its %s do not match the records; queries may miss events until "
            "it is repaired",
            path,
            ", ".join(problems),
        )
        return _Reconciled()
    survey = storage.survey()
    holes, holes_range = storage.lost_records(survey, repaired or storage.repaired)
    parts = tuple(part for part in PARTS if part in survey.problems or part in problems)
    if not parts:
        return _Reconciled()
    done = storage.rebuild(survey)
    logger.warning(
        "journal %s: its %s did not match the records; rebuilt from %d record(s)%s%s%s",
        path,
        ", ".join(parts),
        done.records,
        f"; types registered again: {', '.join(done.registered)}" if done.registered else "",
        f"; {done.retyped} record header(s) set to their payload's type" if done.retyped else "",
        f"; {done.untyped} record(s) of no known type" if done.untyped else "",
    )
    return _Reconciled(parts, holes, holes_range)


def _describe(report: RecoveryReport) -> str:
    if report.lost_range is None:
        return "its write-ahead log was damaged; no acknowledged event is missing"
    first, last = report.lost_range
    return (
        f"{report.lost} acknowledged event(s), sequences {first}..{last}, are missing "
        f"(the journal ends at {report.last_sequence})"
    )


def open_journal(config: EventConfig) -> OpenedJournal | None:
    """Open the journal ``config`` names, or return None if it names none.

    Raises ``ValueError`` for a non-positive ``retention_days`` or a
    ``max_events`` below 1; ``JournalNotFoundError`` when ``read_only`` and
    the folder holds no journal; ``JournalLockedError``; ``JournalDamagedError``
    when events are missing and ``recover`` is ``"refuse"``; ``JournalError``.
    With ``recover="truncate"`` a loss is logged at WARNING, reported in
    ``recovery`` and the next sequence stays above every acknowledged one.
    A few point reads check the type registry, count and indexes against the
    records (no record scan); where they disagree, ``recover="truncate"``
    rebuilds them from the records (WARNING, ``recovery.rebuilt``) and
    ``"refuse"`` raises ``JournalDamagedError``.
    """
    if config.persistence_path is None:
        return None
    _check_retention(config.retention_days, config.max_events)
    path = os.fspath(config.persistence_path)
    storage = RocksStorage(path, read_only=config.read_only, recover=config.recover)
    try:
        done = _reconcile(storage, path, full=storage.repaired, recover=config.recover)
        report = _inspect(storage, path, done)
        # A writable open makes the file before any write; a read-only one
        # read it before a writer beside it may have made it.
        if (
            storage.mark_missing()
            and report.last_sequence > 0
            and not (config.read_only and os.path.exists(os.path.join(path, FILE_NAME)))
        ):
            logging.getLogger("actors.storage").warning(  # with the mark's other warnings
                "journal %s holds events up to sequence %d but no acknowledged mark (%s): "
                "acknowledged events lost before this open cannot be detected",
                path,
                report.last_sequence,
                FILE_NAME,
            )
        if report.lost or report.wal_damaged:
            if config.recover == "refuse" and report.lost:
                msg = (
                    f"journal {path!r} is damaged: {_describe(report)}. To accept the loss, "
                    "open it with EventConfig(recover='truncate') or run "
                    "actors._journal.repair(path)"
                )
                raise JournalDamagedError(msg)
            logger.warning("journal %s opened after damage: %s", path, _describe(report))
            if not config.read_only:
                storage.accept_loss(report.acknowledged)
        if not config.read_only:
            enforce_retention(storage, config.retention_days, config.max_events)
        high = storage.get_checkpoint(HIGH_WATER) or 0
        first = max(storage.last_sequence(), high, storage.acknowledged()) + 1
    except BaseException:
        storage.close()
        raise
    return OpenedJournal(storage, first, report)


def repair(path: str | os.PathLike[str], *, recover: Recover = "truncate") -> RecoveryReport:
    """Make a damaged journal open again, accepting the loss; return what was lost.

    Opens it with ``recover="truncate"``: a damaged WAL keeps everything up
    to the damage; a journal RocksDB cannot read, or one missing acknowledged
    events with its WAL intact, first goes through RocksDB's repair, which
    keeps what the log files and the readable table files hold and sets a
    damaged table file aside whole (its readable records with it).
    Either way the acknowledged mark is kept, so sequences continue above
    every acknowledged one.  Then every record is checked against the type
    registry, count, skew and indexes, and what disagrees is rebuilt from
    the records (``rebuilt``; the records are read once, twice more if a
    rebuild is needed).  Blocks; raises ``JournalNotFoundError``,
    ``JournalLockedError``, or ``JournalError`` if nothing can be salvaged.
    The journal must not be open anywhere.
    """
    where = os.fspath(path)
    repaired = False
    try:
        storage = RocksStorage(where, create=False, recover=recover)
    except JournalDamagedError:
        repair_files(where)
        repaired = True
        storage = RocksStorage(where, create=False, recover=recover)
    try:
        done = _reconcile(storage, where, full=True, recover="truncate", repaired=repaired)
        report = _inspect(storage, where, done)
        if report.lost:
            storage.accept_loss(report.acknowledged)
            logger.warning("journal %s repaired: %s", where, _describe(report))
    finally:
        storage.close()
    return RecoveryReport(
        path=report.path,
        acknowledged=report.acknowledged,
        last_sequence=report.last_sequence,
        lost=report.lost,
        lost_range=report.lost_range,
        wal_damaged=report.wal_damaged,
        repaired=repaired or report.repaired,
        rebuilt=report.rebuilt,
    )
