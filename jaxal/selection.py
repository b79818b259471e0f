"""Batch selection: from per-point scores (or features, or samples) to a batch of queries.

Top-k on scores picks near-duplicates, so the batch selector is a choice of its own. Every
selector has the signature

    select(key, pool: Pool, k, options) -> (indices int [k], scores [k])

(``k`` the query size, ``options`` the selector's options record from
``jaxal.components``, bound when the learner is built) and guarantees, as long as
k <= #unlabelled (``jaxal.loop.validate_config`` checks it), that no index is labelled and
none repeats. The returned scores are what each selector ranks by at the moment it picks
(documented per selector). Adding one is a function and its ``Selector`` record plus an
entry in ``jaxal.components.SELECTORS`` (with its options record); selectors that read the
penultimate features say so with ``needs_features``.

Two families:
  * batch selectors for any score (``--batch``): ``topk``, ``hybrid`` (uncertainty and
    redundancy), ``power`` / ``softmax`` / ``softrank`` (stochastic batch acquisition);
  * strategies with their own criterion (``--acq``): ``kcenter`` (core-set), ``badge``,
    ``batchbald``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxal.acquisition import (
    ACQUISITIONS,
    Acquisition,
    entropy,
    finite_scores,
    select_top_k,
)
from jaxal.chunks import map_chunks
from jaxal.components import SELECTORS as SELECTORS  # re-exported: the table
from jaxal.components import BatchBALDOptions, HybridOptions, StochasticOptions

_TINY = 1e-12
# Pool rows per block when comparing the pool with the labelled set ([block, |L|] floats).
BLOCK = 4096


class Pool(NamedTuple):
    """What a selector may read about the pool; [n] leading axes, one chunked pass.

    scores: [n] acquisition scores, higher = query first (zeros for strategies that use
      none).
    probs: [n, c] predictive mean probabilities.
    features: [n, d] penultimate features at θ_MAP, or None unless ``needs_features``.
    labelled: bool [n].
    labelled_idx: int [m] the labelled indices first (``m`` the run's label budget, a
      static bound), padded with index 0.
    sample_probs_of: ``idx [j] -> [s, j, c]`` per-sample probabilities of a subset of the
      pool from the same posterior samples as ``scores`` (sampling predictives only).
    """

    scores: jax.Array
    probs: jax.Array
    features: jax.Array | None
    labelled: jax.Array
    labelled_idx: jax.Array
    sample_probs_of: Callable[[jax.Array], jax.Array] | None = None

    @property
    def num_labelled(self) -> jax.Array:
        return self.labelled.sum()


class Selector(NamedTuple):
    """How a batch is picked, and what it reads and checks.

    A batch selector (``score`` None) turns any acquisition score into a batch
    (``--batch``); a strategy brings the score of its own pool pass (``--acq``).
    """

    select: Callable            # (key, pool, k, options) -> (indices [k], scores [k])
    needs_features: bool = False
    needs_samples: bool = False   # reads pool.sample_probs_of
    score: Acquisition | None = None   # strategies: the score of their pool pass
    # Rules of its options with the run's config; raises ConfigError.
    check: Callable = lambda options, config: options.check(config)


def top_k(key: jax.Array, pool: Pool, k: int, options=None) -> tuple[jax.Array, jax.Array]:
    """The k highest-scoring unlabelled points; returns their scores."""
    del key, options
    return select_top_k(pool.scores, pool.labelled, k)


# --- stochastic batch acquisition (Kirsch et al. 2023) -----------------------------------

class _Tempered(NamedTuple):
    """Log weights β ℓ_i, kept as ℓ (the log weights at β = 1) and β: their product
    overflows float32 for a large finite β (1e308 x log 2 is inf, and every point ties)."""

    log_weights: jax.Array
    beta: float | jax.Array


def _gumbel_top_k(key: jax.Array, log_weights: _Tempered, labelled: jax.Array, k: int):
    """k distinct draws without replacement, P(i) ∝ exp(β ℓ_i) (Gumbel-top-k).

    The k largest of β ℓ_i + g_i, g_i ~ Gumbel(0, 1), or for β > 1 of the same order
    divided by β, ℓ_i + g_i / β. Every term is finite for any finite β > 0, so this is
    the distribution wherever float32 resolves it, and top-k on ℓ (ties by index) where
    g / β rounds below ℓ's resolution (1 / β rounds to 0 past float32's range).
    """
    lowest, highest = jnp.finfo(log_weights.log_weights.dtype).min, jnp.finfo(
        log_weights.log_weights.dtype).max
    ell = jnp.nan_to_num(log_weights.log_weights, nan=lowest, posinf=highest,
                         neginf=lowest)
    gumbel = jax.random.gumbel(key, ell.shape, ell.dtype)
    inverse = 1 / log_weights.beta      # for a Python β computed in float64
    perturbed = jnp.where(inverse < 1, ell + gumbel * inverse,
                          ell / jnp.maximum(inverse, 1) + gumbel)
    _, idx = jax.lax.top_k(jnp.where(labelled, -jnp.inf, perturbed), k)
    return idx


def _stochastic(log_weights_of: Callable[[jax.Array, float], _Tempered]) -> Callable:
    def select(key, pool: Pool, k: int, options: StochasticOptions):
        log_weights = log_weights_of(finite_scores(pool.scores), options.beta)
        idx = _gumbel_top_k(key, log_weights, pool.labelled, k)
        return idx, pool.scores[idx]
    return select


def _softmax_log_weights(scores, beta):
    """softmax: P(i) ∝ exp(β s_i)."""
    return _Tempered(scores, beta)


def _power_log_weights(scores, beta):
    """power: P(i) ∝ s_i^β (scores must be >= 0; 0 gets a tiny weight, not none)."""
    return _Tempered(jnp.log(jnp.clip(scores, _TINY, None)), beta)


def _softrank_log_weights(scores, beta):
    """softrank: P(i) ∝ rank_i^-β, rank 1 the highest score."""
    rank = jnp.empty_like(scores).at[jnp.argsort(-scores)].set(
        jnp.arange(1, scores.shape[0] + 1, dtype=scores.dtype))
    return _Tempered(-jnp.log(rank), beta)


# --- redundancy and hybrid scoring ------------------------------------------------------

def _normalise(features: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
    return features / jnp.maximum(norm, _TINY)


def _to_labelled(pool: Pool, pairwise: Callable, reduce: Callable, init: float
                 ) -> jax.Array:
    """reduce_j pairwise(pool_i, labelled_j) over the labelled set, [n], in pool blocks.

    Memory is one [BLOCK, m] block however large the pool.
    """
    valid = jnp.arange(pool.labelled_idx.shape[0]) < pool.num_labelled
    anchors = pool.features[pool.labelled_idx]

    def block(i, f):
        del i
        return reduce(jnp.where(valid, pairwise(f, anchors), init), axis=1)

    return map_chunks(block, pool.features, BLOCK)


def redundancy(pool: Pool) -> jax.Array:
    """r_i = max_{j ∈ L} cos(φ_i, φ_j) [n], the cosine similarity of pool point i's
    penultimate features to the most similar labelled point's (in [0, 1] after ReLU)."""
    unit = _normalise(pool.features)
    return _to_labelled(pool._replace(features=unit), lambda a, b: a @ b.T, jnp.max, -1.0)


def hybrid(key: jax.Array, pool: Pool, k: int, options: HybridOptions
           ) -> tuple[jax.Array, jax.Array]:
    """Greedy uncertainty + diversity: k times pick the unlabelled unchosen argmax of

        h_i = (1 - β) ũ_i + β (1 - r_i),

    ũ the score min-max scaled to [0, 1] over the unlabelled pool, r_i the redundancy
    (``redundancy``: max cosine similarity to the labelled set *and the points already
    chosen in this batch*, updated after every pick). β = ``options.beta``; β = 0 is
    top-k on the score, β = 1 pure diversity. Returns h at pick time.
    """
    del key
    beta = options.beta
    scores = finite_scores(pool.scores)
    lo = jnp.where(pool.labelled, jnp.inf, scores).min()
    hi = jnp.where(pool.labelled, -jnp.inf, scores).max()
    uncertainty = (scores - lo) / jnp.maximum(hi - lo, _TINY)
    unit = _normalise(pool.features)
    r = redundancy(pool._replace(features=unit))

    def pick(i, carry):
        r, taken, idx, picked = carry
        h = (1.0 - beta) * uncertainty + beta * (1.0 - r)
        j = jnp.argmax(jnp.where(taken, -jnp.inf, h))
        r = jnp.maximum(r, unit @ unit[j])
        return r, taken.at[j].set(True), idx.at[i].set(j), picked.at[i].set(h[j])

    init = (r, pool.labelled, jnp.zeros(k, jnp.int32), jnp.zeros(k, scores.dtype))
    _, _, idx, picked = jax.lax.fori_loop(0, k, pick, init)
    return idx, picked


# --- k-center greedy (core-set, Sener & Savarese 2018) ----------------------------------

def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """||a_i - b_j||² [n, m] via the Gram matrix, clipped at 0 against cancellation."""
    sq = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(sq, 0.0)


def k_center(key: jax.Array, pool: Pool, k: int, options=None
             ) -> tuple[jax.Array, jax.Array]:
    """k-center greedy in feature space: k times pick the unlabelled point farthest from
    its nearest centre (labelled points and earlier picks), the 2-approximation of the
    core-set problem. Returns that distance at pick time. Memory O(n d) plus one
    [BLOCK, |L|] block.
    """
    del key
    phi = pool.features
    d2 = _to_labelled(pool, _squared_distances, jnp.min, jnp.inf)

    def pick(i, carry):
        d2, taken, idx, picked = carry
        j = jnp.argmax(jnp.where(taken, -jnp.inf, d2))
        d2_j = _squared_distances(phi, phi[j][None])[:, 0]
        return (jnp.minimum(d2, d2_j), taken.at[j].set(True), idx.at[i].set(j),
                picked.at[i].set(jnp.sqrt(d2[j])))

    init = (d2, pool.labelled, jnp.zeros(k, jnp.int32), jnp.zeros(k, phi.dtype))
    _, _, idx, picked = jax.lax.fori_loop(0, k, pick, init)
    return idx, picked


# --- BADGE (Ash et al. 2020) ------------------------------------------------------------

def badge(key: jax.Array, pool: Pool, k: int, options=None) -> tuple[jax.Array, jax.Array]:
    """k-means++ seeding on gradient embeddings g_i = ∂ℓ(ŷ_i)/∂θ_head (Ash et al. 2020).

    For cross-entropy with the hypothesised label ŷ_i = argmax p_i the last-layer gradient
    is the outer product g_i = (p_i - e_ŷ) ⊗ φ̃_i, φ̃_i = [φ_i, 1] (bias included), so
    ||g_i - g_j||² = |a_i|²|b_i|² + |a_j|²|b_j|² - 2 (a_i·a_j)(b_i·b_j) with a = p - e_ŷ,
    b = φ̃: the C (d+1) embeddings are never formed, memory stays O(n (c + d)). The first
    centre is the largest-norm embedding (as in the authors' code), every next one is
    drawn with probability ∝ D², the squared distance to the nearest centre so far
    (Gumbel trick, so equal-D² ties are broken at random and no point is drawn twice).
    p is the predictive mean of the run's posterior. Returns D² at pick time.
    """
    del options
    a = pool.probs - jax.nn.one_hot(pool.probs.argmax(-1), pool.probs.shape[-1],
                                    dtype=pool.probs.dtype)
    b = jnp.concatenate([pool.features, jnp.ones_like(pool.features[:, :1])], axis=1)
    norm2 = (a * a).sum(-1) * (b * b).sum(-1)

    def distance2_to(j):
        return jnp.maximum(norm2 + norm2[j] - 2.0 * (a @ a[j]) * (b @ b[j]), 0.0)

    first = jnp.argmax(jnp.where(pool.labelled, -jnp.inf, norm2))
    taken = pool.labelled.at[first].set(True)
    idx = jnp.zeros(k, jnp.int32).at[0].set(first)
    picked = jnp.zeros(k, a.dtype).at[0].set(norm2[first])

    def pick(i, carry):
        d2, taken, idx, picked = carry
        logits = jnp.where(taken, -jnp.inf, jnp.log(jnp.maximum(d2, _TINY)))
        j = jnp.argmax(logits + jax.random.gumbel(jax.random.fold_in(key, i), d2.shape,
                                                  d2.dtype))
        return (jnp.minimum(d2, distance2_to(j)), taken.at[j].set(True), idx.at[i].set(j),
                picked.at[i].set(d2[j]))

    init = (distance2_to(first), taken, idx, picked)
    _, _, idx, picked = jax.lax.fori_loop(1, k, pick, init)
    return idx, picked


# --- BatchBALD (Kirsch et al. 2019) -----------------------------------------------------

def _joint_log_probs(log_configs: jax.Array, log_probs: jax.Array) -> jax.Array:
    """log p(y^m, y_i = c) = log 1/S Σ_s exp(log P[m, s] + log p_s(c | x_i)), [M, n, c].

    A matmul in a row-scaled exponent space, stable for the tiny joint probabilities of
    many selected points: P[m, s] / max_s P[m, s] is in [0, 1].
    """
    row_max = log_configs.max(axis=1, keepdims=True)                         # [M, 1]
    scaled = jnp.exp(log_configs - row_max)                                  # [M, S]
    s, n, c = log_probs.shape
    joint = scaled @ jnp.exp(log_probs).reshape(s, n * c)                    # [M, n c]
    return (jnp.log(jnp.maximum(joint, 1e-30)) + row_max - jnp.log(s)).reshape(-1, n, c)


def batchbald(key: jax.Array, pool: Pool, k: int, options: BatchBALDOptions
              ) -> tuple[jax.Array, jax.Array]:
    """Greedy BatchBALD: pick x_n maximising the joint mutual information

        I[y_1..y_n; θ] = H[y_1..y_n] - Σ_j E_θ H[y_j | θ]

    given the points picked before. Candidates are the ``options.candidates``
    unlabelled points of highest BALD (the pool pass scores BALD); posterior samples are
    the predictive's S (``--samples``). The joint entropy is exact while the label
    configurations of the points picked so far number <= M = ``options.configs``
    (C^(n-1) of them), then estimated from M configurations drawn from p(y_1..y_{n-1}) by
    importance sampling (Kirsch et al. 2019, Sec. 3.3):

        H ≈ -Σ_m w_m Σ_c p(y^m, c) log p(y^m, c),  w_m = 1 (exact) or 1 / (M p(y^m)).

    Cost per pick: M x S x candidates x C multiply-adds. With one query it is BALD's top-1.
    Returns, for each pick, the joint mutual information of the batch up to that pick.
    """
    num_configs = options.configs
    num_candidates = min(options.candidates, pool.scores.shape[0])
    candidates, _ = select_top_k(pool.scores, pool.labelled, num_candidates)
    valid = ~pool.labelled[candidates]         # fewer unlabelled points than candidates
    sample_probs = pool.sample_probs_of(candidates)                     # [S, n, c]
    s, _, c = sample_probs.shape
    log_probs = jnp.log(jnp.clip(sample_probs, _TINY, 1.0))
    conditional = entropy(sample_probs).mean(axis=0)                      # E_θ H[y | θ]

    # Row m of log_configs: log P(y^m | θ_s) for the picked points' labels y^m. Start with
    # one exact configuration (nothing picked) of probability 1.
    dtype = log_probs.dtype
    log_configs = jnp.full((num_configs, s), -jnp.inf, dtype).at[0].set(0.0)
    log_w = jnp.full((num_configs,), -jnp.inf, dtype).at[0].set(0.0)

    def gains(log_configs, log_w):
        log_joint = _joint_log_probs(jnp.where(jnp.isfinite(log_w)[:, None], log_configs,
                                               0.0), log_probs)        # [M, n, c]
        weighted = jnp.exp(log_w[:, None, None] + log_joint) * log_joint
        weighted = jnp.where(jnp.isfinite(log_w)[:, None, None], weighted, 0.0)
        return -weighted.sum(axis=(0, 2)) - conditional

    def extend_exact(log_configs, log_w, j, num_exact):
        # Every configuration m < num_exact times every label c of the new point, in
        # row m * C + c; rows beyond num_exact * C stay invalid.
        new = (log_configs[:, None, :] + log_probs[:, j, :].T[None]).reshape(-1, s)
        rows = jnp.arange(num_configs)
        keep = rows < num_exact * c
        return (jnp.where(keep[:, None], new[:num_configs], -jnp.inf),
                jnp.where(keep, 0.0, -jnp.inf))

    def resample(key, picked_log_probs, num_picked):
        # y^m ~ p(y_1..y_n) = 1/S Σ_s Π_j p_s(y_j): a sample index, then labels given it.
        key_s, key_y = jax.random.split(key)
        which = jax.random.randint(key_s, (num_configs,), 0, s)
        labels = jax.random.categorical(key_y, picked_log_probs[:, which, :].transpose(1, 0, 2)
                                        )                                  # [M, k]
        used = jnp.arange(k) < num_picked
        per_point = jnp.take_along_axis(picked_log_probs.transpose(1, 0, 2)[None],
                                        labels[:, None, :, None], axis=3)[..., 0]
        log_configs = jnp.where(used[None, None], per_point, 0.0).sum(-1)    # [M, S]
        log_marginal = jax.nn.logsumexp(log_configs, axis=1) - jnp.log(s)
        return log_configs, -jnp.log(num_configs) - log_marginal

    def pick(i, carry):
        log_configs, log_w, num_exact, taken, picked_log_probs, idx, joint_mi, before = carry
        # H[y_1..y_{n-1}, y_i] - E H[y_i | θ]: the joint MI up to the constant ``before``,
        # the conditional entropies of the points already picked.
        g = jnp.where(taken | ~valid, -jnp.inf, gains(log_configs, log_w))
        j = jnp.argmax(g)
        picked_log_probs = picked_log_probs.at[i].set(log_probs[:, j, :])
        # num_exact = 0 once the configurations are sampled: they stay sampled.
        exact = (num_exact > 0) & (num_exact * c <= num_configs)
        log_configs, log_w = jax.lax.cond(
            exact,
            lambda: extend_exact(log_configs, log_w, j, num_exact),
            lambda: resample(jax.random.fold_in(key, i), picked_log_probs, i + 1))
        return (log_configs, log_w, jnp.where(exact, num_exact * c, 0),
                taken.at[j].set(True), picked_log_probs, idx.at[i].set(j),
                joint_mi.at[i].set(g[j] - before), before + conditional[j])

    init = (log_configs, log_w, jnp.asarray(1), jnp.zeros(num_candidates, bool),
            jnp.zeros((k, s, c), dtype), jnp.zeros(k, jnp.int32), jnp.zeros(k, dtype),
            jnp.zeros((), dtype))
    *_, idx, joint_mi, _ = jax.lax.fori_loop(0, k, pick, init)
    return candidates[idx], joint_mi


def _no_score(key, out):
    """Strategies that rank by features alone still run the predictive (pseudo-labels)."""
    del key
    return jnp.zeros(out.probs.shape[:1], out.probs.dtype)


TOP_K = Selector(top_k)
HYBRID = Selector(hybrid, needs_features=True)
POWER = Selector(_stochastic(_power_log_weights))
SOFTMAX = Selector(_stochastic(_softmax_log_weights))
SOFTRANK = Selector(_stochastic(_softrank_log_weights))
K_CENTER = Selector(k_center, needs_features=True, score=Acquisition(_no_score))
BADGE = Selector(badge, needs_features=True, score=Acquisition(_no_score))
BATCHBALD = Selector(batchbald, needs_samples=True, score=ACQUISITIONS["bald"])


def batch_selectors() -> tuple[str, ...]:
    """Selectors that turn any score into a batch (``--batch``), as registered now."""
    return tuple(name for name, sel in SELECTORS.items() if sel.score is None)


def strategies() -> tuple[str, ...]:
    """Strategies with their own criterion, chosen with ``--acq`` like a score."""
    return tuple(name for name, sel in SELECTORS.items() if sel.score is not None)


# --- pseudo-labelling (CEAL, Wang et al. 2017) ------------------------------------------

def confidence(probs: jax.Array, criterion: str) -> jax.Array:
    """How sure the predictive is, higher = surer: max_c p_c, or minus the entropy."""
    return probs.max(axis=-1) if criterion == "max-prob" else -entropy(probs)


def pseudo_labels(probs: jax.Array, exclude: jax.Array, threshold: float, criterion: str
                  ) -> jax.Array:
    """int [n]: argmax_c p_c for confident pool points not in ``exclude``, else -1.

    Confident: max_c p_c >= threshold (``max-prob``) or H[p] <= threshold (``entropy``).
    """
    sure = confidence(probs, criterion) >= (threshold if criterion == "max-prob"
                                            else -threshold)
    return jnp.where(sure & ~exclude, probs.argmax(axis=-1), -1)


PSEUDO_LABEL_CRITERIA = ("max-prob", "entropy")
