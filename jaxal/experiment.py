"""One simulated AL experiment: data + model + loop + outputs, for the CLI and notebooks."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxal import __version__
from jaxal import data as datasets
from jaxal.loop import ALConfig, ALData, ConfigError, make_learner, run_rounds, validate_config
from jaxal.model import cnn, mlp
from jaxal.plots import plot_run
from jaxal.results import (
    config_difference,
    load_checkpoint,
    save_checkpoint,
    write_extremes,
    write_json_atomic,
    write_rounds,
)

TOY_DATASETS = ("moons", "blobs")


class ExperimentConfig(NamedTuple):
    dataset: str = "mnist"
    seed: int = 0
    val_size: int = 1000
    pool_size: int | None = None      # a seeded subset of the pool (None: all of it)
    data_dir: str | None = None       # TFDS data dir (None: $TFDS_DATA_DIR or TFDS default)
    al: ALConfig = ALConfig()

    def to_dict(self) -> dict:
        d = self._asdict()
        d["al"] = {**self.al._asdict(), "train": self.al.train._asdict(),
                   "laplace": self.al.laplace._asdict()}
        del d["data_dir"]  # where the data lives does not change the results
        return d


def load_split(config: ExperimentConfig) -> datasets.ALSplit:
    """The pool / validation / test split of the configured dataset."""
    if config.dataset in TOY_DATASETS:
        n_pool = config.pool_size or 1000
        return datasets.toy_al_split(config.seed, n_pool=n_pool, n_val=config.val_size,
                                     n_test=1000, kind=config.dataset)
    ds = datasets.load_dataset(config.dataset, config.data_dir)
    return datasets.make_al_split(ds, seed=config.seed, val_size=config.val_size,
                                  pool_size=config.pool_size)


def check_config(config: ExperimentConfig) -> None:
    """Checks that need no data: fail before the (slow) first load."""
    known = (*datasets.DATASETS, *TOY_DATASETS)
    if config.dataset not in known:
        raise ConfigError(f"unknown dataset {config.dataset!r}; choose one of {list(known)}")
    if config.val_size < 1:
        raise ConfigError(f"val size must be >= 1 (got {config.val_size})")
    if config.pool_size is not None and config.pool_size < 1:
        raise ConfigError(f"pool size must be >= 1 (got {config.pool_size})")
    validate_config(config.al, num_pool=sys.maxsize, pool_labels=None, num_classes=1)


def to_device(split: datasets.ALSplit) -> ALData:
    return ALData(*(jnp.asarray(a) for a in (split.pool_x, split.pool_y, split.val_x,
                                             split.val_y, split.test_x, split.test_y)),
                  num_classes=split.num_classes)


def _prepare_out_dir(out_dir: Path, config_dict: dict) -> None:
    """Create ``out_dir``; refuse one written by a different configuration."""
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = out_dir / "config.json"
    if existing.exists():
        old = json.loads(existing.read_text())
        # Through JSON, so tuples compare equal to the lists they were written as.
        new = json.loads(json.dumps(config_dict["experiment"]))
        diffs = config_difference(old.get("experiment", {}), new)
        if diffs:
            raise ConfigError(
                f"{out_dir} holds a run with a different configuration:\n  "
                + "\n  ".join(diffs) + "\nchoose another --out or delete that directory")
    write_json_atomic(existing, config_dict)


def progress_line(info, rounds: int) -> str:
    m, t = info.metrics, info.timings
    return (f"round {info.round:>3}/{rounds}  labels {info.num_labels:>5}  "
            f"train loss {m.train_loss:.3f}  test loss {m.test_loss:.3f}  "
            f"test acc {m.test_accuracy:.4f}  val acc {m.val_accuracy:.4f}  "
            f"entropy {m.test_entropy:.3f}"
            + (f"  pseudo {info.pseudo.count} ({info.pseudo.correct} right)"
               if info.pseudo.count else "")
            + f"  |  query {t.score:.1f}s  train {t.train:.1f}s  "
            f"posterior {t.posterior:.1f}s  eval {t.evaluate:.1f}s")


def run_experiment(config: ExperimentConfig, out_dir: str | os.PathLike | None = None,
                   progress: Callable[[str], None] | None = print):
    """Run the AL experiment; write outputs after every round when ``out_dir`` is given.

    Returns:
      (final ALState, list of RoundInfo).
    """
    check_config(config)
    split = load_split(config)
    validate_config(config.al, split.pool_x.shape[0], split.pool_y, split.num_classes)
    out_dir = Path(out_dir) if out_dir is not None else None
    config_dict = {"experiment": config.to_dict(), "jaxal_version": __version__,
                   "jax_version": jax.__version__, "backend": jax.default_backend(),
                   "num_pool": int(split.pool_x.shape[0]), "num_val": int(split.val_y.size),
                   "num_test": int(split.test_y.size), "started": time.strftime("%F %T")}
    model = (mlp(split.num_classes) if config.dataset in TOY_DATASETS
             else cnn(split.num_classes))
    learner = make_learner(model, config.al, split.pool_x.shape[1:], split.num_classes)
    if out_dir is not None:
        _prepare_out_dir(out_dir, config_dict)
    data = to_device(split)
    state, infos = None, []
    if out_dir is not None and (resumed := load_checkpoint(out_dir)) is not None:
        state, infos = resumed
        write_rounds(out_dir, infos, split.pool_index, split.num_classes)
        if progress is not None:
            progress(f"resuming {out_dir} after round {state.round} of {config.al.rounds}")
    for step in run_rounds(jax.random.key(config.seed), learner, data, state):
        state, info = step
        infos.append(info)
        if out_dir is not None:
            write_rounds(out_dir, infos, split.pool_index, split.num_classes)
            write_extremes(out_dir, infos, split.pool_x, split.pool_y)
            save_checkpoint(out_dir, state, infos)
        if progress is not None:
            progress(progress_line(info, config.al.rounds))
    if out_dir is not None:
        plot_run(out_dir)
    return state, infos
