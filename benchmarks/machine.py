"""What a timing was measured on: CPU model, the vector extensions that matter, cores.

Imported by the benchmark scripts on both sides of a comparison (jaxal's and the PyTorch
reference's), so it imports neither jax nor torch.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The extensions XLA:CPU and oneDNN pick kernels by.
VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """{"model", "vector_flags", "cpus", "platform"} of this machine (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "vector_flags": [f for f in VECTOR_FLAGS if f in flags],
            "cpus": os.cpu_count(), "platform": platform.platform()}


def describe(info: dict) -> str:
    """One line: 'Intel(R) Xeon(R) Processor, 2 cpus, avx2 avx512f amx_tile'."""
    wide = [f for f in info["vector_flags"] if f in ("avx2", "avx512f", "amx_tile")]
    return f"{info['model']}, {info['cpus']} cpus, {' '.join(wide) or 'no AVX2'}"
