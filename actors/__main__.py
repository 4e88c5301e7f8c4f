"""``python -m actors``: the ``llmspell-events`` command line (``actors/cli/``)."""

from __future__ import annotations

from actors.cli import run

if __name__ == "__main__":
    run()
