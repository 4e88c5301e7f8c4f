"""``tests/_node_child.py`` as an origin that predates ``max_bytes`` in recovery requests.

It answers up to its own frame limit, whatever the asker can take: an answer
too large for the asker, which can never reach it (``tests/test_recovery_io.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import actors._cluster.request_io as request_io
from tests._node_child import main

_fit = request_io.fit_asker
request_io.fit_asker = lambda pieces, reply, own, body: _fit(pieces, reply, own, {})
request_io.answer_limit = lambda own, body: own

if __name__ == "__main__":
    main()
