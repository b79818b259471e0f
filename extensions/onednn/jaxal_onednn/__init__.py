"""oneDNN 2-D convolutions as XLA FFI handlers, for ``jaxal.conv``.

``handlers()`` maps each FFI target name to its handler (a capsule for
``jax.ffi.register_ffi_target``); ``plans()`` lists every convolution planned so far with
the kernel oneDNN chose for it; ``onednn_version()`` the library's version. Importing
this module loads oneDNN (``libdnnl.so.3`` from the ``onednn-cpu-gomp`` wheel) and
registers nothing.
"""

from __future__ import annotations

import ctypes
import sys
from importlib import metadata
from pathlib import Path


def _load_onednn() -> None:
    """Load libdnnl from the onednn-cpu-gomp wheel's files, wherever pip put them (the
    extension's RPATH covers the usual <prefix>/lib; this covers the rest)."""
    try:
        files = metadata.files("onednn-cpu-gomp") or []
    except metadata.PackageNotFoundError:
        return
    for f in files:
        if f.name == "libdnnl.so.3":
            path = Path(f.locate()).resolve()
            if path.exists():
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return


if sys.platform.startswith("linux"):
    _load_onednn()

from jaxal_onednn._conv import handlers, onednn_version, plans  # noqa: E402

__all__ = ["handlers", "onednn_version", "plans"]
