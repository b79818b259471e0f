"""Process settings that make XLA:CPU faster: memory reuse, huge pages, thread use.

1. Reuse freed memory. XLA:CPU allocates each execution's temporaries with ``malloc``
   (about 2 GB for the exact GGN diagonal of the seed CNN on 1000 images). glibc serves
   every allocation above its mmap threshold (at most 32 MB) with fresh pages from
   ``mmap`` and unmaps them on ``free``, so each execution page-faults its whole working
   set in again: measured ~10% of the all-weights curvature fits
   (``benchmarks/hessian_variants.py``). With mmap off and trimming off, such
   allocations come from the heap and freed memory stays there, so the next execution
   reuses pages that are already mapped. Peak memory is unchanged; the process keeps it
   until it exits.
2. Run executables on the calling thread. (1) holds only for the main thread's heap.
   With JAX's asynchronous CPU dispatch the executable runs on a worker thread, whose
   glibc arena cannot hold a block over 64 MB: glibc then maps the block directly,
   whatever M_MMAP_MAX says, and unmaps it on free (seen with ``strace``: a 1.2 GB map
   and unmap per exact KFAC fit). The fresh pages cost page faults and kernel page
   clearing, measured 0.7-0.9 s on a 1.6 s fit in about half of the calls. So
   asynchronous dispatch is turned off (``jax_cpu_enable_async_dispatch``). It must be
   set before JAX creates its CPU client, which ``import jaxal`` does not do; where the
   client exists already, or the user set JAX_CPU_ENABLE_ASYNC_DISPATCH, it is left
   alone. Training throughput with a Python loop around a jitted step was the same
   either way, within this machine's run-to-run spread. Peak memory can be higher by up
   to one temporary block: when a small allocation was carved from a freed block, the
   next call's temporaries no longer fit there and the heap grows once (measured: the
   same KFAC benchmark process peaked at 2.2 GB in one run and 3.5 GB in another); it
   did not grow further over repeated fits and predictions.
3. Huge pages. Transparent huge pages for that memory (2 MB pages: 512x fewer page
   faults and TLB misses) gain another ~13% on the same fits, but glibc reads the
   switch, ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, only when a process starts, so
   it is the user's to export (README.md, "Speed on Linux"); the benchmarks set it for
   their child processes (``with_huge_pages``). jaxal never restarts a process to set
   it: a restart drops interpreter flags, profilers and debuggers.
4. One LAPACK thread. LAPACK calls inside jitted code (``eigh`` of the KFAC factors,
   Cholesky of a full posterior) run in scipy's OpenBLAS, whose own threads, one per
   core, spin for a while after each call and so compete with XLA's threads for the
   same cores: measured +0.24 s on the 1.3 s exact KFAC fit, whose eigendecompositions
   take 0.03 s. OPENBLAS_NUM_THREADS=1 is set unless the user set it; scipy loads its
   OpenBLAS at the first LAPACK call, after ``import jaxal`` (so not where scipy.linalg
   was imported before jaxal). The cost falls on large LAPACK calls that run alone: the
   last-layer full GGN fit at twice the seed CNN's width (2570 parameters) took 1.34 s
   instead of 0.96 s; at the seed width 0.22 s instead of 0.20 s. Two threads with a
   short spin (OPENBLAS_THREAD_TIMEOUT=4) gave 1.02 s there but 1.46 s on the KFAC fit.

Nothing here runs on import: ``configure_cpu()`` applies 1, 2 and 4 (1 and 2 with glibc
only), as numpyro's ``set_host_device_count`` does its setting. The command-line tools and
the benchmarks call it first thing; notebooks and scripts may (README.md). Set
``JAXAL_MALLOC_TUNING=0`` to make it keep glibc's, JAX's and OpenBLAS's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping
from typing import NamedTuple

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


def run_on_calling_thread() -> bool:
    """Turn JAX's asynchronous CPU dispatch off; True where applied (see the module doc).

    Not where the user chose (JAX_CPU_ENABLE_ASYNC_DISPATCH set) or where JAX's backends
    exist already (the setting is read once, when the CPU client is created).
    """
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        return False
    import jax

    try:
        from jax._src.xla_bridge import backends_are_initialized
        if backends_are_initialized():
            return False
    except ImportError:   # private API moved: setting the option is harmless either way
        pass
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def single_threaded_lapack() -> bool:
    """OPENBLAS_NUM_THREADS=1 for scipy's OpenBLAS, loaded later; True where applied."""
    if "OPENBLAS_NUM_THREADS" in os.environ or "scipy.linalg" in sys.modules:
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    return True


class CPUSettings(NamedTuple):
    """Which settings ``configure_cpu`` applied (False: not applicable, or the user's own
    setting kept)."""

    malloc_tuned: bool            # glibc keeps freed memory (mallopt)
    sync_dispatch: bool           # XLA:CPU runs executables on the calling thread
    single_threaded_lapack: bool  # OPENBLAS_NUM_THREADS=1


def configure_cpu() -> CPUSettings:
    """Apply the XLA:CPU process settings of the module doc, unless JAXAL_MALLOC_TUNING=0.

    Call it before JAX's first computation (and before scipy.linalg is imported) for all
    of them to take effect. Synchronous dispatch only where the malloc settings apply
    (glibc), as it serves them. Calling it again changes nothing more.
    """
    if not tuning_enabled():
        return CPUSettings(False, False, False)
    malloc_tuned = reuse_freed_memory()
    return CPUSettings(malloc_tuned, malloc_tuned and run_on_calling_thread(),
                       single_threaded_lapack())
