"""The docs' own examples and promises, run as a user would run them.

Each test names the doc line it holds the code to.  The tests that start a
command synchronise on a ZeroMQ ROUTER standing in for the node: the command
has reached "connecting, waiting for the node" once its HELLO arrived there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests._cli_support import CLI, WAIT

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_node() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A ROUTER on a free port: it takes a client's HELLO and never answers."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield router, f"tcp://127.0.0.1:{port}"
    finally:
        router.close(linger=0)
        ctx.term()


def _signal_while_connecting(
    router: zmq.Socket[bytes], endpoint: str, args: list[str], signum: int
) -> subprocess.CompletedProcess[str]:
    """Start a command against ``endpoint``; once its HELLO arrived, send it ``signum``."""
    proc = subprocess.Popen(
        [*CLI, *args, "--peer", endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LLMSPELL_EVENTS_TIMEOUT": "60"},
    )
    try:
        assert router.poll(int(WAIT * 1000)), "the command never greeted the node"
        router.recv_multipart()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# docs/cli.md:43-45: "Ctrl-C (or SIGTERM) before a command reached the point where it
# documents a clean stop (connecting, waiting for the node) ends it with `Error:
# interrupted`, status 1."  `sub` and `reply` do; these die of the signal (status -15,
# nothing on stderr).
@pytest.mark.parametrize(
    "args",
    [
        ["pub", "a.b", "{}"],
        ["req", "a.b"],
        ["query"],
        ["trace", "0190a7c2-6f5e-7c2e-9a51-3e1f1c0b6d2a"],
        ["stats"],
        ["bench", "--count", "10"],
    ],
    ids=lambda args: args[0],
)
def test_cli_md_43_sigterm_while_connecting_is_error_interrupted_status_1(
    fake_node: tuple[zmq.Socket[bytes], str], args: list[str]
) -> None:
    router, endpoint = fake_node
    result = _signal_while_connecting(router, endpoint, args, signal.SIGTERM)
    assert (result.returncode, result.stderr.strip()) == (1, "Error: interrupted")


# docs/cli.md (top): "q quits (so do Ctrl-C and SIGTERM, at any time, also while it
# waits for its node; status 0)".
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_md_top_interrupted_while_connecting_quits_with_status_0(
    fake_node: tuple[zmq.Socket[bytes], str], signum: int
) -> None:
    router, endpoint = fake_node
    result = _signal_while_connecting(router, endpoint, ["top"], signum)
    assert (result.returncode, result.stderr.strip()) == (0, "")


# README.md:25-47 ("A tour") and README.md:66-71: every Python example of the README
# runs as written; the second one is given the `bus` and `tracer_provider` it names,
# and a free port instead of 9464.
def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _run_python(script: str, cwd: Path) -> str:
    """Run ``script`` in a fresh interpreter in ``cwd``; return what it printed (must succeed)."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_python_examples_run(tmp_path: Path) -> None:
    blocks = _readme_python_blocks()
    assert len(blocks) == 3, "the README's Python examples changed: update this test"
    tour, async_tour, observe = blocks
    said = _run_python(async_tour, tmp_path)
    first = sorted(said.splitlines()[:2])  # the handler and the stream: either first
    assert first == ["audit: user.login", "streamed: {'user_id': '123'}"]
    assert "event_type='user.login'" in said
    assert said.rstrip().endswith("replayed 1")
    observe = observe.replace("serve_metrics(9464)", "serve_metrics(0)")
    script = "\n".join(
        [
            tour,
            "from opentelemetry.sdk.trace import TracerProvider",
            "tracer_provider = TracerProvider()",
            "bus = EventBus()",
            observe,
            "instrumentation.uninstrument()",
            "bus.close()",
            "print('README examples done')",
        ]
    )
    out = _run_python(script, tmp_path)
    assert "user event: {'user_id': '123'}" in out
    assert "workflow.start" in out
    assert out.rstrip().endswith("README examples done")
