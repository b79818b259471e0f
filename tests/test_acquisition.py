"""Tests for jaxal.acquisition: hand-computed scores, top-k selection, chunked scoring."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal.acquisition import (
    ACQUISITIONS,
    chunk_array,
    entropy,
    map_chunks,
    score_pool,
    select_top_k,
)
from jaxal.chunks import chunk_at
from jaxal.model import init_params, mlp
from jaxal.posteriors.plugin import PointMass
from jaxal.predictive import PredictiveOutput, plugin_predictive

# One-hot, uniform, and two generic rows; written by hand.
PROBS = np.array([
    [1.0, 0.0, 0.0],
    [1 / 3, 1 / 3, 1 / 3],
    [0.5, 0.3, 0.2],
    [0.6, 0.4, 0.0],
], np.float32)

# The scores of PROBS, by hand. Higher = more informative.
EXPECTED = {
    # -Σ p log p, with 0 log 0 = 0.
    "entropy": [
        0.0,
        math.log(3),
        -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)),
        -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)),
    ],
    # 1 - (top1 - top2).
    "margin": [1 - (1.0 - 0.0), 1 - 0.0, 1 - (0.5 - 0.3), 1 - (0.6 - 0.4)],
    # 1 - max.
    "least_confidence": [0.0, 1 - 1 / 3, 0.5, 0.4],
}
DETERMINISTIC = sorted(EXPECTED)


def _h(*p):
    return -sum(q * math.log(q) for q in p if q > 0)


# Per-sample probabilities [s=4, n=3, c=2], by hand: posterior samples that disagree
# confidently (0), agree on a coin flip (1), and a generic case (2).
SAMPLE_PROBS = np.array([
    [[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]],
    [[0.0, 1.0], [0.5, 0.5], [0.8, 0.2]],
    [[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]],
    [[0.0, 1.0], [0.5, 0.5], [0.6, 0.4]],
], np.float32)
SAMPLE_EXPECTED = {
    # H[mean] - mean H: (0) log 2 - 0; (1) log 2 - log 2; (2) mean p = (0.6, 0.4).
    "bald": [math.log(2), 0.0, _h(0.6, 0.4) - (3 * _h(0.8, 0.2) + _h(0.6, 0.4)) / 4],
    # 1 - modal vote share; ties (0.5, 0.5) vote for class 0 (argmax takes the first).
    "variation_ratios": [1 - 2 / 4, 1 - 4 / 4, 1 - 3 / 4],
    # mean over classes of the population std over samples: (0) values 1,0,1,0 -> 0.5;
    # (2) class 0 values .8,.8,.2,.6: mean .6, var (.04 + .04 + .16 + 0) / 4 = .06.
    "mean_std": [0.5, 0.0, math.sqrt(0.06)],
}


def sample_output(sample_probs) -> PredictiveOutput:
    sample_probs = jnp.asarray(sample_probs)
    return PredictiveOutput(sample_probs.mean(0), sample_probs)


def test_every_acquisition_has_a_test():
    """A new registry entry must get hand-computed values here (or be random)."""
    assert set(ACQUISITIONS) == {"random", *EXPECTED, *SAMPLE_EXPECTED}
    assert {n for n in ACQUISITIONS if ACQUISITIONS[n].needs_samples} == set(
        SAMPLE_EXPECTED)


@pytest.mark.parametrize("name", sorted(SAMPLE_EXPECTED))
def test_sample_scores_match_hand_computed_values(name):
    scores = jax.jit(ACQUISITIONS[name].score)(jax.random.key(0), sample_output(SAMPLE_PROBS))
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, SAMPLE_EXPECTED[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLE_EXPECTED))
def test_sample_scores_are_zero_when_samples_agree_and_refuse_without_samples(name):
    """Identical samples carry no epistemic uncertainty; no samples is an error."""
    probs = jnp.asarray(PROBS)
    same = jnp.broadcast_to(probs, (5, *probs.shape))
    np.testing.assert_allclose(ACQUISITIONS[name].score(jax.random.key(0), sample_output(same)),
                               np.zeros(4), atol=1e-6)
    with pytest.raises(ValueError, match="needs per-sample probabilities"):
        ACQUISITIONS[name].score(jax.random.key(0), PredictiveOutput(probs))


@pytest.mark.slow
def test_bald_is_the_mutual_information_of_a_monte_carlo_table():
    """BALD against I[y; θ] computed from the joint table p(y, s) = p_s(y) / S."""
    sample_probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (7, 5, 4)) * 3.0)
    joint = np.asarray(sample_probs, np.float64).transpose(1, 0, 2) / 7.0   # [n, s, c]
    p_y = joint.sum(1, keepdims=True)
    mi = (joint * np.log(joint / (p_y * (1.0 / 7.0)))).sum((1, 2))
    np.testing.assert_allclose(ACQUISITIONS["bald"].score(None, sample_output(sample_probs)), mi,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_scores_match_hand_computed_values(name):
    scores = ACQUISITIONS[name].score(jax.random.key(0), PredictiveOutput(jnp.asarray(PROBS)))
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, EXPECTED[name], rtol=1e-6, atol=1e-6)


def test_entropy_extremes():
    np.testing.assert_allclose(entropy(jnp.eye(5)), np.zeros(5), atol=1e-7)
    np.testing.assert_allclose(entropy(jnp.full((2, 7), 1 / 7)), [math.log(7)] * 2, rtol=1e-6)
    # Over any leading axes (per-sample probabilities [s, n, c]).
    stacked = jnp.stack([jnp.asarray(PROBS)] * 2)
    np.testing.assert_allclose(entropy(stacked), [EXPECTED["entropy"]] * 2, rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_scores_are_finite_for_saturated_predictions(name):
    """One-hot rows (a saturated softmax: exact zeros) must not give NaN from log 0."""
    probs = jnp.concatenate([jnp.eye(3), jax.nn.softmax(jnp.array([[200.0, 0.0, -200.0]]))])
    # Samples: the rows, and the rows rolled by a class (saturated disagreement).
    out = sample_output(jnp.stack([probs, jnp.roll(probs, 1, axis=1)]))
    scores = jax.jit(ACQUISITIONS[name].score)(jax.random.key(0), out)
    assert scores.shape == (4,)
    assert bool(jnp.isfinite(scores).all())
    if ACQUISITIONS[name].needs_samples:
        assert bool((scores > 0).all()), "confident disagreement is maximally informative"


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_uncertain_rows_score_higher(name):
    """Higher = query first: uniform above a generic row, above a one-hot row."""
    scores = ACQUISITIONS[name].score(jax.random.key(0), PredictiveOutput(jnp.asarray(PROBS)))
    assert scores[1] > scores[2] > scores[0]
    assert scores[1] > scores[3] > scores[0]


def test_random_score():
    out = PredictiveOutput(jnp.full((1000, 3), 1 / 3))
    random_score = ACQUISITIONS["random"].score
    scores = random_score(jax.random.key(0), out)
    assert scores.shape == (1000,)
    assert bool(((scores >= 0) & (scores < 1)).all())
    assert len(np.unique(scores)) == 1000
    assert abs(float(scores.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / 1000)  # CLT, 4 sigma
    np.testing.assert_array_equal(scores, random_score(jax.random.key(0), out))
    assert not np.any(np.asarray(scores) == np.asarray(random_score(jax.random.key(1), out)))


# --- select_top_k ----------------------------------------------------------------------------

def reference_top_k(scores, labelled, k):
    """The k unlabelled indices with the highest scores, best first (scores distinct)."""
    unlabelled = np.flatnonzero(~labelled)
    return unlabelled[np.argsort(-scores[unlabelled], kind="stable")][:k]


def assert_valid_selection(idx, labelled, k):
    idx = np.asarray(idx)
    assert idx.shape == (k,)
    assert not labelled[idx].any(), "a labelled index was selected"
    assert len(set(idx.tolist())) == k, "an index was selected twice"


@pytest.mark.parametrize("k", [1, 5, 20])
def test_select_top_k_matches_numpy_reference(k):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(50).astype(np.float32)
    labelled = rng.random(50) < 0.4
    idx, top_scores = select_top_k(jnp.asarray(scores), jnp.asarray(labelled), k)
    assert_valid_selection(idx, labelled, k)
    np.testing.assert_array_equal(idx, reference_top_k(scores, labelled, k))
    np.testing.assert_array_equal(top_scores, scores[np.asarray(idx)])


def test_select_top_k_skips_labelled_points_with_the_highest_scores():
    rng = np.random.default_rng(1)
    scores = rng.random(30).astype(np.float32)
    labelled = np.zeros(30, bool)
    labelled[:8] = True
    scores[:8] = [np.inf, 1e30, 10, 9, 8, 7, 6, np.nan]  # labelled points outscore the rest
    idx, top_scores = select_top_k(jnp.asarray(scores), jnp.asarray(labelled), 5)
    assert_valid_selection(idx, labelled, 5)
    np.testing.assert_array_equal(idx, reference_top_k(scores, labelled, 5))
    np.testing.assert_array_equal(top_scores, scores[np.asarray(idx)])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_select_top_k_with_nan_and_inf_scores_and_k_equal_to_unlabelled(jit):
    scores = np.array([np.nan, 0.3, -np.inf, 0.9, np.nan, 0.1, np.inf, -np.inf, 0.5, 0.2],
                      np.float32)
    labelled = np.array([0, 0, 0, 1, 0, 0, 1, 1, 0, 0], bool)
    k = int((~labelled).sum())  # 7: every unlabelled point, NaN and -inf included
    select = jax.jit(select_top_k, static_argnums=2) if jit else select_top_k
    idx, top_scores = select(jnp.asarray(scores), jnp.asarray(labelled), k)
    assert_valid_selection(idx, labelled, k)
    assert set(np.asarray(idx).tolist()) == set(np.flatnonzero(~labelled).tolist())
    # Finite scores first, best first; then the NaN / -inf points in any order.
    np.testing.assert_array_equal(np.asarray(idx)[:4], [8, 1, 9, 5])
    np.testing.assert_array_equal(top_scores, scores[np.asarray(idx)])  # NaN == NaN here

    # A smaller k takes only finite scores, the top ones; +inf unlabelled comes first.
    scores[5] = np.inf
    idx, _ = select(jnp.asarray(scores), jnp.asarray(labelled), 3)
    np.testing.assert_array_equal(idx, [5, 8, 1])


# --- map_chunks ------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 4, 5, 25])  # ragged, dividing, > n
def test_map_chunks_equals_applying_fn_to_everything(chunk_size):
    n = 10
    x = jnp.arange(n * 3, dtype=jnp.float32).reshape(n, 3) / 7.0

    def fn(i, x_chunk):
        del i
        return (jnp.sin(x_chunk).sum(axis=1), x_chunk * 2.0)  # a pytree of [chunk, ...]

    out = map_chunks(fn, x, chunk_size)
    expected = fn(None, x)
    assert jax.tree.structure(out) == jax.tree.structure(expected)
    for got, want in zip(out, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("chunk_size", "num_chunks"), [(1, 10), (4, 3), (5, 2), (25, 1)])
def test_map_chunks_passes_chunk_indices_in_order(chunk_size, num_chunks):
    n = 10
    x = jnp.zeros((n, 2))
    chunk_of = map_chunks(lambda i, x_chunk: jnp.full(x_chunk.shape[0], i), x, chunk_size)
    expected = np.repeat(np.arange(num_chunks), min(chunk_size, n))[:n]
    np.testing.assert_array_equal(chunk_of, expected)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 5, 7, 23])
def test_chunk_at_is_the_padded_chunk(chunk):
    x = jnp.arange(23 * 3, dtype=jnp.float32).reshape(23, 3) + 1.0
    padded = chunk_array(x, chunk)
    for i in range(padded.shape[0]):
        np.testing.assert_array_equal(chunk_at(x, jnp.int32(i), chunk), padded[i])


def test_map_chunks_reads_the_pool_in_place():
    """Working memory is one chunk's, not a padded copy of the pool (XLA's own memory
    analysis of the compiled pass: 50,000 rows of 1 KB, chunks of 512)."""
    x = jax.ShapeDtypeStruct((50_000, 256), jnp.float32)
    compiled = jax.jit(lambda x: map_chunks(lambda i, c: jnp.tanh(c).sum(1), x, 512)
                       ).lower(x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 50_000 * 256 * 4 / 10, f"{temp} bytes of temporaries"


# --- score_pool ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_mlp():
    model = mlp(3, hidden=(8,))
    params = jax.jit(lambda key: init_params(model, key, (2,)))(jax.random.key(0))
    x_pool = 2.0 * np.random.default_rng(0).standard_normal((36, 2)).astype(np.float32)
    return model, params, jnp.asarray(x_pool)


def plugin(model, params):
    return lambda key, x: plugin_predictive(key, model, PointMass(params), x)


@pytest.mark.slow
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_score_pool_equals_scoring_the_whole_pool(tiny_mlp, name):
    model, params, x_pool = tiny_mlp
    score = ACQUISITIONS[name].score
    probs = jax.nn.softmax(model.apply(params, x_pool))
    expected = score(jax.random.key(0), PredictiveOutput(probs))
    run = jax.jit(lambda key, chunk_size: score_pool(key, plugin(model, params), score, x_pool,
                                                     chunk_size), static_argnums=1)
    for chunk_size in (5, 12, 64):  # ragged, dividing the pool of 36, larger than the pool
        scores = run(jax.random.key(3), chunk_size)
        assert scores.shape == (36,)
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_score_pool_random_scores_differ_across_chunks():
    out = lambda key, x: PredictiveOutput(jnp.full((x.shape[0], 3), 1 / 3))
    x_pool = jnp.zeros((100, 2))
    scores = score_pool(jax.random.key(0), out, ACQUISITIONS["random"].score, x_pool, 10)
    assert scores.shape == (100,)
    assert len(np.unique(scores)) == 100  # no chunk repeats another's scores
    np.testing.assert_array_equal(
        scores, score_pool(jax.random.key(0), out, ACQUISITIONS["random"].score, x_pool, 10))


def test_score_pool_gives_every_chunk_the_same_predictive_key():
    """Sampling predictives must see the same posterior samples for every pool point."""

    def key_dependent_predict(key, x):
        row = jax.nn.softmax(jax.random.normal(key, (4,)))
        return PredictiveOutput(jnp.broadcast_to(row, (x.shape[0], 4)))

    scores = score_pool(jax.random.key(0), key_dependent_predict, ACQUISITIONS["entropy"].score,
                        jnp.zeros((30, 2)), 7)
    np.testing.assert_allclose(scores, np.full(30, float(scores[0])), rtol=1e-6)
