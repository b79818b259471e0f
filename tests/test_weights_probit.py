"""All-weights probit variance against dense J Σ Jᵀ; the sampled GGN against the exact one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import bound, layer_index
from jax.flatten_util import ravel_pytree

from jaxal.config import ALConfig, LaplaceOptions
from jaxal.curvature import STRUCTURES
from jaxal.curvature.layerwise import ggn_diagonal_layerwise, kfac_factors, sampled_factors
from jaxal.model import cnn, init_params, mlp
from jaxal.posteriors.laplace import WeightsLaplace, posterior_covariance, weights_logit_variance
from jaxal.predictive import probit_predictive


def problem(name):
    model = mlp(3, hidden=(4, 5)) if name == "mlp" else cnn(3, channels=(2, 3, 2), hidden=4)
    shape = (2,) if name == "mlp" else (8, 8, 1)
    rng = np.random.default_rng(7)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                          init_params(model, jax.random.key(3), shape))
    return model, params, jnp.asarray(rng.normal(size=(6, *shape)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("structure", ["diag", "iso", "kfac"])
def test_all_weights_logit_variance_equals_dense(name, structure):
    with jax.enable_x64(True):
        model, params, x = problem(name)
        flat, unravel = ravel_pytree(params)
        lam = 0.7
        if structure == "kfac":
            factors = kfac_factors(model, params, x)
            inner = STRUCTURES["kfac"].build(params, factors, lam)
            cov = np.zeros((flat.size, flat.size))
            for path, (a, g) in factors.items():
                idx = layer_index(params, path)
                block = np.kron(np.asarray(a), np.asarray(g)) + lam * np.eye(idx.size)
                cov[np.ix_(idx, idx)] = np.linalg.inv(block)
        else:
            diagonal = ggn_diagonal_layerwise(model, params, x)
            inner = STRUCTURES[structure].build(
                flat, diagonal if structure == "diag" else diagonal.mean(), lam)
            cov = np.asarray(posterior_covariance(inner))
        post = WeightsLaplace(params, inner)
        jac = np.asarray(jax.jacrev(lambda t: model.apply(unravel(t), x))(flat))  # [n, C, P]
        want = np.einsum("ncp,pq,ncq->nc", jac, cov, jac)
        got = np.asarray(weights_logit_variance(model, post, x))
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
        # The whole per-point covariance (the glm-logits predictive), cross-class terms too.
        full = np.asarray(weights_logit_variance(model, post, x, full=True))
        np.testing.assert_allclose(full, np.einsum("ncp,pq,ndq->ncd", jac, cov, jac),
                                   rtol=1e-8, atol=1e-12)
        config = ALConfig(posterior="laplace", predictive="probit",
                          posterior_options=LaplaceOptions(structure=structure, subset="all"))
        probs = probit_predictive(None, model, post, x, bound(config)).probs
        logits = model.apply(params, x)
        np.testing.assert_allclose(
            np.asarray(probs), np.asarray(jax.nn.softmax(logits / jnp.sqrt(1 + jnp.pi / 8 * want))),
            rtol=1e-8)


def test_sampled_factors_are_unbiased_for_the_softmax_hessian():
    logits = jnp.asarray([[0.3, -1.0, 2.0], [0.0, 0.0, 0.0]])
    cols = sampled_factors(jax.random.key(0), 40_000)(logits)            # [n, C, M]
    estimate = np.asarray(jnp.einsum("ncm,ndm->ncd", cols, cols))
    p = np.asarray(jax.nn.softmax(logits))
    exact = np.stack([np.diag(q) - np.outer(q, q) for q in p])
    # Each entry is a mean of 40,000 terms bounded by 1: standard error <= 1/200.
    np.testing.assert_allclose(estimate, exact, atol=4 / 200)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_sampled_ggn_diagonal_averages_to_the_exact_one(name):
    with jax.enable_x64(True):
        model, params, x = problem(name)
        exact = np.asarray(ggn_diagonal_layerwise(model, params, x))
        one = np.asarray(ggn_diagonal_layerwise(
            model, params, x, factors_fn=sampled_factors(jax.random.key(1))))
        many = np.asarray(ggn_diagonal_layerwise(
            model, params, x, factors_fn=sampled_factors(jax.random.key(2), 4000)))
    assert not np.allclose(one, exact, rtol=1e-3)       # one label per example: noisy
    assert np.abs(many - exact).sum() < 0.05 * np.abs(exact).sum()


@pytest.mark.slow
def test_many_examples_scan_over_groups_and_match_one_chunk(monkeypatch):
    """Beyond a group's memory budget groups of chunks are scanned, with the same result."""
    from jaxal.curvature import layerwise

    model = mlp(3, hidden=(4,))
    rng = np.random.default_rng(9)
    # The toy MLP holds (2 x 4 + 2 x 3) float64 per example: ~1000 examples per group.
    monkeypatch.setattr(layerwise, "GROUP_BYTES", 120_000)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                              init_params(model, jax.random.key(0), (2,)))
        x = jnp.asarray(rng.normal(size=(2300, 2)))
        w = jnp.asarray(rng.integers(0, 2, 2300), jnp.float64)
        assert 700 <= layerwise.examples_per_group(model, params, x) < 1400
        # chunk 700: 4 chunks, one per group, the last one padded.
        scanned = np.asarray(ggn_diagonal_layerwise(model, params, x, w, chunk_size=700))
        single = np.asarray(ggn_diagonal_layerwise(model, params, x, w, chunk_size=2300))
        np.testing.assert_allclose(scanned, single, rtol=1e-10)
        k_scanned = kfac_factors(model, params, x, w, chunk_size=700)
        k_single = kfac_factors(model, params, x, w, chunk_size=2300)
        for path in k_single:
            for a, b in zip(k_scanned[path], k_single[path], strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)
