"""The active-learning loop as explicit state passing.

    state, info = init_state(key, learner, data)                 # round 0: initial labels
    state, info = al_round(key, state, learner, data)            # query -> label -> refit

``ALState`` is what a round carries; ``RoundInfo`` is what it reports. Every array the
jitted functions see has a shape fixed for the whole run (the pool plus a labelled mask),
so nothing recompiles after the first round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.acquisition import ACQUISITIONS, entropy, map_chunks, score_pool, select_top_k
from jaxal.config import ALConfig as ALConfig  # re-exported
from jaxal.errors import ConfigError, DivergedError
from jaxal.evidence import plain_diagnosis
from jaxal.model import Classifier, init_params
from jaxal.posterior import POSTERIORS, bind, with_prior_precision
from jaxal.predictive import PREDICTIVES, works_with
from jaxal.selection import (
    PSEUDO_LABEL_CRITERIA,
    SELECTORS,
    Pool,
    batch_selectors,
    pseudo_labels,
    strategies,
)
from jaxal.train import (
    check_train_config,
    labelled_buffer,
    labelled_indices,
    make_trainer,
    train_map,
)


class ALData(NamedTuple):
    """Device arrays of one AL problem: a fixed pool, a validation and a test set."""

    pool_x: jax.Array
    pool_y: jax.Array      # the oracle's labels; only labelled entries are ever trained on
    val_x: jax.Array
    val_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    num_classes: int


class ALState(NamedTuple):
    """What one round hands to the next."""

    params: Any            # θ_MAP fitted on ``labelled``
    posterior: Any         # the posterior fitted at ``params`` (the MAP point for plugin)
    labelled: jax.Array    # bool [n_pool]
    round: int
    init_key: jax.Array    # rebuilds the initial weights for from-scratch retraining


class Metrics(NamedTuple):
    """The seed's Figure-5 quantities for the model of one round."""

    train_loss: float      # mean NLL on the labelled set (dropout off)
    test_loss: float       # mean NLL of the predictive on the test set
    test_accuracy: float
    test_entropy: float    # mean predictive entropy on the test set
    val_loss: float
    val_accuracy: float
    prior_precision: float  # of the posterior (fitted with --prior-precision auto|val-nll)
    # Training ended no better than a uniform guess on its own labels (mean NLL >= log C):
    # it diverged (e.g. a learning rate far too large), though the loss stayed finite.
    diverged: bool = False
    # Expected calibration error of the predictive on the test set (ECE_BINS equal-width
    # confidence bins); NaN in records written before it existed.
    test_ece: float = float("nan")
    # The MAP network's own (plugin) NLL and accuracy on the test set, beside the
    # predictive's: a posterior's predictive is told apart from the network it was
    # fitted at (for an ensemble, member 0). NaN in records written before them.
    map_test_loss: float = float("nan")
    map_test_accuracy: float = float("nan")


class Timings(NamedTuple):
    """Seconds per stage, compilation included (the first round compiles)."""

    score: float
    train: float
    posterior: float
    evaluate: float


# How many of the highest and lowest scored unlabelled points a round records (Figure 4).
NUM_EXTREMES = 5


class Extremes(NamedTuple):
    """The NUM_EXTREMES highest and lowest acquisition scores of the unlabelled pool."""

    top: np.ndarray              # int pool indices, best first
    top_scores: np.ndarray
    bottom: np.ndarray           # int pool indices, worst first
    bottom_scores: np.ndarray


class PseudoLabelInfo(NamedTuple):
    count: int                   # pool points trained on with the model's label
    correct: int                 # of those, how many labels equal the oracle's


class RoundInfo(NamedTuple):
    round: int
    num_labels: int
    queried: np.ndarray          # int [query_size] pool indices (empty in round 0)
    scores: np.ndarray           # what the selector ranked them by (see jaxal.selection)
    queried_labels: np.ndarray   # their oracle labels
    metrics: Metrics
    timings: Timings
    pseudo: PseudoLabelInfo = PseudoLabelInfo(0, 0)
    extremes: Extremes | None = None   # the round's best and worst scored pool points
    # With ``--diagnose``: the posterior's diagnosis in plain floats (``Posterior.diagnose``,
    # ``jaxal.evidence.plain_diagnosis``), written to diagnosis.jsonl.
    diagnosis: dict | None = None


class Query(NamedTuple):
    """One round's query: the batch, and (CEAL) the pseudo-labels of the pool."""

    indices: jax.Array           # int [k] pool indices, unlabelled and distinct
    scores: jax.Array            # [k]
    pseudo_labels: jax.Array     # int [n] model labels of confident pool points, else -1
    extremes: Extremes           # of the pool pass's scores (zeros for kcenter / badge)


class ActiveLearner(NamedTuple):
    """The jitted pure functions one run uses, built once so each compiles once."""

    config: ALConfig
    init: Callable          # (init_key) -> params
    train: Callable         # (key, params, x_pool, y_pool, labelled, pseudo_labels=None)
                            #   -> (params, TrainInfo)
    fit: Callable           # (key, params, x, y, labelled, x_val, y_val) -> posterior
    query: Callable         # (key, posterior, x_pool, labelled) -> Query
    evaluate: Callable      # (key, posterior, x, y) -> (nll, accuracy, entropy, ece)
    trainer: Any = None     # the jitted Trainer behind ``train`` (``jaxal.seeds`` vmaps it)
    # (previous params, init_key) -> params0 of a round that retrains from scratch: a
    # fresh init, keeping what the trainer carries over (``Trainer.restart``: online
    # marglik's λ).
    restart: Callable | None = None
    # The same as ``evaluate`` for the MAP network's plugin predictive (None: the run's
    # predictive is the plugin, so ``evaluate`` is it).
    evaluate_map: Callable | None = None
    # (posterior, x) -> the posterior's diagnosis tree (``--diagnose``; None: off).
    diagnose: Callable | None = None


def query_strategy(config: ALConfig):
    """(``Acquisition``, ``Selector``) of a run: the ``--acq`` score with the ``--batch``
    selector, or a strategy (``kcenter``, ``badge``, ``batchbald``) with the score it
    brings."""
    if config.acquisition in strategies():
        selector = SELECTORS[config.acquisition]
        return selector.score, selector
    return ACQUISITIONS[config.acquisition], SELECTORS[config.batch]


def selector_options(config: ALConfig):
    """The options record of the run's selector: the strategy's, or the batch selector's."""
    return config.options("acquisition" if config.acquisition in strategies() else "batch")


def needs_samples(config: ALConfig) -> bool:
    """Whether the run's acquisition reads per-sample probabilities (BALD and friends)."""
    acquisition, selector = query_strategy(config)
    return acquisition.needs_samples or selector.needs_samples


def default_predictive(config: ALConfig) -> str:
    """The predictive a run gets when none is named: the posterior's choice from its
    options (``Posterior.default_predictive``: plugin for the plugin posterior; for
    Laplace, mc when the acquisition needs samples or the subset is all weights, else
    probit)."""
    return POSTERIORS[config.posterior].default_predictive(config.options("posterior"),
                                                           needs_samples(config))


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_config(config: ALConfig) -> None:
    """Fail fast, with the fix in the message, on a configuration that cannot run; needs
    no data (``validate_data`` checks it against the pool).

    Each rule lives with the component that knows it: the selector's hyperparameters in
    its ``Selector.check``, the posterior's in ``Posterior.check``; which predictive works
    with which posterior and acquisition follows from what their records declare.
    """
    _need(config.acquisition in ACQUISITIONS or config.acquisition in strategies(),
          f"unknown acquisition {config.acquisition!r}; choose one of "
          f"{sorted(ACQUISITIONS) + list(strategies())}")
    _need(config.batch in batch_selectors(),
          f"unknown batch selector {config.batch!r}; choose one of {list(batch_selectors())}")
    _need(config.acquisition not in strategies() or config.batch == "topk",
          f"--acq {config.acquisition} picks its batch itself; drop --batch {config.batch} "
          f"(--batch applies to the scores {sorted(ACQUISITIONS)})")
    _need(config.posterior in POSTERIORS,
          f"unknown posterior {config.posterior!r}; choose one of {sorted(POSTERIORS)}")
    _need(config.predictive in PREDICTIVES,
          f"unknown predictive {config.predictive!r}; choose one of {sorted(PREDICTIVES)}")
    posterior = POSTERIORS[config.posterior]
    if needs_samples(config):
        # Which (posterior, predictive) pairs give samples, to name the fix.
        samplers = [f"--posterior {p} --predictive {q}" for p in POSTERIORS
                    for q, pred in PREDICTIVES.items()
                    if pred.gives_samples and works_with(pred, POSTERIORS[p])]
        _need(any(pred.gives_samples and works_with(pred, posterior)
                  for pred in PREDICTIVES.values()),
              f"{config.acquisition} needs posterior samples, and the {config.posterior!r} "
              f"posterior gives none (every sample of a point mass is the MAP network, so "
              f"the score would be 0 everywhere); use {' or '.join(samplers)}")
        _need(PREDICTIVES[config.predictive].gives_samples,
              f"{config.acquisition} needs per-sample probabilities, which the "
              f"{config.predictive!r} predictive does not give; use --predictive "
              + " or ".join(q for q, pred in PREDICTIVES.items()
                            if pred.gives_samples and works_with(pred, posterior)))
    selector = query_strategy(config)[1]
    if selector.needs_samples and config.predictive in PREDICTIVES:
        _need(PREDICTIVES[config.predictive].joint_samples,
              f"{config.acquisition} scores a batch jointly, so it needs the same posterior "
              f"sample for every pool point, and the {config.predictive!r} predictive draws "
              "each point's samples alone; use --predictive "
              + " or ".join(q for q, pred in PREDICTIVES.items()
                            if pred.gives_samples and pred.joint_samples
                            and works_with(pred, posterior)))
    allowed = [q for q, pred in PREDICTIVES.items() if works_with(pred, posterior)]
    offering = [p for p, record in POSTERIORS.items()
                if config.predictive in PREDICTIVES
                and works_with(PREDICTIVES[config.predictive], record)]
    _need(config.predictive in allowed,
          f"predictive {config.predictive!r} does not work with posterior "
          f"{config.posterior!r} (it needs {', '.join(PREDICTIVES[config.predictive].needs)}"
          f", offered by {', '.join(offering)}); use --posterior {' or '.join(offering)}, or "
          f"with {config.posterior!r} --predictive {' or '.join(allowed)}")
    query_strategy(config)[1].check(selector_options(config), config)
    _need(config.pseudo_label_by in PSEUDO_LABEL_CRITERIA,
          f"unknown pseudo-label criterion {config.pseudo_label_by!r}; choose one of "
          f"{list(PSEUDO_LABEL_CRITERIA)}")
    if config.pseudo_label is not None:
        t = config.pseudo_label
        _need(0.0 < t <= 1.0 if config.pseudo_label_by == "max-prob"
              else math.isfinite(t) and t > 0.0,
              f"pseudo-label threshold {t} is out of range: max-prob needs 0 < t <= 1 "
              "(e.g. 0.99), entropy needs t > 0 nats (e.g. 0.05)")
    _need(config.query_size > 0, f"query size must be > 0 (got {config.query_size})")
    _need(config.rounds >= 0, f"rounds must be >= 0 (got {config.rounds})")
    _need(config.init_per_class > 0,
          f"init-per-class must be > 0 (got {config.init_per_class})")
    _need(config.chunk_size > 0, f"chunk size must be > 0 (got {config.chunk_size})")
    _need(config.pool_subset is None or config.pool_subset >= config.query_size,
          f"--pool-subset must be at least the query size {config.query_size} (got "
          f"{config.pool_subset}); raise it, or drop it to score the whole pool")
    _need(0.0 <= config.model.dropout < 1.0,
          f"--dropout must be in [0, 1) (got {config.model.dropout:g})")
    _need(config.eval_samples is None or config.eval_samples > 0,
          f"--eval-samples must be > 0 (got {config.eval_samples}); or drop it to evaluate "
          "with the query's samples")
    posterior.check(config.options("posterior"), config)
    _need(not config.diagnose or posterior.diagnose is not None,
          f"--diagnose reports the Laplace evidence diagnosis, and the {config.posterior!r} "
          f"posterior has none; use --posterior "
          + " or ".join(p for p, r in POSTERIORS.items() if r.diagnose is not None)
          + " or drop --diagnose")
    check_train_config(config.train)


def validate_data(config: ALConfig, num_pool: int, pool_labels: np.ndarray | None,
                  num_classes: int) -> None:
    """Fail fast on a configuration the data cannot serve: the initial labels and the
    label budget must fit the pool (``pool_labels``: every class must have enough)."""
    num_init = config.init_per_class * num_classes
    _need(num_init <= num_pool,
          f"{config.init_per_class} initial labels per class x {num_classes} classes = "
          f"{num_init} exceeds the pool of {num_pool}; lower --init-per-class or enlarge "
          f"the pool")
    if pool_labels is not None:
        counts = np.bincount(np.asarray(pool_labels), minlength=num_classes)
        short = [c for c in range(num_classes) if counts[c] < config.init_per_class]
        _need(not short, f"classes {short} have fewer than {config.init_per_class} pool "
                         f"points (counts {counts[short].tolist()}); lower --init-per-class")
    budget = label_budget(config, num_classes)
    _need(budget <= num_pool,
          f"{num_init} initial + {config.rounds} rounds x {config.query_size} queries = "
          f"{budget} labels exceeds the pool of {num_pool}; lower --rounds or --query-size")
    if config.pool_subset is not None and config.rounds > 0:
        left = num_pool - (budget - config.query_size)   # unlabelled at the last query
        _need(config.pool_subset <= left,
              f"--pool-subset {config.pool_subset} exceeds the {left} unlabelled pool points "
              f"left at the last query (pool {num_pool} - {budget - config.query_size} "
              f"labelled); lower --pool-subset or drop it to score the whole pool")


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


# Validation points whose GLM logit std ``--diagnose`` reports each round.
DIAGNOSIS_POINTS = 256

# Confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


def expected_calibration_error(probs: jax.Array, y: jax.Array, num_bins: int = ECE_BINS
                               ) -> jax.Array:
    """ECE = Σ_b |B_b|/n · |acc(B_b) - conf(B_b)| over equal-width bins of the confidence
    max_c p_c [n] (probs [n, c], y int [n]); empty bins count 0."""
    confidence = probs.max(-1)
    correct = (probs.argmax(-1) == y).astype(probs.dtype)
    bins = jnp.clip((confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
    gap = (jax.ops.segment_sum(correct, bins, num_bins)
           - jax.ops.segment_sum(confidence, bins, num_bins))
    return jnp.abs(gap).sum() / y.shape[0]


def evaluate(key: jax.Array, model: Classifier, predict: Callable, posterior, x: jax.Array,
             y: jax.Array, chunk_size: int
             ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Mean NLL, accuracy, mean predictive entropy and ECE of the predictive on (x, y)."""
    def one_chunk(i, x_chunk):
        del i  # same posterior samples for every chunk
        return predict(key, model, posterior, x_chunk).probs

    probs = map_chunks(one_chunk, x, chunk_size)
    p_true = jnp.take_along_axis(probs, y[:, None], axis=1)[:, 0]
    nll = -jnp.log(jnp.clip(p_true, 1e-12, 1.0)).mean()
    accuracy = (probs.argmax(-1) == y).mean()
    return nll, accuracy, entropy(probs).mean(), expected_calibration_error(probs, y)


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


def label_budget(config: ALConfig, num_classes: int) -> int:
    """Labels at the end of the run: the initial set plus every query."""
    return config.init_per_class * num_classes + config.rounds * config.query_size


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


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


class Stages(NamedTuple):
    """The stages of a round as they run: for one run, the learner's functions
    (``single_stages``); for S seeds stacked on a leading axis, the same functions vmapped
    over it (``jaxal.seeds``). The round itself (``init_state``, ``al_round``) is written
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

    The part of a round that ``jaxal.labelling`` repeats on the labels a person gave;
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


def round_metrics(config: ALConfig, train_nll: float, test, val, posterior,
                  num_classes: int, map_test=None) -> Metrics:
    """A round's ``Metrics`` from the labelled-set NLL and the (nll, accuracy, entropy,
    ece) of the predictive on the test and validation sets, and of the MAP network's
    plugin predictive on the test set (``map_test``; None: the predictive's)."""
    map_test = test if map_test is None else map_test
    lam = POSTERIORS[config.posterior].prior_precision(posterior)
    return Metrics(
        train_loss=float(train_nll), test_loss=float(test[0]),
        test_accuracy=float(test[1]), test_entropy=float(test[2]),
        val_loss=float(val[0]), val_accuracy=float(val[1]),
        prior_precision=float(lam if lam is not None else config.train.prior_precision),
        diverged=bool(train_nll >= math.log(num_classes)),
        test_ece=float(test[3]), map_test_loss=float(map_test[0]),
        map_test_accuracy=float(map_test[1]))


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


def pseudo_label_info(pseudo: jax.Array, pool_y: jax.Array) -> PseudoLabelInfo:
    """How many pool points were pseudo-labelled, and how many labels were right (known
    in simulation: the oracle's labels)."""
    pseudo, pool_y = np.asarray(pseudo), np.asarray(pool_y)
    used = pseudo >= 0
    return PseudoLabelInfo(int(used.sum()), int((pseudo[used] == pool_y[used]).sum()))


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every float leaf of ``tree`` is finite: one program per tree structure (an
    eager isfinite and all per leaf compiled 2 programs per leaf shape)."""
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)
                              if jnp.issubdtype(leaf.dtype, jnp.inexact)] or [True]))


def check_finite(state: ALState, info: RoundInfo, config: ALConfig) -> None:
    """Stop a run whose training, posterior, predictive or scores became non-finite.

    Raises:
      DivergedError: naming the round, what is not finite and the likely fix. Raised
        before the round is yielded, so nothing of it is written: the checkpoint keeps
        the last good round.
    """
    def fail(what: str, fix: str):
        kept = (f"its out dir keeps rounds 0-{info.round - 1}" if info.round > 0
                else "no round was kept")
        raise DivergedError(f"round {info.round}: {what} is not finite, so the run stopped "
                            f"({kept}); {fix}, in another --out")

    m = info.metrics
    if not math.isfinite(m.train_loss):
        fail(f"the training loss ({m.train_loss})",
             f"lower --lr (now {config.train.learning_rate:g})"
             + (" or use --optimizer adam" if config.train.optimizer == "sgd" else ""))
    if not bool(_all_finite(state.posterior)):
        fail("the posterior", "use a positive prior precision (--prior-precision 1, "
             "val-nll or auto) or a lower --lr")
    if not all(math.isfinite(v) for v in (m.test_loss, m.val_loss, m.test_entropy)):
        fail(f"the predictive's test/validation loss ({m.test_loss}, {m.val_loss})",
             "use a positive prior precision or a lower --lr")
    if not np.isfinite(np.asarray(info.scores, np.float64)).all():
        fail(f"the acquisition score of the queried points ({np.asarray(info.scores)})",
             "use a positive prior precision or a lower --lr")


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
