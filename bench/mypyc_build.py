"""Build, or remove, a mypyc-compiled hot path in place, to measure it against the pure package.

Not part of the package, and no build of it: the measurement showed it does
not pay (``docs/performance.md``, "A compiled hot path (mypyc)").  To repeat
it (mypyc ships with mypy, in the ``dev`` extra; gcc is needed), in a
worktree of commit 95dfbc4, the sources the patch was made against::

    git worktree add /tmp/mypyc 95dfbc4 && cd /tmp/mypyc
    cp <this checkout>/bench/mypyc_* <this checkout>/bench/compiled.py bench/
    git apply bench/mypyc_compat.patch         # what mypyc needs of the sources
    .venv/bin/python bench/mypyc_build.py      # .so files next to the sources
    .venv/bin/python -m bench.compiled         # CPU per event, compiled
    .venv/bin/python bench/mypyc_build.py --clean
    .venv/bin/python -m bench.compiled         # the same, pure Python
    git apply -R bench/mypyc_compat.patch

While the ``.so`` files exist, Python imports them instead of the ``.py``
files next to them; ``--clean`` removes them (and ``build/``), and the pure
package runs again.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The hot path of one event, and the modules whose classes it needs compiled
# with it (an interpreted class cannot subclass a compiled one).
MODULES = [
    "actors/_model/event.py",
    "actors/_model/event_checks.py",
    "actors/_model/trie.py",
    "actors/_model/patterns.py",
    "actors/_runtime/dispatcher.py",
    "actors/_runtime/mailbox.py",
    "actors/_runtime/pool.py",
    "actors/_codec/events.py",
    "actors/_core/messages.py",
    "actors/_core/routes.py",
    "actors/_core/ports.py",
    "actors/_core/policies.py",
    "actors/_core/backpressure.py",
    "actors/_core/publishing.py",
    "actors/_core/router.py",
    "actors/_core/handling.py",
    "actors/_core/subscriber.py",
    "actors/_journal/records.py",
    "actors/_journal/actor.py",
]


def clean() -> list[Path]:
    """Remove the compiled modules and the build directory; return what was removed."""
    removed = [*ROOT.glob("actors/**/*.so"), *ROOT.glob("*__mypyc*.so")]
    for path in removed:
        path.unlink()
    if (ROOT / "build").is_dir():
        shutil.rmtree(ROOT / "build")
        removed.append(ROOT / "build")
    return removed


def build() -> None:
    """Compile ``MODULES`` with mypyc, in place (``build_ext --inplace``)."""
    from mypyc.build import mypycify  # noqa: PLC0415 - only when building
    from setuptools import setup  # noqa: PLC0415

    setup(
        name="llmspell-events-compiled",
        packages=[],
        ext_modules=mypycify(MODULES, opt_level="3", debug_level="0"),
        script_args=["build_ext", "--inplace"],
    )


def main(argv: list[str]) -> None:
    """Build, or with ``--clean`` remove, the compiled modules."""
    os.chdir(ROOT)  # mypycify takes paths relative to the repository
    if argv == ["--clean"]:
        for path in clean():
            print(f"removed {path.relative_to(ROOT)}")
    elif not argv:
        build()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
