"""Benchmarks of nembed-compress: size, fit quality, speed, scaling and accuracy.

Run them with ``python -m benchmarks.run``; ``benchmarks/README.md`` explains each one,
the quick mode and the baseline gate. Every benchmark module exposes
``run(ctx: BenchContext) -> BenchResult`` (see :mod:`benchmarks.common`).
"""
