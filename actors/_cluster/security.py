"""CURVE for every socket of a node or a broker: keys, the ZAP handler, server/client options.

One ``Curve`` per ZeroMQ context.  Without a secret key it does nothing
(plain TCP: see ``docs/cluster.md`` for what that allows on a network).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq
import zmq.auth.thread

__all__ = ["Curve", "check_key_pair", "close_context", "generate_keypair"]

logger = logging.getLogger("actors.bridge")


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new CURVE key pair ``(public, secret)``, each 40 bytes of Z85 text."""
    public, secret = zmq.curve_keypair()
    return public, secret


def check_key_pair(public_key: bytes | None, secret_key: bytes | None) -> None:
    """Raise ``ValueError`` unless both keys or neither are given, and they are one pair.

    Halves of two pairs (or swapped) make a node no correctly configured
    peer can ever link to, with nothing said: refused where they are given.
    """
    if (public_key is None) != (secret_key is None):
        raise ValueError("curve_public_key and curve_secret_key go together")
    if secret_key is not None and zmq.curve_public(secret_key) != public_key:
        raise ValueError(
            "curve_public_key is not the public half of curve_secret_key "
            "(swapped, or of another pair?)"
        )


class Curve:
    """The CURVE settings of one context; ``allow(key)`` decides each client (ZAP thread).

    Raises ``ValueError`` unless the keys are both given, of one pair, or neither.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        public_key: bytes | None,
        secret_key: bytes | None,
        allow: Callable[[bytes], bool],
    ) -> None:
        check_key_pair(public_key, secret_key)
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


TERM_WAIT = 5.0
"""Seconds ``close_context`` waits for ZeroMQ to terminate a context."""


def close_context(ctx: zmq.Context[zmq.Socket[bytes]], curve: Curve | None) -> None:
    """Close every socket of ``ctx`` at once (linger 0) and terminate it: never hangs.

    Terminating waits for every socket of the context to be closed, and
    ``destroy`` closes only those the context registered: a Ctrl-C between
    ZeroMQ making a socket and pyzmq registering it (a node's start cut
    short) left one open, and the process hung for ever.  So the context is
    destroyed on a daemon thread, waited for ``TERM_WAIT`` seconds, then
    left to the process's end with a warning.
    """
    if curve is not None:
        curve.stop()
    ender = threading.Thread(target=ctx.destroy, kwargs={"linger": 0}, name="zmq-term", daemon=True)
    ender.start()
    ender.join(TERM_WAIT)
    if ender.is_alive():
        logger.warning(
            "a ZeroMQ context still had a socket open after %.0f s (a start cut short?); "
            "left to the process's end",
            TERM_WAIT,
        )
