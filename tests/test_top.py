"""``llmspell-events top`` under a pseudo-terminal, against a real node with load."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from actors import EventBus, EventBusError, NodeConfig
from actors._cluster.bridge import generate_keypair
from actors._cluster.broker import Broker
from actors._model.metrics import BridgeStatistics, BusMetrics, SubscriptionStatistics
from actors.cli.top import render, sample
from tests._cli_support import cli, one_error_line, silent_endpoint

WAIT = 60.0
ANSI = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78])")


class Terminal:
    """A child process on a pseudo-terminal of 110x30; its output, escapes removed, in ``text``."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "110", "LINES": "30"}
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.master = master
        self.text = ""
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                chunk = b""
            with self.cond:
                if not chunk:
                    self.text += "\n<eof>"
                    self.cond.notify_all()
                    return
                self.text += ANSI.sub(b" ", chunk).decode(errors="replace")
                self.cond.notify_all()

    def wait_for(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.text)
            if match:
                found.append(match)
            return bool(match) or "<eof>" in self.text

        with self.cond:
            assert self.cond.wait_for(seen, WAIT), f"no {pattern!r} in:\n{self.text[-3000:]}"
        assert found, f"the program ended without {pattern!r}:\n{self.text[-3000:]}"
        return found[0]

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        os.close(self.master)


@pytest.fixture
def loaded_node(request: pytest.FixtureRequest) -> Iterator[tuple[EventBus, list[str]]]:
    """A node named hub (with CURVE when the test is parametrized so), under steady load."""
    curve = getattr(request, "param", False)
    cli_args: list[str] = []
    node = NodeConfig(name="hub", listen="tcp://127.0.0.1:*")
    if curve:
        server_public, server_secret = generate_keypair()
        client_public, client_secret = generate_keypair()
        node = replace(
            node,
            curve_public_key=server_public,
            curve_secret_key=server_secret,
            authorized_keys=(client_public,),
        )
        cli_args = ["--public-key", client_public.decode(), "--secret-key"]
        cli_args += [client_secret.decode(), "--server-key", server_public.decode()]
    bus = EventBus(node=node)
    bus.subscribe("load.*", lambda event: None)
    stop = threading.Event()

    def load() -> None:
        # Paced: about 100 events every 10 ms, so the rate shows without eating the CPU.
        while not stop.wait(0.01):
            for i in range(100):
                bus.publish("load.tick", i)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield bus, ["--peer", str(bus.endpoints["request"]), *cli_args]
    finally:
        stop.set()
        thread.join(WAIT)
        bus.close(timeout=WAIT)


@pytest.mark.slow
@pytest.mark.parametrize("loaded_node", [False, True], ids=["plain", "curve"], indirect=True)
def test_top_shows_a_live_rate_under_a_terminal_and_q_quits(
    loaded_node: tuple[EventBus, list[str]],
) -> None:
    _bus, args = loaded_node
    term = Terminal([sys.executable, "-m", "actors", "top", *args, "--interval", "0.5"])
    try:
        term.wait_for(r"node hub")
        # The second screen has a rate measured between two readings; it must be live.
        rate = term.wait_for(r"rate ([1-9][\d,]*)/s .*delivered ([1-9][\d,]*)/s")
        assert int(rate.group(1).replace(",", "")) > 0
        term.wait_for(r"load\.\*")
        term.press(b"q")
        assert term.proc.wait(WAIT) == 0
    finally:
        term.close()


def test_top_without_a_terminal_says_so_in_one_line() -> None:
    # Its output a file or a pipe, it drew nothing, said nothing, and ran for ever.
    with EventBus(node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*")) as bus:
        result = cli("top", "--peer", str(bus.endpoints["request"]), "--timeout", "30")
    assert result.returncode == 1
    assert one_error_line(result) == (
        "Error: top draws on a terminal, and its output is not one "
        "(live figures: serve --metrics-port, or bus.remote_metrics)"
    )


def test_top_refuses_half_the_curve_keys() -> None:
    public = generate_keypair()[0].decode()
    result = cli("top", "--peer", "tcp://127.0.0.1:1", "--public-key", public)
    assert result.returncode == 2
    assert "CURVE needs --public-key and --secret-key together" in one_error_line(result)


def test_top_reports_a_malformed_key_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "top.key_secret"
    bad.write_text("not a key either\n")
    public = generate_keypair()[0].decode()
    result = cli(
        "top", "--peer", "tcp://127.0.0.1:1", "--public-key", public, "--secret-key", str(bad),
        "--server-key", public,
    )  # fmt: skip
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{bad} does not hold a 40-character Z85 key" in line
    assert "--secret-key" in line


def test_top_refuses_a_peer_without_a_scheme_in_one_line() -> None:
    result = cli("top", "--peer", "127.0.0.1:5701")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "'127.0.0.1:5701' has no scheme: write tcp://127.0.0.1:5701" in line
    assert "LLMSPELL_EVENTS_PEER" in line  # the shared option, with its variable


def test_top_to_a_silent_endpoint_is_one_line_saying_so() -> None:
    endpoint = silent_endpoint()
    result = cli("top", "--peer", endpoint, "--timeout", "1")
    assert result.returncode == 1
    assert one_error_line(result).startswith(f"Error: no node answered at {endpoint} within 1 s")


def _metrics(published: int, delivered: int, queued: int) -> BusMetrics:
    sub = SubscriptionStatistics("sub-1", "a.*", delivered, 2, 1, queued, 100, dead_letters=1)
    return BusMetrics(
        published=published,
        delivered=delivered,
        dropped=2,
        rejected=0,
        expired=0,
        handler_errors=1,
        dead_letters=1,
        subscriptions=1,
        events_per_second=7.0,
        peak_events_per_second=9.0,
        latency_p50=0.001,
        latency_p90=0.002,
        latency_p99=0.003,
        latency_max=0.004,
        per_subscription=(sub,),
        bridge=BridgeStatistics(peers_alive=("b",), synced_peers=("b",)),
    )


def test_render_shows_rates_between_two_readings_and_the_figures() -> None:
    before = sample(_metrics(100, 90, 0), {"b": 0.5}, 10.0, "hub")
    now = sample(_metrics(300, 290, 85), {"b": 0.2, "viewer-9": 0.1}, 12.0, "hub", "viewer-9")
    console = Console(width=110, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(now, before))
    screen = console.export_text()
    assert "rate 100/s" in screen  # (300 - 100) / 2 s
    assert "delivered 100/s" in screen
    assert "dead letters 1" in screen
    assert "viewer-9" not in screen  # the viewer's own node is left out
    assert re.search(
        r"sub-1\s+│\s+a\.\*\s+│\s+85\s+│\s+100\s+│\s+100/s\s+│\s+290\s+│\s+2\s+│\s+1\s+│\s+1",
        screen,
    )
    assert re.search(r"b\s+│\s+synced\s+│\s+0\.2 s ago", screen)
    first = Console(width=110, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    first.print(render(before, None))
    assert "rate 7/s" in first.export_text()  # the node's own last-second figure
    blocked_sub = replace(now.metrics.per_subscription[0], blocked=True, blocked_seconds=12.5)
    blocked = sample(
        replace(
            now.metrics, per_subscription=(blocked_sub,), blocked_handlers=1, handler_threads=3
        ),
        {},
        13.0,
        "hub",
    )
    wide = Console(width=140, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    wide.print(render(blocked, now))
    text = wide.export_text()
    assert "blocked handlers 1 of 3 threads" in text
    assert re.search(r"sub-1 .*│\s+12\.5 s", text)
    stale = Console(width=110, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    stale.print(render(now, None, "node 'hub' is not answering"))
    assert stale.export_text().startswith("node 'hub' is not answering")


def test_remote_metrics_brings_a_nodes_figures_over_the_bridge() -> None:
    with EventBus(node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*")) as hub:
        hub.subscribe("a.*", lambda event: None)
        hub.publish("a.b", 1).get(timeout=WAIT)
        hub.flush(timeout=WAIT)
        viewer = NodeConfig(name="viewer", peers=(str(hub.endpoints["request"]),))
        with EventBus(node=viewer) as bus:
            assert bus.linked_nodes(WAIT) == ["hub"]
            metrics, heard = bus.remote_metrics("hub", timeout=WAIT)
        assert metrics.published == 1
        assert [s.pattern for s in metrics.per_subscription] == ["a.*"]
        assert "viewer" in heard
        assert heard["viewer"] >= 0


def test_remote_metrics_needs_a_node() -> None:
    with EventBus() as bus, pytest.raises(EventBusError, match="not connected"):
        bus.remote_metrics("hub")


def test_top_without_rich_names_the_extra() -> None:
    code = (
        "import sys\n"
        "for name in ('rich', 'rich.console', 'rich.live'):\n"
        "    sys.modules[name] = None\n"
        "from actors.cli import main\n"
        "main(['top', '--peer', 'tcp://127.0.0.1:1'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert result.returncode == 1
    assert "pip install 'llmspell-events[cli]'" in result.stderr


@pytest.mark.slow
def test_remote_metrics_through_a_broker() -> None:
    hub_broker = Broker("tcp://127.0.0.1:*")
    try:
        node = NodeConfig(name="hub", listen="tcp://127.0.0.1:*", peers=(hub_broker.endpoint,))
        with EventBus(node=node) as hub:
            hub.subscribe("a.*", lambda event: None)
            hub.publish("a.b", 1).get(timeout=WAIT)
            viewer = NodeConfig(name="viewer", peers=(hub_broker.endpoint,))
            with EventBus(node=viewer) as bus:
                bus.linked_nodes(WAIT)
                metrics, _heard = bus.remote_metrics("hub", timeout=WAIT)
            assert metrics.published == 1
    finally:
        hub_broker.close()
