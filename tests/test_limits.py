"""The size limit of events that cross between nodes (``_cluster.limits``)."""

from __future__ import annotations

import json

import pytest

from actors import Event, EventTooLargeError
from actors._cluster.limits import FRAME_OVERHEAD, EventSizeCheck, upper_bound
from actors._codec.events import encode_event


@pytest.mark.parametrize(
    "data",
    [
        None,
        1,
        -(10**30),
        1.5e300,
        "x",
        "é" * 100,
        "\n\x00" * 50,
        [1, "a", None, 10**40, False],
        ("t", 2),
        {"k": {"n": [True]}},
        {"big": 10**50, "s": "\u2028" * 10, "f": -1.5e-300, "none": None, "l": [[["x"]]]},
    ],
)
def test_the_bound_is_never_below_the_json_text(data: object) -> None:
    assert upper_bound(data, 1 << 30) >= len(json.dumps(data))


def test_an_event_that_fits_passes_and_one_that_does_not_names_the_limit() -> None:
    check = EventSizeCheck(FRAME_OVERHEAD + 10_000)
    check(Event(event_type="a.b", data="x" * 9_000))
    with pytest.raises(EventTooLargeError, match=r"at most 10000 bytes.*max_frame_bytes=75536"):
        check(Event(event_type="a.b", data="x" * 10_001))


def test_a_loose_bound_falls_back_to_the_exact_size() -> None:
    check = EventSizeCheck(FRAME_OVERHEAD + 10_000)
    # The bound of 5,000 characters is 30,000 bytes; encoded it is about 5,000.
    event = Event(event_type="a.b", data="y" * 5_000)
    assert len(encode_event(event)) < 10_000
    check(event)
