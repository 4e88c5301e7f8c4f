"""BusFuture: the light pykka future of the publish path."""

from __future__ import annotations

import threading

import pykka
import pytest

from actors import BusFuture, FutureTimeoutError


def test_value_set_from_another_thread_wakes_the_waiter() -> None:
    fut: BusFuture[int] = BusFuture()
    t = threading.Thread(target=fut.set, args=(42,))
    t.start()
    assert fut.get(timeout=5) == 42
    t.join()
    assert fut.done()
    assert fut.get() == 42  # readable again


def test_exception_is_raised_by_get() -> None:
    fut: BusFuture[int] = BusFuture()
    fut.set_exception(ValueError("nope"))
    with pytest.raises(ValueError, match="nope"):
        fut.get(timeout=1)
    assert isinstance(fut.exception(), ValueError)


def test_timeout_is_both_pykka_and_builtin() -> None:
    fut: BusFuture[int] = BusFuture()
    with pytest.raises(FutureTimeoutError):
        fut.get(timeout=0)
    assert issubclass(FutureTimeoutError, pykka.Timeout)
    assert issubclass(FutureTimeoutError, TimeoutError)


def test_callbacks_run_once_whenever_added() -> None:
    fut: BusFuture[str] = BusFuture()
    seen: list[str] = []
    fut.add_done_callback(lambda f: seen.append(f.get()))
    fut.set("a")
    fut.set("ignored: a future is written once")
    fut.add_done_callback(lambda f: seen.append(f.get() + "!"))
    assert seen == ["a", "a!"]


def test_pykka_combinators_work() -> None:
    fut: BusFuture[int] = BusFuture.completed(3)
    assert fut.map(lambda v: v * 2).get(timeout=1) == 6
    assert BusFuture.failed(KeyError("k")).exception() is not None


def test_get_hook_is_honoured() -> None:
    fut: BusFuture[int] = BusFuture()
    fut.set_get_hook(lambda timeout: 7)
    assert fut.get(timeout=1) == 7
