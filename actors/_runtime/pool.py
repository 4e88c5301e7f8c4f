"""The thread pool behind a dispatcher, and its watchdog for blocked turns.

A ``Dispatcher`` runs scheduled actors on a few daemon threads that share one
run queue.  Given a ``blocking_threshold`` it also watches its threads: a
watchdog thread notices a thread stuck in one turn (one actor's batch, which
for a subscriber means a handler) for longer than the threshold, reports the
actor as *blocked*, and, when ``max_threads`` allows, starts another thread so
that ``threads`` threads stay free for everyone else.  This is Go's scheduler
handing a blocked thread's processor to a new thread, or a managed blocker in
a fork-join pool, done from outside: a handler need not say that it blocks.
Threads beyond ``threads`` retire after ``keepalive`` seconds without work.

The watchdog needs no busy loop: it wakes every ``blocking_threshold / 2`` s only while
turns run or started in the last half-threshold, else sleeps until the next turn starts.

Who writes what (each piece of state has one writer):

- a worker thread writes its own ``_Worker.turn`` (the actor and the start
  time of its current turn, one tuple, so a reader sees both or neither);
- the watchdog writes ``_blocked_at`` and ``_blocked`` (published as a new dict on every scan,
  never mutated) and the blocked count it keeps under ``_lock``;
- ``_workers`` changes under ``_lock`` only (a thread starts or retires).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from itertools import count
from typing import Protocol

__all__ = ["Dispatcher", "Runnable", "Scheduler", "SpareDispatcher"]

logger = logging.getLogger("actors.dispatcher")

_names = count(1)
SPAWN_FAILED_WAIT = 10.0  # seconds a dispatcher that failed to start waits for its threads

_NO_BLOCKED: Mapping[object, float] = {}


class Runnable(Protocol):
    """What a dispatcher runs: an actor that takes a turn of up to ``throughput`` messages."""

    def actor_turn(self, throughput: int) -> None: ...


class Scheduler(Protocol):
    """What an actor needs of whatever runs it: a ``Dispatcher`` or a ``SpareDispatcher``."""

    name: str
    throughput: int

    @property
    def alive(self) -> bool: ...

    def schedule(self, actor: Runnable) -> None: ...

    def on_dispatcher_thread(self) -> bool: ...

    def on_system_thread(self) -> bool: ...

    def blocked_since(self, actor: object) -> float | None: ...

    def shutdown(self, timeout: float | None = None) -> bool: ...


class _Worker:
    __slots__ = ("idle", "left", "thread", "turn")

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.turn: tuple[Runnable, float] | None = None
        self.idle = False  # waiting on the run queue (written by its own thread only)
        self.left = False  # handed its actor on (``hand_off``): exits after this turn


class Dispatcher:
    """Run scheduled actors on ``threads`` daemon threads (more while some block).

    ``throughput`` bounds how many messages one actor handles per turn before
    the thread moves on to the next actor with mail (fairness).  With a
    ``blocking_threshold`` (seconds), a turn running longer counts as blocked
    (see ``blocked``) and, up to ``max_threads``, a thread is added for each
    blocked one; extras retire after ``keepalive`` idle seconds; ``shutdown`` stops
    all once the run queue is empty.  ``solo``: one actor's pool (none else waits).
    """

    def __init__(
        self,
        threads: int = 2,
        *,
        throughput: int = 256,
        name: str = "",
        max_threads: int | None = None,
        blocking_threshold: float | None = None,
        keepalive: float | None = None,
        solo: bool = False,
    ) -> None:
        if threads < 1:
            raise ValueError("a dispatcher needs at least one thread")
        if max_threads is None:
            max_threads = threads
        if max_threads < threads:
            raise ValueError("max_threads must be >= threads")
        if blocking_threshold is not None and not blocking_threshold > 0:
            raise ValueError("blocking_threshold must be positive")
        self.throughput = throughput
        self.name = name or f"actors-dispatcher-{next(_names)}"
        self.core_threads = threads
        self.max_threads = max_threads
        self.blocking_threshold = blocking_threshold
        self.keepalive = (
            keepalive if keepalive is not None else max(1.0, 10 * (blocking_threshold or 0.1))
        )
        self._solo = solo
        self._runq: queue.SimpleQueue[Runnable | None] = queue.SimpleQueue()  # C: ~0.7 us a put
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._thread_set: set[threading.Thread] = set()
        self._n_blocked = 0  # watchdog-written, under _lock
        self._n_left = 0  # threads handed off and still in their turn, under _lock
        self._blocked: Mapping[object, float] = _NO_BLOCKED  # watchdog-written snapshot
        self._blocked_at = 0.0  # watchdog-written: when it last saw a blocked turn
        self._serial = count()
        self._alive = True
        # Set before any worker starts: each reads it once.
        self._busy = threading.Event() if blocking_threshold is not None else None
        self._stopping = threading.Event()
        self._warned_full = False  # the "max_threads reached" warning, once per episode
        # Called by the watchdog after each scan (``SpareDispatcher``'s rescue).
        self._scan_hooks: list[Callable[[], None]] = []
        self._watchdog: threading.Thread | None = None
        try:
            with self._lock:
                for _ in range(threads):
                    self._spawn()
            if blocking_threshold is not None:
                watchdog = threading.Thread(
                    target=self._watch, name=f"{self.name}-watchdog", daemon=True
                )
                watchdog.start()
                self._watchdog = watchdog
        except BaseException:
            # The OS refused a thread: the ones started go, and the caller hears why.
            self.shutdown(SPAWN_FAILED_WAIT)
            raise

    # -- public --------------------------------------------------------------

    @property
    def threads(self) -> int:
        """Return the number of threads now (``core_threads`` plus any added)."""
        return len(self._workers)

    @property
    def alive(self) -> bool:
        """Return whether ``shutdown`` has not been called."""
        return self._alive

    def schedule(self, actor: Runnable) -> None:
        """Queue ``actor`` for a turn on one of the threads."""
        self._runq.put(actor)

    def has_idle_thread(self) -> bool:
        """Return whether a thread waits for work now (a hint: it may take work at once)."""
        return any(worker.idle for worker in self._workers)

    def add_scan_hook(self, hook: Callable[[], None]) -> None:
        """Have the watchdog call ``hook`` after each look at the threads (no-op without one)."""
        self._scan_hooks.append(hook)

    def on_dispatcher_thread(self) -> bool:
        """Return whether the caller runs on one of this dispatcher's threads."""
        return threading.current_thread() in self._thread_set

    def on_system_thread(self) -> bool:
        """Return whether the actors this dispatcher runs may need the caller's thread.

        Any of its threads: a caller there that waits for one of them (a
        publish waiting for the router) may hold the thread that would run it.
        """
        return threading.current_thread() in self._thread_set

    def blocked(self) -> Mapping[object, float]:
        """Return the actors whose current turn counts as blocked, with its start.

        The start is a ``time.monotonic()`` value.  A snapshot published by the
        watchdog (at most ``blocking_threshold / 2`` seconds old); empty
        without a threshold.
        """
        return self._blocked

    def blocked_since(self, actor: object) -> float | None:
        """Return when ``actor``'s blocked turn started, or None if it is not blocked."""
        return self._blocked.get(actor)

    def hand_off(self, actor: object, limit: int) -> bool:
        """Leave the thread running ``actor``'s turn behind and start another in its place.

        For a turn stuck in a call that will never be waited for (a handler
        past its timeout on a dedicated thread): the old thread finishes its
        call, then must touch nothing of the actor (its turn raises
        ``TurnHandedOff``) and exits; the caller schedules the actor again,
        and its next turn runs on the new thread.  Refused (False) when no
        thread is in a turn of ``actor``, when ``limit`` threads are already
        left behind, or after ``shutdown``.  Never blocks on the turn.
        """
        with self._lock:
            if not self._alive or self._n_left >= limit:
                return False
            for worker in self._workers:
                turn = worker.turn
                if turn is not None and turn[0] is actor and not worker.left:
                    break
            else:
                return False
            try:
                self._spawn()
            except RuntimeError:
                logger.exception("%s: no thread to take over from %s", self.name, actor)
                return False
            worker.left = True
            self._workers.remove(worker)
            self._n_left += 1
        return True

    @property
    def left_behind(self) -> int:
        """Return how many handed-off threads are still finishing their turn."""
        return self._n_left

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop the threads after the actors already queued had their turn.

        Waits up to ``timeout`` seconds in all (forever if None) for the
        threads to end; a thread still inside a turn then (a handler that
        does not return) is abandoned: it is a daemon thread and ends with
        its turn.  Once every thread ended, the watchdog's end is waited for
        too (it holds the actors of the turns it looked at).  Returns whether
        every thread ended.
        """
        with self._lock:
            if not self._alive:
                return True
            self._alive = False
            workers = list(self._workers)
        self._stopping.set()
        if self._busy is not None:
            self._busy.set()
        for _ in range(len(workers) + 1):  # one more: a thread whose start was interrupted
            self._runq.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        done = True
        for worker in workers:
            thread = worker.thread
            if thread is None or thread is current:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            done = done and not thread.is_alive()
        watchdog = self._watchdog
        if done and watchdog is not None and watchdog is not current:
            # It ends at its next look, finding no turn running: once it has,
            # nothing of this pool holds the actors it ran.
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            watchdog.join(remaining)
        return done

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the threads ``shutdown(0)`` left (not one left behind)."""
        me = threading.current_thread()
        with self._lock:
            threads = [t for w in self._workers if (t := w.thread) is not None and t is not me]
        end = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    # -- the threads ---------------------------------------------------------

    def _spawn(self) -> None:
        """Start one more thread (under ``_lock``); ``RuntimeError`` if the OS refuses it.

        Nothing is added then (``shutdown`` never waits for a thread that did not start).
        """
        worker = _Worker()
        thread = threading.Thread(
            target=self._work,
            args=(worker,),
            name=f"{self.name}-{next(self._serial)}",
            daemon=True,
        )
        worker.thread = thread
        self._workers.append(worker)  # before its first look at the pool's size
        self._thread_set.add(thread)
        try:
            thread.start()
        except BaseException:  # refused, or interrupted (a Ctrl-C): shutdown ends it anyway
            self._workers.remove(worker)
            self._thread_set.discard(thread)
            raise

    def _retire(self, worker: _Worker) -> bool:
        """Leave the pool if it has more free threads than it needs."""
        with self._lock:
            if len(self._workers) - self._n_blocked <= self.core_threads:
                return False
            self._forget(worker)
            return True

    def _forget(self, worker: _Worker) -> None:
        # Under _lock.
        if worker.left:
            worker.left = False
            self._n_left -= 1
        if worker in self._workers:
            self._workers.remove(worker)
        if worker.thread is not None:
            self._thread_set.discard(worker.thread)

    def _work(self, worker: _Worker) -> None:
        runq = self._runq
        throughput = self.throughput
        busy = self._busy
        monotonic = time.monotonic
        core = self.core_threads
        workers = self._workers
        keepalive = self.keepalive
        try:
            while True:
                if len(workers) > core:
                    # An extra thread stands in for a blocked one: once no turn
                    # was seen blocked for ``keepalive``, it goes, however busy
                    # the pool (light steady work would otherwise keep it).
                    if monotonic() - self._blocked_at >= keepalive and self._retire(worker):
                        return
                    worker.idle = True
                    try:
                        actor = runq.get(timeout=keepalive)
                    except queue.Empty:
                        if self._retire(worker):
                            return
                        continue
                    finally:
                        worker.idle = False
                else:
                    worker.idle = True
                    actor = runq.get()
                    worker.idle = False
                if actor is None:
                    self._run_leftovers(worker)
                    return
                worker.turn = (actor, monotonic())
                if busy is not None and not busy.is_set():
                    busy.set()
                try:
                    actor.actor_turn(throughput)
                except BaseException:
                    # A turn never raises by design; if it does, log it and
                    # keep the thread alive for every other actor.
                    logger.exception("actor turn failed in %s", actor)
                finally:
                    worker.turn = None
                if worker.left:
                    return  # handed off: another thread runs the actor now
        finally:
            with self._lock:
                self._forget(worker)

    def _run_leftovers(self, worker: _Worker) -> None:
        """Run the turns queued behind the stop markers, then leave (after ``shutdown``).

        A turn that was blocked when ``shutdown`` queued the markers and
        returned later reschedules its actor behind them: without this, its
        last turn (an abandoned subscription discarding what it had queued,
        or taking its stop) would never run.  The markers met are put back
        for the threads still in their turns.
        """
        markers = 0
        while True:
            try:
                actor = self._runq.get_nowait()
            except queue.Empty:
                break
            if actor is None:
                markers += 1
                continue
            worker.turn = (actor, time.monotonic())
            try:
                actor.actor_turn(self.throughput)
            except BaseException:
                logger.exception("actor turn failed in %s", actor)
            finally:
                worker.turn = None
        for _ in range(markers):
            self._runq.put(None)

    def _watch(self) -> None:
        busy = self._busy
        assert busy is not None
        threshold = self.blocking_threshold
        assert threshold is not None
        stopping = self._stopping
        hooks = self._scan_hooks
        while True:
            # Clear first, then look: a turn that starts after the look finds
            # the event clear and sets it, so the wait below cannot miss it.
            busy.clear()
            running = self._scan(threshold)
            for hook in hooks:
                hook()
            if stopping.is_set() and not running:
                # Shut down, and the turns that ran on (handlers close gave
                # up on) have ended: none is blocked any more.
                self._blocked = _NO_BLOCKED
                return
            # Paced: short turns one after another (request/reply) would
            # otherwise wake this thread at every turn.  Sleep on ``busy``
            # only after a quiet half-threshold.
            if stopping.is_set():
                time.sleep(threshold / 2)  # until the turns still running end
                continue
            stopping.wait(threshold / 2)
            if not running and not busy.is_set():
                busy.wait()

    def _scan(self, threshold: float) -> int:
        """Look at every thread's turn; publish the blocked ones; add threads.

        Returns how many turns are running.
        """
        now = time.monotonic()
        with self._lock:
            workers = list(self._workers)
        running = 0
        blocked: dict[object, float] = {}
        for worker in workers:
            turn = worker.turn
            if turn is None:
                continue
            running += 1
            actor, since = turn
            if now - since >= threshold:
                blocked[actor] = since
        newly = [a for a in blocked if a not in self._blocked]
        self._blocked = blocked if blocked else _NO_BLOCKED
        if blocked:
            self._blocked_at = now
        added = 0
        with self._lock:
            self._n_blocked = len(blocked)
            while (
                self._alive
                and len(self._workers) - len(blocked) < self.core_threads
                and len(self._workers) < self.max_threads
            ):
                try:
                    self._spawn()
                except RuntimeError:  # logged; the next scan tries again
                    logger.exception("%s: could not add a thread", self.name)
                    break
                added += 1
            total = len(self._workers)
        for stuck in newly:
            logger.debug(
                "%s: %s has run one turn for over %.3fs; %d thread(s) now (%d added)",
                self.name,
                stuck,
                threshold,
                total,
                added,
            )
        full = bool(blocked) and total - len(blocked) < self.core_threads
        # Shut down, the pool adds no thread on purpose: that is no limit reached.
        if full and newly and not self._warned_full and self._alive and not self._solo:
            self._warned_full = True  # once, until the pool has its free threads back
            logger.warning(
                "%s: %d actor(s) blocked and max_threads=%d reached; others wait",
                self.name,
                len(blocked),
                self.max_threads,
            )
        elif not full:
            self._warned_full = False
        return running


class SpareDispatcher:
    """Run a turn on an idle thread of ``primary`` if there is one, else on ``spare``.

    For the bus's own actors (router, correlation), which must not wait
    behind a handler: a turn goes to the handlers' pool only when one of its
    threads waits for work at that moment and none of its turns is blocked;
    there it costs no extra thread hand-off (the thread that routed an event
    goes on to run the handlers it woke).  Otherwise, or once the pool is
    shut down, it runs on ``spare``, a thread no handler takes.  Each turn
    is scheduled afresh and an actor holds its claim across a turn, so it
    never runs on both at once.  ``shutdown`` stops ``spare`` only:
    ``primary`` belongs to whoever made it.

    The one way a handler can delay such a turn: pool threads seen idle
    here take handler turns queued before it, and those block.  The watchdog
    then adds a thread within ``blocking_threshold``, which runs the waiting
    turn; and if the pool is at ``max_threads``, the watchdog moves a turn
    that waited ``blocking_threshold`` on the pool to ``spare`` (``_rescue``).
    """

    def __init__(self, primary: Dispatcher, spare: Dispatcher) -> None:
        self.primary = primary
        self.spare = spare
        self.name = spare.name
        self.throughput = primary.throughput
        self._turns: dict[Runnable, _SystemTurn] = {}  # one per actor, reused
        # Turns queued on ``primary`` and not yet started, with when: a
        # claim popped (atomically) by the thread that runs it, or by the rescue.
        self._waiting: dict[_SystemTurn, float] = {}
        primary.add_scan_hook(self._rescue)

    @property
    def alive(self) -> bool:
        """Return whether ``spare`` was not shut down."""
        return self.spare.alive

    def schedule(self, actor: Runnable) -> None:
        """Queue ``actor`` on an idle ``primary``, else on ``spare`` (class docstring)."""
        primary = self.primary
        if primary.alive and not primary.blocked() and primary.has_idle_thread():
            turn = self._turns.get(actor)
            if turn is None:
                turn = self._turns[actor] = _SystemTurn(actor, self._waiting)
            self._waiting[turn] = time.monotonic()  # its claim, taken by one thread only
            primary.schedule(turn)
        else:
            self.spare.schedule(actor)

    def _rescue(self) -> None:
        """Move to ``spare`` each turn that waited on ``primary`` past its threshold.

        Run by ``primary``'s watchdog after each scan.  Threads seen free may
        take handler turns queued just before this one, and those may block
        with the pool at ``max_threads``: the turn would wait for a handler
        to return.  Whoever pops the turn's claim first runs it, here or there.
        """
        threshold = self.primary.blocking_threshold
        if threshold is None or not self._waiting:
            return
        now = time.monotonic()
        # ``dict.copy`` runs no code of ours (``list(items())`` could, in a
        # collection), so a turn queued meanwhile by another thread is safe.
        for turn, since in self._waiting.copy().items():
            if now - since >= threshold and self._waiting.pop(turn, None) is not None:
                self.spare.schedule(turn.actor)

    def on_dispatcher_thread(self) -> bool:
        """Return whether the caller runs on a thread of either dispatcher."""
        return self.primary.on_dispatcher_thread() or self.spare.on_dispatcher_thread()

    def on_system_thread(self) -> bool:
        """Return whether the bus's own actors may need the caller's thread: ``spare`` only.

        They take a thread of ``primary`` only when it is idle, so a handler
        there may wait for them (a publish waiting for the router to route it).
        """
        return self.spare.on_dispatcher_thread()

    def blocked_since(self, actor: object) -> float | None:
        """Return when ``actor``'s blocked turn started (on ``primary``), or None."""
        return self.primary.blocked_since(actor)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop ``spare`` (see the class docstring); return whether its thread ended."""
        return self.spare.shutdown(timeout)


class _SystemTurn:
    """What ``SpareDispatcher`` queues on ``primary`` for an actor: its turn, if still claimed.

    An actor is scheduled again only after its turn ended, so it has at most
    one claim in ``waiting`` at a time; a stale queue entry (its claim moved
    to ``spare`` by the rescue) runs the next claim or nothing: never two
    turns at once.
    """

    __slots__ = ("actor", "waiting")

    def __init__(self, actor: Runnable, waiting: dict[_SystemTurn, float]) -> None:
        self.actor = actor
        self.waiting = waiting

    def actor_turn(self, throughput: int) -> None:
        if self.waiting.pop(self, None) is not None:
            self.actor.actor_turn(throughput)

    def __repr__(self) -> str:
        return repr(self.actor)
