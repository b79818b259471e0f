"""Posteriors over the network weights, fitted after MAP training: one module per family.

    plugin       a point mass at θ_MAP
    laplace      N(θ_MAP, (curvature + Λ)⁻¹) over all weights or the last layer, with its
                 evidence (``evidence``) and online marginal-likelihood training (``marglik``)
    mc_dropout   the dropout network's masks as samples
    ensemble     M independently trained networks

Each family is a ``Posterior`` record (its fit and the capabilities its fitted state offers
the predictives), registered with its options record in ``jaxal.components.POSTERIORS``
(re-exported here as ``POSTERIORS``): adding one is its module plus that entry.
Importing this package imports none of the families (nor JAX).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from jaxal.components import POSTERIORS as POSTERIORS  # re-exported: the table


class Posterior(NamedTuple):
    """A posterior family: its fit, and what its fitted state offers the predictives.

    A fitted state is a pytree with θ_MAP as ``state.params``. A capability the family
    lacks is None, and the predictives that need it (``jaxal.predictive.Predictive.needs``)
    are refused with it before any work. The functions marked "options" take the
    family's options record (``jaxal.components``) as their last argument; ``bind`` fixes
    it once, when the learner is built. Adding a posterior is one module with its record
    (fit and whichever capabilities it has) plus one entry in
    ``jaxal.components.POSTERIORS`` with its options record.
    """

    # options: (key, model, params, x, y, weights, prior_precision) -> state
    fit: Callable
    sample_probs: Callable | None = None    # options: (key, model, state, x) -> [s, n, c]
    # The same for the linearised network f(x; θ*) + J(x)(θ - θ*) (the GLM predictive).
    glm_sample_probs: Callable | None = None
    logit_variance: Callable | None = None  # options: (model, state, x) -> (f, var) [n, c]
    # options: (model, state, x) -> (f [n, c], J Σ Jᵀ [n, c, c]): the GLM logits per point.
    logit_covariance: Callable | None = None
    prior_precision: Callable = lambda state: None          # state -> λ (None: no prior)
    with_prior_precision: Callable | None = None             # (state, λ) -> state
    check: Callable = lambda options, config: options.check(config)   # raises ConfigError
    # (model, options, input_shape) -> None, raises ConfigError; before training.
    check_model: Callable = lambda model, options, input_shape: None
    default_predictive: Callable = lambda options, needs_samples: "plugin"
    # How the loop trains θ_MAP for this posterior: (trainer, init_one, options, *,
    # model, capacity) -> (trainer, init_one), a transformed ``jaxal.train.Trainer`` and
    # initialiser (a deep ensemble's stacks M networks: ``jaxal.posteriors.ensemble.stacked``;
    # online marginal likelihood learns λ with θ: ``jaxal.posteriors.marglik``); None: as it
    # is. What the trainer's ``result`` returns is the ``params`` the fit receives.
    training: Callable | None = None
    # The prior-precision grid whose validation NLL picks λ after each fit (the loop's
    # ``tune_prior_precision``, with ``with_prior_precision``); None: no such fit.
    validation_grid: Callable = lambda options: None
    # The most pool points a chunk may hold with this predictive (None: the run's).
    chunk_size: Callable = lambda options, predictive: None
    # options: () -> S, the posterior samples a sampling predictive draws (glm-logits).
    num_samples: Callable | None = None
    # options: (model, state, x) -> a tree of arrays keyed by name, what ``--diagnose``
    # records each round (Laplace: ``laplace_diagnose``); None: nothing to diagnose.
    diagnose: Callable | None = None


# The record functions that take the options record last.
_WITH_OPTIONS = ("fit", "sample_probs", "glm_sample_probs", "logit_variance",
                 "logit_covariance", "num_samples", "diagnose")


def bind(record: Posterior, options) -> Posterior:
    """``record`` with ``options`` fixed in each function that takes them."""
    return record._replace(**{name: partial(getattr(record, name), options=options)
                              for name in _WITH_OPTIONS if getattr(record, name) is not None})
