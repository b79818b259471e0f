"""KFAC structure: per layer l, the GGN block ≈ A_l ⊗ G_l, kept as eigendecompositions.

The precision is block-diagonal over layers, block l = A_l ⊗ G_l + λ I, with eigenvalues
e_A,i e_G,j + λ and eigenvectors Q_A[:, i] ⊗ Q_G[:, j] (factor eigenvalues clipped at 0),
so log det, samples and the per-layer logit variance never form a block. A block acts on
the layer's [kernel (as [K, out]); bias] = [K+1, out] in row-major order. All weights only
(the factors come from the layer inputs and output gradients, ``jaxal.curvature.layerwise``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxal.curvature.layerwise import (
    get_layer,
    kfac_factors,
    kfac_layer_variance,
    sampled_factors,
    set_layer,
)
from jaxal.curvature.structure import CurvatureProblem, Structure
from jaxal.curvature.structure import replace_prior_precision as with_prior_precision


class KFACLaplace(NamedTuple):
    """Per layer l: precision block A_l ⊗ G_l + λ I, kept as eigendecompositions.

    ``layers`` maps a layer path (("body", "Conv_0")) to (Q_A, e_A, Q_G, e_G); the precision's
    eigenvalues are e_A,i e_G,j + λ with eigenvectors Q_A[:, i] ⊗ Q_G[:, j].
    """

    mean: jax.Array          # θ_MAP [P], raveled
    params: Any              # θ_MAP as a pytree (where each layer's block lives)
    layers: dict
    prior_precision: jax.Array


def ggn_factors(key: jax.Array, problem: CurvatureProblem) -> dict:
    """Exact Kronecker factors {layer path: (A_l, G_l)} of all weights."""
    del key
    return kfac_factors(problem.model, problem.params, problem.x, problem.weights,
                        problem.layer_chunk_size, None)


def ggn_mc_factors(key: jax.Array, problem: CurvatureProblem) -> dict:
    """Kronecker factors with G_l from one sampled label per example (drawn from ``key``)."""
    return kfac_factors(problem.model, problem.params, problem.x, problem.weights,
                        problem.layer_chunk_size, sampled_factors(key))


FORMS = {("ggn", "all"): ggn_factors, ("ggn-mc", "all"): ggn_mc_factors}


def build(theta, factors: dict, prior_precision) -> KFACLaplace:
    """``theta`` all weights as a pytree, ``factors`` from ``kfac_factors``."""
    layers = {}
    for path, (a, g) in factors.items():
        ea, qa = jnp.linalg.eigh(0.5 * (a + a.T))
        eg, qg = jnp.linalg.eigh(0.5 * (g + g.T))
        layers[path] = (qa, jnp.maximum(ea, 0.0), qg, jnp.maximum(eg, 0.0))
    return KFACLaplace(ravel_pytree(theta)[0], theta, layers, jnp.asarray(prior_precision))


def layer_prior_precision(state: KFACLaplace) -> dict:
    """{layer: λ_l}: the scalar λ, or each layer's own for a per-weight λ [P] (one per
    layer, ``jaxal.posteriors.laplace.layer_groups``; the Kronecker eigenbasis stays exact only
    for a λ that is constant over the layer, so its first weight's value is taken)."""
    lam = state.prior_precision
    if jnp.ndim(lam) == 0:
        return dict.fromkeys(state.layers, lam)
    return {k: lam[_layer_positions(state.params, k)[0]] for k in state.layers}


def precision_eigenvalues(state: KFACLaplace) -> dict:
    """{layer: e_A e_Gᵀ + λ_l [K+1, out]}, the precision's eigenvalues per layer."""
    lam = layer_prior_precision(state)
    return {k: jnp.outer(ea, eg) + lam[k] for k, (_, ea, _, eg) in state.layers.items()}


def effective_parameters(state: KFACLaplace) -> dict:
    """{layer: γ_l = Σ_i (1 − λ_l / s_i)} = P_l − λ_l tr Σ_l, the number of directions of
    layer l the data determine (MacKay); s_i the block's eigenvalues. At the evidence's
    optimum for a per-layer λ, γ_l = λ_l ‖θ_l‖² (the fixed point of MacKay's update)."""
    lam = layer_prior_precision(state)
    return {k: jnp.sum(1.0 - lam[k] / s) for k, s in precision_eigenvalues(state).items()}


def log_det_precision(state: KFACLaplace) -> jax.Array:
    return sum(jnp.log(s).sum() for s in precision_eigenvalues(state).values())


def sample(key: jax.Array, state: KFACLaplace) -> jax.Array:
    """θ_MAP + per layer Q_A ((Q_Aᵀ Z Q_G) / √(e_A e_Gᵀ + λ)) Q_Gᵀ, Z ~ N(0, I), split into
    kernel/bias: the covariance's symmetric square root, the same whichever eigenbases
    eigh returned within repeated eigenvalues (a rank-deficient A_l from few labels)."""
    spectra = precision_eigenvalues(state)
    delta = jax.tree.map(jnp.zeros_like, state.params)
    keys = jax.random.split(key, len(state.layers))
    for key_l, (name, (qa, _, qg, _)) in zip(keys, sorted(state.layers.items()), strict=True):
        z = jax.random.normal(key_l, spectra[name].shape, state.mean.dtype)
        d = qa @ ((qa.T @ z @ qg) / jnp.sqrt(spectra[name])) @ qg.T     # [K+1, out]
        set_layer(delta["params"], name, d)
    return state.mean + ravel_pytree(delta)[0]


def _layer_positions(params, name: tuple[str, ...]) -> np.ndarray:
    """Raveled positions [(K+1) out] of layer ``name``'s [kernel; bias], row-major."""
    leaves, treedef = jax.tree.flatten(params)
    starts = np.cumsum([0] + [np.size(leaf) for leaf in leaves])[:-1]   # ravel_pytree's order
    positions = jax.tree.unflatten(treedef, [
        start + np.arange(np.size(leaf)).reshape(np.shape(leaf))
        for start, leaf in zip(starts, leaves, strict=True)])
    with jax.ensure_compile_time_eval():   # static positions, also while tracing
        return np.asarray(get_layer(positions["params"], name)).ravel()


def covariance(state: KFACLaplace) -> jax.Array:
    """Block-diagonal [P, P]: block l = (Q_A ⊗ Q_G) diag(1 / (e_A e_Gᵀ + λ)) (Q_A ⊗ Q_G)ᵀ,
    placed at the layer's raveled positions."""
    cov = jnp.zeros((state.mean.size, state.mean.size), state.mean.dtype)
    for name, spectrum in precision_eigenvalues(state).items():
        qa, _, qg, _ = state.layers[name]
        q = jnp.kron(qa, qg)
        index = _layer_positions(state.params, name)
        cov = cov.at[np.ix_(index, index)].set((q / spectrum.ravel()) @ q.T)
    return cov


def layer_variance(state: KFACLaplace, params) -> Callable:
    """Per-layer logit variance in each layer's Kronecker eigenbasis."""
    del params   # the state knows its layers
    return kfac_layer_variance(state.layers, layer_prior_precision(state))


def why_not(source: str, subset: str) -> str:
    if source not in ("ggn", "ggn-mc"):
        return "KFAC factorises the GGN; use --curvature ggn (or ggn-mc) with --structure kfac"
    del subset   # the last layer
    return ("KFAC is for all weights; on the last layer (1,290 parameters) use "
            "--structure full, which is exact and cheap")


STRUCTURE = Structure(
    state=KFACLaplace, forms=FORMS, build=build, log_det_precision=log_det_precision,
    sample=sample, covariance=covariance, layer_variance=layer_variance,
    with_prior_precision=with_prior_precision, why_not=why_not)
