"""``python -m tests._caught_interrupt_child ARGS``: the command line, then a caught interrupt.

The command runs with ``ARGS``; as it ends, a ``KeyboardInterrupt`` passes
through code run from a string (as one does when a signal lands while a late
import defines a dataclass) and is caught.  The process must still end with
the command's own status.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

# the module itself: the package's ``main`` is the group
cli_main = importlib.import_module("actors.cli.main")

command = cli_main.main


def main_then_caught_interrupt(**kwargs: Any) -> None:
    try:
        command(**kwargs)
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            exec("raise KeyboardInterrupt")  # the string is the point


cli_main.main = main_then_caught_interrupt  # type: ignore[assignment]
cli_main.run()
