"""Observability at the edges: reads that must not hold an event loop, answers that
must not crash a reader, and exposition that must stay one series per label set."""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid

import pytest

from actors import AsyncEventBus, BridgeError, Event, EventBus, FrameError, NodeConfig
from actors._core import router_reads
from actors._model.config import MIN_FRAME_BYTES
from actors._model.metrics import BusMetrics
from actors._model.metrics_json import metrics_from_json, metrics_to_json
from tests._support import WAIT, run_python, tracer_provider, wait_for
from tests.test_ops_edges import _router_held
from tests.test_top import WAIT as TERMINAL_WAIT
from tests.test_top import Terminal, _metrics


def test_async_metrics_and_dead_letters_do_not_hold_the_loop_behind_a_held_router(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``AsyncEventBus.metrics()`` asked the router as the sync bus does and waited
    up to its 10 s on the event loop.  It now waits at most ``LOOP_ASK_TIMEOUT``,
    then gives the last figures, as the sync bus does past its 10 s."""
    monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 3600.0)  # waiting for it would hang

    def failing(event: Event) -> None:
        raise RuntimeError("no")

    with _router_held() as (bus, entered, hold):
        bus.subscribe("f.*", failing)
        bus.publish("f.x", 1)
        for i in range(3):
            bus.publish("s.e", i).get(timeout=WAIT)
        bus.flush(WAIT)
        # Four, and the dead letter's announcement.
        assert (bus.metrics().published, len(bus.dead_letters())) == (5, 1)
        bus.publish("s.e", "slow")
        assert entered.wait(WAIT)
        abus = AsyncEventBus(bus=bus)

        async def read() -> tuple[int, int]:
            return abus.metrics().published, len(abus.dead_letters())

        try:
            assert asyncio.run(read()) == (5, 1)  # the last answer: stale, never lower
        finally:
            hold.set()
        bus.flush(WAIT)
        assert asyncio.run(read()) == (6, 1)  # the router answered: fresh again


def test_a_loop_reader_giving_up_does_not_make_a_threads_reader_stale() -> None:
    """A reader on a loop waits 0.25 s; one that gave up must not make readers on
    threads take the last figures at once (the overdue ask is theirs only after
    their own 10 s): a thread's reader still gets figures counting what it published."""
    with _router_held() as (bus, entered, hold):
        bus.publish("s.e", 1).get(timeout=WAIT)
        bus.flush(WAIT)
        assert bus.metrics().published == 1
        bus.publish("s.e", "slow")
        assert entered.wait(WAIT)
        abus = AsyncEventBus(bus=bus)

        async def read() -> int:
            return abus.metrics().published

        assert asyncio.run(read()) == 1  # gave up: the last figures
        inbox = bus.core.router.actor_inbox
        waiting = len(inbox)  # the loop reader's ask, behind the held turn

        def release() -> None:  # once the thread's reader has asked too
            wait_for(lambda: len(inbox) > waiting)
            hold.set()

        threading.Thread(target=release, daemon=True).start()
        assert bus.metrics().published == 2  # before: 1, the last figures at once


def test_async_metrics_of_a_node_do_not_hold_the_loop_behind_a_held_bridge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node's figures include its bridge's, asked of its I/O thread: held (a long
    collection, a huge answer decoded), ``AsyncEventBus.metrics()`` held the loop
    for 10 s, then raised ``TimeoutError``.  It now gives the bridge's last figures
    after ``LOOP_ASK_TIMEOUT``, as it does the router's; and a thread's reader past
    its own wait gets them too, not an error."""
    node = NodeConfig(name="held", listen="tcp://127.0.0.1:*")
    with EventBus(node=node) as bus:
        assert bus.node is not None
        seen = bus.metrics().bridge  # the figures the bridge last gave
        assert seen is not None
        gate, held = threading.Event(), threading.Event()

        def hold() -> None:  # until released below, however long the readers wait
            held.set()
            gate.wait()

        bus.node.call_soon(hold)
        assert held.wait(WAIT)
        abus = AsyncEventBus(bus=bus)

        async def read() -> object:
            return abus.metrics().bridge

        try:
            monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 3600.0)  # waiting would hang
            assert asyncio.run(read()) == seen  # before: 10 s, then TimeoutError
            monkeypatch.setattr(router_reads, "ASK_TIMEOUT", 0.01)
            assert bus.metrics().bridge == seen  # a thread's reader past its wait
        finally:
            gate.set()


@pytest.mark.slow
def test_top_fails_at_once_when_the_node_refuses_its_figures() -> None:
    """``--timeout`` covers reaching the node and reading its first figures; a node
    whose answer was refused (larger than its frames) kept ``top`` blank for a whole
    ``--interval`` more, then said it "did not answer"."""
    bus = EventBus(
        node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*", max_frame_bytes=MIN_FRAME_BYTES)
    )
    try:
        for i in range(400):  # an answer past its frame size
            bus.subscribe(f"topic{i}.*", lambda event: None)
        peer = str(bus.endpoints["request"])
        args = ["top", "--peer", peer, "--timeout", "30", "--interval", "3600"]
        term = Terminal([sys.executable, "-m", "actors", *args])
        try:
            term.wait_for(r"<eof>")  # before: an hour
            assert term.proc.wait(TERMINAL_WAIT) == 1
            assert "node 'hub' refused its figures" in term.text
        finally:
            term.close()
    finally:
        bus.close(timeout=WAIT)


@pytest.mark.parametrize(
    ("where", "value"),
    [("published", "many"), ("published", None), ("published", True), ("latency_p50", "x")],
)
def test_figures_of_the_wrong_type_are_a_bridge_error(where: str, value: object) -> None:
    raw = metrics_to_json(_figures())
    raw[where] = value
    with pytest.raises(BridgeError, match=f"malformed BusMetrics: {where}"):
        metrics_from_json(raw)
    raw = metrics_to_json(_figures())
    raw["per_subscription"][0]["delivered"] = "7"
    with pytest.raises(BridgeError, match="malformed SubscriptionStatistics: delivered"):
        metrics_from_json(raw)
    assert metrics_from_json(metrics_to_json(_figures())) == _figures()


def _figures() -> BusMetrics:
    return _metrics(10, 5, 1)


_LATE_PROVIDER = """
import uuid
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from actors import EventBus
from actors.otel import instrument
with EventBus() as bus:
    instrument(bus)  # the global provider is still OpenTelemetry's stand-in here
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the application sets up the SDK after
    bus.subscribe("w.a", lambda event: bus.publish("w.b", {}))
    bus.subscribe("w.b", lambda event: None)
    cid = uuid.uuid4()
    bus.publish("w.a", {}, correlation_id=cid)
    bus.flush(30)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root, child = spans["w.a"], spans["w.b"]
    print(root.context.trace_id == cid.int, child.parent.span_id == root.context.span_id)
"""


def test_a_global_provider_set_after_instrument_still_gives_the_derived_ids() -> None:
    """In a process of its own: the global provider is set once per process."""
    result = run_python(_LATE_PROVIDER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]  # before: False False


_WITHOUT_OTEL = """
import sys, uuid
sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
from actors import EventBus
try:
    import actors.otel
except ImportError as exc:
    print(exc)
with EventBus() as bus:
    cid = uuid.uuid4()
    bus.publish("a.b", {}, correlation_id=cid).get(30)
    try:
        bus.trace(cid).to_otel()
    except ImportError as exc:
        print(exc)
"""


def test_without_opentelemetry_the_error_names_the_extra() -> None:
    result = run_python(_WITHOUT_OTEL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install 'llmspell-events[otel]'" in line for line in lines), lines


def test_to_otel_makes_a_root_of_the_event_closing_a_causation_cycle() -> None:
    """Events with forged ids can name each other as causes; ``render`` breaks the
    cycle at its head, and the exported spans named each other as parents."""
    cid, a, b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with EventBus() as bus:
        bus.publish(Event(event_type="c.a", id=a, causation_id=b, correlation_id=cid))
        bus.publish(Event(event_type="c.b", id=b, causation_id=a, correlation_id=cid))
        bus.flush(WAIT)
        provider, sink = tracer_provider()
        assert bus.trace(cid).to_otel(provider) == 2
    spans = {s.name: s for s in sink.spans}
    assert spans["c.a"].parent is None  # the cycle's head, as render shows it
    assert spans["c.b"].parent.span_id == spans["c.a"].context.span_id


def test_top_fails_at_once_on_figures_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md: figures that are not what a node sends are a one-line error at
    once; ``top`` took them for silence and asked again until ``--timeout``."""
    import dataclasses  # noqa: PLC0415

    import click  # noqa: PLC0415

    from actors._cluster import request_io  # noqa: PLC0415
    from actors.cli import top  # noqa: PLC0415

    answer = request_io.metrics_answer
    monkeypatch.setattr(  # a node sending a string where a count goes
        request_io,
        "metrics_answer",
        lambda metrics, heard: answer(dataclasses.replace(metrics, published="many"), heard),
    )

    class Screen:
        def __init__(self, **_: object) -> None:
            pass

        def __enter__(self) -> Screen:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def update(self, *_: object, **__: object) -> None:
            pass

    with EventBus(node=NodeConfig(name="hub", listen="tcp://127.0.0.1:*")) as hub:
        peer = str(hub.endpoints["request"])
        with EventBus(node=NodeConfig(name="asker", peers=(peer,))) as asker:
            assert asker.wait_for_peers(["hub"], WAIT)
            with pytest.raises(click.ClickException, match="sent figures top cannot read"):
                top._watch(asker, "hub", timeout=3600, interval=1.0, console=None, live_cls=Screen)  # noqa: SLF001


def test_a_figure_no_float_can_hold_is_a_frame_error() -> None:
    from actors._model.metrics_json import metrics_answer, metrics_from_answer  # noqa: PLC0415

    answer = metrics_answer(_figures(), {"b": 0.5})
    forged = Event(event_type=answer.event_type, data={**answer.data, "heard": {"b": 10**400}})  # type: ignore[dict-item]
    with pytest.raises(FrameError, match="malformed metrics answer"):
        metrics_from_answer([forged])
