"""scikit-build-core's build backend, after checking what the build needs, so that a
missing compiler or oneDNN wheel fails the install with one line that names it (CMake's
own errors run to many)."""

from __future__ import annotations

import os
import shutil
from importlib import metadata

from scikit_build_core import build as _backend
from scikit_build_core.build import *  # noqa: F403  (the hooks not wrapped below)


def _missing() -> str | None:
    compiler = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if compiler is None or shutil.which(compiler) is None:
        return ("jaxal[onednn] needs a C++17 compiler: install one (Debian/Ubuntu: "
                "apt-get install g++) or set CXX, then reinstall")
    try:
        files = metadata.files("onednn-devel-cpu-gomp") or []
    except metadata.PackageNotFoundError:
        files = []
    if not any(f.name == "dnnl-config.cmake" for f in files):
        return ("jaxal[onednn] needs oneDNN's CPU wheel with headers: pip install "
                "onednn-devel-cpu-gomp (or build with pip's build isolation on)")
    try:
        import jax.ffi  # noqa: F401
    except ImportError:
        return "jaxal[onednn] needs JAX's XLA FFI headers: pip install 'jax>=0.4.31'"
    return None


def _checked(hook):
    def run(*args, **kwargs):
        missing = _missing()
        if missing:
            raise SystemExit(f"error: {missing}")
        return hook(*args, **kwargs)
    return run


build_wheel = _checked(_backend.build_wheel)
build_editable = _checked(_backend.build_editable)
