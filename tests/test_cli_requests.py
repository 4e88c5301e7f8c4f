"""``req`` and ``reply`` (``actors/cli/requests.py``), run as real processes.

A ``serve`` node in the middle; ``reply`` answers with a small script; ``req``
asks.  The parent synchronises on the children's output lines only.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors._cluster.bridge import generate_keypair
from tests._cli_support import Running, cli, one_error_line, serving, silent_endpoint

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
data = json.load(sys.stdin)
if data == "fail":
    sys.stderr.write("cannot do that\\n")
    sys.exit(4)
if data == "escape":  # a terminal title (OSC) and a C1 CSI, as a coloured tool's stderr has
    sys.stderr.write("\\x1b]0;retitled\\x07 and \\x9b31m red\\n")
    sys.exit(5)
print(json.dumps({"got": data}))
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    """The request endpoint of a node named ``hub``; each test asks its own types."""
    with serving("--name", "hub") as (_node, endpoint):
        yield endpoint


@pytest.fixture
def script(tmp_path: Path) -> str:
    """The command line of a responder: echoes its data as ``{"got": DATA}``; fails on "fail"."""
    path = tmp_path / "answer.py"
    path.write_text(SCRIPT)
    return f"{sys.executable} {path}"


def replying(pattern: str, script: str, *args: str) -> Running:
    """Start ``reply PATTERN`` and return it once its subscription is in force."""
    answering = Running("reply", pattern, "--exec", script, *args)
    line = answering.line(answering.err)
    assert line.startswith(f"replying to {pattern} at "), line
    return answering


def test_req_gets_what_the_reply_command_printed(hub: str, script: str) -> None:
    answering = replying("calc.*", script, "--peer", hub, "--count", "4", "--name", "calc")
    try:
        env = {"LLMSPELL_EVENTS_PEER": hub}  # the shared variable, as for pub and sub
        ok = cli("req", "calc.add", '{"a": 1}', "--timeout", "30", env=env)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout) == {"got": {"a": 1}}

        whole = cli("req", "calc.mul", "-", "--peer", hub, "--timeout", "30", "--json", input="7")
        assert whole.returncode == 0, whole.stderr
        event = json.loads(whole.stdout)
        assert (event["event_type"], event["data"]) == ("calc.mul.reply", {"got": 7})
        assert (event["source"], event["origin"]) == ("calc", "hub")

        failed = cli("req", "calc.add", '"fail"', "--peer", hub, "--timeout", "30", "--json")
        assert failed.returncode == 3
        assert failed.stdout == ""
        assert failed.stderr.strip() == "error RuntimeError: " + (
            f"{sys.executable} exited with 4: cannot do that"
        )

        # The responder's text never acts on the terminal: its controls are escaped.
        escaped = cli("req", "calc.add", '"escape"', "--peer", hub, "--timeout", "30")
        assert escaped.returncode == 3
        assert escaped.stderr.strip() == "error RuntimeError: " + (
            f"{sys.executable} exited with 5: \\x1b]0;retitled\\x07 and \\x9b31m red"
        )

        for event_type in ("calc.add", "calc.mul", "calc.add", "calc.add"):
            assert answering.line().startswith(f"answered {event_type} ")
        assert answering.finish() == 0
    finally:
        answering.kill()


def test_reply_stops_cleanly_on_sigterm(hub: str, script: str) -> None:
    answering = replying("stop.*", script, "--peer", hub)
    try:
        assert answering.interrupt(signal.SIGTERM) == 0
        assert answering.line(answering.err) == "<eof>"
    finally:
        answering.kill()


def test_req_without_a_responder_times_out(hub: str) -> None:
    result = cli("req", "nobody.home", "--peer", hub, "--timeout", "0.5")
    assert result.returncode == 1
    assert one_error_line(result) == "Error: no reply to nobody.home within 0.5 s"


def test_req_rejects_data_that_is_not_json(hub: str) -> None:
    result = cli("req", "calc.add", "{not json", "--peer", hub)
    assert result.returncode == 2
    assert "not JSON" in one_error_line(result)


def test_req_to_a_silent_endpoint_is_one_line_saying_so() -> None:
    endpoint = silent_endpoint()
    result = cli("req", "a.b", "--peer", endpoint, "--timeout", "1")
    assert result.returncode == 1
    assert one_error_line(result).startswith(f"Error: no node answered at {endpoint} within 1 s")


@pytest.mark.parametrize("command", [["req", "a.b"], ["reply", "a.*", "--exec", "true"]])
def test_a_malformed_key_file_is_one_line_naming_it(command: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "cli.key"
    bad.write_text("this is not a key\n")
    server_public = generate_keypair()[0].decode()
    result = cli(
        *command, "--peer", "tcp://127.0.0.1:1", "--public-key", str(bad),
        "--secret-key", str(bad), "--server-key", server_public,
    )  # fmt: skip
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{bad} does not hold a 40-character Z85 key" in line
    assert "--public-key" in line


@pytest.mark.parametrize("command", [["req", "a.b"], ["reply", "a.*", "--exec", "true"]])
def test_a_peer_without_a_scheme_is_one_line(command: list[str]) -> None:
    result = cli(*command, "--peer", "127.0.0.1:27701")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "'127.0.0.1:27701' has no scheme: write tcp://127.0.0.1:27701" in line


def test_req_and_reply_with_curve_keys(tmp_path: Path, script: str) -> None:
    server_pub, server_sec = (k.decode() for k in generate_keypair())
    client_pub, client_sec = (k.decode() for k in generate_keypair())
    serve = ["--name", "safe", "--public-key", server_pub, "--secret-key", server_sec]
    with serving(*serve, "--authorize", client_pub) as (_node, endpoint):
        # The keys from the shared variables, as every client command takes them.
        env = {
            "LLMSPELL_EVENTS_CURVE_PUBLIC": client_pub,
            "LLMSPELL_EVENTS_CURVE_SECRET": client_sec,
            "LLMSPELL_EVENTS_CURVE_SERVER": server_pub,
        }
        answering = Running(
            "reply", "calc.*", "--exec", script, "--peer", endpoint, "--count", "1", env=env
        )
        try:
            assert answering.line(answering.err) == "replying to calc.* at safe"
            ok = cli("req", "calc.add", "7", "--peer", endpoint, "--timeout", "30", env=env)
            assert ok.returncode == 0, ok.stderr
            assert json.loads(ok.stdout) == {"got": 7}
            assert answering.finish() == 0
        finally:
            answering.kill()
        half = cli("req", "calc.add", "--peer", endpoint, "--public-key", client_pub)
        assert half.returncode == 2
        assert "together" in one_error_line(half)
