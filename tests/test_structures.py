"""Contracts every curvature structure keeps, over every entry of ``STRUCTURES`` and every
(source, subset) it computes; and: a new structure is one record plus one entry, and
``fit_laplace`` uses it.

Per entry, on a tiny MLP in float64: the state's covariance is the inverse of the dense
precision (the stored curvature in dense form, clipped as the structure clips, + λ I; for
KFAC the block-diagonal Kronecker form), its log det that precision's, many samples have
its mean and covariance within Monte Carlo error, ``with_prior_precision`` changes λ only,
the per-layer logit variance (where offered) is diag(J Σ Jᵀ), the exact forms equal a dense
reference, and ``fit_laplace`` returns the very same state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import dense_ggn, fit_posterior, layer_index
from jax.flatten_util import ravel_pytree

from jaxal.config import ALConfig, LaplaceOptions, TrainConfig
from jaxal.curvature import STRUCTURES, Structure, diagonal, register_structure, structure_of
from jaxal.curvature.ggn import ggn_diagonal
from jaxal.curvature.layerwise import logit_variance_layerwise
from jaxal.errors import ConfigError
from jaxal.loop import make_learner, run_rounds, validate_config
from jaxal.model import init_params, mlp
from jaxal.posteriors.laplace import (
    curvature_problem,
    log_det_precision,
    log_marginal_likelihood,
    posterior_covariance,
    sample_laplace,
)

LAM = 0.7
NUM_SAMPLES = 20_000


def clipped(matrix) -> np.ndarray:
    """The symmetric part of ``matrix`` with its negative eigenvalues set to 0."""
    e, v = np.linalg.eigh(0.5 * (np.asarray(matrix) + np.asarray(matrix).T))
    return (v * np.maximum(e, 0.0)) @ v.T


def kfac_dense(factors, theta) -> np.ndarray:
    p = ravel_pytree(theta)[0].size
    dense = np.zeros((p, p))
    for path, (a, g) in factors.items():
        index = layer_index(theta, path)
        dense[np.ix_(index, index)] = np.kron(clipped(a), clipped(g))
    return dense


# What each structure stores, as the dense [p, p] curvature its precision adds λ I to
# (clipped at 0 as the structure clips), built from the stored curvature alone.
DENSE = {
    "full": lambda c, theta: clipped(c),
    "diag": lambda c, theta: np.diag(np.maximum(np.asarray(c), 0.0)),
    "iso": lambda c, theta: max(float(c), 0.0) * np.eye(ravel_pytree(theta)[0].size),
    "kfac": kfac_dense,
}
# The exact curvature's projection onto what each structure stores (None: an approximation,
# checked in test_kfac.py).
EXACT = {
    "full": lambda ref: ref,
    "diag": np.diag,
    "iso": lambda ref: np.trace(ref) / ref.shape[0],
    "kfac": None,
}


def cases() -> list[tuple[str, str, str]]:
    return [(name, source, subset) for name, structure in STRUCTURES.items()
            for source, subset in structure.forms]


@pytest.fixture(scope="module")
def toy():
    """A 2-4-3 MLP at random weights, 10 labelled 2-D points and 2 padding rows."""
    model = mlp(3, hidden=(4,))
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                              init_params(model, jax.random.key(0), (2,)))
        x = jnp.asarray(rng.normal(size=(12, 2)))
        y = jnp.asarray(rng.integers(0, 3, 12))
        weights = jnp.asarray(np.arange(12) < 10, jnp.float64)
    return model, params, x, y, weights


def exact_reference(source: str, problem, keep) -> np.ndarray:
    """Dense GGN (per-example Jacobians) or Hessian (``jax.hessian``) of the weighted NLL."""
    inputs, y = problem.inputs[keep], problem.y[keep]
    if source == "ggn":
        return dense_ggn(problem.logits_fn, problem.theta, inputs)
    flat, unravel = ravel_pytree(problem.theta)
    nll = lambda t: -jax.nn.log_softmax(problem.logits_fn(unravel(t), inputs))[
        jnp.arange(y.shape[0]), y].sum()
    return np.asarray(jax.hessian(nll)(flat))


def test_every_structure_has_a_dense_reference():
    assert set(DENSE) == set(STRUCTURES) == set(EXACT)
    for name, structure in STRUCTURES.items():
        assert structure.forms, name


@pytest.mark.slow
@pytest.mark.parametrize("name, source, subset", cases(), ids=["-".join(c) for c in cases()])
def test_structure_contract(name, source, subset, toy):
    model, params, x, y, weights = toy
    structure = STRUCTURES[name]
    key = jax.random.key(1)
    with jax.enable_x64(True):
        problem = curvature_problem(model, params, x, y, weights, subset)
        curvature = structure.forms[(source, subset)](key, problem)
        state = structure.build(problem.theta, curvature, LAM)
        assert type(state) is structure.state and structure_of(state) is structure
        mean = np.asarray(ravel_pytree(problem.theta)[0])
        np.testing.assert_array_equal(np.asarray(state.mean), mean)

        dense = DENSE[name](curvature, problem.theta)
        eye = np.eye(mean.size)
        cov = np.asarray(structure.covariance(state))
        np.testing.assert_allclose(cov, np.linalg.inv(dense + LAM * eye), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(float(structure.log_det_precision(state)),
                                   np.linalg.slogdet(dense + LAM * eye)[1], rtol=1e-10)
        # The table's dispatch by state type gives the same.
        np.testing.assert_array_equal(np.asarray(posterior_covariance(state)), cov)
        assert float(log_det_precision(state)) == float(structure.log_det_precision(state))

        keys = jax.random.split(jax.random.key(2), NUM_SAMPLES)
        samples = np.asarray(jax.vmap(structure.sample, in_axes=(0, None))(keys, state))
        np.testing.assert_allclose(samples[0], np.asarray(sample_laplace(keys[0], state)),
                                   rtol=1e-12, atol=1e-12)   # vmapped matmuls may round apart

        # Whitened by the covariance, the draws are N(0, I): every mean and covariance entry
        # has a standard error of at most √2/√S; 5 of them bound the largest of ~400 entries.
        white = np.linalg.solve(np.linalg.cholesky(cov), (samples - mean).T).T
        tolerance = 5 * np.sqrt(2 / NUM_SAMPLES)
        np.testing.assert_array_less(np.abs(white.mean(0)), tolerance)
        np.testing.assert_array_less(np.abs(np.cov(white.T) - eye), tolerance)

        # λ only: every other leaf the same, and the covariance is that of the new λ.
        moved = structure.with_prior_precision(state, jnp.asarray(2.5))
        assert float(moved.prior_precision) == 2.5
        for a, b in zip(jax.tree.leaves(moved._replace(prior_precision=state.prior_precision)),
                        jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(np.asarray(structure.covariance(moved)),
                                   np.linalg.inv(dense + 2.5 * eye), rtol=1e-8, atol=1e-10)
        # The evidence reads the state through the table too.
        assert np.isfinite(float(log_marginal_likelihood(state, jnp.asarray(-3.0))))

        if subset == "all" and structure.layer_variance is not None:
            flat, unravel = ravel_pytree(params)
            jac = np.asarray(jax.jacrev(lambda t: model.apply(unravel(t), x))(flat))
            got = logit_variance_layerwise(model, params, x,
                                           structure.layer_variance(state, params))
            np.testing.assert_allclose(np.asarray(got), np.einsum("ncp,pq,ncq->nc", jac, cov, jac),
                                       rtol=1e-8, atol=1e-12)
            # The whole per-point logit covariance (glm-logits), cross-class terms included.
            full = logit_variance_layerwise(model, params, x,
                                            structure.layer_variance(state, params), full=True)
            np.testing.assert_allclose(np.asarray(full),
                                       np.einsum("ncp,pq,ndq->ncd", jac, cov, jac),
                                       rtol=1e-8, atol=1e-12)

        if source != "ggn-mc" and EXACT[name] is not None:
            reference = exact_reference(source, problem, np.asarray(weights) > 0)
            np.testing.assert_allclose(np.asarray(curvature), EXACT[name](reference),
                                       rtol=1e-8, atol=1e-10)

        # fit_laplace computes and stores the curvature through this very entry.
        config = ALConfig(posterior="laplace", train=TrainConfig(prior_precision=LAM),
                          posterior_options=LaplaceOptions(source, name, subset, prior_fit="none"))
        fitted = fit_posterior(key, model, params, x, y, weights, config)
        inner = fitted.head if subset == "last-layer" else fitted.weights
        assert type(inner) is structure.state
        for a, b in zip(jax.tree.leaves(inner), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- A new structure: one record, one entry -----------------------------------------------


class ScaledDiagLaplace(NamedTuple):
    mean: jax.Array
    curvature: jax.Array     # 3 x the GGN diagonal [p]
    prior_precision: jax.Array


def scaled_ggn_diagonal(key, problem):
    del key
    return 3.0 * ggn_diagonal(problem.logits_fn, problem.theta, problem.inputs, problem.y,
                              problem.weights)


# The diagonal structure's functions read only mean, curvature and prior_precision.
SCALED_DIAG = Structure(
    state=ScaledDiagLaplace,
    forms={("ggn", "last-layer"): scaled_ggn_diagonal, ("ggn", "all"): scaled_ggn_diagonal},
    build=lambda theta, c, lam: ScaledDiagLaplace(ravel_pytree(theta)[0], c, jnp.asarray(lam)),
    log_det_precision=diagonal.log_det_precision, sample=diagonal.sample,
    covariance=diagonal.covariance)


@pytest.fixture
def scaled_diag():
    register_structure("scaled-diag", SCALED_DIAG)
    yield
    del STRUCTURES["scaled-diag"]


def scaled_config(**kw) -> ALConfig:
    laplace = dict(curvature="ggn", structure="scaled-diag", subset="all", samples=4,
                   prior_fit="none") | kw
    return ALConfig(posterior="laplace", predictive="mc",
                    posterior_options=LaplaceOptions(**laplace))


def test_a_registered_structure_is_what_fit_laplace_computes(scaled_diag, toy):
    model, params, x, y, weights = toy
    validate_config(scaled_config())
    with jax.enable_x64(True):
        post = fit_posterior(jax.random.key(0), model, params, x, y, weights,
                           scaled_config(prior_fit="evidence"))
        inner = post.weights
        assert isinstance(inner, ScaledDiagLaplace)
        exact = np.diag(dense_ggn(model.apply, params, x[:10]))
        # Its own curvature (3 x the GGN diagonal), not silently the GGN.
        np.testing.assert_allclose(np.asarray(inner.curvature), 3 * exact, rtol=1e-8)
        precision = np.asarray(inner.curvature) + float(inner.prior_precision)
        np.testing.assert_allclose(np.asarray(posterior_covariance(inner)),
                                   np.diag(1 / precision), rtol=1e-10)
        np.testing.assert_allclose(float(log_det_precision(inner)),
                                   np.log(precision).sum(), rtol=1e-10)
        assert sample_laplace(jax.random.key(1), inner).shape == (inner.mean.size,)
        assert float(inner.prior_precision) != 1.0     # the evidence fit moved λ


@pytest.mark.slow
def test_a_registered_structure_runs_in_the_loop_and_validation_reads_its_record(scaled_diag):
    from jaxal import data as datasets
    from jaxal.apps.experiment import to_device

    toy = to_device(datasets.toy_al_split(0, n_pool=40, n_val=10, n_test=20))
    config = scaled_config(subset="last-layer")._replace(
        rounds=1, query_size=2, init_per_class=2, train=TrainConfig(steps=5, batch_size=4))
    learner = make_learner(mlp(2, hidden=(4,)), config, (2,), 2)
    infos = [info for _, info in run_rounds(jax.random.key(0), learner, toy)]
    assert [i.num_labels for i in infos] == [4, 6]
    assert all(np.isfinite(v) for i in infos for v in i.metrics)
    # What it does not compute is refused, naming what the table offers instead; it has no
    # per-layer variance, so the all-weights probit names the structures that do.
    with pytest.raises(ConfigError, match="structure 'scaled-diag' does not compute the "
                                          "'hessian' curvature on subset 'all'; use "
                                          "--structure full, or --curvature ggn"):
        validate_config(scaled_config(curvature="hessian"))
    with pytest.raises(ConfigError, match="use --structure diag, iso or kfac, or --subset"):
        validate_config(scaled_config()._replace(predictive="probit"))


def test_fit_laplace_refuses_what_a_structure_does_not_compute(toy):
    model, params, x, y, weights = toy
    for curvature, structure, subset, message in [
            ("hessian", "diag", "all", "use --curvature ggn or --subset last-layer"),
            ("ggn", "kfac", "last-layer", "KFAC is for all weights"),
            ("ggn-mc", "full", "all", "elsewhere use --curvature ggn")]:
        config = ALConfig(posterior="laplace",
                          posterior_options=LaplaceOptions(curvature, structure, subset))
        with pytest.raises(ConfigError, match=message):
            fit_posterior(jax.random.key(0), model, params, x, y, weights, config)


def test_register_structure_refuses_a_taken_name_or_state_type():
    with pytest.raises(ValueError, match="registered already"):
        register_structure("diag", SCALED_DIAG)
    with pytest.raises(ValueError, match="state type DiagLaplace"):
        register_structure("diag-again", STRUCTURES["diag"])
    assert "diag-again" not in STRUCTURES
    with pytest.raises(TypeError, match="no registered structure's state"):
        structure_of(ScaledDiagLaplace(jnp.zeros(2), jnp.zeros(2), jnp.asarray(1.0)))
