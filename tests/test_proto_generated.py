"""The committed protobuf code matches proto/ (regenerate with ``make proto``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actors._codec._pb.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_module_imports_under_the_package() -> None:
    from actors._codec._pb.llmspell.events.v1 import events_pb2  # noqa: PLC0415

    assert events_pb2.Event.__module__ == "actors._codec._pb.llmspell.events.v1.events_pb2"
    assert events_pb2.DESCRIPTOR.name == "llmspell/events/v1/events.proto"
    assert events_pb2.DESCRIPTOR.package == "llmspell.events.v1"
