"""The MAP objective, written once: the Laplace posterior must use exactly the same prior.

With N labelled examples and a Gaussian prior p(θ) = N(0, prior_precision⁻¹ I) on all P
parameters (weights and biases), the MAP estimate minimises the *sum-scaled* objective

    L(θ) = -Σ_{n=1}^N log p(y_n | x_n, θ) - log p(θ)
         = Σ_n CE(f(x_n; θ), y_n) + prior_precision/2 ‖θ‖² - P/2 log(prior_precision / 2π).

The Laplace posterior is N(θ_MAP, (H + prior_precision I)⁻¹) with H the curvature of the
*summed* negative log-likelihood, so ``prior_precision`` means the same number in both.
Stochastic training minimises the minibatch estimate of L(θ)/N,

    mean_b CE(f(x_b; θ), y_b) + prior_precision/(2N) ‖θ‖²,

which has the same minimiser; the effective weight decay prior_precision/N therefore
shrinks as labels arrive, as a fixed prior should.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def log_likelihood(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
                   ) -> jax.Array:
    """Σ_n w_n log softmax(logits_n)[y_n]; ``logits`` [n, c], ``labels`` int [n], ``weights`` [n].

    ``weights`` (0/1) lets padded batches keep a static shape.
    """
    log_probs = jax.nn.log_softmax(logits)
    ll = jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    return ll.sum() if weights is None else (weights * ll).sum()


def squared_norm(params) -> jax.Array:
    """‖θ‖² over every leaf of the parameter pytree."""
    return sum(jnp.vdot(p, p) for p in jax.tree.leaves(params))


def prior_energy(params, prior_precision: float | jax.Array) -> jax.Array:
    """θᵀ Λ θ: λ ‖θ‖² for one prior precision λ (a scalar), or Σ_p λ_p θ_p² for one per
    weight (λ [P] in ``ravel_pytree``'s order, e.g. one per layer broadcast to its
    weights: online marginal-likelihood training, ``jaxal.posteriors.marglik``)."""
    if jnp.ndim(prior_precision) == 0:
        return prior_precision * squared_norm(params)
    flat = ravel_pytree(params)[0]
    return jnp.vdot(flat, prior_precision * flat)


def log_prior(params, prior_precision: float | jax.Array) -> jax.Array:
    """log N(θ; 0, Λ⁻¹) = -½ θᵀ Λ θ + ½ Σ_p log(λ_p / 2π), Λ = diag(λ): ``prior_precision``
    one λ (a scalar) or one per weight [P]."""
    num_params = ravel_pytree(params)[0].size
    if jnp.ndim(prior_precision) == 0:
        log_det = num_params * jnp.log(prior_precision / (2 * jnp.pi))
    else:
        log_det = jnp.log(prior_precision / (2 * jnp.pi)).sum()
    return -0.5 * prior_energy(params, prior_precision) + 0.5 * log_det


def map_objective(params, logits: jax.Array, labels: jax.Array,
                  prior_precision: float | jax.Array, weights: jax.Array | None = None
                  ) -> jax.Array:
    """L(θ) = -log p(y | x, θ) - log p(θ), summed over the given examples."""
    return -log_likelihood(logits, labels, weights) - log_prior(params, prior_precision)


def minibatch_objective(params, logits: jax.Array, labels: jax.Array,
                        prior_precision: float | jax.Array, num_data: jax.Array
                        ) -> jax.Array:
    """Unbiased minibatch estimate of L(θ)/N, up to the constant: the training loss.

    mean_b CE + θᵀ Λ θ / (2N), with N = ``num_data`` the labelled-set size and Λ one prior
    precision or one per weight (``prior_energy``).
    """
    nll = -log_likelihood(logits, labels) / labels.shape[0]
    return nll + 0.5 * prior_energy(params, prior_precision) / num_data
