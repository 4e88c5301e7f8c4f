"""Follow a node's journal: print what a query selects, as it is journaled.

Used by ``query --follow`` and by ``sub --from-sequence``/``--durable``.  The
short-lived node subscribes to the same types on the running node, but only
to be woken: what it prints it reads from the node's journal, in the
journal's order, each event once, numbered with the journal's sequence.  A
wake-up that comes before the write is covered by a poll every ``POLL``
seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click

from actors._bus import EventBus
from actors._errors import NoAnswerError, NotConnectedError
from actors._model.event import Event
from actors._model.query import EventQuery
from actors._model.trace import printable
from actors.cli.output import note

__all__ = ["POLL", "Checkpoint", "JournalTail", "last_sequence", "state_dir"]

POLL = 1.0  # seconds between reads when no wake-up came
PAGE = 500
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class JournalTail:
    """Read ``query``'s events after ``after`` from ``node``'s journal, again on each wake-up.

    ``node`` and ``after`` are set before ``run``, once known.

    ``wake`` is the handler of the wake-up subscriptions (any thread);
    ``run`` blocks in the calling thread.
    """

    def __init__(self, bus: EventBus, query: EventQuery, timeout: float) -> None:
        self._bus = bus
        self.node: str | None = None  # the node whose journal to read (None: the bus's own)
        self._query = query
        self.after = self._start = query.after_sequence or 0
        self._timeout = timeout
        self._woken = threading.Event()

    def start_after(self, sequence: int) -> None:
        """Read from after ``sequence``; a journal found replaced is read again from there."""
        self.after = self._start = sequence

    def wake(self, event: Event) -> None:
        """Note that something was published (a subscription handler)."""
        del event
        self._woken.set()

    def run(self, emit: Callable[[Event], None], count: int | None = None) -> int:
        """Print events until ``count`` were printed (None: until interrupted); return how many.

        A node that stops answering (restarting, paused) is waited for, said
        once on stderr: the reading goes on after what was printed when it
        answers again, as ``tail -f`` goes on after a file is rotated.
        """
        printed = 0
        away = False
        while count is None or printed < count:
            self._woken.clear()
            try:
                page = self._bus.query(
                    replace(self._query, after_sequence=self.after, limit=PAGE),
                    node=self.node,
                    timeout=self._timeout,
                )
            except (NoAnswerError, NotConnectedError) as exc:
                if self.node is None:
                    raise
                if not away:
                    note(f"node {printable(self.node)} is not answering ({exc}); waiting for it")
                away = True
                self._woken.wait(POLL)
                continue
            if away:
                try:
                    self._rewind_if_replaced()
                except (NoAnswerError, NotConnectedError):
                    self._woken.wait(POLL)  # gone again
                    continue
                away = False
                continue  # read again from where it now stands
            for event in page:
                emit(event)
                self.after = event.sequence or self.after
                printed += 1
                if count is not None and printed >= count:
                    return printed
            if not page and self.node is not None and self.after > self._start:
                # Nothing new: a node restarted at once on another journal, one that
                # ends before what was printed, is never seen away (``_replaced``).
                with contextlib.suppress(NoAnswerError, NotConnectedError):  # the next read says it
                    self._replaced(last_sequence(self._bus, self.node, self._timeout))
            if len(page) < PAGE:
                self._woken.wait(POLL)
        return printed

    def _rewind_if_replaced(self) -> None:
        """Say the node is back; follow its journal from the start if it ends before ``after``.

        A node back with a journal that ends before what was printed holds
        another journal (its numbering started again): waiting for it to
        pass ``after`` would skip its first events without a word.  It is
        read again from where the reading was asked to start.
        """
        newest = last_sequence(self._bus, self.node, self._timeout)
        if not self._replaced(newest, "answers again with"):
            note(f"node {printable(self.node or '')} answers again; following on")

    def _replaced(self, newest: int, how: str = "holds") -> bool:
        """If the journal ends (at ``newest``) before what was printed, say so and rewind."""
        if newest >= self.after or self.after <= self._start:
            return False
        note(
            f"node {printable(self.node or '')} {how} a journal that ends at #{newest}, before "
            f"#{self.after} printed: another journal; following it from the start"
        )
        self.after = self._start
        return True


def last_sequence(bus: EventBus, node: str | None, timeout: float) -> int:
    """Return the newest sequence in ``node``'s journal (0 when it is empty)."""
    newest = bus.query(EventQuery(limit=1, descending=True), node=node, timeout=timeout)
    return (newest[0].sequence or 0) if newest else 0


def state_dir() -> Path:
    """Return where durable subscriptions keep their checkpoints (``$XDG_STATE_HOME``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llmspell-events"


class Checkpoint:
    """The last sequence a durable ``sub`` printed, in a file of its own."""

    def __init__(self, folder: Path, node: str, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise click.BadParameter(
                f"{name!r}: use letters, digits, '_', '.', '-'", param_hint="--durable"
            )
        # The node names itself: quoted, so that no name ('/', '..') leaves the folder.
        self.path = folder / f"{urllib.parse.quote(node, safe='')}.{name}.sequence"

    def load(self) -> int | None:
        """Return the saved sequence, or None if this durable subscription is new."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            text = None
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read the checkpoint {self.path}: {exc}") from exc
        try:  # the folder must take the checkpoints before anything is printed
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(
                f"cannot keep checkpoints in {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        if text is None:
            return None
        if not (text.isascii() and text.isdigit()):
            raise click.ClickException(f"the checkpoint {self.path} is damaged: {text[:40]!r}")
        return int(text)

    def save(self, sequence: int) -> None:
        """Record ``sequence`` as printed (atomically: a crash leaves the old or the new)."""
        scratch = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            scratch.write_text(f"{sequence}\n")
            scratch.replace(self.path)
        except OSError as exc:
            raise click.ClickException(
                f"cannot save the checkpoint {self.path}: {exc.strerror or exc}"
            ) from exc
