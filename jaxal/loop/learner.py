"""``make_learner``: the jitted pure functions of one run (init, train, fit, query, evaluate,
diagnose), each component's options bound into its functions once, so each compiles once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxal.acquisition import map_chunks, score_pool, select_top_k
from jaxal.components import POSTERIORS
from jaxal.config import ALConfig
from jaxal.loop.metrics import evaluate
from jaxal.loop.state import NUM_EXTREMES, Extremes, Query
from jaxal.loop.validation import _need, label_budget, query_strategy, selector_options
from jaxal.model import Classifier, init_params
from jaxal.posteriors import bind
from jaxal.posteriors.laplace import with_prior_precision
from jaxal.predictive import PREDICTIVES
from jaxal.selection import (
    Pool,
    pseudo_labels,
)
from jaxal.train import (
    labelled_buffer,
    labelled_indices,
    make_trainer,
    train_map,
)


class ActiveLearner(NamedTuple):
    """The jitted pure functions one run uses, built once so each compiles once."""

    config: ALConfig
    init: Callable          # (init_key) -> params
    train: Callable         # (key, params, x_pool, y_pool, labelled, pseudo_labels=None)
                            #   -> (params, TrainInfo)
    fit: Callable           # (key, params, x, y, labelled, x_val, y_val) -> posterior
    query: Callable         # (key, posterior, x_pool, labelled) -> Query
    evaluate: Callable      # (key, posterior, x, y) -> (nll, accuracy, entropy, ece)
    trainer: Any            # the jitted Trainer behind ``train`` (``jaxal.apps.seeds`` vmaps it)
    # (previous params, init_key) -> params0 of a round that retrains from scratch: a
    # fresh init, keeping what the trainer carries over (``Trainer.restart``: online
    # marglik's λ).
    restart: Callable
    # The same as ``evaluate`` for the MAP network's plugin predictive (None: the run's
    # predictive is the plugin, so ``evaluate`` is it).
    evaluate_map: Callable | None = None
    # (posterior, x) -> the posterior's diagnosis tree (``--diagnose``; None: off).
    diagnose: Callable | None = None


# Validation points whose GLM logit std ``--diagnose`` reports each round.
DIAGNOSIS_POINTS = 256


def tune_prior_precision(key: jax.Array, model: Classifier, predict: Callable, posterior,
                         x_val: jax.Array, y_val: jax.Array, grid: tuple[float, ...],
                         chunk_size: int,
                         with_prior_precision: Callable = with_prior_precision):
    """The posterior with the grid's λ of lowest validation NLL of the predictive.

    The curvature is kept and only λ changes (no refit: the posterior record's
    ``with_prior_precision``); non-finite NLLs never win.
    """
    lams = jnp.asarray(grid, x_val.dtype)

    def val_nll(lam):
        return evaluate(key, model, predict, with_prior_precision(posterior, lam), x_val,
                        y_val, chunk_size)[0]

    nll = jax.lax.map(val_nll, lams)
    best = jnp.argmin(jnp.where(jnp.isfinite(nll), nll, jnp.inf))
    return with_prior_precision(posterior, lams[best])


def pool_subset_indices(key: jax.Array, labelled: jax.Array, capacity: int, size: int
                        ) -> jax.Array:
    """int [capacity + size]: the labelled buffer (padded with its first point), then
    ``size`` distinct unlabelled pool points drawn uniformly (``--pool-subset``; Gal et al.
    2017, BaaL's ``max_sample``)."""
    idx, _ = labelled_buffer(labelled_indices(labelled), labelled.sum(), capacity)
    fresh, _ = select_top_k(jax.random.uniform(key, labelled.shape), labelled, size)
    return jnp.concatenate([idx, fresh])


def evaluation_options(config: ALConfig):
    """The posterior's options for evaluation: its sample count (an option named
    ``samples``) set to ``config.eval_samples`` when that is given."""
    options = config.options("posterior")
    if config.eval_samples is None or "samples" not in getattr(options, "_fields", ()):
        return options
    return options._replace(samples=config.eval_samples)


def make_learner(model: Classifier, config: ALConfig, input_shape: tuple[int, ...],
                 num_classes: int, capacity: int | None = None) -> ActiveLearner:
    """Bundle and jit the functions of one run, each component's options bound into its
    functions. Shapes are static, so each compiles once.

    ``capacity``: the largest labelled set the learner will see (a static bound for
    gathering labelled points); default the run's label budget (``label_budget``).
    """
    record = POSTERIORS[config.posterior]
    options = config.options("posterior")
    record.check_model(model, options, input_shape)
    _need(not config.train.augment or len(input_shape) == 3,
          f"--augment crops and flips images, and these inputs have shape {input_shape}; "
          "drop --augment (use --no-augment)")
    posterior = bind(record, options)
    predict = partial(PREDICTIVES[config.predictive].predict, posterior=posterior)
    # Evaluation (metrics, the val-nll prior fit) may take fewer posterior samples.
    predict_eval = partial(PREDICTIVES[config.predictive].predict,
                           posterior=bind(record, evaluation_options(config)))
    acquisition, selector = query_strategy(config)
    select = partial(selector.select, k=config.query_size, options=selector_options(config))
    if capacity is None:
        capacity = label_budget(config, num_classes)

    trainer = make_trainer(model, config.train, capacity)
    init_one = partial(init_params, model, input_shape=input_shape)
    if record.training is not None:   # the posterior trains θ_MAP its own way
        trainer, init_one = record.training(trainer, init_one, options, model=model,
                                            capacity=capacity)
    hyper = trainer.hyper
    trainer = trainer._replace(init=jax.jit(trainer.init),
                               step=jax.jit(trainer.step),
                               labelled_nll=jax.jit(trainer.labelled_nll),
                               result=jax.jit(trainer.result),
                               hyper=hyper and hyper._replace(update=jax.jit(hyper.update)))
    init = jax.jit(init_one)
    if trainer.restart is None:
        restart = lambda previous, init_key: init(init_key)
    else:
        restart = jax.jit(lambda previous, init_key: trainer.restart(previous,
                                                                     init_one(init_key)))

    chunk_size = min(config.chunk_size,
                     record.chunk_size(options, config.predictive) or config.chunk_size)
    grid = record.validation_grid(options)

    def fit(key, params, x_pool, y_pool, labelled, x_val, y_val):
        # The labelled set in a buffer of static size (padding rows weigh 0).
        idx, valid = labelled_buffer(labelled_indices(labelled), labelled.sum(), capacity)
        key_fit, key_tune = jax.random.split(key)
        state = posterior.fit(key_fit, model, params, x_pool[idx], y_pool[idx],
                              valid.astype(x_pool.dtype), config.train.prior_precision)
        if grid is not None:
            state = tune_prior_precision(key_tune, model, predict_eval, state, x_val, y_val,
                                         grid, chunk_size, record.with_prior_precision)
        return state

    def query(key, posterior, x_pool, labelled):
        key_pool, key_select = jax.random.split(key)
        subset, num_pool = None, x_pool.shape[0]
        if config.pool_subset is not None:
            # Score the labelled buffer (for the diversity selectors' distances) and a
            # fresh random K of the unlabelled pool: capacity + K rows, a static shape.
            key_subset, key_pool = jax.random.split(key_pool)
            subset = pool_subset_indices(key_subset, labelled, capacity, config.pool_subset)
            x_pool, labelled = x_pool[subset], jnp.arange(subset.shape[0]) < capacity

        def predict_chunk(key_predict, x_chunk):
            return predict(key_predict, model, posterior, x_chunk)

        scores, probs = score_pool(key_pool, predict_chunk, acquisition.score, x_pool, chunk_size,
                                   with_probs=True)
        features = None
        if selector.needs_features:
            features = map_chunks(
                lambda i, x: model.apply(posterior.params, x, method=model.features),
                x_pool, chunk_size)

        def sample_probs_of(idx):
            # score_pool hands its predictive split(key)[0]: the same posterior samples.
            return predict_chunk(jax.random.split(key_pool)[0], x_pool[idx]).sample_probs

        pool = Pool(scores, probs, features, labelled, labelled_indices(labelled)[:capacity],
                    sample_probs_of)
        indices, picked = select(key_select, pool)
        if config.pseudo_label is None:
            pseudo = jnp.full(labelled.shape, -1, jnp.int32)
        else:
            chosen = labelled.at[indices].set(True)
            pseudo = pseudo_labels(probs, chosen, config.pseudo_label, config.pseudo_label_by)
        num = min(NUM_EXTREMES, x_pool.shape[0] - capacity)
        top, top_scores = select_top_k(scores, labelled, num)
        bottom, bottom_scores = select_top_k(-scores, labelled, num)
        if subset is not None:   # back to pool indices
            indices, top, bottom = subset[indices], subset[top], subset[bottom]
            pseudo = jnp.full(num_pool, -1, jnp.int32).at[subset].max(pseudo)
        return Query(indices, picked, pseudo, Extremes(top, top_scores, bottom,
                                                       -bottom_scores))

    def evaluate_fn(key, posterior, x, y):
        return evaluate(key, model, predict_eval, posterior, x, y, chunk_size)

    def evaluate_map(key, posterior, x, y):
        return evaluate(key, model, PREDICTIVES["plugin"].predict, posterior, x, y,
                        chunk_size)

    diagnose = None
    if config.diagnose:
        diagnose = jax.jit(lambda state, x_val: posterior.diagnose(
            model, state, x_val[:DIAGNOSIS_POINTS]))

    return ActiveLearner(
        config=config,
        init=init,
        restart=restart,
        train=partial(train_map, trainer=trainer),
        fit=jax.jit(fit),
        query=jax.jit(query),
        evaluate=jax.jit(evaluate_fn),
        trainer=trainer,
        evaluate_map=None if config.predictive == "plugin" else jax.jit(evaluate_map),
        diagnose=diagnose,
    )
