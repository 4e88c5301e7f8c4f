"""The correlation actor: owns a ``TraceStore`` and answers trace queries.

It receives the router's ``Record`` messages in publish order and keeps the
events that carry a correlation id, encoded (``encode_shared``: the bytes the
journal and the bridge use too, so a bus with either encodes nothing more).
``GetCorrelated`` travels through the router first, so a query sees every
event published before it.
"""

from __future__ import annotations

import time
from typing import Any

from actors._codec.events import decode_event, encode_shared
from actors._core.messages import Barrier, CorrelatedEvents, GetCorrelated, Record
from actors._model.tracestore import TraceStore, TraceStoreStatistics
from actors._runtime.dispatcher import DispatchedActor
from actors._runtime.pool import Scheduler

__all__ = ["CorrelationActor"]

# Expired traces are swept at most this often (seconds).
_SWEEP_INTERVAL = 1.0


class CorrelationActor(DispatchedActor):
    """Keep workflow traces in bounded memory (``TraceStore``)."""

    def __init__(
        self,
        *,
        dispatcher: Scheduler,
        max_traces: int,
        max_events_per_trace: int,
        trace_ttl: float | None,
        earlier: bool = False,
    ) -> None:
        super().__init__(dispatcher=dispatcher)
        # Kept as bytes (shared with the journal's and the bridge's encoding).
        # ``earlier``: the journal held events at start (see ``TraceStore``).
        self.store = TraceStore(
            max_traces,
            max_events_per_trace,
            trace_ttl,
            pack=encode_shared,
            unpack=decode_event,
            earlier=earlier,
        )
        self._next_sweep = time.monotonic() + _SWEEP_INTERVAL

    def figures(self) -> TraceStoreStatistics:
        """Return the store's size and counters (any thread).

        Reads four numbers the actor's own thread writes, none of its
        structures: each is current, together they may be a turn apart.
        """
        return self.store.statistics()

    def _on_message(self, message: Any) -> None:
        if type(message) is Record:
            add = self.store.add
            for event in message.events:
                if event.correlation_id is not None:
                    add(event)
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + _SWEEP_INTERVAL
                self.store.evict_expired()
        elif type(message) is GetCorrelated:
            events = self.store.get(message.correlation_id)
            complete = events is not None and self.store.is_complete(message.correlation_id)
            message.future.set(
                CorrelatedEvents(events or [], complete)
            )  # complete: memory lost none
        elif type(message) is Barrier:
            message.callback()
        else:
            super()._on_message(message)
