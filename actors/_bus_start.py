"""Start a bus's threads and actors, or, if a step fails, stop what started before it.

``EventBus.__init__`` opens the journal first (a locked or broken journal
fails with nothing running), then calls ``start_runtime``: the handlers'
pool, the system dispatcher, the journal actor and the core.  Should any of
them fail to start, the ones already started are stopped and the journal is
closed before the error reaches the caller: a bus that failed to start holds
no thread and no journal lock, so a retry in the same process can open it.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors._core.wiring import Core, start_actor
from actors._journal.actor import JournalActor
from actors._journal.records import Storage
from actors._model.config import EventConfig
from actors._runtime.dispatcher import Dispatcher
from actors._runtime.pool import SpareDispatcher
from actors._runtime.shutdown import Deadline, send_stop, wait_stopped

__all__ = ["Runtime", "start_runtime"]

STOP_WAIT = 10.0
"""Seconds the undoing of a failed start waits for each part to stop."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a bus runs on."""

    dispatcher: Dispatcher
    system: SpareDispatcher
    journal: JournalActor | None
    core: Core


def start_runtime(
    cfg: EventConfig, storage: Storage | None, name: str | None, tag: str, first_sequence: int
) -> Runtime:
    """Start the pool, the system dispatcher, the journal actor (with ``storage``) and the core."""
    started: list[Dispatcher | SpareDispatcher] = []
    journal: JournalActor | None = None
    try:
        # User handlers: a thread stuck in one past blocking_threshold gets a
        # stand-in, so blocking handlers stall only their own subscriptions.
        dispatcher = Dispatcher(
            cfg.threads,
            name=tag,
            max_threads=cfg.max_threads,
            blocking_threshold=cfg.blocking_threshold,
        )
        started.append(dispatcher)
        # The bus's own actors (router, correlation) run on the handlers' pool
        # while no handler there is blocked (no extra thread hand-off per
        # event), and on a thread no handler takes as soon as one is.
        system = SpareDispatcher(dispatcher, Dispatcher(1, name=f"{tag}-system"))
        started.append(system)
        if storage is not None:
            # Its own thread: a write (and its fsync) never holds a thread
            # that handlers need.
            journal = JournalActor(
                storage=storage,
                dispatcher=Dispatcher(1, name="journal"),
                sync=cfg.durability == "sync",
                retention_days=cfg.retention_days,
                max_events=cfg.max_events,
            )
            start_actor(journal)
        core = Core(
            cfg,
            name=name,
            dispatcher=dispatcher,
            system=system,
            first_sequence=first_sequence,
            journal=journal.actor_inbox if journal is not None else None,
            journal_backlog=journal.backlog if journal is not None else None,
        )
    except BaseException:
        _undo(started, journal, storage)
        raise
    return Runtime(dispatcher, system, journal, core)


def _undo(
    started: list[Dispatcher | SpareDispatcher],
    journal: JournalActor | None,
    storage: Storage | None,
) -> None:
    if journal is not None:  # its stop closes the storage
        deadline = Deadline(STOP_WAIT)
        wait_stopped(send_stop([journal.actor_ref]), deadline)
        journal.actor_dispatcher.shutdown(deadline.remaining())
    elif storage is not None:
        storage.close()
    for part in reversed(started):
        part.shutdown(STOP_WAIT)
