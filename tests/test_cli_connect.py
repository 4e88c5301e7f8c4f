"""Short-lived nodes and read-only journals (``actors/cli/connect.py``)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from actors import EventQuery, generate_keypair
from actors.cli.connect import no_answer, open_journal
from actors.cli.options import Connection, Keys
from tests._cli_support import make_journal


def connection(keys: Keys | None = None) -> Connection:
    return Connection("tcp://127.0.0.1:5701", None, None, keys, None, 3.0)


def test_a_journal_opens_for_reading(tmp_path: Path) -> None:
    make_journal(tmp_path / "j")
    bus = open_journal(str(tmp_path / "j"))
    try:
        assert len(bus.query(EventQuery())) == 4
    finally:
        bus.close(timeout=10)


def test_a_folder_without_a_journal_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(click.ClickException, match="no journal at"):
        open_journal(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(click.ClickException, match="serve --journal"):
        open_journal(str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()


def test_a_silent_peer_without_curve_is_said_plainly() -> None:
    assert no_answer(connection()) == (
        "no node answered at tcp://127.0.0.1:5701 within 3 s (is a node serving there? "
        "through a broker, name it with --node)"
    )


def test_a_silent_peer_with_curve_names_the_key_to_authorise() -> None:
    public, secret = generate_keypair()
    message = no_answer(connection(Keys(public, secret)))
    assert message.startswith("no node answered at tcp://127.0.0.1:5701 within 3 s: with CURVE")
    assert f"--authorize {public.decode()}" in message
    assert "--server-key" in message
