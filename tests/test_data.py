"""Tests for jaxal.data: real MNIST from ../shared, CIFAR-10 through TFDS's mock, the cache."""

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from jaxal import data
from jaxal.cli import data as data_cli
from jaxal.data import tfds as data_tfds
from jaxal.errors import ConfigError

REPO_ROOT = Path(__file__).parents[1]
RAW_MNIST_DIR = (REPO_ROOT / ".." / "shared" / "data" / "raw" / "mnist").resolve()


@pytest.fixture(scope="module")
def mnist(mnist_data_dir) -> data.ImageDataset:
    return data.load_dataset("mnist", mnist_data_dir, download=False)


@pytest.fixture
def empty_memory_cache(monkeypatch):
    """Forgets what this process has loaded, so a load has to go to disk (or decode)."""
    monkeypatch.setattr(data_tfds, "_MEMORY_CACHE", {})


def _getitems_unbound(record_keys, generator, serialized=False):
    del serialized
    return [generator[key] for key in record_keys]


@pytest.fixture
def mock_tfds(monkeypatch, empty_memory_cache):
    """Returns `num_examples -> context` faking every TFDS dataset with random records."""
    # mock_data fakes the records, not the prepared files, so `is_prepared` would say False.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    # TFDS 4.9.10 bug: mock_data sets `__getitems__` on a MagicMock as a plain attribute, so
    # its partial(_getitems, generator=...) is called without `self` and fails.
    monkeypatch.setattr(mocking, "_getitems", _getitems_unbound)
    return lambda num_examples: tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


def _assert_same(a: data.ImageDataset, b: data.ImageDataset) -> None:
    assert (a.name, a.version, a.num_classes) == (b.name, b.version, b.num_classes)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


# Real MNIST.


def test_mnist_counts_shapes_dtypes(mnist):
    assert (mnist.name, mnist.version, mnist.num_classes) == ("mnist", "3.0.1", 10)
    assert mnist.train_images.shape == (60000, 28, 28, 1)
    assert mnist.test_images.shape == (10000, 28, 28, 1)
    assert mnist.train_images.dtype == mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert mnist.train_labels.dtype == mnist.test_labels.dtype == np.int32
    for labels in (mnist.train_labels, mnist.test_labels):
        np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    assert mnist.train_images.max() == 255  # decoded pixels, not already scaled


def test_loaded_arrays_are_read_only(mnist):
    with pytest.raises(ValueError, match="read-only"):
        mnist.train_images[0, 0, 0, 0] = 1


def test_make_al_split_sizes_cover_train_split(mnist):
    split = data.make_al_split(mnist, seed=0)
    assert split.val_x.shape == (1000, 28, 28, 1) and split.pool_x.shape == (59000, 28, 28, 1)
    assert split.test_x.shape == (10000, 28, 28, 1) and split.num_classes == 10
    assert {a.dtype for a in (split.pool_x, split.val_x, split.test_x)} == {np.dtype(np.float32)}
    assert {a.dtype for a in (split.pool_y, split.val_y, split.test_y)} == {np.dtype(np.int32)}
    assert np.intersect1d(split.pool_index, split.val_index).size == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.pool_index, split.val_index])), np.arange(60000)
    )
    np.testing.assert_array_equal(split.val_y, mnist.train_labels[split.val_index])
    np.testing.assert_array_equal(split.pool_y, mnist.train_labels[split.pool_index])
    np.testing.assert_array_equal(
        split.pool_x[:5], data.normalise(mnist.train_images[split.pool_index[:5]], "mnist")
    )
    np.testing.assert_array_equal(split.test_y, mnist.test_labels)


@pytest.mark.slow
def test_make_al_split_is_seeded(mnist):
    a, b = data.make_al_split(mnist, seed=3), data.make_al_split(mnist, seed=3)
    c = data.make_al_split(mnist, seed=4)
    np.testing.assert_array_equal(a.val_index, b.val_index)
    np.testing.assert_array_equal(a.pool_index, b.pool_index)
    np.testing.assert_array_equal(a.pool_x, b.pool_x)
    assert not np.array_equal(a.val_index, c.val_index)


def test_make_al_split_pool_size_subsamples_pool_keeps_val(mnist):
    full = data.make_al_split(mnist, seed=1, val_size=100)
    small = data.make_al_split(mnist, seed=1, val_size=100, pool_size=500)
    assert small.pool_x.shape == (500, 28, 28, 1) and small.pool_y.shape == (500,)
    assert np.isin(small.pool_index, full.pool_index).all()
    np.testing.assert_array_equal(small.val_index, full.val_index)
    again = data.make_al_split(mnist, seed=1, val_size=100, pool_size=500)
    np.testing.assert_array_equal(small.pool_index, again.pool_index)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_size": -1}, r"--val-size -1 must be in \[0, 60000\).*use --val-size >= 0"),
        ({"val_size": 60000}, r"--val-size 60000 must be in \[0, 60000\).*<= 59999"),
        ({"pool_size": 0}, r"--pool-size 0 must be in \[1, 59000\].*use --pool-size >= 1"),
        (
            {"pool_size": 70000},
            r"--pool-size 70000 must be in \[1, 59000\]: mnist has 59,000 training images left "
            r"after the 1,000 validation images; use --pool-size <= 59000",
        ),
        ({"pool_size": 59901, "val_size": 100}, r"use --pool-size <= 59900"),
    ],
    ids=["val-negative", "val-all", "pool-zero", "pool-too-big", "pool-too-big-small-val"],
)
def test_make_al_split_rejects_bad_sizes(mnist, kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        data.make_al_split(mnist, seed=0, **kwargs)
    assert isinstance(err.value, ValueError)  # what callers caught before ConfigError
    assert "\n" not in str(err.value)


def test_normalise_standardises_mnist(mnist):
    x = data.normalise(mnist.train_images, "mnist")
    assert x.dtype == np.float32 and x.shape == mnist.train_images.shape
    # The constants are the train split's own moments, to 4 digits.
    assert abs(x.mean(dtype=np.float64)) < 1e-3
    assert abs(x.std(dtype=np.float64) - 1.0) < 1e-3


def test_normalise_rejects_wrong_channels_or_dtype(mnist):
    with pytest.raises(ValueError, match="uint8 images"):
        data.normalise(mnist.test_images[:2], "cifar10")
    with pytest.raises(ValueError, match="uint8 images"):
        data.normalise(mnist.test_images[:2].astype(np.float32), "mnist")


def test_second_load_does_not_decode(mnist, mnist_data_dir, monkeypatch, empty_memory_cache):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the dataset is cached")

    monkeypatch.setattr(data_tfds, "_read_split", no_decoding)
    from_disk = data.load_dataset("mnist", mnist_data_dir, download=False)
    _assert_same(from_disk, mnist)
    assert data.load_dataset("mnist", mnist_data_dir, download=False) is from_disk


def test_cli_info_prints_counts(mnist, mnist_data_dir, capsys):
    data_cli.main(["info", "mnist", "--data-dir", str(mnist_data_dir)])
    out = capsys.readouterr().out
    assert "mnist 3.0.1" in out and "uint8[60000, 28, 28, 1]" in out and "[980, 1135," in out


def test_cli_help():
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["--help"])
    assert exit_info.value.code == 0


@pytest.mark.slow
def test_loading_does_not_import_tensorflow(mnist_data_dir, tmp_path):
    code = (
        "import sys\n"
        "from jaxal.data import load_dataset\n"
        f"ds = load_dataset('mnist', {str(mnist_data_dir)!r}, download=False)\n"
        "assert ds.train_images.shape == (60000, 28, 28, 1)\n"
        "assert 'tensorflow' not in sys.modules, 'loading imported tensorflow'\n"
    )
    env = {**os.environ, "JAXAL_CACHE_DIR": str(tmp_path)}  # empty: the decode path runs
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)


@pytest.mark.slow
def test_prepare_from_raw_files_matches_shared(mnist, tmp_path, empty_memory_cache):
    data_dir = tmp_path / "tfds"
    subprocess.run(
        [sys.executable, "-m", "jaxal.data", "prepare", "mnist",
         "--manual-dir", str(RAW_MNIST_DIR), "--data-dir", str(data_dir)],
        check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert (data_dir / "downloads" / "mnist").is_dir()
    # A fresh cache and memory, so the arrays are decoded from the new files.
    prepared = data.load_dataset("mnist", data_dir, download=False, cache_dir=tmp_path / "c")
    _assert_same(prepared, mnist)


def test_prepare_checks_manual_dir(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing: train-labels-idx1-ubyte\.gz"):
        data.prepare_dataset("mnist", tmp_path / "tfds", manual_dir=tmp_path)
    assert not (tmp_path / "tfds").exists()


# Errors that name the fix.


@pytest.mark.slow
def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="known datasets: cifar10, fashion_mnist, mnist"):
        data.load_dataset("imagenet")


def test_not_prepared_without_download_names_dir_and_fix(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as err:
        data.load_dataset("mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "mnist" / "3.0.1") in message and "download=False" in message
    assert f"python -m jaxal.data prepare mnist --manual-dir DIR --data-dir {tmp_path}" in message


def test_not_prepared_offline_does_not_download(tmp_path, monkeypatch):
    monkeypatch.setattr(data_tfds, "_host_reachable", lambda url: False)
    with pytest.raises(data.DatasetNotPreparedError, match="unreachable"):
        data.load_dataset("fashion_mnist", tmp_path)
    assert not (tmp_path / "fashion_mnist").exists()


# Prepared files that are truncated, corrupt or missing.


@pytest.fixture(scope="module")
def mnist_copy(mnist_data_dir, tmp_path_factory) -> Path:
    """One copy of the prepared MNIST version dir per module, for the tests to link to."""
    copy = tmp_path_factory.mktemp("mnist_copy") / "3.0.1"
    shutil.copytree(mnist_data_dir / "mnist" / "3.0.1", copy)
    for path in copy.iterdir():
        path.chmod(0o444)  # no test may write through its links (root ignores this, though)
    return copy


def _tampered_data_dir(root: Path, mnist_copy: Path, name: str, tamper) -> Path:
    """A data dir whose mnist/3.0.1 links to `mnist_copy`, but `name` is `tamper(bytes)`."""
    version_dir = root / "mnist" / "3.0.1"
    version_dir.mkdir(parents=True)
    for path in mnist_copy.iterdir():
        (version_dir / path.name).symlink_to(path)
    if tamper is not None:
        target = version_dir / name
        target.unlink()  # replace the link, never write through it
        content = tamper((mnist_copy / name).read_bytes())
        if content is not None:
            target.write_bytes(content)
    return root


def _garbage_at(offset: int):
    return lambda raw: raw[:offset] + b"x" * 100 + raw[offset + 100 :]


TRAIN_SHARD = "mnist-train.array_record-00000-of-00001"
TEST_SHARD = "mnist-test.array_record-00000-of-00001"


@pytest.mark.parametrize(
    "name, tamper, blamed",
    [
        (TRAIN_SHARD, lambda raw: raw[: len(raw) // 2], f"mnist/3.0.1/{TRAIN_SHARD}"),
        (TRAIN_SHARD, lambda raw: b"", f"mnist/3.0.1/{TRAIN_SHARD}"),
        (TRAIN_SHARD, _garbage_at(200_000), f"mnist/3.0.1/{TRAIN_SHARD}"),  # a bad chunk hash
        (TEST_SHARD, lambda raw: None, f"mnist/3.0.1/{TEST_SHARD}: file missing"),
        ("dataset_info.json", lambda raw: b"{not json", "mnist: ParseError"),
    ],
    ids=["truncated", "empty", "garbage", "missing", "bad-info"],
)
def test_corrupt_prepared_files_name_the_file_and_fix(
    mnist_copy, tmp_path, monkeypatch, empty_memory_cache, name, tamper, blamed
):
    monkeypatch.setenv("JAXAL_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = _tampered_data_dir(tmp_path / "tfds", mnist_copy, name, tamper)
    with pytest.raises(data.DatasetCorruptError) as err:
        data.load_dataset("mnist", data_dir, download=False)
    message = str(err.value)
    assert isinstance(err.value, data.DatasetNotPreparedError)  # what the CLIs catch
    assert "\n" not in message and f"{data_dir}/{blamed}" in message
    delete = data_dir / "mnist" if name == "dataset_info.json" else data_dir / "mnist" / "3.0.1"
    assert f"delete {delete} and prepare it again: python -m jaxal.data prepare mnist " in message
    assert f"--data-dir {data_dir}" in message


def test_truncated_shard_is_not_served_from_the_cache(
    mnist, mnist_copy, tmp_path, monkeypatch, empty_memory_cache
):
    """The cache is keyed by the files' bytes: the entry of the intact files must not match."""
    cache_dir = tmp_path / "cache"
    data_dir = _tampered_data_dir(tmp_path / "tfds", mnist_copy, TRAIN_SHARD, None)
    with monkeypatch.context() as m:  # skips the decoding; the cache entry is written for real
        splits = {60000: (mnist.train_images, mnist.train_labels),
                  10000: (mnist.test_images, mnist.test_labels)}  # fmt: skip
        m.setattr(data_tfds, "_read_split", lambda source, shape: splits[len(source)])
        data.load_dataset("mnist", data_dir, download=False, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.npz"))) == 1
    shard = data_dir / "mnist" / "3.0.1" / TRAIN_SHARD
    shard.unlink()
    shard.write_bytes((mnist_copy / TRAIN_SHARD).read_bytes()[:-4096])
    data_tfds._MEMORY_CACHE.clear()
    with pytest.raises(data.DatasetCorruptError, match=re.escape(str(shard))):
        data.load_dataset("mnist", data_dir, download=False, cache_dir=cache_dir)


# Original files with the wrong checksum.


def _manual_dir_with_garbage(root: Path, garbage: str) -> Path:
    root.mkdir()
    for name in data.DATASETS["mnist"].manual_files:
        (root / name).symlink_to(RAW_MNIST_DIR / name)
    (root / garbage).unlink()
    (root / garbage).write_bytes(b"not the original file\n" * 100)
    return root


def test_prepare_rejects_manual_file_with_wrong_checksum(tmp_path):
    manual_dir = _manual_dir_with_garbage(tmp_path / "manual", "train-labels-idx1-ubyte.gz")
    with pytest.raises(data.ChecksumError) as err:
        data.prepare_dataset("mnist", tmp_path / "tfds", manual_dir=manual_dir)
    message = str(err.value)
    assert "\n" not in message
    assert f"{manual_dir}/train-labels-idx1-ubyte.gz has the wrong checksum" in message
    expected = "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"  # TFDS's
    assert f"expected {expected}" in message
    assert "replace it with the original download from https://" in message
    assert not (tmp_path / "tfds").exists()  # checked before TFDS creates anything


def test_checksum_error_from_tfds_names_the_file(tmp_path):
    """TFDS's own error (here raised by its download manager) maps to one line."""
    from tensorflow_datasets.core.download import checksums
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    url = "https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz"
    expected = tfds.builder_cls("mnist").url_infos[url]
    manager = tfds.download.DownloadManager(
        download_dir=str(tmp_path / "downloads"), url_infos={url: expected}
    )
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    got = checksums.UrlInfo(size=5, checksum="ab" * 32, filename=path.name)
    with pytest.raises(NonMatchingChecksumError) as tfds_error:
        manager._register_or_validate_checksums(url, got, path)
    message = str(data_tfds._checksum_error(tfds_error.value))
    assert message == (
        f"{path} has the wrong checksum (sha256 {'ab' * 32}, expected {expected.checksum}): it "
        f"is not the original file; replace it with the original download from {url} and "
        "run again"
    )
    odd = data_tfds._checksum_error(NonMatchingChecksumError("checksum\nmismatch"))
    assert str(odd) == (
        "NonMatchingChecksumError: checksum mismatch; replace the file with the original "
        "download and run again"
    )


# The command line: one line on stderr, exit code 2.


def _cli_case(case: str, tmp_path: Path, mnist_copy: Path) -> list[str]:
    if case == "wrong-checksum":
        manual_dir = _manual_dir_with_garbage(tmp_path / "manual", "t10k-images-idx3-ubyte.gz")
        return ["prepare", "mnist", "--manual-dir", str(manual_dir),
                "--data-dir", str(tmp_path / "out")]  # fmt: skip
    if case == "missing-manual-file":
        return ["prepare", "mnist", "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path)]
    if case == "not-prepared":
        return ["info", "mnist", "--data-dir", str(tmp_path)]
    data_dir = _tampered_data_dir(
        tmp_path / "tfds", mnist_copy, TRAIN_SHARD, lambda raw: raw[: len(raw) // 3]
    )
    return ["info", "mnist", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "c")]


@pytest.mark.parametrize(
    "case, match",
    [
        ("wrong-checksum", "t10k-images-idx3-ubyte.gz has the wrong checksum"),
        ("missing-manual-file", "missing: train-images-idx3-ubyte.gz"),
        ("not-prepared", "is not prepared in"),
        ("truncated-shard", f"{TRAIN_SHARD}: RuntimeError"),
    ],
    ids=["wrong-checksum", "missing-manual-file", "not-prepared", "truncated-shard"],
)
def test_cli_errors_are_one_line_with_exit_code_2(
    mnist_copy, tmp_path, capsys, empty_memory_cache, case, match
):
    argv = _cli_case(case, tmp_path, mnist_copy)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_without_tensorflow_prepare_refuses_and_loading_works(
    mnist, mnist_data_dir, tmp_path, capsys, monkeypatch, empty_memory_cache
):
    """TensorFlow is the `prepare` extra: without it, `prepare` refuses in one line naming
    the install, before any work; a prepared dataset and toy data still load."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)   # `import tensorflow` fails
    argv = ["prepare", "mnist", "--manual-dir", str(tmp_path / "none"),
            "--data-dir", str(tmp_path / "tfds")]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: Preparing a TFDS dataset needs "), err
    assert 'pip install -e ".[prepare]"' in err and 'pip install "jaxal[prepare]"' in err
    # Before any work: the missing --manual-dir is not what it names, nothing was written.
    assert "missing" not in err and not (tmp_path / "tfds").exists()

    # Loading reads the prepared files (memory cache emptied) without TensorFlow.
    _assert_same(data.load_dataset("mnist", mnist_data_dir, download=False), mnist)
    assert data.toy_al_split(0, n_pool=30, n_val=5, n_test=20).pool_x.shape == (30, 2)


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    assert data.resolve_data_dir(tmp_path / "x") == tmp_path / "x"


# CIFAR-10 through tfds.testing.mock_data, and the disk cache on small mocked data.


def test_cifar10_mocked(mock_tfds, tmp_path):
    with mock_tfds(num_examples=60):
        ds = data.load_dataset("cifar10", tmp_path / "tfds", download=False)
    assert ds.train_images.shape == ds.test_images.shape == (60, 32, 32, 3)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.num_classes == 10 and 0 <= ds.train_labels.min() <= ds.train_labels.max() < 10
    split = data.make_al_split(ds, seed=0, val_size=10, pool_size=20)
    assert split.pool_x.shape == (20, 32, 32, 3) and split.val_x.shape == (10, 32, 32, 3)
    x = data.normalise(ds.train_images, "cifar10")
    mean = np.array(data.DATASETS["cifar10"].mean, np.float32)
    std = np.array(data.DATASETS["cifar10"].std, np.float32)
    np.testing.assert_allclose(x * std + mean, ds.train_images / 255.0, atol=1e-6)


def _npz(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("*.npz")
    return path


def _flip_byte(cache_dir: Path) -> None:
    path = _npz(cache_dir)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate(cache_dir: Path) -> None:
    path = _npz(cache_dir)
    path.write_bytes(path.read_bytes()[:1000])


def _rewrite_arrays(cache_dir: Path) -> None:
    # A well-formed npz whose content no longer matches the recorded checksum.
    path = _npz(cache_dir)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["train_labels"] = (arrays["train_labels"] + 1) % 10
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _stale_version(cache_dir: Path) -> None:
    (path,) = cache_dir.glob("*.json")
    path.write_text(path.read_text().replace('"version": "3.0.1"', '"version": "3.0.0"'))


def _delete_metadata(cache_dir: Path) -> None:
    (path,) = cache_dir.glob("*.json")
    path.unlink()


@pytest.mark.parametrize(
    "tamper", [_flip_byte, _truncate, _rewrite_arrays, _stale_version, _delete_metadata]
)
def test_invalid_cache_is_rebuilt_with_a_warning(mock_tfds, tmp_path, tamper):
    cache_dir = tmp_path / "cache"
    with mock_tfds(num_examples=50):
        original = data.load_dataset("mnist", tmp_path, download=False, cache_dir=cache_dir)
        tamper(cache_dir)
        data_tfds._MEMORY_CACHE.clear()
        with pytest.warns(UserWarning, match="Ignoring invalid dataset cache"):
            rebuilt = data.load_dataset("mnist", tmp_path, download=False, cache_dir=cache_dir)
        _assert_same(rebuilt, original)
        data_tfds._MEMORY_CACHE.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the rewritten cache is valid again
            _assert_same(data.load_dataset("mnist", tmp_path, cache_dir=cache_dir), original)


def test_unwritable_cache_dir_warns_and_loads(mock_tfds, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with mock_tfds(num_examples=10), pytest.warns(UserWarning, match="continuing without it"):
        ds = data.load_dataset("mnist", tmp_path, download=False, cache_dir=not_a_dir)
    assert ds.train_images.shape == (10, 28, 28, 1)


def test_fingerprint_follows_file_contents(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "mnist-train.array_record-00000-of-00001").write_bytes(b"records")
    assert data.prepared_fingerprint(a, (1, 1)) == data.prepared_fingerprint(b, (1, 1))
    assert data.prepared_fingerprint(a, (1, 1)) != data.prepared_fingerprint(a, (1, 2))
    (b / "mnist-train.array_record-00000-of-00001").write_bytes(b"recordz")
    assert data.prepared_fingerprint(a, (1, 1)) != data.prepared_fingerprint(b, (1, 1))


# Toy 2-D data.


@pytest.mark.parametrize("kind", ["moons", "blobs"])
def test_toy_2d(kind):
    x, y = data.toy_2d(0, 101, kind=kind)
    assert x.shape == (101, 2) and x.dtype == np.float32
    assert y.shape == (101,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [51, 50])
    x_again, y_again = data.toy_2d(0, 101, kind=kind)
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)
    assert not np.array_equal(x, data.toy_2d(1, 101, kind=kind)[0])
    # The classes differ in location (a learnable problem), not only in label.
    assert np.linalg.norm(x[y == 0].mean(0) - x[y == 1].mean(0)) > 0.5


def test_toy_2d_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        data.toy_2d(0, 10, kind="spirals")


@pytest.mark.parametrize(
    "sizes", [{"n_pool": 0}, {"n_val": -1}, {"n_test": -5}, {"n_pool": 1, "n_val": 0, "n_test": 0}]
)
def test_toy_al_split_rejects_bad_sizes(sizes):
    with pytest.raises(ConfigError, match=r"toy split sizes .* cannot work; use n_pool >= 1"):
        data.toy_al_split(0, **sizes)


def test_toy_al_split():
    split = data.toy_al_split(0, n_pool=30, n_val=5, n_test=20)
    assert split.pool_x.shape == (30, 2) and split.val_x.shape == (5, 2)
    assert split.test_x.shape == (20, 2) and split.num_classes == 2
    assert np.intersect1d(split.pool_index, split.val_index).size == 0
    assert set(np.unique(split.pool_y)) == {0, 1}


# Any TFDS image-classification dataset, read from its info (mocked records).


@pytest.mark.slow
def test_any_tfds_image_dataset_by_its_info(mock_tfds, tmp_path, capsys):
    """svhn_cropped is not in jaxal's table: its shape and classes come from the builder's
    info, its normalisation from its own train images; a run trains the CNN on it."""
    from jaxal.apps.experiment import run_experiment
    from jaxal.config import ALConfig, ExperimentConfig, TrainConfig

    assert "svhn_cropped" not in data.DATASETS
    with mock_tfds(num_examples=80):
        ds = data.load_dataset("svhn_cropped", tmp_path / "tfds", download=False)
        assert ds.train_images.shape[1:] == (32, 32, 3) and ds.num_classes == 10
        pixels = ds.train_images.reshape(-1, 3) / 255.0
        np.testing.assert_allclose(ds.mean, pixels.mean(0), rtol=1e-9)
        np.testing.assert_allclose(ds.std, pixels.std(0), rtol=1e-6)
        split = data.make_al_split(ds, seed=0, val_size=10, pool_size=40)
        np.testing.assert_allclose(split.pool_x * np.float32(ds.std) + np.float32(ds.mean),
                                   ds.train_images[split.pool_index] / 255.0, atol=1e-5)
        config = ExperimentConfig(dataset="svhn_cropped", val_size=10, pool_size=60,
                                  data_dir=str(tmp_path / "tfds"), al=ALConfig(
                                      rounds=1, query_size=5, init_per_class=1,
                                      train=TrainConfig(steps=3, batch_size=4)))
        _, infos = run_experiment(config, None, progress=None)
        capsys.readouterr()
        data_cli.main(["info", "svhn_cropped", "--data-dir", str(tmp_path / "tfds")])
        assert "train: images uint8[80, 32, 32, 3]" in capsys.readouterr().out
    assert [i.num_labels for i in infos] == [10, 15]


@pytest.mark.parametrize(("name", "match"), [
    ("imdb_reviews", r"'imdb_reviews' is not an image-classification dataset jaxal can read"),
    ("imagenet", r"Unknown dataset 'imagenet' .*known datasets: cifar10, fashion_mnist, mnist"),
])
def test_datasets_jaxal_cannot_read_are_refused_with_the_reason(tmp_path, name, match):
    with pytest.raises(data.UnknownDatasetError, match=match):
        data.load_dataset(name, tmp_path / "tfds", download=False)


def test_a_prepared_dataset_without_a_test_split_is_refused():
    """The spec reads the builder's info alone: one whose prepared splits lack test (as
    eurosat's) is refused, naming the splits it has."""
    from types import SimpleNamespace

    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(64, 64, 3)),
        "label": tfds.features.ClassLabel(num_classes=10)})
    builder = SimpleNamespace(info=SimpleNamespace(features=features,
                                                   splits={"train": object()}))
    with pytest.raises(data.UnknownDatasetError,
                       match=r"'eurosat' has no test split \(it has train\)"):
        data.spec_from_info("eurosat", builder)
    builder.info.splits = {"train": object(), "test": object()}
    spec = data.spec_from_info("eurosat", builder)
    assert (spec.image_shape, spec.num_classes) == ((64, 64, 3), 10)
