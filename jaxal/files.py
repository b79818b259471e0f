"""Opening the files jaxal reads and writes, by one set of rules. Imports no JAX, so the
command-line tools use it before their slow imports.

Every file jaxal reads (a run's checkpoint, config and records, a labelling session's
files, a label CSV, the dataset cache, an image folder's images) or locks is opened here:

- Special files are refused without blocking: the file is opened with ``O_NONBLOCK`` (a
  FIFO with no writer would block ``open`` forever) and ``fstat`` must show a regular
  file; a FIFO, device, socket or directory is a one-line error naming what it is.
- Where jaxal writes in place (the out dir's lock), no symlink is followed
  (``O_NOFOLLOW``): a link planted there cannot make jaxal truncate the file it names.
  Every other write is a new temp file renamed over the old name (``jaxal.atomic``),
  which replaces a link rather than following it.
- Sizes are checked before anything is read or inflated: a file against a bound its
  caller knows, each member of an ``.npz`` against the bytes its template needs, read
  from the zip's central directory and the member's ``.npy`` header. zipfile never
  inflates a member past the size the directory gives, so a bomb costs nothing.
- JSON nesting is bounded (``MAX_JSON_DEPTH``) before it is parsed, so a crafted file is
  an error, never a ``RecursionError``.

Each reader takes the error class and the fix its caller's message ends with.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from jaxal.errors import JaxalError, RunDirError

MAX_JSON_DEPTH = 64
# A .npy header is 64-byte aligned and holds a short dict; numpy's own limit.
MAX_NPY_HEADER = 10_000

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` is, in words ("a FIFO", "a directory", ...)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISLNK, "a symlink"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def size_text(num_bytes: int) -> str:
    """``num_bytes`` for a message: 3.2 GB, 512 kB, 70 B."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{num_bytes} B"


def open_regular(path: str | os.PathLike, fix: str, *, max_bytes: int | None = None,
                 error: type[JaxalError] = RunDirError, what: str = "") -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file of at most ``max_bytes``.

    Opened with ``O_NONBLOCK``, so a FIFO is refused instead of waited on; symlinks are
    followed (reading through one changes nothing).

    Raises:
      FileNotFoundError: there is no ``path`` (its caller knows what that means).
      error: ``path`` is not a regular file, is larger than ``max_bytes``, or cannot be
        opened (permissions); one line naming it, ending in ``fix``.
    """
    path = Path(path)
    what = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{what} is a directory; {fix}") from None
    except OSError as e:
        raise error(f"{what} cannot be opened ({e.strerror}); {fix}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} is a directory; {fix}")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} is {kind_of(info.st_mode)}, not a regular file; {fix}")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{what} holds {size_text(info.st_size)}, more than the "
                        f"{size_text(max_bytes)} it can hold here; {fix}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, fix: str, *, max_bytes: int,
               error: type[JaxalError] = RunDirError, what: str = "") -> bytes:
    """The bytes of the regular file ``path`` (``open_regular``), at most ``max_bytes``
    even if it grows while read."""
    with open_regular(path, fix, max_bytes=max_bytes, error=error, what=what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what or path} holds more than the {size_text(max_bytes)} it can "
                    f"hold here; {fix}")
    return data


def json_depth(text: str) -> int:
    """How deep the arrays and objects of the JSON ``text`` nest (0 for a scalar)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of ``text`` nested at most ``max_depth`` deep; ValueError otherwise
    (also for text that is not UTF-8 or not JSON)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if (depth := json_depth(text)) > max_depth:
        raise ValueError(f"JSON nested {depth} deep, more than {max_depth}")
    return json.loads(text)


# --- .npz archives ---------------------------------------------------------------------


def npy_bytes(shape: tuple[int, ...], dtype: np.dtype | str) -> int:
    """The bytes a ``.npy`` member of this shape and dtype holds, header included."""
    return math.prod(shape) * np.dtype(dtype).itemsize + MAX_NPY_HEADER


def npz_members(path: str | os.PathLike, fix: str, *, max_bytes: int | None,
                error: type[JaxalError] = RunDirError) -> dict[str, int]:
    """Name -> inflated size of each array of the ``.npz`` at ``path``, from the zip's
    central directory (nothing is inflated); the file itself at most ``max_bytes``."""
    with open_regular(path, fix, max_bytes=max_bytes, error=error) as f:
        try:
            with zipfile.ZipFile(f) as archive:
                return {_array_name(i.filename): i.file_size for i in archive.infolist()}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise error(f"{path} is {_damage(path, e)}; {fix}") from e


def read_npz(path: str | os.PathLike, bounds: Mapping[str, int] | Callable[[str], int],
             fix: str, *, names: tuple[str, ...] | None = None, max_bytes: int | None,
             error: type[JaxalError] = RunDirError) -> dict[str, np.ndarray]:
    """The arrays ``names`` (default: all) of the ``.npz`` at ``path``, never unpickling.

    Every member's inflated size is checked against ``bounds`` (a name's most bytes,
    header included; ``npy_bytes``) from the zip's central directory, and its ``.npy``
    header's shape and dtype against that size, before any array is inflated: memory
    never exceeds the bounds. Members not in ``names`` are never inflated.

    Raises:
      FileNotFoundError: no ``path``.
      error: a special file, a file over ``max_bytes``, a member over its bound or
        missing, an object array, or a damaged archive; one line ending in ``fix``.
    """
    bound = bounds if callable(bounds) else (lambda name: bounds.get(name, 0))
    with open_regular(path, fix, max_bytes=max_bytes, error=error) as f:
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise error(f"{path} is {_damage(path, e)}; {fix}") from e
        with archive:
            members = {_array_name(i.filename): i for i in archive.infolist()}
            wanted = tuple(members) if names is None else names
            if missing := [n for n in wanted if n not in members]:
                raise error(f"{path} is not a jaxal file (no {', '.join(missing)}); {fix}")
            for name in wanted:
                if (size := members[name].file_size) > (most := bound(name)):
                    raise error(f"{path} holds {name} of {size_text(size)} inflated, more "
                                f"than the {size_text(most)} this run needs; {fix}")
            try:
                return {name: _read_member(archive, members[name]) for name in wanted}
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
                raise error(f"{path} is {_damage(path, e)}; {fix}") from e


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The array of one ``.npy`` member whose header agrees with its size."""
    with archive.open(info) as member:
        return _read_npy(member, info.file_size, info.filename)


def _read_npy(f: BinaryIO, size: int, name: str) -> np.ndarray:
    """The array of the ``.npy`` stream ``f`` of ``size`` bytes, read only after its
    header's shape and dtype are found to take exactly those bytes."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read_header = {(1, 0): fmt.read_array_header_1_0,
                   (2, 0): fmt.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f"{name} has .npy format {version}")
    shape, fortran, dtype = read_header(f, max_header_size=MAX_NPY_HEADER)
    if dtype.hasobject:
        raise ValueError(f"{name} is an object array (a pickle), never read")
    num_bytes = math.prod(shape) * dtype.itemsize
    if f.tell() + num_bytes != size:
        raise ValueError(f"{name} claims {list(shape)} {dtype}, which is not its size")
    data = f.read(num_bytes)
    if len(data) != num_bytes:
        raise ValueError(f"{name} is truncated")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def read_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype: np.dtype | str,
             fix: str, *, error: type[JaxalError] = RunDirError) -> np.ndarray:
    """The array of the ``.npy`` file ``path`` if it holds exactly ``shape`` and
    ``dtype`` (checked from its size and header before the data is read)."""
    with open_regular(path, fix, max_bytes=npy_bytes(shape, dtype), error=error) as f:
        try:
            array = _read_npy(f, os.fstat(f.fileno()).st_size, str(path))
        except (ValueError, OSError, EOFError) as e:
            raise error(f"{path} is {_damage(path, e)}; {fix}") from e
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise error(f"{path} holds {array.dtype}{list(array.shape)}, not "
                    f"{np.dtype(dtype)}{list(shape)}; {fix}")
    return array


def _array_name(filename: str) -> str:
    return filename.removesuffix(".npy")


def _damage(path: str | os.PathLike, e: BaseException) -> str:
    try:
        if os.stat(path).st_size == 0:
            return "empty"
    except OSError:
        pass
    return f"damaged or not a jaxal file ({_one_line(e)})"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


# --- writing in place: the out dir's lock ------------------------------------------------


def open_for_update(path: str | os.PathLike, fix: str,
                    error: type[JaxalError] = RunDirError) -> int:
    """A read-write descriptor of the regular file ``path`` (created if missing), never
    through a symlink, never blocking on a special file.

    Raises:
      error: ``path`` is a symlink, a directory or a special file (it is left as it is).
      OSError: the dir is not writable (its caller names the fix).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            mode = os.lstat(path).st_mode
            raise error(f"{path} is {kind_of(mode)}, not a file jaxal wrote; {fix}") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{path} is {kind_of(info.st_mode)}, not a file jaxal wrote; {fix}")
    os.set_blocking(fd, True)
    return fd
