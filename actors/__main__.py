"""``python -m actors``: the ``llmspell-events`` command line (``actors/cli/``)."""

from __future__ import annotations

from actors.cli import main

if __name__ == "__main__":
    main(prog_name="llmspell-events")
