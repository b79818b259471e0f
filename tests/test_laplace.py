"""Laplace posteriors: evidence against closed forms, prior scaling, sample moments, and
the all-weights MC predictive against a loop over weight samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import bound, fit_posterior
from jax.flatten_util import ravel_pytree

from jaxal.config import ALConfig, LaplaceOptions
from jaxal.curvature import STRUCTURES
from jaxal.curvature.ggn import ggn_full
from jaxal.model import apply_head, cnn, init_params, mlp
from jaxal.objective import map_objective
from jaxal.posteriors.laplace import (
    WeightsLaplace,
    fit_prior_precision,
    log_marginal_likelihood,
    posterior_covariance,
    sample_laplace,
)
from jaxal.predictive import mc_predictive


def linear_regression(seed=0, n=30, p=4, noise=0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = x @ rng.normal(size=p) + noise * rng.normal(size=n)
    return x, y, noise


def closed_form_evidence(x, y, noise, lam):
    """log N(y; 0, σ² I + X Xᵀ / λ), the exact marginal likelihood."""
    cov = noise**2 * np.eye(len(y)) + x @ x.T / lam
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (y @ np.linalg.solve(cov, y) + logdet + len(y) * np.log(2 * np.pi))


def laplace_linear_regression(x, y, noise, lam):
    """Laplace is exact here: θ* = (XᵀX/σ² + λI)⁻¹ Xᵀy/σ², H = XᵀX/σ²."""
    h = x.T @ x / noise**2
    mean = np.linalg.solve(h + lam * np.eye(x.shape[1]), x.T @ y / noise**2)
    resid = y - x @ mean
    ll = -0.5 * (resid @ resid / noise**2 + len(y) * np.log(2 * np.pi * noise**2))
    return jnp.asarray(mean), jnp.asarray(h), ll


@pytest.mark.parametrize("lam", [0.1, 1.0, 7.0])
def test_evidence_of_linear_regression_matches_closed_form(lam):
    x, y, noise = linear_regression()
    with jax.enable_x64(True):
        mean, h, ll = laplace_linear_regression(x, y, noise, lam)
        post = STRUCTURES["full"].build(mean, h, lam)
        lml = float(log_marginal_likelihood(post, ll))
        # Differentiable in λ: compare d/dλ with a finite difference of the closed form
        # (θ* fixed: at θ* the evidence's dependence on θ* is stationary to first order).
        grad = float(jax.grad(lambda lam_: log_marginal_likelihood(post, ll, lam_))(lam))
    np.testing.assert_allclose(lml, closed_form_evidence(x, y, noise, lam), rtol=1e-10)
    eps = 1e-5 * lam
    fd = (closed_form_evidence(x, y, noise, lam + eps)
          - closed_form_evidence(x, y, noise, lam - eps)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_fit_prior_precision_maximises_the_evidence():
    x, y, noise = linear_regression(seed=1)
    with jax.enable_x64(True):
        mean, h, ll = laplace_linear_regression(x, y, noise, 1.0)
        post = STRUCTURES["full"].build(mean, h, 1.0)
        fitted = float(fit_prior_precision(post, ll, init=1.0, steps=500))
        grid = np.exp(np.linspace(-6, 6, 4001))
        values = [float(log_marginal_likelihood(post, ll, g)) for g in grid[::20]]
    best = grid[::20][int(np.argmax(values))]
    np.testing.assert_allclose(fitted, best, rtol=0.08)
    with jax.enable_x64(True):
        at_fit = float(log_marginal_likelihood(post, ll, fitted))
    assert at_fit >= max(values) - 1e-6


@pytest.mark.slow
def test_precision_uses_the_map_objectives_prior_scaling():
    """Bayesian logistic regression: GGN + λI at θ_MAP equals the Hessian of L(θ)."""
    rng = np.random.default_rng(2)
    lam = 0.7
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(40, 3)))
        y = jnp.asarray(rng.integers(0, 3, 40))
        params = {"params": {"head": {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)}}}
        flat, unravel = ravel_pytree(params)
        objective = lambda t: map_objective(unravel(t), apply_head(unravel(t), x), y, lam)
        for _ in range(30):  # Newton's method: the objective is strictly convex
            flat = flat - jnp.linalg.solve(jax.hessian(objective)(flat),
                                           jax.grad(objective)(flat))
        assert float(jnp.abs(jax.grad(objective)(flat)).max()) < 1e-10
        curvature = ggn_full(apply_head, unravel(flat), x, y)
        post = STRUCTURES["full"].build(flat, curvature, lam)
        precision = np.linalg.inv(np.asarray(posterior_covariance(post)))
        reference = np.asarray(jax.hessian(objective)(flat))
    np.testing.assert_allclose(precision, reference, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("structure", ["full", "diag", "iso"])
def test_sample_moments_match_the_posterior(structure):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4))
    curvature = {"full": a @ a.T, "diag": np.array([0.5, 2.0, 4.0, 9.0]), "iso": 3.0}[structure]
    mean = jnp.asarray([1.0, -2.0, 0.5, 3.0])
    post = STRUCTURES[structure].build(mean, jnp.asarray(curvature, jnp.float32), 0.8)
    num_samples = 40_000
    keys = jax.random.split(jax.random.key(0), num_samples)
    samples = np.asarray(jax.vmap(sample_laplace, in_axes=(0, None))(keys, post), np.float64)
    cov = np.asarray(posterior_covariance(post), np.float64)
    sd = np.sqrt(np.diag(cov))
    # Monte Carlo tolerances: 4 standard errors of the mean and of the covariance.
    np.testing.assert_array_less(np.abs(samples.mean(0) - np.asarray(mean)),
                                 4 * sd / np.sqrt(num_samples))
    se_cov = 4 * np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / num_samples)
    np.testing.assert_array_less(np.abs(np.cov(samples.T) - cov), se_cov)


def test_indefinite_hessian_is_clipped_not_nan():
    h = jnp.asarray([[2.0, 0.0], [0.0, -5.0]])
    post = STRUCTURES["full"].build(jnp.zeros(2), h, 0.5)
    np.testing.assert_allclose(np.sort(np.asarray(post.eigenvalues)), [0.0, 2.0])
    np.testing.assert_allclose(float(log_marginal_likelihood(post, jnp.asarray(0.0))),
                               np.log(0.5) - 0.5 * (np.log(2.5) + np.log(0.5)), rtol=1e-6)
    assert np.isfinite(np.asarray(sample_laplace(jax.random.key(0), post))).all()
    diag = STRUCTURES["diag"].build(jnp.zeros(2), jnp.asarray([2.0, -5.0]), 0.5)
    np.testing.assert_allclose(np.asarray(diag.curvature), [2.0, 0.0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("structure", ["diag", "iso"])
def test_all_weights_mc_predictive_equals_a_loop_over_weight_samples(name, structure):
    """``mc_predictive`` of an all-weights posterior against a plain loop over samples:

        θ_s = θ_MAP + z_s / √(d + λ),  z_s ~ N(0, I) from the s-th key of split(key, S),
        p_s = softmax(f(x; θ_s)),  p = 1/S Σ_s p_s.
    """
    model = mlp(3, hidden=(4, 5)) if name == "mlp" else cnn(3, channels=(2, 3, 2), hidden=4)
    shape = (2,) if name == "mlp" else (8, 8, 1)
    rng = np.random.default_rng(0)
    params = init_params(model, jax.random.key(1), shape)
    x = jnp.asarray(rng.normal(size=(6, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 6))
    num_samples = 8
    config = ALConfig(posterior="laplace", predictive="mc", posterior_options=LaplaceOptions(
        structure=structure, subset="all", samples=num_samples, prior_precision=0.5,
        prior_fit="none"))
    posterior = fit_posterior(jax.random.key(2), model, params, x, y, jnp.ones(6), config)
    assert isinstance(posterior, WeightsLaplace)
    key = jax.random.key(4)
    out = jax.jit(lambda k: mc_predictive(k, model, posterior, x, bound(config)))(key)

    mean, unravel = ravel_pytree(params)
    precision = posterior.weights.curvature + posterior.weights.prior_precision
    expected = []
    for key_s in jax.random.split(key, num_samples):
        theta = mean + jax.random.normal(key_s, mean.shape, mean.dtype) / jnp.sqrt(precision)
        expected.append(np.asarray(jax.nn.softmax(model.apply(unravel(theta), x))))
    expected = np.stack(expected)
    np.testing.assert_allclose(np.asarray(out.sample_probs), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.probs), expected.mean(0), atol=1e-5)
    # The samples move the predictive: this is no plugin compared with itself.
    plugin = np.asarray(jax.nn.softmax(model.apply(params, x)))
    assert np.abs(expected - plugin).max() > 1e-2
