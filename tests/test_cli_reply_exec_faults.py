"""``reply --exec`` with commands that misbehave, and ``req`` aimed at the wrong place.

Real processes and sockets, as in the other ``test_cli_*`` files: a ``serve``
node in the middle, ``reply`` running one small script whose behaviour the
request type picks, ``req`` asking.  The parent synchronises on the children's
output lines and on files the commands write (renamed into place whole).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.cli.requests import OUTPUT_LIMIT
from tests._cli_support import CLI, WAIT, Running, cli, silent_endpoint
from tests._support import wait_for

pytestmark = pytest.mark.slow

Started = list[Running | subprocess.Popen[str]]

# The request type's last part picks what the command does; PIDS is where it
# says which processes it is (written to a side file, then renamed into place).
SCRIPT = """
import json, os, subprocess, sys, signal
kind = os.environ["LLMSPELL_EVENTS_REQUEST_TYPE"].rsplit(".", 1)[1]
if kind == "deaf":
    print(json.dumps("did not listen"))
    sys.exit(0)
if kind == "bgdeaf":  # reads nothing, and leaves a process holding its stdin and stderr
    grandchild = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pause()"], stdout=subprocess.DEVNULL
    )
    target = os.path.join(PIDS, "bgdeaf.pids")
    with open(target + ".part", "w") as f:
        f.write(f"{grandchild.pid}")
    os.rename(target + ".part", target)
    print(json.dumps("did not listen"))
    sys.exit(0)
data = json.load(sys.stdin)
if kind == "echo":
    print(json.dumps({"got": data}))
elif kind == "text":
    print("   plain words, not JSON   ")
elif kind == "empty":
    pass
elif kind == "noisy":
    sys.stderr.write("chatter " * 40_000)
    print(json.dumps({"ok": True}))
elif kind == "fail":
    sys.stderr.write("x" * 100_000 + " LAST-WORDS\\n")
    sys.exit(7)
elif kind == "binary":
    sys.stdout.buffer.write(b"\\xff\\xfe\\xfd\\n")
elif kind == "env":
    print(json.dumps([os.environ["LLMSPELL_EVENTS_REQUEST_TYPE"],
                      os.environ["LLMSPELL_EVENTS_REQUEST_ID"]]))
elif kind == "background":  # leaves a process behind, its output to /dev/null, stderr not
    grandchild = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pause()"], stdout=subprocess.DEVNULL
    )
    target = os.path.join(PIDS, f"{data}.pids")
    with open(target + ".part", "w") as f:
        f.write(f"{grandchild.pid}")
    os.rename(target + ".part", target)
    sys.stderr.write("left one running\\n")
    print(json.dumps({"left": data}))
elif kind == "hang":
    grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    target = os.path.join(PIDS, f"{data}.pids")
    with open(target + ".part", "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}")
    os.rename(target + ".part", target)
    signal.pause()
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[str, str]]:
    """A node named ``hub``: its request and publish endpoints; each test asks its own types."""
    node = Running("serve", "--name", "hub", "--listen", "tcp://127.0.0.1:0")
    try:
        lines = dict(node.line().split(" ", 1) for _ in range(4))
        yield lines["request"], lines["publish"]
    finally:
        node.kill()


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """The folder where hanging commands leave their pids; whatever is left there is killed."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for file in folder.glob("*.pids"):
        for pid in file.read_text().split():
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def script(tmp_path: Path, pids: Path) -> str:
    path = tmp_path / "answer.py"
    path.write_text(f"PIDS = {str(pids)!r}\n{SCRIPT}")
    return f"{sys.executable} {path}"


@pytest.fixture
def started() -> Iterator[Started]:
    """The processes a test starts; whatever still runs at its end is killed."""
    procs: Started = []
    yield procs
    for proc in procs:
        popen = proc.proc if isinstance(proc, Running) else proc
        if popen.poll() is None:
            popen.kill()
            popen.wait(WAIT)


def replying(started: Started, pattern: str, *args: str) -> Running:
    """Start ``reply PATTERN ARGS``; return it once its subscription is in force."""
    answering = Running("reply", pattern, *args)
    started.append(answering)
    line = answering.line(answering.err)
    assert line.startswith(f"replying to {pattern} at "), line
    return answering


def asking(started: Started, *args: str) -> subprocess.Popen[str]:
    """Start ``req ARGS`` in the background."""
    proc = subprocess.Popen(
        [*CLI, "req", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    started.append(proc)
    return proc


def outcome(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped yet has ended too)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(") ")[2][:1] in "ZX"
    except FileNotFoundError:
        return True


def pids_in(file: Path) -> list[int]:
    assert wait_for(file.exists, WAIT), f"{file.name} never appeared"
    return [int(pid) for pid in file.read_text().split()]


def all_gone(pid_list: list[int]) -> bool:
    return wait_for(lambda: all(gone(pid) for pid in pid_list), WAIT)


def error_reply(err: str) -> str:
    """The one stderr line of an error reply, ``error TYPE: MESSAGE``."""
    assert "Traceback" not in err, err[-2000:]
    (line,) = err.splitlines()
    assert line.startswith("error "), line
    return line


def test_what_the_command_prints_becomes_the_reply_for_many_requests_at_once(
    hub: tuple[str, str],
    script: str,
    tmp_path: Path,
    started: Started,
) -> None:
    """Every request gets its own answer, whatever the command printed, however it ended."""
    endpoint = hub[0]
    big = tmp_path / "big.json"
    big.write_text(json.dumps("y" * 2_000_000))  # far past a pipe's buffer, never read
    requests: dict[str, tuple[str, ...]] = {
        "echo1": ("out.echo", '{"n": 1}'),
        "echo2": ("out.echo", '{"n": 2}'),
        "echo3": ("out.echo", '{"n": 3}'),
        "text": ("out.text", "{}"),
        "empty": ("out.empty", "{}"),
        "noisy": ("out.noisy", "{}"),
        "fail": ("out.fail", "{}"),
        "binary": ("out.binary", "{}"),
        "deaf": ("out.deaf", f"@{big}"),
        "env": ("out.env", "{}", "--json"),
    }
    answering = replying(
        started, "out.*", "--exec", script, "--peer", endpoint, "--count", str(len(requests))
    )
    procs = {
        name: asking(started, *args, "--peer", endpoint, "--timeout", "40")
        for name, args in requests.items()
    }
    results = {name: outcome(proc) for name, proc in procs.items()}

    for n in (1, 2, 3):
        assert results[f"echo{n}"][:2] == (0, f'{{"got":{{"n":{n}}}}}\n'), results[f"echo{n}"]
    assert results["text"][:2] == (0, '"plain words, not JSON"\n'), results["text"]
    assert results["empty"][:2] == (0, "null\n"), results["empty"]
    assert results["noisy"][:2] == (0, '{"ok":true}\n'), results["noisy"]
    assert results["deaf"][:2] == (0, '"did not listen"\n'), results["deaf"]

    status, out, err = results["fail"]
    assert (status, out) == (3, ""), err[-2000:]
    line = error_reply(err)
    assert line.startswith("error RuntimeError: "), line
    assert "exited with 7" in line
    assert line.endswith("LAST-WORDS"), line[-200:]
    assert len(line) < 1_000, len(line)  # the end of stderr, not all of it

    status, out, err = results["binary"]
    assert (status, out) == (3, ""), err[-2000:]
    error_reply(err)

    status, out, err = results["env"]
    assert status == 0, err
    event = json.loads(out)
    assert event["event_type"] == "out.env.reply"
    assert event["data"] == ["out.env", event["causation_id"]]

    answered = [answering.line() for _ in requests]
    assert all(line.startswith("answered out.") for line in answered), answered
    assert len({line.split()[2] for line in answered}) == len(requests), answered
    assert f"answered out.env {event['causation_id']}" in answered
    assert answering.finish() == 0


@pytest.mark.parametrize("broken", ["missing", "not-executable"])
def test_a_command_that_cannot_start_is_an_error_reply_and_reply_goes_on(
    broken: str,
    hub: tuple[str, str],
    tmp_path: Path,
    started: Started,
) -> None:
    """A command that is not there or cannot be run answers each request with an error."""
    command = tmp_path / "answer"
    if broken == "not-executable":
        command.write_text("#!/bin/sh\necho 1\n")
        command.chmod(0o644)
    endpoint = hub[0]
    answering = replying(
        started, "gone.*", "--exec", str(command), "--peer", endpoint, "--count", "2"
    )
    for n in (1, 2):
        result = cli("req", f"gone.q{n}", "{}", "--peer", endpoint, "--timeout", "30")
        assert (result.returncode, result.stdout) == (3, ""), result.stderr
        expected = "FileNotFoundError" if broken == "missing" else "PermissionError"
        assert error_reply(result.stderr).startswith(f"error {expected}: ")
        assert answering.line().startswith(f"answered gone.q{n} ")
    assert answering.finish() == 0


def test_a_command_that_leaves_a_process_holding_its_stderr_answers_when_it_exits(
    hub: tuple[str, str], script: str, pids: Path, started: Started
) -> None:
    """docs/requests.md: a run ends when the command's stdout closes (a process
    left behind has its output redirected).  One that kept stderr open held the
    reply until it ended, or the run's timeout turned the answer into an error."""
    endpoint = hub[0]
    answering = replying(started, "bg.*", "--exec", script, "--peer", endpoint, "--count", "1")
    result = cli("req", "bg.background", "7", "--peer", endpoint, "--timeout", "30")
    assert (result.returncode, result.stdout) == (0, '{"left":7}\n'), result.stderr
    assert answering.line().startswith("answered bg.background ")
    assert answering.finish() == 0
    [left] = pids_in(pids / "7.pids")
    assert not gone(left)  # still running (the fixture kills it): the answer did not wait


def test_a_command_that_leaves_a_process_holding_its_unread_stdin_answers_when_it_exits(
    hub: tuple[str, str], script: str, pids: Path, started: Started
) -> None:
    """A request larger than a pipe's buffer, to a command that reads none of it
    and leaves a process holding its stdin: writing the rest waited for ever, so
    the reply waited for ``--exec-timeout`` and became an error reply."""
    endpoint = hub[0]
    answering = replying(started, "bg.*", "--exec", script, "--peer", endpoint, "--count", "1")
    big = json.dumps("x" * 100_000)  # more than a pipe holds (64 KiB)
    result = cli("req", "bg.bgdeaf", big, "--peer", endpoint, "--timeout", "30")
    assert (result.returncode, result.stdout) == (0, '"did not listen"\n'), result.stderr
    assert answering.line().startswith("answered bg.bgdeaf ")
    assert answering.finish() == 0
    [left] = pids_in(pids / "bgdeaf.pids")
    assert not gone(left)  # still running (the fixture kills it): the answer did not wait


def test_reply_with_its_stdout_closed_answers_then_ends_with_one_error_line(
    hub: tuple[str, str], script: str, started: Started
) -> None:
    """docs/cli.md: if its stdout is closed the reply is still published, no later
    request is answered, and reply ends with status 1.  Started with stdout
    closed (>&-) it answered every request, said nothing, and never ended."""
    endpoint = hub[0]
    shell = 'exec "$@" >&-'
    proc = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            shell,
            "sh",
            *CLI,
            "reply",
            "shut.*",
            "--exec",
            script,
            "--peer",
            endpoint,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(proc)
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("replying to shut.* at ")
    result = cli("req", "shut.echo", "1", "--peer", endpoint, "--timeout", "30")
    assert (result.returncode, result.stdout) == (0, '{"got":1}\n'), result.stderr
    assert proc.wait(WAIT) == 1
    assert proc.stderr.read().splitlines() == [
        "Error: cannot write to standard output: it is closed"
    ]


def test_exec_timeout_kills_the_command_and_what_it_started_then_serves_on(
    hub: tuple[str, str], script: str, pids: Path, started: Started
) -> None:
    """Past --exec-timeout the requester gets an error reply and the whole group is killed."""
    endpoint = hub[0]
    answering = replying(
        started, "slow.*", "--exec", script, "--peer", endpoint,
        "--exec-timeout", "2.5", "--count", "2",
    )  # fmt: skip
    late = cli("req", "slow.hang", '"late"', "--peer", endpoint, "--timeout", "40")
    assert (late.returncode, late.stdout) == (3, ""), late.stderr
    error_reply(late.stderr)
    assert answering.line().startswith("answered slow.hang ")
    processes = pids_in(pids / "late.pids")
    assert all_gone(processes), f"left running past --exec-timeout: {processes}"

    ok = cli("req", "slow.echo", "5", "--peer", endpoint, "--timeout", "40")
    assert (ok.returncode, ok.stdout) == (0, '{"got":5}\n'), ok.stderr
    assert answering.line().startswith("answered slow.echo ")
    assert answering.finish() == 0


def test_sigint_while_a_command_runs_kills_it_and_what_it_started(
    hub: tuple[str, str], script: str, pids: Path, started: Started
) -> None:
    """Ctrl-C stops ``reply`` with status 0, and no process of the running command survives."""
    endpoint = hub[0]
    answering = replying(started, "int.*", "--exec", script, "--peer", endpoint)
    asking(started, "int.hang", '"busy"', "--peer", endpoint, "--timeout", "60")
    processes = pids_in(pids / "busy.pids")
    assert answering.interrupt(signal.SIGINT) == 0
    rest = []
    while (line := answering.line(answering.err)) != "<eof>":
        rest.append(line)
    assert not any("Traceback" in line for line in rest), rest
    assert all_gone(processes), f"outlived `reply`: {processes}"


def test_stopping_with_a_request_queued_leaves_no_command_behind(
    hub: tuple[str, str], script: str, pids: Path, started: Started
) -> None:
    """A request still waiting when ``reply`` stops starts no command that outlives it."""
    endpoint = hub[0]
    answering = replying(started, "queue.*", "--exec", script, "--peer", endpoint)
    watching = Running("sub", "queue.*", "--json", "--peer", endpoint)
    started.append(watching)
    assert watching.line(watching.err).startswith("subscribed ")
    asking(started, "queue.hang", '"first"', "--peer", endpoint, "--timeout", "60")
    first = pids_in(pids / "first.pids")
    asking(started, "queue.hang", '"second"', "--peer", endpoint, "--timeout", "60")
    seen = [json.loads(watching.line())["data"] for _ in range(2)]
    assert seen == ["first", "second"], seen  # the node has sent both to `reply` in this order

    assert answering.interrupt(signal.SIGTERM) == 0
    assert all_gone(first), f"outlived `reply`: {first}"
    second = pids / "second.pids"
    if second.exists():  # a command started for it: it must have ended with `reply`
        command, grandchild = pids_in(second)
        assert gone(command), f"the command {command} outlived `reply`"
        assert all_gone([grandchild]), f"the process {grandchild} it started outlived `reply`"


@pytest.mark.parametrize("value", ["0", "-1", "-0.5"])
def test_req_timeout_not_above_zero_is_a_usage_error(value: str) -> None:
    """``--timeout`` must be more than 0 seconds; anything else is a one-line usage error."""
    result = cli("req", "a.b", "{}", "--peer", silent_endpoint(), f"--timeout={value}")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: "), line
    assert "--timeout" in line, line


@pytest.mark.parametrize("data", ["NaN", "@missing.json", "[1, 2"])
def test_req_bad_data_is_a_usage_error_before_connecting(data: str, tmp_path: Path) -> None:
    """DATA is checked before any node is sought: a usage error, even with no node there."""
    result = cli("req", "a.b", data.replace("@", f"@{tmp_path}/"), "--peer", silent_endpoint())
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: "), line
    assert "DATA" in line, line


def test_req_to_an_ipc_path_where_nothing_listens(tmp_path: Path) -> None:
    """An ipc endpoint with no node behind it is reported in one line, status 1."""
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    result = cli("req", "a.b", "{}", "--peer", endpoint, "--timeout", "1")
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: no node answered at {endpoint} within 1 s"), line


def test_req_to_the_nodes_publish_endpoint_instead_of_its_request_endpoint(
    hub: tuple[str, str],
) -> None:
    """The publish port (one off the request port) answers no requests: one line, status 1."""
    publish = hub[1]
    result = cli("req", "a.b", "{}", "--peer", publish, "--timeout", "1")
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: no node answered at {publish} within 1 s"), line


def test_req_to_a_server_that_speaks_something_else() -> None:
    """A TCP server that answers with bytes that are not ZeroMQ: one line, status 1."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)) * 4)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    endpoint = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    try:
        result = cli("req", "a.b", "{}", "--peer", endpoint, "--timeout", "1")
    finally:
        stop.set()
        thread.join(WAIT)
        for conn in held:
            conn.close()
        server.close()
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: no node answered at {endpoint} within 1 s"), line


def test_a_command_printing_without_end_is_killed_at_the_output_limit_and_reply_goes_on(
    hub: tuple[str, str], started: Started
) -> None:
    """No --exec-timeout, a command that never stops printing: what it prints is
    read up to the largest reply and no further (it was kept whole, gigabytes),
    then the command is killed and the requester gets EventTooLargeError."""
    endpoint = hub[0]
    answering = replying(started, "loud.*", "--exec", "yes", "--peer", endpoint, "--count", "2")
    for n in (1, 2):
        result = cli("req", f"loud.q{n}", "{}", "--peer", endpoint, "--timeout", "60")
        assert (result.returncode, result.stdout) == (3, ""), result.stderr
        assert error_reply(result.stderr).startswith("error EventTooLargeError: ")
        assert f"more than {OUTPUT_LIMIT} bytes" in result.stderr
        assert answering.line().startswith(f"answered loud.q{n} ")
    assert answering.finish() == 0
