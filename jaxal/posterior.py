"""Posteriors over the network weights, fitted after MAP training; one registry for all.

Every entry has the signature

    fit(key, model, params, x_pool, y_pool, labelled, config) -> posterior

where ``params`` is θ_MAP and ``labelled`` the boolean mask of the data it was fitted on.
The returned posterior is a pytree that the matching predictives in ``jaxal.predictive``
consume. Today the registry holds the plugin (point-mass) posterior; Laplace
approximations are added as further entries.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxal.model import Classifier


class PointMass(NamedTuple):
    """The plugin "posterior": all mass on θ_MAP."""

    params: Any


def fit_point_mass(key: jax.Array, model: Classifier, params, x_pool, y_pool, labelled,
                   config) -> PointMass:
    del key, model, x_pool, y_pool, labelled, config
    return PointMass(params)


POSTERIORS = {"plugin": fit_point_mass}


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
    diag / iso: θ_MAP + z / √(d + λ).
    """
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


LAPLACE_STRUCTURES = {"full": full_laplace, "diag": diag_laplace, "iso": iso_laplace}
