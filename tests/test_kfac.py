"""KFAC: exact for a Dense layer on one example; Conv factors equal their definitions built
from explicit patches and dense Jacobians; sampling and evidence match the dense form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxal.curvature import kfac
from jaxal.curvature.ggn import ggn_full
from jaxal.curvature.layerwise import _patch_gram, _patch_moments, kfac_factors
from jaxal.model import cnn, init_params, mlp
from jaxal.posteriors.laplace import log_det_precision, posterior_covariance, sample_laplace


def layer_block(params, dense, path):
    """The GGN block of one layer's [kernel; bias] in row-major [K+1, out] order."""
    flat, unravel = ravel_pytree(params)
    position = unravel(jnp.arange(flat.size, dtype=flat.dtype))["params"]
    for part in path:
        position = position[part]
    kernel = np.asarray(position["kernel"]).reshape(-1, position["bias"].size)
    index = np.concatenate([kernel, np.asarray(position["bias"])[None]]).astype(int).ravel()
    return dense[np.ix_(index, index)]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_kfac_posterior_samples_and_log_det_match_dense_kronecker_form():
    model = mlp(2, hidden=())
    rng = np.random.default_rng(1)
    params = init_params(model, jax.random.key(0), (2,))
    factors = kfac_factors(model, params, jnp.asarray(rng.normal(size=(20, 2)), jnp.float32))
    post = kfac.build(params, factors, 0.5)
    a, g = factors[("head",)]
    precision = np.kron(np.asarray(a, np.float64), np.asarray(g, np.float64)) + 0.5 * np.eye(6)
    np.testing.assert_allclose(float(log_det_precision(post)),
                               np.linalg.slogdet(precision)[1], rtol=1e-4)
    np.testing.assert_allclose(np.sort(np.ravel(kfac.precision_eigenvalues(post)[("head",)])),
                               np.linalg.eigvalsh(precision), rtol=1e-4, atol=1e-5)
    # γ = P − λ tr Σ, the effective number of parameters, from the dense inverse.
    np.testing.assert_allclose(float(kfac.effective_parameters(post)[("head",)]),
                               6 - 0.5 * np.trace(np.linalg.inv(precision)), rtol=1e-4)
    keys = jax.random.split(jax.random.key(2), 40_000)
    samples = np.asarray(jax.vmap(sample_laplace, in_axes=(0, None))(keys, post), np.float64)
    # Reorder the [kernel; bias] row-major block to the raveled (bias, kernel) order.
    index = layer_block(params, np.arange(36.0).reshape(6, 6), ("head",))[:, 0] / 6
    cov = np.zeros((6, 6))
    cov[np.ix_(index.astype(int), index.astype(int))] = np.linalg.inv(precision)
    np.testing.assert_allclose(np.asarray(posterior_covariance(post), np.float64), cov,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(samples.mean(0), np.asarray(post.mean),
                               atol=4 * np.sqrt(cov.diagonal().max() / 40_000))
    np.testing.assert_allclose(np.cov(samples.T), cov,
                               atol=4 * np.sqrt(2 * cov.diagonal().max() ** 2 / 40_000))


def explicit_patches(a):
    """[n, h, w, 9c] 3x3 SAME patches in the kernel's (kh, kw, c) order, by XLA's own op."""
    n, h, w, c = a.shape
    p = jax.lax.conv_general_dilated_patches(a, (3, 3), (1, 1), "SAME",   # (c, kh, kw) order
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return np.asarray(p).reshape(n, h, w, c, 3, 3).transpose(0, 1, 2, 4, 5, 3).reshape(
        n, h, w, 9 * c)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(3, 1, 1, 2), (2, 1, 5, 3), (4, 2, 3, 2), (3, 6, 4, 1),
                                   (2, 7, 7, 3)])
def test_patch_gram_equals_gram_of_explicit_patches(shape):
    """Correlations minus the outer ring equal Σ_n w_n Σ_t p̃ p̃ᵀ, down to 1-pixel grids."""
    rng = np.random.default_rng(sum(shape))
    with jax.enable_x64(True):
        a = jnp.asarray(rng.normal(size=shape))
        w = jnp.asarray(rng.uniform(size=shape[0]) * (np.arange(shape[0]) != 1))  # one zero
        rows = explicit_patches(a).reshape(shape[0], -1, 9 * shape[-1])
        rows = np.concatenate([rows, np.ones_like(rows[..., :1])], axis=-1)
        want = np.einsum("n,nti,ntj->ij", np.asarray(w), rows, rows)
        got = np.asarray(_patch_gram(_patch_moments(a, w)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("scanned", [False, True])
def test_conv_kfac_factors_equal_their_definitions(scanned, monkeypatch):
    """A_l = Σ w p̃ p̃ᵀ / (N T) and G_l = Σ_n w_n Σ_t J_ntᵀ Λ_n J_nt, with J_nt the dense
    Jacobian of the logits by the layer's output at position t: odd, non-square inputs,
    zero weights, a padded last chunk, and groups of chunks scanned or unrolled."""
    from jaxal.curvature import layerwise

    if scanned:   # one 2-example chunk per group: 3 groups in a scan
        monkeypatch.setattr(layerwise, "examples_per_group", lambda *args, **kwargs: 2)
    model = cnn(3, channels=(2, 3, 2), hidden=4)
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64),
                              init_params(model, jax.random.key(5), (10, 14, 1)))
        x = jnp.asarray(rng.normal(size=(5, 10, 14, 1)))
        w = jnp.asarray([1.0, 0.0, 2.0, 0.5, 1.0])
        # Jitted, as the posterior fit calls it: eagerly, every small float64 op of the
        # unrolled chunks compiles on its own (minutes).
        factors = jax.jit(lambda params, x, w: kfac_factors(model, params, x, w,
                                                            chunk_size=2))(params, x, w)
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)["perturbations"]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        logits, state = jax.jit(lambda: model.apply(
            {"params": params["params"], "perturbations": zeros}, x,
            mutable=["layer_inputs"]))()
        jac = jax.jit(jax.jacrev(lambda eps: model.apply(
            {"params": params["params"], "perturbations": eps}, x)))(zeros)
        patches = {name: explicit_patches(state["layer_inputs"]["body"][f"{name}_in"])
                   for name in ("Conv_0", "Conv_1", "Conv_2")}
        probs = np.asarray(jax.nn.softmax(logits))
    hess = np.stack([np.diag(p) - np.outer(p, p) for p in probs])         # Λ_n [n, C, C]
    wn = np.asarray(w)
    for name, p in patches.items():
        rows = p.reshape(p.shape[0], -1, p.shape[-1])
        rows = np.concatenate([rows, np.ones_like(rows[..., :1])], axis=-1)
        t = rows.shape[1]
        a_want = np.einsum("n,nti,ntj->ij", wn, rows, rows) / (wn.sum() * t)
        j = np.asarray(jac["body"][f"{name}_out"])                          # [n, C, n, h, w, o]
        j = np.stack([j[n, :, n] for n in range(len(wn))]).reshape(len(wn), 3, t, -1)
        g_want = np.einsum("n,ncto,ncd,ndtp->op", wn, j, hess, j)
        a_got, g_got = factors[("body", name)]
        np.testing.assert_allclose(np.asarray(a_got), a_want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(g_got), g_want, rtol=1e-8, atol=1e-12)
