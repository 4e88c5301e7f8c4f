"""BusFuture: the light pykka future of the publish path."""

from __future__ import annotations

import asyncio
import threading

import pykka
import pytest

from actors import BusFuture, FutureTimeoutError
from actors._runtime.future import wrap_future


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


def test_a_callback_that_raises_is_logged_and_spares_the_others_and_the_completer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fut: BusFuture[str] = BusFuture()
    seen: list[str] = []

    def boom(_: BusFuture[str]) -> None:
        raise RuntimeError("callback failed")

    fut.add_done_callback(boom)
    fut.add_done_callback(lambda f: seen.append(f.get()))
    fut.set("a")  # does not raise: the completer is one of the bus's threads
    fut.add_done_callback(boom)  # already done: called at once, and still does not raise
    fut.add_done_callback(lambda f: seen.append(f.get() + "!"))
    assert seen == ["a", "a!"]
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["callback failed"] * 2


def test_pykka_combinators_work() -> None:
    fut: BusFuture[int] = BusFuture.completed(3)
    assert fut.map(lambda v: v * 2).get(timeout=1) == 6
    assert BusFuture.failed(KeyError("k")).exception() is not None


def test_get_hook_is_honoured() -> None:
    fut: BusFuture[int] = BusFuture()
    fut.set_get_hook(lambda timeout: 7)
    assert fut.get(timeout=1) == 7


def test_timeout_may_be_given_positionally() -> None:
    fut: BusFuture[int] = BusFuture()
    with pytest.raises(FutureTimeoutError):
        fut.get(0)
    fut.set(5)
    assert fut.get(1) == 5


def test_wrap_future_awaits_without_blocking_the_loop() -> None:
    async def main() -> tuple[int, list[str]]:
        fut: BusFuture[int] = BusFuture()
        order: list[str] = []
        waiter = asyncio.ensure_future(wrap_future(fut))
        await asyncio.sleep(0)  # the loop keeps running while the future is pending
        order.append("loop ran")
        threading.Thread(target=fut.set, args=(9,)).start()
        value = await asyncio.wait_for(waiter, 5)
        order.append("awaited")
        return value, order

    assert asyncio.run(main()) == (9, ["loop ran", "awaited"])


def test_wrap_future_raises_the_stored_exception() -> None:
    async def main() -> None:
        await wrap_future(BusFuture.failed(KeyError("k")))

    with pytest.raises(KeyError):
        asyncio.run(main())
