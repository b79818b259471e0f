"""Acquisition scores: how informative each pool point is, from its predictive.

Every score has the signature ``score(key, out: PredictiveOutput) -> [n]`` and the
convention *higher = more informative, query first*. Adding an acquisition function is
one function plus one ``Acquisition`` record in ``ACQUISITIONS``; a score that reads the
per-sample probabilities ``out.sample_probs`` [s, n, c] declares ``needs_samples``, so
that runs whose predictive has none (plugin, probit) are refused before training. How a batch is
picked from the scores is ``jaxal.selection``'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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


def _sample_probs(out: PredictiveOutput, name: str) -> jax.Array:
    if out.sample_probs is None:
        raise ValueError(f"{name} needs per-sample probabilities [s, n, c]; use a sampling "
                         "predictive (--posterior laplace --predictive mc)")
    return out.sample_probs


def bald(key: jax.Array, out: PredictiveOutput) -> jax.Array:
    """BALD, the mutual information between label and weights (Houlsby et al. 2011):

        I[y; θ | x, D] ≈ H[1/S Σ_s p_s] - 1/S Σ_s H[p_s]

    Non-negative by Jensen; clipped at 0 against float rounding on saturated rows.
    """
    del key
    sample_probs = _sample_probs(out, "bald")
    mean_entropy = entropy(sample_probs).mean(axis=0)
    return jnp.maximum(entropy(sample_probs.mean(axis=0)) - mean_entropy, 0.0)


def variation_ratios(key: jax.Array, out: PredictiveOutput) -> jax.Array:
    """1 - (votes of the modal class) / S, a vote being each sample's argmax class.

    (Freeman 1965; Gal et al. 2017 use it with MC dropout samples.)
    """
    del key
    sample_probs = _sample_probs(out, "variation_ratios")
    votes = jax.nn.one_hot(sample_probs.argmax(axis=-1), sample_probs.shape[-1],
                           dtype=sample_probs.dtype).mean(axis=0)        # [n, c]
    return 1.0 - votes.max(axis=-1)


def mean_std(key: jax.Array, out: PredictiveOutput) -> jax.Array:
    """Mean over classes of the std over samples: 1/C Σ_c √(E_s[p_sc²] - E_s[p_sc]²).

    (Kampffmeyer et al. 2016, as compared in Gal et al. 2017.) The variance is taken as
    the mean squared deviation, which is never negative, unlike E[p²] - E[p]² in floats.
    """
    del key
    sample_probs = _sample_probs(out, "mean_std")
    deviation = sample_probs - sample_probs.mean(axis=0)
    return jnp.sqrt((deviation ** 2).mean(axis=0)).mean(axis=-1)


class Acquisition(NamedTuple):
    """An acquisition score and what it reads."""

    score: ScoreFn
    needs_samples: bool = False   # reads out.sample_probs: needs a sampling predictive


ACQUISITIONS: dict[str, Acquisition] = {
    "random": Acquisition(random_score),
    "entropy": Acquisition(predictive_entropy),
    "margin": Acquisition(margin),
    "least_confidence": Acquisition(least_confidence),
    "bald": Acquisition(bald, needs_samples=True),
    "variation_ratios": Acquisition(variation_ratios, needs_samples=True),
    "mean_std": Acquisition(mean_std, needs_samples=True),
}


def score_pool(key: jax.Array, predict: Callable, score: ScoreFn, x_pool: jax.Array,
               chunk_size: int, with_probs: bool = False):
    """Acquisition scores [n] of every pool point, in memory-bounded chunks.

    ``predict(key, x_chunk) -> PredictiveOutput`` receives the same key for every chunk
    (shared posterior samples); ``score`` gets a per-chunk key, so random scores differ
    across chunks. With ``with_probs`` it returns (scores [n], predictive probs [n, c]).
    """
    key_predict, key_score = jax.random.split(key)

    def one_chunk(i, x_chunk):
        out = predict(key_predict, x_chunk)
        scores = score(jax.random.fold_in(key_score, i), out)
        return (scores, out.probs) if with_probs else scores

    return map_chunks(one_chunk, x_pool, chunk_size)


def finite_scores(scores: jax.Array) -> jax.Array:
    """NaN and -inf raised to the lowest finite float, so they rank last but still rank
    above the -inf that masks labelled points (+inf stays: it ranks first)."""
    lowest = jnp.finfo(scores.dtype).min
    return jnp.nan_to_num(scores, nan=lowest, neginf=lowest)


def select_top_k(scores: jax.Array, labelled: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Indices [k] of the k highest-scoring *unlabelled* points, and their scores.

    Labelled points get -inf; NaN or -inf scores of unlabelled points are raised to the
    lowest finite float (``finite_scores``), so as long as k <= #unlabelled (checked before
    the run starts) no labelled index is returned, and ``top_k`` never returns an index
    twice.
    """
    masked = jnp.where(labelled, -jnp.inf, finite_scores(scores))
    _, idx = jax.lax.top_k(masked, k)
    return idx, scores[idx]
