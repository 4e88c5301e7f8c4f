"""``keygen``: make a CURVE key pair."""

from __future__ import annotations

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

    public, secret = generate_keypair()
    if prefix is None:
        say(f"public {public.decode()}")
        say(f"secret {secret.decode()}")
        return
    public_path, secret_path = Path(f"{prefix}.key"), Path(f"{prefix}.key_secret")
    existing = [str(p) for p in (public_path, secret_path) if p.exists()]
    if existing and not force:
        fail(f"{' and '.join(existing)} exist: keep them, or replace them with --force")
    public_path.write_text(public.decode() + "\n")
    secret_path.unlink(missing_ok=True)
    secret_path.touch(mode=0o600)
    secret_path.chmod(0o600)
    secret_path.write_text(secret.decode() + "\n")
    say(f"public {public.decode()}")
    say(f"wrote {public_path} and {secret_path}")
