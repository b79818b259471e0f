"""One writer per out dir: an exclusive lock held for the whole run. Imports no JAX, so the
command-line tools take it, and refuse a second writer, before their slow imports.

The lock is ``flock`` on ``<out dir>/.jaxal.lock``, so the kernel releases it when its
holder exits, however it exits (a lock left by a dead process never blocks). The file
names its holder (pid, host, start time, command) for the refusal message; it is removed
when the holder lets go, and an out dir the holder created and left empty (a refused
configuration, for instance) is removed too, so a refused command leaves nothing behind.

Within one process the lock is re-entrant: the CLI takes it first, and the library
function it calls (``run_experiment``) takes it again at no cost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from jaxal.errors import RunDirError
from jaxal.files import loads_json, open_for_update, read_bytes

LOCK_NAME = ".jaxal.lock"

# Resolved out dir -> [lock file descriptor, depth] of the locks this process holds.
_HELD: dict[Path, list[int]] = {}


def _holder(lock_path: Path) -> str:
    """Who holds the lock, as its file says (best effort: it may be mid-write)."""
    try:
        info = loads_json(read_bytes(lock_path, "", max_bytes=1 << 16))
        return (f"jaxal pid {info['pid']} on host {info['host']} since {info['since']} "
                f"({info['command']})")
    except (OSError, ValueError, KeyError, TypeError, RunDirError):
        return "another jaxal process"


def _open_locked(lock_path: Path, out_dir: Path) -> int:
    """A descriptor of ``lock_path`` holding its exclusive lock; RunDirError if held,
    or if ``lock_path`` is a symlink or not a regular file (left as it is)."""
    while True:
        fd = open_for_update(lock_path, "remove it (jaxal never writes through a link or "
                                        "into a special file), or choose another --out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{out_dir} is in use by {_holder(lock_path)}; wait for it to "
                              "finish, or choose another --out") from None
        # The holder we waited on may have removed the file before letting go: then the
        # lock is on an orphaned inode, and the next writer would lock a new file.
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def lock_out_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out_dir`` (created if missing) exclusively for the ``with`` block.

    Raises:
      RunDirError: another process holds it (naming its pid and host), or it cannot be
        created or written (a file in the way, no permission); nothing is changed then.
    """
    out_dir = Path(out_dir)
    key = out_dir.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield out_dir
        finally:
            _HELD[key][1] -= 1
        return
    created = _make_dirs(out_dir)
    lock_path = out_dir / LOCK_NAME
    try:
        fd = _open_locked(lock_path, out_dir)
    except OSError as e:   # not a RunDirError: the dir itself is not writable
        _remove_created(created)
        raise RunDirError(f"cannot write in {out_dir} ({e.strerror}); choose a writable "
                          "--out") from None
    except RunDirError:
        _remove_created(created)
        raise
    _HELD[key] = [fd, 1]
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%F %T"),
                  "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:500]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        yield out_dir
    finally:
        del _HELD[key]
        # Unlink while still holding the lock (see _open_locked), then let go.
        Path(lock_path).unlink(missing_ok=True)
        os.close(fd)
        _remove_created(created)


def _make_dirs(out_dir: Path) -> list[Path]:
    """Create ``out_dir`` and missing parents; the ones this call created, deepest first.

    Only a ``mkdir`` that succeeded counts: in ``new/../keep/sub`` the path ``new/../keep``
    is missing until ``new`` exists, and is then the user's own ``keep``, never removed.
    """
    missing = []
    path = out_dir
    while not os.path.exists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    if path.exists() and not path.is_dir():
        raise RunDirError(f"cannot use {out_dir} as an out dir: {path} is a file; choose "
                          "another --out")
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            _remove_created(created)
            raise RunDirError(f"cannot create {out_dir} ({e.strerror}); choose a writable "
                              "--out") from None
        created.insert(0, path)
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove the dirs this lock created, deepest first, where they are still empty."""
    for path in created:
        try:
            path.rmdir()
        except OSError:   # not empty (the run wrote there), or gone: keep / nothing to do
            return
