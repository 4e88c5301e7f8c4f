"""``llmspell-events top``: a live view of a running node, redrawn every second.

Asks the node for its figures over the bridge (a ``METRICS`` request, see
``docs/wire.md``) from a short-lived node with the connection options and
errors of every client command, so it works wherever ``pub``/``sub`` work,
CURVE included.  Draws with ``rich`` (the ``[cli]`` extra).  ``q`` quits (so does
Ctrl-C).
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from actors._bus import EventBus
from actors._errors import BridgeError, FrameError, PeerRefusedError
from actors._model.metrics import BusMetrics
from actors._model.trace import printable
from actors.cli.connect import left, peer_name, short_lived_node
from actors.cli.options import Connection, SecondsType, connection_options
from actors.cli.output import ended_by_signal, fail, stop_on_signals

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["Sample", "render", "top"]

ASK_WAIT = 1.0
"""The least one ask for the figures waits (seconds); it waits the interval if longer, up to 5."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a node: its figures, its peers' silence, and when it was taken."""

    metrics: BusMetrics
    heard: dict[str, float]
    at: float  # monotonic seconds
    node: str = ""
    viewer: str = ""
    sub_delivered: dict[str, int] = field(default_factory=dict)


def sample(
    metrics: BusMetrics, heard: dict[str, float], at: float, node: str, viewer: str = ""
) -> Sample:
    """Return a ``Sample`` (per-subscription counts kept for the next rate)."""
    subs = {s.id: s.delivered for s in metrics.per_subscription}
    return Sample(metrics, heard, at, node, viewer, subs)


def _rate(now: int, before: int | None, seconds: float) -> float | None:
    if before is None or seconds <= 0:
        return None
    return max(0, now - before) / seconds


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.2f} s"


def _fmt_blocked(blocked: bool, seconds: float) -> str:
    if not blocked:
        return "-"
    return f"{seconds:.1f} s"


def render(now: Sample, before: Sample | None, note: str = "") -> RenderableType:
    """Return the screen for ``now`` (rates against ``before``, the previous reading).

    ``note`` (e.g. that the node stopped answering) is shown above the figures.
    """
    from rich.console import Group  # noqa: PLC0415 - the [cli] extra
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    m = now.metrics
    dt = now.at - before.at if before is not None else 0.0
    published = _rate(m.published, before.metrics.published if before else None, dt)
    delivered = _rate(m.delivered, before.metrics.delivered if before else None, dt)
    if published is None:
        published = m.events_per_second
    head = Table.grid(padding=(0, 2))
    head.add_row(
        Text(f"node {printable(now.node)}", style="bold"),
        f"rate {_fmt_rate(published)}",
        f"peak {_fmt_rate(m.peak_events_per_second)}",
        f"delivered {_fmt_rate(delivered)}",
        f"subscriptions {m.subscriptions}",
        Text(
            f"blocked handlers {m.blocked_handlers} of {m.handler_threads} threads",
            style="red" if m.blocked_handlers else "",
        ),
    )
    head.add_row(
        f"published {m.published:,}",
        f"dropped {m.dropped:,}",
        f"rejected {m.rejected:,}",
        f"dead letters {m.dead_letters:,}",
        f"handler errors {m.handler_errors:,}",
    )
    head.add_row(
        f"latency p50 {_fmt_seconds(m.latency_p50)}",
        f"p99 {_fmt_seconds(m.latency_p99)}",
        f"max {_fmt_seconds(m.latency_max)}",
        f"journal {m.journal_written:,} written",
        f"write {_fmt_seconds(m.journal_write_latency)}",
    )
    subs = Table(title="subscriptions", title_justify="left", expand=True)
    columns = ("id", "pattern", "queued", "capacity", "rate", "delivered", "dropped", "errors")
    for column in (*columns, "dead", "blocked"):
        subs.add_column(column, justify="left" if column in ("id", "pattern") else "right")
    for s in m.per_subscription:
        previous = before.sub_delivered.get(s.id) if before is not None else None
        fill = s.queued / s.capacity if s.capacity else 0.0
        style = "red" if fill >= 0.8 else ("yellow" if fill >= 0.2 else "")
        subs.add_row(
            Text(printable(s.id)),  # Text: a pattern like x.[bold]y is not markup
            Text(printable(s.pattern)),
            Text(f"{s.queued:,}", style=style),
            f"{s.capacity:,}",
            _fmt_rate(_rate(s.delivered, previous, dt)),
            f"{s.delivered:,}",
            f"{s.dropped:,}",
            f"{s.errors:,}",
            f"{s.dead_letters:,}",
            Text(_fmt_blocked(s.blocked, s.blocked_seconds), style="red" if s.blocked else ""),
        )
    peers = Table(title="peers", title_justify="left", expand=True)
    for column in ("node", "state", "heard"):
        peers.add_column(column, justify="right" if column == "heard" else "left")
    bridge = m.bridge
    alive = set(bridge.peers_alive) if bridge is not None else set()
    synced = set(bridge.synced_peers) if bridge is not None else set()
    for name in sorted(now.heard):
        if name == now.viewer:  # top's own short-lived node: a client, never heartbeating
            continue
        state = "synced" if name in synced else ("alive" if name in alive else "silent")
        peers.add_row(Text(printable(name)), state, f"{now.heard[name]:.1f} s ago")
    parts: list[RenderableType] = [head, subs, peers]
    if note:
        parts.insert(0, Text(note, style="bold red"))
    if bridge is not None:
        parts.append(
            Text(
                f"bridge  frames sent {bridge.frames_sent:,}  received {bridge.frames_received:,}"
                f"  dropped {bridge.frames_dropped:,}  gaps {bridge.gaps:,}"
                f"  duplicates {bridge.duplicates:,}"
            )
        )
    parts.append(Text("q quits", style="dim"))
    return Group(*parts)


@contextmanager
def _keys_pressed() -> Iterator[Any]:
    """Yield a function ``wait(seconds) -> str`` returning a key pressed meanwhile, or ''."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    if fd is not None:
        tty.setcbreak(fd)

    def wait(seconds: float) -> str:
        if fd is None:
            time.sleep(seconds)
            return ""
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 1).decode(errors="replace") if ready else ""

    try:
        yield wait
    finally:
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@click.command()
@click.option(
    "--interval", type=SecondsType(minimum=0.1), default=1.0, show_default=True, help="seconds"
)
@connection_options("endpoint of the running node (or a broker)")
def top(*, interval: float, connection: Connection) -> None:
    """Show a running node's rates, queues, drops, dead letters and peers, live; q quits."""
    try:
        from rich.console import Console  # noqa: PLC0415 - the [cli] extra
        from rich.live import Live  # noqa: PLC0415
    except ImportError:
        fail("top draws with rich: pip install 'llmspell-events[cli]'")
    stop_on_signals()  # SIGTERM too restores the terminal on its way out
    deadline = time.monotonic() + connection.timeout
    # Outside the node: a signal while it starts and connects quits too (status 0).
    with ended_by_signal(), short_lived_node(connection, "top") as bus:
        target = peer_name(bus, connection, deadline)
        if sys.stdout is None or not sys.stdout.isatty():  # nothing would be drawn, for ever
            fail(
                "top draws on a terminal, and its output is not one "
                "(live figures: serve --metrics-port, or bus.remote_metrics)"
            )
        _watch(
            bus,
            target,
            timeout=left(deadline),  # what --timeout has left
            interval=interval,
            console=Console(),
            live_cls=Live,
        )


def _watch(
    bus: EventBus,
    target: str,
    *,
    timeout: float,
    interval: float,
    console: Any,
    live_cls: Any,
) -> None:
    """Redraw ``target``'s figures every ``interval`` seconds until ``q``.

    Fails if the first reading does not come within ``timeout``, or at once
    if the node refuses it; later, a silent node keeps its last figures on
    screen, marked stale.  One ask waits the interval (``ASK_WAIT`` at least,
    5 s at most), so ``q`` is read that often while the node is silent.
    """
    before: Sample | None = None
    with (
        _keys_pressed() as wait,
        live_cls(console=console, screen=True, auto_refresh=False) as live,
    ):
        deadline = time.monotonic() + timeout
        while True:
            ask = min(max(interval, ASK_WAIT), 5.0)
            if before is None:
                ask = min(ask, left(deadline))
            try:
                metrics, heard = bus.remote_metrics(target, timeout=ask)
                now = sample(metrics, heard, time.monotonic(), target, bus.name or "")
                screen = render(now, before)
            except PeerRefusedError as exc:  # asking again gets the same answer
                fail(f"node {target!r} refused its figures: {exc}")
            except FrameError as exc:  # figures that are not what a node sends
                fail(f"node {target!r} sent figures top cannot read: {exc}")
            except BridgeError as exc:  # silent, or figures malformed
                if before is None and time.monotonic() >= deadline:
                    fail(f"node {target!r} did not answer: {exc}")
                if before is not None:  # keep the last figures, say they are stale
                    note = f"node {target!r} is not answering ({exc}); figures as last read"
                    live.update(render(before, None, note), refresh=True)
            else:
                live.update(screen, refresh=True)
                before = now
            pause = interval
            if before is None:  # the first figures are still to come: not past --timeout
                pause = min(interval, left(deadline))
            if wait(pause) in ("q", "Q"):
                return
