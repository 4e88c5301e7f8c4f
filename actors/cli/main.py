"""The ``llmspell-events`` group: where every command is registered, and how errors print.

A new command is a module of ``actors.cli`` defining a ``click.Command``;
list it once in ``COMMANDS`` below.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from actors._errors import EventBusError
from actors.cli.output import by_interrupt, quiet_stdout, stdout_closed, stop_on_signals

__all__ = ["COMMANDS", "main"]

COMMANDS: tuple[tuple[str, str], ...] = (
    # (module of actors.cli, the click command in it), in the order --help lists them
    ("node", "serve"),
    ("node", "broker"),
    ("pubsub", "pub"),
    ("pubsub", "sub"),
    ("journal", "query"),
    ("journal", "trace"),
    ("journal", "stats"),
    ("requests", "req"),
    ("requests", "reply"),
    ("keys", "keygen"),
    ("bench", "bench"),
    ("top", "top"),
)

PROG = "llmspell-events"


class _Context(click.Context):
    """Every command's context: a help text asked for with stdout closed is an error.

    Python starts with ``sys.stdout`` None when its stdout is closed (``>&-``),
    and click then prints the help nowhere and exits 0.
    """

    def get_help(self) -> str:
        if sys.stdout is None and not self.meta.get(_HELP_ON_STDERR):
            raise stdout_closed()
        return super().get_help()


_HELP_ON_STDERR = "actors.cli.help_on_stderr"  # no command: the help goes to stderr


class Cli(click.Group):
    """A group whose errors are one line: ``Error: ...`` on stderr, then the exit status.

    Status 1 for a failure, 2 for a usage error; a bus error that a command
    did not translate prints its message too, never a traceback.
    """

    context_class = _Context

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help:
            ctx.meta[_HELP_ON_STDERR] = True  # NoArgsIsHelpError: printed on stderr
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in registration order, not sorted

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, RuntimeError) as exc:
            if not by_interrupt(exc):
                raise
            raise _Interrupted from None  # click would echo a blank line before its Abort

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        # SIGTERM stops a command as Ctrl-C does, once: ``Error: interrupted``
        # (or the end a command documents once it reached it); a second
        # signal does not cut the unwinding from the first short.
        # Not undone on the way out: a signal coming as the process exits would
        # find the default action again (a traceback, or death by SIGTERM).
        stop_on_signals()
        try:
            status = super().main(args, prog_name or PROG, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            # No command: the help, as click lays it out (not one line), status 2.
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} -h)" if exc.ctx is not None else ""
            _exit(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            _exit(exc.format_message(), exc.exit_code)
        except EventBusError as exc:
            _exit(str(exc) or type(exc).__name__, 1)
        except OSError as exc:  # stdout unwritable (OutputError), or one no command translated
            quiet_stdout()
            _exit(exc.strerror or str(exc), 1)
        except _Interrupted:
            _exit("interrupted", 1)
        except click.Abort:
            _exit("aborted", 1)
        sys.exit(status if isinstance(status, int) else 0)


class _Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """SIGINT or SIGTERM stopped a command before it could end as it documents."""


def _exit(message: str, status: int) -> NoReturn:
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(status)


@click.group(
    name=PROG,
    cls=Cli,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "auto_envvar_prefix": "LLMSPELL_EVENTS",
    },
)
@click.option("-v", "--verbose", is_flag=True, help="log the bus's INFO messages to stderr")
def main(verbose: bool) -> None:
    """Run, feed, watch and inspect llmspell-events nodes.

    Every option can also be set in the environment: LLMSPELL_EVENTS_PEER,
    LLMSPELL_EVENTS_CURVE_SECRET, ... for the shared ones (see -h of each
    command), LLMSPELL_EVENTS_<COMMAND>_<OPTION> for the others.
    """
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)


for _module, _name in COMMANDS:
    _command = getattr(importlib.import_module(f"actors.cli.{_module}"), _name)
    _command.context_class = _Context
    main.add_command(_command)


def run() -> NoReturn:
    """Run the command line as a program (the ``llmspell-events`` script, ``python -m actors``).

    Once the command has ended, SIGINT and SIGTERM are held until the process
    exits: Python sets their default actions back as it shuts down, and a
    late signal (the second of a double Ctrl-C) would then kill the process
    instead of letting it exit with the command's status.
    """
    try:
        main(prog_name=PROG)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        _forget_interrupts()
    raise SystemExit(0)  # not reached: main exits


def _forget_interrupts() -> None:
    """Clear CPython's record of a ``KeyboardInterrupt`` that a command caught.

    Code run from a string (``exec``: every ``@dataclass`` and ``namedtuple``
    being defined, so any module imported late) that a ``KeyboardInterrupt``
    passes through marks it as unhandled, whoever catches it later.  Under
    ``python -m`` the interpreter then ends the process by SIGINT, or with
    status 130, in place of the command's own status.  Running a string that
    does not raise clears the mark; the command has handled every signal by
    now (``Cli.main``).
    """
    exec("")  # noqa: S102 - a constant string: clearing the mark is what running it does
