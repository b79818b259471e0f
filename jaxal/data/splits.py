"""What the active-learning loop consumes: an ``ALSplit`` of normalised float32 inputs and
int32 labels (pool, validation, test), made from an ``ImageDataset`` with a seeded
validation set (``make_al_split``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxal.data.tfds import ImageDataset, get_spec
from jaxal.errors import ConfigError


class ALSplit(NamedTuple):
    """What the active-learning loop consumes: normalised float32 inputs, int32 labels.

    The pool is the unlabelled set that acquisition scores; the validation set is held out
    of it (for early stopping, prior-precision tuning); the test set is TFDS's test split.
    """

    pool_x: np.ndarray
    pool_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    pool_index: np.ndarray  # int [n_pool]: index of each pool point in the train split
    val_index: np.ndarray  # int [n_val]
    num_classes: int


def normalise(images: np.ndarray, name: str, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None) -> np.ndarray:
    """Scales uint8 images to float32, standardised per channel: (x/255 - mean) / std,
    with the table's statistics of dataset ``name`` unless ``mean`` and ``std`` are given
    (`ImageDataset.mean`/`std`)."""
    if mean is None or std is None:
        spec = get_spec(name)
        mean, std = spec.mean, spec.std
    if images.dtype != np.uint8 or images.shape[-1] != len(mean):
        raise ValueError(
            f"normalise expects uint8 images [..., {len(mean)}] for {name!r}; "
            f"got {images.dtype} {images.shape}."
        )
    x = images.astype(np.float32)
    x /= 255.0
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return x


def make_al_split(
    ds: ImageDataset, *, seed: int, val_size: int = 1000, pool_size: int | None = None
) -> ALSplit:
    """Splits the train split into a seeded validation set and the pool; test is TFDS's.

    Args:
      ds: the dataset.
      seed: seeds `np.random.default_rng`; the validation set depends on it and `val_size`
        only, so subsampling the pool never changes it.
      val_size: validation points taken out of the train split.
      pool_size: if set, a seeded random subset of this many pool points (for tiny runs).

    Returns:
      The split, with indices sorted so the pool keeps TFDS's order.

    Raises:
      ConfigError: `val_size` or `pool_size` does not fit in the train split.
    """
    n_train = len(ds.train_labels)
    if not 0 <= val_size < n_train:
        fix = f"<= {n_train - 1}" if val_size > 0 else ">= 0"
        raise ConfigError(
            f"--val-size {val_size} must be in [0, {n_train}): {ds.name} has {n_train:,} "
            f"training images and the pool needs at least one; use --val-size {fix} "
            "(default 1000)"
        )
    n_rest = n_train - val_size
    if pool_size is not None and not 0 < pool_size <= n_rest:
        fix = f"<= {n_rest}" if pool_size > 0 else ">= 1"
        raise ConfigError(
            f"--pool-size {pool_size} must be in [1, {n_rest}]: {ds.name} has {n_rest:,} "
            f"training images left after the {val_size:,} validation images; use --pool-size "
            f"{fix}, or leave it unset for all of them"
        )
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(n_train)
    val_index, pool_index = np.sort(permutation[:val_size]), permutation[val_size:]
    if pool_size is not None:
        pool_index = rng.choice(pool_index, size=pool_size, replace=False)
    pool_index = np.sort(pool_index)
    stats = (ds.mean, ds.std) if ds.mean else (None, None)
    return ALSplit(
        pool_x=normalise(ds.train_images[pool_index], ds.name, *stats),
        pool_y=ds.train_labels[pool_index].astype(np.int32),
        val_x=normalise(ds.train_images[val_index], ds.name, *stats),
        val_y=ds.train_labels[val_index].astype(np.int32),
        test_x=normalise(ds.test_images, ds.name, *stats),
        test_y=ds.test_labels.astype(np.int32),
        pool_index=pool_index,
        val_index=val_index,
        num_classes=ds.num_classes,
    )
