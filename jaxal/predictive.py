"""Predictive distributions p(y | x, D) for a fitted posterior; one registry for all.

Every entry is a ``Predictive`` record whose ``predict(key, model, state, x, posterior)
-> PredictiveOutput`` (``state`` the fitted posterior, ``posterior`` its family's record
with the run's options bound, ``jaxal.posteriors.bind``) works on one chunk of inputs;
``jaxal.acquisition.map_chunks`` bounds memory over a pool. The key is shared by all
chunks, so sampling predictives use the same posterior samples for every pool point
(BALD-type scores need that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxal.model import Classifier
from jaxal.posteriors import Posterior


class PredictiveOutput(NamedTuple):
    """What acquisition needs from a predictive.

    probs: [n, c] predictive mean probabilities p(y | x, D).
    sample_probs: [s, n, c] per-posterior-sample probabilities, or None for predictives
      without samples (plugin, closed-form).
    """

    probs: jax.Array
    sample_probs: jax.Array | None = None


def plugin_predictive(key: jax.Array, model: Classifier, state, x: jax.Array,
                      posterior: Posterior | None = None) -> PredictiveOutput:
    """p(y | x, D) ≈ softmax(f(x; θ_MAP)); for a Laplace posterior, its MAP plugin."""
    del key, posterior
    return PredictiveOutput(jax.nn.softmax(model.apply(state.params, x)))


def mc_predictive(key: jax.Array, model: Classifier, state, x: jax.Array,
                  posterior: Posterior) -> PredictiveOutput:
    """p(y | x, D) ≈ 1/S Σ_s softmax(f(x; θ_s)), θ_s ~ the posterior (its ``sample_probs``).

    The same key gives the same S samples for every chunk of a pool.
    """
    sample_probs = posterior.sample_probs(key, model, state, x)
    return PredictiveOutput(sample_probs.mean(0), sample_probs)


def probit_predictive(key: jax.Array, model: Classifier, state, x: jax.Array,
                      posterior: Posterior) -> PredictiveOutput:
    """Linearised (GLM) predictive with the probit approximation, no sampling.

        p(y | x, D) ≈ softmax(f(x; θ_MAP) / √(1 + π/8 diag(J Σ Jᵀ)))

    with the logits' mean and variance from the posterior (its ``logit_variance``).
    """
    del key
    logits, var = posterior.logit_variance(model, state, x)
    return PredictiveOutput(jax.nn.softmax(logits / jnp.sqrt(1.0 + jnp.pi / 8.0 * var)))


def glm_predictive(key: jax.Array, model: Classifier, state, x: jax.Array,
                   posterior: Posterior) -> PredictiveOutput:
    """p(y | x, D) ≈ 1/S Σ_s softmax(f(x; θ*) + J(x)(θ_s - θ*)), the linearised (GLM)
    network's Monte Carlo predictive (its ``glm_sample_probs``); same samples per chunk."""
    sample_probs = posterior.glm_sample_probs(key, model, state, x)
    return PredictiveOutput(sample_probs.mean(0), sample_probs)


def glm_logits_predictive(key: jax.Array, model: Classifier, state, x: jax.Array,
                          posterior: Posterior) -> PredictiveOutput:
    """The linearised (GLM) predictive sampled per point in logit space:

        f_s(x) = f(x; θ*) + L(x) ε_s,   L Lᵀ = J(x) Σ J(x)ᵀ [C, C],   ε_s ~ N(0, I_C),

    S = ``posterior.num_samples()``, from the posterior's ``logit_covariance`` (the per-layer
    Jacobian terms the probit reads). It costs one C-cotangent backward pass per chunk
    instead of ``glm``'s S Jacobian-vector products, but each point's samples are drawn
    alone: right for per-point scores (BALD, entropy, ...), not for BatchBALD's joint
    entropies over a batch (``joint_samples=False``; use ``glm``).
    """
    logits, cov = posterior.logit_covariance(model, state, x)
    # A symmetric square root by eigendecomposition: J Σ Jᵀ is PSD but may be singular
    # to rounding (Cholesky would fail there).
    w, v = jnp.linalg.eigh(cov)                                       # [n, C], [n, C, C]
    root = v * jnp.sqrt(jnp.clip(w, 0.0))[:, None, :]
    eps = jax.random.normal(key, (posterior.num_samples(), logits.shape[-1]), logits.dtype)
    sample_logits = logits + jnp.einsum("ncd,sd->snc", root, eps)
    sample_probs = jax.nn.softmax(sample_logits)
    return PredictiveOutput(sample_probs.mean(0), sample_probs)


class Predictive(NamedTuple):
    """A predictive: its function and what it declares.

    ``predict(key, model, state, x, posterior) -> PredictiveOutput`` sees the
    posterior only through the functions of its ``jaxal.posteriors.Posterior`` record named
    in ``needs``, options bound (and ``state.params``, θ_MAP, which every posterior state
    has), so it works with every posterior that offers them.
    """

    predict: Callable
    gives_samples: bool = False     # PredictiveOutput.sample_probs [s, n, c] is set
    # Sample s is one model for every point (BatchBALD's joint entropies need that); False:
    # each point's samples are drawn from its own marginal.
    joint_samples: bool = True
    needs: tuple[str, ...] = ()     # Posterior record fields it calls


def works_with(predictive: Predictive, posterior: Posterior) -> bool:
    """Whether the posterior offers every function the predictive needs."""
    return all(getattr(posterior, name) is not None for name in predictive.needs)


PREDICTIVES: dict[str, Predictive] = {
    "plugin": Predictive(plugin_predictive),
    "mc": Predictive(mc_predictive, gives_samples=True, needs=("sample_probs",)),
    "probit": Predictive(probit_predictive, needs=("logit_variance",)),
    "glm": Predictive(glm_predictive, gives_samples=True, needs=("glm_sample_probs",)),
    "glm-logits": Predictive(glm_logits_predictive, gives_samples=True, joint_samples=False,
                             needs=("logit_covariance",)),
}
