"""Benchmarks, run by ``make bench`` (``python -m bench``). Results go to docs/benchmarks.md."""
