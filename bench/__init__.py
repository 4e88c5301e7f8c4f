"""Benchmarks of SPEC section 11: ``python -m bench`` (see ``docs/performance.md``)."""
