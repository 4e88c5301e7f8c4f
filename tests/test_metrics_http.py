"""The metrics endpoint: ``bus.serve_metrics`` and ``serve --metrics-port``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors import EventBus, EventConfig, NodeConfig, PersistentEventBus
from actors._metrics_http import MetricsServer
from tests._support import WAIT, Collector


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], name: str, **labels: str) -> float:
    for sample in fams[name].samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[PersistentEventBus]:
    """A persistent bus with two subscriptions and a publisher running until the test ends."""
    bus = PersistentEventBus(EventConfig(persistence_path=str(tmp_path / "j")))
    bus.subscribe("load.*", Collector())
    bus.subscribe("load.**", Collector(), capacity=50_000)
    stop = threading.Event()
    started = threading.Event()

    def publish() -> None:
        n = 0
        while not stop.is_set():
            bus.publish("load.tick", n)
            n += 1
            if n == 100:
                bus.flush(timeout=WAIT)
                started.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    assert started.wait(WAIT)
    try:
        yield bus
    finally:
        stop.set()
        thread.join(WAIT)
        bus.close(timeout=WAIT)


@pytest.mark.parametrize("use_client", [True, False], ids=["prometheus_client", "text"])
def test_metrics_parse_with_prometheus_client_while_a_load_runs(
    loaded: PersistentEventBus, use_client: bool
) -> None:
    with MetricsServer(loaded, 0, use_client=use_client) as server:
        assert server.uses_client is use_client
        published = []
        # Scrape until the load shows between two scrapes (it runs throughout).
        while len(published) < 2 or published[-1] <= published[0]:
            status, ctype, text = get(server.url)
            assert status == 200
            assert ctype.startswith("text/plain")
            fams = families(text)
            published.append(value(fams, "llmspell_events_published"))
            assert fams["llmspell_events_published"].type == "counter"
        assert published[0] >= 100
        assert value(fams, "llmspell_events_journal_written") > 0
        assert value(fams, "llmspell_events_journal_write_latency_seconds") > 0
        assert value(fams, "llmspell_events_subscriptions") == 2
        latency = fams["llmspell_events_latency_seconds"]
        assert latency.type == ("summary" if use_client else "gauge")
        assert {s.labels["quantile"] for s in latency.samples} >= {"0.5", "0.9", "0.99"}
        patterns = {
            s.labels["pattern"] for s in fams["llmspell_events_subscription_queued"].samples
        }
        assert patterns == {"load.*", "load.**"}
        assert value(fams, "llmspell_events_subscription_capacity", pattern="load.**") == 50_000


def test_both_forms_export_the_same_series(tmp_path: Path) -> None:
    # docs/observability.md: "they export the same figures" (the text form had
    # a quantile="1" series the prometheus_client form did not).
    def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {
            (sample.name, tuple(sorted(sample.labels.items())))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    node = NodeConfig(name="n", listen="tcp://127.0.0.1:*")
    config = EventConfig(persistence_path=tmp_path / "j")
    with PersistentEventBus(config, node=node) as bus:
        bus.subscribe("p.*", Collector())
        for i in range(5):
            bus.publish("p.e", i)
        bus.flush(WAIT)
        forms = []
        for use_client in (True, False):
            with MetricsServer(bus, 0, use_client=use_client) as server:
                forms.append(series(get(server.url)[2]))
    client, text = forms
    assert client == text
    assert ("llmspell_events_latency_seconds", (("quantile", "0.99"),)) in text


def test_a_node_serves_its_bridge_figures() -> None:
    node = NodeConfig(name="n", listen="tcp://127.0.0.1:*")
    with EventBus(node=node) as bus, bus.serve_metrics() as server:
        fams = families(get(server.url)[2])
        assert value(fams, "llmspell_events_bridge_peers_alive") == 0
        assert value(fams, "llmspell_events_bridge_frames_dropped") == 0
        assert fams["llmspell_events_bridge_frames_sent"].type == "counter"


def test_healthz_says_ok_while_open_and_503_once_closed() -> None:
    bus = EventBus()
    server = bus.serve_metrics(0)
    try:
        assert get(f"http://127.0.0.1:{server.port}/healthz")[::2] == (200, "ok\n")
        assert get(f"http://127.0.0.1:{server.port}/nothing")[0] == 404
        bus.close(timeout=WAIT)
        assert get(f"http://127.0.0.1:{server.port}/healthz")[::2] == (503, "closed\n")
    finally:
        server.close()
        server.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
        pass


def test_a_taken_port_or_a_bad_port_is_refused() -> None:
    with EventBus() as bus, bus.serve_metrics() as first:
        with pytest.raises(OSError):
            bus.serve_metrics(first.port)
        for bad in (70_000, -1, True, 8080.0):  # a bool is no port (True would bind port 1)
            with pytest.raises(ValueError, match="port"):
                bus.serve_metrics(bad)  # type: ignore[arg-type]


@pytest.mark.slow
def test_serve_metrics_port_serves_a_running_node() -> None:
    args = ["serve", "--name", "m", "--listen", "tcp://127.0.0.1:0", "--metrics-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        lines = dict(proc.stdout.readline().strip().split(" ", 1) for _ in range(5))
        url = lines["metrics"]
        assert url.startswith("http://127.0.0.1:")
        assert get(url.replace("/metrics", "/healthz"))[::2] == (200, "ok\n")
        fams = families(get(url)[2])
        assert value(fams, "llmspell_events_bridge_peers_alive") == 0
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "closed"
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
