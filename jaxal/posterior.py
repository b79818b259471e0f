"""Posteriors over the network weights, fitted after MAP training; one registry for all.

Every entry has the signature

    fit(key, model, params, x, y, weights, config) -> posterior

where ``params`` is θ_MAP, ``x, y`` a static-size buffer of the labelled data it was fitted
on and ``weights`` [n] marks the real (1) and padding (0) rows; ``config`` is the run's
``ALConfig``. The returned posterior is a pytree that the matching predictives in
``jaxal.predictive`` consume: the plugin point mass, or a Laplace approximation
N(θ_MAP, (curvature + prior_precision I)⁻¹) over all weights or the last layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxal.config import VALIDATION_GRID as VALIDATION_GRID  # re-exported
from jaxal.config import LaplaceConfig as LaplaceConfig
from jaxal.curvature import CURVATURES, linear_head_ggn
from jaxal.layerwise import ggn_diagonal_layerwise, kfac_factors, sampled_factors
from jaxal.model import Classifier, apply_head
from jaxal.objective import log_likelihood


class PointMass(NamedTuple):
    """The plugin "posterior": all mass on θ_MAP."""

    params: Any


def fit_point_mass(key: jax.Array, model: Classifier, params, x, y, weights,
                   config) -> PointMass:
    del key, model, x, y, weights, config
    return PointMass(params)


# --- Laplace: N(θ_MAP, (curvature + prior_precision I)⁻¹) over a raveled parameter subset ---
#
# Each stored structure keeps the curvature in a form from which the precision for *any*
# prior precision λ is cheap, so the evidence can be maximised over λ without refitting:
#   full: eigendecomposition H = V diag(e) Vᵀ (e clipped at 0: an indefinite Hessian is
#         made positive semi-definite on purpose, before the prior is added);
#   diag: the diagonal d (clipped at 0);   iso: one scalar s = trace / P.


class FullLaplace(NamedTuple):
    mean: jax.Array          # θ_MAP [P]
    eigenvalues: jax.Array   # e [P], >= 0
    eigenvectors: jax.Array  # V [P, P]
    prior_precision: jax.Array


class DiagLaplace(NamedTuple):
    mean: jax.Array
    curvature: jax.Array     # d [P], >= 0
    prior_precision: jax.Array


class IsoLaplace(NamedTuple):
    mean: jax.Array
    curvature: jax.Array     # s, scalar >= 0
    prior_precision: jax.Array


def full_laplace(mean, curvature, prior_precision) -> FullLaplace:
    curvature = 0.5 * (curvature + curvature.T)
    e, v = jnp.linalg.eigh(curvature)
    return FullLaplace(mean, jnp.maximum(e, 0.0), v, jnp.asarray(prior_precision))


def diag_laplace(mean, curvature, prior_precision) -> DiagLaplace:
    return DiagLaplace(mean, jnp.maximum(curvature, 0.0), jnp.asarray(prior_precision))


def iso_laplace(mean, curvature, prior_precision) -> IsoLaplace:
    return IsoLaplace(mean, jnp.maximum(curvature, 0.0), jnp.asarray(prior_precision))


def _precision_spectrum(post) -> jax.Array:
    """Eigenvalues of the precision curvature + λI, [P] (broadcast for iso)."""
    if isinstance(post, FullLaplace):
        return post.eigenvalues + post.prior_precision
    return jnp.broadcast_to(post.curvature + post.prior_precision, post.mean.shape)


def log_det_precision(post) -> jax.Array:
    """log det(curvature + λ I)."""
    if isinstance(post, KFACLaplace):
        return sum(jnp.log(s).sum() for s in _kfac_spectra(post).values())
    return jnp.log(_precision_spectrum(post)).sum()


def posterior_covariance(post) -> jax.Array:
    """Dense (curvature + λ I)⁻¹ [P, P]; for tests and small subsets."""
    inv = 1.0 / _precision_spectrum(post)
    if isinstance(post, FullLaplace):
        return (post.eigenvectors * inv) @ post.eigenvectors.T
    return jnp.diag(inv)


def sample_laplace(key: jax.Array, post) -> jax.Array:
    """One draw θ ~ N(θ_MAP, (curvature + λ I)⁻¹) [P]; vmap over keys for many.

    full: θ_MAP + V diag((e + λ)^-½) z, the symmetric square root of the covariance;
    diag / iso: θ_MAP + z / √(d + λ);  kfac: per layer, in the Kronecker eigenbasis.
    """
    if isinstance(post, KFACLaplace):
        return _kfac_sample(key, post)
    z = jax.random.normal(key, post.mean.shape, post.mean.dtype)
    scaled = z / jnp.sqrt(_precision_spectrum(post))
    if isinstance(post, FullLaplace):
        return post.mean + post.eigenvectors @ scaled
    return post.mean + scaled


def log_marginal_likelihood(post, log_likelihood_at_map: jax.Array,
                            prior_precision: jax.Array | None = None) -> jax.Array:
    """Laplace evidence log p(D | λ), differentiable in λ.

        log p(D | λ) ≈ log p(D | θ*) + log p(θ* | λ) + P/2 log 2π - ½ log det(H + λ I)
                     = log p(D | θ*) - λ/2 ‖θ*‖² + P/2 log λ - ½ log det(H + λ I),

    with θ* the MAP of the subset and H the stored curvature. ``prior_precision``
    overrides the posterior's λ (to fit it), keeping the curvature.
    """
    lam = post.prior_precision if prior_precision is None else prior_precision
    post = post._replace(prior_precision=lam)
    num_params = post.mean.size
    return (log_likelihood_at_map - 0.5 * lam * jnp.vdot(post.mean, post.mean)
            + 0.5 * num_params * jnp.log(lam) - 0.5 * log_det_precision(post))


def fit_prior_precision(post, log_likelihood_at_map: jax.Array, init: float = 1.0,
                        steps: int = 300, learning_rate: float = 0.1) -> jax.Array:
    """argmax_λ of the Laplace evidence, by Adam on log λ (the curvature stays fixed)."""
    objective = lambda log_lam: -log_marginal_likelihood(post, log_likelihood_at_map,
                                                         jnp.exp(log_lam))
    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        log_lam, opt_state = carry
        grad = jax.grad(objective)(log_lam)
        updates, opt_state = optimizer.update(grad, opt_state)
        return (optax.apply_updates(log_lam, updates), opt_state), None

    log_lam = jnp.log(jnp.asarray(init, post.mean.dtype))
    (log_lam, _), _ = jax.lax.scan(step, (log_lam, optimizer.init(log_lam)), None, steps)
    return jnp.exp(log_lam)


class KFACLaplace(NamedTuple):
    """Per layer l: precision block A_l ⊗ G_l + λ I, kept as eigendecompositions.

    ``layers`` maps a layer path ("body/Conv_0") to (Q_A, e_A, Q_G, e_G); the precision's
    eigenvalues are e_A,i e_G,j + λ with eigenvectors Q_A[:, i] ⊗ Q_G[:, j].
    """

    mean: jax.Array          # θ_MAP [P], raveled
    params: Any              # θ_MAP as a pytree (where each layer's block lives)
    layers: dict
    prior_precision: jax.Array


def kfac_laplace(params, factors: dict, prior_precision) -> KFACLaplace:
    layers = {}
    for path, (a, g) in factors.items():
        ea, qa = jnp.linalg.eigh(0.5 * (a + a.T))
        eg, qg = jnp.linalg.eigh(0.5 * (g + g.T))
        layers["/".join(path)] = (qa, jnp.maximum(ea, 0.0), qg, jnp.maximum(eg, 0.0))
    return KFACLaplace(ravel_pytree(params)[0], params, layers, jnp.asarray(prior_precision))


def _kfac_spectra(post: KFACLaplace):
    return {k: jnp.outer(ea, eg) + post.prior_precision
            for k, (_, ea, _, eg) in post.layers.items()}


def _kfac_sample(key: jax.Array, post: KFACLaplace) -> jax.Array:
    """θ_MAP + per layer Q_A (Z / √(e_A e_Gᵀ + λ)) Q_Gᵀ, Z ~ N(0, I), split into kernel/bias."""
    spectra = _kfac_spectra(post)
    delta = jax.tree.map(jnp.zeros_like, post.params)
    keys = jax.random.split(key, len(post.layers))
    for key_l, (name, (qa, _, qg, _)) in zip(keys, sorted(post.layers.items()), strict=True):
        z = jax.random.normal(key_l, spectra[name].shape, post.mean.dtype)
        d = qa @ (z / jnp.sqrt(spectra[name])) @ qg.T                  # [K+1, out]
        node = delta["params"]
        for part in name.split("/"):
            node = node[part]
        node["kernel"] = d[:-1].reshape(node["kernel"].shape)
        node["bias"] = d[-1]
    return post.mean + ravel_pytree(delta)[0]


LAPLACE_STRUCTURES = {"full": full_laplace, "diag": diag_laplace, "iso": iso_laplace}
SUBSETS = ("last-layer", "all")
PRIOR_FITS = ("val-nll", "evidence", "none")



class LastLayerLaplace(NamedTuple):
    """Laplace over the head only; the features come from θ_MAP, computed once."""

    params: Any              # θ_MAP, all weights
    head: Any                # Full/Diag/IsoLaplace over the raveled head parameters


class WeightsLaplace(NamedTuple):
    """Laplace over all weights."""

    params: Any
    weights: Any             # Full/Diag/IsoLaplace over all raveled parameters


def head_params(params):
    """The last layer's parameters as a pytree ``apply_head`` takes."""
    return {"params": {"head": params["params"]["head"]}}


def subset_problem(model: Classifier, params, x: jax.Array, subset: str):
    """(θ_subset, logits_fn, inputs) so that logits = logits_fn(θ_subset, inputs)."""
    if subset == "last-layer":
        features = model.apply(params, x, method=model.features)
        return head_params(params), apply_head, features
    return params, model.apply, x


def fit_laplace(key: jax.Array, model: Classifier, params, x, y, weights, config):
    """Laplace posterior at θ_MAP with the run's ``config.laplace`` choices.

    The prior precision is the MAP objective's (``config.train.prior_precision``) unless
    ``config.laplace`` overrides it; with ``prior_fit="evidence"`` it is then set to the
    evidence maximiser for the fitted curvature (post hoc, as the MAP is not refitted).
    ``prior_fit="val-nll"`` needs the validation data and the predictive, so the loop
    does it (``jaxal.loop.tune_prior_precision``).
    """
    lc = config.laplace
    theta, logits_fn, inputs = subset_problem(model, params, x, lc.subset)
    lam = config.train.prior_precision if lc.prior_precision is None else lc.prior_precision
    lam = jnp.asarray(lam, x.dtype)
    # Per-layer forms hold [C, chunk, activations]; the generic all-weights forms hold
    # [chunk, C-1, P] per-example factors, hence their small default.
    layer_chunk = lc.chunk_size or 100
    generic_chunk = lc.chunk_size or (256 if lc.subset == "last-layer" else 16)
    # "ggn-mc": one sampled label per example instead of the C factor columns (validated:
    # all weights, diag/iso/kfac, where the per-layer forms below take it).
    factors_fn = sampled_factors(key) if lc.curvature == "ggn-mc" else None
    if lc.structure == "kfac":   # all weights (validated): per-layer Kronecker factors
        post = kfac_laplace(params, kfac_factors(model, params, x, weights, layer_chunk,
                                                 factors_fn), lam)
    else:
        if lc.subset == "all" and lc.curvature != "hessian" and lc.structure in ("diag", "iso"):
            # Same quantity per layer: one (C-1)-cotangent backward pass per chunk, not
            # C-1 vector-Jacobian products per example.
            diagonal = ggn_diagonal_layerwise(model, params, x, weights, layer_chunk,
                                              factors_fn)
            curvature = diagonal if lc.structure == "diag" else diagonal.mean()
        elif lc.subset == "last-layer" and lc.curvature == "ggn":
            # The head is linear in θ: the GGN is Σ_n φ̃_n φ̃_nᵀ ⊗ Λ_n, one einsum.
            full = linear_head_ggn(theta, inputs, weights)
            curvature = {"full": full, "diag": jnp.diag(full),
                         "iso": jnp.trace(full) / full.shape[0]}[lc.structure]
        else:
            curvature = CURVATURES[(lc.curvature, lc.structure)](
                logits_fn, theta, inputs, y, weights, generic_chunk)
        post = LAPLACE_STRUCTURES[lc.structure](ravel_pytree(theta)[0], curvature, lam)
    if lc.prior_fit == "evidence":
        ll = log_likelihood(logits_fn(theta, inputs), y, weights)
        post = post._replace(prior_precision=fit_prior_precision(post, ll, init=lam))
    if lc.subset == "last-layer":
        return LastLayerLaplace(params, post)
    return WeightsLaplace(params, post)


def with_prior_precision(posterior, prior_precision: jax.Array):
    """The same Laplace posterior (curvature kept) with another prior precision λ."""
    if isinstance(posterior, LastLayerLaplace):
        return posterior._replace(head=posterior.head._replace(prior_precision=prior_precision))
    return posterior._replace(weights=posterior.weights._replace(prior_precision=prior_precision))


def prior_precision_of(posterior) -> jax.Array | None:
    """The posterior's prior precision (None for the plugin)."""
    inner = getattr(posterior, "head", None) or getattr(posterior, "weights", None)
    return None if inner is None else inner.prior_precision


POSTERIORS = {"plugin": fit_point_mass, "laplace": fit_laplace}
