"""Edge inputs a user at a terminal can give ``llmspell-events``: each must end in a clear
one-line error (or work), never a traceback, a hang or a silent success.

Real processes, as in the other ``test_cli_*`` files; the parent synchronises
on the children's output lines (and on a FIFO / an accepted socket) only.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors.cli import main
from actors.cli.pubsub import DATA_LIMIT
from tests._cli_support import CLI, WAIT, Running, cli, make_journal, serving, silent_endpoint

pytestmark = pytest.mark.slow


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr.strip().splitlines()[-1]


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The command failed with ``status`` and said so in one ``Error:`` line."""
    no_traceback(result)
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The request endpoint of a persistent node named ``hub``; tests use their own types."""
    journal = tmp_path_factory.mktemp("edges") / "journal"
    with serving("--name", "hub", "--journal", str(journal)) as (_node, endpoint):
        yield endpoint


# --- --timeout and other float options -------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "1e10", "nan"])
def test_a_timeout_no_wait_can_honour_is_a_usage_error(value: str) -> None:
    # Observed: inf and 1e10 -> ValueError traceback from check_timeout (status 1);
    # nan -> accepted, then "no node answered ... within nan s" (a zero wait).
    result = cli("pub", "a.b", "{}", "--peer", silent_endpoint(), "--timeout", value)
    assert "--timeout" in one_line_error(result, 2)


def test_exec_timeout_nan_is_a_usage_error() -> None:
    # Observed: accepted; every request then gets the error reply
    # "ValueError: cannot convert float NaN to integer".
    result = cli(
        "reply", "x.*", "--exec", "true", "--exec-timeout", "nan",
        "--peer", silent_endpoint(), "--timeout", "1",
    )  # fmt: skip
    assert "--exec-timeout" in one_line_error(result, 2)


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_top_interval_that_cannot_be_slept_is_a_usage_error(hub: str, value: str) -> None:
    # Observed: the first screen is drawn, then OverflowError / ValueError traceback
    # from time.sleep in top._keys_pressed.wait.
    result = cli("top", "--peer", hub, "--interval", value, "--timeout", "10")
    assert "--interval" in one_line_error(result, 2)


# --- moments and sequences ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"), [("--since", "99999999999w"), ("--until", "1000000000d")]
)
def test_a_time_ago_too_far_back_is_a_usage_error(tmp_path: Path, option: str, value: str) -> None:
    # Observed: OverflowError traceback from timespec.parse_moment (timedelta).
    make_journal(tmp_path / "journal")
    result = cli("query", "--journal", str(tmp_path / "journal"), option, value)
    assert option in one_line_error(result, 2)


@pytest.mark.parametrize(
    "args",
    [
        ("query", "--after", str(2**64)),
        ("sub", "edge.seq.*", "--from-sequence", str(10**23), "--count", "1"),
    ],
)
def test_a_sequence_beyond_any_journal_is_refused_at_once(hub: str, args: tuple[str, ...]) -> None:
    # Observed: the node never answers the read; after --timeout:
    # "Error: node 'hub' did not answer in time (a longer --timeout?)", status 1.
    result = cli(*args, "--peer", hub, "--timeout", "3")
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert "did not answer" not in result.stderr


# --- DATA ----------------------------------------------------------------------------------


def test_pub_data_file_that_is_not_text_is_one_line(hub: str, tmp_path: Path) -> None:
    # Observed: UnicodeDecodeError traceback from pubsub.read_data (Path.read_text).
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\xff\xfe\x00\x80binary")
    result = cli("pub", "edge.bin", f"@{blob}", "--peer", hub, "--timeout", "5")
    assert "DATA" in one_line_error(result, 2)


def test_pub_data_nested_too_deep_is_one_line(hub: str, tmp_path: Path) -> None:
    # Observed: RecursionError traceback from json.loads in pubsub.read_data.
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = cli("pub", "edge.deep", f"@{deep}", "--peer", hub, "--timeout", "5")
    no_traceback(result)
    assert result.returncode in (1, 2)
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.splitlines()) == 1


def test_an_event_pub_accepts_can_be_read_back(hub: str) -> None:
    # Observed: pub publishes the lone surrogate (status 0), and from then on every
    # query/sub/trace printing that event dies with a UnicodeEncodeError traceback
    # (output.say, json_line(ensure_ascii=False) on a strict UTF-8 stdout).
    published = cli("pub", "edge.surrogate", '"\\ud800"', "--peer", hub, "--timeout", "10")
    no_traceback(published)
    if published.returncode != 0:  # refusing it is fine: in one line
        one_line_error(published, published.returncode)
        return
    for extra in ((), ("--json",)):
        read = cli("query", "--peer", hub, "--type", "edge.surrogate", *extra)
        no_traceback(read)
        assert read.returncode == 0, read.stderr
        assert len(read.stdout.splitlines()) == 1


# --- sub's files ---------------------------------------------------------------------------


def test_sub_ready_file_in_a_missing_folder_is_one_line(hub: str, tmp_path: Path) -> None:
    # Observed: FileNotFoundError traceback from pubsub._ready (write_text of PATH.tmp).
    ready = tmp_path / "no-such-folder" / "sub.ready"
    result = cli("sub", "edge.ready.*", "--peer", hub, "--ready-file", str(ready), "--count", "1")
    one_line_error(result, result.returncode)
    assert result.returncode in (1, 2)


@pytest.mark.parametrize("where", ["state-dir-under-a-file", "checkpoint-is-a-folder"])
def test_sub_durable_with_an_unusable_checkpoint_is_one_line(
    hub: str, tmp_path: Path, where: str
) -> None:
    # Observed: NotADirectoryError traceback from follow.Checkpoint.save (after the
    # event was printed), IsADirectoryError traceback from Checkpoint.load.
    assert cli("pub", "edge.durable", "{}", "--peer", hub).returncode == 0
    env: dict[str, str] = {}
    args = ["sub", "edge.durable", "--peer", hub, "--durable", "d", "--from-sequence", "1"]
    if where == "state-dir-under-a-file":
        (tmp_path / "a-file").write_text("")
        env["XDG_STATE_HOME"] = str(tmp_path / "a-file")
    else:
        (tmp_path / "state" / "hub.d.sequence").mkdir(parents=True)
        args += ["--state-dir", str(tmp_path / "state")]
    result = cli(*args, "--count", "1", env=env)
    no_traceback(result)
    assert result.returncode in (1, 2), result.stderr
    said = [line for line in result.stderr.splitlines() if not line.startswith("subscribed")]
    assert len(said) == 1, said
    assert said[0].startswith("Error: "), said


# --- reply --exec --------------------------------------------------------------------------


def test_req_prints_a_reply_it_received_without_a_traceback(hub: str) -> None:
    # Observed: the --exec prints "\ud800" (valid JSON); the reply is published, and
    # req dies with a UnicodeEncodeError traceback in output.say.
    answer = 'import json; print(json.dumps("\\ud800"))'
    answering = Running(
        "reply", "edge.sur.*", "--exec", f"{sys.executable} -c '{answer}'",
        "--peer", hub, "--count", "1",
    )  # fmt: skip
    try:
        assert answering.line(answering.err).startswith("replying to ")
        result = cli("req", "edge.sur.q", "{}", "--peer", hub, "--timeout", "30")
        no_traceback(result)
        assert result.returncode in (0, 1, 3), result.stderr
    finally:
        answering.kill()


def test_a_reply_too_large_to_publish_is_answered_with_an_error(hub: str, tmp_path: Path) -> None:
    # It used to print "reply not published" on stderr and "answered" on stdout
    # both, while the requester waited out its timeout.  docs/cli.md: `answered
    # TYPE ID` once the reply is published; a reply too large is an error reply.
    script = tmp_path / "answer.py"
    script.write_text(
        "import json, sys\n"
        "big = json.load(sys.stdin) == 'big'\n"
        "print(json.dumps('x' * 17_000_000 if big else 1))\n"
    )
    answering = Running(
        "reply", "edge.big.*", "--exec", f"{sys.executable} {script}", "--peer", hub
    )
    try:
        assert answering.line(answering.err).startswith("replying to ")
        big = cli("req", "edge.big.huge", '"big"', "--peer", hub, "--timeout", "30")
        assert big.returncode == 3, big.stderr
        assert big.stderr.startswith("error EventTooLargeError: "), big.stderr
        assert answering.line().startswith("answered edge.big.huge ")
        small = cli("req", "edge.big.small", '"small"', "--peer", hub, "--timeout", "30")
        assert small.returncode == 0, small.stderr
        assert answering.line().startswith("answered edge.big.small ")
    finally:
        answering.kill()


def test_stopping_reply_does_not_leave_its_command_running(hub: str, tmp_path: Path) -> None:
    # Observed: SIGTERM ends `reply` with status 0 at once, and the --exec process
    # (still answering) is left behind, reparented to init.
    fifo = tmp_path / "pid.fifo"
    os.mkfifo(fifo)
    script = tmp_path / "slow.py"
    script.write_text(
        f"import os, signal\nwith open({str(fifo)!r}, 'w') as f:\n    f.write(str(os.getpid()))\n"
        "signal.pause()  # a command that never answers: only a signal ends it\n"
    )
    answering = Running(
        "reply", "edge.orphan.*", "--exec", f"{sys.executable} {script}", "--peer", hub
    )
    asking = None
    pids: queue.Queue[int] = queue.Queue()
    threading.Thread(target=lambda: pids.put(int(fifo.read_text())), daemon=True).start()
    pid = None
    try:
        assert answering.line(answering.err).startswith("replying to ")
        asking = subprocess.Popen(
            [*CLI, "req", "edge.orphan.q", "{}", "--peer", hub, "--timeout", "60"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pid = pids.get(timeout=WAIT)  # the command is running
        assert answering.interrupt(signal.SIGTERM) == 0
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, f"the --exec process {pid} outlived `reply`"
    finally:
        answering.kill()
        if asking is not None:
            asking.kill()
            asking.wait(WAIT)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- signals -------------------------------------------------------------------------------


def test_ctrl_c_while_connecting_is_one_error_line() -> None:
    # Observed: stderr is "\nError: aborted" (click's Abort echo): two lines.
    with socket.socket() as listener:  # accepts, never speaks ZMTP: the CLI waits on it
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(WAIT)
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            [*CLI, "req", "a.b", "--peer", f"tcp://127.0.0.1:{port}", "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = listener.accept()  # the short-lived node is connecting
            conn.close()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
    assert "Traceback" not in err, err
    assert proc.returncode != 0
    assert len(err.splitlines()) == 1, err.splitlines()
    assert err.startswith("Error: ")
    assert out == ""


@pytest.mark.parametrize(
    ("data", "stdin", "said"),
    [
        ("NaN", None, "NaN is not a JSON value"),
        ('{"x": Infinity}', None, "Infinity is not a JSON value"),
        ("[-Infinity]", None, "-Infinity is not a JSON value"),
        ('{"x": 1e999}', None, "1e999 is out of the range of a finite number"),
        ("-", b"\xff\xfe{}", "standard input is not UTF-8 text"),
    ],
)
def test_data_that_is_not_json_text_is_a_usage_error_before_any_connection(
    data: str, stdin: bytes | None, said: str
) -> None:
    """Python's json reads NaN and Infinity, JSON has none: a usage error (2), as for
    any text that is not JSON, and so is standard input that is not UTF-8."""
    for command in ("pub", "req"):
        result = CliRunner().invoke(
            main, [command, "x.y", data, "--peer", silent_endpoint()], input=stdin
        )
        assert result.exit_code == 2, (command, result.output)
        assert said in result.stderr


def test_data_larger_than_an_event_can_carry_is_a_usage_error_read_no_further(
    tmp_path: Path,
) -> None:
    """DATA from a file or stdin is read up to the frame limit and no further:
    ``@/dev/zero`` or a runaway pipe used to be read whole, into every byte of
    memory there was."""
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(DATA_LIMIT + 1)  # sparse: no disk taken
    for command in ("pub", "req"):
        for data, stdin in ((f"@{big}", None), ("-", b" " * (DATA_LIMIT + 1))):
            result = CliRunner().invoke(
                main, [command, "x.y", data, "--peer", silent_endpoint()], input=stdin
            )
            assert result.exit_code == 2, (command, data[:1], result.output)
            assert f"more than {DATA_LIMIT} bytes" in result.stderr


def test_data_from_a_closed_standard_input_is_a_usage_error() -> None:
    # `llmspell-events pub x.y - <&-`: Python starts with sys.stdin None.
    command = " ".join([*CLI, "pub", "x.y", "-", "--peer", silent_endpoint()])
    got = subprocess.run(
        ["sh", "-c", f"{command} <&-"],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )
    assert got.returncode == 2, got.stderr
    assert "standard input is closed" in got.stderr
    assert "Traceback" not in got.stderr


@pytest.mark.parametrize(
    ("event_type", "said"),
    [
        ("x.reply", "cannot end in '.reply' or '.error'"),
        ("calc.error", "cannot end in '.reply' or '.error'"),
        ("a" * 250, "at most 249 characters"),
    ],
)
def test_a_type_no_request_can_have_is_a_usage_error_before_any_connection(
    event_type: str, said: str
) -> None:
    """docs/cli.md: a type ``req`` publishes is checked before anything starts; these
    were found only after connecting (2 s of ``--timeout`` to a silent endpoint,
    then status 1)."""
    result = CliRunner().invoke(main, ["req", event_type, "{}", "--peer", silent_endpoint()])
    assert result.exit_code == 2, result.output
    assert said in result.stderr
