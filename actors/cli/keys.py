"""``keygen``: make a CURVE key pair."""

from __future__ import annotations

import os
from pathlib import Path

import click

from actors.cli.output import fail, say

__all__ = ["keygen"]


@click.command()
@click.option("--out", "prefix", help="write PREFIX.key (public) and PREFIX.key_secret (secret)")
@click.option("--force", is_flag=True, help="overwrite an existing pair")
def keygen(prefix: str | None, force: bool) -> None:
    """Make a CURVE key pair (40-character Z85 keys)."""
    from actors._cluster.bridge import generate_keypair  # noqa: PLC0415 - imports zmq

    if prefix is not None and prefix.rpartition("/")[2] in {"", ".", ".."}:
        # "" or "dir/" would write hidden files named ".key" and ".key_secret"
        raise click.UsageError(f"--out {prefix!r} names no file: give a PREFIX such as hub")
    public, secret = generate_keypair()
    if prefix is None:
        say(f"public {public.decode()}")
        say(f"secret {secret.decode()}")
        return
    public_path, secret_path = Path(f"{prefix}.key"), Path(f"{prefix}.key_secret")
    existing = [str(p) for p in (public_path, secret_path) if p.exists()]
    if existing and not force:
        fail(f"{' and '.join(existing)} exist: keep them, or replace them with --force")
    try:
        _write_pair(public_path, public, secret_path, secret)
    except OSError as exc:
        fail(f"cannot write the key pair {public_path} / {secret_path}: {exc.strerror or exc}")
    say(f"public {public.decode()}")
    say(f"wrote {public_path} and {secret_path}")


def _write_pair(public_path: Path, public: bytes, secret_path: Path, secret: bytes) -> None:
    """Write both keys, or neither: each to a scratch file first, then both renamed.

    The secret is never readable by others, not even for a moment.  Raises
    ``OSError`` (a missing folder, a full disk) having changed nothing.
    """
    scratch = [public_path.with_name(public_path.name + ".tmp")]
    scratch.append(secret_path.with_name(secret_path.name + ".tmp"))
    try:
        for path, key, mode in ((scratch[0], public, 0o644), (scratch[1], secret, 0o600)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, mode)  # whatever the umask, or a scratch file left before
                f.write(key.decode() + "\n")
        os.replace(scratch[1], secret_path)
        os.replace(scratch[0], public_path)
    finally:
        for path in scratch:
            path.unlink(missing_ok=True)
