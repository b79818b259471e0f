"""Tests for jaxal.objective against numpy hand computations, in float64 and float32.

The references are written out elementwise (log-softmax by hand, the Gaussian log density
per parameter), so they share no code with ``jaxal.objective``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxal.model import init_params, mlp
from jaxal.objective import log_likelihood, log_prior, map_objective, minibatch_objective

# Tolerances by precision: deterministic float64 ~1e-10 here (short sums), float32 ~1e-5.
RTOL = {"float64": 1e-10, "float32": 1e-5}
PRIOR_PRECISIONS = [0.1, 1.0, 37.5]


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    """Runs the test body with x64 on for float64, and yields the numpy dtype name."""
    with jax.enable_x64(request.param == "float64"):
        yield request.param


def small_mlp_params(dtype):
    """Parameters of ``mlp(3, hidden=(4, 4))`` on 2-D inputs (51 of them), built by hand."""
    rng = np.random.default_rng(0)
    shapes = {"Dense_0": (2, 4), "Dense_1": (4, 4)}

    def dense(fan_in, fan_out):
        return {"kernel": jnp.asarray(rng.standard_normal((fan_in, fan_out)).astype(dtype)),
                "bias": jnp.asarray(0.1 * rng.standard_normal(fan_out).astype(dtype))}

    return {"params": {"body": {name: dense(*shape) for name, shape in shapes.items()},
                       "head": dense(4, 3)}}


def numpy_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def numpy_log_probs_at_labels(logits, labels):
    """log softmax(logits_n)[y_n] for every row n, [n]."""
    log_probs = numpy_log_softmax(logits)
    return np.array([log_probs[i, y] for i, y in enumerate(np.asarray(labels))])


def numpy_log_prior(params, prior_precision):
    """Σ over every parameter θ_i of log N(θ_i; 0, 1/λ) = -λθ_i²/2 + log(λ/2π)/2."""
    theta = np.concatenate([np.asarray(p, np.float64).ravel() for p in jax.tree.leaves(params)])
    per_param = -0.5 * prior_precision * theta**2 + 0.5 * np.log(prior_precision / (2 * np.pi))
    return per_param.sum()


def logits_and_labels(dtype, n=6, c=3):
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    return jnp.asarray(logits.astype(dtype)), jnp.asarray(labels), logits.astype(dtype)


def test_small_mlp_params_fit_the_model():
    params = small_mlp_params("float32")
    reference = jax.eval_shape(lambda key: init_params(mlp(3, hidden=(4, 4)), key, (2,)),
                               jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(reference)
    assert [p.shape for p in jax.tree.leaves(params)] == [
        p.shape for p in jax.tree.leaves(reference)]
    assert ravel_pytree(params)[0].size == (2 * 4 + 4) + (4 * 4 + 4) + (4 * 3 + 3)


@pytest.mark.parametrize("prior_precision", PRIOR_PRECISIONS)
def test_log_prior_is_the_gaussian_log_density(dtype, prior_precision):
    params = small_mlp_params(dtype)
    value = log_prior(params, prior_precision)
    assert value.dtype == dtype
    np.testing.assert_allclose(value, numpy_log_prior(params, prior_precision),
                               rtol=RTOL[dtype], atol=0)


def test_log_likelihood_is_the_sum_of_log_softmax_at_the_labels(dtype):
    logits, labels, logits_np = logits_and_labels(dtype)
    expected = numpy_log_probs_at_labels(logits_np, labels).sum()
    np.testing.assert_allclose(log_likelihood(logits, labels), expected, rtol=RTOL[dtype])


@pytest.mark.parametrize("weights", [[1, 0, 1, 1, 0, 1], [0.5, 2.0, 0.0, 1.0, 3.0, 0.25]],
                         ids=["mask", "real"])
def test_log_likelihood_with_weights_is_the_weighted_sum(dtype, weights):
    logits, labels, logits_np = logits_and_labels(dtype)
    weights = np.asarray(weights, dtype)
    expected = (weights * numpy_log_probs_at_labels(logits_np, labels)).sum()
    np.testing.assert_allclose(log_likelihood(logits, labels, jnp.asarray(weights)), expected,
                               rtol=RTOL[dtype])


def test_log_likelihood_of_padding_with_zero_weight_is_ignored(dtype):
    """A 0/1 mask equals dropping the masked rows (how padded batches keep a static shape)."""
    logits, labels, _ = logits_and_labels(dtype)
    weights = jnp.array([1, 1, 1, 1, 0, 0], dtype)
    np.testing.assert_allclose(log_likelihood(logits, labels, weights),
                               log_likelihood(logits[:4], labels[:4]), rtol=RTOL[dtype])


@pytest.mark.parametrize("prior_precision", PRIOR_PRECISIONS)
def test_map_objective_is_negative_log_joint(dtype, prior_precision):
    params = small_mlp_params(dtype)
    logits, labels, logits_np = logits_and_labels(dtype)
    log_probs = numpy_log_probs_at_labels(logits_np, labels)
    nll = -log_probs.sum()
    expected = nll - numpy_log_prior(params, prior_precision)
    np.testing.assert_allclose(map_objective(params, logits, labels, prior_precision),
                               expected, rtol=RTOL[dtype])

    weights = np.array([1, 0, 1, 0, 1, 1], dtype)
    nll_weighted = -(weights * log_probs).sum()
    np.testing.assert_allclose(
        map_objective(params, logits, labels, prior_precision, jnp.asarray(weights)),
        nll_weighted - numpy_log_prior(params, prior_precision), rtol=RTOL[dtype])


@pytest.mark.parametrize("prior_precision", PRIOR_PRECISIONS)
def test_minibatch_objective_is_mean_nll_plus_scaled_weight_decay(dtype, prior_precision):
    params = small_mlp_params(dtype)
    logits, labels, logits_np = logits_and_labels(dtype)
    num_data = 40  # the labelled-set size, larger than the batch of 6
    mean_nll = -numpy_log_probs_at_labels(logits_np, labels).mean()
    theta = np.concatenate([np.asarray(p, np.float64).ravel() for p in jax.tree.leaves(params)])
    expected = mean_nll + prior_precision / (2 * num_data) * np.sum(theta**2)
    value = minibatch_objective(params, logits, labels, prior_precision,
                                jnp.asarray(num_data, dtype))
    np.testing.assert_allclose(value, expected, rtol=RTOL[dtype])


def test_full_batch_minibatch_gradient_times_n_is_the_map_gradient():
    """On the whole data set, N * ∇(minibatch objective) = ∇L(θ): the same minimiser.

    The two objectives differ by the factor N and by the constant -P/2 log(λ/2π) of the
    prior's normaliser, which has no gradient.
    """
    model = mlp(3, hidden=(4, 4))
    prior_precision, n = 3.7, 25

    @jax.jit
    def objectives_and_gradients(params, x, labels):
        def map_loss(params):
            return map_objective(params, model.apply(params, x), labels, prior_precision)

        def minibatch_loss(params):
            return minibatch_objective(params, model.apply(params, x), labels,
                                       prior_precision, jnp.asarray(n, x.dtype))

        return (jax.value_and_grad(map_loss)(params),
                jax.value_and_grad(minibatch_loss)(params))

    with jax.enable_x64(True):
        params = small_mlp_params("float64")
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((n, 2)))
        labels = jnp.asarray(rng.integers(0, 3, n))
        (map_value, grad_map), (minibatch_value, grad_minibatch) = objectives_and_gradients(
            params, x, labels)
        # Flattened and moved to numpy inside the context, so they stay float64.
        grad_map = np.asarray(ravel_pytree(grad_map)[0])
        grad_minibatch = np.asarray(ravel_pytree(grad_minibatch)[0])
        map_value, minibatch_value = float(map_value), float(minibatch_value)

    assert grad_map.dtype == np.float64
    np.testing.assert_allclose(n * grad_minibatch, grad_map, rtol=1e-10, atol=1e-12)
    # The objectives themselves: L(θ)/N - minibatch(θ) = -P/(2N) log(λ/2π).
    num_params = grad_map.size
    constant = -0.5 * num_params * np.log(prior_precision / (2 * np.pi)) / n
    np.testing.assert_allclose(map_value / n - minibatch_value, constant, rtol=1e-10)
