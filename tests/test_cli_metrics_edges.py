"""Edges against what docs/cli.md and docs/observability.md promise for the
command line and the metrics HTTP endpoint (``serve --metrics-port``, ``serve_metrics``).

Real processes, real sockets on 127.0.0.1, real RocksDB journals in ``tmp_path``.  The
parent synchronises on the children's output lines, on accepted sockets and on files;
every wait is bounded (reaching a bound is a hang, hence a failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors import EventBus
from actors._metrics_http import CLIENT_TIMEOUT
from tests._cli_support import CLI, WAIT, Running, cli, make_journal, serving
from tests._support import wait_for

pytestmark = pytest.mark.slow


# --- helpers ---------------------------------------------------------------------------------


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The command failed with ``status`` and said why in one ``Error:`` line on stderr."""
    no_traceback(result)
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: "), lines
    return lines[0]


def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` to 127.0.0.1:``port`` and return all it answered until it closed.

    A server that neither answers nor closes within WAIT is a hang: the test fails.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except TimeoutError:
            pytest.fail(f"no answer and no close within {WAIT} s to {request[:60]!r}")
    return data


def status_of(reply: bytes) -> int:
    return int(reply.split(b"\r\n", 1)[0].split()[1])


def head_and_body(reply: bytes) -> tuple[bytes, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


@contextlib.contextmanager
def metrics_node(*args: str) -> Iterator[tuple[Running, dict[str, str], int]]:
    """Run ``serve --metrics-port 0``; yield it, its five lines and the metrics port."""
    node = Running(
        "serve", "--name", "m", "--listen", "tcp://127.0.0.1:0", "--metrics-port", "0", *args
    )
    try:
        lines = dict(node.line().split(" ", 1) for _ in range(5))
        url = lines["metrics"]
        assert url.startswith("http://127.0.0.1:"), lines
        assert url.endswith("/metrics"), lines
        yield node, lines, int(url.rsplit(":", 1)[1].split("/", 1)[0])
    finally:
        node.kill()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[int]:
    """The metrics port of a ``serve`` node shared by the HTTP tests that do not stop it."""
    with metrics_node() as (_node, _lines, port):
        yield port


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 where this process listens (so no one else can bind it)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield listener.getsockname()[1]


# --- the metrics endpoint --------------------------------------------------------------------


# Every method but GET and HEAD is a 405 naming them, also one http.server has no
# handler for (TRACE, CONNECT, a made-up FOO, the lower-case "get": methods are
# case-sensitive), which it would answer 501 with an HTML page.
@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "FOO", "get"])
def test_any_method_but_get_and_head_is_a_405_naming_them(endpoint: int, method: str) -> None:
    reply = raw(endpoint, f"{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _ = head_and_body(reply)
    assert status_of(reply) == 405, head.decode(errors="replace")
    assert b"\r\nAllow: GET, HEAD" in head


def test_a_query_string_selects_the_path_and_head_has_no_body(endpoint: int) -> None:
    # docs/observability.md: GET /metrics and /healthz; a scraper may add ?params
    # (what a user of an HTTP endpoint plainly expects: the path is what is routed).
    reply = raw(endpoint, b"GET /metrics?collect%5B%5D=x&y HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(reply) == 200
    assert "llmspell_events_published" in families(head_and_body(reply)[1].decode())
    reply = raw(endpoint, b"GET /healthz?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status_of(reply), head_and_body(reply)[1]) == (200, b"ok\n")
    # "HEAD answers as GET without the body": for every path, the 404 included.
    for path, status in (("/healthz", 200), ("/metrics?x", 200), ("/nowhere", 404)):
        reply = raw(endpoint, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, body = head_and_body(reply)
        assert (status_of(reply), body) == (status, b""), path
        assert b"Content-Length: " in head
    # "Any other path is a 404": a path that only looks like one.
    # (http.server itself folds a leading "//" into "/", so "//metrics" is /metrics.)
    for path in ("/metrics/", "/healthz/x", "/%6detrics", "/METRICS", "/metrics;x"):
        assert status_of(raw(endpoint, f"GET {path} HTTP/1.1\r\n\r\n".encode())) == 404, path


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics HTTP/x.y\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1 extra\r\n\r\n", 400),
        (b"\x00\xff\xfe binary\r\n\r\n", 400),
        (b"GET /" + b"m" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_a_malformed_request_is_refused_and_the_endpoint_keeps_serving(
    endpoint: int, request_bytes: bytes, status: int
) -> None:
    # Docs silent on malformed HTTP; plainly expected: an error status, the
    # connection closed, and scrapes answered after it.  (http.server answers a request
    # line it cannot parse HTTP/0.9-style: the error page without a status line.)
    reply = raw(endpoint, request_bytes)
    if reply.startswith(b"HTTP/"):
        assert status_of(reply) == status, reply[:200]
    else:
        assert f"Error code: {status}".encode() in reply, reply[:400]
    assert raw(endpoint, b"\r\n\r\n") == b""  # blank lines only: closed without a word
    assert head_and_body(raw(endpoint, b"GET /healthz HTTP/1.1\r\n\r\n"))[1] == b"ok\n"


# A client that connects and sends nothing (or a bare HTTP/0.9 line, which waits
# for headers) is dropped after CLIENT_TIMEOUT, instead of holding a server thread
# and a socket for ever (enough of them would exhaust the node's threads and file
# descriptors).  The docs say the server takes a thread per request.
def test_a_client_that_sends_nothing_is_dropped(endpoint: int) -> None:
    bound = CLIENT_TIMEOUT + WAIT
    with socket.create_connection(("127.0.0.1", endpoint), timeout=bound) as idle:
        try:
            left = idle.recv(1)  # b"" once the server closed it (or a 408 status line)
        except TimeoutError:
            pytest.fail(f"the server held an idle connection for {bound} s (for ever)")
        except ConnectionResetError:
            left = b""
    assert left in (b"", b"H")


def test_many_stalled_clients_leave_scrapes_answered_and_sigterm_closes_the_node() -> None:
    # docs/cli.md: "SIGINT or SIGTERM closes the bus cleanly (it prints `closed`)",
    # status 0 (as the other serve tests check) — also while the metrics endpoint has
    # clients that never finish a request.
    with metrics_node() as (node, _lines, port):
        stalled = []
        try:
            for i in range(150):
                s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                stalled.append(s)
                if i % 3 == 1:
                    s.sendall(b"GET /metr")
                elif i % 3 == 2:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line
            for _ in range(5):
                reply = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert status_of(reply) == 200
                families(head_and_body(reply)[1].decode())
            assert head_and_body(raw(port, b"GET /healthz HTTP/1.1\r\n\r\n"))[1] == b"ok\n"
            assert node.interrupt(signal.SIGTERM) == 0
            assert node.line() == "closed"
            assert node.line() == "<eof>"
            assert node.line(node.err) == "<eof>"  # nothing on stderr
        finally:
            for s in stalled:
                s.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), WAIT):
        pass  # the port is free again: the server went with the node


def test_sigint_during_a_scrape_stream_closes_the_node_with_status_0() -> None:
    # docs/cli.md: SIGINT closes the bus cleanly; a scraper hammering /metrics in a
    # loop (each answered) does not keep the node from stopping.
    with metrics_node() as (node, _lines, port):
        for _ in range(20):
            assert status_of(raw(port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200
        node.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(OSError):  # the race with the stop is the point
            for _ in range(200):
                if node.proc.poll() is not None:
                    break
                raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert node.finish() == 0
        assert node.line() == "closed"


def test_a_closed_bus_keeps_its_figures_and_healthz_says_closed_to_head_too() -> None:
    # docs/observability.md: "/healthz: 200 ok while the bus is open, 503 closed after";
    # "HEAD answers as GET without the body"; counters stay "after close() too";
    # "closing the bus does not stop" the server.
    bus = EventBus()
    server = bus.serve_metrics(0)
    try:
        bus.publish("edge.closed", {"n": 1}).get(WAIT)
        bus.close(timeout=WAIT)
        reply = raw(server.port, b"HEAD /healthz?x=1 HTTP/1.1\r\n\r\n")
        assert (status_of(reply), head_and_body(reply)[1]) == (503, b"")
        reply = raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (status_of(reply), head_and_body(reply)[1]) == (503, b"closed\n")
        reply = raw(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status_of(reply) == 200
        published = families(head_and_body(reply)[1].decode())["llmspell_events_published"]
        assert published.samples[0].value >= 1  # type: ignore[attr-defined]
    finally:
        server.close()
        server.close()


# --- serve: the metrics port -------------------------------------------------------------


@pytest.mark.parametrize("port", ["-1", "65536", "99999999999999999999", "http", "1.5", ""])
def test_a_metrics_port_out_of_range_or_not_a_number_is_a_usage_error(port: str) -> None:
    # docs/cli.md: usage errors are one line, status 2, ending with the -h hint.
    result = cli("serve", "--name", "u", "--listen", "tcp://127.0.0.1:0", "--metrics-port", port)
    line = one_line_error(result, 2)
    assert "--metrics-port" in line, line
    assert line.endswith("(see llmspell-events serve -h)"), line
    assert result.stdout == ""


def test_a_metrics_port_in_use_is_one_error_line_and_status_1(taken_port: int) -> None:
    # docs/cli.md: a failure is one `Error:` line, status 1, never a traceback.
    result = cli(
        "serve", "--name", "t", "--listen", "tcp://127.0.0.1:0",
        "--metrics-port", str(taken_port),
    )  # fmt: skip
    line = one_line_error(result, 1)
    assert f"port {taken_port}" in line, line
    assert "in use" in line, line


# Scripts wait for `journal`: a node whose metrics port is taken fails before it
# prints any of its lines, never after announcing itself.
def test_a_node_whose_metrics_port_is_taken_does_not_announce_itself(taken_port: int) -> None:
    result = cli(
        "serve", "--name", "t", "--listen", "tcp://127.0.0.1:0",
        "--metrics-port", str(taken_port),
    )  # fmt: skip
    assert result.returncode == 1
    assert "journal" not in [line.split(" ", 1)[0] for line in result.stdout.splitlines()], (
        result.stdout
    )


# --- serve and the read-only commands on journals in trouble -------------------------------


def test_a_journal_held_by_a_running_node_is_refused_to_a_second_node(tmp_path: Path) -> None:
    # docs/cli.md: a failure is one line, status 1; the first node is not disturbed.
    journal = tmp_path / "held"
    with serving("--name", "first", "--journal", str(journal)) as (node, peer):
        result = cli(
            "serve", "--name", "second", "--listen", "tcp://127.0.0.1:0",
            "--journal", str(journal), "--metrics-port", "0",
        )  # fmt: skip
        assert "in use" in one_line_error(result, 1)
        published = cli("pub", "held.ok", "{}", "--peer", peer, "--timeout", "30")
        assert published.returncode == 0, published.stderr
        # ... and the read-only commands still read it beside the node.
        stats = cli("stats", "--journal", str(journal), "--json")
        assert stats.returncode == 0, stats.stderr
        assert node.proc.poll() is None


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    assert data, f"{path} is empty: nothing to damage"
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_write_ahead_log_is_one_line_for_each_command_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    # docs/cli.md: failures are one line, status 1; "query, trace and stats --journal
    # DIR ... never create, grow or write it".
    journal = tmp_path / "wal"
    node = Running(
        "serve", "--name", "w", "--listen", "tcp://127.0.0.1:0", "--journal", str(journal)
    )
    try:
        lines = dict(node.line().split(" ", 1) for _ in range(4))
        done = cli("pub", "wal.e", '{"x": "y"}', "--count", "20", "--peer", lines["request"])
        assert done.returncode == 0, done.stderr
    finally:
        node.kill()  # SIGKILL: the events stay in the write-ahead log only
    (log,) = journal.glob("*.log")
    flip_middle_byte(log)
    before = snapshot(journal)
    for args in (
        ("stats", "--journal", str(journal)),
        ("query", "--journal", str(journal), "--type", "wal.*"),
        ("trace", str(uuid.uuid4()), "--journal", str(journal)),
    ):
        line = one_line_error(cli(*args), 1)
        assert "damaged" in line, (args, line)
        assert snapshot(journal) == before, args
    result = cli("serve", "--name", "w", "--listen", "tcp://127.0.0.1:0", "--journal", str(journal))
    assert "damaged" in one_line_error(result, 1)
    assert "journal" not in result.stdout


def test_damaged_table_files_are_one_line_for_each_command(tmp_path: Path) -> None:
    journal = tmp_path / "sst"
    make_journal(journal)
    tables = list(journal.glob("*.sst"))
    assert tables
    for table in tables:
        flip_middle_byte(table)
    before = snapshot(journal)
    for args in (
        ("stats", "--journal", str(journal), "--prometheus"),
        ("query", "--journal", str(journal)),
    ):
        line = one_line_error(cli(*args), 1)
        assert line.count("is damaged") == 1, (args, line)
        # The files named are the journal's, not the read-only view's temporary copies.
        assert "actors-journal-ro-" not in line, line
        assert f"{journal.resolve()}/" in line, line
    assert snapshot(journal) == before


@pytest.mark.parametrize(
    "current", [b"", b"{}\n", b"MANIFEST-000001\n", b"\xff" * 64, b"../../etc/passwd\n"]
)
def test_a_folder_that_only_looks_like_a_journal_is_one_line(
    tmp_path: Path, current: bytes
) -> None:
    # docs/cli.md: a folder holding no journal is an error and nothing is written in it;
    # one with a CURRENT file that leads nowhere must fail as plainly.
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "CURRENT").write_bytes(current)
    for args in (("stats", "--journal", str(folder)), ("query", "--journal", str(folder))):
        one_line_error(cli(*args), 1)
        assert snapshot(folder) == {"CURRENT": current}


# --- clients whose node is stopped, killed or not a node ------------------------------------


def test_clients_of_a_stopped_then_killed_node_fail_in_one_line_or_stop_with_status_0(
    tmp_path: Path,
) -> None:
    # docs/cli.md: req exits 1 when no reply came within --timeout; pub fails within
    # --timeout; sub and query --follow stop on SIGTERM with status 0, as does reply.
    script = tmp_path / "echo.py"
    script.write_text("import sys\nprint(sys.stdin.read())\n")
    with serving("--name", "frozen", "--journal", str(tmp_path / "j")) as (node, peer):
        sub = Running("sub", "frozen.*", "--peer", peer)
        # Its reads wait past the node's whole pause (seven clients, each up to its --timeout
        # and its start, over 10 s on a loaded machine): a read that ran out would end it with
        # status 1, as any client of a node that stopped answering, before the signal came.
        follow = Running("query", "--peer", peer, "--follow", "--timeout", "300")
        reply = Running("reply", "frozen.*", "--exec", f"{sys.executable} {script}", "--peer", peer)
        try:
            assert sub.line(sub.err) == "subscribed to frozen.* at frozen"
            assert follow.line(follow.err) == "following the journal of frozen"
            assert reply.line(reply.err) == "replying to frozen.* at frozen"
            node.proc.send_signal(signal.SIGSTOP)
            try:
                for args in (
                    ("req", "frozen.q", "{}"),
                    ("pub", "frozen.p", "{}"),
                    ("sub", "frozen.*"),
                    ("query", "--type", "frozen.*"),
                    ("stats",),
                    ("trace", str(uuid.uuid4())),
                    ("top",),
                ):
                    result = cli(*args, "--peer", peer, "--timeout", "1")
                    one_line_error(result, 1)
                    assert result.stdout == "", args
                assert sub.interrupt(signal.SIGTERM) == 0
                assert follow.interrupt(signal.SIGINT) == 0
            finally:
                node.proc.send_signal(signal.SIGCONT)
            node.kill()
            assert reply.interrupt(signal.SIGTERM) == 0
            assert [reply.line(reply.err)] == ["<eof>"]
        finally:
            for proc in (sub, follow, reply):
                proc.kill()


@contextlib.contextmanager
def mute_peer() -> Iterator[tuple[socket.socket, str]]:
    """A tcp endpoint that accepts connections and never speaks ZMTP."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(WAIT)
        yield listener, f"tcp://127.0.0.1:{listener.getsockname()[1]}"


def test_top_stopped_while_it_waits_for_its_node_exits_with_status_0() -> None:
    # docs/cli.md (top): "q quits (so do Ctrl-C and SIGTERM ...; status 0, also while it
    # still waits for its node)".
    with mute_peer() as (listener, peer):
        top = subprocess.Popen(
            [*CLI, "top", "--peer", peer, "--timeout", "60"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = listener.accept()  # top's short-lived node is connecting
            conn.close()
            top.send_signal(signal.SIGTERM)
            _out, err = top.communicate(timeout=WAIT)
        finally:
            if top.poll() is None:
                top.kill()
                top.wait(WAIT)
    assert "Traceback" not in err, err
    assert top.returncode == 0, err


def test_sub_stopped_while_it_connects_says_interrupted_in_one_line() -> None:
    # docs/cli.md: "Ctrl-C (or SIGTERM) before a command reached the point where it
    # documents a clean stop (connecting, waiting for the node) ends it with
    # `Error: interrupted`, status 1".
    with mute_peer() as (listener, peer):
        sub = subprocess.Popen(
            [*CLI, "sub", "x.*", "--peer", peer, "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = listener.accept()
            conn.close()
            sub.send_signal(signal.SIGTERM)
            out, err = sub.communicate(timeout=WAIT)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait(WAIT)
    assert (sub.returncode, err, out) == (1, "Error: interrupted\n", "")


# --- hostile arguments --------------------------------------------------------------------


SERVE = ("serve", "--name", "x", "--listen")


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        ((*SERVE, "ipc:///no/such/folder/n.sock"), 1, "n.sock"),
        ((*SERVE, "ipc:///tmp/" + "l" * 200), 2, "107"),  # checked before anything starts
        ((*SERVE, "tcp://127.0.0.1:65536"), 2, "--listen"),
        ((*SERVE, "tcp://127.0.0.1:-1"), 2, "--listen"),
        ((*SERVE, "tcp://127.0.0.1:0", "--peer", "tcp://127.0.0.1:*"), 2, "--peer"),
        ((*SERVE, "udp://127.0.0.1:0"), 2, "udp"),
        ((*SERVE, "ipc://with space"), 2, "--listen"),
        (("sub", "", "--peer", "tcp://127.0.0.1:1"), 2, "empty"),
        (("sub", "a.**x", "--peer", "tcp://127.0.0.1:1"), 2, "**"),
        (("sub", "a..b", "--peer", "tcp://127.0.0.1:1"), 2, "empty segment"),
        (("pub", "a.*", "{}", "--peer", "tcp://127.0.0.1:1"), 2, "*"),
        (("req", "a.b", '{"a": [1,', "--peer", "tcp://127.0.0.1:1"), 2, "DATA"),
        (("query", "--journal", ".", "--since", "-5m"), 2, "--since"),
        (("query", "--journal", ".", "--until", "yesterday"), 2, "--until"),
        (("query", "--journal", ".", "--since", "10m", "--until", "2h", "--follow"), 2, "--follow"),
        (("reply", "a.*", "--exec", "   ", "--peer", "tcp://127.0.0.1:1"), 2, "--exec"),
    ],
)
def test_a_hostile_argument_is_one_line_and_no_hang(
    args: tuple[str, ...], status: int, says: str
) -> None:
    # docs/cli.md "Errors and exit status": one line, 1 for a failure, 2 for a usage
    # error; endpoints are checked before anything starts.
    client = args[0] in ("sub", "pub", "req", "reply")
    line = one_line_error(cli(*args, *(("--timeout", "2") if client else ())), status)
    assert says in line, line


@pytest.mark.parametrize(
    ("size", "status"),
    [(17 * 1024 * 1024, 2), (16 * 1024 * 1024 - 1024, 1)],
    ids=["past-what-is-read", "past-the-frame"],
)
def test_data_too_large_for_an_event_is_one_line(tmp_path: Path, size: int, status: int) -> None:
    # docs/cli.md: `@FILE` "for data too large for an argument"; a file past the
    # frame limit is not read further (a usage error, 2), and what a node cannot
    # send fails in one line (status 1), without a traceback.
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "a" * size}))
    with serving("--name", "big") as (_node, peer):
        for command in ("pub", "req"):
            result = cli(command, "big.e", f"@{big}", "--peer", peer, "--timeout", "30")
            assert "bytes" in one_line_error(result, status)
            assert result.stdout == ""


# --- reply --exec misbehaving --------------------------------------------------------------

ANSWER = """
import json, sys
data = json.load(sys.stdin)
if data == "nothing":
    pass
elif data == "text":
    print("  not json at all  ")
elif data == "bytes":
    sys.stdout.buffer.write(b"\\xff\\xfe\\n")
elif data == "flood":
    sys.stderr.write("e" * 2_000_000)
    sys.exit(5)
else:
    print(json.dumps({"ok": data}))
"""


def test_reply_turns_what_its_command_prints_into_replies_and_goes_on(tmp_path: Path) -> None:
    # docs/requests.md "From the shell": stdout "is the reply's data: JSON, or else the
    # stripped text as a string (empty: null). A non-zero exit is an error reply
    # (RuntimeError with the end of stderr)"; req exits 3 on an error reply.
    script = tmp_path / "answer.py"
    script.write_text(ANSWER)
    with serving("--name", "rep") as (_node, peer):
        answering = Running(
            "reply", "rep.*", "--exec", f"{sys.executable} {script}", "--peer", peer
        )
        missing = Running(
            "reply", "gone.*", "--exec", str(tmp_path / "no-such-command"), "--peer", peer
        )
        try:
            assert answering.line(answering.err) == "replying to rep.* at rep"
            assert missing.line(missing.err) == "replying to gone.* at rep"

            def ask(event_type: str, data: str) -> subprocess.CompletedProcess[str]:
                result = cli("req", event_type, data, "--peer", peer, "--timeout", "30")
                no_traceback(result)
                return result

            got = ask("rep.a", '"nothing"')
            assert (got.returncode, got.stdout) == (0, "null\n"), got.stderr
            got = ask("rep.b", '"text"')
            assert (got.returncode, got.stdout) == (0, '"not json at all"\n'), got.stderr
            got = ask("rep.c", '"flood"')
            assert (got.returncode, got.stdout) == (3, ""), got.stderr
            (line,) = got.stderr.splitlines()
            assert line.startswith("error RuntimeError: "), line
            assert "exited with 5" in line, line
            assert len(line) < 1000  # "the end of stderr", not 2 MB of it
            got = ask("rep.d", '"bytes"')
            assert got.returncode in (0, 3), got.stderr  # an answer either way, not a hang
            got = ask("rep.e", "[1]")
            assert (got.returncode, json.loads(got.stdout)) == (0, {"ok": [1]}), got.stderr
            for _ in range(5):
                assert answering.line().startswith("answered rep.")

            for _ in range(2):  # a command that cannot start is an error reply, each time
                got = ask("gone.x", "{}")
                assert (got.returncode, got.stdout) == (3, ""), got.stderr
                assert missing.line().startswith("answered gone.x ")
            assert answering.interrupt(signal.SIGTERM) == 0
            assert missing.interrupt(signal.SIGINT) == 0
        finally:
            answering.kill()
            missing.kill()


GRANDPARENT = """
import os, signal, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
signal.pause()  # never answers; its child keeps stdout open too
"""


# `--exec-timeout` bounds a run even when the command started a child of its own
# that holds its output (a shell script's background job): the command runs in a
# process group of its own, killed whole, and the requester gets the error reply.
def test_exec_timeout_bounds_a_command_whose_child_keeps_its_output(tmp_path: Path) -> None:
    script = tmp_path / "grandparent.py"
    script.write_text(GRANDPARENT)
    pids_file = tmp_path / "pids"
    with serving("--name", "slow") as (_node, peer):
        answering = Running(
            "reply", "slow.*", "--exec", f"{sys.executable} {script} {pids_file}",
            "--exec-timeout", "1", "--peer", peer,
        )  # fmt: skip
        try:
            assert answering.line(answering.err) == "replying to slow.* at slow"
            got = cli("req", "slow.q", "{}", "--peer", peer, "--timeout", "20")
            no_traceback(got)
            assert got.returncode == 3, (got.returncode, got.stderr)
            assert got.stderr.startswith("error "), got.stderr
        finally:
            answering.kill()
            if wait_for(pids_file.exists):
                for pid in map(int, pids_file.read_text().split()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


# --- more: stopped subscribers, repeated signals, inputs a command ignores ------------------


def test_a_stopped_sub_holds_no_one_up_and_misses_nothing_once_continued() -> None:
    # docs/cli.md (sub): every matching event the node publishes after `subscribed to`
    # is printed, counting from 1; pub returns once the node's copy came back, within
    # --timeout.  docs/cluster.md: SIGSTOP/SIGCONT of a peer loses nothing, "a dead
    # peer holds no one back".  10,000 events: past the default credit window (8,192).
    count = 10_000
    with metrics_node() as (_node, lines, port):
        sub = Running("sub", "flood.*", "--peer", lines["request"])
        try:
            assert sub.line(sub.err) == "subscribed to flood.* at m"
            sub.proc.send_signal(signal.SIGSTOP)
            try:
                done = cli(
                    "pub", "flood.x", '{"n": 1}', "--count", str(count),
                    "--peer", lines["request"], "--timeout", "50",
                )  # fmt: skip
                assert done.returncode == 0, done.stderr[-500:]
                assert head_and_body(raw(port, b"GET /healthz HTTP/1.1\r\n\r\n"))[1] == b"ok\n"
            finally:
                sub.proc.send_signal(signal.SIGCONT)
            seen = [int(sub.line().split(" ", 1)[0].lstrip("#")) for _ in range(count)]
            assert seen == list(range(1, count + 1))
            assert sub.interrupt(signal.SIGTERM) == 0
        finally:
            sub.kill()


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM,) * 3])
def test_repeated_signals_close_a_node_once_with_status_0(
    tmp_path: Path, signals: tuple[int, ...]
) -> None:
    # docs/cli.md: SIGINT or SIGTERM closes the bus cleanly and prints `closed`; an
    # impatient user pressing Ctrl-C again (or a supervisor repeating SIGTERM) plainly
    # expects the same clean stop, not a traceback or a half-closed journal.
    journal = tmp_path / "j"
    with metrics_node("--journal", str(journal)) as (node, lines, _port):
        done = cli("pub", "sig.e", "{}", "--count", "50", "--peer", lines["request"])
        assert done.returncode == 0, done.stderr
        for signum in signals:
            node.proc.send_signal(signum)
        assert node.finish() == 0
        assert [node.line(), node.line()] == ["closed", "<eof>"]
        assert node.line(node.err) == "<eof>"
    stats = cli("stats", "--journal", str(journal), "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["by_type"] == {"sig.e": 50}


def test_a_bad_metrics_port_from_the_environment_is_a_usage_error() -> None:
    # docs/cli.md: every other option is LLMSPELL_EVENTS_<COMMAND>_<OPTION>, checked as
    # on the command line: a usage error, one line, status 2.
    result = cli(
        "serve", "--name", "e", "--listen", "tcp://127.0.0.1:0",
        env={"LLMSPELL_EVENTS_SERVE_METRICS_PORT": "70000"},
    )  # fmt: skip
    assert "--metrics-port" in one_line_error(result, 2)
    assert result.stdout == ""


def test_a_command_that_ignores_a_large_request_still_answers(tmp_path: Path) -> None:
    # docs/requests.md: the request's data arrives on the command's stdin; its stdout is
    # the reply.  A command that never reads stdin (the pipe closes under the writer) is
    # still a command that answered.
    data = tmp_path / "data.json"
    data.write_text(json.dumps("z" * 4_000_000))
    with serving("--name", "ign") as (_node, peer):
        answering = Running(
            "reply", "ign.*", "--exec", f"{sys.executable} -c 'print(41 + 1)'", "--peer", peer
        )
        try:
            assert answering.line(answering.err) == "replying to ign.* at ign"
            got = cli("req", "ign.q", f"@{data}", "--peer", peer, "--timeout", "30")
            no_traceback(got)
            assert (got.returncode, got.stdout) == (0, "42\n"), got.stderr
            assert answering.line().startswith("answered ign.q ")
        finally:
            answering.kill()


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# A command still running when `reply` stops is killed with every process it
# started (its group), never left behind.
def test_stopping_reply_leaves_no_process_of_its_command_behind(tmp_path: Path) -> None:
    script = tmp_path / "grandparent.py"
    script.write_text(GRANDPARENT)
    pids_file = tmp_path / "pids"
    pids: list[int] = []
    with serving("--name", "tree") as (_node, peer):
        answering = Running(
            "reply", "tree.*", "--exec", f"{sys.executable} {script} {pids_file}", "--peer", peer
        )
        asking = None
        try:
            assert answering.line(answering.err) == "replying to tree.* at tree"
            asking = subprocess.Popen(
                [*CLI, "req", "tree.q", "{}", "--peer", peer, "--timeout", "60"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert wait_for(pids_file.exists, WAIT), "the command never started"
            pids = [int(p) for p in pids_file.read_text().split()]
            assert answering.interrupt(signal.SIGTERM) == 0
            left = [pid for pid in pids if not wait_for(lambda pid=pid: gone(pid), WAIT)]
            assert left == [], f"processes of the --exec command outlived `reply`: {left}"
        finally:
            answering.kill()
            if asking is not None:
                asking.kill()
                asking.wait(WAIT)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        ((*SERVE, "tcp://127.0.0.1:0", "--name", ""), "--name", "non-empty"),
        (("serve", "--name", "a b", "--listen", "tcp://127.0.0.1:0"), "--name", "whitespace"),
        ((*SERVE, "tcp://127.0.0.1:0", "--record", "a..b"), "--record", "empty segment"),
        (("sub", "a.*", "--peer", "tcp://127.0.0.1:1", "--name", "x y"), "--name", "whitespace"),
        (("sub", "a.*", "--peer", "tcp://127.0.0.1:1", "--node", ""), "--node", "non-empty"),
        (("pub", "$bus.x", "--peer", "tcp://127.0.0.1:1"), "EVENT_TYPE", "reserved"),
        (("req", "a..b", "--peer", "tcp://127.0.0.1:1"), "EVENT_TYPE", "empty"),
        (("reply", "", "--exec", "cat", "--peer", "tcp://127.0.0.1:1"), "PATTERN", "empty"),
        (("query", "--journal", ".", "--type", "a.**x"), "--type", "**"),
    ],
)
def test_a_bad_name_or_topic_is_a_usage_error_naming_the_argument(
    args: tuple[str, ...], option: str, says: str
) -> None:
    # docs/cli.md "Errors and exit status": names and topics are checked before
    # anything starts, with the bus's own rules; a fault is a usage error (status 2).
    result = cli(*args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert option in lines[0], lines[0]
    assert says in lines[0], lines[0]
    assert lines[0].endswith("-h)"), lines[0]
