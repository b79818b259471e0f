"""Atomic file writing: a temp file in the same dir, then ``os.replace``, so a reader (or
a rerun after a kill) sees the old file or the new one, never half of one. Imports no
JAX, so the dataset cache and the figures use it before, or without, the slow imports.

A killed write leaves its temp file, ``.<name>.<8 random chars>.tmp`` (``TEMP_NAME``);
``jaxal.apps.results.remove_temp_files`` removes those from an out dir.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from jaxal.errors import RunDirError

# The temp names ``write_atomic`` makes (mkstemp's 8 characters of [a-z0-9_]), and the
# .<name>.tmp.<png|pdf> figures were written through before they used it.
TEMP_NAME = re.compile(r"\..+\.(?:[a-z0-9_]{8}\.tmp|tmp\.(?:png|pdf))")

RERUN = "rerun the same command: the run resumes after the last finished round"


def _umask() -> int:
    """The process umask, read from /proc (Linux) or else set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                 full_disk_fix: str | None = RERUN) -> None:
    """Write ``path`` with ``write(f)`` into a temp file in the same dir, then rename it.

    The file gets mode 0o666 & ~umask like any new file, not mkstemp's 0600 (which would
    also hide a shared dataset cache from other users). On any failure the old file stays
    and the temp file is removed.

    Args:
      path: the file to (re)write.
      write: writes the whole content to the open binary file it is given, e.g.
        ``lambda f: f.write(data)`` or ``lambda f: fig.savefig(f, format="png")``.
      full_disk_fix: a full disk (ENOSPC, EDQUOT) raises ``RunDirError`` naming this fix,
        and so do a dir that cannot be written (read-only file system, no permission)
        and a directory in the file's place;
        None lets the ``OSError`` through, for a file its caller can do without (a cache).
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if (full_disk_fix is not None and isinstance(e, OSError)
                and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise RunDirError(f"disk full writing {path}; free space and "
                              f"{full_disk_fix}") from e
        if (full_disk_fix is not None and isinstance(e, OSError)
                and e.errno in (errno.EISDIR, errno.ENOTEMPTY)):
            raise RunDirError(f"{path} is a directory, where jaxal writes a file; move it "
                              f"away and {full_disk_fix}") from e
        if (full_disk_fix is not None and isinstance(e, OSError)
                and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)):
            raise RunDirError(f"cannot write {path} ({e.strerror}); make {path.parent} "
                              f"writable (or copy it to a writable place) and "
                              f"{full_disk_fix}") from e
        raise
