"""The Laplace evidence taken at the tangent linear model's mode, and what it diagnoses.

The linearised Laplace posterior is the posterior of the tangent linear model

    f_lin(x; w) = f(x; θ*) + J(x) (w - θ*),   J(x) = ∂f(x; θ)/∂θ at θ*,

under the prior N(0, Λ⁻¹), Λ = diag(λ). Its evidence and MacKay's update of λ should
then be taken at that model's mode w̃ (Antorán et al. 2022, "Adapting the linearised Laplace
model evidence for modern deep learning"), not at θ*: a θ* trained briefly keeps the
directions the labels do not constrain near their initial values, which inflates ‖θ_l‖²
and with it the MacKay prior variance; w̃ = Λ⁻¹ Jᵀ r (r the weighted residuals p - e_y at
the mode) lies in the span the labelled points' Jacobian reaches.

    linear_mode                       w̃ = argmin_w  -log p(y | f_lin(w)) + ½ wᵀΛw  (convex)
    log_marginal_likelihood_at_mode   log p(D | λ) at w̃, for every curvature structure
    posterior_variance                diag((H + Λ)⁻¹) [p], per structure
    effective_dimension               γ_l = P_l - λ_l tr_l((H + Λ)⁻¹), per layer
    mackay_update                     λ_l = γ_l / ‖w̃_l‖²
    fit_prior_precision_linear_mode   (linear mode, MacKay) a fixed number of times
    evidence_diagnosis                per layer λ, γ, 1/λ against θ²/P; GLM logit std

All of them take a structure's state (``jaxal.curvature.STRUCTURES``: full, diag, iso,
kfac) over the raveled parameters of a subset, and for the mode the subset's
``(logits_fn, params, x)`` of ``jaxal.posteriors.laplace.subset_problem`` (all weights:
``model.apply``, the parameters and the images; the last layer: ``apply_head``, the head
and the features, where f_lin = f). Shapes are static and the iteration counts fixed, so
the caller can jit one whole fit; nothing here calls ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxal.curvature import kfac, structure_of
from jaxal.curvature.diagonal import DiagLaplace
from jaxal.curvature.isotropic import IsoLaplace
from jaxal.curvature.last_layer import linear_head_logit_variance
from jaxal.curvature.layerwise import logit_variance_layerwise, set_layer
from jaxal.model import Classifier
from jaxal.objective import log_likelihood
from jaxal.posteriors.laplace import (
    head_params,
    layer_groups,
    log_marginal_likelihood,
    subset_problem,
)

# --- The tangent linear model's mode ------------------------------------------------------


class LinearMode(NamedTuple):
    """The tangent linear model's mode under the prior, and how well it was solved."""

    mode: jax.Array             # w̃ [p], raveled in ``ravel_pytree`` order
    log_likelihood: jax.Array   # log p(y | f_lin(w̃)) = Σ_n w_n log softmax(f_lin(x_n; w̃))[y_n]
    gradient_norm: jax.Array    # ‖∇_w (-log p(y | f_lin(w)) + ½ wᵀΛw)‖ at w̃: 0 at the mode


class Linearisation(NamedTuple):
    """f_lin around θ*: the logits there and J's products, the forward pass done once."""

    theta: jax.Array            # θ* [p]
    logits: jax.Array           # f(x; θ*) [n, c]
    jvp: Callable               # v [p] -> J v [n, c]
    vjp: Callable               # u [n, c] -> Jᵀ u [p]


def linearise(logits_fn: Callable, params, x: jax.Array) -> Linearisation:
    """The tangent linear model of ``logits_fn(params, x)`` at ``params`` (θ*)."""
    theta, unravel = ravel_pytree(params)
    logits, jvp = jax.linearize(lambda t: logits_fn(unravel(t), x), theta)
    transpose = jax.linear_transpose(jvp, theta)
    return Linearisation(theta, logits, jvp, lambda u: transpose(u)[0])


def _negative_log_joint(logits, w, y, weights, prior_precision):
    """-Σ_n w_n log softmax(f_n)[y_n] + ½ wᵀΛw (the prior's constant left out)."""
    return -log_likelihood(logits, y, weights) + 0.5 * jnp.vdot(w, prior_precision * w)


def _repeat(step: Callable, carry, steps: int, unroll: bool):
    """``steps`` applications of ``step(carry) -> carry``: a ``lax.scan``, or with
    ``unroll`` straight-line code (XLA:CPU runs convolutions ~10x slower inside a while
    loop, and ``lax.scan(unroll=True)`` still emits one)."""
    if unroll:
        for _ in range(steps):
            carry = step(carry)
        return carry
    return jax.lax.scan(lambda c, _: (step(c), None), carry, None, steps)[0]


def _conjugate_gradients(matvec: Callable, b: jax.Array, steps: int,
                         preconditioner: jax.Array | None, unroll: bool = False
                         ) -> jax.Array:
    """x ≈ A⁻¹ b by ``steps`` iterations of (diagonally preconditioned) CG from 0.

    A fixed count, so it is a scan with static shapes; stopped early, CG from 0 still
    gives a descent direction for Newton (every iterate has bᵀx > 0). The guarded
    divisions keep a converged run (residual exactly 0) finite.
    """
    m = jnp.ones_like(b) if preconditioner is None else preconditioner

    def step(carry):
        x, r, p, rz = carry
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
        x, r = x + alpha * p, r - alpha * ap
        z = m * r
        rz_new = jnp.vdot(r, z)
        beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
        return x, r, z + beta * p, rz_new

    z = m * b
    return _repeat(step, (jnp.zeros_like(b), b, z, jnp.vdot(b, z)), steps, unroll)[0]


# Newton's step length is chosen among 1, ½, ..., 2^-(LINE_SEARCH_STEPS - 1) and 0 by the
# objective: f_lin is linear in w, so f_lin(w + t d) = f_lin(w) + t J d costs one JVP for
# all of them, and the objective never increases (the 0 step).
LINE_SEARCH_STEPS = 16


def solve_linear_mode(lin: Linearisation, y: jax.Array, weights: jax.Array,
                      prior_precision: jax.Array, init: jax.Array | None = None,
                      newton_steps: int = 10, cg_steps: int = 50,
                      preconditioner: jax.Array | None = None, unroll: bool = False
                      ) -> LinearMode:
    """``linear_mode`` on a linearisation computed once (``linearise``): the MacKay
    iterations solve for several λ around the same θ*."""
    lam = jnp.broadcast_to(jnp.asarray(prior_precision, lin.theta.dtype), lin.theta.shape)
    weights = weights.astype(lin.logits.dtype)
    onehot = jax.nn.one_hot(y, lin.logits.shape[-1], dtype=lin.logits.dtype)
    steps = jnp.concatenate([0.5 ** jnp.arange(LINE_SEARCH_STEPS, dtype=lin.theta.dtype),
                             jnp.zeros(1, lin.theta.dtype)])

    def gradient(w, logits):
        # ∂/∂f of the weighted cross-entropy is w_n (p_n - e_yn), pulled back by Jᵀ.
        return lin.vjp(weights[:, None] * (jax.nn.softmax(logits) - onehot)) + lam * w

    def newton(w):
        logits = lin.logits + lin.jvp(w - lin.theta)
        probs = jax.nn.softmax(logits)

        def hessian_vector(v):
            # The linear model's exact Hessian: Jᵀ diag(w_n Λ_n) J + Λ with Λ_n the softmax
            # Hessian diag(p_n) - p_n p_nᵀ at f_lin(w) (its GGN, exact as f_lin is linear).
            u = lin.jvp(v)
            u = weights[:, None] * probs * (u - (probs * u).sum(-1, keepdims=True))
            return lin.vjp(u) + lam * v

        g = gradient(w, logits)
        d = _conjugate_gradients(hessian_vector, -g, cg_steps, preconditioner, unroll)
        jd = lin.jvp(d)
        objective = jax.vmap(lambda t: _negative_log_joint(logits + t * jd, w + t * d, y,
                                                           weights, lam))(steps)
        return w + steps[jnp.argmin(objective)] * d

    w = _repeat(newton, lin.theta if init is None else init, newton_steps, unroll)
    logits = lin.logits + lin.jvp(w - lin.theta)
    return LinearMode(w, log_likelihood(logits, y, weights),
                      jnp.linalg.norm(gradient(w, logits)))


def linear_mode(logits_fn: Callable, params, x: jax.Array, y: jax.Array,
                weights: jax.Array, prior_precision: jax.Array, init: jax.Array | None = None,
                newton_steps: int = 10, cg_steps: int = 50,
                preconditioner: jax.Array | None = None, unroll: bool = False
                ) -> LinearMode:
    """The mode of the tangent linear model under the prior N(0, Λ⁻¹):

        w̃ = argmin_w  -Σ_n w_n log softmax(f(x_n; θ*) + J_n (w - θ*))[y_n] + ½ wᵀΛw,

    ``params`` θ*, ``x`` [n, ...], ``y`` int [n], ``weights`` [n] (1 real, 0 padding rows),
    ``prior_precision`` λ scalar or [p] (per weight, e.g. one per layer broadcast with
    ``jaxal.posteriors.laplace.layer_groups``). The problem is strictly convex (cross-entropy of an
    affine map plus a positive definite quadratic).

    Solved by Newton-CG, matrix-free: each Hessian-vector product is one JVP and one VJP
    of the linearisation, the Hessian being exactly Jᵀ diag(w_n Λ_n) J + Λ. Newton rather
    than L-BFGS because the problem is exactly the GGN system the Laplace posterior is
    made of: its curvature is known, it converges quadratically near w̃ (a few steps to
    float precision, which the evidence's gradient in λ relies on: it is taken with w̃
    held fixed, exact only at the mode), and the iteration counts are fixed without a
    line search that evaluates the network (the step length is chosen on f_lin, which is
    linear in w). The default counts converge on the seed CNN with 220 MNIST labels (500
    Adam steps at λ = 1; KFAC-preconditioned, float32): gradient norm 65 -> 1e-4 at λ = 1
    and 700 -> 2e-4 at λ = 14 in 10 Newton steps of 50 CG steps, where 10 CG steps a
    Newton step never got below 17. ``init`` starts it elsewhere than θ* (a warm start over λ);
    ``preconditioner`` [p] is a diagonal approximation of the inverse Hessian for CG
    (e.g. ``posterior_variance`` of the Laplace posterior at θ*). ``unroll``: both loops as
    straight-line code instead of ``lax.scan``s. XLA:CPU runs a CNN's convolutions about
    ten times slower inside a while loop (one Newton step with 10 CG steps, a small CNN on
    64 images: 65 ms unrolled, 720 ms in scans; ``jaxal.train`` loops in Python on CPU for
    the same reason): there, jit one Newton step (``newton_steps=1``, ``unroll=True``,
    ``init`` the last w̃) and loop in Python; elsewhere keep the loops rolled (one small
    program).

    Returns w̃ [p] raveled in ``ravel_pytree`` order, log p(y | f_lin(w̃)) and the
    gradient norm at w̃ (the convergence measure).
    """
    return solve_linear_mode(linearise(logits_fn, params, x), y, weights, prior_precision,
                             init, newton_steps, cg_steps, preconditioner, unroll)


# --- The evidence and MacKay's update at the mode -----------------------------------------


def log_marginal_likelihood_at_mode(post, mode: LinearMode,
                                    prior_precision: jax.Array | None = None) -> jax.Array:
    """Linearised Laplace evidence at the linear model's mode w̃ (Antorán et al. 2022):

        log p(D | λ) ≈ log p(y | f_lin(w̃)) - ½ w̃ᵀ Λ w̃ + ½ Σ_i log λ_i - ½ log det(H + Λ),

    ``post`` a structure's state (H its stored curvature, taken at θ*), λ its own or
    ``prior_precision`` (scalar or [p]). Differentiable in λ with w̃ held fixed: w̃ is the
    minimiser of the first two terms, so their total derivative in λ is the partial one
    (-½ w̃_i², the envelope theorem), exact when w̃ is solved for this λ.
    """
    at_mode = post._replace(mean=jax.lax.stop_gradient(mode.mode))
    return log_marginal_likelihood(at_mode, jax.lax.stop_gradient(mode.log_likelihood),
                                   prior_precision)


def _diagonal_variance(state) -> jax.Array:
    """1 / (d + λ) [p] (the isotropic structure's d a scalar)."""
    return 1.0 / jnp.broadcast_to(state.curvature + state.prior_precision, state.mean.shape)


def _kfac_variance(state: kfac.KFACLaplace) -> jax.Array:
    """Per layer diag((Q_A ⊗ Q_G) diag(1/s) (Q_A ⊗ Q_G)ᵀ) = (Q_A ∘ Q_A) (1/s) (Q_G ∘ Q_G)ᵀ
    [K+1, out], s = e_A e_Gᵀ + λ_l: no block is formed."""
    variance = jax.tree.map(jnp.zeros_like, state.params)
    for name, spectrum in kfac.precision_eigenvalues(state).items():
        qa, _, qg, _ = state.layers[name]
        set_layer(variance["params"], name, qa**2 @ (1.0 / spectrum) @ (qg**2).T)
    return ravel_pytree(variance)[0]


# diag((H + Λ)⁻¹) per structure where a closed form avoids the dense covariance; any other
# structure (full, or one registered later) falls back to the diagonal of its covariance.
_VARIANCE = {DiagLaplace: _diagonal_variance, IsoLaplace: _diagonal_variance,
             kfac.KFACLaplace: _kfac_variance}


def _diagonal_data_fraction(state) -> jax.Array:
    """d / (d + λ) [p]."""
    d = jnp.broadcast_to(state.curvature, state.mean.shape)
    return d / (d + state.prior_precision)


def _kfac_data_fraction(state: kfac.KFACLaplace) -> jax.Array:
    """Per layer diag((Q_A ⊗ Q_G) diag(h / s) (Q_A ⊗ Q_G)ᵀ), h = e_A e_Gᵀ, s = h + λ_l."""
    fraction = jax.tree.map(jnp.zeros_like, state.params)
    for name, spectrum in kfac.precision_eigenvalues(state).items():
        qa, ea, qg, eg = state.layers[name]
        set_layer(fraction["params"], name,
                  qa**2 @ (jnp.outer(ea, eg) / spectrum) @ (qg**2).T)
    return ravel_pytree(fraction)[0]


# diag((H + Λ)⁻¹ H) per structure from its eigenvalues h: Σ_j Q_ij² h_j / (h_j + λ), with
# no cancellation where λ ≫ h (1 - λ diag((H + Λ)⁻¹) loses every digit there in float32:
# γ of a 73,856-weight layer came out 0.0 or negative). Others: 1 - λ diag((H + Λ)⁻¹).
_DATA_FRACTION = {DiagLaplace: _diagonal_data_fraction, IsoLaplace: _diagonal_data_fraction,
                  kfac.KFACLaplace: _kfac_data_fraction}


def data_fraction(post) -> jax.Array:
    """diag((H + Λ)⁻¹ H) = 1 - λ_i [(H + Λ)⁻¹]_ii [p]: how far the data, not the prior,
    determine each weight (0: prior only, 1: data only)."""
    fraction = _DATA_FRACTION.get(type(post))
    if fraction is None:
        lam = jnp.broadcast_to(post.prior_precision, post.mean.shape)
        return 1.0 - lam * posterior_variance(post)
    return fraction(post)


def posterior_variance(post) -> jax.Array:
    """diag((H + Λ)⁻¹) [p], the posterior variance of each weight."""
    variance = _VARIANCE.get(type(post))
    if variance is None:
        return jnp.diag(structure_of(post).covariance(post))
    return variance(post)


def _group_sum(values: jax.Array, groups: np.ndarray | None) -> jax.Array:
    """Σ over each group's weights [g] (``groups`` None: one group, [1])."""
    if groups is None:
        return values.sum(keepdims=True)
    return jax.ops.segment_sum(values, groups, num_segments=int(groups.max()) + 1)


def effective_dimension(post, groups: np.ndarray | None = None) -> jax.Array:
    """γ_g = Σ_{i ∈ g} (1 - λ_i [(H + Λ)⁻¹]_ii) [g], the number of directions of each
    group (``layer_groups``: each layer) that the data determine (MacKay 1992); for λ
    constant over a layer, P_l - λ_l tr_l((H + Λ)⁻¹). ``groups`` None: one, [1].
    Summed from ``data_fraction``, which needs no cancellation where λ ≫ H."""
    return _group_sum(data_fraction(post), groups)


# MacKay's update divides by ‖w̃_g‖² and γ_g may round to 0: γ is floored at the dtype's
# eps and ‖w̃‖² at eps², so λ stays finite and positive (log λ enters the evidence) and a
# group the data leave at 0 gets a large λ (≤ 1/eps), not 1 (eps / eps, as both floored
# at eps gave).
def _floor(values: jax.Array, power: int = 1) -> jax.Array:
    return jnp.maximum(values, jnp.finfo(values.dtype).eps ** power)


def mackay_update(post, mode: jax.Array, groups: np.ndarray | None = None) -> jax.Array:
    """MacKay's fixed-point update at the mode w̃ [p]: λ_g = γ_g / ‖w̃_g‖², with γ from
    ``post``'s own λ. ``groups`` None: a scalar λ; otherwise per weight [p], each group's
    value broadcast to its weights (as ``jaxal.posteriors.laplace.fit_prior_precision``)."""
    lam = _mackay_by_group(post, mode, groups)
    return lam[0] if groups is None else lam[groups]


def _mackay_by_group(post, mode: jax.Array, groups: np.ndarray | None) -> jax.Array:
    """γ_g / ‖w̃_g‖² [g]."""
    return _floor(effective_dimension(post, groups)) / _floor(_group_sum(mode**2, groups), 2)


class LinearModeFit(NamedTuple):
    """What ``fit_prior_precision_linear_mode`` reports beside λ."""

    mode: LinearMode                   # w̃ at the returned λ
    log_marginal_likelihood: jax.Array  # [iterations + 1] at each λ tried, the first the init
    gradient_norm: jax.Array           # [iterations + 1] the mode's convergence at each
    prior_precision: jax.Array         # [iterations + 1, g] each λ tried, per group


def fit_prior_precision_linear_mode(post, logits_fn: Callable, params, x: jax.Array,
                                    y: jax.Array, weights: jax.Array,
                                    groups: np.ndarray | None = None,
                                    init: jax.Array | None = None, iterations: int = 10,
                                    newton_steps: int = 10, cg_steps: int = 50
                                    ) -> tuple[jax.Array, LinearModeFit]:
    """λ by MacKay's iteration at the tangent linear model's mode (Antorán et al. 2022):

        w̃_k = linear_mode(λ_k),   λ_{k+1,l} = γ_l(λ_k) / ‖w̃_{k,l}‖²,

    ``iterations`` times, from ``init`` (scalar, or [p] per weight; None: ``post``'s λ),
    with the curvature H of ``post`` (a structure's state over the raveled ``params``)
    kept. Each mode is warm-started at the previous one and its CG preconditioned by the
    posterior's variance diag((H + Λ_k)⁻¹); the network is linearised once. The fixed
    point is a stationary point of ``log_marginal_likelihood_at_mode``
    (∂/∂log λ_l = ½ (γ_l - λ_l ‖w̃_l‖²)), but the iteration is not monotone in it, so the λ
    of the best evidence among the iterations + 1 tried is returned.

    With one λ per layer the evidence may prefer to switch layers off (λ_l → ∞, w̃_l → 0,
    γ_l → 0, as automatic relevance determination does): f_lin keeps the offset
    f(θ*) - J θ*, and in a network nearly homogeneous in each layer's weights (ReLU, no
    normalisation) one layer's Jacobian features can carry f_lin alone. Measured: the seed
    CNN on 220 MNIST labels (500 Adam steps, KFAC) kept only Conv_0 (λ 0.11, the others
    1e4-8e5) after 6 iterations; the tiny MLP of ``tests/test_evidence.py`` keeps two of
    three layers. ``evidence_diagnosis`` shows it (γ_l ≈ 0).

    ``groups`` None: one scalar λ; otherwise an int [p] array of group ids
    (``layer_groups``: one λ per layer) and λ per weight [p], as
    ``jaxal.posteriors.laplace.fit_prior_precision`` returns it. Also returns a ``LinearModeFit``.

    One program of nested scans, the form for GPUs. On CPU (see ``linear_mode``'s
    ``unroll``) the same iteration is a Python loop over jitted pieces: per λ, Newton steps
    of ``linear_mode(..., newton_steps=1, unroll=True)``, then
    ``log_marginal_likelihood_at_mode`` and ``mackay_update``.
    """
    structure = structure_of(post)
    lin = linearise(logits_fn, params, x)
    expand = (lambda v: v[0]) if groups is None else (lambda v: v[groups])
    start = post.prior_precision if init is None else init
    start = jnp.broadcast_to(jnp.asarray(start, lin.theta.dtype), lin.theta.shape)
    lam = _group_sum(start, groups) / _group_sum(jnp.ones_like(start), groups)

    def step(carry, _):
        lam, previous, best = carry
        at_lam = structure.with_prior_precision(post, expand(lam))
        mode = solve_linear_mode(lin, y, weights, expand(lam), previous, newton_steps,
                                 cg_steps, posterior_variance(at_lam))
        evidence = log_marginal_likelihood_at_mode(at_lam, mode)
        best = jax.tree.map(lambda new, old: jnp.where(evidence > best[0], new, old),
                            (evidence, lam, mode), best)
        new = _mackay_by_group(at_lam, mode.mode, groups)
        return (new, mode.mode, best), (evidence, mode.gradient_norm, lam)

    # Before the first λ is tried no iterate is best: -inf loses to any finite evidence,
    # and a NaN evidence (a diverged mode) never wins.
    unsolved = LinearMode(lin.theta, jnp.zeros((), lin.theta.dtype),
                          jnp.zeros((), lin.theta.dtype))
    best = (jnp.asarray(-jnp.inf, lin.theta.dtype), lam, unsolved)
    # iterations + 1 evaluations: λ_0 (the init) to λ_iterations; the last update is unused.
    (_, _, best), (evidences, norms, lams) = jax.lax.scan(
        step, (lam, lin.theta, best), None, iterations + 1)
    return expand(best[1]), LinearModeFit(best[2], evidences, norms, lams)


# --- The diagnosis: is the prior too broad for the weights it describes? ------------------


class EvidenceDiagnosis(NamedTuple):
    """Per layer l (``layer_groups`` order, [l] each) and over the points x.

    At the evidence's optimum γ_l = λ_l ‖θ_l‖²; a prior variance many times the layer's
    mean square weight, and a GLM logit std above the MAP's own logit spread, say the
    fitted prior is too broad (issue 30: 370-800x and 29.4 against 5.2 on MNIST).
    """

    num_weights: jax.Array          # P_l [l]
    prior_precision: jax.Array      # λ_l [l]
    effective_dimension: jax.Array  # γ_l = P_l - λ_l tr_l((H + Λ)⁻¹) [l]
    lambda_norm2: jax.Array         # λ_l ‖θ_l‖² [l] (= γ_l at MacKay's fixed point)
    prior_variance: jax.Array       # 1 / λ_l [l]
    mean_square_weight: jax.Array   # ‖θ_l‖² / P_l [l], θ the posterior's mean (θ*)
    variance_ratio: jax.Array       # (1 / λ_l) / (‖θ_l‖² / P_l) [l]
    mean_square_mode: jax.Array | None   # ‖w̃_l‖² / P_l [l] at a given linear mode
    map_logit_std: jax.Array        # mean_n std_c f_c(x_n; θ*)
    glm_logit_std: jax.Array        # mean_{n,c} sqrt([J_n Σ J_nᵀ]_cc)

    def as_tree(self, layer_names) -> dict:
        """{"layers": {name: {field: value [] }}, and the logit stds}: the same arrays
        keyed by name (a pytree a jitted function may return)."""
        per_layer = [f for f in self._fields if f not in ("map_logit_std", "glm_logit_std")
                     and getattr(self, f) is not None]
        return {"layers": {name: {f: getattr(self, f)[i] for f in per_layer}
                           for i, name in enumerate(layer_names)},
                "map_logit_std": self.map_logit_std, "glm_logit_std": self.glm_logit_std}

    def as_dict(self, layer_names) -> dict:
        """``as_tree`` in plain floats for JSON (``num_weights`` an int)."""
        return plain_diagnosis(self.as_tree(layer_names))


def plain_diagnosis(tree: dict) -> dict:
    """A diagnosis tree (``EvidenceDiagnosis.as_tree``) in plain floats for JSON, each
    layer's ``num_weights`` an int."""
    plain = jax.tree.map(float, jax.device_get(tree))
    for layer in plain.get("layers", {}).values():
        layer["num_weights"] = int(layer["num_weights"])
    return plain


def glm_logit_variance(model: Classifier, params, post, x: jax.Array, subset: str = "all",
                       chunk_size: int = 16) -> jax.Array:
    """diag(J_n Σ J_nᵀ) [n, c], the linearised logits' posterior variance, Σ = (H + Λ)⁻¹
    of the structure state ``post`` over ``subset``'s raveled parameters.

    The last layer: from the dense covariance (``linear_head_logit_variance``); all weights
    with a layer-block covariance (diag, iso, KFAC): the per-layer terms
    (``logit_variance_layerwise``), as ``jaxal.posteriors.laplace.laplace_logit_variance`` computes
    them; the full structure (small models only): J_n [c, p] per point, ``chunk_size``
    points at a time.
    """
    structure = structure_of(post)
    if subset == "last-layer":
        features = model.apply(params, x, method=model.features)
        return linear_head_logit_variance(head_params(params), structure.covariance(post),
                                          features)
    if structure.layer_variance is not None:
        return logit_variance_layerwise(model, params, x,
                                        structure.layer_variance(post, params))
    theta, unravel = ravel_pytree(params)
    covariance = structure.covariance(post)

    def point(x_n):
        jac = jax.jacrev(lambda t: model.apply(unravel(t), x_n[None])[0])(theta)
        return jnp.einsum("cp,pq,cq->c", jac, covariance, jac)

    return jax.lax.map(point, x, batch_size=chunk_size)


def evidence_diagnosis(model: Classifier, params, post, x: jax.Array, subset: str = "all",
                       mode: jax.Array | None = None) -> EvidenceDiagnosis:
    """Per layer: λ_l, γ_l, λ_l ‖θ_l‖², the prior variance 1/λ_l against the mean square
    weight ‖θ_l‖²/P_l (and ‖w̃_l‖²/P_l at a linear ``mode`` [p] if given); over the points
    x [n, ...]: the GLM logits' posterior std against the MAP's logit spread.

    ``params`` θ* (all weights), ``post`` the structure state of a Laplace posterior over
    ``subset`` ("all" or "last-layer"; ``WeightsLaplace.weights`` / ``LastLayerLaplace.head``).
    The definitions are those of ``benchmarks/posterior_curves.py``'s evidence diagnosis:
    the MAP's spread is the mean over points of the std over classes of f(x; θ*), the GLM
    std the mean over points and classes of sqrt(diag J Σ Jᵀ). Layer names:
    ``layer_groups(θ_subset)[1]`` (``EvidenceDiagnosis.as_dict``).
    """
    theta, logits_fn, inputs = subset_problem(model, params, x, subset)
    groups = layer_groups(theta)[0]
    flat = post.mean
    count = _group_sum(jnp.ones_like(flat), groups)
    lam = _group_sum(jnp.broadcast_to(post.prior_precision, flat.shape), groups) / count
    norm2 = _group_sum(flat**2, groups)
    mean_square = norm2 / count
    logits = logits_fn(theta, inputs)
    variance = glm_logit_variance(model, params, post, x, subset)
    return EvidenceDiagnosis(
        num_weights=count, prior_precision=lam,
        effective_dimension=effective_dimension(post, groups), lambda_norm2=lam * norm2,
        prior_variance=1.0 / lam, mean_square_weight=mean_square,
        variance_ratio=1.0 / (lam * mean_square),
        mean_square_mode=None if mode is None else _group_sum(mode**2, groups) / count,
        map_logit_std=jnp.std(logits, axis=-1).mean(),
        glm_logit_std=jnp.sqrt(variance).mean())
