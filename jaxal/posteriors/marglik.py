"""Online marginal-likelihood training (Immer et al. 2021, ICML, "Scalable marginal
likelihood estimation for model selection in deep learning"): the Laplace posterior's prior
precisions learned with the network, as the weight decay of its training.

The MAP objective's prior N(0, Λ⁻¹), Λ = diag(λ) with one λ or one per layer
(``jaxal.objective.prior_energy``), is the weight decay of training. After every F
training steps from step B on, the curvature H of the labelled set's summed NLL is refitted
at the current θ in the posterior's own structure, and K Adam steps on log λ maximise the
Laplace evidence with H and θ fixed

    log p(D | λ) ≈ log p(D | θ) - ½ θᵀ Λ θ + ½ Σ_p log λ_p - ½ log det(H + Λ)

(``jaxal.posteriors.laplace.log_marginal_likelihood``). The weights no label constrains then shrink
with the prior instead of staying where they were initialised (which inflates ‖θ‖² and so
the post-hoc evidence fit's prior variance). The iterate (θ, λ) of highest evidence is what
the fit returns, and λ is state: each round starts from the last round's λ (warm start)
even when θ restarts from its initialisation. laplace-torch: ``marglik_training``.

This is the Laplace record's training hook (``jaxal.posteriors.laplace.LAPLACE.training``) for the
prior fits ``marglik`` (one λ) and ``marglik-layerwise`` (one per layer of the subset; the
last layer is one layer). With ``--subset last-layer`` only the head's λ is learned; the
rest of the network keeps the run's λ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxal.components import LaplaceOptions
from jaxal.curvature import STRUCTURES
from jaxal.model import Classifier
from jaxal.objective import log_likelihood
from jaxal.train import Hyper, Trainer, labelled_buffer


class MarglikParams(NamedTuple):
    """What online marglik training fits and hands from round to round: θ and log λ."""

    params: Any                      # θ, the network's weights
    log_prior_precision: jax.Array   # [G]: one log λ per group (layer) of the subset


class HyperState(NamedTuple):
    """The prior-precision update's state within one fit (``TrainState.hyper``)."""

    log_prior_precision: jax.Array   # [G], the current log λ
    opt_state: Any                   # Adam on log λ
    best: MarglikParams              # the iterate of highest evidence so far
    best_log_evidence: jax.Array     # its evidence (-inf before the first update)
    log_evidence: jax.Array          # the last update's evidence (NaN before)


class Groups(NamedTuple):
    """How the G learned λ's map to weights, both of the posterior's subset [P_subset] and
    of the whole network [P] (the training objective's); static."""

    subset: np.ndarray       # int [P_subset]: each subset weight's group
    in_subset: np.ndarray    # bool [P]: whether a network weight is in the subset
    size: int                # G


def prior_groups(model: Classifier, params, options: LaplaceOptions) -> Groups:
    """The groups of ``options.prior_fit``: one per layer of the subset
    (``marglik-layerwise``), else one."""
    from jaxal.posteriors.laplace import head_params, layer_groups

    # Shapes alone (``jax.eval_shape``'s structs) suffice: host zeros stand in.
    params = jax.tree.map(lambda p: np.zeros(np.shape(p), np.float32), params)
    theta = head_params(params) if options.subset == "last-layer" else params
    if options.prior_fit.endswith("-layerwise"):
        group = layer_groups(theta)[0]
    else:
        group = np.zeros(ravel_pytree(theta)[0].size, np.int32)
    if options.subset == "last-layer":
        marks = jax.tree.map(lambda p: np.zeros(np.shape(p), bool), params)
        marks["params"]["head"] = jax.tree.map(lambda p: np.ones(np.shape(p), bool),
                                               params["params"]["head"])
        in_subset = np.concatenate([np.ravel(m) for m in jax.tree.leaves(marks)])
    else:
        in_subset = np.ones(group.size, bool)
    return Groups(group, in_subset, int(group.max()) + 1)


def subset_prior_precision(log_prior_precision: jax.Array, groups: Groups) -> jax.Array:
    """λ of the posterior's subset: a scalar for one group, else per weight [P_subset]."""
    lam = jnp.exp(log_prior_precision)
    return lam[0] if groups.size == 1 else lam[groups.subset]


def network_prior_precision(log_prior_precision: jax.Array, groups: Groups,
                            base: float) -> jax.Array:
    """λ of every network weight [P] for the training objective (weights outside the
    subset keep the run's ``base`` λ), in ``ravel_pytree``'s order."""
    lam = jnp.exp(log_prior_precision)[groups.subset]
    if groups.in_subset.all():
        return lam
    where = np.flatnonzero(groups.in_subset)
    full = jnp.full(groups.in_subset.shape, base, lam.dtype)
    return full.at[where].set(lam)


def log_evidence_at(log_prior_precision, post, log_likelihood_at_theta, groups: Groups):
    """log p(D | λ) for λ = exp(``log_prior_precision``) [G], the curvature fixed."""
    from jaxal.posteriors.laplace import log_marginal_likelihood

    return log_marginal_likelihood(post, log_likelihood_at_theta,
                                   subset_prior_precision(log_prior_precision, groups))


def online_marglik(trainer: Trainer, init_one: Callable, options: LaplaceOptions, *,
                   model: Classifier, capacity: int) -> tuple[Trainer, Callable]:
    """The Laplace record's training hook for the online prior fits: the trainer and
    initialiser of (θ, log λ) (``MarglikParams``), with a ``Hyper`` update every
    ``options.marglik_every`` steps from ``options.marglik_burn_in`` on."""
    from jaxal.posteriors.laplace import curvature_problem

    base_lambda = (trainer.config.prior_precision if options.prior_precision is None
                   else options.prior_precision)
    shapes = jax.eval_shape(init_one, jax.random.key(0))
    groups = prior_groups(model, shapes, options)
    structure = STRUCTURES[options.structure]
    form = structure.forms[(options.curvature, options.subset)]
    hyper_optimizer = optax.adam(options.marglik_learning_rate)

    def init_params(key) -> MarglikParams:
        params = init_one(key)
        log_lam = jnp.full(groups.size, jnp.log(jnp.asarray(base_lambda, jnp.float32)))
        return MarglikParams(params, log_lam)

    def init(start: MarglikParams):
        # The burn-in trains with the run's λ: a λ carried over from the last round (often
        # 30-100x larger at 20-50 labels) on freshly initialised weights shrank them before
        # they fitted anything (MNIST: train NLL 1.7, MAP accuracy 0.33 at 40 labels).
        # The carried λ is where the first update's Adam steps start (the warm start).
        log_lam = start.log_prior_precision
        log_base = jnp.full_like(log_lam, jnp.log(jnp.asarray(base_lambda, log_lam.dtype)))
        state = trainer.init(start.params)
        hyper = HyperState(log_lam, hyper_optimizer.init(log_lam), start,
                           jnp.asarray(-jnp.inf, log_lam.dtype),
                           jnp.asarray(jnp.nan, log_lam.dtype))
        return state._replace(
            prior_precision=network_prior_precision(log_base, groups, base_lambda),
            hyper=hyper)

    def update(key, state, x_pool, y_pool, labelled_idx, num_labelled):
        # The labelled set in a buffer of static size (padding rows weigh 0), as the
        # posterior's fit takes it.
        idx, valid = labelled_buffer(labelled_idx, num_labelled, capacity)
        x, y, w = x_pool[idx], y_pool[idx], valid.astype(x_pool.dtype)
        problem = curvature_problem(model, state.params, x, y, w, options.subset,
                                    options.chunk_size)
        hyper = state.hyper
        post = structure.build(problem.theta, form(key, problem),
                               subset_prior_precision(hyper.log_prior_precision, groups))
        ll = log_likelihood(problem.logits_fn(problem.theta, problem.inputs), y, w)
        evidence = lambda log_lam: log_evidence_at(log_lam, post, ll, groups)

        def adam_step(carry, _):
            log_lam, opt_state = carry
            grad = jax.grad(lambda v: -evidence(v))(log_lam)
            updates, opt_state = hyper_optimizer.update(grad, opt_state)
            return (optax.apply_updates(log_lam, updates), opt_state), None

        (log_lam, opt_state), _ = jax.lax.scan(
            adam_step, (hyper.log_prior_precision, hyper.opt_state), None,
            options.marglik_steps)
        log_ev = evidence(log_lam)
        # A non-finite step keeps the last λ (and never becomes the best iterate); the
        # loop's finiteness check then sees the posterior of the best one.
        ok = jnp.isfinite(log_ev) & jnp.all(jnp.isfinite(log_lam))
        log_lam = jnp.where(ok, log_lam, hyper.log_prior_precision)
        opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), opt_state,
                                 hyper.opt_state)
        better = ok & (log_ev > hyper.best_log_evidence)
        current = MarglikParams(state.params, log_lam)
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), current, hyper.best)
        hyper = HyperState(log_lam, opt_state, best,
                           jnp.where(better, log_ev, hyper.best_log_evidence), log_ev)
        return state._replace(
            prior_precision=network_prior_precision(log_lam, groups, base_lambda),
            hyper=hyper)

    def result(state) -> MarglikParams:
        # Before the first update (no evidence yet) the fit ends where training did.
        hyper = state.hyper
        current = MarglikParams(state.params, hyper.log_prior_precision)
        updated = jnp.isfinite(hyper.best_log_evidence)
        return jax.tree.map(lambda b, c: jnp.where(updated, b, c), hyper.best, current)

    def labelled_nll(start: MarglikParams, *data):
        return trainer.labelled_nll(start.params, *data)

    def restart(previous: MarglikParams, fresh: MarglikParams) -> MarglikParams:
        return fresh._replace(log_prior_precision=previous.log_prior_precision)

    hyper = Hyper(options.marglik_every, options.marglik_burn_in, update)
    return (trainer._replace(init=init, labelled_nll=labelled_nll, result=result,
                             hyper=hyper, restart=restart), init_params)
