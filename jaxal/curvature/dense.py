"""Full structure: the dense P x P curvature, kept as its eigendecomposition.

H = V diag(e) Vᵀ with e clipped at 0 (an indefinite Hessian is made positive
semi-definite on purpose, before the prior is added), so the precision H + λ I has
eigenvalues e + λ for *any* prior precision λ: the evidence can be maximised over λ
without refitting. Exact, and P² numbers: the last layer, or all weights of small models.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxal.curvature.ggn import check_dense_fits, ggn_full, hessian_full
from jaxal.curvature.last_layer import linear_head_ggn
from jaxal.curvature.structure import (
    SAMPLED_GGN_FIX,
    CurvatureProblem,
    Structure,
    generic_form,
)
from jaxal.curvature.structure import replace_prior_precision as with_prior_precision


class FullLaplace(NamedTuple):
    mean: jax.Array          # θ_MAP [P]
    eigenvalues: jax.Array   # e [P], >= 0
    eigenvectors: jax.Array  # V [P, P]
    prior_precision: jax.Array


def ggn_last_layer(key: jax.Array, problem: CurvatureProblem) -> jax.Array:
    """The head is linear in θ: its GGN is Σ_n φ̃_n φ̃_nᵀ ⊗ Λ_n, one einsum."""
    del key
    return linear_head_ggn(problem.theta, problem.inputs, problem.weights)


FORMS = {
    ("ggn", "last-layer"): ggn_last_layer,
    ("hessian", "last-layer"): generic_form(hessian_full),
    ("ggn", "all"): generic_form(ggn_full),
    ("hessian", "all"): generic_form(hessian_full),
}


def build(theta, curvature: jax.Array, prior_precision) -> FullLaplace:
    curvature = 0.5 * (curvature + curvature.T)
    e, v = jnp.linalg.eigh(curvature)
    return FullLaplace(ravel_pytree(theta)[0], jnp.maximum(e, 0.0), v,
                       jnp.asarray(prior_precision))


# A scalar λ keeps the eigenbasis of H: the precision's eigenvalues are e + λ. A per-weight
# λ [P] (one per layer) does not: the precision V diag(e) Vᵀ + diag(λ) is then factorised by
# Cholesky, O(P³) per evaluation (the last layer, or small models).


def _cholesky(state: FullLaplace) -> jax.Array:
    """L with L Lᵀ = V diag(e) Vᵀ + diag(λ), for a per-weight λ [P]."""
    precision = (state.eigenvectors * state.eigenvalues) @ state.eigenvectors.T
    return jnp.linalg.cholesky(precision + jnp.diag(state.prior_precision))


def log_det_precision(state: FullLaplace) -> jax.Array:
    """log det(H + Λ): Σ_i log(e_i + λ) for a scalar λ, else 2 Σ log diag(L)."""
    if jnp.ndim(state.prior_precision) == 0:
        return jnp.log(state.eigenvalues + state.prior_precision).sum()
    return 2.0 * jnp.log(jnp.diagonal(_cholesky(state))).sum()


def covariance(state: FullLaplace) -> jax.Array:
    """(H + Λ)⁻¹ [P, P]: V diag(1 / (e + λ)) Vᵀ for a scalar λ, else by Cholesky."""
    if jnp.ndim(state.prior_precision) == 0:
        inv = 1.0 / (state.eigenvalues + state.prior_precision)
        return (state.eigenvectors * inv) @ state.eigenvectors.T
    return jax.scipy.linalg.cho_solve((_cholesky(state), True),
                                      jnp.eye(state.mean.size, dtype=state.mean.dtype))


def sample(key: jax.Array, state: FullLaplace) -> jax.Array:
    """θ_MAP + V diag((e + λ)^-½) Vᵀ z, z ~ N(0, I) (the covariance's symmetric square
    root, which does not depend on which eigenbasis eigh returned: within repeated
    eigenvalues, such as the GGN's null space, batched and unbatched eigh choose different
    ones); for a per-weight λ, θ_MAP + L⁻ᵀ z (covariance L⁻ᵀ L⁻¹)."""
    z = jax.random.normal(key, state.mean.shape, state.mean.dtype)
    if jnp.ndim(state.prior_precision) == 0:
        v = state.eigenvectors
        scaled = (v.T @ z) / jnp.sqrt(state.eigenvalues + state.prior_precision)
        return state.mean + v @ scaled
    return state.mean + jax.scipy.linalg.solve_triangular(_cholesky(state), z, trans="T",
                                                          lower=True)


# Σ couples the layers: no per-layer logit variance (the all-weights probit needs one).
layer_variance = None


def why_not(source: str, subset: str) -> str:
    del source, subset   # every source but the sampled GGN, on both subsets
    return SAMPLED_GGN_FIX


STRUCTURE = Structure(
    state=FullLaplace, forms=FORMS, build=build, log_det_precision=log_det_precision,
    sample=sample, covariance=covariance, layer_variance=layer_variance,
    with_prior_precision=with_prior_precision, check_size=check_dense_fits,
    why_not=why_not)
