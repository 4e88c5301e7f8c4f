"""Short-lived nodes and read-only journals: what the client commands talk through.

A short-lived node joins the running node behind ``--peer`` for one command
and closes on exit.  A journal folder is opened read-only, after checking it
is one: nothing is ever created or written in a folder a command only reads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

from actors._bus import EventBus, PersistentEventBus
from actors._cluster.bridge_io import ANSWER_TOO_LARGE
from actors._errors import (
    BridgeError,
    FutureTimeoutError,
    JournalDamagedError,
    JournalLockedError,
    JournalNotFoundError,
    NoAnswerError,
    NotConnectedError,
    PeerRefusedError,
)
from actors._model.config import EventConfig, NodeConfig
from actors.cli.options import Connection, Source
from actors.cli.output import fail

__all__ = [
    "left",
    "open_journal",
    "open_source",
    "peer_name",
    "remote_reads",
    "running",
    "short_lived_node",
]

CLOSE_TIMEOUT = 10.0

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def left(deadline: float) -> float:
    """Return the seconds left until ``deadline`` (a ``time.monotonic()`` value), at least 0."""
    return max(0.0, deadline - time.monotonic())


@contextlib.contextmanager
def running(start: Callable[[], EventBus]) -> Iterator[EventBus]:
    """Start a bus with ``start`` and close it on exit, Ctrl-C or not.

    SIGINT and SIGTERM are held while the bus starts and while it closes:
    taken in the middle of a thread's start, a ``KeyboardInterrupt`` could
    leave a thread that nothing stops, and the process would never exit.  A
    signal that came meanwhile is taken once the bus is built, inside the
    block that closes it.  The bus's threads keep both blocked, so the main
    thread alone takes them.
    """
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        bus = start()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a held signal is taken here
        yield bus
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no second one cuts the close short
        try:
            bus.close(timeout=CLOSE_TIMEOUT)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def short_lived_node(
    connection: Connection, command: str, *, listen: str | None = None
) -> contextlib.AbstractContextManager[EventBus]:
    """Run a node connected to ``connection.peer``; close it on exit (see ``running``).

    Without ``listen`` it is a client: it sends requests and subscribes,
    nobody connects to it.
    """
    peer = connection.peer
    assert peer is not None
    keys, server = connection.keys, connection.server_key
    try:
        node = NodeConfig(
            name=connection.name or f"{command}-{os.getpid()}",
            listen=listen,
            peers=(peer,),
            curve_public_key=keys.public if keys else None,
            curve_secret_key=keys.secret if keys else None,
            authorized_keys=(server,) if server is not None else (),
            peer_public_keys={peer: server} if server is not None else {},
        )
    except ValueError as exc:
        fail(str(exc))

    def start() -> EventBus:
        try:
            return EventBus(EventConfig(threads=1), node=node)
        except ValueError as exc:  # an endpoint the node cannot use
            fail(str(exc))

    return running(start)


def peer_name(bus: EventBus, connection: Connection, deadline: float) -> str:
    """Return the name of the node behind ``--peer`` (or ``--node``) once it is in touch.

    Blocks until then; fails with what went wrong (no answer, a refused key).
    """
    try:
        names = bus.linked_nodes(left(deadline))
        name = connection.node_name or (names[0] if names else None)
        if name is None:
            fail(no_answer(connection))
        if not bus.wait_for_peers([name], left(deadline)):
            fail(f"node {name!r} is not heard from through {connection.peer}")
    except PeerRefusedError as exc:
        reason = str(exc)  # it may name the endpoint already ("... refused this node: ...")
        if connection.peer and connection.peer not in reason:
            reason = f"{connection.peer} refused this node: {reason}"
        fail(reason)
    except (NoAnswerError, NotConnectedError):
        fail(no_answer(connection))
    return name


def no_answer(connection: Connection) -> str:
    """Explain a silent peer: with CURVE, the likely key problem."""
    waited = f"no node answered at {connection.peer} within {connection.timeout:g} s"
    if connection.keys is not None:
        public = connection.keys.public.decode()
        return (
            f"{waited}: with CURVE, the node refuses a key it does not authorise (its serve "
            f"needs --authorize {public}) and ignores a client whose --server-key is not its "
            "public key"
        )
    return f"{waited} (is a node serving there? through a broker, name it with --node)"


def open_journal(path: str) -> EventBus:
    """Open the journal at ``path`` read-only; fail in one line if it is none, held or damaged.

    A folder without RocksDB's ``CURRENT`` file and nothing else of a
    database is not a journal, and is left untouched; one that lost its
    ``CURRENT`` but holds table files or logs is a damaged journal, which
    the open says (with how to salvage it).
    """
    try:
        return PersistentEventBus(EventConfig(persistence_path=path, read_only=True, threads=1))
    except JournalLockedError:
        fail(
            f"the journal {path} is in use by another process (a running `llmspell-events "
            "serve`?): ask that node with --peer ENDPOINT instead"
        )
    except JournalNotFoundError:
        fail(f"no journal at {path} (a node makes one: llmspell-events serve --journal {path})")
    except JournalDamagedError as exc:
        fail(str(exc))  # it names the journal and how to salvage it


@contextlib.contextmanager
def remote_reads(node: str) -> Iterator[None]:
    """Turn a failed read of ``node``'s journal into one line saying what to do."""
    try:
        yield
    except (NoAnswerError, FutureTimeoutError):
        fail(f"node {node!r} did not answer in time (a longer --timeout?)")
    except NotConnectedError:
        fail(f"node {node!r} is out of reach")
    except BridgeError as exc:
        if ANSWER_TOO_LARGE in str(exc):  # a descending query: no pages to go by
            fail(f"node {node!r} could not send its answer: {exc} (ask for less: --limit)")
        fail(
            f"node {node!r} could not read its journal: {exc} (a node keeps a journal when "
            "served with `llmspell-events serve --journal DIR`)"
        )


@contextlib.contextmanager
def open_source(source: Source, command: str) -> Iterator[tuple[EventBus, str | None]]:
    """Yield a bus to read from and the node to ask (None: the bus's own journal)."""
    if source.journal is not None:
        path = source.journal
        with running(lambda: open_journal(path)) as bus:
            yield bus, None
        return
    connection = source.connection
    with short_lived_node(connection, command) as bus:
        node = peer_name(bus, connection, time.monotonic() + connection.timeout)
        with remote_reads(node):
            yield bus, node
