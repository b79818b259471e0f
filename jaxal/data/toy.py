"""Toy 2-D data (moons, blobs) for fast tests and posterior figures, as an ``ALSplit``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from jaxal.data.splits import ALSplit
from jaxal.errors import ConfigError

_TOY_NOISE = {"moons": 0.1, "blobs": 0.5}


def toy_2d(
    seed: int, n: int, *, kind: Literal["moons", "blobs"] = "moons", noise: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A small balanced two-class 2-D dataset, for fast tests and posterior figures.

    `moons` are two interleaved half circles (as sklearn's `make_moons`), centred on the
    origin; `blobs` are isotropic Gaussians around (-1, -1) and (1, 1). Both add Gaussian
    noise with standard deviation `noise` (default 0.1 for moons, 0.5 for blobs).

    Returns:
      x float32 [n, 2] and y int32 [n], shuffled; the same for the same seed.
    """
    if kind not in _TOY_NOISE:
        raise ValueError(f"kind must be one of {sorted(_TOY_NOISE)}; got {kind!r}.")
    if n < 2:
        raise ValueError(f"n must be >= 2 so that both classes are present; got {n}.")
    noise = _TOY_NOISE[kind] if noise is None else noise
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    if kind == "moons":
        t = rng.uniform(0.0, np.pi, n)
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        x = np.where(y[:, None] == 0, upper, lower) - np.array([0.5, 0.25])
    else:
        x = np.where(y[:, None] == 0, -1.0, 1.0) * np.ones((n, 2))
    x = x + noise * rng.standard_normal((n, 2))
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order].astype(np.int32)


def toy_al_split(
    seed: int,
    n_pool: int = 200,
    n_val: int = 50,
    n_test: int = 200,
    kind: Literal["moons", "blobs"] = "moons",
) -> ALSplit:
    """An `ALSplit` of `toy_2d` data; indices refer to the pool + validation points."""
    if n_pool < 1 or n_val < 0 or n_test < 0 or n_pool + n_val + n_test < 2:
        raise ConfigError(
            f"toy split sizes n_pool={n_pool}, n_val={n_val}, n_test={n_test} cannot work; "
            "use n_pool >= 1, n_val >= 0, n_test >= 0 and at least 2 points in all "
            "(--pool-size, --val-size)"
        )
    x, y = toy_2d(seed, n_pool + n_val + n_test, kind=kind)
    pool_index, val_index = np.arange(n_pool), np.arange(n_pool, n_pool + n_val)
    test = slice(n_pool + n_val, None)
    return ALSplit(
        pool_x=x[pool_index], pool_y=y[pool_index], val_x=x[val_index], val_y=y[val_index],
        test_x=x[test], test_y=y[test], pool_index=pool_index, val_index=val_index,
        num_classes=2,
    )  # fmt: skip
