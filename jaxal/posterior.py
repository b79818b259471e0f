"""Posteriors over the network weights, fitted after MAP training; one registry for all.

Every entry has the signature

    fit(key, model, params, x, y, weights, config) -> posterior

where ``params`` is θ_MAP, ``x, y`` a static-size buffer of the labelled data it was fitted
on and ``weights`` [n] marks the real (1) and padding (0) rows; ``config`` is the run's
``ALConfig``. The returned posterior is a pytree that the matching predictives in
``jaxal.predictive`` consume: the plugin point mass, or a Laplace approximation
N(θ_MAP, (curvature + prior_precision I)⁻¹) over all weights or the last layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxal.config import VALIDATION_GRID as VALIDATION_GRID  # re-exported
from jaxal.config import LaplaceConfig as LaplaceConfig
from jaxal.curvature import (
    CURVATURES,
    CurvatureTooLargeError,
    check_dense_fits,
    linear_head_ggn,
)
from jaxal.errors import ConfigError
from jaxal.layerwise import (
    diagonal_layer_variance,
    ggn_diagonal_layerwise,
    kfac_factors,
    kfac_layer_variance,
    logit_variance_layerwise,
    sampled_factors,
)
from jaxal.model import Classifier, apply_head, init_params
from jaxal.objective import log_likelihood


class PointMass(NamedTuple):
    """The plugin "posterior": all mass on θ_MAP."""

    params: Any


def fit_point_mass(key: jax.Array, model: Classifier, params, x, y, weights,
                   config) -> PointMass:
    del key, model, x, y, weights, config
    return PointMass(params)


# --- Laplace: N(θ_MAP, (curvature + prior_precision I)⁻¹) over a raveled parameter subset ---
#
# Each stored structure keeps the curvature in a form from which the precision for *any*
# prior precision λ is cheap, so the evidence can be maximised over λ without refitting:
#   full: eigendecomposition H = V diag(e) Vᵀ (e clipped at 0: an indefinite Hessian is
#         made positive semi-definite on purpose, before the prior is added);
#   diag: the diagonal d (clipped at 0);   iso: one scalar s = trace / P.


class FullLaplace(NamedTuple):
    mean: jax.Array          # θ_MAP [P]
    eigenvalues: jax.Array   # e [P], >= 0
    eigenvectors: jax.Array  # V [P, P]
    prior_precision: jax.Array


class DiagLaplace(NamedTuple):
    mean: jax.Array
    curvature: jax.Array     # d [P], >= 0
    prior_precision: jax.Array


class IsoLaplace(NamedTuple):
    mean: jax.Array
    curvature: jax.Array     # s, scalar >= 0
    prior_precision: jax.Array


def full_laplace(mean, curvature, prior_precision) -> FullLaplace:
    curvature = 0.5 * (curvature + curvature.T)
    e, v = jnp.linalg.eigh(curvature)
    return FullLaplace(mean, jnp.maximum(e, 0.0), v, jnp.asarray(prior_precision))


def diag_laplace(mean, curvature, prior_precision) -> DiagLaplace:
    return DiagLaplace(mean, jnp.maximum(curvature, 0.0), jnp.asarray(prior_precision))


def iso_laplace(mean, curvature, prior_precision) -> IsoLaplace:
    return IsoLaplace(mean, jnp.maximum(curvature, 0.0), jnp.asarray(prior_precision))


def _precision_spectrum(post) -> jax.Array:
    """Eigenvalues of the precision curvature + λI, [P] (broadcast for iso)."""
    if isinstance(post, FullLaplace):
        return post.eigenvalues + post.prior_precision
    return jnp.broadcast_to(post.curvature + post.prior_precision, post.mean.shape)


def log_det_precision(post) -> jax.Array:
    """log det(curvature + λ I)."""
    if isinstance(post, KFACLaplace):
        return sum(jnp.log(s).sum() for s in _kfac_spectra(post).values())
    return jnp.log(_precision_spectrum(post)).sum()


def posterior_covariance(post) -> jax.Array:
    """Dense (curvature + λ I)⁻¹ [P, P]; for tests and small subsets."""
    inv = 1.0 / _precision_spectrum(post)
    if isinstance(post, FullLaplace):
        return (post.eigenvectors * inv) @ post.eigenvectors.T
    return jnp.diag(inv)


def sample_laplace(key: jax.Array, post) -> jax.Array:
    """One draw θ ~ N(θ_MAP, (curvature + λ I)⁻¹) [P]; vmap over keys for many.

    full: θ_MAP + V diag((e + λ)^-½) z, the symmetric square root of the covariance;
    diag / iso: θ_MAP + z / √(d + λ);  kfac: per layer, in the Kronecker eigenbasis.
    """
    if isinstance(post, KFACLaplace):
        return _kfac_sample(key, post)
    z = jax.random.normal(key, post.mean.shape, post.mean.dtype)
    scaled = z / jnp.sqrt(_precision_spectrum(post))
    if isinstance(post, FullLaplace):
        return post.mean + post.eigenvectors @ scaled
    return post.mean + scaled


def log_marginal_likelihood(post, log_likelihood_at_map: jax.Array,
                            prior_precision: jax.Array | None = None) -> jax.Array:
    """Laplace evidence log p(D | λ), differentiable in λ.

        log p(D | λ) ≈ log p(D | θ*) + log p(θ* | λ) + P/2 log 2π - ½ log det(H + λ I)
                     = log p(D | θ*) - λ/2 ‖θ*‖² + P/2 log λ - ½ log det(H + λ I),

    with θ* the MAP of the subset and H the stored curvature. ``prior_precision``
    overrides the posterior's λ (to fit it), keeping the curvature.
    """
    lam = post.prior_precision if prior_precision is None else prior_precision
    post = post._replace(prior_precision=lam)
    num_params = post.mean.size
    return (log_likelihood_at_map - 0.5 * lam * jnp.vdot(post.mean, post.mean)
            + 0.5 * num_params * jnp.log(lam) - 0.5 * log_det_precision(post))


def fit_prior_precision(post, log_likelihood_at_map: jax.Array, init: float = 1.0,
                        steps: int = 300, learning_rate: float = 0.1) -> jax.Array:
    """argmax_λ of the Laplace evidence, by Adam on log λ (the curvature stays fixed)."""
    objective = lambda log_lam: -log_marginal_likelihood(post, log_likelihood_at_map,
                                                         jnp.exp(log_lam))
    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        log_lam, opt_state = carry
        grad = jax.grad(objective)(log_lam)
        updates, opt_state = optimizer.update(grad, opt_state)
        return (optax.apply_updates(log_lam, updates), opt_state), None

    log_lam = jnp.log(jnp.asarray(init, post.mean.dtype))
    (log_lam, _), _ = jax.lax.scan(step, (log_lam, optimizer.init(log_lam)), None, steps)
    return jnp.exp(log_lam)


class KFACLaplace(NamedTuple):
    """Per layer l: precision block A_l ⊗ G_l + λ I, kept as eigendecompositions.

    ``layers`` maps a layer path ("body/Conv_0") to (Q_A, e_A, Q_G, e_G); the precision's
    eigenvalues are e_A,i e_G,j + λ with eigenvectors Q_A[:, i] ⊗ Q_G[:, j].
    """

    mean: jax.Array          # θ_MAP [P], raveled
    params: Any              # θ_MAP as a pytree (where each layer's block lives)
    layers: dict
    prior_precision: jax.Array


def kfac_laplace(params, factors: dict, prior_precision) -> KFACLaplace:
    layers = {}
    for path, (a, g) in factors.items():
        ea, qa = jnp.linalg.eigh(0.5 * (a + a.T))
        eg, qg = jnp.linalg.eigh(0.5 * (g + g.T))
        layers["/".join(path)] = (qa, jnp.maximum(ea, 0.0), qg, jnp.maximum(eg, 0.0))
    return KFACLaplace(ravel_pytree(params)[0], params, layers, jnp.asarray(prior_precision))


def _kfac_spectra(post: KFACLaplace):
    return {k: jnp.outer(ea, eg) + post.prior_precision
            for k, (_, ea, _, eg) in post.layers.items()}


def _kfac_sample(key: jax.Array, post: KFACLaplace) -> jax.Array:
    """θ_MAP + per layer Q_A (Z / √(e_A e_Gᵀ + λ)) Q_Gᵀ, Z ~ N(0, I), split into kernel/bias."""
    spectra = _kfac_spectra(post)
    delta = jax.tree.map(jnp.zeros_like, post.params)
    keys = jax.random.split(key, len(post.layers))
    for key_l, (name, (qa, _, qg, _)) in zip(keys, sorted(post.layers.items()), strict=True):
        z = jax.random.normal(key_l, spectra[name].shape, post.mean.dtype)
        d = qa @ (z / jnp.sqrt(spectra[name])) @ qg.T                  # [K+1, out]
        node = delta["params"]
        for part in name.split("/"):
            node = node[part]
        node["kernel"] = d[:-1].reshape(node["kernel"].shape)
        node["bias"] = d[-1]
    return post.mean + ravel_pytree(delta)[0]


LAPLACE_STRUCTURES = {"full": full_laplace, "diag": diag_laplace, "iso": iso_laplace}
SUBSETS = ("last-layer", "all")
PRIOR_FITS = ("val-nll", "evidence", "none")



class LastLayerLaplace(NamedTuple):
    """Laplace over the head only; the features come from θ_MAP, computed once."""

    params: Any              # θ_MAP, all weights
    head: Any                # Full/Diag/IsoLaplace over the raveled head parameters


class WeightsLaplace(NamedTuple):
    """Laplace over all weights."""

    params: Any
    weights: Any             # Full/Diag/IsoLaplace over all raveled parameters


def head_params(params):
    """The last layer's parameters as a pytree ``apply_head`` takes."""
    return {"params": {"head": params["params"]["head"]}}


def subset_problem(model: Classifier, params, x: jax.Array, subset: str):
    """(θ_subset, logits_fn, inputs) so that logits = logits_fn(θ_subset, inputs)."""
    if subset == "last-layer":
        features = model.apply(params, x, method=model.features)
        return head_params(params), apply_head, features
    return params, model.apply, x


def fit_laplace(key: jax.Array, model: Classifier, params, x, y, weights, config):
    """Laplace posterior at θ_MAP with the run's ``config.laplace`` choices.

    The prior precision is the MAP objective's (``config.train.prior_precision``) unless
    ``config.laplace`` overrides it; with ``prior_fit="evidence"`` it is then set to the
    evidence maximiser for the fitted curvature (post hoc, as the MAP is not refitted).
    ``prior_fit="val-nll"`` needs the validation data and the predictive, so the loop
    does it (``jaxal.loop.tune_prior_precision``).
    """
    lc = config.laplace
    theta, logits_fn, inputs = subset_problem(model, params, x, lc.subset)
    lam = config.train.prior_precision if lc.prior_precision is None else lc.prior_precision
    lam = jnp.asarray(lam, x.dtype)
    # Per-layer forms hold [C, chunk, activations]; the generic all-weights forms hold
    # [chunk, C-1, P] per-example factors, hence their small default.
    layer_chunk = lc.chunk_size or 100
    generic_chunk = lc.chunk_size or (256 if lc.subset == "last-layer" else 16)
    # "ggn-mc": one sampled label per example instead of the C factor columns (validated:
    # all weights, diag/iso/kfac, where the per-layer forms below take it).
    factors_fn = sampled_factors(key) if lc.curvature == "ggn-mc" else None
    if lc.structure == "kfac":   # all weights (validated): per-layer Kronecker factors
        post = kfac_laplace(params, kfac_factors(model, params, x, weights, layer_chunk,
                                                 factors_fn), lam)
    else:
        if lc.subset == "all" and lc.curvature != "hessian" and lc.structure in ("diag", "iso"):
            # Same quantity per layer: one (C-1)-cotangent backward pass per chunk, not
            # C-1 vector-Jacobian products per example.
            diagonal = ggn_diagonal_layerwise(model, params, x, weights, layer_chunk,
                                              factors_fn)
            curvature = diagonal if lc.structure == "diag" else diagonal.mean()
        elif lc.subset == "last-layer" and lc.curvature == "ggn":
            # The head is linear in θ: the GGN is Σ_n φ̃_n φ̃_nᵀ ⊗ Λ_n, one einsum.
            full = linear_head_ggn(theta, inputs, weights)
            curvature = {"full": full, "diag": jnp.diag(full),
                         "iso": jnp.trace(full) / full.shape[0]}[lc.structure]
        else:
            curvature = CURVATURES[(lc.curvature, lc.structure)](
                logits_fn, theta, inputs, y, weights, generic_chunk)
        post = LAPLACE_STRUCTURES[lc.structure](ravel_pytree(theta)[0], curvature, lam)
    if lc.prior_fit == "evidence":
        ll = log_likelihood(logits_fn(theta, inputs), y, weights)
        post = post._replace(prior_precision=fit_prior_precision(post, ll, init=lam))
    if lc.subset == "last-layer":
        return LastLayerLaplace(params, post)
    return WeightsLaplace(params, post)


def with_prior_precision(posterior, prior_precision: jax.Array):
    """The same Laplace posterior (curvature kept) with another prior precision λ."""
    if isinstance(posterior, LastLayerLaplace):
        return posterior._replace(head=posterior.head._replace(prior_precision=prior_precision))
    return posterior._replace(weights=posterior.weights._replace(prior_precision=prior_precision))


def prior_precision_of(posterior) -> jax.Array | None:
    """The posterior's prior precision (None for the plugin)."""
    inner = getattr(posterior, "head", None) or getattr(posterior, "weights", None)
    return None if inner is None else inner.prior_precision


# --- What a fitted Laplace posterior offers the predictives (``Posterior`` record) ------


def posterior_samples(key: jax.Array, posterior, num_samples: int) -> jax.Array:
    """[S, P_subset] draws from a Laplace posterior (vmapped over a key array)."""
    inner = posterior.head if isinstance(posterior, LastLayerLaplace) else posterior.weights
    keys = jax.random.split(key, num_samples)
    return jax.vmap(sample_laplace, in_axes=(0, None))(keys, inner)


def laplace_sample_probs(key: jax.Array, model: Classifier, posterior, x: jax.Array,
                         config) -> jax.Array:
    """softmax(f(x; θ_s)) [S, n, C] for S = ``config.laplace.samples`` draws θ_s ~ N(θ_MAP, Σ).

    Samples are drawn vmapped over a key array. Last layer: the features are computed once
    from θ_MAP and only the head is sampled (vmapped). All weights: one forward pass per
    sample (``lax.map``), so memory is one chunk's activations whatever S is.
    The same key gives the same S samples for every chunk of a pool.
    """
    samples = posterior_samples(key, posterior, config.laplace.samples)
    if config.laplace.subset == "last-layer":
        head = head_params(posterior.params)
        unravel = ravel_pytree(head)[1]
        features = model.apply(posterior.params, x, method=model.features)
        logits = jax.vmap(lambda t: apply_head(unravel(t), features))(samples)
        return jax.nn.softmax(logits)
    # One plain forward pass of the chunk per sample, in sequence: vmapping over the
    # weights turns every convolution into a grouped one, ~9x slower on XLA:CPU.
    unravel = ravel_pytree(posterior.params)[1]
    return jax.lax.map(lambda t: jax.nn.softmax(model.apply(unravel(t), x)), samples)


def last_layer_logit_variance(posterior: LastLayerLaplace, features: jax.Array
                              ) -> jax.Array:
    """diag(J_n Σ J_nᵀ) [n, C] for the linear head, J_n = ∂f_n/∂θ_head.

    Logit c depends only on kernel[:, c] and bias[c], so with φ̃_n = [φ_n, 1] its variance
    is φ̃_nᵀ Σ_c φ̃_n, Σ_c the (d+1) x (d+1) covariance block of those parameters.
    """
    head = head_params(posterior.params)
    flat, unravel = ravel_pytree(head)
    position = unravel(jnp.arange(flat.size, dtype=jnp.float32))["params"]["head"]
    index = jnp.concatenate([position["kernel"], position["bias"][None]]).astype(jnp.int32)
    cov = posterior_covariance(posterior.head)                 # [P, P], P = (d+1) C
    blocks = cov[index.T[:, :, None], index.T[:, None, :]]      # [C, d+1, d+1]
    phi = jnp.concatenate([features, jnp.ones_like(features[:, :1])], axis=1)
    return jnp.einsum("ni,cij,nj->nc", phi, blocks, phi)


def weights_logit_variance(model: Classifier, posterior: WeightsLaplace, x: jax.Array
                           ) -> jax.Array:
    """diag(J_n Σ J_nᵀ) [n, C] for an all-weights diag, iso or KFAC posterior.

    Σ is block-diagonal over layers for all three, so the variance is a sum of per-layer
    terms from the layer inputs and the logit Jacobian's output gradients
    (``jaxal.layerwise.logit_variance_layerwise``): diag/iso weight J² by σ²; KFAC rotates
    both sides into the Kronecker eigenbasis and weights by 1 / (e_A e_Gᵀ + λ).
    """
    inner = posterior.weights
    if isinstance(inner, KFACLaplace):
        layer_variance = kfac_layer_variance(inner.layers, inner.prior_precision)
    else:
        variance = 1.0 / (jnp.broadcast_to(inner.curvature, inner.mean.shape)
                          + inner.prior_precision)
        variance_tree = ravel_pytree(posterior.params)[1](variance)
        layer_variance = diagonal_layer_variance(variance_tree)
    return logit_variance_layerwise(model, posterior.params, x, layer_variance)


def laplace_logit_variance(model: Classifier, posterior, x: jax.Array, config
                           ) -> tuple[jax.Array, jax.Array]:
    """(f(x; θ_MAP), diag(J Σ Jᵀ)) [n, C] each: the linearised (GLM) logits' mean and
    variance, for the last layer (any structure) and all weights with diag, iso or KFAC."""
    if config.laplace.subset == "last-layer":
        features = model.apply(posterior.params, x, method=model.features)
        logits = apply_head(head_params(posterior.params), features)
        return logits, last_layer_logit_variance(posterior, features)
    return model.apply(posterior.params, x), weights_logit_variance(model, posterior, x)




# --- The registry: one record per posterior family ---------------------------------------


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_laplace(config) -> None:
    """The Laplace posterior's own rules on ``config.laplace`` (and the predictive)."""
    lc = config.laplace
    _need((lc.curvature, lc.structure) in CURVATURES or lc.structure == "kfac"
          or lc.curvature == "ggn-mc",
          f"unknown curvature {lc.curvature!r} / structure {lc.structure!r}; choose from "
          f"{sorted(CURVATURES)}, ('ggn', 'kfac') or 'ggn-mc' with diag/iso/kfac")
    _need(lc.structure != "kfac" or lc.curvature in ("ggn", "ggn-mc"),
          "KFAC factorises the GGN; use --curvature ggn (or ggn-mc) with --structure kfac")
    _need(lc.structure != "kfac" or lc.subset == "all",
          "KFAC is for all weights; on the last layer (1,290 parameters) use "
          "--structure full, which is exact and cheap")
    _need(lc.subset in SUBSETS, f"unknown subset {lc.subset!r}; choose one of {SUBSETS}")
    _need(lc.samples > 0, f"samples must be > 0 (got {lc.samples})")
    _need(lc.prior_precision is None or (math.isfinite(lc.prior_precision)
                                          and lc.prior_precision > 0),
          f"Laplace prior precision must be a finite number > 0 (got {lc.prior_precision})")
    # With λ = 0 the posterior precision is the curvature alone, singular whenever there
    # are fewer labels than weights: the covariance is infinite.
    _need(lc.prior_fit != "none" or (lc.prior_precision or config.train.prior_precision) > 0,
          "the Laplace posterior needs a prior precision > 0 (got 0: its covariance would "
          "be infinite); use --prior-precision 1, val-nll or auto")
    _need(config.predictive != "probit" or lc.subset == "last-layer"
          or lc.structure in ("diag", "iso", "kfac"),
          "the probit predictive over all weights needs a layer-block covariance; use "
          "--structure diag, iso or kfac, or --subset last-layer, or --predictive mc")
    _need(lc.curvature != "ggn-mc" or (lc.subset == "all" and lc.structure != "full"),
          "the sampled GGN (ggn-mc) is for all weights with --structure diag, iso or "
          "kfac; elsewhere use --curvature ggn, which is exact and cheap there")
    _need(lc.prior_fit in PRIOR_FITS,
          f"unknown prior fit {lc.prior_fit!r}; choose one of {list(PRIOR_FITS)}")
    _need(lc.prior_fit != "val-nll" or (
              len(lc.prior_precision_grid) > 0
              and all(math.isfinite(v) and v > 0 for v in lc.prior_precision_grid)),
          f"the val-nll prior fit needs a grid of values > 0 (got "
          f"{lc.prior_precision_grid}); pass prior_precision_grid or another prior_fit")
    _need(lc.subset == "last-layer" or lc.curvature != "hessian" or lc.structure == "full",
          "the Hessian diag/iso forms need the dense Hessian, which does not fit for all "
          "weights; use --curvature ggn or --subset last-layer")


def check_laplace_fits(model: Classifier, config, input_shape: tuple[int, ...]) -> None:
    """Refuse, before training, a dense curvature the parameter subset makes too large."""
    if config.laplace.structure != "full":
        return
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), input_shape))
    if config.laplace.subset == "last-layer":
        params = head_params(params)
    try:
        check_dense_fits(sum(p.size for p in jax.tree.leaves(params)))
    except CurvatureTooLargeError as e:
        raise ConfigError(f"--structure full on subset {config.laplace.subset!r}: {e}") from e


def laplace_default_predictive(config, needs_samples: bool) -> str:
    """mc when the acquisition needs samples or the subset is all weights, else probit
    (last layer: measured best, ``benchmarks/laplace_curves.py``)."""
    return "mc" if needs_samples or config.laplace.subset != "last-layer" else "probit"


class Posterior(NamedTuple):
    """A posterior family: its fit, and what its fitted state offers the predictives.

    A fitted state is a pytree with θ_MAP as ``state.params``. A capability the family
    lacks is None, and the predictives that need it (``jaxal.predictive.Predictive.needs``)
    are refused with it before any work. Adding a posterior is one fit function (and
    whichever capabilities it has) plus one entry in ``POSTERIORS``.
    """

    fit: Callable                   # (key, model, params, x, y, weights, config) -> state
    sample_probs: Callable | None = None    # (key, model, state, x, config) -> [s, n, c]
    logit_variance: Callable | None = None  # (model, state, x, config) -> (f, var) [n, c]
    prior_precision: Callable = lambda state: None          # state -> λ (None: no prior)
    with_prior_precision: Callable | None = None             # (state, λ) -> state
    check: Callable = lambda config: None                    # raises ConfigError
    check_model: Callable = lambda model, config, input_shape: None   # before training
    default_predictive: Callable = lambda config, needs_samples: "plugin"


POSTERIORS: dict[str, Posterior] = {
    "plugin": Posterior(fit_point_mass),
    "laplace": Posterior(
        fit_laplace, sample_probs=laplace_sample_probs, logit_variance=laplace_logit_variance,
        prior_precision=prior_precision_of, with_prior_precision=with_prior_precision,
        check=check_laplace, check_model=check_laplace_fits,
        default_predictive=laplace_default_predictive),
}
