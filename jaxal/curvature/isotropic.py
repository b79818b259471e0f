"""Isotropic structure: one scalar s = trace(curvature) / P, clipped at 0.

The precision (s + λ) I; its log det, covariance, samples and per-layer logit variance are
the diagonal structure's with d = s broadcast to [P] (``jaxal.curvature.diagonal``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxal.curvature.diagonal import (
    covariance,
    ggn_layerwise,
    ggn_mc_layerwise,
    layer_variance,
    log_det_precision,
    sample,
    why_not,
    with_prior_precision,
)
from jaxal.curvature.ggn import hessian_isotropic
from jaxal.curvature.last_layer import linear_head_ggn
from jaxal.curvature.structure import CurvatureProblem, Structure, generic_form

__all__ = ["FORMS", "STRUCTURE", "IsoLaplace", "build", "covariance", "layer_variance",
           "log_det_precision", "sample", "why_not", "with_prior_precision"]


class IsoLaplace(NamedTuple):
    mean: jax.Array
    curvature: jax.Array     # s, scalar >= 0
    prior_precision: jax.Array


def ggn_last_layer(key: jax.Array, problem: CurvatureProblem) -> jax.Array:
    """trace / P of the head's exact GGN (``linear_head_ggn``)."""
    del key
    full = linear_head_ggn(problem.theta, problem.inputs, problem.weights)
    return jnp.trace(full) / full.shape[0]


FORMS = {
    ("ggn", "last-layer"): ggn_last_layer,
    ("hessian", "last-layer"): generic_form(hessian_isotropic),
    ("ggn", "all"): lambda key, problem: ggn_layerwise(key, problem).mean(),
    ("ggn-mc", "all"): lambda key, problem: ggn_mc_layerwise(key, problem).mean(),
}


def build(theta, curvature: jax.Array, prior_precision) -> IsoLaplace:
    return IsoLaplace(ravel_pytree(theta)[0], jnp.maximum(curvature, 0.0),
                      jnp.asarray(prior_precision))


STRUCTURE = Structure(
    state=IsoLaplace, forms=FORMS, build=build, log_det_precision=log_det_precision,
    sample=sample, covariance=covariance, layer_variance=layer_variance,
    with_prior_precision=with_prior_precision, why_not=why_not)
