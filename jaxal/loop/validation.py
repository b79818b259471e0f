"""A run's configuration checked before any work, in one pass: what the registries' records
declare (``Posterior.check``, ``Selector.check``, which predictive works with which
posterior and acquisition) and the schedule against the data (``validate_data``). Each
message names the fix.
"""

from __future__ import annotations

import math

import numpy as np

from jaxal.acquisition import ACQUISITIONS
from jaxal.components import POSTERIORS
from jaxal.config import ALConfig
from jaxal.errors import ConfigError
from jaxal.predictive import PREDICTIVES, works_with
from jaxal.selection import (
    PSEUDO_LABEL_CRITERIA,
    SELECTORS,
    batch_selectors,
    strategies,
)
from jaxal.train import (
    check_train_config,
)


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


def label_budget(config: ALConfig, num_classes: int) -> int:
    """Labels at the end of the run: the initial set plus every query."""
    return config.init_per_class * num_classes + config.rounds * config.query_size
