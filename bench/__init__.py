"""Benchmarks of SPEC section 11: ``python -m bench`` (see ``docs/performance.md``)."""

import os as _os

# ``python -m bench --pin``: a process it starts (multiprocessing's spawn
# imports this package while it unpickles its target, before the target
# runs) moves to the CPUs named here before the bus starts a thread.
_cpus = _os.environ.get("BENCH_CHILD_CPUS")
if (
    _cpus
    and hasattr(_os, "sched_setaffinity")
    and _os.environ.get("BENCH_PIN_PARENT") != str(_os.getpid())
):
    _os.sched_setaffinity(0, {int(c) for c in _cpus.split(",")})
