"""The seeds of one strategy as one program: S runs that differ only in their seed, their
states stacked on a leading seed axis and every stage of a round vmapped over it.

    run_seeds(configs, out_dirs)     # configs[s] == configs[0] but for the seed

Each seed keeps its own split, initial labels, weights and keys, exactly those of
``jaxal.apps.experiment.run_experiment`` (round r of seed s is keyed as in ``run_rounds``), and
its own ordinary out dir (files, checkpoint: any seed resumes alone as a plain run). What
is shared is the program: MAP training steps ``vmap(trainer.step)`` over [S] keys, states
and labelled sets, the posterior fit, the query and the evaluation ``vmap``-ed likewise,
and under a mesh of several devices (``jaxal.sharding``) the seed axis is split over
them. ``jaxal.compare --seeds-form vmapped`` runs a comparison's seeds so;
``jaxal.batching.default_seeds_form`` chooses by backend (on CPU one seed after another
was faster: ``benchmarks/scaling.py``).

The seeds must all be at the same round to run together: fresh, or resumed from
checkpoints of one round; otherwise (and with pseudo-labelling, whose training sets
differ in size between seeds) ``stackable`` says why not and the caller runs them one
after another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.apps.experiment import (
    ExperimentConfig,
    check_config,
    load_split,
    prepare_out_dir,
    progress_line,
    run_config_dict,
    to_device,
    write_round_files,
)
from jaxal.apps.plots import plot_run
from jaxal.apps.results import (
    load_checkpoint,
    remove_temp_files,
    save_checkpoint,
    state_template,
)
from jaxal.apps.rundir import lock_out_dir
from jaxal.batching import over_members
from jaxal.loop import (
    ALData,
    ALState,
    RoundInfo,
    Stages,
    al_round,
    check_finite,
    init_state,
    initial_labelled,
    make_learner,
    validate_data,
)
from jaxal.model import build_model
from jaxal.sharding import use_devices
from jaxal.train import hyper_key, labelled_indices, training_steps


def stackable(configs: Sequence[ExperimentConfig]) -> str | None:
    """Why these runs cannot run as one seed-stacked program, or None if they can."""
    if len({c.seed for c in configs}) != len(configs):
        return "the seeds repeat"
    if any(c._replace(seed=0) != configs[0]._replace(seed=0) for c in configs):
        return "the runs differ in more than their seed"
    if configs[0].al.pseudo_label is not None:
        return "pseudo-labels give each seed a training set of its own size"
    return None


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _seed(tree, s: int):
    return jax.tree.map(lambda a: a[s], tree)


def _split(keys: jax.Array, num: int) -> list[jax.Array]:
    """[S] keys -> ``num`` arrays of [S] keys, as ``jax.random.split(key, num)`` per seed."""
    parts = jax.vmap(lambda k: jax.random.split(k, num))(keys)
    return [parts[:, i] for i in range(num)]


_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def seed_stages(learner, seeds: int) -> Stages:
    """The stages of a round for ``seeds`` runs stacked on a leading axis: the learner's
    functions vmapped over it (jitted once per learner), so that ``jaxal.loop``'s
    ``init_state`` and ``al_round`` run every seed as one program."""
    trainer = learner.trainer
    all_seeds = lambda fn, n: over_members(fn, (0,) * n, seeds, "vmap", split=True)
    train_init = jax.jit(jax.vmap(trainer.init))
    step = jax.jit(all_seeds(trainer.step, 6))
    labelled_nll = jax.jit(jax.vmap(trainer.labelled_nll))
    result = jax.jit(jax.vmap(trainer.result))
    indices = jax.jit(jax.vmap(labelled_indices))
    hyper = trainer.hyper
    if hyper is not None:
        hyper_update = jax.jit(all_seeds(hyper.update, 6))
        hyper_keys = jax.jit(jax.vmap(hyper_key, in_axes=(0, None)))

    def train(keys, params0, data: ALData, labelled, pseudo):
        """``jaxal.train.train_map`` of every seed (step t keyed ``fold_in(key_s, t)``).
        The seeds' labelled sets have one size, so one step count; no pseudo-labels
        (``stackable`` refuses them)."""
        del pseudo
        idx, num = indices(labelled), labelled.sum(1)
        steps = training_steps(trainer.config, int(num[0]))
        state = train_init(params0)
        for t in range(steps):
            state, _ = step(_fold_in_each(keys, t), state, data.pool_x, data.pool_y, idx,
                            num)
            if hyper is not None and hyper.due(t + 1):
                state = hyper_update(hyper_keys(keys, t), state, data.pool_x, data.pool_y,
                                     idx, num)
        params = result(state)
        nll = labelled_nll(params, data.pool_x, data.pool_y, idx, num)
        return params, np.asarray(jax.device_get(nll))

    def first_labels(keys, data: ALData):
        pool_ys = np.asarray(data.pool_y)
        return jnp.stack([initial_labelled(keys[s], pool_ys[s], data.num_classes,
                                           learner.config.init_per_class)
                          for s in range(seeds)])

    def each(fn, *values):
        return [fn(*(v[s] if isinstance(v, list) else _seed(v, s) for v in values))
                for s in range(seeds)]

    rows = np.arange(seeds)[:, None]
    return Stages(split=_split, init=jax.jit(jax.vmap(learner.init)),
                  restart=jax.jit(jax.vmap(learner.restart)),
                  initial_labelled=first_labels, train=train,
                  fit=jax.jit(all_seeds(learner.fit, 7)),
                  query=jax.jit(all_seeds(learner.query, 4)),
                  evaluate=jax.jit(all_seeds(learner.evaluate, 4)),
                  evaluate_map=(None if learner.evaluate_map is None
                                else jax.jit(all_seeds(learner.evaluate_map, 4))),
                  diagnose=(None if learner.diagnose is None
                            else jax.jit(all_seeds(learner.diagnose, 2))),
                  label=lambda labelled, queried: labelled.at[rows, queried].set(True),
                  each=each)


def run_seeds(configs: Sequence[ExperimentConfig], out_dirs: Sequence[str | Path],
              progress: Callable[[str], None] | None = print) -> list[list[RoundInfo]] | None:
    """Run (or resume) the seeds of ``configs`` as one program, each into its out dir.

    Returns each seed's RoundInfo list, or None, having run nothing, when the seeds'
    checkpoints are at different rounds (run them one after another then).

    Raises:
      ConfigError: ``stackable`` refuses the configs, or a config is invalid.
    """
    from jaxal.errors import ConfigError

    if (why := stackable(configs)) is not None:
        raise ConfigError(f"the seeds cannot run as one program: {why}")
    for config in configs:
        check_config(config)
    out_dirs = [Path(d) for d in out_dirs]
    with contextlib.ExitStack() as held:
        for out in out_dirs:
            held.enter_context(lock_out_dir(out))
            remove_temp_files(out)
        with use_devices(configs[0].devices) as devices:
            return _run(configs, out_dirs, progress, devices)


def _run(configs, out_dirs, progress, devices):
    splits = [load_split(c) for c in configs]
    al = configs[0].al
    for split in splits:
        validate_data(al, split.pool_x.shape[0], split.pool_y, split.num_classes)
    c = splits[0].num_classes
    learner = make_learner(build_model(configs[0].dataset, c, al), al,
                           splits[0].pool_x.shape[1:], c)
    datas = [to_device(split) for split in splits]
    dicts = [run_config_dict(config, split, devices) for config, split in zip(
        configs, splits, strict=True)]
    for out, d in zip(out_dirs, dicts, strict=True):
        prepare_out_dir(out, d)      # refuses a dir of another configuration
    resumed = [load_checkpoint(out, state_template(learner, data), d["experiment"])
               for out, data, d in zip(out_dirs, datas, dicts, strict=True)]
    if len({None if r is None else r[0].round for r in resumed}) > 1:
        if progress is not None:
            progress(f"seeds {[cf.seed for cf in configs]}: checkpoints of different rounds, "
                     "so one after another")
        return None
    if progress is not None:
        progress(f"seeds {[cf.seed for cf in configs]} as one program")
    data = ALData(*(jnp.stack([getattr(d, f) for d in datas])
                    for f in ALData._fields[:-1]), num_classes=c)
    keys = jax.vmap(jax.random.key)(jnp.asarray([cf.seed for cf in configs], jnp.uint32))
    key_init, key_rounds = _split(keys, 2)
    stages = seed_stages(learner, len(configs))
    if resumed[0] is None:
        state, infos = None, [[] for _ in configs]
    else:
        state = ALState(_stack([r[0].params for r in resumed]),
                        _stack([r[0].posterior for r in resumed]),
                        jnp.stack([r[0].labelled for r in resumed]), resumed[0][0].round,
                        jnp.stack([r[0].init_key for r in resumed]))
        infos = [list(r[1]) for r in resumed]
        if progress is not None:
            progress(f"resuming seeds {[cf.seed for cf in configs]} after round "
                     f"{state.round} of {al.rounds}")
    while state is None or state.round < al.rounds:
        if state is None:
            state, new = init_state(key_init, learner, data, stages)
        else:
            state, new = al_round(_fold_in_each(key_rounds, state.round + 1), state, learner,
                                  data, stages)
        for s, (config, out, info) in enumerate(zip(configs, out_dirs, new, strict=True)):
            one = ALState(_seed(state.params, s), _seed(state.posterior, s),
                          state.labelled[s], state.round, state.init_key[s])
            check_finite(one, info, al)
            infos[s].append(info)
            write_round_files(out, infos[s], splits[s])
            save_checkpoint(out, one, infos[s], dicts[s]["experiment"])
            if progress is not None:
                progress(f"seed {config.seed}: {progress_line(info, al.rounds)}")
    for out in out_dirs:
        plot_run(out)
    return infos
