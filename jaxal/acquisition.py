"""Acquisition: score every pool point from its predictive, then pick a batch.

Every score has the signature ``score(key, out: PredictiveOutput) -> [n]`` and the
convention *higher = more informative, query first*. Adding an acquisition function is
one function plus one ``ACQUISITIONS`` entry.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxal.chunks import chunk_array, map_chunks  # noqa: F401 (re-exported)
from jaxal.predictive import PredictiveOutput

# Probabilities are clipped away from 0 before logs so saturated softmaxes give 0, not NaN.
_TINY = 1e-12


def entropy(probs: jax.Array) -> jax.Array:
    """H[p] = -Σ_c p_c log p_c over the last axis (0 log 0 := 0)."""
    return -(probs * jnp.log(jnp.clip(probs, _TINY, 1.0))).sum(axis=-1)


def random_score(key: jax.Array, out: PredictiveOutput) -> jax.Array:
    """Uniform random scores: top-k of them is a uniformly random batch."""
    return jax.random.uniform(key, out.probs.shape[:1])


def predictive_entropy(key: jax.Array, out: PredictiveOutput) -> jax.Array:
    """H[p(y | x, D)], the entropy of the predictive mean."""
    del key
    return entropy(out.probs)


def margin(key: jax.Array, out: PredictiveOutput) -> jax.Array:
    """1 - (p_(1) - p_(2)): one minus the gap between the two most probable classes."""
    del key
    top2 = jax.lax.top_k(out.probs, 2)[0]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def least_confidence(key: jax.Array, out: PredictiveOutput) -> jax.Array:
    """1 - max_c p_c."""
    del key
    return 1.0 - out.probs.max(axis=-1)


ScoreFn = Callable[[jax.Array, PredictiveOutput], jax.Array]

ACQUISITIONS: dict[str, ScoreFn] = {
    "random": random_score,
    "entropy": predictive_entropy,
    "margin": margin,
    "least_confidence": least_confidence,
}


def score_pool(key: jax.Array, predict: Callable, score: ScoreFn, x_pool: jax.Array,
               chunk_size: int) -> jax.Array:
    """Acquisition scores [n] of every pool point, in memory-bounded chunks.

    ``predict(key, x_chunk) -> PredictiveOutput`` receives the same key for every chunk
    (shared posterior samples); ``score`` gets a per-chunk key, so random scores differ
    across chunks.
    """
    key_predict, key_score = jax.random.split(key)

    def one_chunk(i, x_chunk):
        return score(jax.random.fold_in(key_score, i), predict(key_predict, x_chunk))

    return map_chunks(one_chunk, x_pool, chunk_size)


def select_top_k(scores: jax.Array, labelled: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Indices [k] of the k highest-scoring *unlabelled* points, and their scores.

    Labelled points get -inf; NaN or -inf scores of unlabelled points are raised to the
    lowest finite float, so as long as k <= #unlabelled (checked before the run starts) no
    labelled index is returned, and ``top_k`` never returns an index twice.
    """
    lowest = jnp.finfo(scores.dtype).min
    safe = jnp.nan_to_num(scores, nan=lowest, neginf=lowest)
    masked = jnp.where(labelled, -jnp.inf, safe)
    _, idx = jax.lax.top_k(masked, k)
    return idx, scores[idx]
