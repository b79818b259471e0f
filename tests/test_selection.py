"""Tests for jaxal.selection: batch selectors against brute-force and hand-made references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.acquisition import bald
from jaxal.components import StochasticOptions
from jaxal.predictive import PredictiveOutput
from jaxal.selection import (
    SELECTORS,
    Pool,
    batch_selectors,
    pseudo_labels,
    redundancy,
    strategies,
)


def make_pool(scores=None, probs=None, features=None, labelled=None, sample_probs=None,
              capacity=None):
    n = next(a.shape[-2] if a is sample_probs else a.shape[0]
             for a in (scores, probs, features, sample_probs) if a is not None)
    labelled = np.zeros(n, bool) if labelled is None else np.asarray(labelled)
    capacity = capacity or max(int(labelled.sum()), 1)
    idx = np.zeros(capacity, np.int32)
    idx[: labelled.sum()] = np.flatnonzero(labelled)
    sp = None if sample_probs is None else jnp.asarray(sample_probs)
    if probs is None:
        probs = sp.mean(0) if sp is not None else jnp.full((n, 3), 1 / 3)
    return Pool(jnp.zeros(n) if scores is None else jnp.asarray(scores), jnp.asarray(probs),
                None if features is None else jnp.asarray(features), jnp.asarray(labelled),
                jnp.asarray(idx), None if sp is None else (lambda i: sp[:, i]))


def run_selector(name, key, pool, query_size, **options):
    """The selector's batch of ``query_size``; ``options`` by the field names of its
    options record (those it does not have are ignored, so one call serves all)."""
    record = SELECTORS.options_type(name)
    options = record(**{k: v for k, v in options.items() if k in record._fields})
    select = SELECTORS[name].select
    return jax.jit(lambda key: select(key, pool, query_size, options))(key)


def assert_valid(idx, labelled, k):
    idx = np.asarray(idx)
    assert idx.shape == (k,)
    assert not np.asarray(labelled)[idx].any(), "a labelled index was selected"
    assert len(set(idx.tolist())) == k, "an index was selected twice"


@pytest.mark.slow
def test_registry_split():
    """``--batch`` selectors turn whatever score they are given into a batch; strategies
    (``--acq``) bring their own criterion, and the score of their pool pass with it."""
    assert sorted(batch_selectors()) == ["hybrid", "power", "softmax", "softrank", "topk"]
    assert sorted(strategies()) == ["badge", "batchbald", "kcenter"]
    rng = np.random.default_rng(0)
    n, k = 40, 5
    scores = rng.uniform(0.1, 1.0, n)          # >= 0, as the power selector needs
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(n, 3))), -1)
    features = rng.normal(size=(n, 4))
    labelled = np.zeros(n, bool)
    labelled[:3] = True

    def batch(name, s):
        pool = make_pool(s, probs, features, labelled)
        return set(np.asarray(run_selector(name, jax.random.key(0), pool,
                                           query_size=k)[0]).tolist())

    for name in batch_selectors():
        assert batch(name, scores) != batch(name, scores[::-1]), f"{name} ignores the score"
    for name in ("kcenter", "badge"):
        assert batch(name, scores) == batch(name, scores[::-1]), f"{name} reads the score"
        no_score = SELECTORS[name].score.score(None, PredictiveOutput(probs, None))
        np.testing.assert_array_equal(no_score, np.zeros(n))
    # Its candidates: the top BALD points, and it needs the samples BALD reads.
    assert SELECTORS["batchbald"].score.score is bald
    assert SELECTORS["batchbald"].score.needs_samples


# --- every selector: distinct unlabelled indices, reproducible --------------------------

@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_returns_distinct_unlabelled_indices_reproducibly(name):
    rng = np.random.default_rng(0)
    n, c, k = 60, 4, 12
    sample_probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(8, n, c)) * 2.0), -1)
    features = np.maximum(rng.normal(size=(n, 5)), 0.0)
    features[:10] = features[10]      # duplicates (ties in every feature-space criterion)
    labelled = rng.random(n) < 0.3
    labelled[10] = True
    scores = bald(None, PredictiveOutput(sample_probs.mean(0), sample_probs))
    pool = make_pool(scores, None, features, labelled, sample_probs, capacity=30)
    config = dict(query_size=k, candidates=40, configs=50)
    idx, picked = run_selector(name, jax.random.key(0), pool, **config)
    assert_valid(idx, labelled, k)
    assert np.isfinite(np.asarray(picked)).all()
    again, _ = run_selector(name, jax.random.key(0), pool, **config)
    np.testing.assert_array_equal(idx, again)
    if name in ("power", "softmax", "softrank", "badge"):
        other, _ = run_selector(name, jax.random.key(1), pool, **config)
        assert not np.array_equal(idx, other), "the key must change a random selection"


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_can_take_the_whole_unlabelled_pool(name):
    """k = #unlabelled: each selector must return exactly the unlabelled points."""
    rng = np.random.default_rng(1)
    n, k = 20, 6
    sample_probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(5, n, 3))), -1)
    labelled = np.ones(n, bool)
    labelled[rng.choice(n, k, replace=False)] = False
    scores = np.full(n, np.nan)        # even NaN scores must not break a selection
    pool = make_pool(scores, None, rng.random((n, 3)), labelled, sample_probs, capacity=n)
    idx, _ = run_selector(name, jax.random.key(0), pool, query_size=k, candidates=n,
                          configs=10)
    assert_valid(idx, labelled, k)
    assert set(np.asarray(idx).tolist()) == set(np.flatnonzero(~labelled).tolist())


# --- stochastic batch acquisition -------------------------------------------------------

@pytest.mark.parametrize("name, weights", [
    ("power", lambda s: s ** 2.0),
    ("softmax", lambda s: np.exp(2.0 * s)),
    ("softrank", lambda s: (1.0 + np.argsort(np.argsort(-s))) ** -2.0),
])
def test_stochastic_selection_frequencies_follow_the_distribution(name, weights):
    """k = 1 draws over many keys: P(i) ∝ weight(s_i) at β = 2, within 4 MC sigmas."""
    scores = np.array([0.1, 0.5, 1.0, 0.3, 0.8, 0.9])
    labelled = np.array([0, 0, 0, 0, 0, 1], bool)
    pool = make_pool(scores, labelled=labelled)
    select = SELECTORS[name].select
    options = StochasticOptions(beta=2.0)
    draws = 20_000
    keys = jax.random.split(jax.random.key(0), draws)
    idx = jax.jit(jax.vmap(lambda key: select(key, pool, 1, options)[0][0]))(keys)
    freq = np.bincount(np.asarray(idx), minlength=6) / draws
    w = weights(scores) * ~labelled
    p = w / w.sum()
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / draws).max())


def test_stochastic_selection_with_a_cold_beta_is_top_k():
    scores = np.random.default_rng(0).random(40)
    labelled = np.zeros(40, bool)
    labelled[np.argmax(scores)] = True
    pool = make_pool(scores, labelled=labelled)
    top, _ = run_selector("topk", jax.random.key(0), pool, query_size=5)
    for name in ("softmax", "softrank"):
        idx, _ = run_selector(name, jax.random.key(0), pool, query_size=5, beta=1e4)
        np.testing.assert_array_equal(np.sort(idx), np.sort(top))


# --- redundancy and hybrid --------------------------------------------------------------

def test_redundancy_is_the_max_cosine_similarity_to_the_labelled_set():
    rng = np.random.default_rng(0)
    features = np.maximum(rng.normal(size=(50, 6)), 0.0) + 0.01
    labelled = rng.random(50) < 0.2
    r = redundancy(make_pool(features=features, labelled=labelled, capacity=20))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(r, (unit @ unit[labelled].T).max(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(r)[labelled], 1.0, rtol=1e-5)


def test_hybrid_with_beta_zero_is_top_k():
    rng = np.random.default_rng(0)
    scores, features = rng.random(30), rng.random((30, 4))
    labelled = rng.random(30) < 0.3
    pool = make_pool(scores, features=features, labelled=labelled, capacity=15)
    top, _ = run_selector("topk", None, pool, query_size=6)
    idx, _ = run_selector("hybrid", None, pool, query_size=6, beta=0.0)
    np.testing.assert_array_equal(idx, top)


def test_hybrid_skips_copies_of_labelled_and_already_chosen_points():
    """Four groups of identical features; the most uncertain points copy group 0, which is
    labelled, and the next ones are all copies of one group. Top-k takes the copies;
    hybrid takes one point from each new group."""
    groups = np.eye(4)
    group_of = np.array([0, 0, 0, 1, 1, 1, 2, 3])
    features = groups[group_of]
    scores = np.array([0.0, 0.99, 0.98, 0.9, 0.89, 0.88, 0.2, 0.1])
    labelled = np.zeros(8, bool)
    labelled[0] = True
    pool = make_pool(scores, features=features, labelled=labelled)
    top, _ = run_selector("topk", None, pool, query_size=3)
    assert sorted(group_of[np.asarray(top)].tolist()) == [0, 0, 1]
    idx, h = run_selector("hybrid", None, pool, query_size=3, beta=0.5)
    assert sorted(group_of[np.asarray(idx)].tolist()) == [1, 2, 3]
    assert int(idx[0]) == 3, "the most uncertain point of the first new group comes first"
    # h = 0.5 ũ + 0.5 (1 - r), ũ min-max scaled over the unlabelled points.
    u = (scores - 0.1) / (0.99 - 0.1)
    np.testing.assert_allclose(h[0], 0.5 * u[3] + 0.5, rtol=1e-5)


# --- k-center greedy --------------------------------------------------------------------

def k_center_reference(features, labelled, k):
    d = np.linalg.norm(features[:, None] - features[None], axis=-1)
    centres = list(np.flatnonzero(labelled))
    picks = []
    for _ in range(k):
        nearest = d[:, centres].min(1) if centres else np.full(len(features), np.inf)
        nearest[centres] = -np.inf
        j = int(np.argmax(nearest))
        picks.append(j)
        centres.append(j)
    return picks


def test_k_center_hits_every_cluster_before_any_twice():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 20]], float)
    cluster = np.repeat(np.arange(5), 30)
    features = centres[cluster] + rng.normal(scale=0.5, size=(150, 2))
    labelled = np.zeros(150, bool)
    labelled[[3, 7]] = True            # two points of cluster 0
    idx, dist = run_selector("kcenter", None, make_pool(features=features,
                                                        labelled=labelled, capacity=10),
                             query_size=8)
    assert_valid(idx, labelled, 8)
    assert sorted(cluster[np.asarray(idx)[:4]].tolist()) == [1, 2, 3, 4]
    assert set(cluster[np.asarray(idx)[4:]].tolist()) <= set(range(5))
    np.testing.assert_array_equal(idx, k_center_reference(features, labelled, 8))
    assert np.all(np.diff(np.asarray(dist)) <= 1e-6), "greedy distances never increase"


# --- BADGE ------------------------------------------------------------------------------

def test_badge_distances_are_those_of_the_explicit_gradient_embeddings():
    """First pick: the largest embedding norm; every pick's D²: the squared distance of the
    explicit C (d+1) embedding (p - e_ŷ) ⊗ [φ, 1] to its nearest earlier centre."""
    rng = np.random.default_rng(0)
    n, c, d, k = 40, 3, 4, 6
    probs = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=(n, c)) * 2.0)))
    features = rng.random((n, d)).astype(np.float32)
    labelled = rng.random(n) < 0.2
    idx, d2 = run_selector("badge", jax.random.key(3),
                           make_pool(probs=probs, features=features, labelled=labelled,
                                     capacity=n), query_size=k)
    assert_valid(idx, labelled, k)
    a = probs - np.eye(c)[probs.argmax(1)]
    b = np.concatenate([features, np.ones((n, 1))], 1)
    g = (a[:, :, None] * b[:, None, :]).reshape(n, -1)
    norm2 = (g ** 2).sum(1)
    idx = np.asarray(idx)
    assert idx[0] == np.flatnonzero(~labelled)[np.argmax(norm2[~labelled])]
    expected = [norm2[idx[0]]] + [((g[idx[:i]] - g[idx[i]]) ** 2).sum(1).min()
                                  for i in range(1, k)]
    np.testing.assert_allclose(d2, expected, rtol=1e-4, atol=1e-5)


def test_badge_draws_proportionally_to_squared_distance():
    """Second pick of k = 2 over many keys: P(i) ∝ D²(i, first centre)."""
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    features = np.ones((5, 1))
    pool = make_pool(probs=probs, features=features)
    select = SELECTORS["badge"].select
    draws = 20_000
    keys = jax.random.split(jax.random.key(0), draws)
    picks = np.asarray(jax.jit(jax.vmap(lambda key: select(key, pool, 2, None)[0]))(keys))
    a = probs - np.eye(2)[probs.argmax(1)]
    g = np.concatenate([a, a], 1)          # b = [1, 1]
    first = int(np.argmax((g ** 2).sum(1)))
    assert (picks[:, 0] == first).all()
    d2 = ((g - g[first]) ** 2).sum(1)
    p = d2 / d2.sum()
    freq = np.bincount(picks[:, 1], minlength=5) / draws
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / draws).max())


# --- BatchBALD ----------------------------------------------------------------------------

def joint_mutual_information(sample_probs, idx):
    """I[y_idx; θ] by enumerating every label configuration (float64)."""
    p = np.asarray(sample_probs, np.float64)
    joint_entropy = 0.0
    for ys in itertools.product(range(p.shape[-1]), repeat=len(idx)):
        q = np.prod([p[:, i, y] for i, y in zip(idx, ys, strict=True)], axis=0).mean()
        joint_entropy -= q * math.log(q)
    conditional = sum(-(p[:, i] * np.log(p[:, i])).sum(-1).mean() for i in idx)
    return joint_entropy - conditional


def greedy_batchbald_reference(sample_probs, labelled, k):
    picks = []
    for _ in range(k):
        free = [i for i in np.flatnonzero(~labelled) if i not in picks]
        picks.append(max(free, key=lambda i: joint_mutual_information(sample_probs,
                                                                      [*picks, i])))
    return picks


def bald_pool(seed, s, n, c, labelled=None):
    rng = np.random.default_rng(seed)
    sample_probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(s, n, c)) * 2.0), -1)
    scores = bald(None, PredictiveOutput(sample_probs.mean(0), sample_probs))
    return sample_probs, make_pool(scores, None, None, labelled, sample_probs)


def test_batchbald_with_one_query_is_the_bald_top_1():
    labelled = np.zeros(30, bool)
    labelled[:5] = True
    _, pool = bald_pool(0, 10, 30, 4, labelled)
    top, top_scores = run_selector("topk", None, pool, query_size=1)
    idx, mi = run_selector("batchbald", jax.random.key(0), pool, query_size=1)
    np.testing.assert_array_equal(idx, top)
    np.testing.assert_allclose(mi, top_scores, rtol=1e-5)


@pytest.mark.slow
def test_batchbald_exact_joint_entropy_matches_brute_force_greedy():
    """While C^(picks) <= M the joint entropy is exact: same picks as a brute-force
    greedy, and the returned values are the batch's joint MI."""
    labelled = np.zeros(14, bool)
    labelled[[2, 5]] = True
    sample_probs, pool = bald_pool(1, 20, 14, 3, labelled)
    idx, mi = run_selector("batchbald", jax.random.key(0), pool, query_size=4,
                           configs=27, candidates=14)
    reference = greedy_batchbald_reference(sample_probs, labelled, 4)
    np.testing.assert_array_equal(idx, reference)
    np.testing.assert_allclose(
        mi, [joint_mutual_information(sample_probs, reference[:i + 1]) for i in range(4)],
        rtol=1e-4)


@pytest.mark.slow
def test_batchbald_sampled_joint_entropy_is_close_to_exact():
    """Beyond M exact configurations they are sampled: the joint MI estimate of the
    picked batch is within Monte Carlo error of the exact value (mean over keys)."""
    sample_probs, pool = bald_pool(2, 20, 12, 2)
    errors = []
    for seed in range(8):
        idx, mi = run_selector("batchbald", jax.random.key(seed), pool, query_size=5,
                               configs=64, candidates=12)
        exact = joint_mutual_information(sample_probs, np.asarray(idx).tolist())
        errors.append(float(mi[-1]) - exact)
    # 64 configurations are exact up to 4 picks (2^4 <= 64 < 2^5 is not reached: the
    # fifth pick's configurations are sampled); the importance-sampling estimate is
    # unbiased, so the mean error over keys is small.
    assert abs(np.mean(errors)) < 0.05, errors
    assert np.max(np.abs(errors)) < 0.2, errors


@pytest.mark.slow
def test_batchbald_prefers_a_diverse_batch_to_duplicate_top_bald_points():
    """Three copies of the top-BALD point and one slightly less informative distinct point:
    top-k takes copies, BatchBALD takes one copy and the distinct point (a duplicate adds
    no joint information)."""
    rng = np.random.default_rng(0)
    base = jax.nn.softmax(jnp.asarray(rng.normal(size=(30, 1, 3)) * 3.0), -1)
    other = jax.nn.softmax(jnp.asarray(rng.normal(size=(30, 1, 3)) * 2.5), -1)
    dull = jnp.full((30, 2, 3), 1 / 3)
    sample_probs = jnp.concatenate([base, base, base, other, dull], axis=1)
    scores = bald(None, PredictiveOutput(sample_probs.mean(0), sample_probs))
    assert scores[3] < scores[0], "the distinct point must have the lower BALD"
    pool = make_pool(scores, None, None, None, sample_probs)
    top, _ = run_selector("topk", None, pool, query_size=2)
    assert set(np.asarray(top).tolist()) <= {0, 1, 2}
    idx, _ = run_selector("batchbald", jax.random.key(0), pool, query_size=2)
    assert 3 in np.asarray(idx).tolist()


# --- pseudo-labels ----------------------------------------------------------------------

def test_pseudo_labels_by_max_prob_and_entropy():
    probs = jnp.array([[0.99, 0.01], [0.6, 0.4], [0.02, 0.98], [0.995, 0.005]])
    exclude = jnp.array([False, False, False, True])
    np.testing.assert_array_equal(pseudo_labels(probs, exclude, 0.95, "max-prob"),
                                  [0, -1, 1, -1])
    h = -(probs * jnp.log(probs)).sum(1)
    assert float(h[0]) < 0.07 < float(h[2])
    np.testing.assert_array_equal(pseudo_labels(probs, exclude, 0.07, "entropy"),
                                  [0, -1, -1, -1])
