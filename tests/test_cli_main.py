"""The ``llmspell-events`` group (``actors/cli/main.py``): commands, errors, environment."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors.cli import main
from actors.cli.main import COMMANDS
from tests._cli_support import cli, cli_redirected, make_journal


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_python_dash_m_and_the_entry_point_are_one_cli() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: llmspell-events ")
    for _module, command in COMMANDS:
        assert f"  {command} " in result.stdout
    (script,) = [
        ep for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name == "llmspell-events"
    ]  # fmt: skip
    assert script.value == "actors.cli:run"


def test_every_registered_command_is_in_the_group() -> None:
    assert list(main.commands) == [command for _module, command in COMMANDS]  # type: ignore[attr-defined]


def test_usage_errors_are_one_line_with_status_2() -> None:
    status, out, err = run("serve", "--listen", "tcp://127.0.0.1:0")
    assert status == 2
    assert out == ""
    assert err.splitlines() == ["Error: Missing option '--name'. (see llmspell-events serve -h)"]

    status, _, err = run("query")
    assert status == 2
    assert err.splitlines() == [
        "Error: give exactly one of --journal DIR and --peer ENDPOINT"
        " (see llmspell-events query -h)"
    ]

    status, _, err = run("no-such-command")
    assert status == 2
    assert len(err.splitlines()) == 1


def test_a_failure_is_one_line_with_status_1(tmp_path: Path) -> None:
    status, _, err = run("query", "--journal", str(tmp_path / "nothing"))
    assert status == 1
    assert err.splitlines() == [
        f"Error: no journal at {tmp_path / 'nothing'} (a node makes one: "
        f"llmspell-events serve --journal {tmp_path / 'nothing'})"
    ]


def test_options_come_from_the_environment(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    make_journal(journal)
    # A shared option under its documented name.
    status, out, err = run(
        "query", "--type", "user.*", env={"LLMSPELL_EVENTS_JOURNAL": str(journal)}
    )
    assert status == 0, err
    assert "user.login web→-" in out
    # Any other option as LLMSPELL_EVENTS_<COMMAND>_<OPTION>.
    status, out, err = run(
        "query", "--journal", str(journal), env={"LLMSPELL_EVENTS_QUERY_LIMIT": "2"}
    )
    assert status == 0, err
    assert len(out.splitlines()) == 2
    # A peer from the environment is validated as one from the command line.
    status, _, err = run("pub", "a.b", env={"LLMSPELL_EVENTS_PEER": "127.0.0.1:27701"})
    assert status == 2
    assert "LLMSPELL_EVENTS_PEER" in err
    assert "has no scheme: write tcp://127.0.0.1:27701" in err


def test_the_command_line_wins_over_the_other_sources_environment_variable(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    make_journal(journal)
    status, out, err = run(
        "stats", "--journal", str(journal), env={"LLMSPELL_EVENTS_PEER": "tcp://127.0.0.1:1"}
    )
    assert status == 0, err
    assert "events 4" in out


def test_shell_completion_is_served() -> None:
    status, out, _ = run(env={"_LLMSPELL_EVENTS_COMPLETE": "bash_source"})
    assert status == 0
    assert "_llmspell_events_completion" in out
    assert "complete " in out

    status, out, _ = run(
        env={
            "_LLMSPELL_EVENTS_COMPLETE": "bash_complete",
            "COMP_WORDS": "llmspell-events su",
            "COMP_CWORD": "1",
        }
    )
    assert status == 0
    assert out.split() == ["plain,sub"]


def test_curve_keys_come_from_the_environment(tmp_path: Path) -> None:
    keys = CliRunner().invoke(main, ["keygen"]).stdout.splitlines()
    public, secret = (line.split(" ", 1)[1] for line in keys)
    status, _, err = run(
        "serve", "--name", "hub", "--listen", "tcp://127.0.0.1:0",
        env={"LLMSPELL_EVENTS_CURVE_PUBLIC": public, "LLMSPELL_EVENTS_CURVE_SECRET": secret},
    )  # fmt: skip
    # The keys were read: serving with them needs --authorize.
    assert status == 2
    assert "--secret-key without --authorize" in err
    status, _, err = run(
        "serve", "--name", "hub", "--listen", "tcp://127.0.0.1:0",
        env={"LLMSPELL_EVENTS_CURVE_PUBLIC": secret, "LLMSPELL_EVENTS_CURVE_SECRET": public},
    )  # fmt: skip
    assert status == 2
    assert "not the public half of --secret-key" in err


def test_every_option_read_from_the_environment_names_its_variable_in_help() -> None:
    for name, command in main.commands.items():  # type: ignore[attr-defined]
        status, out, _ = run(name, "--help")
        assert status == 0
        text = " ".join(out.split())  # help wraps long lines
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str) and not getattr(param, "hidden", False):
                assert f"env var: {envvar}" in text, f"{name} {param.name}: {envvar} not in -h"


@pytest.mark.parametrize(
    ("redirect", "why"), [(">/dev/full", "No space left on device"), (">&-", "it is closed")]
)
def test_output_that_cannot_be_written_is_one_error_line(redirect: str, why: str) -> None:
    # docs/cli.md: every error is one line, never a traceback.  A full disk
    # or a closed stdout gave an OSError's or AttributeError's traceback.
    result = cli_redirected(redirect, "keygen")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"Error: cannot write to standard output: {why}"]


def test_help_to_a_full_disk_is_one_error_line() -> None:
    # Click writes the help itself, past the commands' own output checks.
    result = cli_redirected(">/dev/full", "pub", "--help")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["Error: No space left on device"]
