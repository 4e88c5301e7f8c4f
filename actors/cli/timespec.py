"""Moments on the command line: ISO 8601, or a duration ago (``10m``, ``2h``, ``3d``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

__all__ = ["MOMENT", "parse_moment"]

_AGO = re.compile(r"(?P<amount>[0-9]+(?:\.[0-9]+)?)(?P<unit>s|m|h|d|w)")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, now: datetime) -> datetime:
    """Return the moment ``text`` names, relative to ``now`` for a duration.

    ``10m`` is ten minutes before ``now`` (units s, m, h, d, w); anything else
    is ISO 8601 (``2026-12-01``, ``2026-12-01T14:00:00+01:00``), a time
    without a zone being UTC.  Raises ``ValueError`` naming what is accepted.
    """
    value = text.strip()
    ago = _AGO.fullmatch(value)
    if ago is not None:
        try:
            return now - timedelta(**{_UNITS[ago["unit"]]: float(ago["amount"])})
        except OverflowError:
            raise ValueError(f"{text!r} is further back than any date") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither ISO 8601 (2026-12-01T14:00:00Z) nor a time ago (10m, 2h, 3d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class MomentType(click.ParamType):  # type: ignore[type-arg]
    """A click parameter holding a moment (see ``parse_moment``)."""

    name = "moment"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(str(value), datetime.now(UTC))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


MOMENT = MomentType()
