"""KFAC: exact for a Dense layer on one example; sampling and evidence match its dense form."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxal.curvature import ggn_full
from jaxal.layerwise import kfac_factors
from jaxal.model import cnn, init_params, mlp
from jaxal.posterior import kfac_laplace, log_det_precision, sample_laplace


def layer_block(params, dense, path):
    """The GGN block of one layer's [kernel; bias] in row-major [K+1, out] order."""
    flat, unravel = ravel_pytree(params)
    position = unravel(jnp.arange(flat.size, dtype=flat.dtype))["params"]
    for part in path:
        position = position[part]
    kernel = np.asarray(position["kernel"]).reshape(-1, position["bias"].size)
    index = np.concatenate([kernel, np.asarray(position["bias"])[None]]).astype(int).ravel()
    return dense[np.ix_(index, index)]


def test_kfac_is_exact_for_dense_layers_on_one_example():
    model = mlp(3, hidden=(4,))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64),
                              init_params(model, jax.random.key(0), (2,)))
        x = jnp.asarray([[0.3, -1.2]])
        dense = np.asarray(ggn_full(model.apply, params, x))
        factors = kfac_factors(model, params, x)
    assert set(factors) == {("body", "Dense_0"), ("head",)}
    for path, (a, g) in factors.items():
        np.testing.assert_allclose(np.kron(np.asarray(a), np.asarray(g)),
                                   layer_block(params, dense, path), atol=1e-12)


def test_kfac_is_close_on_more_examples_and_conv_factors_are_psd():
    model = mlp(3, hidden=(4,))
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64),
                              init_params(model, jax.random.key(0), (2,)))
        x = jnp.asarray(rng.normal(size=(30, 2)) * 0.3)
        dense = np.asarray(ggn_full(model.apply, params, x))
        factors = kfac_factors(model, params, x, chunk_size=7)
        for path, (a, g) in factors.items():
            exact = layer_block(params, dense, path)
            approx = np.kron(np.asarray(a), np.asarray(g))
            assert np.linalg.norm(approx - exact) < 0.2 * np.linalg.norm(exact), path
        net = cnn(3, channels=(2, 3, 2), hidden=4)
        cnn_params = init_params(net, jax.random.key(1), (8, 8, 1))
        conv = kfac_factors(net, cnn_params, jnp.asarray(rng.normal(size=(5, 8, 8, 1))))
    assert len(conv) == 5
    a, g = conv[("body", "Conv_1")]
    assert a.shape == (9 * 2 + 1, 9 * 2 + 1) and g.shape == (3, 3)
    for a, g in conv.values():
        assert np.linalg.eigvalsh(np.asarray(a)).min() > -1e-6
        assert np.linalg.eigvalsh(np.asarray(g)).min() > -1e-6


def test_kfac_posterior_samples_and_log_det_match_dense_kronecker_form():
    model = mlp(2, hidden=())
    rng = np.random.default_rng(1)
    params = init_params(model, jax.random.key(0), (2,))
    factors = kfac_factors(model, params, jnp.asarray(rng.normal(size=(20, 2)), jnp.float32))
    post = kfac_laplace(params, factors, 0.5)
    a, g = factors[("head",)]
    precision = np.kron(np.asarray(a, np.float64), np.asarray(g, np.float64)) + 0.5 * np.eye(6)
    np.testing.assert_allclose(float(log_det_precision(post)),
                               np.linalg.slogdet(precision)[1], rtol=1e-4)
    keys = jax.random.split(jax.random.key(2), 40_000)
    samples = np.asarray(jax.vmap(sample_laplace, in_axes=(0, None))(keys, post), np.float64)
    # Reorder the [kernel; bias] row-major block to the raveled (bias, kernel) order.
    index = layer_block(params, np.arange(36.0).reshape(6, 6), ("head",))[:, 0] / 6
    cov = np.zeros((6, 6))
    cov[np.ix_(index.astype(int), index.astype(int))] = np.linalg.inv(precision)
    np.testing.assert_allclose(samples.mean(0), np.asarray(post.mean),
                               atol=4 * np.sqrt(cov.diagonal().max() / 40_000))
    np.testing.assert_allclose(np.cov(samples.T), cov,
                               atol=4 * np.sqrt(2 * cov.diagonal().max() ** 2 / 40_000))
