"""The evidence at the tangent linear model's mode (``jaxal.posteriors.evidence``) against dense
references on a tiny MLP in float64: the explicit Jacobian J [n, c, p] (``jax.jacfwd``),
Newton's method on the raveled parameters with dense solves, ``slogdet`` and ``inv`` of
each structure's precision as a dense matrix, finite differences in log λ."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compilations, layer_index
from jax.flatten_util import ravel_pytree

from jaxal.curvature import STRUCTURES
from jaxal.curvature.layerwise import kfac_factors
from jaxal.model import apply_head, init_params, mlp
from jaxal.posteriors.evidence import (
    effective_dimension,
    evidence_diagnosis,
    fit_prior_precision_linear_mode,
    linear_mode,
    log_marginal_likelihood_at_mode,
    mackay_update,
    posterior_variance,
)
from jaxal.posteriors.laplace import curvature_problem, head_params, layer_groups

NUM_REAL, NUM_PAD, NUM_CLASSES = 20, 4, 3
LAYER_LAMBDA = np.array([0.5, 2.0, 1.5])      # Dense_0, Dense_1, head


class Problem:
    """θ*, the labelled buffer (20 real rows, 4 padding rows with other inputs and labels)
    and the dense reference quantities of the tangent linear model at θ*."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.model = mlp(NUM_CLASSES, hidden=(5, 4))
        params = init_params(self.model, jax.random.key(0), (2,))
        # θ* away from any mode (scaled init), so that w̃ differs from it.
        self.params = jax.tree.map(lambda a: 1.5 * jnp.asarray(a, jnp.float64), params)
        self.x = jnp.asarray(rng.normal(size=(NUM_REAL + NUM_PAD, 2)) * 2.0)
        self.y = jnp.asarray(rng.integers(0, NUM_CLASSES, NUM_REAL + NUM_PAD))
        self.weights = jnp.asarray(np.r_[np.ones(NUM_REAL), np.zeros(NUM_PAD)])
        self.x_test = jnp.asarray(rng.normal(size=(9, 2)) * 2.0)
        self.theta, self.unravel = ravel_pytree(self.params)
        self.groups, self.names = layer_groups(self.params)
        self.lam = LAYER_LAMBDA[self.groups]
        # The reference sees the real rows only: padding must change nothing.
        f = lambda t: self.model.apply(self.unravel(t), self.x[:NUM_REAL])
        self.f0 = np.asarray(f(self.theta))                           # [n, c]
        self.jac = np.asarray(jax.jacfwd(f)(self.theta))              # [n, c, p]
        self.onehot = np.eye(NUM_CLASSES)[np.asarray(self.y[:NUM_REAL])]
        self.ggn = ggn_at(self.jac, self.f0)


def softmax(f):
    e = np.exp(f - f.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ggn_at(jac, logits):
    """Σ_n J_nᵀ (diag p_n - p_n p_nᵀ) J_n."""
    p = softmax(logits)
    lam = np.einsum("nc,cd->ncd", p, np.eye(p.shape[-1])) - p[:, :, None] * p[:, None, :]
    return np.einsum("ncp,ncd,ndq->pq", jac, lam, jac)


def dense_objective(prob, w, lam):
    """-log p(y | f_lin(w)) + ½ wᵀΛw and f_lin(w) [n, c]."""
    f = prob.f0 + prob.jac @ (w - np.asarray(prob.theta))
    logp = f - np.log(np.exp(f - f.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - f.max(-1, keepdims=True)
    return -(prob.onehot * logp).sum() + 0.5 * w @ (lam * w), f


def dense_mode(prob, lam):
    """Newton's method with dense solves and Armijo backtracking, to machine precision."""
    w = np.asarray(prob.theta, np.float64).copy()
    for _ in range(100):
        value, f = dense_objective(prob, w, lam)
        g = np.einsum("ncp,nc->p", prob.jac, softmax(f) - prob.onehot) + lam * w
        if np.linalg.norm(g) < 1e-13:
            break
        d = -np.linalg.solve(ggn_at(prob.jac, f) + np.diag(lam), g)
        t = 1.0
        while dense_objective(prob, w + t * d, lam)[0] > value + 1e-4 * t * g @ d:
            t /= 2
        w = w + t * d
    return w


def dense_curvature(prob, structure):
    """The structure's stored curvature as a dense [p, p] matrix, built from the dense GGN
    (full, diag, iso) or from the Kronecker factors placed at each layer's positions."""
    if structure == "full":
        return prob.ggn
    if structure == "diag":
        return np.diag(np.diag(prob.ggn))
    if structure == "iso":
        return np.trace(prob.ggn) / prob.ggn.shape[0] * np.eye(prob.ggn.shape[0])
    factors = kfac_factors(prob.model, prob.params, prob.x, prob.weights)
    dense = np.zeros_like(prob.ggn)
    for path, (a, g) in factors.items():
        index = layer_index(prob.params, path)
        dense[np.ix_(index, index)] = np.kron(np.asarray(a), np.asarray(g))
    return dense


def dense_evidence(prob, curvature, lam, w=None):
    """log p(y | f_lin(w̃)) - ½ w̃ᵀΛw̃ + ½ Σ log λ - ½ log det(H + Λ), w̃ solved for λ."""
    w = dense_mode(prob, lam) if w is None else w
    value, _ = dense_objective(prob, w, lam)
    return (-value + 0.5 * np.log(lam).sum()
            - 0.5 * np.linalg.slogdet(curvature + np.diag(lam))[1])


@pytest.fixture(scope="module")
def prob():
    with jax.enable_x64(True):
        yield Problem()


@pytest.fixture(scope="module")
def states(prob):
    """{structure: its state at θ* with the per-layer λ}, and the dense mode w̃(λ)."""
    with jax.enable_x64(True):
        problem = curvature_problem(prob.model, prob.params, prob.x, prob.y, prob.weights,
                                    "all")
        out = {}
        for name in ("full", "diag", "iso", "kfac"):
            structure = STRUCTURES[name]
            curvature = structure.forms[("ggn", "all")](jax.random.key(0), problem)
            out[name] = structure.build(prob.params, curvature, jnp.asarray(prob.lam))
        yield out, dense_mode(prob, prob.lam)


@pytest.mark.slow
def test_linear_mode_equals_a_dense_newton_solve(prob, states):
    _, reference = states
    with jax.enable_x64(True):
        solve = jax.jit(lambda lam, w: linear_mode(prob.model.apply, prob.params, prob.x,
                                                   prob.y, w, lam))
        mode = solve(jnp.asarray(prob.lam), prob.weights)
        # Padding rows with other labels: weight 0, and they change nothing.
        garbage = prob.weights.at[NUM_REAL:].set(1.0)
        with count_compilations() as compiled:
            other = solve(jnp.asarray(2.0 * prob.lam), prob.weights)
            moved = solve(jnp.asarray(prob.lam), garbage)
    assert compiled.count == 0, "another λ or mask must not recompile"
    assert np.linalg.norm(reference - np.asarray(prob.theta)) > 0.1, "θ* is no mode already"
    np.testing.assert_allclose(np.asarray(mode.mode), reference, atol=1e-9)
    assert float(mode.gradient_norm) < 1e-9
    value, _ = dense_objective(prob, reference, prob.lam)
    np.testing.assert_allclose(float(mode.log_likelihood),
                               -(value - 0.5 * reference @ (prob.lam * reference)), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(other.mode), dense_mode(prob, 2.0 * prob.lam),
                               atol=1e-9)
    assert np.abs(np.asarray(moved.mode) - reference).max() > 1e-3, "the mask is read"


def test_linear_mode_one_unrolled_newton_step_at_a_time_converges(prob, states):
    """The CPU pattern (a Python loop around one jitted, unrolled Newton step, warm-started)
    with CG truncated at 5 steps for 54 weights and preconditioned: it still descends, and
    reaches the same w̃."""
    out, reference = states
    with jax.enable_x64(True):
        step = jax.jit(lambda w: linear_mode(
            prob.model.apply, prob.params, prob.x, prob.y, prob.weights,
            jnp.asarray(prob.lam), init=w, newton_steps=1, cg_steps=5,
            preconditioner=posterior_variance(out["diag"]), unroll=True))
        mode = step(prob.theta)
        norms = [float(mode.gradient_norm)]
        for _ in range(40):
            mode = step(mode.mode)
            norms.append(float(mode.gradient_norm))
    assert norms[10] < norms[0] / 10
    np.testing.assert_allclose(np.asarray(mode.mode), reference, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["full", "diag", "iso", "kfac"])
def test_evidence_and_its_gradient_in_log_lambda_per_layer_match_dense(prob, states, name):
    """The value against slogdet of the dense precision; the gradient per layer (w̃ held
    fixed, the envelope theorem) against central differences of the dense evidence with
    w̃ re-solved at each λ."""
    out, reference = states
    curvature = dense_curvature(prob, name)
    with jax.enable_x64(True):
        mode = linear_mode(prob.model.apply, prob.params, prob.x, prob.y, prob.weights,
                           jnp.asarray(prob.lam))
        evidence = lambda log_lam: log_marginal_likelihood_at_mode(
            out[name], mode, jnp.exp(log_lam)[prob.groups])
        log_lam = jnp.log(jnp.asarray(LAYER_LAMBDA))
        value, grad = float(evidence(log_lam)), np.asarray(jax.grad(evidence)(log_lam))
    np.testing.assert_allclose(value, dense_evidence(prob, curvature, prob.lam, reference),
                               rtol=1e-10)
    h = 1e-4
    fd = [(dense_evidence(prob, curvature, np.exp(np.log(LAYER_LAMBDA) + h * e)[prob.groups])
           - dense_evidence(prob, curvature, np.exp(np.log(LAYER_LAMBDA) - h * e)[prob.groups]))
          / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
    assert np.abs(grad).min() > 1e-2, "a non-trivial gradient in every layer"


@pytest.mark.parametrize("name", ["full", "diag", "iso", "kfac"])
def test_effective_dimension_and_mackay_update_match_the_dense_trace(prob, states, name):
    """γ_l = P_l - λ_l tr_l((H + Λ)⁻¹) from the dense inverse; λ_l = γ_l / ‖w̃_l‖²."""
    out, reference = states
    covariance = np.linalg.inv(dense_curvature(prob, name) + np.diag(prob.lam))
    counts = np.bincount(prob.groups)
    gamma_ref = counts - LAYER_LAMBDA * np.bincount(prob.groups, np.diag(covariance))
    norm2 = np.bincount(prob.groups, reference**2)
    with jax.enable_x64(True):
        variance = np.asarray(posterior_variance(out[name]))
        gamma = np.asarray(effective_dimension(out[name], prob.groups))
        update = np.asarray(mackay_update(out[name], jnp.asarray(reference), prob.groups))
        scalar = float(mackay_update(out[name], jnp.asarray(reference)))
    np.testing.assert_allclose(variance, np.diag(covariance), rtol=1e-9)
    np.testing.assert_allclose(gamma, gamma_ref, rtol=1e-9)
    assert (gamma > 0.1).all() and (gamma < counts - 0.1).all(), "neither 0 nor P_l"
    np.testing.assert_allclose(update, (gamma_ref / norm2)[prob.groups], rtol=1e-9)
    np.testing.assert_allclose(scalar, gamma_ref.sum() / norm2.sum(), rtol=1e-9)


@pytest.mark.parametrize("name", ["diag", "iso", "kfac"])
def test_effective_dimension_keeps_its_digits_in_float32_where_the_prior_dominates(
        prob, states, name):
    """λ ≫ H (a layer the labels barely touch): γ_l = tr_l((H + Λ)⁻¹ H) is small, and
    P_l - λ_l tr_l((H + Λ)⁻¹) in float32 loses it; the structures' eigenvalue form keeps
    it to float32 precision against the float64 dense trace."""
    out, _ = states
    lam = 1e5 * LAYER_LAMBDA
    dense = dense_curvature(prob, name)
    reference = np.bincount(prob.groups, np.diag(
        np.linalg.solve(dense + np.diag(lam[prob.groups]), dense)))
    state32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32)
                           if jnp.issubdtype(a.dtype, jnp.floating) else a,
                           STRUCTURES[name].with_prior_precision(
                               out[name], jnp.asarray(lam[prob.groups])))
    gamma = np.asarray(effective_dimension(state32, prob.groups))
    assert (reference < 1e-2).all(), "the prior dominates every layer"
    np.testing.assert_allclose(gamma, reference, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("per_layer", [True, False])
def test_fit_prior_precision_linear_mode_reaches_a_stationary_evidence(prob, states,
                                                                       per_layer):
    """MacKay's fixed point is where the dense evidence (mode re-solved) is flat in log λ,
    and the fit returns the best evidence it tried, with its mode."""
    out, _ = states
    curvature = dense_curvature(prob, "full")
    groups = prob.groups if per_layer else None
    with jax.enable_x64(True):
        lam, info = jax.jit(lambda: fit_prior_precision_linear_mode(
            out["full"], prob.model.apply, prob.params, prob.x, prob.y, prob.weights,
            groups, init=1.0, iterations=40))()
    lam = np.asarray(lam)
    assert lam.shape == ((prob.theta.size,) if per_layer else ())
    lam = np.broadcast_to(lam, prob.theta.shape)
    group = prob.groups if per_layer else np.zeros_like(prob.groups)
    evidence_at = lambda log_scale: dense_evidence(prob, curvature, lam * np.exp(log_scale[group]))
    h = 1e-4
    fd = [(evidence_at(h * e) - evidence_at(-h * e)) / (2 * h) for e in np.eye(group.max() + 1)]
    np.testing.assert_allclose(fd, 0.0, atol=1e-4)
    # A layer switched off (λ_l → ∞, w̃_l → 0: the evidence is flat there too) does not make
    # the check: the head keeps a finite λ (per layer here: Dense_0 goes to ~3e8).
    by_group = np.bincount(group, lam) / np.bincount(group)
    assert 0.1 < by_group[-1] < 100.0, by_group
    evidences = np.asarray(info.log_marginal_likelihood)
    assert evidences.shape == (41,)
    np.testing.assert_allclose(evidences.max(), dense_evidence(prob, curvature, lam), rtol=1e-9)
    assert evidences.max() > evidences[0] + 1.0, "the fit moved λ from its start"
    np.testing.assert_allclose(np.asarray(info.mode.mode), dense_mode(prob, lam), atol=1e-8)


@pytest.mark.parametrize("name", ["full", "diag", "iso", "kfac", "last-layer"])
def test_evidence_diagnosis_matches_dense(prob, states, name):
    """Per layer λ, γ, prior variance, mean square weight and their ratio; the GLM logit
    std from J Σ Jᵀ with the explicit Jacobian of the test points."""
    out, reference = states
    with jax.enable_x64(True):
        if name == "last-layer":
            subset, head = "last-layer", head_params(prob.params)
            problem = curvature_problem(prob.model, prob.params, prob.x, prob.y,
                                        prob.weights, subset)
            structure = STRUCTURES["full"]
            post = structure.build(head, structure.forms[("ggn", subset)](None, problem), 0.7)
            theta, unravel = ravel_pytree(head)
            head_jac = lambda x: np.asarray(jax.jacfwd(lambda t: apply_head(
                unravel(t), prob.model.apply(prob.params, x, method=prob.model.features)))(theta))
            train_jac = head_jac(prob.x[:NUM_REAL])
            covariance = np.linalg.inv(ggn_at(train_jac, prob.f0) + 0.7 * np.eye(theta.size))
            jac = head_jac(prob.x_test)
            groups, lam = np.zeros(theta.size, int), np.full(theta.size, 0.7)
        else:
            subset, post, theta = "all", out[name], prob.theta
            jac = np.asarray(jax.jacfwd(lambda t: prob.model.apply(
                prob.unravel(t), prob.x_test))(theta))
            covariance = np.linalg.inv(dense_curvature(prob, name) + np.diag(prob.lam))
            groups, lam = prob.groups, prob.lam
        diagnosis = jax.jit(lambda post: evidence_diagnosis(
            prob.model, prob.params, post, prob.x_test, subset, jnp.asarray(reference)
            if subset == "all" else None))(post)
        logits = np.asarray(prob.model.apply(prob.params, prob.x_test))
    theta = np.asarray(theta)
    counts = np.bincount(groups)
    lam_l = np.bincount(groups, lam) / counts
    mean_square = np.bincount(groups, theta**2) / counts
    gamma = counts - lam_l * np.bincount(groups, np.diag(covariance))
    std = np.sqrt(np.einsum("ncp,pq,ncq->nc", jac, covariance, jac)).mean()
    for field, expected in [("num_weights", counts), ("prior_precision", lam_l),
                            ("effective_dimension", gamma), ("prior_variance", 1 / lam_l),
                            ("mean_square_weight", mean_square),
                            ("variance_ratio", 1 / (lam_l * mean_square)),
                            ("lambda_norm2", lam_l * mean_square * counts)]:
        np.testing.assert_allclose(np.asarray(getattr(diagnosis, field)), expected,
                                   rtol=1e-9, err_msg=field)
    np.testing.assert_allclose(float(diagnosis.map_logit_std), logits.std(-1).mean(),
                               rtol=1e-12)
    np.testing.assert_allclose(float(diagnosis.glm_logit_std), std, rtol=1e-9)
    names = layer_groups(head_params(prob.params) if subset == "last-layer"
                         else prob.params)[1]
    table = diagnosis.as_dict(names)
    assert list(table["layers"]) == list(names)
    if subset == "all":
        np.testing.assert_allclose(np.asarray(diagnosis.mean_square_mode),
                                   np.bincount(groups, reference**2) / counts, rtol=1e-9)
        assert table["layers"][names[0]]["mean_square_mode"] > 0
