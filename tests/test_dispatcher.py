"""The dispatcher and pykka's private backend seam it relies on."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest
from pykka import ActorDeadError
from pykka._envelope import Envelope
from pykka._future import _Unset

from actors import DispatchedActor, Dispatcher
from actors._runtime.dispatcher import FifoMailbox


@pytest.fixture
def dispatcher() -> Any:
    d = Dispatcher(2, throughput=8)
    yield d
    d.shutdown(5)


class Echo(DispatchedActor):
    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(dispatcher=dispatcher)
        self.seen: list[Any] = []
        self.threads: set[str] = set()
        self.started_on: str | None = None

    def on_start(self) -> None:
        self.started_on = threading.current_thread().name

    def on_receive(self, message: Any) -> Any:
        self.seen.append(message)
        self.threads.add(threading.current_thread().name)
        if message == "boom":
            raise ValueError("boom")
        return message

    def count(self) -> int:
        return len(self.seen)


def test_pykka_seam_is_what_we_plug_into() -> None:
    # Guards the private parts of pykka this package relies on.
    for name in (
        "_create_actor_inbox",
        "_start_actor_loop",
        "_create_future",
        "_actor_loop_setup",
        "_handle_receive",
        "_handle_failure",
        "_stop",
    ):
        assert hasattr(pykka.Actor, name), name
    assert isinstance(_Unset(), _Unset)  # BusFuture's class-level get-hook default
    env = Envelope("m", reply_to=None)
    assert env.message == "m"
    assert env.reply_to is None


def test_tell_ask_and_proxy_run_on_dispatcher_threads(dispatcher: Dispatcher) -> None:
    ref = Echo.start(dispatcher)
    try:
        for i in range(100):
            ref.tell(i)
        assert ref.ask("last", timeout=5) == "last"
        proxy = ref.proxy()
        assert proxy.count().get(timeout=5) == 101
        assert ref.proxy().seen.get(timeout=5) == [*range(100), "last"]
        threads = ref.proxy().threads.get(timeout=5)
        assert threads <= {f"{dispatcher.name}-0", f"{dispatcher.name}-1"}
    finally:
        ref.stop()


def test_many_actors_share_few_threads(dispatcher: Dispatcher) -> None:
    refs = [Echo.start(dispatcher) for _ in range(200)]
    try:
        for ref in refs:
            ref.tell("hi")
        names = set()
        for ref in refs:
            assert ref.ask("x", timeout=5) == "x"
            names |= ref.proxy().threads.get(timeout=5)
        assert len(names) <= 2
        assert threading.active_count() < 50
    finally:
        for ref in refs:
            ref.stop()


def test_ask_failure_is_returned_and_actor_survives(dispatcher: Dispatcher) -> None:
    ref = Echo.start(dispatcher)
    try:
        with pytest.raises(ValueError, match="boom"):
            ref.ask("boom", timeout=5)
        assert ref.ask("still here", timeout=5) == "still here"
    finally:
        ref.stop()


def test_stop_fails_pending_asks_and_later_tells(dispatcher: Dispatcher) -> None:
    ref = Echo.start(dispatcher)
    ref.stop(block=True, timeout=5)
    assert not ref.is_alive()
    with pytest.raises(ActorDeadError):
        ref.tell("late")


def test_actor_is_never_on_two_threads_at_once(dispatcher: Dispatcher) -> None:
    class Guard(DispatchedActor):
        def __init__(self, d: Dispatcher) -> None:
            super().__init__(dispatcher=d)
            self.inside = 0
            self.overlaps = 0
            self.n = 0

        def on_receive(self, message: Any) -> Any:
            self.inside += 1
            if self.inside > 1:
                self.overlaps += 1
            self.n += 1
            self.inside -= 1
            return self.n

    ref = Guard.start(dispatcher)
    try:
        barrier = threading.Barrier(4)

        def spam() -> None:
            barrier.wait()
            for _ in range(2000):
                ref.tell("x")

        threads = [threading.Thread(target=spam) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ref.ask("last", timeout=10) == 8001
        assert ref.proxy().overlaps.get(timeout=5) == 0
    finally:
        ref.stop()


def test_fifo_mailbox_blocking_put_times_out_when_full() -> None:
    box = FifoMailbox(capacity=2)
    assert box.put_blocking(1, 0)
    assert box.put_blocking(2, 0)
    assert not box.put_blocking(3, 0.01)
    assert box.take(10) == [1, 2]
    assert box.put_blocking(3, 0)


def test_fifo_mailbox_blocked_put_resumes_when_taken() -> None:
    box = FifoMailbox(capacity=1)
    box.put(1)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(box.put_blocking(2, 10)))
    t.start()
    # Whether the put is already waiting or not, taking frees room for it.
    assert box.take(1) == [1]
    t.join(10)
    assert result == [True]
    assert box.take(1) == [2]


def test_a_wake_during_a_turn_gives_another_turn(dispatcher: Dispatcher) -> None:
    # An answer (a journal page, an async batch done, room in a mailbox) may
    # call wake() while the actor's turn still runs, even one that parks.
    second = threading.Event()

    class Waker(DispatchedActor):
        def __init__(self, d: Dispatcher) -> None:
            super().__init__(dispatcher=d)
            self.turns = 0

        def _drain(self, throughput: int) -> None:
            self.turns += 1
            if self.turns == 2:
                second.set()
            elif self.turns > 2:
                return
            # Within the turn, so the claim is held: only a flag is left behind.
            self.actor_inbox.wake()

        def _on_turn_end(self) -> bool:
            return True  # park: no mail would reschedule it either

    ref = Waker.start(dispatcher)
    try:
        # No message is sent: only the wake-up can bring the second turn.
        assert second.wait(5)
    finally:
        ref.stop()


def test_a_message_during_a_waiting_turn_gives_another_turn(dispatcher: Dispatcher) -> None:
    # An actor that waits for an answer (a catch-up subscription waiting for a
    # journal page) ends its turns "parked"; the answer arrives as a message,
    # possibly while a turn still holds the claim. It must get a turn.
    answered = threading.Event()
    asked = threading.Event()

    class Asker(DispatchedActor):
        def __init__(self, d: Dispatcher) -> None:
            super().__init__(dispatcher=d)
            self.waiting = False

        def _on_message(self, message: Any) -> None:
            if message == "ask":
                self.waiting = True
                # The answer lands within this turn: put() finds the claim held.
                self.actor_inbox.put("answer")
                asked.set()
            elif message == "answer":
                self.waiting = False
                answered.set()

        def _on_turn_end(self) -> bool:
            return self.waiting  # parked until the answer

    ref = Asker.start(dispatcher)
    try:
        ref.actor_inbox.put("ask")
        assert asked.wait(5)
        assert answered.wait(5)
    finally:
        ref.stop()
