"""The benchmarks' one timing helper for jaxal's side (imports JAX; the PyTorch references
time with torch's own synchronisation)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class Timed(NamedTuple):
    """Wall seconds of ``fn()``: the first call (compile included), each further call, and
    the last call's output."""

    first_s: float
    times_s: list[float]
    out: Any

    @property
    def seconds(self) -> float:
        """Steady state: the median of the further calls (the first's with none)."""
        return statistics.median(self.times_s) if self.times_s else self.first_s

    @property
    def compile_s(self) -> float:
        """First call minus steady state: compilation and other one-off work."""
        return max(self.first_s - self.seconds, 0.0)

    def record(self) -> dict:
        """What a result JSON keeps: {"seconds", "compile_s", "times_s"}."""
        return {"seconds": self.seconds, "compile_s": self.compile_s, "times_s": self.times_s}


def time_calls(fn: Callable[[], Any], repeats: int) -> Timed:
    """Call ``fn`` once, then ``repeats`` more times, each until its outputs are ready
    (``jax.block_until_ready``: JAX dispatches asynchronously)."""
    times, out = [], None
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return Timed(times[0], times[1:], out)
