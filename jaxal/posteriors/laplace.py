"""The Laplace posterior: N(θ_MAP, (curvature + Λ)⁻¹) over all weights or the last layer.

Its fit has the posterior signature

    fit(key, model, params, x, y, weights, prior_precision, options) -> posterior

where ``params`` is θ_MAP, ``x, y`` a static-size buffer of the labelled data it was fitted
on, ``weights`` [n] marks the real (1) and padding (0) rows, ``prior_precision`` is the
MAP objective's λ and ``options`` the ``LaplaceOptions`` record (``jaxal.components``;
bound by ``jaxal.posteriors.bind``). The curvature comes from ``jaxal.curvature``; the
evidence from ``jaxal.posteriors.evidence``; online marginal-likelihood training of λ
from ``jaxal.posteriors.marglik`` (the record's ``training`` hook).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxal.batching import over_samples
from jaxal.components import ONLINE_PRIOR_FITS, PRIOR_FLAG, LaplaceOptions
from jaxal.components import POSTERIORS as POSTERIORS  # re-exported: the table
from jaxal.components import PRIOR_FITS as PRIOR_FITS
from jaxal.components import SUBSETS as SUBSETS
from jaxal.components import VALIDATION_GRID as VALIDATION_GRID
from jaxal.curvature import STRUCTURES, CurvatureProblem, sources, structure_of
from jaxal.curvature.ggn import CurvatureTooLargeError
from jaxal.curvature.last_layer import (
    linear_head_logit_covariance,
    linear_head_logit_variance,
)
from jaxal.curvature.layerwise import logit_variance_layerwise
from jaxal.errors import ConfigError
from jaxal.model import Classifier, apply_head, init_params
from jaxal.objective import log_likelihood
from jaxal.posteriors import Posterior


def log_det_precision(post) -> jax.Array:
    """log det(curvature + λ I)."""
    return structure_of(post).log_det_precision(post)


def posterior_covariance(post) -> jax.Array:
    """Dense (curvature + λ I)⁻¹ [P, P]; for tests and small subsets."""
    return structure_of(post).covariance(post)


def sample_laplace(key: jax.Array, post) -> jax.Array:
    """One draw θ ~ N(θ_MAP, (curvature + λ I)⁻¹) [P]; vmap over keys for many.

    full: θ_MAP + V diag((e + λ)^-½) z, the symmetric square root of the covariance;
    diag / iso: θ_MAP + z / √(d + λ);  kfac: per layer, in the Kronecker eigenbasis.
    """
    return structure_of(post).sample(key, post)


def log_marginal_likelihood(post, log_likelihood_at_map: jax.Array,
                            prior_precision: jax.Array | None = None) -> jax.Array:
    """Laplace evidence log p(D | λ), differentiable in λ.

        log p(D | λ) ≈ log p(D | θ*) + log p(θ* | λ) + P/2 log 2π - ½ log det(H + Λ)
                     = log p(D | θ*) - ½ θ*ᵀ Λ θ* + ½ Σ_i log λ_i - ½ log det(H + Λ),

    with θ* the MAP of the subset, H the stored curvature and Λ = diag(λ): λ a scalar (one
    prior precision) or [P] (one per weight, e.g. one per layer broadcast to its weights).
    ``prior_precision`` overrides the posterior's λ (to fit it), keeping the curvature.
    """
    lam = post.prior_precision if prior_precision is None else prior_precision
    post = structure_of(post).with_prior_precision(post, lam)
    lam_p = jnp.broadcast_to(lam, post.mean.shape)
    return (log_likelihood_at_map - 0.5 * jnp.vdot(post.mean, lam_p * post.mean)
            + 0.5 * jnp.log(lam_p).sum() - 0.5 * log_det_precision(post))


def layer_groups(theta) -> tuple[np.ndarray, tuple[str, ...]]:
    """(group [P], names [L]): which layer each raveled weight of ``theta`` belongs to (a
    layer: the kernel and bias of one module), in ``ravel_pytree``'s order; static."""
    leaves = jax.tree_util.tree_flatten_with_path(theta)[0]
    names = [jax.tree_util.keystr(path[:-1]) for path, _ in leaves]
    layers = tuple(dict.fromkeys(names))
    group = np.concatenate([np.full(np.size(leaf), layers.index(name), np.int32)
                            for (_, leaf), name in zip(leaves, names, strict=True)])
    return group, layers


def fit_prior_precision(post, log_likelihood_at_map: jax.Array, init: float = 1.0,
                        steps: int = 300, learning_rate: float = 0.1,
                        groups: np.ndarray | None = None) -> jax.Array:
    """argmax_λ of the Laplace evidence, by Adam on log λ (the curvature stays fixed), as
    laplace-torch's ``optimize_prior_precision(method="marglik")``.

    ``groups`` None: one scalar λ. Otherwise an int [P] array of group ids (``layer_groups``:
    one λ per layer), and the result is the per-weight λ [P] (each group's value broadcast
    to its weights), which every structure's posterior takes.
    """
    size = 1 if groups is None else int(groups.max()) + 1
    expand = (lambda v: v[0]) if groups is None else (lambda v: v[groups])
    objective = lambda log_lam: -log_marginal_likelihood(post, log_likelihood_at_map,
                                                         expand(jnp.exp(log_lam)))
    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        log_lam, opt_state = carry
        grad = jax.grad(objective)(log_lam)
        updates, opt_state = optimizer.update(grad, opt_state)
        return (optax.apply_updates(log_lam, updates), opt_state), None

    log_lam = jnp.full(size, jnp.log(jnp.asarray(init, post.mean.dtype)))
    (log_lam, _), _ = jax.lax.scan(step, (log_lam, optimizer.init(log_lam)), None, steps)
    return expand(jnp.exp(log_lam))


class LastLayerLaplace(NamedTuple):
    """Laplace over the head only; the features come from θ_MAP, computed once."""

    params: Any              # θ_MAP, all weights
    head: Any                # a structure's state over the raveled head parameters


class WeightsLaplace(NamedTuple):
    """Laplace over all weights."""

    params: Any
    weights: Any             # a structure's state over all raveled parameters


def head_params(params):
    """The last layer's parameters as a pytree ``apply_head`` takes."""
    return {"params": {"head": params["params"]["head"]}}


def subset_problem(model: Classifier, params, x: jax.Array, subset: str):
    """(θ_subset, logits_fn, inputs) so that logits = logits_fn(θ_subset, inputs)."""
    if subset == "last-layer":
        features = model.apply(params, x, method=model.features)
        return head_params(params), apply_head, features
    return params, model.apply, x


def curvature_problem(model: Classifier, params, x: jax.Array, y: jax.Array,
                      weights: jax.Array, subset: str, chunk_size: int | None = None
                      ) -> CurvatureProblem:
    """The NLL of the labelled buffer over the parameter ``subset``, for the structures."""
    theta, logits_fn, inputs = subset_problem(model, params, x, subset)
    return CurvatureProblem(model, params, x, y, weights, subset, theta, logits_fn, inputs,
                            chunk_size)


def fit_laplace(key: jax.Array, model: Classifier, params, x, y, weights,
                prior_precision, options: LaplaceOptions):
    """Laplace posterior at θ_MAP with the choices of ``options``.

    The curvature (``options.curvature`` on ``options.subset``) is computed and stored by
    the structure ``STRUCTURES[options.structure]``; a combination it does not
    compute is refused with the fix. The prior precision is the MAP objective's
    (``prior_precision``) unless ``options.prior_precision`` overrides it; with
    ``prior_fit="evidence"`` it is then set to the evidence maximiser for the fitted
    curvature (post hoc, as the MAP is not refitted). ``prior_fit="val-nll"`` needs the
    validation data and the predictive, so the loop does it
    (``jaxal.loop.tune_prior_precision``).
    """
    lc = options
    structure = STRUCTURES[lc.structure]
    form = structure.forms.get((lc.curvature, lc.subset))
    if form is None:
        raise ConfigError(refusal(lc.structure, lc.curvature, lc.subset))
    if lc.prior_fit in ONLINE_PRIOR_FITS:
        # Trained with its prior (``jaxal.posteriors.marglik``): θ and the learned log λ.
        from jaxal.posteriors.marglik import prior_groups, subset_prior_precision

        lam = subset_prior_precision(params.log_prior_precision,
                                     prior_groups(model, params.params, lc))
        params = params.params
    else:
        lam = prior_precision if lc.prior_precision is None else lc.prior_precision
    problem = curvature_problem(model, params, x, y, weights, lc.subset, lc.chunk_size)
    lam = jnp.asarray(lam, x.dtype)
    post = structure.build(problem.theta, form(key, problem), lam)
    groups = layer_groups(problem.theta)[0] if lc.prior_fit.endswith("-layerwise") else None
    if lc.prior_fit in ("evidence", "evidence-layerwise"):
        ll = log_likelihood(problem.logits_fn(problem.theta, problem.inputs), y, weights)
        post = structure.with_prior_precision(
            post, fit_prior_precision(post, ll, init=lam, groups=groups))
    elif lc.prior_fit in ("linear-mode", "linear-mode-layerwise"):
        # Imported here: jaxal.posteriors.evidence builds on this module's subset problems.
        from jaxal.posteriors.evidence import fit_prior_precision_linear_mode

        fitted, _ = fit_prior_precision_linear_mode(post, problem.logits_fn, problem.theta,
                                                    problem.inputs, y, weights,
                                                    groups=groups, init=lam)
        post = structure.with_prior_precision(post, fitted)
    if lc.subset == "last-layer":
        return LastLayerLaplace(params, post)
    return WeightsLaplace(params, post)


def with_prior_precision(posterior, prior_precision: jax.Array):
    """The same Laplace posterior (curvature kept) with another prior precision λ."""
    if isinstance(posterior, LastLayerLaplace):
        head = structure_of(posterior.head).with_prior_precision(posterior.head,
                                                                 prior_precision)
        return posterior._replace(head=head)
    weights = structure_of(posterior.weights).with_prior_precision(posterior.weights,
                                                                   prior_precision)
    return posterior._replace(weights=weights)


def prior_precision_of(posterior) -> jax.Array | None:
    """The posterior's prior precision (None for the plugin); for one λ per layer, their
    geometric mean over the weights."""
    inner = getattr(posterior, "head", None) or getattr(posterior, "weights", None)
    if inner is None:
        return None
    lam = inner.prior_precision
    return lam if jnp.ndim(lam) == 0 else jnp.exp(jnp.log(lam).mean())


def prior_precision_by_layer(model: Classifier, posterior, options: LaplaceOptions,
                             input_shape) -> dict[str, float]:
    """{layer: λ} of a fitted Laplace posterior (one entry per layer of its subset)."""
    inner = posterior.head if isinstance(posterior, LastLayerLaplace) else posterior.weights
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), input_shape))
    if options.subset == "last-layer":
        params = head_params(params)
    group, layers = layer_groups(params)
    lam = np.broadcast_to(np.asarray(inner.prior_precision), group.shape)
    return {name: float(lam[group == i][0]) for i, name in enumerate(layers)}


def posterior_samples(key: jax.Array, posterior, num_samples: int) -> jax.Array:
    """[S, P_subset] draws from a Laplace posterior (vmapped over a key array)."""
    inner = posterior.head if isinstance(posterior, LastLayerLaplace) else posterior.weights
    keys = jax.random.split(key, num_samples)
    return jax.vmap(sample_laplace, in_axes=(0, None))(keys, inner)


def laplace_sample_probs(key: jax.Array, model: Classifier, posterior, x: jax.Array,
                         options: LaplaceOptions) -> jax.Array:
    """softmax(f(x; θ_s)) [S, n, C] for S = ``options.samples`` draws θ_s ~ N(θ_MAP, Σ).

    Samples are drawn vmapped over a key array. Last layer: the features are computed once
    from θ_MAP and only the head is sampled (vmapped). All weights: one forward pass per
    sample (``jaxal.batching.over_samples``: in sequence on CPU, in vmapped groups
    elsewhere), so memory is one chunk's (or group's) activations whatever S is.
    The same key gives the same S samples for every chunk of a pool.
    """
    samples = posterior_samples(key, posterior, options.samples)
    if options.subset == "last-layer":
        head = head_params(posterior.params)
        unravel = ravel_pytree(head)[1]
        features = model.apply(posterior.params, x, method=model.features)
        logits = jax.vmap(lambda t: apply_head(unravel(t), features))(samples)
        return jax.nn.softmax(logits)
    # On CPU one plain forward pass of the chunk per sample, in sequence: vmapping over
    # the weights turns every convolution into a grouped one, ~9x slower on XLA:CPU.
    # Elsewhere vmapped in groups (``jaxal.batching.over_samples``).
    unravel = ravel_pytree(posterior.params)[1]
    return over_samples(lambda t: jax.nn.softmax(model.apply(unravel(t), x)), samples)


def laplace_glm_sample_probs(key: jax.Array, model: Classifier, posterior, x: jax.Array,
                             options: LaplaceOptions) -> jax.Array:
    """softmax(f_lin(x; θ_s)) [S, n, C] of the linearised (GLM) network

        f_lin(x; θ) = f(x; θ*) + J(x) (θ - θ*),   θ_s ~ N(θ*, Σ),  S = ``options.samples``,

    the predictive consistent with the GGN's linearisation (Immer et al. 2021). Last layer:
    the head is linear in its weights, so f_lin = f and this is the MC predictive. All
    weights: one linearisation of the chunk (``jax.linearize``: the forward pass once),
    then one Jacobian-vector product per sample (``jaxal.batching.over_samples``: in
    sequence on CPU, vmapped in groups elsewhere). The same key
    gives the same samples for every chunk of a pool (BatchBALD's joint entropies).
    """
    if options.subset == "last-layer":
        return laplace_sample_probs(key, model, posterior, x, options)
    samples = posterior_samples(key, posterior, options.samples)
    unravel = ravel_pytree(posterior.params)[1]
    logits, jvp = jax.linearize(lambda p: model.apply(p, x), posterior.params)
    mean = posterior.weights.mean
    return over_samples(lambda t: jax.nn.softmax(logits + jvp(unravel(t - mean))), samples)


def last_layer_logit_variance(posterior: LastLayerLaplace, features: jax.Array
                              ) -> jax.Array:
    """diag(J_n Σ J_nᵀ) [n, C] for the linear head, J_n = ∂f_n/∂θ_head, from the dense
    covariance of any structure (``jaxal.curvature.last_layer.linear_head_logit_variance``)."""
    return linear_head_logit_variance(head_params(posterior.params),
                                      posterior_covariance(posterior.head), features)


def weights_logit_variance(model: Classifier, posterior: WeightsLaplace, x: jax.Array,
                           full: bool = False) -> jax.Array:
    """diag(J_n Σ J_nᵀ) [n, C] for an all-weights posterior whose Σ is block-diagonal over
    layers (diag, iso, KFAC: its structure's ``layer_variance``).

    The variance is then a sum of per-layer terms from the layer inputs and the logit
    Jacobian's output gradients (``jaxal.curvature.layerwise.logit_variance_layerwise``):
    diag/iso weight J² by σ²; KFAC rotates both sides into the Kronecker eigenbasis and
    weights by 1 / (e_A e_Gᵀ + λ). ``full``: the whole J_n Σ J_nᵀ [n, C, C].
    """
    inner = posterior.weights
    structure = structure_of(inner)
    if structure.layer_variance is None:
        raise ConfigError(probit_fix())
    layer_variance = structure.layer_variance(inner, posterior.params)
    return logit_variance_layerwise(model, posterior.params, x, layer_variance, full)


def laplace_logit_variance(model: Classifier, posterior, x: jax.Array,
                           options: LaplaceOptions) -> tuple[jax.Array, jax.Array]:
    """(f(x; θ_MAP), diag(J Σ Jᵀ)) [n, C] each: the linearised (GLM) logits' mean and
    variance, for the last layer (any structure) and all weights with a structure whose
    covariance is block-diagonal over layers (diag, iso, KFAC)."""
    if options.subset == "last-layer":
        features = model.apply(posterior.params, x, method=model.features)
        logits = apply_head(head_params(posterior.params), features)
        return logits, last_layer_logit_variance(posterior, features)
    return model.apply(posterior.params, x), weights_logit_variance(model, posterior, x)


def laplace_logit_covariance(model: Classifier, posterior, x: jax.Array,
                             options: LaplaceOptions) -> tuple[jax.Array, jax.Array]:
    """(f(x; θ_MAP) [n, C], J Σ Jᵀ [n, C, C]): the linearised (GLM) logits' mean and their
    whole covariance per point, for the structures ``laplace_logit_variance`` serves."""
    if options.subset == "last-layer":
        features = model.apply(posterior.params, x, method=model.features)
        logits = apply_head(head_params(posterior.params), features)
        return logits, linear_head_logit_covariance(
            head_params(posterior.params), posterior_covariance(posterior.head), features)
    return (model.apply(posterior.params, x),
            weights_logit_variance(model, posterior, x, full=True))


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(names) -> str:
    """'a', 'a or b', 'a, b or c'."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def refusal(structure: str, source: str, subset: str) -> str:
    """Why ``STRUCTURES[structure]`` does not compute ``source`` on ``subset``, naming the
    fix: the structure's own ``why_not``, or else what the table offers instead."""
    record = STRUCTURES[structure]
    if record.why_not is not None:
        return record.why_not(source, subset)
    others = [name for name, s in STRUCTURES.items() if (source, subset) in s.forms]
    takes = list(dict.fromkeys(src for src, sub in record.forms if sub == subset))
    subsets = list(dict.fromkeys(sub for src, sub in record.forms if src == source))
    fixes = [f"--{option} {_one_of(names)}" for option, names in
             (("structure", others), ("curvature", takes), ("subset", subsets)) if names]
    return (f"structure {structure!r} does not compute the {source!r} curvature on subset "
            f"{subset!r}; use {', or '.join(fixes)}")


# The predictives that read the logits' per-point (co)variance J Σ Jᵀ.
PER_POINT_PREDICTIVES = ("probit", "glm-logits")


def probit_fix(predictive: str = "probit") -> str:
    """The all-weights probit (and glm-logits) needs a structure with per-layer logit
    (co)variance terms."""
    layered = [name for name, s in STRUCTURES.items() if s.layer_variance is not None]
    return (f"the {predictive} predictive over all weights needs a layer-block covariance; "
            f"use --structure {_one_of(layered)}, or --subset last-layer, or --predictive "
            + ("glm" if predictive == "glm-logits" else "mc"))


def check_laplace(options: LaplaceOptions, config) -> None:
    """The Laplace posterior's own rules on ``options`` (and the run's predictive).

    Which curvature source on which subset a structure computes, and whether it offers the
    all-weights probit, are what its record in ``jaxal.curvature.STRUCTURES`` declares.
    """
    lc = options
    _need(lc.structure in STRUCTURES and lc.curvature in sources(),
          f"unknown curvature {lc.curvature!r} / structure {lc.structure!r}; choose a "
          f"curvature from {list(sources())} and a structure from {list(STRUCTURES)}")
    lc.check(config)
    structure = STRUCTURES[lc.structure]
    if (lc.curvature, lc.subset) not in structure.forms:
        raise ConfigError(refusal(lc.structure, lc.curvature, lc.subset))
    # With λ = 0 the posterior precision is the curvature alone, singular whenever there
    # are fewer labels than weights: the covariance is infinite.
    _need(lc.prior_fit != "none" or (lc.prior_precision or config.train.prior_precision) > 0,
          "the Laplace posterior needs a prior precision > 0 (got 0: its covariance would "
          "be infinite); use --prior-precision 1, val-nll or auto")
    _need(lc.prior_fit not in ONLINE_PRIOR_FITS
          or (lc.prior_precision or config.train.prior_precision) > 0,
          "online marglik learns log λ from the run's prior precision, and it is 0 (no "
          "log); train with a prior precision > 0 (TrainConfig.prior_precision, default 1)")
    if (config.predictive in PER_POINT_PREDICTIVES and lc.subset != "last-layer"
            and structure.layer_variance is None):
        raise ConfigError(probit_fix(config.predictive))
    if lc.prior_fit.endswith("-layerwise") and lc.subset == "last-layer":
        one = PRIOR_FLAG[lc.prior_fit].removesuffix("-layerwise")
        raise ConfigError("a layerwise prior needs more than one layer, and the last layer "
                          f"is one: use --prior-precision {one} (one λ), or --subset all for "
                          "one λ per layer")
    _need(lc.prior_fit != "val-nll" or (
              len(lc.prior_precision_grid) > 0
              and all(math.isfinite(v) and v > 0 for v in lc.prior_precision_grid)),
          f"the val-nll prior fit needs a grid of values > 0 (got "
          f"{lc.prior_precision_grid}); pass prior_precision_grid or another prior_fit")


def check_laplace_fits(model: Classifier, options: LaplaceOptions,
                       input_shape: tuple[int, ...]) -> None:
    """Refuse, before training, a curvature the parameter subset makes too large for its
    structure (its record's ``check_size``: the dense one)."""
    lc = options
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), input_shape))
    if lc.subset == "last-layer":
        params = head_params(params)
    size = sum(p.size for p in jax.tree.leaves(params))
    if (lc.prior_fit.startswith("linear-mode") and jax.default_backend() == "cpu"
            and size > LINEAR_MODE_CPU_WEIGHTS):
        raise ConfigError(
            f"--prior-precision {PRIOR_FLAG[lc.prior_fit]} on {size:,} weights runs its "
            "Newton-CG loops inside the jitted fit, where XLA:CPU takes ~75 s a Newton step "
            "for the seed CNN (hours a round; benchmarks/linear_mode_evidence.py); use "
            "--prior-precision auto-layerwise, --subset last-layer, or a GPU")
    structure = STRUCTURES.get(lc.structure)
    if structure is None or structure.check_size is None:
        return   # check_laplace names the structures
    try:
        structure.check_size(size)
    except CurvatureTooLargeError as e:
        raise ConfigError(f"--structure {lc.structure} on subset {lc.subset!r}: {e}") from e


# The most weights the linear-mode prior fit takes on CPU: its while loops over Newton and CG
# steps run convolutions ~45x slower there than unrolled (jaxal.posteriors.evidence); the toy
# MLPs pass.
LINEAR_MODE_CPU_WEIGHTS = 20_000


def laplace_diagnose(model: Classifier, posterior, x: jax.Array, options: LaplaceOptions
                     ) -> dict:
    """The evidence diagnosis of a fitted Laplace posterior over the points x
    (``jaxal.posteriors.evidence.evidence_diagnosis``): per layer of its subset λ, γ, λ ‖θ‖²,
    the prior variance against the mean square weight, and the GLM logit std against the MAP's logit
    spread; a tree of arrays (``EvidenceDiagnosis.as_tree``)."""
    from jaxal.posteriors.evidence import evidence_diagnosis  # builds on this module

    inner = posterior.head if options.subset == "last-layer" else posterior.weights
    theta = head_params(posterior.params) if options.subset == "last-layer" else posterior.params
    diagnosis = evidence_diagnosis(model, posterior.params, inner, x, options.subset)
    return diagnosis.as_tree(layer_groups(theta)[1])


def laplace_training(trainer, init_one, options: LaplaceOptions, *, model: Classifier,
                     capacity: int):
    """The online prior fits (``marglik``, ``marglik-layerwise``) learn λ while training
    θ (``jaxal.posteriors.marglik.online_marglik``); the others train θ_MAP as it is."""
    if options.prior_fit not in ONLINE_PRIOR_FITS:
        return trainer, init_one
    from jaxal.posteriors.marglik import online_marglik  # builds on this module's subset problems

    return online_marglik(trainer, init_one, options, model=model, capacity=capacity)


def laplace_default_predictive(options: LaplaceOptions, needs_samples: bool) -> str:
    """mc when the acquisition needs samples or the subset is all weights, else probit
    (last layer: measured best, ``benchmarks/laplace_curves.py``)."""
    return "mc" if needs_samples or options.subset != "last-layer" else "probit"


def laplace_chunk_size(options: LaplaceOptions, predictive: str) -> int | None:
    """The all-weights probit holds C output gradients of every layer per point (~1 MB
    each for the seed CNN on MNIST): at most PROBIT_ALL_WEIGHTS_CHUNK points a chunk."""
    if predictive == "probit" and options.subset == "all":
        return PROBIT_ALL_WEIGHTS_CHUNK
    return None


PROBIT_ALL_WEIGHTS_CHUNK = 256


LAPLACE = Posterior(
    fit_laplace, sample_probs=laplace_sample_probs,
    glm_sample_probs=laplace_glm_sample_probs, logit_variance=laplace_logit_variance,
    logit_covariance=laplace_logit_covariance,
    prior_precision=prior_precision_of, with_prior_precision=with_prior_precision,
    check=check_laplace, check_model=check_laplace_fits,
    default_predictive=laplace_default_predictive, training=laplace_training,
    validation_grid=lambda options: (options.prior_precision_grid
                                     if options.prior_fit == "val-nll" else None),
    chunk_size=laplace_chunk_size, num_samples=lambda options: options.samples,
    diagnose=laplace_diagnose)
