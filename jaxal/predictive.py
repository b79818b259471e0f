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

from jaxal.layerwise import (
    diagonal_layer_variance,
    kfac_layer_variance,
    logit_variance_layerwise,
)
from jaxal.model import Classifier, apply_head
from jaxal.posterior import (
    KFACLaplace,
    LastLayerLaplace,
    WeightsLaplace,
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
    """p(y | x, D) ≈ 1/S Σ_s softmax(f(x; θ_s)), θ_s ~ N(θ_MAP, Σ).

    Samples are drawn vmapped over a key array. Last layer: the features are computed once
    from θ_MAP and only the head is sampled (vmapped). All weights: one forward pass per
    sample (``lax.map``), so memory is one chunk's activations whatever S is.
    The same key gives the same S samples for every chunk of a pool.
    """
    samples = posterior_samples(key, posterior, config.laplace.samples)
    if isinstance(posterior, LastLayerLaplace):
        head = head_params(posterior.params)
        unravel = ravel_pytree(head)[1]
        features = model.apply(posterior.params, x, method=model.features)
        logits = jax.vmap(lambda t: apply_head(unravel(t), features))(samples)
        sample_probs = jax.nn.softmax(logits)
    else:
        # One plain forward pass of the chunk per sample, in sequence: vmapping over the
        # weights turns every convolution into a grouped one, ~9x slower on XLA:CPU.
        unravel = ravel_pytree(posterior.params)[1]
        sample_probs = jax.lax.map(lambda t: jax.nn.softmax(model.apply(unravel(t), x)),
                                   samples)
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


def weights_logit_variance(model: Classifier, posterior: WeightsLaplace, x: jax.Array
                           ) -> jax.Array:
    """diag(J_n Σ J_nᵀ) [n, C] for an all-weights diag, iso or KFAC posterior.

    Σ is block-diagonal over layers for all three, so the variance is a sum of per-layer
    terms from the layer inputs and the logit Jacobian's output gradients
    (``jaxal.layerwise.logit_variance_layerwise``): diag/iso weight J² by σ²; KFAC rotates
    both sides into the Kronecker eigenbasis and weights by 1 / (e_A e_Gᵀ + λ).
    """
    inner = posterior.weights
    if isinstance(inner, KFACLaplace):
        layer_variance = kfac_layer_variance(inner.layers, inner.prior_precision)
    else:
        variance = 1.0 / (jnp.broadcast_to(inner.curvature, inner.mean.shape)
                          + inner.prior_precision)
        variance_tree = ravel_pytree(posterior.params)[1](variance)
        layer_variance = diagonal_layer_variance(variance_tree)
    return logit_variance_layerwise(model, posterior.params, x, layer_variance)


def probit_predictive(key: jax.Array, model: Classifier, posterior, x: jax.Array,
                      config) -> PredictiveOutput:
    """Linearised (GLM) predictive with the probit approximation, no sampling.

        p(y | x, D) ≈ softmax(f(x; θ_MAP) / √(1 + π/8 diag(J Σ Jᵀ)))

    For the last-layer posterior (the GLM is then exact in θ_head) and for all-weights
    diag, iso and KFAC posteriors.
    """
    del key, config
    if isinstance(posterior, LastLayerLaplace):
        features = model.apply(posterior.params, x, method=model.features)
        logits = apply_head(head_params(posterior.params), features)
        var = last_layer_logit_variance(posterior, features)
    else:
        logits = model.apply(posterior.params, x)
        var = weights_logit_variance(model, posterior, x)
    return PredictiveOutput(jax.nn.softmax(logits / jnp.sqrt(1.0 + jnp.pi / 8.0 * var)))


PREDICTIVES = {"plugin": plugin_predictive, "mc": mc_predictive, "probit": probit_predictive}

# Which predictives each posterior supports, so bad combinations fail before training.
PREDICTIVES_FOR_POSTERIOR = {"plugin": ("plugin",), "laplace": ("mc", "probit", "plugin")}
