"""The metrics endpoint under hostile and racing clients: concurrent scrapers while
events flow, scrapes across ``bus.close()`` and ``server.close()``, stalled and
trickling clients, clients that reset, garbage, taken ports and the bound address.

Real buses and real sockets on 127.0.0.1; every wait is bounded by ``WAIT`` (reaching
a bound is a hang, hence a failure).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import random
import re
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import actors._metrics_http as metrics_http
from actors import EventBus, EventConfig, NodeConfig, PersistentEventBus
from actors._metrics_http import CLIENT_TIMEOUT, MetricsServer
from tests._support import WAIT, Collector, finished, in_background, wait_for

FORMS = pytest.mark.parametrize("use_client", [True, False], ids=["prometheus_client", "text"])

# Patterns whose characters mean something in the exposition format, or are control
# characters the topic grammar allows (it refuses only whitespace and . * ? [ ] { }).
AWKWARD_PATTERNS = [
    'q"uote.*',
    "back\\slash.**",
    'tail\\.x"\\',
    "\\n.lit",
    "nul\x00.\x1bx.\x7f\x01",
    "a,b=c.#d",
    "日本.é",
]


# -- small HTTP clients ------------------------------------------------------------------------


def raw(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``request`` and return everything answered until the server closed."""
    with socket.create_connection((host, port), timeout=WAIT) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except TimeoutError:
            pytest.fail(f"no answer and no close within {WAIT} s to {request[:60]!r}")
    return data


def split_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def scrape(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    """GET ``path``; check the body is exactly as long as announced."""
    status, headers, body = split_reply(raw(port, f"GET {path} HTTP/1.0\r\n\r\n".encode()))
    assert int(headers["content-length"]) == len(body), (headers, len(body))
    return status, body


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def monotonic_figures(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every series that may only rise: the counters and the per-subscription counts."""
    out = {}
    for fam in text_string_to_metric_families(text):
        rising = fam.type == "counter" or fam.name in {
            f"llmspell_events_subscription_{s}" for s in ("delivered", "dropped", "errors")
        }
        if rising:
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def handler_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "process_request_thread" in t.name}


# -- a strict reading of the text format (version 0.0.4) --------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABEL = rf"[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE}"
VALUE = r"(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
SAMPLE = re.compile(rf"({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*,?)?\}})? ({VALUE})(?: -?\d+)?")
HELP = re.compile(rf"# HELP ({NAME}) (?:[^\\\n]|\\[\\n])*")
TYPE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|summary|histogram|untyped)")
SUFFIXES = {
    "counter": ("", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "untyped": ("",),
}


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


def strict_parse(text: str) -> dict[str, list[tuple[dict[str, str], str]]]:
    """Check ``text`` line by line; return each family's samples (labels, value)."""
    assert text.endswith("\n"), text[-80:]
    typed: dict[str, str] = {}
    helped: set[str] = set()
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    out: dict[str, list[tuple[dict[str, str], str]]] = {}
    current: str | None = None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {n}: {line!r}"
        if line.startswith("# HELP "):
            m = HELP.fullmatch(line)
            assert m, where
            assert m.group(1) not in helped, f"second HELP, {where}"
            helped.add(m.group(1))
        elif line.startswith("# TYPE "):
            m = TYPE.fullmatch(line)
            assert m, where
            assert m.group(1) not in typed, f"second TYPE, {where}"
            typed[m.group(1)] = m.group(2)
            current = m.group(1)
            out[current] = []
        else:
            m = SAMPLE.fullmatch(line)
            assert m, f"not a sample, {where}"
            assert current is not None, f"a sample before any TYPE, {where}"
            name = m.group(1)
            assert any(name == current + s for s in SUFFIXES[typed[current]]), (
                f"a sample outside its family {current}, {where}"
            )
            labels: dict[str, str] = {}
            for lm in re.finditer(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})", m.group(2) or ""):
                assert lm.group(1) not in labels, f"a label twice, {where}"
                labels[lm.group(1)] = unescape(lm.group(2))
            key = (name, tuple(sorted(labels.items())))
            assert key not in series, f"a series twice, {where}"
            series.add(key)
            out[current].append((labels, m.group(3)))
    return out


# -- fixtures -----------------------------------------------------------------------------------


class Flow:
    """A publisher thread on ``bus``; ``count`` is how many events it has published."""

    def __init__(self, bus: EventBus, event_type: str = "flow.tick") -> None:
        self.bus = bus
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(event_type,), daemon=True)
        self.thread.start()

    def _run(self, event_type: str) -> None:
        while not self.stop.is_set():
            try:
                self.bus.publish(event_type, self.count)
            except Exception:  # the bus closed under it
                return
            self.count += 1

    def advanced(self, since: int) -> bool:
        return wait_for(lambda: self.count > since)

    def end(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def flowing(tmp_path: Path) -> Iterator[tuple[PersistentEventBus, Flow]]:
    """A journaled bus with three subscriptions (one with an awkward pattern) and a flow."""
    bus = PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j"), threads=2))
    bus.subscribe("flow.*", Collector())
    bus.subscribe("flow.**", Collector(), capacity=100_000)
    bus.subscribe('q"uote.*', Collector())
    flow = Flow(bus)
    assert flow.advanced(100)
    try:
        yield bus, flow
    finally:
        flow.end()
        bus.close(timeout=WAIT)


# -- the format ---------------------------------------------------------------------------------


@FORMS
def test_every_line_of_a_node_with_a_journal_and_awkward_patterns_is_strict_text(
    tmp_path: Path, use_client: bool
) -> None:
    """Each line is a HELP, a TYPE or a sample of the family last declared; one TYPE
    and one HELP per family; no series twice; label values escaped so that they read
    back as the patterns subscribed, control characters included."""
    node = NodeConfig(name="strict", listen="tcp://127.0.0.1:*")
    config = EventConfig(persistence_path=str(tmp_path / "j"), threads=2)
    with PersistentEventBus(config, node=node) as bus:
        subs = {bus.subscribe(p, Collector()).id: p for p in AWKWARD_PATTERNS}
        bus.publish('q"uote.x').get(timeout=WAIT)
        bus.flush(WAIT)
        with MetricsServer(bus, 0, use_client=use_client) as server:
            status, body = scrape(server.port)
    assert status == 200
    parsed = strict_parse(body.decode("utf-8"))
    for stat in ("delivered", "queued", "capacity", "in_flight"):
        samples = parsed[f"llmspell_events_subscription_{stat}"]
        assert {labels["id"]: labels["pattern"] for labels, _ in samples} == subs
    samples = parsed["llmspell_events_subscription_delivered"]
    delivered = {labels["pattern"]: float(v) for labels, v in samples}
    assert delivered['q"uote.*'] == 1
    assert sum(delivered.values()) == 1
    assert "llmspell_events_bridge_peers_alive" in parsed
    assert float(parsed["llmspell_events_published_total"][0][1]) >= 1
    # The reference parser reads the same label values.
    fams = families(body.decode())
    got = {s.labels["pattern"] for s in fams["llmspell_events_subscription_queued"].samples}
    assert got == set(AWKWARD_PATTERNS)


# -- concurrent scrapers ------------------------------------------------------------------------


@FORMS
def test_concurrent_scrapers_see_only_rising_counters_while_events_flow(
    flowing: tuple[PersistentEventBus, Flow], use_client: bool
) -> None:
    """Six scrapers at once, each waiting for the flow to move between its scrapes:
    every scrape is a 200 that parses strictly, and no counter (nor a subscription's
    delivered, dropped or errors) is ever lower than the same scraper saw before."""
    bus, flow = flowing
    scrapers, rounds = 6, 4
    barrier = threading.Barrier(scrapers, timeout=WAIT)
    with MetricsServer(bus, 0, use_client=use_client) as server:

        def scraper() -> list[dict[Any, float]]:
            seen = []
            barrier.wait()
            for _ in range(rounds):
                before = flow.count
                status, body = scrape(server.port)
                assert status == 200
                text = body.decode()
                strict_parse(text)
                seen.append(monotonic_figures(text))
                assert flow.advanced(before), "the flow stopped"
            return seen

        runs = [in_background(scraper) for _ in range(scrapers)]
        results = [finished(*run) for run in runs]
    for seen in results:
        assert not isinstance(seen, BaseException), repr(seen)
        assert len(seen) == rounds
        for earlier, later in itertools.pairwise(seen):
            lower = {k: (v, later.get(k)) for k, v in earlier.items() if later.get(k, -1) < v}
            assert lower == {}, f"figures went down (or vanished) between scrapes: {lower}"
        published = [s[("llmspell_events_published_total", ())] for s in seen]
        assert published[-1] > published[0], published


# -- closing ------------------------------------------------------------------------------------


def test_scrapes_across_bus_close_stay_answered_and_never_go_back(
    flowing: tuple[PersistentEventBus, Flow],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Scrapers keep going while the bus closes under its flow: every /metrics is a 200,
    counters never fall, /healthz goes from 200 to 503 and never back, and nothing is
    logged at WARNING or above nor printed as a traceback."""
    bus, _flow = flowing
    caplog.set_level(logging.WARNING, logger="actors.metrics")
    closed = threading.Event()
    scrapers = 4
    ready = threading.Barrier(scrapers + 1, timeout=WAIT)
    server = bus.serve_metrics(0)
    try:

        def scraper() -> tuple[list[dict[Any, float]], list[int]]:
            seen, health = [], []
            after = 0
            for i in range(10_000):
                if i == 2:
                    ready.wait()
                if closed.is_set():
                    after += 1
                    if after > 3:
                        break
                status, body = scrape(server.port)
                assert status == 200
                seen.append(monotonic_figures(body.decode()))
                health.append(scrape(server.port, "/healthz")[0])
            return seen, health

        runs = [in_background(scraper) for _ in range(scrapers)]
        ready.wait()
        bus.close(timeout=WAIT)
        closed.set()
        results = [finished(*run) for run in runs]
    finally:
        server.close()
    for result in results:
        assert not isinstance(result, BaseException), repr(result)
        seen, health = result
        for earlier, later in itertools.pairwise(seen):
            lower = {k: (v, later[k]) for k, v in earlier.items() if later.get(k, v) < v}
            assert lower == {}, f"figures went down across close(): {lower}"
            # A subscription's series ends with it; the bus's counters stay.
            assert {k for k in earlier if not k[1]} <= set(later)
        assert set(health) <= {200, 503}
        assert health[-1] == 503
        first_closed = health.index(503)
        assert set(health[first_closed:]) == {503}, health
    assert [r for r in caplog.records if r.name == "actors.metrics"] == []
    assert "Traceback" not in capfd.readouterr().err


def test_scrapes_racing_server_close_get_a_whole_answer_or_a_refusal() -> None:
    """While scrapers hammer the endpoint, ``close()`` returns; each scrape then was a
    whole 200 that parses, or a connection error: never a cut body, never a hang. Once
    ``close()`` returned the port refuses every scraper."""
    with EventBus() as bus:
        bus.subscribe("x.*", Collector())
        server = bus.serve_metrics(0)
        port = server.port
        closed = threading.Event()
        scrapers = 6
        ready = threading.Barrier(scrapers + 1, timeout=WAIT)

        def scraper() -> tuple[int, list[str]]:
            answered, refusals = 0, []
            for i in range(100_000):
                if i == 2:
                    ready.wait()
                done = closed.is_set()
                try:
                    reply = raw(port, b"GET /metrics HTTP/1.0\r\n\r\n")
                except OSError as exc:
                    refusals.append(type(exc).__name__)
                    if done:
                        break
                    continue
                if reply:  # an accepted connection dropped by the stop may read empty
                    status, headers, body = split_reply(reply)
                    assert status == 200
                    assert int(headers["content-length"]) == len(body)
                    strict_parse(body.decode())
                    answered += 1
                assert not done, "a scrape was answered after close() returned"
            return answered, refusals

        runs = [in_background(scraper) for _ in range(scrapers)]
        ready.wait()
        closing = in_background(server.close)
        assert finished(*closing) is None
        closed.set()
        results = [finished(*run) for run in runs]
    for result in results:
        assert not isinstance(result, BaseException), repr(result)
        answered, refusals = result
        assert answered >= 2
        assert refusals[-1] == "ConnectionRefusedError", refusals


def test_close_does_not_wait_for_stalled_clients_and_scrapes_pass_them() -> None:
    """Clients that send nothing, half a request line, or headers without their end
    hold no scrape up, and ``close()`` returns while they are still connected (it does
    not wait out their ``CLIENT_TIMEOUT``); then the port is free."""
    with EventBus() as bus:
        server = bus.serve_metrics(0)
        before = handler_threads()
        stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)]
        for partial in (b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"G"):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
            s.sendall(partial)
            stalled.append(s)
        try:
            # Accepted one after another: once this answer came, all four are being served.
            for _ in range(5):
                status, body = scrape(server.port)
                assert status == 200
                strict_parse(body.decode())
            assert scrape(server.port, "/healthz") == (200, b"ok\n")
            assert len(handler_threads() - before) >= len(stalled)
            assert finished(*in_background(server.close), timeout=CLIENT_TIMEOUT) is None
            for s in stalled:
                s.setblocking(False)
                with pytest.raises(BlockingIOError):
                    s.recv(1)  # still connected, not answered nor closed
        finally:
            for s in stalled:
                s.close()
            server.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT).close()


def test_a_client_trickling_its_request_is_dropped_after_client_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/observability.md: "A client that has not sent its whole request within
    ``CLIENT_TIMEOUT`` is dropped".  A client sending a byte now and then, each gap
    shorter than the timeout but the whole request far longer, must be dropped too."""
    timeout = 0.2
    monkeypatch.setattr(metrics_http, "CLIENT_TIMEOUT", timeout)
    pace = threading.Event()  # never set: its wait paces the client
    with EventBus() as bus, MetricsServer(bus, 0) as server:
        request = b"GET /healthz HTTP/1.0\r\n\r\n"
        answer = b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as s:
            try:
                for i in range(0, len(request), 2):
                    s.sendall(request[i : i + 2])
                    pace.wait(timeout * 0.4)  # ~13 gaps: the request takes > 2.5 x timeout
                while chunk := s.recv(4096):
                    answer += chunk
            except OSError:
                pass  # dropped
        assert not answer.startswith(b"HTTP/1.0 200"), (
            f"a request sent in {len(request) // 2 + 1} pieces {timeout * 0.4:.2f} s apart "
            f"(CLIENT_TIMEOUT {timeout} s) was answered: {answer[:40]!r}"
        )


def test_an_http_0_9_request_line_is_answered_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request line without a version (HTTP/0.9: no headers follow) ends the request.

    Before, the server waited for a blank line that never comes and answered
    only at ``CLIENT_TIMEOUT``; set far past the client's wait here.
    """
    monkeypatch.setattr(metrics_http, "CLIENT_TIMEOUT", 3600.0)
    with EventBus() as bus, MetricsServer(bus, 0) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as s:
            s.sendall(b"GET /hea")  # the line in two pieces: the end is found when it comes
            s.sendall(b"lthz\r\n")
            answer = b""
            try:
                while chunk := s.recv(4096):
                    answer += chunk
            except TimeoutError:
                pytest.fail(f"an HTTP/0.9 request was not answered within {WAIT} s")
        status, _ = scrape(server.port, "/healthz")
    assert status == 200
    assert answer, "closed without an answer"
    assert not answer.startswith(b"HTTP/"), answer[:60]  # HTTP/0.9: the body alone
    assert b"ok" in answer.lower(), answer[:60]


def test_scrapers_that_reset_their_connection_leave_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A scraper that gives up (closes with a reset before reading its answer) is the
    scraper's business: the endpoint goes on answering and prints no traceback."""
    with EventBus() as bus:
        for i in range(50):
            bus.subscribe(f"reset{i}.*", Collector())
        with bus.serve_metrics(0) as server:
            capfd.readouterr()
            before = handler_threads()
            for _ in range(20):
                c = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
                c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            # Accepted in order: once this is answered, every reset one has its thread.
            assert scrape(server.port)[0] == 200
            for t in handler_threads() - before:
                t.join(WAIT)
                assert not t.is_alive()
            assert scrape(server.port, "/healthz") == (200, b"ok\n")
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]


def test_garbage_from_many_clients_at_once_leaves_scrapes_answered(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Clients sending random bytes (each ended by a blank line, and read to the end) at
    the same time as scrapers: each garbage client gets an error or nothing, never a
    200; every scrape is a 200 that parses; no traceback is printed."""
    with EventBus() as bus, bus.serve_metrics(0) as server:
        bus.subscribe("g.*", Collector())
        barrier = threading.Barrier(8, timeout=WAIT)

        def garbage(seed: int) -> list[bytes]:
            rng = random.Random(seed)
            barrier.wait()
            firsts = []
            for _ in range(15):
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
                reply = raw(server.port, junk.replace(b"\n", b" ") + b"\r\n\r\n")
                firsts.append(reply[:12])
            return firsts

        def scraper() -> int:
            barrier.wait()
            for _ in range(15):
                status, body = scrape(server.port)
                assert status == 200
                strict_parse(body.decode())
            return 15

        runs = [in_background(functools.partial(garbage, s)) for s in range(4)]
        runs += [in_background(scraper) for _ in range(4)]
        results = [finished(*run) for run in runs]
    for result in results[:4]:
        assert isinstance(result, list), repr(result)
        assert not any(r.startswith(b"HTTP/1.0 200") for r in result), result
    assert results[4:] == [15] * 4
    assert "Traceback" not in capfd.readouterr().err


# -- ports and addresses ------------------------------------------------------------------------


def test_a_taken_port_is_an_address_in_use_error_and_the_holder_keeps_serving() -> None:
    """Another server of the same bus, or a plain listener, on the port: ``OSError``
    with ``EADDRINUSE``; the server that holds it still answers."""
    with EventBus() as bus, bus.serve_metrics(0) as first:
        with pytest.raises(OSError) as taken:
            bus.serve_metrics(first.port)
        assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as taken_client:
            MetricsServer(bus, first.port, use_client=False)
        assert taken_client.value.errno == errno.EADDRINUSE
        assert scrape(first.port, "/healthz") == (200, b"ok\n")
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            with pytest.raises(OSError) as foreign:
                bus.serve_metrics(listener.getsockname()[1])
            assert foreign.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError):  # not an address of this machine
            bus.serve_metrics(0, host="192.0.2.1")
        assert scrape(first.port)[0] == 200


def test_the_endpoint_listens_only_on_the_address_it_was_given() -> None:
    """By default 127.0.0.1 only: another loopback address (127.0.0.2) is refused on
    the same port; given 127.0.0.2 it answers there and 127.0.0.1 refuses."""
    with EventBus() as bus:
        with bus.serve_metrics(0) as default:
            assert default.host == "127.0.0.1"
            assert default.url == f"http://127.0.0.1:{default.port}/metrics"
            assert scrape(default.port, "/healthz") == (200, b"ok\n")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.2", default.port), timeout=WAIT).close()
        with bus.serve_metrics(0, host="127.0.0.2") as other:
            assert other.url.startswith("http://127.0.0.2:")
            reply = raw(other.port, b"GET /healthz HTTP/1.0\r\n\r\n", host="127.0.0.2")
            assert split_reply(reply)[::2] == (200, b"ok\n")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", other.port), timeout=WAIT).close()
