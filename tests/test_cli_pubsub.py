"""``pub`` and ``sub`` (``actors/cli/pubsub.py``), and the ``--peer`` forms of the readers.

Real processes around one served node per module; each test uses its own
event types, so they share the node's journal without seeing each other.
"""

from __future__ import annotations

import functools
import json
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import EventBus, NodeConfig
from tests._cli_support import WAIT, Running, cli, serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The request endpoint of a persistent node named ``hub``."""
    journal = tmp_path_factory.mktemp("hub") / "journal"
    with serving("--name", "hub", "--journal", str(journal)) as (_node, endpoint):
        yield endpoint


@pytest.fixture(scope="module")
def feeder(hub: str) -> Iterator[EventBus]:
    """An in-process node that has ``hub`` publish events (setup without a process each)."""
    with EventBus(node=NodeConfig(name="feeder", peers=(hub,))) as bus:
        assert bus.linked_nodes(WAIT) == ["hub"]
        yield bus


def feed(feeder: EventBus, event_type: str, data: object) -> None:
    feeder.publish_remote("hub", event_type, data, timeout=WAIT)


def pub(endpoint: str, event_type: str, *args: str, input: str | None = None) -> str:
    result = cli("pub", event_type, *args, "--peer", endpoint, input=input)
    assert result.returncode == 0, result.stderr
    return result.stdout


def stored(endpoint: str, event_type: str) -> list[dict[str, object]]:
    result = cli("query", "--peer", endpoint, "--type", event_type, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def subscribed(tail: Running) -> str:
    line = tail.line(tail.err)
    assert line.startswith("subscribed to "), line
    return line


def test_sub_receives_exactly_what_pub_sent_in_order(hub: str, tmp_path: Path) -> None:
    cid = uuid.uuid4()
    ready = tmp_path / "ready"
    tail = Running(
        "sub", "order.*", "--peer", hub, "--count", "3", "--json", "--ready-file", str(ready)
    )
    try:
        assert subscribed(tail) == "subscribed to order.* at hub"
        assert ready.read_text() == "subscribed to order.* at hub\n"
        sent = [{"n": i, "who": f"user-{i}"} for i in range(3)]
        for data in sent:
            out = pub(hub, "order.placed", json.dumps(data), "--correlation-id", str(cid),
                      "--source", "cli")  # fmt: skip
            assert out.startswith("published order.placed on hub ")
        received = [json.loads(tail.line()) for _ in range(3)]
        assert tail.line() == "<eof>"
        assert tail.finish() == 0
    finally:
        tail.kill()
    assert not ready.exists()  # the subscription ended with the command
    assert [e["data"] for e in received] == sent
    assert {(e["origin"], e["source"], e["correlation_id"]) for e in received} == {
        ("hub", "cli", str(cid))
    }
    assert [e["data"] for e in stored(hub, "order.*")] == sent

    traced = cli("trace", str(cid), "--peer", hub)
    assert traced.returncode == 0, traced.stderr
    assert "(3 events" in traced.stdout
    assert "origins: hub (3)" in traced.stdout


def test_pub_reads_data_from_stdin_and_from_a_file(hub: str, tmp_path: Path) -> None:
    pub(hub, "data.stdin", "-", input='{"from": "stdin"}')
    big = {"blob": "x" * 3_000_000}
    (tmp_path / "big.json").write_text(json.dumps(big))
    pub(hub, "data.file", f"@{tmp_path / 'big.json'}")
    assert [e["data"] for e in stored(hub, "data.stdin")] == [{"from": "stdin"}]
    assert [e["data"] for e in stored(hub, "data.file")] == [big]

    missing = cli("pub", "data.file", f"@{tmp_path / 'nope.json'}", "--peer", hub)
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    bad = cli("pub", "data.stdin", "-", "--peer", hub, input="{not json")
    assert bad.returncode == 2
    assert "not JSON" in bad.stderr


def test_pub_count_publishes_n_events_with_progress(hub: str) -> None:
    result = cli("pub", "many.x", '{"k": 1}', "--count", "5", "--peer", hub)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("published 5 many.x on hub, the last ")
    assert result.stderr.splitlines()[-1] == "published 5/5"
    events = stored(hub, "many.x")
    assert len(events) == 5
    assert len({e["id"] for e in events}) == 5


def test_the_peer_comes_from_the_environment(hub: str) -> None:
    result = cli("pub", "env.x", env={"LLMSPELL_EVENTS_PEER": hub})
    assert result.returncode == 0, result.stderr
    assert len(stored(hub, "env.x")) == 1


def test_sub_from_sequence_prints_the_journal_then_follows(hub: str, feeder: EventBus) -> None:
    for n in range(3):
        feed(feeder, "hist.x", n)
    sequences = [e["sequence"] for e in stored(hub, "hist.x")]
    tail = Running(
        "sub", "hist.*", "--peer", hub, "--from-sequence", str(sequences[1]), "--count", "3",
        "--json",
    )  # fmt: skip
    try:
        subscribed(tail)
        feed(feeder, "hist.x", 3)
        received = [json.loads(tail.line()) for _ in range(3)]
        assert tail.finish() == 0
    finally:
        tail.kill()
    assert [e["data"] for e in received] == [1, 2, 3]
    assert [e["sequence"] for e in received][:2] == sequences[1:]


def test_sub_durable_resumes_where_it_stopped(hub: str, feeder: EventBus, tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    first = Running("sub", "dur.*", "--peer", hub, "--durable", "audit", "--count", "2",
                    "--json", *state)  # fmt: skip
    try:
        subscribed(first)
        for n in range(2):
            feed(feeder, "dur.x", n)
        assert [json.loads(first.line())["data"] for _ in range(2)] == [0, 1]
        assert first.finish() == 0
    finally:
        first.kill()
    for n in range(2, 4):  # while nobody listens
        feed(feeder, "dur.x", n)
    again = cli("sub", "dur.*", "--peer", hub, "--durable", "audit", "--count", "2", "--json",
                *state)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["data"] for line in again.stdout.splitlines()] == [2, 3]


def test_query_follow_prints_new_events_until_interrupted(hub: str, feeder: EventBus) -> None:
    feed(feeder, "fol.x", "before")
    tail = Running("query", "--peer", hub, "--type", "fol.*", "--follow", "--json")
    try:
        assert json.loads(tail.line())["data"] == "before"
        assert tail.line(tail.err) == "following the journal of hub"
        feed(feeder, "fol.x", "after")
        feed(feeder, "other.x", "not this")
        feed(feeder, "fol.y", "and after")
        assert json.loads(tail.line())["data"] == "after"
        assert json.loads(tail.line())["data"] == "and after"
        tail.proc.send_signal(signal.SIGINT)
        tail.proc.send_signal(signal.SIGINT)  # a second one does not cut the closing short
        assert tail.finish() == 0
        assert tail.line(tail.err) == "<eof>"
    finally:
        tail.kill()


def test_the_readers_ask_a_running_node(hub: str, feeder: EventBus) -> None:
    feed(feeder, "peer.x", 1)
    figures = cli("stats", "--peer", hub, "--json")
    assert figures.returncode == 0, figures.stderr
    counts = json.loads(figures.stdout)
    assert counts["node"] == "hub"
    assert counts["by_type"]["peer.x"] == 1
    assert counts["size_bytes"] is None  # live figures do not travel

    since = cli("query", "--peer", hub, "--type", "peer.x", "--since", "1h", "--json")
    assert len(since.stdout.splitlines()) == 1
    assert cli("query", "--peer", hub, "--type", "peer.x", "--until", "1h").stdout == ""


def test_a_silent_endpoint_is_one_line_saying_so() -> None:
    with socket.socket() as probe:  # held bound, never listening: no one else can serve there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        result = cli("pub", "a.b", "--peer", f"tcp://127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: no node answered at tcp://127.0.0.1:{port} within 1 s (is a node serving "
        "there? through a broker, name it with --node)"
    ]


def test_an_endpoint_without_a_scheme_fails_at_once() -> None:
    result = cli("pub", "a.b", "{}", "--peer", "127.0.0.1:27701", "--timeout", "2")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "has no scheme" in result.stderr


def test_pub_refuses_a_reserved_type_before_connecting(hub: str) -> None:
    result = cli("pub", "$bus.fake", "--peer", hub, "--timeout", "5")
    assert result.returncode == 2  # a usage error, like any event type the bus refuses
    assert "reserved" in result.stderr


def test_a_node_without_a_journal_says_how_to_keep_one() -> None:
    with serving("--name", "plain") as (_node, endpoint):
        for command in (
            ["query", "--peer", endpoint],
            ["stats", "--peer", endpoint],
            ["sub", "a.*", "--peer", endpoint, "--from-sequence", "1"],
        ):
            result = cli(*command)
            assert result.returncode == 1, command
            (line,) = result.stderr.splitlines()
            assert line.startswith("Error: node 'plain' could not read its journal: ")
            assert "llmspell-events serve --journal DIR" in line


def test_sub_stops_cleanly_on_sigterm(hub: str) -> None:
    tail = Running("sub", "stop.*", "--peer", hub)
    try:
        subscribed(tail)
        tail.proc.send_signal(signal.SIGTERM)
        assert tail.finish() == 0
        assert tail.line(tail.err) == "<eof>"
    finally:
        tail.kill()


def test_pub_sets_every_field_it_is_given(hub: str) -> None:
    cid, cause = uuid.uuid4(), uuid.uuid4()
    result = cli(
        "pub", "fields.x", '{"a": 1}', "--peer", hub, "--correlation-id", str(cid),
        "--causation-id", str(cause), "--source", "planner", "--target", "worker",
        "--name", "my-cli", "--listen", "tcp://127.0.0.1:0", "--node", "hub",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (event,) = stored(hub, "fields.x")
    assert (event["correlation_id"], event["causation_id"]) == (str(cid), str(cause))
    assert (event["source"], event["target"], event["origin"]) == ("planner", "worker", "hub")


def _serve_back(endpoint: str, folder: str) -> Running:
    """Start a node named back on ``endpoint`` with the journal in ``folder``."""
    node = Running("serve", "--name", "back", "--listen", endpoint, "--journal", folder)
    lines = dict(node.line().split(" ", 1) for _ in range(4))
    assert lines["request"] == endpoint, lines
    return node


@pytest.mark.parametrize("journal", ["same journal", "another journal"])
@pytest.mark.parametrize("reader", ["query --follow", "sub --from-sequence"])
def test_a_follower_waits_for_its_node_to_come_back(
    tmp_path: Path, reader: str, journal: str
) -> None:
    """docs/cli.md: --follow prints like tail -f until Ctrl-C.  A node down for
    longer than --timeout ended the follower with "did not answer in time"; one
    back with another journal (its sequences from 1 again) was followed past
    what its old journal had printed, so nothing was printed."""
    endpoint = f"ipc://{tmp_path}/node.sock"
    start = functools.partial(_serve_back, endpoint)
    node = start(str(tmp_path / "journal"))
    common = ("--peer", endpoint, "--json", "--timeout", "0.5")
    args = (
        ("query", "--type", "rs.*", "--follow", *common)
        if reader == "query --follow"
        else ("sub", "rs.*", "--from-sequence", "1", *common)
    )
    tail = Running(*args)
    try:
        assert pub(endpoint, "rs.a", '"one"').startswith("published rs.a on back ")
        assert json.loads(tail.line())["data"] == "one"
        assert node.interrupt() == 0
        said = tail.line(tail.err)
        while "is not answering" not in said:  # after its first line, in force
            said = tail.line(tail.err)
        assert said.startswith("node back is not answering ("), said
        node = start(str(tmp_path / ("journal" if journal == "same journal" else "other")))
        assert tail.line(tail.err) == (
            "node back answers again; following on"
            if journal == "same journal"
            else "node back answers again with a journal that ends at #0, before #1 printed: "
            "another journal; following it from the start"
        )
        assert pub(endpoint, "rs.a", '"two"').startswith("published rs.a on back ")
        assert json.loads(tail.line())["data"] == "two"
        assert tail.interrupt(signal.SIGINT) == 0
    finally:
        tail.kill()
        node.kill()


@pytest.mark.slow
def test_a_node_back_on_another_journal_is_read_again_from_the_asked_start(
    tmp_path: Path,
) -> None:
    """``sub --from-sequence 2`` rewound to the journal's first event, not the second,
    when its node came back on another journal; and a node back at once (never seen
    away) was followed past what the old journal had printed, skipping the new one's
    first events without a word."""
    endpoint = f"ipc://{tmp_path}/node.sock"
    start = functools.partial(_serve_back, endpoint)
    node = start(str(tmp_path / "journal"))
    tail = Running("sub", "rs.*", "--from-sequence", "2", "--peer", endpoint, "--json")
    try:
        for name in ("a1", "a2", "a3"):
            pub(endpoint, "rs.a", f'"{name}"')
        assert [json.loads(tail.line())["data"] for _ in range(2)] == ["a2", "a3"]
        assert node.interrupt() == 0
        node = start(str(tmp_path / "other"))  # at once: the follower may never see it away
        said = tail.line(tail.err)
        while "another journal" not in said:  # whichever way it noticed
            said = tail.line(tail.err)
        assert said.endswith("another journal; following it from the start"), said
        for name in ("b1", "b2", "b3", "b4"):
            pub(endpoint, "rs.a", f'"{name}"')
        got = [json.loads(tail.line())["data"] for _ in range(3)]
        assert got == ["b2", "b3", "b4"]  # from --from-sequence 2 again
        assert tail.interrupt(signal.SIGINT) == 0
    finally:
        tail.kill()
        node.kill()


def test_a_sub_ending_leaves_another_subs_ready_file(hub: str, tmp_path: Path) -> None:
    # Two subs given one ready file: the first to end removed the file the
    # second had written, though the second was still subscribed.
    ready = tmp_path / "ready"
    first = Running("sub", "x.*", "--peer", hub, "--count", "1", "--ready-file", str(ready))
    second = None
    try:
        subscribed(first)
        second = Running("sub", "x.*", "--peer", hub, "--ready-file", str(ready))
        subscribed(second)  # written after the first's: the file is the second's now
        pub(hub, "x.y", "{}")
        assert first.finish() == 0
        assert ready.exists()
        assert second.interrupt() == 0
        assert not ready.exists()  # its own: removed as it ended
    finally:
        first.kill()
        if second is not None:
            second.kill()
