"""A folder of the user's own images as an active-learning pool (real labelling).

    photos/                 the folder given to ``python -m jaxal.label --images photos``
      img_0001.jpg          unlabelled: images directly in the folder
      ...
      cat/  a.png b.png     already labelled: one subfolder per class, named after it
      dog/  c.jpg

Every image, labelled or not, is a pool point; its pool index is its place in the sorted
list of relative paths (``ImageFolder.files``), so indices stay fixed while the folder
does. Images of any size are resized to the declared ``(height, width, channels)``
(bilinear, antialiased; 1 channel: greyscale, 3: RGB, alpha dropped), or with
``resize=False`` must already have it. The classes are the declared ``class_names`` in
that order (classes nobody has labelled yet included), else the sorted subfolder names.
Pixels are standardised per channel by the folder's own statistics. There is no
validation or test split: nobody knows the labels.

Hidden files and files with other suffixes are skipped (and counted); a file with an
image suffix that cannot be decoded, or one of the wrong size without resizing, stops the
read with a one-line ``ImageFolderError`` naming the file.

An image is known by its content: every file is read (a regular file only: a FIFO or
device named like an image is refused, never waited on; ``jaxal.files``) and its sha256
kept (``ImageFolder.sha256``), so an image replaced under the same name, size and
modification time is a changed image, and one merely touched is not. Decoding thousands
of large photos takes minutes, so with a ``cache_dir`` (a labelling session's dir) the
decoded arrays are kept in one ``.npy`` file, keyed by every file's path and content
hash and the declared shape; a later read with the same key loads it (its shape checked
before it is read), any change decodes afresh. The cache dir also keeps each file's
hash with its size, mtime, ctime and inode (``HASHES``), so that a file none of these
changed for is not read again, as git's index does: replacing a file, or rewriting it
and resetting its mtime, changes its ctime, which no user can set. (Like git, a file
changed within ``RACY_NS`` of being hashed is not trusted so: a clock tick could hide
a second change.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxal.atomic import write_atomic
from jaxal.config import IMAGE_FOLDER  # noqa: F401  (re-exported: the dataset's name)
from jaxal.data import ALSplit, channel_statistics
from jaxal.errors import JaxalError
from jaxal.files import loads_json, read_bytes, read_npy
from jaxal.resources import check_memory, image_folder_need

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_SHAPE = (32, 32, 3)
# The largest image file read (PIL refuses decompression bombs on its own).
MAX_IMAGE_BYTES = 256 << 20
# In the cache dir: path -> [[size, mtime, ctime, inode, device], sha256] of each file.
HASHES = "image-hashes.json"
RACY_NS = 2_000_000_000   # coarser than any file system's timestamps


class ImageFolderError(JaxalError, ValueError):
    """An image folder jaxal cannot read: the message names the file or folder."""


class ImageFolder(NamedTuple):
    images: np.ndarray              # uint8 [n, h, w, c], in the order of ``files``
    files: tuple[str, ...]          # relative POSIX paths, sorted; index = pool index
    labels: np.ndarray              # int32 [n]: class of a subfolder's image, -1 if none
    class_names: tuple[str, ...]
    skipped: int                    # files that are not images (other suffix, hidden)
    cache_key: str = ""             # of the files' paths, contents and the shape
    sha256: tuple[str, ...] = ()    # of each file's content, in the order of ``files``
    signatures: tuple[tuple[int, ...], ...] = ()   # each file's stat when it was hashed

    @property
    def digest(self) -> str:
        """sha256 of the file list: a session's labels refer to these pool indices."""
        return hashlib.sha256("\n".join(self.files).encode()).hexdigest()


def _listing(root: Path) -> tuple[list[str], list[str], int]:
    """(unlabelled image files, class subfolder names, files skipped) of ``root``."""
    images, classes, skipped = [], [], 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped += not entry.is_dir()
        elif entry.is_dir():
            classes.append(entry.name)
        elif entry.name.lower().endswith(SUFFIXES):
            images.append(entry.name)
        else:
            skipped += 1
    return images, classes, skipped


def read_image_folder(root: str | os.PathLike, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                      class_names: tuple[str, ...] = (), resize: bool = True,
                      cache_dir: str | os.PathLike | None = None) -> ImageFolder:
    """Read ``root`` (layout in the module docstring) into uint8 arrays of ``shape``,
    through the decoded-array cache in ``cache_dir`` when one is given.

    Raises:
      ImageFolderError: the folder is missing or holds no images, a subfolder is not a
        declared class, fewer than 2 classes are known, or an image cannot be decoded
        (or has the wrong size with ``resize=False``): each names what to fix.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"--images {root}: no such folder; give the folder of "
                               "your images")
    height, width, channels = shape
    if channels not in (1, 3) or height < 1 or width < 1:
        raise ImageFolderError(f"--image-shape {height} {width} {channels}: give a height "
                               "and width >= 1 and 1 (greyscale) or 3 (RGB) channels")
    loose, folders, skipped = _listing(root)
    if class_names:
        if len(set(class_names)) != len(class_names):
            raise ImageFolderError(f"--classes {' '.join(class_names)} names a class twice")
        strays = [f for f in folders if f not in class_names]
        if strays:
            raise ImageFolderError(
                f"{root / strays[0]}/ is not one of --classes {' '.join(class_names)}; add "
                "it to --classes, or move that folder out of --images")
    else:
        class_names = tuple(folders)
    if len(class_names) < 2:
        raise ImageFolderError(
            f"{root} gives {len(class_names)} class(es) ({', '.join(class_names) or 'none'});"
            " declare them with --classes NAME NAME ..., or put already labelled images in "
            "one subfolder per class")
    files, labels = list(loose), [-1] * len(loose)
    for y, name in enumerate(class_names):
        if name in folders:
            inner, nested, more = _listing(root / name)
            if nested:
                raise ImageFolderError(
                    f"{root / name / nested[0]}/ is a folder inside class folder {name}/; "
                    "a class folder holds images only: move it out")
            files += [f"{name}/{f}" for f in inner]
            labels += [y] * len(inner)
            skipped += more
    order = sorted(range(len(files)), key=files.__getitem__)
    files, labels = [files[i] for i in order], [labels[i] for i in order]
    if not files:
        raise ImageFolderError(f"{root} holds no images (looked for {', '.join(SUFFIXES)} "
                               "files, directly and in class subfolders)")
    # Before any file is read: a shape the machine cannot hold is refused with its size.
    check_memory([image_folder_need(len(files), shape)])
    sha256, signatures = _content_hashes(root, files, cache_dir)
    key = _cache_key(files, sha256, shape, resize)
    images = (None if cache_dir is None else
              _load_cached(Path(cache_dir) / f"images-{key}.npy", (len(files), *shape)))
    if images is None:
        images = np.empty((len(files), height, width, channels), np.uint8)
        for i, name in enumerate(files):
            data = _image_bytes(root / name)
            if hashlib.sha256(data).hexdigest() != sha256[i]:
                raise ImageFolderError(f"{root / name} changed while the folder was read; "
                                       "read it again once nothing writes to it")
            images[i] = _read_image(root / name, (height, width, channels), resize, data)
    return ImageFolder(images, tuple(files), np.asarray(labels, np.int32),
                       tuple(class_names), skipped, key, sha256, signatures)


def _content_hashes(root: Path, files: list[str], cache_dir: str | os.PathLike | None
                    ) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """(sha256 of each file's content, the stat signature it was hashed at); a file whose
    signature ``cache_dir``'s ``HASHES`` holds unchanged is not read again."""
    known, now = _read_hashes(cache_dir), time.time_ns()
    hashes, signatures = [], []
    for name in files:
        path = root / name
        try:
            info = os.stat(path)
        except FileNotFoundError:
            info = None
        signature = () if info is None or info.st_ctime_ns > now - RACY_NS else (
            info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)
        old = known.get(name)
        if (signature and stat.S_ISREG(info.st_mode) and isinstance(old, list)
                and len(old) == 2 and old[0] == list(signature) and isinstance(old[1], str)):
            hashes.append(old[1])
        else:   # _image_bytes refuses a special file, or one that is gone
            hashes.append(hashlib.sha256(_image_bytes(path)).hexdigest())
        signatures.append(signature)
    return tuple(hashes), tuple(signatures)


def _read_hashes(cache_dir: str | os.PathLike | None) -> dict:
    """The ``HASHES`` of ``cache_dir`` ({} if none, or not one: then every file is read)."""
    if cache_dir is None:
        return {}
    try:
        known = loads_json(read_bytes(Path(cache_dir) / HASHES, "", max_bytes=256 << 20))
    except (OSError, ValueError, JaxalError):
        return {}
    return known if isinstance(known, dict) else {}


def _image_bytes(path: Path) -> bytes:
    """The content of an image file: a regular file of at most ``MAX_IMAGE_BYTES``."""
    try:
        return read_bytes(path, "replace or remove it", max_bytes=MAX_IMAGE_BYTES,
                          error=ImageFolderError)
    except FileNotFoundError:
        raise ImageFolderError(f"{path} disappeared while the folder was read; read it "
                               "again once nothing changes it") from None


def save_cache(folder: ImageFolder, cache_dir: str | os.PathLike) -> None:
    """Keep ``folder``'s decoded images and its files' hashes in ``cache_dir`` for
    ``read_image_folder`` (one folder state: older caches there are removed)."""
    hashes = {name: [list(signature), sha256] for name, signature, sha256 in zip(
        folder.files, folder.signatures, folder.sha256, strict=True)}
    if hashes != _read_hashes(cache_dir):
        text = json.dumps(hashes, sort_keys=True)
        write_atomic(Path(cache_dir) / HASHES, lambda f: f.write(text.encode()))
    path = Path(cache_dir) / f"images-{folder.cache_key}.npy"
    if path.exists():
        return
    for old in path.parent.glob("images-*.npy"):
        old.unlink(missing_ok=True)
    write_atomic(path, lambda f: np.save(f, folder.images, allow_pickle=False))


def _cache_key(files: list[str], sha256: tuple[str, ...], shape, resize: bool) -> str:
    """sha256 over every file's path and content hash, the shape and the resize flag."""
    digest = hashlib.sha256(repr((tuple(shape), resize)).encode())
    for name, content in zip(files, sha256, strict=True):
        digest.update(f"{name}\0{content}\n".encode())
    return digest.hexdigest()[:32]


def _load_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached uint8 array of ``shape``, or None if absent or not that (a damaged
    cache is decoded afresh, never trusted; one of another size is never read)."""
    try:
        return read_npy(path, shape, np.uint8, "it is decoded afresh").copy()
    except (OSError, JaxalError):
        return None


def _read_image(path: Path, shape: tuple[int, int, int], resize: bool,
                data: bytes | None = None) -> np.ndarray:
    """The image ``path`` (decoded from ``data``, its content, when given) as uint8
    ``shape``."""
    from PIL import Image

    height, width, channels = shape
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning (a huge image) is an unreadable file here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                # JPEG decodes at a reduced scale (1/2 ... 1/8) when that still covers
                # the target: large photos decode many times faster.
                image.draft("L" if channels == 1 else "RGB", (width, height))
                image.load()
                image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageFolderError(f"{path} cannot be read as an image ({reason}); replace or "
                               "remove it") from None
    if image.size != (width, height):
        if not resize:
            raise ImageFolderError(
                f"{path} is {image.size[1]}x{image.size[0]} (height x width), not the declared"
                f" {height}x{width}; resize it, or let jaxal resize (drop --no-resize)")
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8).reshape(shape)


def folder_split(folder: ImageFolder) -> ALSplit:
    """The folder as the loop's split: every image in the pool (labels -1 where nobody
    labelled it), standardised by the folder's own per-channel statistics; empty
    validation and test sets (no labels to hold out)."""
    c = folder.images.shape[-1]
    mean, std = channel_statistics(folder.images.reshape(-1, c))
    x = (folder.images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) \
        / np.asarray(std, np.float32)
    empty_x, empty_y = x[:0], np.zeros(0, np.int32)
    return ALSplit(pool_x=x, pool_y=folder.labels.copy(), val_x=empty_x, val_y=empty_y,
                   test_x=empty_x, test_y=empty_y, pool_index=np.arange(len(x)),
                   val_index=np.zeros(0, np.int64), num_classes=len(folder.class_names))
