"""Predictive distributions p(y | x, D) for a fitted posterior; one registry for all.

Every entry has the signature ``predict(key, model, posterior, x, config) ->
PredictiveOutput`` (``config`` the run's ``ALConfig``) and works on one chunk of inputs;
``jaxal.acquisition.map_chunks`` bounds memory over a pool. The key is shared by all
chunks, so sampling predictives use the same posterior samples for every pool point
(BALD-type scores need that).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxal.model import Classifier, apply_head
from jaxal.posterior import (
    LastLayerLaplace,
    head_params,
    posterior_covariance,
    sample_laplace,
)


class PredictiveOutput(NamedTuple):
    """What acquisition needs from a predictive.

    probs: [n, c] predictive mean probabilities p(y | x, D).
    sample_probs: [s, n, c] per-posterior-sample probabilities, or None for predictives
      without samples (plugin, closed-form).
    """

    probs: jax.Array
    sample_probs: jax.Array | None = None


def plugin_predictive(key: jax.Array, model: Classifier, posterior, x: jax.Array,
                      config=None) -> PredictiveOutput:
    """p(y | x, D) ≈ softmax(f(x; θ_MAP)); for a Laplace posterior, its MAP plugin."""
    del key, config
    return PredictiveOutput(jax.nn.softmax(model.apply(posterior.params, x)))


def posterior_samples(key: jax.Array, posterior, num_samples: int) -> jax.Array:
    """[S, P_subset] draws from a Laplace posterior (vmapped over a key array)."""
    inner = posterior.head if isinstance(posterior, LastLayerLaplace) else posterior.weights
    keys = jax.random.split(key, num_samples)
    return jax.vmap(sample_laplace, in_axes=(0, None))(keys, inner)


def mc_predictive(key: jax.Array, model: Classifier, posterior, x: jax.Array,
                  config) -> PredictiveOutput:
    """p(y | x, D) ≈ 1/S Σ_s softmax(f(x; θ_s)), θ_s ~ N(θ_MAP, Σ), vmapped over samples.

    Last layer: the features are computed once from θ_MAP and only the head is sampled.
    The same key gives the same S samples for every chunk of a pool.
    """
    samples = posterior_samples(key, posterior, config.laplace.samples)
    if isinstance(posterior, LastLayerLaplace):
        head = head_params(posterior.params)
        unravel = ravel_pytree(head)[1]
        features = model.apply(posterior.params, x, method=model.features)
        logits = jax.vmap(lambda t: apply_head(unravel(t), features))(samples)
    else:
        unravel = ravel_pytree(posterior.params)[1]
        logits = jax.vmap(lambda t: model.apply(unravel(t), x))(samples)
    sample_probs = jax.nn.softmax(logits)
    return PredictiveOutput(sample_probs.mean(0), sample_probs)


def last_layer_logit_variance(posterior: LastLayerLaplace, features: jax.Array
                              ) -> jax.Array:
    """diag(J_n Σ J_nᵀ) [n, C] for the linear head, J_n = ∂f_n/∂θ_head.

    Logit c depends only on kernel[:, c] and bias[c], so with φ̃_n = [φ_n, 1] its variance
    is φ̃_nᵀ Σ_c φ̃_n, Σ_c the (d+1) x (d+1) covariance block of those parameters.
    """
    head = head_params(posterior.params)
    flat, unravel = ravel_pytree(head)
    position = unravel(jnp.arange(flat.size, dtype=jnp.float32))["params"]["head"]
    index = jnp.concatenate([position["kernel"], position["bias"][None]]).astype(jnp.int32)
    cov = posterior_covariance(posterior.head)                 # [P, P], P = (d+1) C
    blocks = cov[index.T[:, :, None], index.T[:, None, :]]      # [C, d+1, d+1]
    phi = jnp.concatenate([features, jnp.ones_like(features[:, :1])], axis=1)
    return jnp.einsum("ni,cij,nj->nc", phi, blocks, phi)


def probit_predictive(key: jax.Array, model: Classifier, posterior, x: jax.Array,
                      config) -> PredictiveOutput:
    """Linearised (GLM) predictive with the probit approximation, no sampling.

        p(y | x, D) ≈ softmax(f(x; θ_MAP) / √(1 + π/8 diag(J Σ Jᵀ)))

    Implemented for the last-layer posterior (the GLM is then exact in θ_head).
    """
    del key, config
    features = model.apply(posterior.params, x, method=model.features)
    logits = apply_head(head_params(posterior.params), features)
    var = last_layer_logit_variance(posterior, features)
    return PredictiveOutput(jax.nn.softmax(logits / jnp.sqrt(1.0 + jnp.pi / 8.0 * var)))


PREDICTIVES = {"plugin": plugin_predictive, "mc": mc_predictive, "probit": probit_predictive}

# Which predictives each posterior supports, so bad combinations fail before training.
PREDICTIVES_FOR_POSTERIOR = {"plugin": ("plugin",), "laplace": ("mc", "probit", "plugin")}
