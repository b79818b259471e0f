"""The active-learning round, written once, as explicit state passing.

    state, info = init_state(key, learner, data)                 # round 0: initial labels
    state, info = al_round(key, state, learner, data)            # query -> label -> refit

The round runs over ``Stages``: the learner's own functions for one run (``single_stages``),
or the same functions vmapped over stacked seeds (``jaxal.apps.seeds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.loop.learner import ActiveLearner
from jaxal.loop.metrics import check_finite, pseudo_label_info, round_metrics
from jaxal.loop.state import ALData, ALState, Extremes, RoundInfo, Timings
from jaxal.posteriors.evidence import plain_diagnosis


def initial_labelled(key: jax.Array, pool_y: np.ndarray, num_classes: int,
                     per_class: int) -> jax.Array:
    """A balanced initial labelled set: ``per_class`` random pool points of every class."""
    pool_y = np.asarray(pool_y)
    mask = np.zeros(pool_y.shape[0], bool)
    # One uniform draw over the pool: each class's per_class members with the smallest
    # draws are a uniform random subset of it. (A jax.random.choice per class compiled a
    # program for every class size: 10 compilations of ~0.25 s in every MNIST run.)
    draws = np.asarray(jax.random.uniform(key, pool_y.shape))
    for c in range(num_classes):
        members = np.flatnonzero(pool_y == c)
        mask[members[np.argsort(draws[members], kind="stable")[:per_class]]] = True
    return jnp.asarray(mask)


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


class Stages(NamedTuple):
    """The stages of a round as they run: for one run, the learner's functions
    (``single_stages``); for S seeds stacked on a leading axis, the same functions vmapped
    over it (``jaxal.apps.seeds``). The round itself (``init_state``, ``al_round``) is written
    once, over these."""

    split: Callable             # (key, num) -> num keys (each [S] for stacked seeds)
    init: Callable              # init_key -> params
    restart: Callable           # (previous params, init_key) -> params0 (from scratch)
    initial_labelled: Callable  # (key, data) -> bool [n] (or [S, n])
    train: Callable             # (key, params0, data, labelled, pseudo) -> (params, nll)
    fit: Callable               # as ``ActiveLearner.fit``
    query: Callable             # as ``ActiveLearner.query``
    evaluate: Callable          # as ``ActiveLearner.evaluate``
    evaluate_map: Callable | None  # as ``ActiveLearner.evaluate_map``
    diagnose: Callable | None      # as ``ActiveLearner.diagnose``
    label: Callable             # (labelled, queried indices) -> labelled with them set
    # (fn, *trees) -> fn of the run's values: one result, or a list of them over the
    # seeds (a tree is cut at each seed; a list is already one entry per seed).
    each: Callable


def single_stages(learner: ActiveLearner) -> Stages:
    """The stages of one run: the learner's own jitted functions."""
    def train(key, params0, data: ALData, labelled, pseudo):
        params, info = learner.train(key, params=params0, x_pool=data.pool_x,
                                     y_pool=data.pool_y, labelled=labelled,
                                     pseudo_labels=pseudo)
        return params, info.train_nll

    def first_labels(key, data: ALData):
        return initial_labelled(key, np.asarray(data.pool_y), data.num_classes,
                                learner.config.init_per_class)

    return Stages(split=lambda key, num: tuple(jax.random.split(key, num)),
                  init=learner.init, restart=learner.restart,
                  initial_labelled=first_labels, train=train,
                  fit=learner.fit, query=learner.query, evaluate=learner.evaluate,
                  evaluate_map=learner.evaluate_map, diagnose=learner.diagnose,
                  label=lambda labelled, queried: labelled.at[queried].set(True),
                  each=lambda fn, *values: fn(*values))


def train_and_fit(key_train: jax.Array, key_fit: jax.Array, learner: ActiveLearner,
                  data: ALData, params0, labelled: jax.Array,
                  pseudo: jax.Array | None = None, stages: Stages | None = None):
    """Train θ_MAP on ``labelled`` (and this round's pseudo-labels) from ``params0``, then
    fit the posterior at θ_MAP on ``labelled`` alone (the validation set tunes λ).

    The part of a round that ``jaxal.apps.labelling`` repeats on the labels a person gave;
    only the pool and validation arrays of ``data`` are read.

    Returns:
      (params, mean NLL of θ_MAP on the labelled set, posterior, (train seconds,
      posterior seconds)).
    """
    s = stages or single_stages(learner)
    (params, train_nll), t_train = _timed(s.train, key_train, params0, data, labelled,
                                          pseudo)
    posterior, t_fit = _timed(s.fit, key_fit, params, data.pool_x, data.pool_y,
                              labelled, data.val_x, data.val_y)
    return params, train_nll, posterior, (t_train, t_fit)


def fit_and_evaluate(key: jax.Array, learner: ActiveLearner, data: ALData, params0,
                     labelled: jax.Array, pseudo: jax.Array | None = None,
                     stages: Stages | None = None):
    """Train θ_MAP on ``labelled`` (and this round's pseudo-labels) from ``params0``, fit
    the posterior on ``labelled`` alone, compute metrics (a list over stacked seeds)."""
    s = stages or single_stages(learner)
    key_train, key_fit, key_eval = s.split(key, 3)
    params, train_nll, posterior, (t_train, t_fit) = train_and_fit(
        key_train, key_fit, learner, data, params0, labelled, pseudo, s)
    start = time.perf_counter()
    test = s.evaluate(key_eval, posterior, data.test_x, data.test_y)
    val = s.evaluate(key_eval, posterior, data.val_x, data.val_y)
    map_test = test if s.evaluate_map is None else s.evaluate_map(
        key_eval, posterior, data.test_x, data.test_y)
    test, val, map_test = jax.device_get((test, val, map_test))
    t_eval = time.perf_counter() - start
    metrics = s.each(lambda nll, te, va, post, mt: round_metrics(
        learner.config, nll, te, va, post, data.num_classes, mt),
                     train_nll, test, val, posterior, map_test)
    diagnosis = None
    if s.diagnose is not None:
        diagnosis = s.each(plain_diagnosis, s.diagnose(posterior, data.val_x))
    return params, posterior, metrics, (t_train, t_fit, t_eval), diagnosis


def init_state(key: jax.Array, learner: ActiveLearner, data: ALData,
               stages: Stages | None = None) -> tuple[ALState, RoundInfo]:
    """Round 0: draw the balanced initial labels, train, fit the posterior, evaluate.

    ``stages``: how the stages run (default: one run, ``single_stages``); for stacked
    seeds the info is a list, one per seed."""
    s = stages or single_stages(learner)
    key_init, key_labels, key_fit = s.split(key, 3)
    labelled = s.initial_labelled(key_labels, data)
    params, posterior, metrics, (t_train, t_fit, t_eval), diagnosis = fit_and_evaluate(
        key_fit, learner, data, s.init(key_init), labelled, stages=s)
    state = ALState(params, posterior, labelled, 0, key_init)
    empty = np.zeros(0, np.int64)
    info = s.each(lambda m, lab, d: RoundInfo(0, int(lab.sum()), empty,
                                              np.zeros(0, np.float32), empty, m,
                                              Timings(0.0, t_train, t_fit, t_eval),
                                              diagnosis=d),
                  metrics, labelled, diagnosis)
    return state, info


def al_round(key: jax.Array, state: ALState, learner: ActiveLearner, data: ALData,
             stages: Stages | None = None) -> tuple[ALState, RoundInfo]:
    """One round: score the pool, query a batch, label it, refit and evaluate.

    With pseudo-labelling on, confident unqueried pool points are trained on with the
    model's label in this round only: they never enter ``labelled`` (no label is spent),
    the posterior is fitted on the true labels alone, and the next round starts afresh.
    ``stages``: as in ``init_state``.
    """
    s = stages or single_stages(learner)
    key_score, key_fit = s.split(key, 2)
    start = time.perf_counter()
    query = s.query(key_score, state.posterior, data.pool_x, state.labelled)
    queried, queried_scores = jax.device_get((query.indices, query.scores))
    t_score = time.perf_counter() - start

    labelled = s.label(state.labelled, queried)
    params0 = (state.params if learner.config.warm_start
               else s.restart(state.params, state.init_key))
    pseudo = query.pseudo_labels if learner.config.pseudo_label is not None else None
    extremes = Extremes(*jax.device_get(query.extremes))
    params, posterior, metrics, (t_train, t_fit, t_eval), diagnosis = fit_and_evaluate(
        key_fit, learner, data, params0, labelled, pseudo, stages=s)
    new_state = ALState(params, posterior, labelled, state.round + 1, state.init_key)
    timings = Timings(t_score, t_train, t_fit, t_eval)

    def info(m, lab, q, scores, pool_y, pseudo_labels, ex, d):
        return RoundInfo(new_state.round, int(lab.sum()), q, scores, pool_y[q], m, timings,
                         pseudo_label_info(pseudo_labels, pool_y), ex, d)

    return new_state, s.each(info, metrics, labelled, queried, queried_scores,
                             np.asarray(data.pool_y), query.pseudo_labels, extremes,
                             diagnosis)


def run_rounds(key: jax.Array, learner: ActiveLearner, data: ALData,
               state: ALState | None = None) -> Iterator[tuple[ALState, RoundInfo]]:
    """Yield (state, info) for round 0 and then every AL round; keys fold in the round.

    Given the ``state`` of a finished round (a checkpoint), continue after it: round r
    gets the same key either way, so a resumed run repeats an uninterrupted one exactly.
    A round whose numbers are not finite raises ``DivergedError`` (``check_finite``)
    instead of being yielded.
    """
    key_init, key_rounds = jax.random.split(key)
    if state is None:
        state, info = init_state(key_init, learner, data)
        check_finite(state, info, learner.config)
        yield state, info
    for r in range(state.round + 1, learner.config.rounds + 1):
        state, info = al_round(jax.random.fold_in(key_rounds, r), state, learner, data)
        check_finite(state, info, learner.config)
        yield state, info
