"""The event loop a bus runs ``async def`` handlers on when they were subscribed off any loop."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading

__all__ = ["BackgroundLoop", "subscribing_loop"]

logger = logging.getLogger("actors.subscriber")

subscribing_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "subscribing_loop", default=None
)
"""The loop an ``AsyncEventBus`` call subscribes from while it runs off that loop.

Its ``async def`` handlers run there, as if subscribed on the loop itself.
"""


def _stop_when_idle(loop: asyncio.AbstractEventLoop) -> None:
    """Stop ``loop`` once the tasks on it now have ended (on the loop).

    A handler given up on at ``close`` finishes its current batch on its own
    (``docs/architecture.md``): its task must not be destroyed with the loop.
    The loop's thread is a daemon, so a task that never ends keeps it only
    until the process exits.
    """
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        loop.stop()
        return
    gathered = asyncio.gather(*pending, return_exceptions=True)
    gathered.add_done_callback(lambda _: loop.stop())


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """Run ``loop`` until it is stopped, whatever a task on it raises.

    asyncio lets a task's ``SystemExit`` or ``KeyboardInterrupt`` out of
    ``run_forever`` (a handler awaiting a task that raised one, say).  On
    this thread neither is the process being asked to stop: the task has
    failed (whoever awaits it sees that), and the loop goes on with every
    other handler's work, as ``docs/architecture.md`` promises for whatever
    a handler raises.
    """
    while True:
        try:
            loop.run_forever()
        except BaseException as exc:  # see the docstring
            logger.error("a task on the bus's event loop raised %r; the loop goes on", exc)
            continue
        return


class BackgroundLoop:
    """One event loop on a daemon thread, started on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        """Return the loop, starting it (and its thread) the first time."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    _run_until_stopped(loop)
                    loop.close()

                self._thread = threading.Thread(target=run, name="bus-async", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def stop(self, timeout: float) -> None:
        """Stop the loop once its tasks have ended, if it was ever started.

        Waits up to ``timeout`` for its thread to end (``close`` returns
        with it gone), unless a task given up on keeps it.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
        if loop is not None:
            loop.call_soon_threadsafe(_stop_when_idle, loop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
