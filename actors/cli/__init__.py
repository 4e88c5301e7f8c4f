"""The command line: ``llmspell-events`` (also ``python -m actors``).  See ``docs/cli.md``.

``serve`` and ``broker`` run until SIGINT or SIGTERM.  ``pub``, ``sub`` and
the ``--peer`` forms of ``query``, ``trace`` and ``stats`` start a short-lived
node that connects to a running one.  ``--journal`` forms open a journal
folder read-only (it must not be held by a running process).

Modules: ``main`` (the group and the one list of commands), ``options``
(shared option blocks), ``output`` (printing, errors, signals), ``connect``
(short-lived nodes, read-only journals), ``follow`` (following a node's
journal), ``timespec``, and one module per family of commands: ``node``,
``pubsub``, ``journal``, ``keys``, ``bench``.
"""

from __future__ import annotations

from actors.cli.main import main, run

__all__ = ["main", "run"]
