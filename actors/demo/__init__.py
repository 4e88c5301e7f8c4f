"""A small multi-agent workflow on the bus: ``python -m actors.demo``.

A planner splits a job between two workers; each worker calls a tool; one
tool is flaky and fails, so its event becomes a dead letter that the reviewer
escalates; the reviewer approves the other result.  Every agent is a
subscription (an actor) with a wildcard pattern.  The demo prints the events
as they flow, the workflow's causal trace, the dead letter and the metrics,
then queries and replays the workflow from the RocksDB journal.  Unless given
``--no-cluster``, it then runs the same workflow across two OS processes joined
over ZeroMQ (``actors.demo.cluster``).
"""

from __future__ import annotations

import argparse
import sys

from actors._errors import JournalLockedError
from actors.demo.workflow import DEFAULT_JOURNAL, run

__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run the demo, then its two-process part (``actors.demo.cluster``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--journal", default=DEFAULT_JOURNAL, help="journal folder")
    parser.add_argument(
        "--no-cluster", action="store_true", help="skip the part across two OS processes"
    )
    args = parser.parse_args(argv)
    try:
        status = run(args.journal)
        if status or args.no_cluster:
            return status
        from actors.demo import cluster as demo_cluster  # noqa: PLC0415 - zmq, when it runs

        print()
        return demo_cluster.run(args.journal)
    except JournalLockedError as exc:  # another demo (or node) has this journal open
        print(f"Error: {exc}; run the demo with another --journal folder", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
