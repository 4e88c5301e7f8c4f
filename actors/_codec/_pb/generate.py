"""Regenerate the protobuf code in ``actors/_codec/_pb`` from ``proto/``.

Usage::

    python -m actors._codec._pb.generate          # rewrite actors/_codec/_pb/llmspell/...
    python -m actors._codec._pb.generate --check  # exit 1 if the committed code is stale

Runs ``grpc_tools.protoc`` in-process (``--python_out`` and ``--pyi_out``) into a
temporary directory, then post-processes the output so that it imports as
``actors._codec._pb.llmspell.events.v1.events_pb2``: every package directory gets an
empty ``__init__.py`` and the module name recorded in the generated code is
rewritten to its real dotted path (so messages' ``__module__`` is right).  The
descriptor's file name stays ``llmspell/events/v1/events.proto``.  The output is
deterministic for one ``grpcio-tools`` version.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent.parent
PROTO_DIR = _ROOT / "proto"
OUT_DIR = _HERE
PACKAGE = "actors._codec._pb"
# Files this script owns inside OUT_DIR's top-level proto package directories.
_SUFFIXES = ("_pb2.py", "_pb2.pyi", "__init__.py")
_INIT_TEXT = '"""Generated protobuf package (see actors/_codec/_pb/generate.py)."""\n'


def _proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def _run_protoc(dest: Path) -> None:
    """Generate into ``dest``; raise ``RuntimeError`` if protoc fails."""
    from grpc_tools import protoc  # noqa: PLC0415 - dev-only dependency

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    files = [str(p.relative_to(PROTO_DIR)) for p in _proto_files()]
    if not files:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))


def _post_process(dest: Path) -> None:
    """Add ``__init__.py`` files and rewrite module names to live under PACKAGE."""
    for path in sorted(dest.rglob("*_pb2.py")):
        rel = path.relative_to(dest).with_suffix("")
        old = ".".join(rel.parts)
        text = path.read_text(encoding="utf-8")
        text = text.replace(f"'{old}'", f"'{PACKAGE}.{old}'")
        # Imports of other generated modules (``from llmspell.x import y_pb2``).
        top = rel.parts[0]
        text = text.replace(f"\nfrom {top}.", f"\nfrom {PACKAGE}.{top}.")
        text = text.replace(f"\nimport {top}.", f"\nimport {PACKAGE}.{top}.")
        path.write_text(text, encoding="utf-8")
    for directory in sorted(p for p in dest.rglob("*") if p.is_dir()):
        (directory / "__init__.py").write_text(_INIT_TEXT, encoding="utf-8")


def _generated_files(root: Path) -> dict[str, bytes]:
    """Map relative path -> content for every file this script owns under ``root``."""
    result: dict[str, bytes] = {}
    for top in sorted({p.relative_to(PROTO_DIR).parts[0] for p in _proto_files()}):
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.name.endswith(_SUFFIXES):
                result[path.relative_to(root).as_posix()] = path.read_bytes()
    return result


def generate() -> dict[str, bytes]:
    """Generate the code into a temp dir; return its files (relative path -> bytes).

    Raise ``RuntimeError`` if protoc fails or produces nothing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _run_protoc(tmp_path)
        _post_process(tmp_path)
        files = _generated_files(tmp_path)
    if not files:
        raise RuntimeError("protoc produced no files")
    return files


def main(argv: list[str] | None = None) -> int:
    """Regenerate (or with ``--check`` verify) the committed code; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m actors._codec._pb.generate")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed code differs from what proto/ generates",
    )
    args = parser.parse_args(argv)
    fresh = generate()
    committed = _generated_files(OUT_DIR)
    if args.check:
        stale = sorted(
            name
            for name in fresh.keys() | committed.keys()
            if fresh.get(name) != committed.get(name)
        )
        if stale:
            print("generated protobuf code is stale; run `make proto`:", file=sys.stderr)
            for name in stale:
                print(f"  actors/_codec/_pb/{name}", file=sys.stderr)
            return 1
        print(f"actors/_codec/_pb is up to date ({len(fresh)} files)")
        return 0
    for name in committed.keys() - fresh.keys():
        (OUT_DIR / name).unlink()
    for name, content in sorted(fresh.items()):
        target = OUT_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if committed.get(name) != content:
            target.write_bytes(content)
    print(f"wrote {len(fresh)} files under actors/_codec/_pb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
