"""``serve`` and ``broker`` (``actors/cli/node.py``), and CURVE across real processes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors.cli import main
from tests._cli_support import Running, cli, make_journal, serving


def keygen(prefix: Path) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["keygen", "--out", str(prefix)])
    assert result.exit_code == 0, result.stderr
    return f"{prefix}.key", f"{prefix}.key_secret"


@pytest.mark.slow
def test_serve_shares_its_journal_with_readers_and_closes_on_sigterm(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    make_journal(journal)
    with serving("--name", "hub", "--journal", str(journal)) as (node, endpoint):
        assert endpoint.startswith("tcp://127.0.0.1:")
        # Read-only commands read a running node's journal as it is, beside it.
        beside = cli("query", "--journal", str(journal))
        assert beside.returncode == 0, beside.stderr
        assert len(beside.stdout.splitlines()) == 4
        node.proc.send_signal(signal.SIGTERM)
        assert node.line() == "closed"
        assert node.finish() == 0
    assert "events 4" in cli("stats", "--journal", str(journal)).stdout


def test_a_node_name_a_terminal_would_act_on_is_printed_escaped(tmp_path: Path) -> None:
    # docs/cli.md: control characters in a node's name are printed escaped in
    # every readable line: serve's own lines and query --follow's note.
    name = "hub\x1b]0;retitled\x07"
    node = Running("serve", "--listen", "tcp://127.0.0.1:0", "--name", name, "--journal",
                   str(tmp_path / "journal"))  # fmt: skip
    try:
        lines = dict(node.line().split(" ", 1) for _ in range(4))
        assert lines["node"] == "hub\\x1b]0;retitled\\x07"
        follow = Running("query", "--peer", lines["request"], "--follow")
        try:
            assert follow.line(follow.err) == "following the journal of hub\\x1b]0;retitled\\x07"
        finally:
            follow.kill()
    finally:
        node.kill()


def test_serve_with_keys_needs_authorize(tmp_path: Path) -> None:
    public, secret = keygen(tmp_path / "hub")
    result = CliRunner().invoke(
        main,
        ["serve", "--name", "hub", "--listen", "tcp://127.0.0.1:0",
         "--public-key", public, "--secret-key", secret],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--secret-key without --authorize would admit no other node" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_serve_refuses_a_listen_endpoint_without_a_scheme() -> None:
    result = CliRunner().invoke(main, ["serve", "--name", "hub", "--listen", "127.0.0.1:5701"])
    assert result.exit_code == 2
    assert "has no scheme" in result.stderr


@pytest.mark.slow
def test_a_key_the_node_does_not_authorise_is_named_as_the_problem(tmp_path: Path) -> None:
    hub_public, hub_secret = keygen(tmp_path / "hub")
    cli_public, cli_secret = keygen(tmp_path / "cli")
    stranger_public, stranger_secret = keygen(tmp_path / "stranger")
    with serving(
        "--name", "hub", "--public-key", hub_public, "--secret-key", hub_secret,
        "--authorize", cli_public,
    ) as (_node, endpoint):  # fmt: skip
        allowed = cli(
            "pub", "secure.x", "--peer", endpoint, "--server-key", hub_public,
            "--public-key", cli_public, "--secret-key", cli_secret,
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.startswith("published secure.x on hub ")

        refused = cli(
            "pub", "secure.x", "--peer", endpoint, "--server-key", hub_public,
            "--public-key", stranger_public, "--secret-key", stranger_secret, "--timeout", "2",
        )  # fmt: skip
        assert refused.returncode == 1
        (line,) = refused.stderr.splitlines()
        assert "the node refuses a key it does not authorise" in line
        stranger = Path(stranger_public).read_text().strip()
        assert f"--authorize {stranger}" in line

        swapped = cli(
            "pub", "secure.x", "--peer", endpoint, "--server-key", hub_public,
            "--public-key", cli_secret, "--secret-key", cli_public,
        )  # fmt: skip
        assert swapped.returncode == 2
        assert "not the public half of --secret-key" in swapped.stderr

        missing = cli(
            "pub", "secure.x", "--peer", endpoint, "--server-key", str(tmp_path / "nope.key"),
            "--public-key", cli_public, "--secret-key", cli_secret,
        )  # fmt: skip
        assert missing.returncode == 2
        assert "no key file" in missing.stderr


@pytest.mark.slow
def test_broker_prints_its_endpoints_and_stops_on_sigint() -> None:
    hub = Running("broker", "tcp://127.0.0.1:*")
    try:
        lines = dict(hub.line().split(" ", 1) for _ in range(3))
        assert set(lines) == {"request", "subscribe", "publish"}
        assert all(v.startswith("tcp://127.0.0.1:") for v in lines.values())
        hub.proc.send_signal(signal.SIGINT)
        assert hub.line() == "closed"
        assert hub.finish() == 0
    finally:
        hub.kill()


@pytest.mark.slow
def test_pub_and_query_through_a_broker_name_the_node(tmp_path: Path) -> None:
    broker = Running("broker", "tcp://127.0.0.1:*")
    try:
        request = dict(broker.line().split(" ", 1) for _ in range(3))["request"]
        with serving("--name", "hub", "--peer", request, "--journal", str(tmp_path / "j")):
            published = cli("pub", "via.broker", "7", "--peer", request, "--node", "hub")
            assert published.returncode == 0, published.stderr
            assert published.stdout.startswith("published via.broker on hub ")
            found = cli("query", "--peer", request, "--node", "hub", "--json")
            assert found.returncode == 0, found.stderr
            assert '"data":7' in found.stdout
    finally:
        broker.kill()
