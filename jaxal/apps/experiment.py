"""One simulated AL experiment: data + model + loop + outputs, for the CLI and notebooks."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxal import __version__
from jaxal import data as datasets
from jaxal.apps.plots import plot_run
from jaxal.apps.results import (
    checkpoint_manifest,
    config_difference,
    load_checkpoint,
    read_json,
    read_run_config,
    remove_temp_files,
    save_checkpoint,
    state_template,
    write_extremes,
    write_json_atomic,
    write_rounds,
)
from jaxal.apps.rundir import lock_out_dir
from jaxal.batching import conv_kernel, default_form, kernel_choices
from jaxal.components import POSTERIORS
from jaxal.config import IMAGE_FOLDER, ModelConfig, protocol_of
from jaxal.config import TOY_DATASETS as TOY_DATASETS  # re-exported
from jaxal.config import ExperimentConfig as ExperimentConfig
from jaxal.errors import ConfigError, RunDirError
from jaxal.loop import (
    ALConfig,
    ALData,
    make_learner,
    run_rounds,
    selector_options,
    validate_config,
    validate_data,
)
from jaxal.model import build_model, init_params
from jaxal.posteriors.laplace import head_params
from jaxal.predictive import PREDICTIVES
from jaxal.resources import Sizes, check_memory, run_needs
from jaxal.resources import describe as describe_memory
from jaxal.resources import summary as memory_summary
from jaxal.sharding import check_devices, device_name, is_writer, use_devices


def load_split(config: ExperimentConfig) -> datasets.ALSplit:
    """The pool / validation / test split of the configured dataset."""
    if config.dataset == IMAGE_FOLDER:
        from jaxal.data.image_folder import folder_split

        return folder_split(read_folder(config))
    if config.dataset in TOY_DATASETS:
        n_pool = config.pool_size or 1000
        return datasets.toy_al_split(config.seed, n_pool=n_pool, n_val=config.val_size,
                                     n_test=1000, kind=config.dataset)
    ds = datasets.load_dataset(config.dataset, config.data_dir)
    return datasets.make_al_split(ds, seed=config.seed, val_size=config.val_size,
                                  pool_size=config.pool_size)


def read_folder(config: ExperimentConfig, cache_dir: str | os.PathLike | None = None):
    """The ``ImageFolder`` of an image-folder config (``data_dir`` is the folder), its
    decoded images cached in ``cache_dir`` if given."""
    from jaxal.data.image_folder import DEFAULT_SHAPE, read_image_folder

    return read_image_folder(config.data_dir, config.image_shape or DEFAULT_SHAPE,
                             config.classes, config.resize, cache_dir)


def check_config(config: ExperimentConfig) -> None:
    """Checks that need no data: fail before the (slow) first load."""
    known = (*datasets.DATASETS, *TOY_DATASETS)
    # Other names are TFDS datasets, read from their info when loaded (a name that is
    # none fails there, at once); here only what cannot be a TFDS name at all.
    if not config.dataset or not all(c.isalnum() or c in "_/.-:" for c in config.dataset):
        raise ConfigError(f"unknown dataset {config.dataset!r}; choose one of {list(known)} "
                          "or a TFDS image-classification dataset (e.g. svhn_cropped)")
    if config.val_size < 1:
        raise ConfigError(f"val size must be >= 1 (got {config.val_size})")
    if config.pool_size is not None and config.pool_size < 1:
        raise ConfigError(f"pool size must be >= 1 (got {config.pool_size})")
    validate_config(config.al)
    model = config.al.model
    if config.dataset in TOY_DATASETS and (model.channels, model.hidden) != (
            ModelConfig().channels, ModelConfig().hidden):
        raise ConfigError(f"--channels and --hidden shape the CNN, and {config.dataset} "
                          "trains the toy MLP; drop them")
    if config.dataset == IMAGE_FOLDER:
        posterior = POSTERIORS[config.al.posterior]
        if posterior.validation_grid(config.al.options("posterior")) is not None:
            raise ConfigError("--prior-precision val-nll fits λ on validation labels, and "
                              "an image folder has none; use --prior-precision auto "
                              "(evidence) or a number")
    check_devices(config.devices)
    conv_kernel()   # JAXAL_CONV=onednn without the extension: refused before any work


def to_device(split: datasets.ALSplit) -> ALData:
    return ALData(*(jnp.asarray(a) for a in (split.pool_x, split.pool_y, split.val_x,
                                             split.val_y, split.test_x, split.test_y)),
                  num_classes=split.num_classes)


def prepare_out_dir(out_dir: Path, config_dict: dict) -> None:
    """Create ``out_dir``; refuse a labelling session's dir, or one written by a different
    configuration, as its config.json or (should that be deleted) its checkpoint says,
    before writing to it. config.json is rewritten only where more than its ``started``
    time would change, so a resume refused later leaves it as it was."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "session.json").exists():
        raise RunDirError(f"{out_dir} is a labelling session of python -m jaxal.label "
                          "(session.json); a run needs its own out dir: choose another --out")
    existing = out_dir / "config.json"
    # Through JSON, so tuples compare equal to the lists they were written as.
    new = json.loads(json.dumps(config_dict))
    old = None
    if existing.exists():
        if diffs := config_difference(read_run_config(out_dir), new["experiment"]):
            raise RunDirError(f"{out_dir} holds a run with a different configuration ("
                              + "; ".join(diffs)
                              + "); choose another --out or delete that directory")
        old = read_json(existing, "delete it and rerun the run's command")
    checkpoint_manifest(out_dir, config_dict["experiment"])
    if not (isinstance(old, dict) and {**old, "started": None} == {**new, "started": None}):
        write_json_atomic(existing, config_dict)


def progress_line(info, rounds: int) -> str:
    m, t = info.metrics, info.timings
    return (f"round {info.round:>3}/{rounds}  labels {info.num_labels:>5}  "
            f"train loss {m.train_loss:.3f}  test loss {m.test_loss:.3f}  "
            f"test acc {m.test_accuracy:.4f}"
            # The MAP network's own, where the predictive is another (NaN: not recorded).
            + (f" (MAP {m.map_test_accuracy:.4f})" if not math.isnan(m.map_test_accuracy)
               and m.map_test_accuracy != m.test_accuracy else "")
            + f"  val acc {m.val_accuracy:.4f}  "
            f"entropy {m.test_entropy:.3f}"
            + (f"  pseudo {info.pseudo.count} ({info.pseudo.correct} right)"
               if info.pseudo.count else "")
            + f"  |  query {t.score:.1f}s  train {t.train:.1f}s  "
            f"posterior {t.posterior:.1f}s  eval {t.evaluate:.1f}s"
            + ("\n  warning: training diverged (its loss ended above log C, no better than "
               "a uniform guess); lower --lr" if m.diverged else ""))


def run_experiment(config: ExperimentConfig, out_dir: str | os.PathLike | None = None,
                   progress: Callable[[str], None] | None = print):
    """Run the AL experiment; write outputs after every round when ``out_dir`` is given.

    The out dir is held exclusively for the whole run (``jaxal.apps.rundir.lock_out_dir``): a
    second writer is refused at once. In a multi-process run (``jax.distributed``) process
    0 holds it and writes; the others compute the same rounds, resume from its
    checkpoint, and write nothing.

    Returns:
      (final ALState, list of RoundInfo).
    """
    if out_dir is None:
        return _run_experiment(config, None, progress)
    if not is_writer():
        return _run_experiment(config, Path(out_dir), None, write=False)
    with lock_out_dir(out_dir):
        remove_temp_files(out_dir)   # of a write killed midway; only the holder may
        return _run_experiment(config, Path(out_dir), progress)


def _run_experiment(config: ExperimentConfig, out_dir: Path | None,
                    progress: Callable[[str], None] | None, write: bool = True):
    check_config(config)
    if config.dataset == IMAGE_FOLDER:
        raise ConfigError("an image folder has no test labels to simulate active learning "
                          "with; label it with python -m jaxal.label query --images DIR")
    with use_devices(config.devices) as devices:
        return _run_on_devices(config, out_dir, progress, devices, write)


def memory_estimate(al: ALConfig, model, split: datasets.ALSplit) -> dict:
    """The run's memory, part by part (``jaxal.resources``), from the data's shapes and
    the model's parameter count (abstract: nothing is allocated).

    Raises:
      ResourceError: the machine cannot hold it (the largest part and its fix named).
    """
    input_shape = split.pool_x.shape[1:]
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), input_shape))
    count = lambda tree: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
    options = al.options("posterior")
    field = getattr(options, "SAMPLES", None)    # the option that sets its samples
    sampled = field is not None and PREDICTIVES[al.predictive].gives_samples
    num_pool = split.pool_x.shape[0]
    sizes = Sizes(examples=num_pool + split.val_x.shape[0] + split.test_x.shape[0],
                  input_size=math.prod(input_shape), classes=split.num_classes,
                  params=count(params), head_params=count(head_params(params)),
                  chunk=min(al.chunk_size, num_pool),
                  samples=getattr(options, field) if sampled else 1,
                  samples_flag=options.FLAGS[field].flag if sampled else "",
                  unrolled=default_form() == "unroll")
    needs = run_needs(sizes, options, selector_options(al))
    check_memory(needs)
    return memory_summary(needs)


def _run_on_devices(config: ExperimentConfig, out_dir: Path | None,
                    progress: Callable[[str], None] | None, devices: list, write: bool):
    """The run; with ``write`` False (a multi-process run's other processes) ``out_dir``
    is only read: its checkpoint, to resume where process 0 resumes."""
    split = load_split(config)
    validate_data(config.al, split.pool_x.shape[0], split.pool_y, split.num_classes)
    model = build_model(config.dataset, split.num_classes, config.al)
    # Refused here, before the out dir is written or anything is compiled.
    estimate = memory_estimate(config.al, model, split)
    config_dict = {**run_config_dict(config, split, devices), "memory_estimate": estimate}
    learner = make_learner(model, config.al, split.pool_x.shape[1:], split.num_classes)
    if out_dir is not None and write:
        prepare_out_dir(out_dir, config_dict)
    writes = out_dir if write else None
    data = to_device(split)
    state, infos = None, []
    if out_dir is not None and (resumed := load_checkpoint(
            out_dir, state_template(learner, data), config_dict["experiment"])) is not None:
        state, infos = resumed
        if writes is not None:
            write_round_files(writes, infos, split)
        if progress is not None:
            progress(f"resuming {out_dir} after round {state.round} of {config.al.rounds}")
    elif progress is not None:   # a fresh run says what it will hold
        progress(describe_memory(estimate))
    for step in run_rounds(jax.random.key(config.seed), learner, data, state):
        state, info = step
        infos.append(info)
        if writes is not None:
            write_round_files(writes, infos, split)
            save_checkpoint(writes, state, infos, config_dict["experiment"])
        if progress is not None:
            progress(progress_line(info, config.al.rounds))
    if writes is not None:
        plot_run(writes)
    return state, infos


def write_round_files(out_dir: Path, infos, split: datasets.ALSplit) -> None:
    """A run's per-round files (metrics, queries, query classes, Figure 4's extremes)."""
    write_rounds(out_dir, infos, split.pool_index, split.num_classes)
    write_extremes(out_dir, infos, split.pool_x, split.pool_y)


def run_config_dict(config: ExperimentConfig, split: datasets.ALSplit, devices) -> dict:
    """What config.json records of a run: the experiment, versions, devices, protocol."""
    return {"experiment": config.to_dict(), "jaxal_version": __version__,
                   "jax_version": jax.__version__, "backend": jax.default_backend(),
                   "devices": [device_name(d) for d in devices],
                   "kernels": kernel_choices(),
                   "processes": jax.process_count(),
                   # The dataset's protocol set these (the command gave the rest).
                   "from_protocol": {"dataset": config.dataset,
                                     "source": protocol_of(config.dataset).source,
                                     "fields": list(config.from_protocol)},
                   "num_pool": int(split.pool_x.shape[0]), "num_val": int(split.val_y.size),
                   "num_test": int(split.test_y.size), "started": time.strftime("%F %T")}
