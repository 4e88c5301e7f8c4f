"""What an operator at a shell does to ``llmspell-events`` (docs/cli.md, "Errors and exit status").

Real processes (``python -m actors``) only.  Each attack ends in the documented
way: one ``Error:`` line and status 1 (failure) or 2 (usage error), a reply
(status 0) or an error reply (status 3), never a traceback, a hang or a death
by signal.  Covered here, and not by the other ``test_cli_*`` files: a reader
that closes the pipe early (``| head -1``), standard input that is not UTF-8
deep inside a large input, a line of a megabyte, time bounds at the ends of
the calendar over the wire, a port written in non-ASCII digits, ZeroMQ peers
that are no node, a ``reply --exec`` command printing JSON's missing
constants, and ``reply --count`` whose stdout was closed.

The parent synchronises on the children's output lines only.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from actors import Event, EventConfig, PersistentEventBus
from tests._cli_support import CLI, Running, cli, serving, silent_endpoint
from tests._support import WAIT

pytestmark = pytest.mark.slow


def quiet_end(stderr: str) -> list[str]:
    """Return stderr's lines, checking they hold no traceback and at most one ``Error:`` line."""
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "Exception ignored" not in stderr, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) <= 1, lines
    assert all(line.startswith("Error: ") for line in lines), lines
    return lines


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The command failed with ``status`` and said so in exactly one ``Error:`` line."""
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    lines = quiet_end(result.stderr)
    assert len(lines) == 1, result.stderr
    return lines[0]


class Child:
    """A command whose stdout the test holds (and may close); its stderr lines on a queue."""

    def __init__(self, *args: str, stdout: int = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
        self.err: queue.Queue[str] = queue.Queue()
        self.err_text: list[str] = []
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.err_text.append(line)
            self.err.put(line)
        self.err.put("<eof>")

    def err_line(self) -> str:
        return self.err.get(timeout=WAIT)

    def close_stdout(self) -> None:
        """Be the reader that went away (``| head -1`` after its line)."""
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def stderr_after(self) -> str:
        """Return what the command wrote on stderr from now on until it closed it."""
        rest: list[str] = []
        while (line := self.err_line()) != "<eof>":
            rest.append(line)
        return "".join(f"{line}\n" for line in rest)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The request endpoint of a persistent node named ``hub``; tests use their own types."""
    journal = tmp_path_factory.mktemp("operator") / "journal"
    with serving("--name", "hub", "--journal", str(journal)) as (_node, endpoint):
        yield endpoint


@pytest.fixture(scope="module")
def wide_journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, uuid.UUID]:
    """A closed journal whose printout is far larger than a pipe holds (64 KiB)."""
    path = tmp_path_factory.mktemp("wide") / "journal"
    cid = uuid.uuid4()
    with PersistentEventBus(EventConfig(persistence_path=str(path)), name="origin") as bus:
        root = Event(event_type="wide.root", correlation_id=cid)
        children = [
            Event(
                event_type="wide.step",
                data={"n": n, "pad": "p" * 400},
                correlation_id=cid,
                causation_id=root.id,
            )
            for n in range(1500)
        ]
        bus.publish_many([root, *children])
        bus.flush(WAIT)
    return path, cid


# --- | head -1: the reader goes away -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("query",), ("query", "--json"), ("trace", "CID", "--data"), ("trace", "CID", "--json")],
    ids=["query", "query-json", "trace-data", "trace-json"],
)
def test_a_reader_that_closes_after_one_line_ends_a_journal_reader_quietly(
    wide_journal: tuple[Path, uuid.UUID], args: tuple[str, ...]
) -> None:
    # `llmspell-events query --journal J | head -1`: the output (> 64 KiB) cannot all fit
    # the pipe, so the command meets the closed pipe.  It must end on its own, as a
    # failure at most (status 1, one line or none), never with a traceback, Python's
    # "Exception ignored" on exit (status 120) or death by SIGPIPE.
    path, cid = wide_journal
    argv = [str(cid) if a == "CID" else a for a in args]
    child = Child(*argv, "--journal", str(path))
    try:
        assert child.proc.stdout is not None
        assert child.proc.stdout.readline()  # head's one line
        child.close_stdout()
        status = child.proc.wait(WAIT)
        assert status == 1, (status, child.err_text)
        quiet_end(child.stderr_after())
    finally:
        child.kill()


@pytest.mark.parametrize(
    ("args", "in_force"),
    [
        (("sub", "gone.*"), "subscribed to gone.* at hub"),
        (("query", "--follow", "--type", "gone.*"), "following the journal of hub"),
    ],
    ids=["sub", "query-follow"],
)
def test_a_live_reader_whose_reader_left_ends_at_its_next_line(
    hub: str, args: tuple[str, ...], in_force: str
) -> None:
    # `sub ... | head -0`: nothing reads the lines any more.  The next event it
    # prints meets the closed pipe; the command must end (closing its short-lived
    # node), not hang nor print a traceback.
    child = Child(*args, "--peer", hub)
    try:
        assert child.err_line() == in_force
        child.close_stdout()
        published = cli("pub", "gone.x", '{"n": 1}', "--peer", hub)
        assert published.returncode == 0, published.stderr
        status = child.proc.wait(WAIT)
        assert status == 1, (status, child.err_text)
        quiet_end(child.stderr_after())
    finally:
        child.kill()


def test_reply_count_stops_even_when_its_stdout_was_closed(hub: str) -> None:
    # docs/cli.md: reply "runs until --count answers, SIGINT or SIGTERM".  With its
    # reader gone (`reply ... --count 1 | true`), the answer is published (the
    # requester gets it) but printing `answered ...` fails; the command must end
    # all the same (status 0 or 1, no traceback), not run and answer forever.
    child = Child("reply", "closed.*", "--exec", "cat", "--count", "1", "--peer", hub)
    try:
        assert child.err_line() == "replying to closed.* at hub"
        child.close_stdout()
        got = cli("req", "closed.q", '{"n": 1}', "--peer", hub, "--timeout", "10")
        assert (got.returncode, got.stdout) == (0, '{"n":1}\n'), got.stderr
        status = child.proc.wait(WAIT)
        assert status == 1, (status, child.err_text)  # as `sub` ends on a closed stdout
        quiet_end(child.stderr_after())
    finally:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
        child.kill()


# --- standard input that is not UTF-8, lines of a megabyte ----------------------------------

LATE = 300_000


@pytest.mark.parametrize(
    ("command", "stdin", "at"),
    [
        ("pub", b'{"k": "' + b"a" * LATE + b'\xff"}', LATE + 7),
        ("pub", b'{"k": "\xc3', 7),  # a sequence cut at the end
        ("pub", b'"\xed\xa0\x80"', 1),  # a surrogate encoded as UTF-8 (CESU-8)
        ("pub", b'"\xc0\xaf"', 1),  # an overlong encoding of "/"
        ("req", b'{"k": "' + b"a" * LATE + b'\xff"}', LATE + 7),
    ],
    ids=["late", "truncated", "surrogate", "overlong", "req-late"],
)
def test_stdin_that_is_not_utf8_is_a_usage_error_naming_the_byte(
    command: str, stdin: bytes, at: int
) -> None:
    # docs/cli.md, pub: "stdin ... that is not UTF-8" is a usage error (status 2),
    # said before anything connects (the endpoint is silent: a connection attempt
    # would end in status 1 instead).
    result = subprocess.run(
        [*CLI, command, "x.y", "-", "--peer", silent_endpoint(), "--timeout", "5"],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    line = one_line_error(
        subprocess.CompletedProcess(result.args, result.returncode, "", stderr), 2
    )
    assert "standard input is not UTF-8 text" in line, line
    assert f"at byte {at}" in line, line
    assert line.endswith(f"(see llmspell-events {command} -h)"), line
    assert result.stdout == b""


def test_empty_stdin_is_a_usage_error_not_null() -> None:
    # `pub TYPE -` with nothing on stdin (</dev/null): not JSON, so a usage error.
    result = subprocess.run(
        [*CLI, "pub", "x.y", "-", "--peer", silent_endpoint(), "--timeout", "5"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    line = one_line_error(result, 2)
    assert "not JSON" in line, line


def test_a_megabyte_line_travels_whole_through_pub_sub_and_query(hub: str) -> None:
    # A 1 MiB string read from stdin is published, printed by `sub --json` as one
    # line and read back by `query --peer --json` as one line, byte for byte.
    text = "é" + "x" * (1 << 20) + "\u2028end"
    sub = Running("sub", "long.*", "--json", "--count", "1", "--peer", hub)
    try:
        assert sub.line(sub.err) == "subscribed to long.* at hub"
        published = cli("pub", "long.line", "-", "--peer", hub, input=json.dumps(text))
        assert published.returncode == 0, published.stderr
        assert json.loads(sub.line())["data"] == text
        assert sub.line() == "<eof>"
        assert sub.finish() == 0
    finally:
        sub.kill()
    result = cli("query", "--peer", hub, "--type", "long.*", "--json")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.split("\n")[:-1]
    assert json.loads(line)["data"] == text


# --- time bounds and endpoints ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "found"),
    [
        (("--since", "0001-01-01T00:00:00+23:59"), True),  # before year 1 in UTC
        (("--until", "9999-12-31T23:59:59-23:59"), True),  # after year 9999 in UTC
        (("--since", "9999-12-31T23:59:59-23:59"), False),
        (("--until", "1900-01-01"), False),  # before the epoch
    ],
    ids=["since-year-0", "until-year-10000", "since-year-10000", "until-before-epoch"],
)
def test_time_bounds_at_the_ends_of_the_calendar_are_asked_of_a_node(
    hub: str, bound: tuple[str, str], found: bool
) -> None:
    # ISO 8601 with a zone is taken as given; a bound past datetime's range in UTC
    # must still select (or not) over the wire, never fail in the node or the client.
    published = cli("pub", "calendar.x", "{}", "--peer", hub)
    assert published.returncode == 0, published.stderr
    result = cli("query", "--peer", hub, "--type", "calendar.*", *bound, "--json")
    assert result.returncode == 0, result.stderr
    quiet_end(result.stderr)
    assert bool(result.stdout.strip()) is found, result.stdout[:200]


@pytest.mark.parametrize(
    "args",
    [
        ("pub", "a.b", "{}", "--peer", "tcp://127.0.0.1:\u0661\u0662", "--timeout", "2"),
        ("serve", "--name", "n", "--listen", "tcp://127.0.0.1:\u0661\u0662"),
        ("broker", "tcp://127.0.0.1:\u0661\u0662"),
    ],
    ids=["pub-peer", "serve-listen", "broker"],
)
def test_a_port_in_other_digits_is_a_usage_error(args: tuple[str, ...]) -> None:
    # docs/cli.md: every endpoint is checked before anything starts: "for tcp a
    # HOST:PORT with a port in 0-65535 ... Anything else is a usage error (exit
    # status 2) naming the fault".  ١٢ (Arabic-Indic digits) is no port ZeroMQ takes.
    line = one_line_error(cli(*args), 2)
    assert line.endswith(f"(see llmspell-events {args[0]} -h)"), line


@contextlib.contextmanager
def impostor(mode: str) -> Iterator[str]:
    """A ZeroMQ ROUTER on 127.0.0.1 that is no node: it echoes, or answers garbage."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not router.poll(50):
                continue
            frames = router.recv_multipart()
            if mode == "echo":
                router.send_multipart(frames)
            else:
                router.send_multipart([frames[0], b"\xff\xfe", b"garbage" * 10, b""])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(WAIT)
        router.close()
        ctx.term()


CLIENTS: dict[str, tuple[str, ...]] = {
    "pub": ("pub", "a.b", "{}"),
    "sub": ("sub", "a.*"),
    "query": ("query",),
    "follow": ("query", "--follow"),
    "trace": ("trace", str(uuid.UUID(int=7))),
    "stats": ("stats",),
    "req": ("req", "a.b", "{}"),
    "reply": ("reply", "a.*", "--exec", "cat"),
    "top": ("top",),
}


@pytest.mark.parametrize("mode", ["echo", "garbage"])
def test_no_client_command_hangs_on_a_zeromq_peer_that_is_no_node(mode: str) -> None:
    # A mistyped endpoint that reaches some other ZeroMQ service: every client
    # command ends within its --timeout in one line, status 1 (all at once, as
    # several operators would).
    with impostor(mode) as endpoint:
        children = {
            name: subprocess.Popen(
                [*CLI, *args, "--peer", endpoint, "--timeout", "2"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, args in CLIENTS.items()
        }
        try:
            for name, child in children.items():
                out, err = child.communicate(timeout=60)
                result = subprocess.CompletedProcess(child.args, child.returncode, out, err)
                line = one_line_error(result, 1)
                assert endpoint in line, (name, line)
                # An echoed HELLO is refused once, not once more as the echo of the refusal.
                assert line.count("node names must be unique") <= 1, (name, line)
                assert out == "", (name, out)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.kill()
                    child.wait(WAIT)


# --- reply --exec printing what JSON does not have ----------------------------------------

CONSTANTS = """
import sys
sys.stdin.read()
sys.stdout.write(sys.argv[1])
"""


@pytest.mark.parametrize(
    ("kind", "printed", "data"),
    [
        ("crlf", "one\\r\\ntwo\\r\\n", "one\r\ntwo"),  # text mode made CRLF LF
        ("cr", "lone\\rreturn", "lone\rreturn"),
        ("utf", "\\u00e9t\\u00e9\\n", "\u00e9t\u00e9"),
    ],
)
def test_a_command_s_text_reaches_the_caller_as_it_printed_it(
    hub: str, tmp_path: Path, kind: str, printed: str, data: str
) -> None:
    script = tmp_path / "text.py"
    script.write_text(
        "import sys\nsys.stdin.read()\n"
        f"sys.stdout.buffer.write({printed!r}.encode().decode('unicode_escape').encode())\n"
    )
    pattern = f"text{kind}.*"
    replying = Running("reply", pattern, "--exec", f"{sys.executable} {script}", "--peer", hub)
    try:
        assert replying.line(replying.err) == f"replying to {pattern} at hub"
        got = cli("req", pattern.replace("*", "q"), "{}", "--peer", hub, "--timeout", "10")
        assert "Traceback" not in got.stderr, got.stderr
        assert (got.returncode, json.loads(got.stdout)) == (0, data), got.stderr
    finally:
        if replying.proc.poll() is None:
            replying.proc.send_signal(signal.SIGTERM)
            replying.finish()
        replying.kill()


@pytest.mark.parametrize("printed", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_command_printing_a_constant_json_lacks_answers_with_that_text(
    hub: str, tmp_path: Path, printed: str
) -> None:
    # docs/requests.md: the command's stdout "is the reply's data: JSON, or else the
    # stripped text as a string"; docs/cli.md: NaN and Infinity are not JSON.
    # Nor is a number past the float range (1e999: Python's json reads inf).
    script = tmp_path / "constant.py"
    script.write_text(CONSTANTS)
    patterns = {"NaN": "nan.*", "Infinity": "inf.*", "-Infinity": "ninf.*", "1e999": "big.*"}
    pattern = patterns[printed]
    replying = Running(
        "reply", pattern, "--exec", f"{sys.executable} {script} {printed}", "--peer", hub
    )
    try:
        assert replying.line(replying.err) == f"replying to {pattern} at hub"
        got = cli("req", pattern.replace("*", "q"), "{}", "--peer", hub, "--timeout", "10")
        assert "Traceback" not in got.stderr, got.stderr
        assert (got.returncode, got.stdout) == (0, json.dumps(printed) + "\n"), got.stderr
    finally:
        if replying.proc.poll() is None:
            replying.proc.send_signal(signal.SIGTERM)
            replying.finish()
        replying.kill()
