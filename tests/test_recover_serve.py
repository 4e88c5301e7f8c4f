"""A persistent origin answering recovery requests (``_cluster.bridge_io.serve_recover``).

A recovery request comes from any peer, unauthenticated without CURVE: one
asking for a range whose records match nothing made the origin read its
whole journal in one answer.  Each answer now reads at most ``RECOVER_SCAN``
records and tells the asker where to go on (``scanned``); followed answer
by answer, the requests still find every matching event.  A real journal in
``tmp_path``; the node is reduced to the two things an answer uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors import Event, EventBus, EventConfig, EventQuery
from actors._cluster import bridge_io


@dataclass
class _Journal:
    """The bus's own journal, counting the records each answer reads."""

    bus: EventBus
    read_records: int = 0

    def read(self, query: EventQuery, timeout: float | None) -> list[Event]:
        page = self.bus.query(query)
        self.read_records += len(page)
        return page


@dataclass
class _Node:
    name: str
    journal: _Journal


def _answer(node: _Node, after: int, upto: int) -> tuple[list[int], dict[str, Any]]:
    body = {"after": after, "upto": upto, "prefixes": ["job."]}
    pieces, reply = bridge_io.serve_recover(node, None, body)  # type: ignore[arg-type]
    return [seq for seq, _ in pieces], reply


def test_an_answer_reads_at_most_recover_scan_records_and_the_asker_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge_io, "RECOVER_SCAN", 2500)
    with EventBus(EventConfig(persistence_path=tmp_path / "j"), name="a") as bus:
        # 6,000 records that match nothing, with a matching one at 10, 3000 and 5999.
        events = [
            Event(event_type="job.run" if i in (10, 3000, 5999) else "noise.x", data=i)
            for i in range(1, 6001)
        ]
        for start in range(0, len(events), 1000):
            bus.publish_many(events[start : start + 1000])
        bus.flush(30)
        journal = _Journal(bus)
        node = _Node("a", journal)
        found: list[int] = []
        after, answers = 0, 0
        while True:
            journal.read_records = 0
            seqs, reply = _answer(node, after, 6000)
            answers += 1
            assert journal.read_records <= 2500 + 1000  # the cap, checked before each page
            found += seqs
            if reply["complete"]:
                break
            assert after < reply["scanned"] < 6000  # the asker goes on from there
            after = reply["scanned"]
        assert found == [10, 3000, 5999]
        assert answers == 2  # 3,000 records each: the cap is checked between pages of 1,000


def test_an_answer_that_reached_its_limit_of_events_still_says_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge_io, "RECOVER_LIMIT", 4)
    with EventBus(EventConfig(persistence_path=tmp_path / "j"), name="a") as bus:
        bus.publish_many([Event(event_type="job.run", data=i) for i in range(10)])
        bus.flush(30)
        seqs, reply = _answer(_Node("a", _Journal(bus)), 0, 10)
        assert seqs == [1, 2, 3, 4]
        assert (reply["complete"], reply["scanned"]) == (False, 4)
