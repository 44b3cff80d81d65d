"""Benchmarks (`make bench`): each module exposes `run() -> dict`; results go to bench-results.json."""
