"""``keygen`` (``actors/cli/keys.py``)."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner

from actors.cli import main


def test_keygen_prints_a_fresh_pair() -> None:
    runner = CliRunner()
    first, second = runner.invoke(main, ["keygen"]), runner.invoke(main, ["keygen"])
    assert first.exit_code == 0, first.stderr
    keys = dict(line.split(" ", 1) for line in first.stdout.splitlines())
    assert len(keys["public"]) == 40
    assert len(keys["secret"]) == 40
    assert keys["public"] != keys["secret"]
    assert first.stdout != second.stdout


def test_keygen_writes_key_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / "node")])
    assert result.exit_code == 0, result.stderr
    public = (tmp_path / "node.key").read_text().strip()
    secret_file = tmp_path / "node.key_secret"
    assert len(secret_file.read_text().strip()) == 40
    assert f"public {public}" in result.stdout
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


def test_keygen_keeps_an_existing_pair_unless_forced(tmp_path: Path) -> None:
    runner = CliRunner()
    prefix = str(tmp_path / "node")
    assert runner.invoke(main, ["keygen", "--out", prefix]).exit_code == 0
    before = (tmp_path / "node.key").read_text(), (tmp_path / "node.key_secret").read_text()

    refused = runner.invoke(main, ["keygen", "--out", prefix])
    assert refused.exit_code == 1
    assert "exist: keep them, or replace them with --force" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert (
        (tmp_path / "node.key").read_text(),
        (tmp_path / "node.key_secret").read_text(),
    ) == before

    forced = runner.invoke(main, ["keygen", "--out", prefix, "--force"])
    assert forced.exit_code == 0, forced.stderr
    assert (tmp_path / "node.key").read_text() != before[0]
    assert stat.S_IMODE((tmp_path / "node.key_secret").stat().st_mode) == 0o600


def test_keygen_that_cannot_write_fails_in_one_line_and_leaves_any_pair_whole(
    tmp_path: Path,
) -> None:
    missing = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / "no" / "k")])
    assert missing.exit_code == 1
    assert missing.stderr.startswith("Error: cannot write the key pair")
    assert len(missing.stderr.splitlines()) == 1
    assert not (tmp_path / "no").exists()
    # An existing pair replaced with --force, where the secret cannot be
    # written: before, the new public key was already beside the old secret.
    prefix = tmp_path / "k"
    assert CliRunner().invoke(main, ["keygen", "--out", str(prefix)]).exit_code == 0
    pair = {p.name: p.read_bytes() for p in tmp_path.glob("k.key*")}
    (tmp_path / "k.key_secret.tmp").mkdir()  # what the secret is written to first
    forced = CliRunner().invoke(main, ["keygen", "--out", str(prefix), "--force"])
    assert forced.exit_code == 1
    assert "Traceback" not in forced.output
    assert {p.name: p.read_bytes() for p in tmp_path.glob("k.key*") if p.is_file()} == pair
