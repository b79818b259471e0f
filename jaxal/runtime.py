"""Process settings that make XLA:CPU faster: reuse freed memory, on huge pages.

XLA:CPU allocates each execution's temporaries with ``malloc`` (about 2 GB for the exact
GGN diagonal of the seed CNN on 1000 images). glibc serves every allocation above its
mmap threshold (at most 32 MB) with fresh pages from ``mmap`` and unmaps them on
``free``, so each execution page-faults its whole working set in again: measured ~10%
of the all-weights curvature fits (``benchmarks/hessian_variants.py``). With mmap off
and trimming off, such allocations come from the heap and freed memory stays there,
so the next execution reuses pages that are already mapped. Peak memory is unchanged;
the process keeps it until it exits.

``import jaxal`` applies this once (glibc only; elsewhere it does nothing). Set
``JAXAL_MALLOC_TUNING=0`` before importing to keep glibc's defaults.

Transparent huge pages for that memory (2 MB pages: 512x fewer page faults and TLB
misses) gain another ~13% on the same fits, but glibc reads the switch,
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, only when a process starts: jaxal's
command-line tools restart themselves once with it (``reexec_with_huge_pages``), and
README.md shows how to set it for notebooks and scripts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Mapping

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def tuning_enabled() -> bool:
    """False where the user set JAXAL_MALLOC_TUNING=0 (keep glibc's defaults)."""
    return os.environ.get("JAXAL_MALLOC_TUNING", "1") != "0"


def reuse_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it; True where applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (macOS, musl): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM))


def with_huge_pages(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with glibc's huge-page tunable added to GLIBC_TUNABLES (unless set there)."""
    env = dict(env)
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE) if t)
    return env


def reexec_with_huge_pages(module: str) -> None:
    """Restart ``python -m module`` with huge pages on, once; returns where nothing to do.

    For the ``__main__`` block of a command-line tool, before any work: Linux with glibc
    only, not when JAXAL_MALLOC_TUNING=0, and not when GLIBC_TUNABLES already names the
    setting (so the restarted process goes on).
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not tuning_enabled():
        return
    env = with_huge_pages(os.environ)
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def apply_default_settings() -> bool:
    """What ``import jaxal`` does: ``reuse_freed_memory`` unless JAXAL_MALLOC_TUNING=0."""
    return tuning_enabled() and reuse_freed_memory()


# Applied on import (``import jaxal`` imports this module before any large allocation).
MALLOC_TUNED = apply_default_settings()
