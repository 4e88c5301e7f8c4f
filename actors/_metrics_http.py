"""An HTTP endpoint for a bus's figures: ``/metrics`` (Prometheus text) and ``/healthz``.

``EventBus.serve_metrics(port)`` starts one; so does ``llmspell-events serve
--metrics-port``.  The server runs ``http.server`` on a daemon thread of its
own and is given a small port (``MetricsSource``), never the bus.  Each
scrape asks the source for a fresh ``BusMetrics`` snapshot.

With ``prometheus_client`` installed (the ``[prometheus]`` extra) the source
is registered as a collector of a registry of its own, and the latency
quantiles are a summary; without it, ``to_prometheus`` renders the same
figures (the quantiles as a gauge with a ``quantile`` label).
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

from actors._model.metrics import (
    BRIDGE_COUNTERS,
    COUNTER_METRICS,
    METRIC_HELP,
    SUBSCRIPTION_GAUGES,
    BusMetrics,
    to_prometheus,
)

__all__ = ["CLIENT_TIMEOUT", "MetricsServer", "MetricsSource", "prometheus_client_available"]

logger = logging.getLogger("actors.metrics")

CLIENT_TIMEOUT = 10.0
"""Seconds a client may take to send its whole request (line and headers) before it is dropped."""
MAX_REQUEST_HEAD = 1 << 20
"""The most of a request's line and headers read before it is parsed (bytes).  Past
``http.server``'s own limits (a line of 64 KiB: 414 or 431; 100 headers: 431), so
those answers stay; what is past this is not read."""

PREFIX = "llmspell_events"
_TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"


class MetricsSource(Protocol):
    """What the endpoint needs of a bus."""

    @property
    def closed(self) -> bool: ...

    def metrics(self) -> BusMetrics: ...


def prometheus_client_available() -> bool:
    """Return whether ``prometheus_client`` can be imported (the ``[prometheus]`` extra)."""
    try:
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


class BusCollector:
    """A ``prometheus_client`` collector of one source's figures (one snapshot per scrape)."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415 - the [prometheus] extra
            CounterMetricFamily,
            GaugeMetricFamily,
            Metric,
        )

        m = self.source.metrics()
        for name, doc in METRIC_HELP.items():
            value = getattr(m, name)
            if name in COUNTER_METRICS:
                yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
            else:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        lat = Metric(
            f"{PREFIX}_latency_seconds",
            "Publish-to-handler latency over the recent window.",
            "summary",
        )
        for q, v in (("0.5", m.latency_p50), ("0.9", m.latency_p90), ("0.99", m.latency_p99)):
            if v is not None:
                lat.add_sample(lat.name, {"quantile": q}, v)
        yield lat
        if m.latency_max is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_latency_max_seconds",
                "Highest publish-to-handler latency in the recent window.",
                value=m.latency_max,
            )
        if m.journal_write_latency is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_journal_write_latency_seconds",
                "Mean time of one journal batch write.",
                value=m.journal_write_latency,
            )
        if m.bridge is not None:
            b = m.bridge
            for name in BRIDGE_COUNTERS:
                doc = f"ZeroMQ bridge: {name.replace('_', ' ')}."
                yield CounterMetricFamily(f"{PREFIX}_bridge_{name}", doc, value=getattr(b, name))
            yield GaugeMetricFamily(
                f"{PREFIX}_bridge_peers_alive",
                "Peers heard within the heartbeat timeout.",
                value=len(b.peers_alive),
            )
        for stat in SUBSCRIPTION_GAUGES:
            family = GaugeMetricFamily(
                f"{PREFIX}_subscription_{stat}",
                f"Per-subscription {stat}.",
                labels=["id", "pattern"],
            )
            for s in m.per_subscription:
                family.add_metric([s.id, s.pattern], int(getattr(s, stat)))
            yield family


class MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` for ``source`` on ``host:port`` until ``close``.

    ``port=0`` picks a free port (read it back from ``port``).  ``/healthz``
    answers 200 ``ok`` while the source is open, 503 ``closed`` after.
    ``use_client`` forces (True) or avoids (False) ``prometheus_client``;
    None uses it when installed.  Raises ``OSError`` when the port is taken.
    Usable as a context manager.
    """

    def __init__(
        self,
        source: MetricsSource,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        use_client: bool | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, not {port!r}")
        self.source = source
        client = prometheus_client_available() if use_client is None else use_client
        self.render = self._client_renderer() if client else self._text_renderer()
        self.uses_client = client
        self._http = _Server((host, port), _handler_for(self))
        address = self._http.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(
            target=self._http.serve_forever, name=f"metrics-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Return the URL of ``/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def _text_renderer(self) -> Any:
        def render() -> tuple[bytes, str]:
            return to_prometheus(self.source.metrics(), prefix=PREFIX).encode(), _TEXT_0_0_4

        return render

    def _client_renderer(self) -> Any:
        from prometheus_client import (  # noqa: PLC0415 - the [prometheus] extra
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            generate_latest,
        )

        registry = CollectorRegistry(auto_describe=False)
        registry.register(BusCollector(self.source))

        def render() -> tuple[bytes, str]:
            return generate_latest(registry), CONTENT_TYPE_LATEST

        return render

    def close(self) -> None:
        """Stop serving and free the port.  Idempotent; blocks until the thread ended."""
        if self._thread.is_alive():
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a request still running never holds up the process's exit
    # socketserver's default backlog is 5: a burst of scrapers and probes past
    # it waits on TCP's retries (1 s, 3 s, ...) before it is even accepted.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a client that went away
        # (reset, closed mid-answer) is its own business, anything else a warning.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.debug("metrics client %s went away: %r", client_address, exc)
        else:
            logger.warning("metrics request from %s failed", client_address, exc_info=exc)


def _read_head(conn: socket.socket, deadline: float) -> bytes:
    """Read a request's line and headers by ``deadline``; what came by then, if it did not end.

    A whole-request deadline, not a per-read timeout: a client dripping a
    byte at a time cannot hold its thread past ``CLIENT_TIMEOUT``.
    """
    head = bytearray()
    line_seen = False
    while len(head) < MAX_REQUEST_HEAD:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send its request in time")
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            break
        tail = bytes(head[-3:]) + chunk  # only what came now can end the head
        head += chunk
        if b"\r\n\r\n" in tail or b"\n\n" in tail:
            break
        if not line_seen and b"\n" in chunk:
            line_seen = True
            if len(head.split(b"\n", 1)[0].split()) < 3:  # HTTP/0.9: no headers follow
                break
    return bytes(head)


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        head = False  # answering a HEAD: the headers of the GET, no body
        # A client that sends nothing (or no end of headers) is dropped after
        # this many seconds instead of holding its thread and socket for ever.
        timeout = CLIENT_TIMEOUT

        def setup(self) -> None:
            super().setup()
            # The request is parsed from memory once its head has come whole.
            try:
                head = _read_head(self.connection, time.monotonic() + CLIENT_TIMEOUT)
            except OSError as exc:  # too slow, or gone: dropped without an answer
                logger.debug("metrics client %s dropped: %r", self.client_address, exc)
                head = b""
            self.connection.settimeout(CLIENT_TIMEOUT)  # for the answer's writes
            self.rfile = io.BytesIO(head)

        def do_HEAD(self) -> None:
            self.head = True
            self.do_GET()

        def __getattr__(self, name: str) -> Any:
            # http.server looks up ``do_<METHOD>``: every method but GET and
            # HEAD (TRACE, CONNECT, a made-up one, a lower-case "get") is a 405.
            if name.startswith("do_"):
                return self._not_allowed
            raise AttributeError(name)

        def _not_allowed(self) -> None:
            body = b"only GET and HEAD\n"
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body, ctype = server.render()
                except Exception:
                    logger.exception("rendering /metrics failed")
                    self._reply(500, b"metrics unavailable\n", "text/plain; charset=utf-8")
                    return
                self._reply(200, body, ctype)
            elif path == "/healthz":
                closed = server.source.closed
                body = b"closed\n" if closed else b"ok\n"
                self._reply(503 if closed else 200, body, "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not self.head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("metrics %s - " + format, self.address_string(), *args)

    return Handler
