"""Curvature forms against dense references built from per-example Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import dense_ggn
from jax.flatten_util import ravel_pytree

from jaxal.curvature.ggn import (
    CurvatureTooLargeError,
    check_dense_fits,
    ggn_diagonal,
    ggn_full,
    ggn_isotropic,
    hessian_diagonal,
    hessian_full,
    hessian_isotropic,
    output_hessian_sqrt,
)
from jaxal.curvature.last_layer import linear_head_ggn
from jaxal.curvature.layerwise import ggn_diagonal_layerwise
from jaxal.model import apply_head, cnn, init_params, mlp

# The generic forms, by (source, stored form).
GENERIC_FORMS = {
    ("ggn", "full"): ggn_full, ("ggn", "diag"): ggn_diagonal, ("ggn", "iso"): ggn_isotropic,
    ("hessian", "full"): hessian_full, ("hessian", "diag"): hessian_diagonal,
    ("hessian", "iso"): hessian_isotropic,
}


def tiny_models():
    """(name, logits_fn, params, x, y) for a small MLP, a tiny CNN and a last layer."""
    rng = np.random.default_rng(0)
    out = []
    model = mlp(3, hidden=(4,))
    params = init_params(model, jax.random.key(0), (2,))
    x = jnp.asarray(rng.normal(size=(7, 2)))
    out.append(("mlp", model.apply, params, x, jnp.asarray(rng.integers(0, 3, 7))))
    net = cnn(3, channels=(2, 3, 2), hidden=4)
    params = init_params(net, jax.random.key(1), (8, 8, 1))
    x = jnp.asarray(rng.normal(size=(5, 8, 8, 1)))
    out.append(("cnn", net.apply, params, x, jnp.asarray(rng.integers(0, 3, 5))))
    features = jnp.asarray(rng.normal(size=(9, 5)))
    head = {"params": {"head": {"kernel": jnp.asarray(rng.normal(size=(5, 4))),
                                "bias": jnp.asarray(rng.normal(size=4))}}}
    out.append(("last-layer", apply_head, head, features,
                jnp.asarray(rng.integers(0, 4, 9))))
    return out


@pytest.fixture(scope="module", params=[m[0] for m in tiny_models()])
def problem(request):
    with jax.enable_x64(True):
        _, fn, params, x, y = next(m for m in tiny_models() if m[0] == request.param)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(x, jnp.float64)
        yield fn, params, x, y, dense_ggn(fn, params, x)


def test_output_hessian_sqrt_factorises_softmax_hessian():
    for p in ([0.5, 0.3, 0.15, 0.05], [1e-9, 1e-9, 1.0 - 2e-9, 0.0], [0.0, 0.0, 0.0, 1.0]):
        p = np.asarray(p)
        a = np.asarray(output_hessian_sqrt(jnp.asarray(p)))
        assert a.shape == (4, 3)                       # rank C-1: C-1 columns
        np.testing.assert_allclose(a @ a.T, np.diag(p) - np.outer(p, p), atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [2, 3, 64])
def test_ggn_full_diag_iso_equal_dense_reference(problem, chunk_size):
    fn, params, x, y, reference = problem
    with jax.enable_x64(True):
        full = np.asarray(ggn_full(fn, params, x, y, chunk_size=chunk_size))
        diag = np.asarray(ggn_diagonal(fn, params, x, y, chunk_size=chunk_size))
        iso = float(ggn_isotropic(fn, params, x, y, chunk_size=chunk_size))
    assert full.dtype == np.float64
    np.testing.assert_allclose(full, reference, atol=1e-9, rtol=1e-7)
    np.testing.assert_allclose(diag, np.diag(reference), atol=1e-9, rtol=1e-7)
    np.testing.assert_allclose(iso, np.trace(reference) / reference.shape[0], rtol=1e-7)
    assert np.linalg.eigvalsh(full).min() > -1e-9, "a GGN is positive semi-definite"


@pytest.mark.slow
def test_ggn_equals_hessian_for_linear_softmax():
    """For logits linear in θ the GGN is the exact Hessian of the NLL."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        params = {"params": {"head": {"kernel": jnp.asarray(rng.normal(size=(3, 4))),
                                      "bias": jnp.asarray(rng.normal(size=4))}}}
        x = jnp.asarray(rng.normal(size=(11, 3)))
        y = jnp.asarray(rng.integers(0, 4, 11))
        ggn = np.asarray(ggn_full(apply_head, params, x, y))
        hess = np.asarray(hessian_full(apply_head, params, x, y))

        flat, unravel = ravel_pytree(params)

        def nll(theta):
            logp = jax.nn.log_softmax(apply_head(unravel(theta), x))
            return -logp[jnp.arange(11), y].sum()

        reference = np.asarray(jax.hessian(nll)(flat))
    np.testing.assert_allclose(hess, reference, atol=1e-10)
    np.testing.assert_allclose(ggn, reference, atol=1e-9)


@pytest.mark.slow
def test_hessian_is_ggn_plus_the_residual_term(problem, request):
    """H = G + Σ_n Σ_c (p_nc - [y_n = c]) ∇²_θ f_c(x_n; θ): the GGN drops the residual
    term, which vanishes only where the logits are linear in θ (the last layer)."""
    fn, params, x, y, ggn = problem
    with jax.enable_x64(True):
        hess = np.asarray(hessian_full(fn, params, x, y))
        flat, unravel = ravel_pytree(params)
        logits = fn(params, x)
        weights = jax.nn.softmax(logits) - jax.nn.one_hot(y, logits.shape[-1],
                                                           dtype=logits.dtype)
        # ∇²_θ of Σ w_nc f_c(x_n; θ) with the weights held fixed: the residual term.
        residual = np.asarray(jax.hessian(lambda t: (weights * fn(unravel(t), x)).sum())(flat))
    np.testing.assert_allclose(hess, ggn + residual, atol=1e-9)
    gap = np.linalg.norm(hess - ggn) / np.linalg.norm(ggn)
    if request.node.callspec.params["problem"] == "last-layer":
        assert gap < 1e-12, f"a linear model's Hessian is its GGN (relative gap {gap:.1e})"
    else:
        assert gap > 0.1, f"the network's Hessian is its GGN (relative gap {gap:.1e})"
        # The GGN is positive semi-definite; the residual term makes the Hessian indefinite.
        assert np.linalg.eigvalsh(hess).min() < -0.1


def test_hessian_full_matches_finite_differences_of_the_gradient(problem):
    fn, params, x, y, _ = problem
    with jax.enable_x64(True):
        hess = np.asarray(hessian_full(fn, params, x, y))
        flat, unravel = ravel_pytree(params)
        grad = jax.jit(jax.grad(lambda t: -(jax.nn.log_softmax(fn(unravel(t), x))
                                            [jnp.arange(x.shape[0]), y]).sum()))
        # Central finite differences of the gradient along a random direction.
        v = jnp.asarray(np.random.default_rng(1).normal(size=flat.size))
        eps = 1e-5
        fd = (grad(flat + eps * v) - grad(flat - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hess @ np.asarray(v), np.asarray(fd), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(hess, hess.T, atol=1e-10)


def test_dense_forms_refuse_what_does_not_fit():
    with pytest.raises(CurvatureTooLargeError, match=r"130,890 x 130,890 .* 63\.8 GiB"):
        check_dense_fits(130_890)
    net = cnn(10)
    params = jax.eval_shape(lambda: init_params(net, jax.random.key(0), (28, 28, 1)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    for source in ("ggn", "hessian"):
        with pytest.raises(CurvatureTooLargeError, match="use structure 'diag'"):
            GENERIC_FORMS[(source, "full")](net.apply, params, jnp.zeros((2, 28, 28, 1)),
                                            jnp.zeros(2, jnp.int32))


@pytest.mark.slow
def test_weights_drop_padded_examples(problem):
    """A 0/1-weighted padded buffer gives the curvature of the weighted-in examples only."""
    fn, params, x, y, _ = problem
    keep = np.arange(x.shape[0]) % 2 == 0
    with jax.enable_x64(True):
        padded = jnp.concatenate([x, jnp.zeros_like(x[:2])])
        y_pad = jnp.concatenate([y, jnp.zeros(2, y.dtype)])
        w = jnp.asarray(np.concatenate([keep, [False, False]]))
        for form in GENERIC_FORMS.values():
            form = jax.jit(form, static_argnums=0, static_argnames="chunk_size")
            got = np.asarray(form(fn, params, padded, y_pad, w, chunk_size=3))
            want = np.asarray(form(fn, params, x[keep], y[keep]))
            np.testing.assert_allclose(got, want, atol=1e-9, rtol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_layerwise_diagonal_equals_generic(name):
    """The per-layer GGN diagonal (one C-cotangent backward pass) equals the generic one."""
    model = mlp(3, hidden=(4, 5)) if name == "mlp" else cnn(3, channels=(2, 3, 2), hidden=4)
    shape = (2,) if name == "mlp" else (8, 8, 1)
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                              init_params(model, jax.random.key(2), shape))
        x = jnp.asarray(rng.normal(size=(9, *shape)))
        w = jnp.asarray(rng.integers(0, 2, 9), jnp.float64)
        generic = np.asarray(ggn_diagonal(model.apply, params, x, None, w, chunk_size=4))
        layerwise = np.asarray(ggn_diagonal_layerwise(model, params, x, w, chunk_size=4))
    np.testing.assert_allclose(layerwise, generic, rtol=1e-9, atol=1e-12)


def test_linear_head_ggn_equals_dense_jacobian_form():
    """The Kronecker form Σ_n φ̃φ̃ᵀ ⊗ Λ_n of the head's GGN against J_nᵀ Λ_n J_n, weighted."""
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        head = {"params": {"head": {"kernel": jnp.asarray(rng.normal(size=(5, 4))),
                                    "bias": jnp.asarray(rng.normal(size=4))}}}
        phi = jnp.asarray(rng.normal(size=(9, 5)))
        w = jnp.asarray(rng.integers(0, 2, 9), jnp.float64)
        got = np.asarray(linear_head_ggn(head, phi, w))
        keep = np.asarray(w) > 0
        want = dense_ggn(apply_head, head, phi[keep])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
