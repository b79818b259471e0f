"""TFDS image datasets as numpy arrays: load a prepared dataset, or prepare one offline.

Images are read with `tfds.data_source` (array_record files, random access) so that loading
never imports TensorFlow; only *preparing* a dataset (download, or offline from the original
files with ``python -m jaxal.data prepare``) needs it. Decoding 70k PNGs takes seconds, so the
decoded arrays are cached in memory and on disk, keyed by a hash of the prepared files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import time
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from jaxal.atomic import write_atomic
from jaxal.errors import JaxalError
from jaxal.files import loads_json, npy_bytes, read_bytes, read_npz

logger = logging.getLogger(__name__)


_CACHE_FORMAT = 1


_CHUNK_SIZE = 4096  # records per `__getitems__` call: big enough to amortise the reader


class DatasetSpec(NamedTuple):
    """What jaxal needs to know about a TFDS image-classification dataset."""

    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (h, w, c)
    mean: tuple[float, ...]  # per channel, of pixel/255 over the train split
    std: tuple[float, ...]
    download_url: str  # where TFDS downloads from; its host is probed before downloading
    manual_files: tuple[str, ...]  # the original files `prepare --manual-dir` expects


_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", 10, (28, 28, 1), (0.1307,), (0.3081,),
        "https://storage.googleapis.com/cvdf-datasets/mnist/", _MNIST_FILES,
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,),
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", _MNIST_FILES,
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", ("cifar-10-binary.tar.gz",),
    ),
}  # fmt: skip


class UnknownDatasetError(JaxalError, ValueError):
    """The dataset name is not one of `DATASETS`."""


class DatasetNotPreparedError(JaxalError, RuntimeError):
    """The dataset is not prepared in the data dir and could not be downloaded."""


class DatasetCorruptError(DatasetNotPreparedError):
    """The prepared files are unreadable, truncated or corrupt; preparing again fixes them."""


class DataDirPermissionError(DatasetNotPreparedError):
    """The data dir, or the dataset's files in it, cannot be read by this user."""


class ChecksumError(JaxalError, ValueError):
    """An original file (in --manual-dir, or downloaded) is not the one TFDS expects."""


class MissingDependencyError(JaxalError, RuntimeError):
    """Preparing a dataset needs a package that is not installed."""


class ImageDataset(NamedTuple):
    """A dataset as TFDS stores it: uint8 NHWC images and int32 labels, train and test."""

    name: str
    version: str
    train_images: np.ndarray  # uint8 [n, h, w, c]
    train_labels: np.ndarray  # int32 [n]
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    # Per channel, of pixel/255 over the train split: the table's for the datasets of
    # `DATASETS`, computed from the train images for any other.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def get_spec(name: str) -> DatasetSpec:
    """Returns the spec of a known dataset, or raises `UnknownDatasetError` listing them."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}."
        ) from None


def spec_from_info(name: str, builder: Any) -> DatasetSpec:
    """The spec of any TFDS image-classification dataset, read from its builder's info:
    an ``image`` feature of fixed shape, a ``label`` class feature, ``train`` and ``test``
    splits (checked once prepared). Its mean and std are left empty: `load_dataset`
    computes them.

    Raises:
      UnknownDatasetError: the dataset is not one, naming what it lacks.
    """
    features = builder.info.features
    keys = set(features.keys()) if hasattr(features, "keys") else set()
    image, label = features["image"] if "image" in keys else None, (
        features["label"] if "label" in keys else None)
    shape = tuple(getattr(image, "shape", ()) or ())
    if (image is None or len(shape) != 3 or None in shape or label is None
            or getattr(label, "num_classes", None) is None):
        raise UnknownDatasetError(
            f"{name!r} is not an image-classification dataset jaxal can read (it needs an "
            f"'image' feature of fixed shape [h, w, c] and a 'label' class feature; it has "
            f"{sorted(keys) or 'no features'}); choose another, or one of "
            f"{', '.join(sorted(DATASETS))}")
    # The splits are known once the dataset is prepared (before, the load fails anyway).
    splits = builder.info.splits
    missing = [s for s in ("train", "test") if s not in splits]
    if len(splits) and missing:
        raise UnknownDatasetError(
            f"{name!r} has no {' or '.join(missing)} split (it has "
            f"{', '.join(sorted(builder.info.splits)) or 'none'}); jaxal's pool and test "
            "sets come from train and test")
    return DatasetSpec(name, int(label.num_classes), shape, (), (), "", ())


def _builder_or_unknown(name: str, data_dir: Path) -> Any:
    """``tfds.builder(name)`` for a name outside `DATASETS`; an unknown name raises
    `UnknownDatasetError` with the fix."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=str(data_dir))
    except Exception as err:   # TFDS raises DatasetNotFoundError and others
        # TFDS's message lists its whole catalogue (kilobytes): name the closest instead.
        if type(err).__name__ == "DatasetNotFoundError":
            reason = "not a TFDS dataset" + _close_names(name)
        else:
            reason = _one_line(err)[:200]
        raise UnknownDatasetError(
            f"Unknown dataset {name!r} ({reason}); known datasets: "
            f"{', '.join(sorted(DATASETS))}, or any TFDS image-classification dataset "
            "(e.g. svhn_cropped, emnist/letters)") from None


def _close_names(name: str) -> str:
    """'; did you mean ...?' with up to three dataset names close to ``name``, or ''."""
    import difflib

    import tensorflow_datasets as tfds

    try:
        names = [*DATASETS, *tfds.list_builders()]
    except Exception:   # the catalogue is a hint only
        names = list(DATASETS)
    close = difflib.get_close_matches(name, list(dict.fromkeys(names)), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_readable(name: str, data_dir: Path) -> None:
    """Refuse a data dir (or the dataset's dirs in it) this user may not read, naming the
    permission: TFDS would report such a dataset as not prepared."""
    tfds_name = DATASETS[name].tfds_name if name in DATASETS else name
    dataset_dir = data_dir / tfds_name.split("/")[0]
    paths = [data_dir, dataset_dir]
    if os.access(dataset_dir, os.R_OK | os.X_OK) and dataset_dir.is_dir():
        paths += sorted(p for p in dataset_dir.iterdir() if p.is_dir())
    for path in paths:
        if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
            raise DataDirPermissionError(
                f"cannot read {path} (permission denied for this user); give it read "
                f"access (chmod -R u+rX {path}), or point --data-dir / TFDS_DATA_DIR at a "
                "data dir you can read")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The TFDS data dir: `data_dir`, else `$TFDS_DATA_DIR`, else TFDS's default."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR")
    if data_dir is None:
        import tensorflow_datasets as tfds

        data_dir = tfds.core.constants.DATA_DIR
    return Path(data_dir).expanduser().absolute()


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The decoded-array cache dir: `cache_dir`, else `$JAXAL_CACHE_DIR`, else ~/.cache/jaxal."""
    if cache_dir is None:
        cache_dir = os.environ.get("JAXAL_CACHE_DIR", "~/.cache/jaxal")
    return Path(cache_dir).expanduser().absolute()


# Decoded datasets already loaded in this process, keyed like the disk cache.
_MEMORY_CACHE: dict[str, ImageDataset] = {}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Loads a TFDS image dataset into numpy arrays, through the memory and disk caches.

    Args:
      name: a key of `DATASETS`.
      data_dir: TFDS data dir; see `resolve_data_dir`.
      download: whether to download and prepare the dataset when it is not prepared in
        `data_dir` (only tried when its download host is reachable; needs TensorFlow).
      cache_dir: where decoded arrays are cached; see `resolve_cache_dir`.

    Returns:
      The dataset; its arrays are read-only because they are shared with the memory cache.

    Raises:
      UnknownDatasetError: `name` is not in `DATASETS`.
      DatasetNotPreparedError: not prepared in `data_dir`, and not downloadable.
      DatasetCorruptError: prepared, but a prepared file is missing, unreadable or corrupt.
      ChecksumError: a downloaded original file has the wrong checksum.
    """
    data_dir = resolve_data_dir(data_dir)
    _check_readable(name, data_dir)
    # Imported here so that `import jaxal` (and toy-data users) need not pay for TFDS.
    import tensorflow_datasets as tfds

    spec = DATASETS.get(name) or spec_from_info(name, _builder_or_unknown(name, data_dir))
    try:  # reads dataset_info.json when the dataset is (partly) prepared
        builder = tfds.builder(spec.tfds_name, data_dir=str(data_dir))
        prepared = builder.is_prepared()
    except Exception as err:
        dataset_dir = data_dir / spec.tfds_name
        if not dataset_dir.exists():
            raise  # nothing prepared to blame: a bug, which keeps its traceback
        raise DatasetCorruptError(_corrupt_message(name, data_dir, dataset_dir, err)) from err
    if not prepared:
        # A dataset of the table is downloaded when its host answers; any other is left
        # to TFDS (`python -m jaxal.data prepare`), whose hosts we do not know.
        reachable = download and bool(spec.download_url) and _host_reachable(spec.download_url)
        if not reachable:
            reason = "download=False" if not download else f"{spec.download_url} is unreachable"
            raise DatasetNotPreparedError(_not_prepared_message(name, data_dir, builder, reason))
        _require_tensorflow()
        logger.info("Downloading and preparing %s into %s", name, data_dir)
        from tensorflow_datasets.core.download.download_manager import (
            NonMatchingChecksumError,
        )

        try:
            tfds.builder(
                spec.tfds_name, data_dir=str(data_dir), file_format="array_record"
            ).download_and_prepare()
        except NonMatchingChecksumError as err:
            raise _checksum_error(err) from err
    version_dir = Path(builder.data_dir)
    _check_shards(name, data_dir, version_dir, builder)
    try:
        train, test = tfds.data_source(
            spec.tfds_name, data_dir=str(data_dir), split=["train", "test"], download=False
        )
    except NotImplementedError as err:  # prepared, but in a format without random access
        reason = f"not in array_record format ({_one_line(err)})"
        raise DatasetNotPreparedError(
            _not_prepared_message(name, data_dir, builder, reason)
        ) from err

    version = str(train.dataset_info.version)
    try:  # hashes every prepared file, so a truncated file never matches an old cache entry
        fingerprint = prepared_fingerprint(version_dir, (len(train), len(test)))
    except OSError as err:
        path = Path(err.filename) if err.filename else version_dir
        if isinstance(err, PermissionError):
            raise DataDirPermissionError(
                f"cannot read {path} (permission denied for this user); give it read "
                f"access (chmod -R u+rX {version_dir}), or point --data-dir / "
                "TFDS_DATA_DIR at a data dir you can read") from err
        raise DatasetCorruptError(_corrupt_message(name, data_dir, path, err)) from err
    key = f"{name}-{version}-{fingerprint[:16]}"
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]

    meta = {"format": _CACHE_FORMAT, "name": name, "version": version, "fingerprint": fingerprint}
    cache_dir = resolve_cache_dir(cache_dir)
    # The arrays this dataset decodes to: a cache file claiming more is never inflated.
    layout = {f"{split}_{what}": (shape, dtype) for split, n in (("train", len(train)),
                                                                   ("test", len(test)))
              for what, shape, dtype in (("images", (n, *spec.image_shape), np.uint8),
                                         ("labels", (n,), np.int32))}
    arrays = _read_cache(cache_dir, key, meta, layout)
    if arrays is None:
        start = time.perf_counter()
        train_images, train_labels = _read_prepared_split(
            name, data_dir, builder, "train", train, spec.image_shape)
        test_images, test_labels = _read_prepared_split(
            name, data_dir, builder, "test", test, spec.image_shape)
        logger.info("Decoded %s in %.1f s", name, time.perf_counter() - start)
        arrays = {
            "train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels,
        }  # fmt: skip
        _write_cache(cache_dir, key, meta, arrays)
    for array in arrays.values():
        array.flags.writeable = False
    mean, std = spec.mean, spec.std
    if not mean:   # a dataset read from its info: its own statistics, per channel
        pixels = arrays["train_images"].reshape(-1, arrays["train_images"].shape[-1])
        mean, std = channel_statistics(pixels)
    ds = ImageDataset(name=name, version=version, num_classes=spec.num_classes, mean=mean,
                      std=std, **arrays)
    _MEMORY_CACHE[key] = ds
    return ds


def channel_statistics(pixels: np.ndarray, block: int = 1 << 20
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of uint8 pixels [m, c] scaled to [0, 1], in float64 blocks
    (a 50,000-image train split does not fit in memory as floats at once)."""
    total = np.zeros(pixels.shape[-1])
    squares = np.zeros(pixels.shape[-1])
    for start in range(0, len(pixels), block):
        x = pixels[start:start + block].astype(np.float64) / 255.0
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / len(pixels)
    std = np.sqrt(np.maximum(squares / len(pixels) - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def prepared_fingerprint(version_dir: Path, num_examples: Sequence[int]) -> str:
    """sha256 of the prepared files (names and bytes) and split sizes.

    Hashing contents rather than sizes or mtimes means a re-prepared dataset with the same
    bytes reuses the cache, while any change (another TFDS version, another shuffle) misses.
    """
    digest = hashlib.sha256(json.dumps(list(num_examples)).encode())
    files = sorted(p for p in version_dir.iterdir() if p.is_file()) if version_dir.is_dir() else []
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


class _DropOpenCVAdvice(logging.Filter):
    """TFDS logs, on absl's logger, that OpenCV would decode PNGs faster: advice about an
    optional package, printed on stderr amid jaxal's own output on every cold load."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OpenCV is not installed" not in record.getMessage()


def _read_split(source: Any, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a TFDS data source into uint8 images [n, h, w, c] and int32 labels [n]."""
    absl_logger, advice = logging.getLogger("absl"), _DropOpenCVAdvice()
    absl_logger.addFilter(advice)   # for this call only: the process is left as it was
    try:
        return _decode_split(source, image_shape)
    finally:
        absl_logger.removeFilter(advice)


def _decode_split(source: Any, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images = np.empty((n, *image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for start in range(0, n, _CHUNK_SIZE):
        stop = min(start + _CHUNK_SIZE, n)
        records = source.__getitems__(list(range(start, stop)))
        chunk = np.stack([np.asarray(r["image"]) for r in records])
        if chunk.shape[1:] != tuple(image_shape):
            raise ValueError(f"Expected images of shape {image_shape}, got {chunk.shape[1:]}.")
        images[start:stop] = chunk
        labels[start:stop] = [int(r["label"]) for r in records]
    return images, labels


def _shard_paths(builder: Any, split: str) -> list[Path]:
    """The prepared files of a split, as dataset_info.json lists them."""
    info = builder.info.splits.get(split)  # absent when nothing is prepared (or mocked)
    filenames = getattr(info, "filenames", None) or []
    return [Path(builder.data_dir) / f for f in filenames]


def _check_shards(name: str, data_dir: Path, version_dir: Path, builder: Any) -> None:
    """Fails, naming the file, when a shard that dataset_info.json lists cannot be read."""
    for split in ("train", "test"):
        for path in _shard_paths(builder, split):
            if not path.is_file():
                problem = "file missing"
            elif not os.access(path, os.R_OK):
                problem = "not readable by this user (check its permissions)"
            else:
                continue
            raise DatasetCorruptError(
                _corrupt_message(name, data_dir, path, problem, version_dir=version_dir)
            )


def _read_prepared_split(
    name: str, data_dir: Path, builder: Any, split: str, source: Any,
    image_shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """`_read_split`, failing with the split's file(s) and the fix when records are corrupt."""
    try:
        return _read_split(source, image_shape)
    # array_record reports truncated files, bad hashes and open() failures as RuntimeError,
    # naming no file; the split's shards are the files to blame.
    except (RuntimeError, OSError, ValueError) as err:
        shards = _shard_paths(builder, split)
        where = shards[0] if len(shards) == 1 else Path(builder.data_dir)
        raise DatasetCorruptError(
            _corrupt_message(name, data_dir, where, err, version_dir=Path(builder.data_dir))
        ) from err


def _array_checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _read_cache(cache_dir: Path, key: str, meta: dict[str, Any],
                expected: dict[str, tuple[tuple[int, ...], Any]] | None = None
                ) -> dict[str, np.ndarray] | None:
    """Returns the cached arrays, or None (with a warning unless simply absent) if invalid.

    ``expected``: name -> (shape, dtype) of the arrays the dataset decodes to; a cache
    whose archive claims other sizes is refused before anything is inflated
    (``jaxal.files.read_npz``), so a crafted one costs no memory.
    """
    meta_path, npz_path = cache_dir / f"{key}.json", cache_dir / f"{key}.npz"
    if not meta_path.exists() and not npz_path.exists():
        return None
    fix = "it is decoded again"
    try:
        stored = loads_json(read_bytes(meta_path, fix, max_bytes=1 << 20))
        if not isinstance(stored, dict):
            raise ValueError("the metadata is not a JSON object")
        stale = {k: (stored.get(k), v) for k, v in meta.items() if stored.get(k) != v}
        if stale:
            raise ValueError(f"stale metadata (stored, expected): {stale}")
        if expected is None:
            bounds, total = (lambda name: 1 << 40), None
        else:
            bounds = {k: npy_bytes(shape, dtype) for k, (shape, dtype) in expected.items()}
            total = sum(bounds.values()) + (1 << 20)
        arrays = read_npz(npz_path, bounds, fix, max_bytes=total)
        layout = {k: [list(a.shape), a.dtype.str] for k, a in arrays.items()}
        if expected is not None and layout != {
                k: [list(shape), np.dtype(dtype).str] for k, (shape, dtype) in expected.items()}:
            raise ValueError(f"arrays {layout} are not the dataset's")
        if layout != stored["arrays"]:
            raise ValueError(f"arrays {layout} do not match the metadata {stored['arrays']}")
        if _array_checksum(arrays) != stored["sha256"]:
            raise ValueError("sha256 of the arrays does not match the metadata")
    # Whatever is wrong (truncated zip, bad JSON, missing file, mismatch), the fix is the same.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, JaxalError) as err:
        warnings.warn(
            f"Ignoring invalid dataset cache {npz_path} ({type(err).__name__}: {err}); "
            "decoding the dataset again and rewriting the cache.",
            stacklevel=3,
        )
        return None
    return arrays


def _write_cache(
    cache_dir: Path, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Writes arrays then metadata, each atomically, so readers never see a partial file."""
    layout = {k: [list(a.shape), a.dtype.str] for k, a in arrays.items()}
    stored = {**meta, "arrays": layout, "sha256": _array_checksum(arrays)}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_dir / f"{key}.npz", lambda f: np.savez(f, **arrays))
        _atomic_write(cache_dir / f"{key}.json", lambda f: f.write(json.dumps(stored).encode()))
    except OSError as err:
        warnings.warn(
            f"Could not write the dataset cache in {cache_dir} ({err}); continuing without it. "
            "Point cache_dir or JAXAL_CACHE_DIR at a writable directory.",
            stacklevel=3,
        )


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    # A full disk stays an OSError: the cache is optional, _write_cache warns and goes on.
    write_atomic(path, write, full_disk_fix=None)


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _one_line(err: BaseException | str) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return " ".join(text.split()).rstrip(".")


def _prepare_command(name: str, data_dir: Path) -> str:
    return f"python -m jaxal.data prepare {name} --manual-dir DIR --data-dir {data_dir}"


def _not_prepared_message(name: str, data_dir: Path, builder: Any, reason: str) -> str:
    return (
        f"dataset {name!r} is not prepared in {builder.data_dir} ({reason}); prepare it "
        f"offline from the original files: {_prepare_command(name, data_dir)}, or point "
        f"--data-dir / TFDS_DATA_DIR at a data dir that holds "
        f"{builder.name}/{builder.version}/ in array_record format"
    )


def _corrupt_message(
    name: str,
    data_dir: Path,
    path: Path,
    problem: BaseException | str,
    *,
    version_dir: Path | None = None,
) -> str:
    remove = version_dir or path
    return (
        f"prepared {name} is corrupt or unreadable: {path}: {_one_line(problem)}; delete {remove} "
        f"and prepare it again: {_prepare_command(name, data_dir)}"
    )


def _checksum_message(path: str | Path, url: str, got: str | None, expected: str | None) -> str:
    sums = f" (sha256 {got}, expected {expected})" if got and expected else ""
    return (
        f"{path} has the wrong checksum{sums}: it is not the original file; replace it with "
        f"the original download from {url} and run again"
    )


def _checksum_error(err: Exception) -> ChecksumError:
    """TFDS's NonMatchingChecksumError as a one-line `ChecksumError` naming the file."""
    text = str(err)
    # TFDS 4.9: "Artifact URL, downloaded to PATH, has wrong checksum:\n* Expected: UrlInfo(
    # ..., checksum='...', ...)\n* Got: UrlInfo(...)"; fall back to the whole text.
    artifact = re.search(r"Artifact (\S+), downloaded to (.+?), has wrong checksum", text)
    sums = re.findall(r"checksum='([0-9a-f]+)'", text)
    if artifact is None:
        return ChecksumError(
            f"{_one_line(err)}; replace the file with the original download and run again"
        )
    expected, got = sums if len(sums) == 2 else (None, None)
    url, path = artifact.groups()
    return ChecksumError(_checksum_message(path, url, got, expected))


def _check_manual_files(spec: DatasetSpec, manual_dir: Path) -> None:
    """Compares the sha256 of each manual file with TFDS's record, before any slow work."""
    import tensorflow_datasets as tfds

    url_infos = tfds.builder_cls(spec.tfds_name).url_infos or {}
    expected = {info.filename or url.rsplit("/", 1)[-1]: (url, info) for url, info in
                url_infos.items()}  # fmt: skip
    for filename in spec.manual_files:
        if filename not in expected:
            continue
        url, info = expected[filename]
        digest = hashlib.sha256()
        with (manual_dir / filename).open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        if digest.hexdigest() != info.checksum:
            raise ChecksumError(
                _checksum_message(manual_dir / filename, url, digest.hexdigest(), info.checksum)
            )


def _require_tensorflow() -> None:
    """Fails early, naming the fix, when preparing a dataset cannot work."""
    # TensorFlow is the `prepare` extra, not a dependency: only preparing imports it.
    # TFDS 4.9.x imports importlib_resources when preparing but does not declare it on
    # Python >= 3.9 (tensorflow/datasets#11212).
    for module, install in [
        ("tensorflow", 'pip install -e ".[prepare]" in a clone of jaxal, or '
                       'pip install "jaxal[prepare]"'),
        ("importlib_resources", "pip install importlib_resources"),
    ]:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"Preparing a TFDS dataset needs {module!r}, which is not installed: "
                f"{install}. Loading an already-prepared dataset, image folders and toy "
                "data do not need it."
            )


def prepare_dataset(
    name: str, data_dir: str | os.PathLike[str], manual_dir: str | os.PathLike[str]
) -> Path:
    """Prepares a dataset offline, in array_record format, from its original files.

    Args:
      name: a key of `DATASETS`.
      data_dir: TFDS data dir to prepare into; downloads go to `data_dir/downloads/<name>`.
      manual_dir: directory holding `DATASETS[name].manual_files`.

    Returns:
      The prepared version dir, e.g. `data_dir/mnist/3.0.1`.

    Raises:
      FileNotFoundError: a manual file is missing.
      ChecksumError: a manual file is not the original (checked before preparing).
      MissingDependencyError: TensorFlow (the `prepare` extra) is not installed.
    """
    _require_tensorflow()   # before any work: without it nothing below can succeed
    spec = get_spec(name)
    manual_dir = Path(manual_dir).expanduser().absolute()
    missing = [f for f in spec.manual_files if not (manual_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--manual-dir {manual_dir} must hold the original {name} files "
            f"{', '.join(spec.manual_files)}; missing: {', '.join(missing)}."
        )
    _check_manual_files(spec, manual_dir)
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    data_dir = resolve_data_dir(data_dir)
    builder = tfds.builder(spec.tfds_name, data_dir=str(data_dir), file_format="array_record")
    try:
        builder.download_and_prepare(
            # A download dir per dataset keeps TFDS's extracted files of one from another's.
            download_dir=str(data_dir / "downloads" / name),
            # Offline: find every file in manual_dir, never ask GCS for a prepared copy.
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual_dir), try_download_gcs=False
            ),
        )
    except NonMatchingChecksumError as err:  # a file `_check_manual_files` did not check
        raise _checksum_error(err) from err
    return Path(builder.data_dir)
