"""``--peer-name NAME=KEY``: one parser for the command line and the broker's ``main``.

Each keeps its own usage error: ``BadParameter`` naming ``--peer-name`` on the
command line (``actors/cli/node.py``), ``argparse``'s exit 2 in ``main``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click
import pytest

from actors import generate_keypair
from actors._cluster.broker import main as broker_main
from actors._cluster.broker import parse_peer_names
from actors.cli.node import _peer_names
from actors.cli.options import Keys

PUBLIC = generate_keypair()[0]
OWN = Keys(*generate_keypair())  # --public-key and --secret-key: --peer-name needs them
KEY = PUBLIC.decode()


class Refused(Exception):
    pass


def refuse(item: str) -> NoReturn:
    raise Refused(item)


def literal(key: str) -> bytes | None:
    return key.encode() if len(key) == 40 else None


def test_each_item_splits_at_its_first_equals_sign() -> None:
    key_with_equals = "=" * 40  # "=" is a Z85 character
    names = parse_peer_names(["a=" + KEY, "b=" + key_with_equals], literal, refuse)
    assert names == {"a": PUBLIC, "b": key_with_equals.encode()}


def test_no_items_no_names() -> None:
    assert parse_peer_names([], literal, refuse) == {}


@pytest.mark.parametrize("item", ["no-key", "=" + "k" * 40, "a=short", "a="])
def test_an_item_without_a_name_or_a_key_is_refused_by_its_caller(item: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_peer_names(["good=" + KEY, item], literal, refuse)
    assert refused.value.args == (item,)


def test_the_key_is_not_loaded_without_a_name() -> None:
    loaded: list[str] = []

    def load(key: str) -> bytes | None:
        loaded.append(key)
        return key.encode()

    with pytest.raises(Refused):
        parse_peer_names(["=" + KEY], load, refuse)
    assert loaded == []


# -- the command line: keys as text or files, click's usage errors -------------------------------


def test_the_command_line_reads_a_key_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "b.key"
    path.write_text(KEY + "\n")
    assert _peer_names(("a=" + KEY, f"b={path}"), OWN) == {"a": PUBLIC, "b": PUBLIC}


@pytest.mark.parametrize("item", ["no-key", "=" + KEY], ids=["no-key", "no-name"])
def test_the_command_line_says_the_item_is_not_name_key(item: str) -> None:
    with pytest.raises(click.BadParameter) as bad:
        _peer_names((item,), OWN)
    assert bad.value.param_hint == "--peer-name"
    assert bad.value.message == f"{item!r} is not NAME=KEY"


def test_the_command_line_says_why_a_key_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(click.BadParameter) as bad:
        _peer_names((f"a={tmp_path / 'missing.key'}",), OWN)
    assert bad.value.param_hint == "--peer-name"
    assert "no key file" in bad.value.message


# -- the broker's main: 40-character keys only, argparse's usage error -----------------------------


@pytest.mark.parametrize(
    "item", ["no-key", "=" + KEY, "a=short"], ids=["no-key", "no-name", "short-key"]
)
def test_broker_main_refuses_an_item_before_starting(
    item: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        broker_main(["tcp://127.0.0.1:0", "--peer-name", "a=" + KEY, "--peer-name", item])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--peer-name takes NAME=KEY with a 40-character Z85 key: {item!r}" in err


def test_the_command_line_refuses_names_without_a_key_pair() -> None:
    # Without CURVE no name can be bound to a key: the node or broker would
    # run plain and never check the names it was given.
    with pytest.raises(click.UsageError, match="--peer-name needs --public-key"):
        _peer_names(("a=" + KEY,), None)
