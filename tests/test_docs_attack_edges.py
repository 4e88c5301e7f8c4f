"""What the documentation promises, checked at its edges (a new user's reading of docs/)."""

from __future__ import annotations

import asyncio
import math
import subprocess
import threading
import time
from pathlib import Path

import pytest

from actors import AsyncEventBus, Event, EventBus, EventConfig, NodeConfig, generate_keypair
from actors._cluster.broker import Broker
from actors._cluster.limits import EventSizeCheck
from actors._codec.events import encode_event
from actors._model.config import MIN_FRAME_BYTES
from actors.cli.node import _peer_keys, _split_peer_key
from actors.cli.options import Keys
from tests._cli_support import (
    CLI,
    Running,
    cli,
    cli_redirected,
    one_error_line,
    serving,
    silent_endpoint,
)
from tests._cluster_support import WAIT, ipc, node, request_endpoint


def test_waiting_for_a_missing_peer_does_not_spin_the_io_loop(tmp_path: Path) -> None:
    # Each view() asked of the I/O thread made a turn that woke the waiter,
    # whose next view() made another: a core spent for the whole wait.
    config = NodeConfig(name="a", listen=ipc(tmp_path, "a"), heartbeat_interval=0.2)
    with EventBus(node=config) as bus:
        bridge = node(bus)._bridge  # noqa: SLF001 - the I/O loop's turn count
        before = bridge._generation  # noqa: SLF001
        start = time.monotonic()
        assert not bus.wait_for_peers(["nobody"], timeout=1.0)
        ticks = (time.monotonic() - start) / 0.2
        turns = bridge._generation - before  # noqa: SLF001
    # A heartbeat tick per interval, and a few turns for the wait's own start.
    assert turns <= 3 * ticks + 20, f"{turns} I/O turns in {ticks:.1f} heartbeat intervals"


def test_node_wait_checks_its_timeout(tmp_path: Path) -> None:
    with EventBus(node=NodeConfig(name="a", listen=ipc(tmp_path, "a"))) as bus:
        n = node(bus)
        with pytest.raises(ValueError, match="timeout"):
            n.wait(lambda _s: False, math.nan)
        with pytest.raises(TypeError, match="timeout"):
            n.wait(lambda _s: False, "5")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (threading.TIMEOUT_MAX * 2, ValueError),
        (math.nan, ValueError),
        (-1, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_remote_metrics_checks_its_timeout(
    tmp_path: Path, timeout: object, error: type[Exception]
) -> None:
    with (
        EventBus(node=NodeConfig(name="a", listen=ipc(tmp_path, "a"))) as bus,
        pytest.raises(error, match="timeout"),
    ):
        bus.remote_metrics("hub", timeout=timeout)  # type: ignore[arg-type]


def test_a_broker_refuses_keys_without_a_key_pair_of_its_own(tmp_path: Path) -> None:
    # Without CURVE it ran plain: any node joined, the keys silently ignored.
    key = generate_keypair()[0]
    with pytest.raises(ValueError, match="need CURVE"):
        Broker(ipc(tmp_path, "hub"), authorized_keys=[key])
    with pytest.raises(ValueError, match="need CURVE"):
        Broker(ipc(tmp_path, "hub"), peer_names={"a": key})


def test_serve_behind_a_broker_needs_no_listen(tmp_path: Path) -> None:
    hub = Broker(ipc(tmp_path, "hub"))
    node_proc = Running("serve", "--name", "bhub", "--peer", hub.endpoint)
    try:
        lines = dict(node_proc.line().split(" ", 1) for _ in range(4))
        assert lines["request"] == "none"
        assert lines["publish"] == "none"
        # Reached by name through the broker.
        result = cli(
            "pub", "--peer", hub.endpoint, "--node", "bhub", "--timeout", "30", "t.x", "{}"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("published t.x on bhub ")
    finally:
        node_proc.kill()
        hub.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "--name", "x"), "give --listen, or a --peer"),
        (
            ("serve", "--name", "x", "--listen", "tcp://127.0.0.1:0", "--peer-name", "a=KEY"),
            "--peer-name needs --public-key",
        ),
        (("broker", "tcp://127.0.0.1:0", "--peer-name", "a=KEY"), "--peer-name needs --public-key"),
    ],
)
def test_serve_and_broker_option_mistakes_are_usage_errors(
    args: tuple[str, ...], message: str
) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert message in one_error_line(result)


def test_a_curve_serve_without_a_peer_key_for_its_peer_is_a_usage_error(tmp_path: Path) -> None:
    public, secret = generate_keypair()
    (tmp_path / "k.key").write_bytes(public)
    (tmp_path / "k.key_secret").write_bytes(secret)
    result = cli(
        "serve", "--name", "x", "--listen", "tcp://127.0.0.1:0",
        "--public-key", str(tmp_path / "k.key"), "--secret-key", str(tmp_path / "k.key_secret"),
        "--authorize", str(tmp_path / "k.key"), "--peer", "tcp://127.0.0.1:1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "each --peer needs its --peer-key" in one_error_line(result)


def test_sub_removes_a_ready_file_left_by_an_earlier_run(tmp_path: Path) -> None:
    # The documented wait loop (`while [ ! -e FILE ]`) passed at once on a
    # second run: the first run's file was still there.
    ready = tmp_path / "sub.ready"
    ready.write_text("subscribed to user.* at hub\n")
    result = cli(
        "sub", "user.*", "--peer", silent_endpoint(), "--timeout", "0.5",
        "--ready-file", str(ready),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert not ready.exists()


def test_query_with_since_after_until_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("query", "--journal", str(tmp_path), "--since", "1h", "--until", "2h")
    assert result.returncode == 2
    assert "--since is after --until" in one_error_line(result)


def test_bench_rate_nan_is_a_usage_error() -> None:
    result = cli("bench", "--rate", "nan", "--count", "10")
    assert result.returncode == 2
    assert "not a number of events per second" in one_error_line(result)


@pytest.mark.parametrize("args", [("pub", "--help"), ("-vh",), ("keygen", "-h")])
def test_help_with_stdout_closed_is_one_error_line(args: tuple[str, ...]) -> None:
    # Python starts with sys.stdout None: click printed the help nowhere, status 0.
    result = cli_redirected(">&-", *args)
    assert result.returncode == 1
    assert result.stderr == "Error: cannot write to standard output: it is closed\n"


def test_a_usage_error_before_the_help_is_still_the_usage_error() -> None:
    # Only a help click would print is refused: `-h` as an option's value, or
    # after a command that does not exist, is not a help request.
    result = cli_redirected(">&-", "bogus", "-h")
    assert result.returncode == 2
    assert "No such command 'bogus'" in one_error_line(result)


def test_no_command_prints_the_help_laid_out_on_stderr() -> None:
    result = cli()
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: llmspell-events")
    assert any(line.split()[:1] == ["serve"] for line in lines)  # one command a line


def test_publish_remote_sizes_the_event_as_its_target_stamps_it(tmp_path: Path) -> None:
    # The event takes the target's name as its origin; it was sized with the
    # asking node's name (a long one refused an event the target would send).
    frame = MIN_FRAME_BYTES
    long_name = "c" * 200
    fits_hub = EventSizeCheck(frame, "hub").limit
    assert EventSizeCheck(frame, long_name).limit < fits_hub
    data = "x" * (fits_hub - len(encode_event(Event(event_type="t.x", data=""))) - 8)
    event = Event(event_type="t.x", data=data)
    assert EventSizeCheck(frame, long_name).limit < len(encode_event(event)) <= fits_hub
    hub_config = NodeConfig(name="hub", listen=ipc(tmp_path, "hub"), max_frame_bytes=frame)
    with EventBus(node=hub_config) as hub:
        client_config = NodeConfig(
            name=long_name, peers=(request_endpoint(hub),), max_frame_bytes=frame
        )
        with EventBus(node=client_config) as client:
            assert client.wait_for_peers(["hub"], timeout=WAIT)
            published = client.publish_remote("hub", event, timeout=WAIT)
            hub.respond("q.*", lambda _e: "ok")
            # A request to a node is published there too: sized as it stamps it.
            reply = client.request("q.x", data, node="hub", timeout=WAIT)
            areply = asyncio.run(
                AsyncEventBus(bus=client).request("q.x", data, node="hub", timeout=WAIT)
            )
    assert published.origin == "hub"
    assert published.data == data
    assert reply.data == areply.data == "ok"


def test_a_range_error_names_the_bound_as_it_is() -> None:
    with pytest.raises(ValueError, match=r"must be <= 999999999, not 999999999\.5"):
        EventConfig(retention_days=999_999_999.5)


def test_a_timeout_past_what_a_wait_can_take_says_so() -> None:
    result = cli("query", "--journal", ".", "--timeout", "9223372037")
    assert result.returncode == 2
    assert "more than a wait can take (at most" in one_error_line(result)


@pytest.mark.parametrize("prefix", ["", "keys/", ".", "keys/.", ".."])
def test_keygen_out_without_a_file_name_is_a_usage_error(tmp_path: Path, prefix: str) -> None:
    # It wrote hidden files named ".key" and ".key_secret".
    result = subprocess.run(
        [*CLI, "keygen", "--out", prefix],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "names no file" in one_error_line(result)
    assert list(tmp_path.rglob("*")) == []


def test_a_peer_key_holding_an_equals_sign_is_read_whole() -> None:
    # "=" is a Z85 character (about 4 keys in 10 hold one): ENDPOINT=KEY was
    # split at the last "=", and such a key was taken for a file name.
    key = "=" * 40
    assert _split_peer_key(f"tcp://127.0.0.1:5701={key}") == ("tcp://127.0.0.1:5701", "=", key)
    assert _split_peer_key("tcp://127.0.0.1:5701=hub.key") == (
        "tcp://127.0.0.1:5701",
        "=",
        "hub.key",
    )
    public = generate_keypair()[0].decode()
    keys = _peer_keys((f"tcp://127.0.0.1:5701={public}",), (), Keys(*generate_keypair()))
    assert keys == {"tcp://127.0.0.1:5701": public.encode()}


def test_no_command_with_stdout_closed_still_prints_the_help_on_stderr() -> None:
    result = cli_redirected(">&-")
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: llmspell-events")


def test_a_peer_key_file_after_an_endpoint_holding_an_equals_sign(tmp_path: Path) -> None:
    key_file = tmp_path / "hub=1.key"  # "=" in the file name too
    endpoint = f"ipc://{tmp_path}/a=b.sock"
    key_file.write_text(generate_keypair()[0].decode())
    assert _split_peer_key(f"{endpoint}={key_file}") == (endpoint, "=", str(key_file))


def test_a_ready_file_with_the_longest_name_is_written(tmp_path: Path) -> None:
    # The scratch file beside it was named after it, and passed NAME_MAX.
    ready = tmp_path / ("r" * 250)
    with serving("--name", "hub") as (_, endpoint):
        tail = Running("sub", "x.*", "--peer", endpoint, "--ready-file", str(ready))
        try:
            assert tail.line(tail.err).startswith("subscribed to x.* at ")
            assert ready.read_text().startswith("subscribed to x.* at ")
            assert tail.interrupt() == 0
        finally:
            tail.kill()
    assert not ready.exists()
