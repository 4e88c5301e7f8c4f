"""CURVE for every socket of a node or a broker: keys, the ZAP handler, server/client options.

One ``Curve`` per ZeroMQ context.  Without a secret key it does nothing
(plain TCP: see ``docs/cluster.md`` for what that allows on a network).
"""

from __future__ import annotations

from collections.abc import Callable

import zmq
import zmq.auth.thread

__all__ = ["Curve", "close_context", "generate_keypair"]


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new CURVE key pair ``(public, secret)``, each 40 bytes of Z85 text."""
    public, secret = zmq.curve_keypair()
    return public, secret


class Curve:
    """The CURVE settings of one context; ``allow(key)`` decides each client (ZAP thread).

    Raises ``ValueError`` if only one key of the pair is given.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        public_key: bytes | None,
        secret_key: bytes | None,
        allow: Callable[[bytes], bool],
    ) -> None:
        if (public_key is None) != (secret_key is None):
            raise ValueError("curve_public_key and curve_secret_key go together")
        self.public_key = public_key
        self.secret_key = secret_key
        self._allow = allow
        self._auth: zmq.auth.thread.ThreadAuthenticator | None = None
        if secret_key is not None:
            self._auth = zmq.auth.thread.ThreadAuthenticator(ctx)
            self._auth.start()
            self._auth.configure_curve_callback("*", credentials_provider=self)

    @property
    def enabled(self) -> bool:
        """Return whether sockets speak CURVE."""
        return self.secret_key is not None

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: accept the client with public ``key`` if ``allow`` says so."""
        return self._allow(key)

    def server(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server (a no-op without keys)."""
        if self.secret_key is not None:
            sock.curve_publickey = self.public_key
            sock.curve_secretkey = self.secret_key
            sock.curve_server = True

    def client(self, sock: zmq.Socket[bytes], server_key: bytes) -> None:
        """Set ``sock``'s next connections to CURVE clients of ``server_key``.

        Options are copied per connection: a socket bound as a CURVE server
        can still connect as a client.
        """
        if self.secret_key is not None:
            sock.curve_server = False
            sock.curve_publickey = self.public_key
            sock.curve_secretkey = self.secret_key
            sock.curve_serverkey = server_key

    def stop(self) -> None:
        """Stop the ZAP handler (before the context terminates)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def close_context(ctx: zmq.Context[zmq.Socket[bytes]], curve: Curve | None) -> None:
    """Close every socket of ``ctx`` at once (linger 0) and terminate it: never hangs."""
    if curve is not None:
        curve.stop()
    ctx.destroy(linger=0)
