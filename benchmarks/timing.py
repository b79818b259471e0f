"""Timing of jitted calls for the benchmark scripts (jaxal's side; imports JAX)."""

from __future__ import annotations

import time

import jax


def time_calls(fn, repeats: int) -> tuple[float, list[float]]:
    """(first call incl. compile, steady-state seconds of each further call)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, times
