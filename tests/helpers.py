"""Helpers the tests share (``from helpers import ...``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

# jax._src.dispatch.BACKEND_COMPILE_EVENT: recorded once per XLA compilation, never for a
# call served from the jit cache.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# jax._src.compiler: recorded instead when the program is loaded from the persistent
# compilation cache (the suite keeps one, conftest.py): still a program built anew.
CACHE_RETRIEVAL_EVENT = "/jax/compilation_cache/cache_retrieval_time_sec"


class Compilations:
    """How many XLA compilations a ``count_compilations`` block has run so far."""

    def __init__(self):
        self.count = 0


@contextlib.contextmanager
def count_compilations() -> Iterator[Compilations]:
    """Count the XLA backend compilations run inside the block, a program loaded from the
    persistent compilation cache counting as one (it was lowered anew all the same).

    ``with count_compilations() as compiled: ...`` then ``compiled.count``. A "does not
    recompile" test should also show, with a fresh function, that it sees one.
    """
    compiled = Compilations()

    def listen(event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event in (BACKEND_COMPILE_EVENT, CACHE_RETRIEVAL_EVENT):
            compiled.count += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def dense_ggn(logits_fn, params, x):
    """Σ_n J_nᵀ (diag p_n - p_n p_nᵀ) J_n from dense per-example Jacobians."""
    flat, unravel = ravel_pytree(params)
    f = lambda theta, x_n: logits_fn(unravel(theta), x_n[None])[0]
    jacobian = jax.jit(jax.jacrev(f))
    probs = jax.jit(lambda theta, x_n: jax.nn.softmax(f(theta, x_n)))
    total = np.zeros((flat.size, flat.size))
    for x_n in x:
        jac = np.asarray(jacobian(flat, x_n), np.float64)
        p = np.asarray(probs(flat, x_n), np.float64)
        total += jac.T @ (np.diag(p) - np.outer(p, p)) @ jac
    return total


def layer_index(params, path: tuple[str, ...]) -> np.ndarray:
    """Raveled positions of one layer's [kernel; bias] block, row-major [K+1, out]."""
    flat, unravel = ravel_pytree(params)
    node = unravel(jnp.arange(flat.size, dtype=flat.dtype))["params"]
    for part in path:
        node = node[part]
    kernel = np.asarray(node["kernel"]).reshape(-1, node["bias"].size)
    return np.concatenate([kernel, np.asarray(node["bias"])[None]]).astype(int).ravel()


def bound(config):
    """The run's posterior record with its options bound (``jaxal.posteriors.bind``), as
    the predictives take it."""
    from jaxal.components import POSTERIORS
    from jaxal.posteriors import bind

    return bind(POSTERIORS[config.posterior], config.options("posterior"))


def fit_posterior(key, model, params, x, y, weights, config):
    """The posterior of ``config`` (its family and options) fitted at ``params``, with
    the MAP objective's prior precision, as the loop fits it (before any val-nll tuning)."""
    return bound(config).fit(key, model, params, x, y, weights, config.train.prior_precision)
