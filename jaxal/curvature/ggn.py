"""The generalised Gauss-Newton and the Hessian of the summed NLL, for any ``logits_fn``.

For logits f(x_n; θ) ∈ R^C and softmax probabilities p_n, the generalised Gauss-Newton is

    GGN = Σ_n J_nᵀ Λ_n J_n,   J_n = ∂f(x_n; θ)/∂θ  [C, P],   Λ_n = diag(p_n) - p_n p_nᵀ.

Λ_n factorises exactly as Λ_n = A_n A_nᵀ with A_n [C, C-1] (``output_hessian_sqrt``: Λ_n
has rank C-1), so with B_n = A_nᵀ J_n [C-1, P] (C-1 vector-Jacobian products per example,
never P matrix-vector products) the GGN is Σ_n B_nᵀ B_n and its exact diagonal is
Σ_n Σ_k B_n[k]².

Every form here has one signature,

    form(logits_fn, params, x, y, weights, chunk_size) -> dense [P, P] | [P] | scalar

where ``weights`` [n] (0/1, or None for all ones) lets a padded, static-size buffer of
labelled points stand for the labelled set, and ``logits_fn(params, x) -> [n, C]`` is the
model restricted to the chosen parameter subset (all weights, or the last layer applied to
cached features). These are the generic forms, over raveled parameters; the structures
(``jaxal.curvature.STRUCTURES``) call them where no faster form applies, and the prior is
added there, with exactly the ``prior_precision`` of the MAP objective.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxal.chunks import chunk_array
from jaxal.objective import log_likelihood
from jaxal.sharding import split_chunk_rows

LogitsFn = Callable[[object, jax.Array], jax.Array]

# Dense P x P forms refuse above this many bytes (full GGN / Hessian of all CNN weights:
# 130,890² x 4 B = 68.5 GB).
MAX_DENSE_BYTES = 4 * 2**30


class CurvatureTooLargeError(ValueError):
    """A dense P x P curvature would not fit; raised before any work."""


def check_dense_fits(num_params: int, dtype=jnp.float32, max_bytes: int = MAX_DENSE_BYTES
                     ) -> None:
    need = num_params**2 * jnp.dtype(dtype).itemsize
    if need > max_bytes:
        raise CurvatureTooLargeError(
            f"a dense {num_params:,} x {num_params:,} curvature needs {need / 2**30:,.1f} GiB "
            f"(limit {max_bytes / 2**30:.1f} GiB); use structure 'diag', 'iso' or 'kfac', "
            f"or subset 'last-layer'")


def output_hessian_sqrt(probs: jax.Array) -> jax.Array:
    """A_n [..., C, C-1] with A_n A_nᵀ = diag(p) - p pᵀ, for probs [..., C].

    Λ = diag(p) - p pᵀ has rank C-1 (Λ 1 = 0), so C-1 columns suffice: with
    B = diag(√p) - p √pᵀ (B Bᵀ = Λ, B √p = 0) and the Householder reflection H that maps
    e_C to -√p, B H has a zero last column and (B H)(B H)ᵀ = Λ; we keep its first C-1.
    Every GGN form then needs C-1 vector-Jacobian products per example instead of C.
    """
    sqrt_p = jnp.sqrt(probs)
    num_classes = probs.shape[-1]
    eye = jnp.eye(num_classes, dtype=probs.dtype)
    b = jnp.einsum("...c,cd->...cd", sqrt_p, eye) - probs[..., :, None] * sqrt_p[..., None, :]
    v = sqrt_p + eye[-1]                     # vᵀv = 2 + 2√p_C >= 2: no cancellation
    h = eye - 2.0 * v[..., :, None] * v[..., None, :] / (v * v).sum(-1)[..., None, None]
    return jnp.einsum("...cd,...dk->...ck", b, h[..., :, :-1])


def _ggn_factors(logits_fn: LogitsFn, params, x: jax.Array) -> jax.Array:
    """B_n = A_nᵀ J_n for every example of a chunk: [n, C-1, P] over raveled parameters."""
    flat, unravel = ravel_pytree(params)

    def per_example(x_n):
        f = lambda theta: logits_fn(unravel(theta), x_n[None])[0]
        logits, vjp = jax.vjp(f, flat)
        a = output_hessian_sqrt(jax.nn.softmax(logits))
        return jax.vmap(lambda col: vjp(col)[0])(a.T)   # row k: J_nᵀ A_n[:, k]

    return jax.vmap(per_example)(x)


def _sum_over_chunks(fn: Callable, x: jax.Array, weights: jax.Array, chunk_size: int):
    """Σ_chunks fn(x_chunk, w_chunk); padding of the last chunk gets weight 0."""
    xs = chunk_array(x, min(chunk_size, x.shape[0]))
    ws = chunk_array(weights, xs.shape[1])
    # Several devices: each chunk's rows split over them (padding rows weigh 0).
    xs, ws = split_chunk_rows(xs), split_chunk_rows(ws)
    first = jax.eval_shape(fn, xs[0], ws[0])
    total = jnp.zeros(first.shape, first.dtype)
    return jax.lax.scan(lambda t, xw: (t + fn(*xw), None), total, (xs, ws))[0]


def example_weights(x: jax.Array, weights: jax.Array | None) -> jax.Array:
    return jnp.ones(x.shape[0], x.dtype) if weights is None else weights.astype(x.dtype)


def ggn_full(logits_fn: LogitsFn, params, x: jax.Array, y: jax.Array | None = None,
             weights: jax.Array | None = None, chunk_size: int = 256) -> jax.Array:
    """Dense GGN Σ_n w_n J_nᵀ Λ_n J_n [P, P]; labels are not needed (Λ depends on p only)."""
    del y
    check_dense_fits(ravel_pytree(params)[0].size)

    def chunk(x_chunk, w_chunk):
        b = _ggn_factors(logits_fn, params, x_chunk) * jnp.sqrt(w_chunk)[:, None, None]
        return jnp.einsum("nkp,nkq->pq", b, b)

    return _sum_over_chunks(chunk, x, example_weights(x, weights), chunk_size)


def ggn_diagonal(logits_fn: LogitsFn, params, x: jax.Array, y: jax.Array | None = None,
                 weights: jax.Array | None = None, chunk_size: int = 256) -> jax.Array:
    """Exact diagonal of the GGN, Σ_n w_n Σ_k (A_nᵀ J_n)_{kp}² [P], from C VJPs per example."""
    del y

    def chunk(x_chunk, w_chunk):
        b = _ggn_factors(logits_fn, params, x_chunk)
        return jnp.einsum("n,nkp->p", w_chunk, b**2)

    return _sum_over_chunks(chunk, x, example_weights(x, weights), chunk_size)


def ggn_isotropic(logits_fn: LogitsFn, params, x: jax.Array, y: jax.Array | None = None,
                  weights: jax.Array | None = None, chunk_size: int = 256) -> jax.Array:
    """One scalar: the mean of the exact GGN diagonal, trace(GGN) / P."""
    return ggn_diagonal(logits_fn, params, x, y, weights, chunk_size).mean()


def hessian_full(logits_fn: LogitsFn, params, x: jax.Array, y: jax.Array,
                 weights: jax.Array | None = None, chunk_size: int = 256) -> jax.Array:
    """Dense Hessian of -Σ_n w_n log p(y_n | x_n, θ) over raveled θ, with ``jax.hessian``.

    The Hessian of a network is indefinite away from a strict minimum; the structures
    clip its negative eigenvalues to zero before adding the prior (see
    ``jaxal.curvature.dense``), so the precision stays positive definite by construction.
    """
    del chunk_size
    flat, unravel = ravel_pytree(params)
    check_dense_fits(flat.size)
    nll = lambda theta: -log_likelihood(logits_fn(unravel(theta), x), y,
                                        example_weights(x, weights))
    return jax.hessian(nll)(flat)


def hessian_diagonal(logits_fn: LogitsFn, params, x: jax.Array, y: jax.Array,
                     weights: jax.Array | None = None, chunk_size: int = 256) -> jax.Array:
    """Diagonal of the dense Hessian [P] (needs the dense one: small subsets only)."""
    return jnp.diag(hessian_full(logits_fn, params, x, y, weights, chunk_size))


def hessian_isotropic(logits_fn: LogitsFn, params, x: jax.Array, y: jax.Array,
                      weights: jax.Array | None = None, chunk_size: int = 256) -> jax.Array:
    """trace(H) / P."""
    return hessian_diagonal(logits_fn, params, x, y, weights, chunk_size).mean()

