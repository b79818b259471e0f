"""Tests for jaxal.runtime: the glibc malloc settings applied on import and by the CLIs.

Their effect is speed, which tests never assert (``benchmarks/hessian_variants.py``
measures it); these check that the settings are applied, that they can be turned off,
and that the CLI restart sets the tunable exactly once and then goes on.
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


@pytest.mark.skipif(not GLIBC, reason="the malloc settings are glibc's")
def test_import_applies_malloc_settings_unless_turned_off():
    code = "import jaxal; print(jaxal.runtime.MALLOC_TUNED)"
    assert run_python(["-c", code], {}).stdout.strip() == "True"
    assert run_python(["-c", code], {"JAXAL_MALLOC_TUNING": "0"}).stdout.strip() == "False"


@pytest.mark.skipif(not GLIBC, reason="the malloc settings are glibc's")
def test_import_runs_executables_on_the_calling_thread_unless_told_otherwise():
    code = ("import jaxal, jax; print(jaxal.runtime.SYNC_DISPATCH, "
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


def test_import_asks_for_one_lapack_thread_unless_told_otherwise():
    code = ("import os, jaxal; print(jaxal.runtime.SINGLE_THREADED_LAPACK, "
            "os.environ.get('OPENBLAS_NUM_THREADS'))")
    assert run_python(["-c", code], {}).stdout.split() == ["True", "1"]
    assert run_python(["-c", code], {"JAXAL_MALLOC_TUNING": "0"}).stdout.split() == \
        ["False", "None"]
    assert run_python(["-c", code], {"OPENBLAS_NUM_THREADS": "2"}).stdout.split() == \
        ["False", "2"]
    # scipy's OpenBLAS already loaded: the variable would not reach it, so it is not set.
    late = "import scipy.linalg; " + code
    assert run_python(["-c", late], {}).stdout.split() == ["False", "None"]


@pytest.mark.skipif(not GLIBC, reason="the huge-page tunable is glibc's")
def test_cli_restart_sets_the_tunable_once_and_goes_on(tmp_path):
    (tmp_path / "probe.py").write_text(
        "import os, sys\n"
        "from jaxal.runtime import reexec_with_huge_pages\n"
        "print('start', flush=True)\n"
        "reexec_with_huge_pages('probe')\n"
        "print('tunables', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = run_python(["-m", "probe", "--x", "1"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # Started twice (before and after the restart), finished once, arguments kept.
    assert out.stdout.splitlines() == ["start", "start",
                                       f"tunables {HUGE_PAGES_TUNABLE} ['--x', '1']"]
    out = run_python(["-m", "probe"], env | {"JAXAL_MALLOC_TUNING": "0"}, cwd=tmp_path)
    assert out.stdout.splitlines() == ["start", "tunables None []"]


@pytest.mark.skipif(not GLIBC, reason="the huge-page tunable is glibc's")
def test_run_cli_still_answers_after_its_restart():
    out = run_python(["-m", "jaxal.run", "--help"], {})
    assert out.returncode == 0, out.stderr
    assert "--acq" in out.stdout
