"""Endpoints and refusals as the commands report them: usage errors name the fault once."""

from __future__ import annotations

import re

import click
import pytest

from actors import NodeConfig
from actors._model.config import IPC_PATH_MAX
from actors.cli.options import ENDPOINT, PEER
from tests._cli_support import cli, one_error_line, serving


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("ipc://", "'ipc://' needs a name"),
        ("inproc://", "'inproc://' needs a name"),
        ("tcp://127.0.0.1:99999", "port 99999 is out of range"),
        ("ws://127.0.0.1:1", "unknown scheme 'ws' (tcp, ipc or inproc)"),
        ("wss://127.0.0.1:1", "unknown scheme 'wss'"),
        ("pgm://eth0;239.192.1.1:5555", "unknown scheme 'pgm'"),
        ("epgm://eth0;239.192.1.1:5555", "unknown scheme 'epgm'"),
    ],
)
def test_an_endpoint_no_node_accepts_is_refused_as_such(endpoint: str, says: str) -> None:
    with pytest.raises(click.BadParameter, match=re.escape(says)) as caught:
        ENDPOINT.convert(endpoint, None, None)
    assert "write tcp://" not in str(caught.value)


@pytest.mark.parametrize(
    "endpoint", ["ws://127.0.0.1:1", "ipc://", "tcp://127.0.0.1:99999", "tcp://127.0.0.1:*"]
)
def test_a_command_given_such_an_endpoint_is_a_usage_error(endpoint: str) -> None:
    result = cli("pub", "a.b", "{}", "--peer", endpoint, "--timeout", "2")
    assert result.returncode == 2, result.stderr
    assert "--peer" in result.stderr


def test_a_client_named_like_the_node_is_told_once() -> None:
    with serving("--name", "hub") as (_node, endpoint):
        result = cli("pub", "t.x", "{}", "--peer", endpoint, "--name", "hub", "--timeout", "10")
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.count("refused this node") == 1, line
    assert "node names must be unique" in line


@pytest.mark.parametrize(
    "args",
    [
        ("broker", "tcp://127.0.0.1:0", "--peer-name", "no-key"),
        ("broker", "tcp://127.0.0.1:0", "--peer-name", "a=short"),
        ("serve", "--name", "n", "--listen", "tcp://127.0.0.1:0", "--peer-name", "=" + "k" * 40),
    ],
)
def test_a_peer_name_without_a_name_and_a_key_is_a_usage_error(args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert "--peer-name" in result.stderr


@pytest.mark.parametrize("port", ["65534", "65535"])
def test_a_broker_port_without_two_ports_above_it_is_a_usage_error(port: str) -> None:
    # A broker takes PORT, PORT+1 and PORT+2; a node PORT and PORT+1.
    result = cli("broker", f"tcp://127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr
    assert "leaves no room" in one_error_line(result)


def test_an_ipc_path_past_the_systems_limit_is_refused_before_anything_starts() -> None:
    # ZeroMQ's limit is IPC_PATH_MAX bytes; a listening node also binds
    # PATH.pub beside it.  Before, such a path failed at bind, with zmq's
    # own message (status 1 from the CLI).
    def path(n: int) -> str:
        return "ipc:///tmp/" + "x" * (n - len("/tmp/"))

    ENDPOINT.convert(path(IPC_PATH_MAX - 4), None, None)
    PEER.convert(path(IPC_PATH_MAX), None, None)
    with pytest.raises(click.BadParameter, match="at most 103 bytes"):
        ENDPOINT.convert(path(IPC_PATH_MAX - 3), None, None)
    with pytest.raises(click.BadParameter, match=f"at most {IPC_PATH_MAX} bytes"):
        PEER.convert(path(IPC_PATH_MAX + 1), None, None)
    with pytest.raises(ValueError, match="at most 103 bytes"):
        NodeConfig(name="n", listen=path(IPC_PATH_MAX - 3))
    with pytest.raises(ValueError, match=f"at most {IPC_PATH_MAX} bytes"):
        NodeConfig(name="n", listen="ipc:///tmp/n", peers=[path(IPC_PATH_MAX + 1)])
    result = cli("pub", "a.b", "{}", "--peer", path(IPC_PATH_MAX + 1), "--timeout", "2")
    assert result.returncode == 2, result.stderr


def test_a_wildcard_host_to_connect_to_is_a_usage_error() -> None:
    with pytest.raises(click.BadParameter, match="wildcard host can only be listened on"):
        PEER.convert("tcp://*:5701", None, None)
    result = cli("pub", "a.b", "{}", "--peer", "tcp://*:5701", "--timeout", "2")
    assert result.returncode == 2, result.stderr
