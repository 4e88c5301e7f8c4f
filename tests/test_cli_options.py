"""Shared options (``actors/cli/options.py``): endpoints and CURVE keys say what is wrong."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from actors import generate_keypair
from actors.cli.options import ENDPOINT, keys_from, load_key


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5701", "tcp://127.0.0.1:*", "ipc:///tmp/a.sock", "inproc://x"]
)
def test_endpoints_with_a_scheme_pass(endpoint: str) -> None:
    assert ENDPOINT.convert(endpoint, None, None) == endpoint


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("127.0.0.1:27701", "has no scheme: write tcp://127.0.0.1:27701"),
        ("localhost", "has no scheme"),
        ("http://127.0.0.1:1", "unknown scheme 'http'"),
        ("tcp://127.0.0.1", "a tcp endpoint is tcp://HOST:PORT"),
        ("tcp://:5701", "a tcp endpoint is tcp://HOST:PORT"),
    ],
)
def test_endpoints_without_a_usable_scheme_are_refused(endpoint: str, says: str) -> None:
    with pytest.raises(click.BadParameter, match=says):
        ENDPOINT.convert(endpoint, None, None)


def test_a_key_is_its_text_or_a_file_holding_it(tmp_path: Path) -> None:
    public, _ = generate_keypair()
    assert load_key(public.decode(), "--server-key") == public
    (tmp_path / "hub.key").write_text(public.decode() + "\n")
    assert load_key(str(tmp_path / "hub.key"), "--server-key") == public
    assert load_key(None, "--server-key") is None


def test_a_missing_or_malformed_key_says_which(tmp_path: Path) -> None:
    with pytest.raises(click.BadParameter, match=r"no key file .*hub\.key"):
        load_key(str(tmp_path / "hub.key"), "--server-key")
    (tmp_path / "bad.key").write_text("not a key\n")
    with pytest.raises(click.BadParameter, match="does not hold a 40-character Z85 key"):
        load_key(str(tmp_path / "bad.key"), "--server-key")
    with pytest.raises(click.BadParameter, match="not a key file"):
        load_key(str(tmp_path), "--server-key")


def test_a_key_pair_must_belong_together() -> None:
    public, secret = generate_keypair()
    other_public, _ = generate_keypair()
    pair = keys_from(public.decode(), secret.decode())
    assert pair is not None
    assert (pair.public, pair.secret) == (public, secret)
    assert keys_from(None, None) is None
    with pytest.raises(click.BadParameter, match="not the public half of --secret-key"):
        keys_from(other_public.decode(), secret.decode())
    with pytest.raises(click.BadParameter, match="swapped"):
        keys_from(secret.decode(), public.decode())
    with pytest.raises(click.UsageError, match="together"):
        keys_from(public.decode(), None)
