"""Diagonal structure: the curvature's diagonal d [P], clipped at 0.

The precision d + λ is diagonal, so every quantity is elementwise: log det = Σ log(d + λ),
samples θ_MAP + z / √(d + λ), and the logit variance is a sum of per-layer terms
(``jaxal.curvature.layerwise``). The functions broadcast the stored curvature to [P], so
``jaxal.curvature.isotropic`` (one scalar) uses them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxal.curvature.ggn import hessian_diagonal
from jaxal.curvature.last_layer import linear_head_ggn
from jaxal.curvature.layerwise import (
    diagonal_layer_variance,
    ggn_diagonal_layerwise,
    sampled_factors,
)
from jaxal.curvature.structure import (
    SAMPLED_GGN_FIX,
    CurvatureProblem,
    Structure,
    generic_form,
)
from jaxal.curvature.structure import replace_prior_precision as with_prior_precision


class DiagLaplace(NamedTuple):
    mean: jax.Array
    curvature: jax.Array     # d [P], >= 0
    prior_precision: jax.Array


def ggn_last_layer(key: jax.Array, problem: CurvatureProblem) -> jax.Array:
    """The diagonal of the head's exact GGN (``linear_head_ggn``)."""
    del key
    return jnp.diag(linear_head_ggn(problem.theta, problem.inputs, problem.weights))


def ggn_layerwise(key: jax.Array, problem: CurvatureProblem) -> jax.Array:
    """The exact GGN diagonal of all weights, per layer: one (C-1)-cotangent backward
    pass per chunk, not C-1 vector-Jacobian products per example."""
    del key
    return ggn_diagonal_layerwise(problem.model, problem.params, problem.x, problem.weights,
                                  problem.layer_chunk_size, None)


def ggn_mc_layerwise(key: jax.Array, problem: CurvatureProblem) -> jax.Array:
    """The sampled GGN diagonal of all weights: one label per example drawn from ``key``."""
    return ggn_diagonal_layerwise(problem.model, problem.params, problem.x, problem.weights,
                                  problem.layer_chunk_size, sampled_factors(key))


FORMS = {
    ("ggn", "last-layer"): ggn_last_layer,
    ("hessian", "last-layer"): generic_form(hessian_diagonal),
    ("ggn", "all"): ggn_layerwise,
    ("ggn-mc", "all"): ggn_mc_layerwise,
}


def build(theta, curvature: jax.Array, prior_precision) -> DiagLaplace:
    return DiagLaplace(ravel_pytree(theta)[0], jnp.maximum(curvature, 0.0),
                       jnp.asarray(prior_precision))


def _precision(state) -> jax.Array:
    """d + λ [P] (the curvature broadcast: a scalar for the isotropic structure)."""
    return jnp.broadcast_to(state.curvature + state.prior_precision, state.mean.shape)


def log_det_precision(state) -> jax.Array:
    return jnp.log(_precision(state)).sum()


def covariance(state) -> jax.Array:
    return jnp.diag(1.0 / _precision(state))


def sample(key: jax.Array, state) -> jax.Array:
    """θ_MAP + z / √(d + λ), z ~ N(0, I)."""
    z = jax.random.normal(key, state.mean.shape, state.mean.dtype)
    return state.mean + z / jnp.sqrt(_precision(state))


def layer_variance(state, params) -> Callable:
    """Per-layer logit variance Σ_ij J_ij² σ²_ij, σ² = 1 / (d + λ) as a params-shaped tree."""
    variance = 1.0 / (jnp.broadcast_to(state.curvature, state.mean.shape)
                      + state.prior_precision)
    return diagonal_layer_variance(ravel_pytree(params)[1](variance))


def why_not(source: str, subset: str) -> str:
    del subset   # refused: the Hessian on all weights, the sampled GGN on the last layer
    if source == "hessian":
        return ("the Hessian diag/iso forms need the dense Hessian, which does not fit for "
                "all weights; use --curvature ggn or --subset last-layer")
    return SAMPLED_GGN_FIX


STRUCTURE = Structure(
    state=DiagLaplace, forms=FORMS, build=build, log_det_precision=log_det_precision,
    sample=sample, covariance=covariance, layer_variance=layer_variance,
    with_prior_precision=with_prior_precision, why_not=why_not)
