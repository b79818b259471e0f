"""Tests for jaxal.runtime: the XLA:CPU process settings, applied by one explicit call.

Their effect is speed, which tests never assert (``benchmarks/hessian_variants.py``
measures it); these check that ``import jaxal`` changes nothing, that
``configure_cpu()`` applies the settings, and that they can be turned off.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from jaxal.runtime import HUGE_PAGES_TUNABLE, with_huge_pages

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def run_python(args, env_changes, cwd=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "JAXAL_MALLOC_TUNING", "JAX_CPU_ENABLE_ASYNC_DISPATCH",
                        "OPENBLAS_NUM_THREADS")}
    env.update(env_changes)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_with_huge_pages_adds_the_tunable_once():
    assert with_huge_pages({})["GLIBC_TUNABLES"] == HUGE_PAGES_TUNABLE
    merged = with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "1"})
    assert merged == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}",
                      "A": "1"}
    assert with_huge_pages(merged) == merged   # already there: unchanged
    off = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert with_huge_pages(off) == off         # the user's explicit choice wins


@pytest.mark.slow
def test_importing_jaxal_changes_nothing_in_the_process():
    """Environment, JAX's config, glibc's malloc and matplotlib's backend stay as they were,
    whatever jaxal modules are imported."""
    code = (
        "import ctypes, importlib, os, pkgutil\n"
        "import jax, matplotlib\n"
        "before = dict(os.environ)\n"
        "dispatch, backend = jax.config.read('jax_cpu_enable_async_dispatch'), "
        "matplotlib.get_backend()\n"
        "import jaxal\n"
        "for m in pkgutil.walk_packages(jaxal.__path__, 'jaxal.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(dict(os.environ) == before, "
        "jax.config.read('jax_cpu_enable_async_dispatch') == dispatch, "
        "matplotlib.get_backend() == backend)\n"
        # glibc's M_MMAP_MAX is not readable; mallinfo2's mmap count shows it in effect:
        # a 64 MB block is mmapped under the default, taken from the heap when tuned.
        "libc = ctypes.CDLL(None)\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', "
        "'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc.mallinfo2.restype = Info\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "p = libc.malloc(64 << 20)\n"
        "print(libc.mallinfo2().hblks > 0)\n")
    out = run_python(["-c", code], {})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "True True True"
    if GLIBC:
        assert lines[1] == "True", "a 64 MB malloc was not mmapped: mallopt was changed"


@pytest.mark.skipif(not GLIBC, reason="the malloc settings are glibc's")
def test_configure_cpu_applies_malloc_settings_unless_turned_off():
    code = ("from jaxal.runtime import configure_cpu\n"
            "print(configure_cpu().malloc_tuned)")
    assert run_python(["-c", code], {}).stdout.strip() == "True"
    assert run_python(["-c", code], {"JAXAL_MALLOC_TUNING": "0"}).stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the malloc settings are glibc's")
def test_configure_cpu_runs_executables_on_the_calling_thread_unless_told_otherwise():
    code = ("import jaxal, jax; print(jaxal.runtime.configure_cpu().sync_dispatch, "
            "jax.config.values['jax_cpu_enable_async_dispatch'])")
    assert run_python(["-c", code], {}).stdout.split() == ["True", "False"]
    # Off with the other settings, and never over the user's own choice ...
    assert run_python(["-c", code], {"JAXAL_MALLOC_TUNING": "0"}).stdout.split() == \
        ["False", "True"]
    assert run_python(["-c", code], {"JAX_CPU_ENABLE_ASYNC_DISPATCH": "true"}).stdout.split() \
        == ["False", "True"]
    # ... nor where JAX's CPU client exists already (the option would not take effect).
    late = "import jax; jax.numpy.ones(1).block_until_ready(); " + code
    assert run_python(["-c", late], {}).stdout.split() == ["False", "True"]


@pytest.mark.slow
def test_configure_cpu_asks_for_one_lapack_thread_unless_told_otherwise():
    code = ("import os, jaxal; print(jaxal.runtime.configure_cpu().single_threaded_lapack, "
            "os.environ.get('OPENBLAS_NUM_THREADS'))")
    assert run_python(["-c", code], {}).stdout.split() == ["True", "1"]
    assert run_python(["-c", code], {"JAXAL_MALLOC_TUNING": "0"}).stdout.split() == \
        ["False", "None"]
    assert run_python(["-c", code], {"OPENBLAS_NUM_THREADS": "2"}).stdout.split() == \
        ["False", "2"]
    # scipy's OpenBLAS already loaded: the variable would not reach it, so it is not set.
    late = "import scipy.linalg; " + code
    assert run_python(["-c", late], {}).stdout.split() == ["False", "None"]


@pytest.mark.slow
def test_run_cli_answers_help_without_restarting():
    out = run_python(["-m", "jaxal.run", "--help"], {})
    assert out.returncode == 0, out.stderr
    assert "--acq" in out.stdout and "{random,entropy," in out.stdout
