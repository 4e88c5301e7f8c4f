"""``req`` and ``reply`` (``actors/cli/requests.py``), run as real processes.

A ``serve`` node in the middle; ``reply`` answers with a small script; ``req``
asks.  The parent synchronises on the children's output lines only.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors._cluster.bridge import generate_keypair

pytestmark = pytest.mark.slow

WAIT = 60.0
CLI = [sys.executable, "-m", "actors"]
SCRIPT = """
import json, sys
data = json.load(sys.stdin)
if data == "fail":
    sys.stderr.write("cannot do that\\n")
    sys.exit(4)
print(json.dumps({"got": data}))
"""


class Running:
    """A CLI process that runs on; its stdout and stderr lines arrive on queues."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: object, lines: queue.Queue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line.rstrip("\n"))
        lines.put("<eof>")

    def line(self, lines: queue.Queue[str] | None = None) -> str:
        return (lines or self.out).get(timeout=WAIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=WAIT)


@pytest.fixture
def hub() -> Iterator[str]:
    node = Running("serve", "--name", "hub", "--listen", "tcp://127.0.0.1:0")
    try:
        lines = dict(node.line().split(" ", 1) for _ in range(4))
        yield lines["request"]
    finally:
        node.stop()


def test_req_gets_what_the_reply_command_printed(hub: str, tmp_path: Path) -> None:
    script = tmp_path / "answer.py"
    script.write_text(SCRIPT)
    answering = Running(
        "reply", "calc.*", "--exec", f"{sys.executable} {script}", "--peer", hub, "--count", "2"
    )
    try:
        assert answering.line(answering.err) == "replying to calc.* at hub"
        ok = cli("req", "calc.add", '{"a": 1}', "--peer", hub, "--timeout", "30")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout) == {"got": {"a": 1}}

        failed = cli("req", "calc.add", '"fail"', "--peer", hub, "--timeout", "30", "--json")
        assert failed.returncode == 3
        assert failed.stdout == ""
        assert failed.stderr.strip() == "error RuntimeError: " + (
            f"{sys.executable} exited with 4: cannot do that"
        )

        assert answering.line().startswith("answered calc.add ")
        assert answering.line().startswith("answered calc.add ")
        assert answering.proc.wait(WAIT) == 0
    finally:
        answering.stop()


def test_req_without_a_responder_times_out(hub: str) -> None:
    result = cli("req", "nobody.home", "--peer", hub, "--timeout", "0.5")
    assert result.returncode == 1
    assert "no reply to nobody.home within 0.5 s" in result.stderr


def test_req_rejects_data_that_is_not_json(hub: str) -> None:
    result = cli("req", "calc.add", "{not json", "--peer", hub)
    assert result.returncode == 2
    assert "not JSON" in result.stderr


def test_req_and_reply_with_curve_keys(tmp_path: Path) -> None:
    server_pub, server_sec = (k.decode() for k in generate_keypair())
    client_pub, client_sec = (k.decode() for k in generate_keypair())
    node = Running(
        "serve", "--name", "safe", "--listen", "tcp://127.0.0.1:0",
        "--public-key", server_pub, "--secret-key", server_sec, "--authorize", client_pub,
    )  # fmt: skip
    try:
        endpoint = dict(node.line().split(" ", 1) for _ in range(4))["request"]
        keys = ["--public-key", client_pub, "--secret-key", client_sec, "--server-key", server_pub]
        script = tmp_path / "answer.py"
        script.write_text(SCRIPT)
        answering = Running(
            "reply", "calc.*", "--exec", f"{sys.executable} {script}", "--peer", endpoint,
            "--count", "1", *keys,
        )  # fmt: skip
        try:
            assert answering.line(answering.err) == "replying to calc.* at safe"
            ok = cli("req", "calc.add", "7", "--peer", endpoint, "--timeout", "30", *keys)
            assert ok.returncode == 0, ok.stderr
            assert json.loads(ok.stdout) == {"got": 7}
            assert answering.proc.wait(WAIT) == 0
        finally:
            answering.stop()
        half = cli("req", "calc.add", "--peer", endpoint, "--public-key", client_pub)
        assert half.returncode == 2
        assert "together" in half.stderr
    finally:
        node.stop()
