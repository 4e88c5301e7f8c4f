"""A signal that lands inside ``threading.Condition.wait`` still ends a command as a signal.

The CLI turns SIGINT and SIGTERM into a ``KeyboardInterrupt`` raised wherever
the main thread is.  In ``Condition.wait`` there is a window, after the
condition let its lock go and before its ``try``, where the interrupt makes
the ``with`` around the wait release the lock a second time: a
``RuntimeError`` ("release unlocked lock") replaces the interrupt.  A command
then died with a traceback and status 1 where it documents status 0 (seen
once in a run of the suite beside a CPU burner:
``test_a_signal_while_connecting_ends_the_command_as_documented[top-15]``).
The window is replayed here with a real ``Condition``: its own first step,
then the interrupt the signal handler raises.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import click
import pytest

from actors.cli.main import Cli
from actors.cli.output import by_interrupt, ended_by_signal


def interrupted_in_the_window() -> None:
    """What ``Event.wait`` does when the interrupt comes right after ``_release_save``."""
    condition = threading.Condition(threading.Lock())
    with condition:
        condition._release_save()  # type: ignore[attr-defined]  # noqa: SLF001 - wait's first step
        raise KeyboardInterrupt  # the signal handler's, before wait's try


def test_the_window_turns_the_interrupt_into_a_runtime_error() -> None:
    """The premise: what Python itself does (so the test below replays the real failure)."""
    with pytest.raises(RuntimeError) as caught:
        interrupted_in_the_window()
    assert isinstance(caught.value.__context__, KeyboardInterrupt)
    assert by_interrupt(caught.value)


def test_a_block_that_a_signal_ends_exits_quietly_from_the_window() -> None:
    with ended_by_signal():
        interrupted_in_the_window()
    with ended_by_signal():
        raise KeyboardInterrupt


def test_an_error_of_its_own_still_fails_the_block() -> None:
    with pytest.raises(RuntimeError, match="of its own"), ended_by_signal():
        raise RuntimeError("of its own")
    with pytest.raises(ValueError, match="while interrupted"), ended_by_signal():
        failing_while_interrupted()


def failing_while_interrupted() -> None:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise ValueError("while interrupted") from None


@pytest.fixture
def handlers_kept() -> Iterator[None]:
    """``Cli.main`` installs the CLI's signal handlers: put pytest's back."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def test_a_command_stopped_in_the_window_says_interrupted(
    handlers_kept: None, capsys: pytest.CaptureFixture[str]
) -> None:
    group = Cli(name="t")

    @group.command()
    def wait() -> None:
        interrupted_in_the_window()

    @group.command()
    def broken() -> None:
        raise RuntimeError("release unlocked lock")  # no signal behind it: a real failure

    with pytest.raises(SystemExit) as exited:
        group.main(["wait"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "Error: interrupted\n"
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        group.main(["broken"])
    assert isinstance(group, click.Group)
