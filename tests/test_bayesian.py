"""The Bayesian-acquisition components: the linearised (GLM) predictive against dense
Jacobians, the layerwise evidence against a closed form, consistent MC dropout, the deep
ensemble's stacked training (unrolled and vmapped forms alike), pool subsets and ECE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import bound, fit_posterior
from jax.flatten_util import ravel_pytree

from jaxal import data as datasets
from jaxal.apps.experiment import to_device
from jaxal.batching import over_members
from jaxal.components import BatchBALDOptions, EnsembleOptions, MCDropoutOptions
from jaxal.config import ALConfig, LaplaceOptions, ModelConfig, TrainConfig
from jaxal.curvature import STRUCTURES
from jaxal.errors import ConfigError
from jaxal.loop import (
    expected_calibration_error,
    make_learner,
    pool_subset_indices,
    run_rounds,
    validate_config,
    validate_data,
)
from jaxal.model import cnn, init_params, mlp
from jaxal.posteriors.ensemble import stacked
from jaxal.posteriors.laplace import (
    fit_laplace,
    fit_prior_precision,
    laplace_glm_sample_probs,
    laplace_logit_covariance,
    laplace_sample_probs,
    layer_groups,
    log_marginal_likelihood,
    posterior_covariance,
)
from jaxal.predictive import glm_logits_predictive
from jaxal.train import make_trainer


def _toy():
    return to_device(datasets.toy_al_split(0, n_pool=60, n_val=20, n_test=30))


# --- GLM predictive ---------------------------------------------------------------------


def _mlp_laplace(structure: str, predictive: str, samples: int):
    """(toy split, 3-class MLP, θ, all-weights Laplace on 40 toy points with λ = 2, its
    config) for the GLM predictives' moment tests."""
    toy = _toy()
    model = mlp(3, hidden=(5,))
    params = init_params(model, jax.random.key(0), (2,))
    x, y = toy.pool_x[:40], toy.pool_y[:40] % 3
    config = ALConfig(posterior="laplace", predictive=predictive, posterior_options=LaplaceOptions(
        structure=structure, subset="all", samples=samples, prior_fit="none",
        prior_precision=2.0))
    post = fit_posterior(jax.random.key(1), model, params, x, y, jnp.ones(40), config)
    return toy, model, params, post, config


def _glm_logits(model, post, x, config):
    """Logits of the GLM samples: log of their softmax up to a per-row constant, so
    centre them (the test compares centred logits)."""
    probs = laplace_glm_sample_probs(jax.random.key(5), model, post, x, config.options("posterior"))
    logp = jnp.log(probs)
    return logp - logp.mean(-1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["full", "diag", "kfac"])
def test_glm_samples_have_the_linearised_mean_and_covariance(structure):
    """f_lin samples: mean f(x; θ*) and covariance J Σ Jᵀ (dense jax.jacobian of the
    raveled parameters), within Monte Carlo error; logits centred over classes, as softmax
    identifies them only up to a constant."""
    samples = 4000
    toy, model, params, post, config = _mlp_laplace(structure, "glm", samples)
    xs = toy.test_x[:3]
    logits = np.asarray(_glm_logits(model, post, xs, config))          # [S, n, C]
    theta, unravel = ravel_pytree(params)
    centre = lambda f: f - f.mean(-1, keepdims=True)
    f = lambda t: centre(model.apply(unravel(t), xs))
    jac = np.asarray(jax.jacobian(f)(theta)).reshape(-1, theta.size)     # [n C, P]
    cov = jac @ np.asarray(posterior_covariance(post.weights)) @ jac.T
    flat = logits.reshape(samples, -1)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(flat.mean(0), np.asarray(f(theta)).ravel(),
                               atol=5 * sd.max() / np.sqrt(samples) + 1e-5)
    # Sample covariance: standard error of a covariance entry ~ sd_i sd_j sqrt(2 / S).
    np.testing.assert_allclose(np.cov(flat.T), cov,
                               atol=6 * sd.max()**2 * np.sqrt(2 / samples) + 1e-6)


@pytest.mark.slow
def test_glm_equals_mc_for_the_linear_head():
    """The head is linear in its weights: GLM and MC predictives give the same samples."""
    model = cnn(10, channels=(4,), hidden=8)
    params = init_params(model, jax.random.key(0), (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (12, 8, 8, 1))
    y = jnp.arange(12) % 10
    config = ALConfig(posterior="laplace", predictive="glm",
                      posterior_options=LaplaceOptions(samples=7, prior_fit="none"))
    post = fit_posterior(jax.random.key(2), model, params, x, y, jnp.ones(12), config)
    key = jax.random.key(3)
    options = config.options("posterior")
    np.testing.assert_allclose(laplace_glm_sample_probs(key, model, post, x, options),
                               laplace_sample_probs(key, model, post, x, options), atol=1e-6)


@pytest.mark.slow
def test_last_layer_logit_covariance_equals_dense():
    """J Σ Jᵀ [n, C, C] of the linear head against the dense Jacobian of its raveled
    weights (the full GGN's covariance has cross-class blocks)."""
    with jax.enable_x64(True):
        model = cnn(4, channels=(3,), hidden=6)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                              init_params(model, jax.random.key(0), (8, 8, 1)))
        x = jax.random.normal(jax.random.key(1), (10, 8, 8, 1), jnp.float64)
        y = jnp.arange(10) % 4
        config = ALConfig(posterior="laplace", posterior_options=LaplaceOptions(prior_fit="none",
                                                                     prior_precision=0.5))
        post = fit_posterior(jax.random.key(2), model, params, x, y, jnp.ones(10), config)
        head = {"params": {"head": params["params"]["head"]}}
        flat, unravel = ravel_pytree(head)
        jac = np.asarray(jax.jacobian(
            lambda t: model.apply({"params": {**params["params"], **unravel(t)["params"]}},
                                  x))(flat))                              # [n, C, P]
        cov = np.asarray(posterior_covariance(post.head))
        logits, got = laplace_logit_covariance(model, post, x, config.options("posterior"))
        np.testing.assert_allclose(np.asarray(got), np.einsum("ncp,pq,ndq->ncd", jac, cov, jac),
                                   rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(model.apply(params, x)),
                                   rtol=1e-10)


@pytest.mark.parametrize("structure", ["kfac", "diag"])
def test_glm_logits_samples_have_the_linearised_mean_and_covariance(structure):
    """glm-logits: per-point logit samples with mean f(x; θ*) and covariance J Σ Jᵀ (dense
    Jacobians), within Monte Carlo error; its predictive mean agrees with glm's (the same
    distribution, sampled per point instead of in weight space)."""
    samples = 4000
    toy, model, params, post, config = _mlp_laplace(structure, "glm-logits", samples)
    xs = toy.test_x[:3]
    out = glm_logits_predictive(jax.random.key(5), model, post, xs, bound(config))
    logp = np.log(np.asarray(out.sample_probs))
    logits = logp - logp.mean(-1, keepdims=True)                     # [S, n, C], centred
    theta, unravel = ravel_pytree(params)
    centre = lambda f: f - f.mean(-1, keepdims=True)
    jac = np.asarray(jax.jacobian(lambda t: centre(model.apply(unravel(t), xs)))(theta))
    cov = np.einsum("ncp,pq,ndq->ncd", jac, np.asarray(posterior_covariance(post.weights)),
                    jac)
    sd = np.sqrt(np.einsum("ncc->nc", cov))
    mean = np.asarray(centre(model.apply(params, xs)))
    np.testing.assert_allclose(logits.mean(0), mean,
                               atol=5 * sd.max() / np.sqrt(samples) + 1e-5)
    for n in range(xs.shape[0]):
        np.testing.assert_allclose(np.cov(logits[:, n].T), cov[n],
                                   atol=6 * sd.max()**2 * np.sqrt(2 / samples) + 1e-6)
    glm = laplace_glm_sample_probs(jax.random.key(6), model, post, xs,
                                   config._replace(predictive="glm").options("posterior")).mean(0)
    np.testing.assert_allclose(np.asarray(out.probs), np.asarray(glm), atol=0.03)


# --- Layerwise evidence -------------------------------------------------------------------


def _blr(seed=0, n=40, sizes=(3, 4), noise=0.5):
    """Bayesian linear regression whose weights form blocks of ``sizes`` of very different
    scales, so one prior per block beats a shared one."""
    rng = np.random.default_rng(seed)
    p = sum(sizes)
    x = rng.normal(size=(n, p))
    scales = (3.0, 0.1)
    w = np.concatenate([rng.normal(size=s) * c for s, c in zip(sizes, scales, strict=True)])
    y = x @ w + noise * rng.normal(size=n)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    return x, y, noise, groups


def _closed_form(x, y, noise, lam_p):
    """log N(y; 0, σ² I + X Λ⁻¹ Xᵀ)."""
    cov = noise**2 * jnp.eye(len(y)) + (x / lam_p) @ x.T
    _, logdet = jnp.linalg.slogdet(cov)
    return -0.5 * (y @ jnp.linalg.solve(cov, y) + logdet + len(y) * jnp.log(2 * jnp.pi))


def _laplace_blr(x, y, noise, lam_p):
    """θ* = (XᵀX/σ² + Λ)⁻¹ Xᵀy/σ², H = XᵀX/σ², and log p(y | θ*)."""
    h = x.T @ x / noise**2
    mean = jnp.linalg.solve(h + jnp.diag(lam_p), x.T @ y / noise**2)
    resid = y - x @ mean
    ll = -0.5 * (resid @ resid / noise**2 + len(y) * jnp.log(2 * jnp.pi * noise**2))
    return mean, h, ll


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_layerwise_evidence_matches_bayesian_linear_regression(structure):
    """One prior precision per block: the Laplace evidence equals the closed form (diag:
    with an orthogonal design, whose curvature is diagonal), and the per-block fit finds
    the closed form's optimum."""
    x, y, noise, groups = _blr()
    if structure == "diag":   # orthogonal columns: XᵀX diagonal, so diag is exact
        x = np.linalg.qr(x)[0] * np.sqrt(len(y))
    with jax.enable_x64(True):
        x, y = jnp.asarray(x), jnp.asarray(y)
        lam = jnp.asarray([0.2, 30.0])
        mean, h, ll = _laplace_blr(x, y, noise, lam[groups])
        curvature = h if structure == "full" else jnp.diag(h)
        post = STRUCTURES[structure].build(mean, curvature, lam[groups])
        np.testing.assert_allclose(float(log_marginal_likelihood(post, ll)),
                                   float(_closed_form(x, y, noise, lam[groups])), rtol=1e-9)

        # The closed form's optimum over (λ_1, λ_2), by Newton-free gradient ascent.
        objective = lambda log_lam: -_closed_form(x, y, noise, jnp.exp(log_lam)[groups])
        descend = lambda _, v: v - 0.05 * jax.grad(objective)(v)
        log_lam = jax.jit(lambda v: jax.lax.fori_loop(0, 3000, descend, v))(jnp.zeros(2))
        best = jnp.exp(log_lam)
        assert float(jnp.abs(jax.grad(objective)(log_lam)).max()) < 1e-6
        # At θ* = MAP(λ̂) the Laplace evidence with θ* held (as jaxal fits it) is
        # stationary at λ̂ too; the per-layer fit, started elsewhere, finds it.
        mean, h, ll = _laplace_blr(x, y, noise, best[groups])
        curvature = h if structure == "full" else jnp.diag(h)
        post = STRUCTURES[structure].build(mean, curvature, 1.0)
        fitted = fit_prior_precision(post, ll, init=1.0, steps=2000, learning_rate=0.05,
                                     groups=groups)
    np.testing.assert_allclose(np.asarray(fitted)[[0, -1]], np.asarray(best), rtol=1e-3)
    assert best[1] > 10 * best[0]   # the blocks do want different priors


def test_layer_groups_follow_the_layers():
    params = init_params(mlp(2, hidden=(3,)), jax.random.key(0), (2,))
    group, layers = layer_groups(params)
    assert len(layers) == 2 and group.shape == (ravel_pytree(params)[0].size,)
    # Dense_0: 2x3 kernel + 3 bias; head: 3x2 + 2, in ravel_pytree's order.
    np.testing.assert_array_equal(np.bincount(group), [9, 8])


def test_kfac_takes_one_prior_precision_per_layer():
    """KFAC with a per-layer λ: its dense covariance equals the per-layer inverse of
    (A ⊗ G + λ_l I), i.e. each layer's block depends on its own λ only."""
    toy = _toy()
    model = mlp(2, hidden=(4,))
    params = init_params(model, jax.random.key(0), (2,))
    config = ALConfig(posterior="laplace", posterior_options=LaplaceOptions(
        structure="kfac", subset="all", prior_fit="none"))
    post = fit_posterior(jax.random.key(1), model, params, toy.pool_x, toy.pool_y,
                       jnp.ones(60), config).weights
    group, _ = layer_groups(params)
    kfac = STRUCTURES["kfac"]
    both = posterior_covariance(kfac.with_prior_precision(post, jnp.asarray([0.5, 8.0])[group]))
    for layer, lam in ((0, 0.5), (1, 8.0)):
        alone = posterior_covariance(kfac.with_prior_precision(post, jnp.float32(lam)))
        idx = np.flatnonzero(group == layer)
        np.testing.assert_allclose(both[np.ix_(idx, idx)], alone[np.ix_(idx, idx)],
                                   rtol=1e-4, atol=1e-7)


# --- MC dropout -------------------------------------------------------------------------


@pytest.mark.slow
def test_consistent_mc_dropout_is_one_network_per_key():
    """The same key gives each example the same network whatever the batch around it,
    different keys other networks, and the masks are off outside sampling."""
    model = cnn(10, channels=(4, 4), hidden=16, hidden_dropout_rate=0.5)
    params = init_params(model, jax.random.key(0), (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
    key = jax.random.key(2)
    apply = lambda xb, k: model.apply(params, xb, sample=True, rngs={"dropout": k})
    whole = apply(x, key)
    np.testing.assert_allclose(apply(x[2:5], key), whole[2:5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apply(x[4:5], key), whole[4:5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(apply(x, jax.random.key(3)), whole)
    assert not np.allclose(model.apply(params, x), whole)
    # Training masks are per example: the same example twice gets two masks.
    twice = jnp.concatenate([x[:1], x[:1]])
    train = model.apply(params, twice, train=True, rngs={"dropout": key})
    assert not np.allclose(train[0], train[1])


@pytest.mark.slow
def test_mc_dropout_run_and_its_bad_input():
    toy = _toy()
    config = ALConfig(posterior="mc-dropout", predictive="mc", acquisition="bald",
                      rounds=1, query_size=3, posterior_options=MCDropoutOptions(samples=4),
                      model=ModelConfig(dropout=0.3), train=TrainConfig(steps=10))
    validate_config(config)
    learner = make_learner(mlp(2, hidden_dropout_rate=0.3), config, (2,), 2)
    infos = [info for _, info in run_rounds(jax.random.key(0), learner, toy)]
    assert np.isfinite(infos[-1].scores).all() and (infos[-1].scores > 0).any()
    for bad, match in ((config._replace(model=ModelConfig(dropout=0.0)), "--dropout 0.5"),
                       (config._replace(model=ModelConfig(dropout=1.0)), r"\[0, 1\)"),
                       (config._replace(posterior_options=MCDropoutOptions(samples=0)),
                        "--dropout-samples")):
        with pytest.raises(ConfigError, match=match):
            validate_config(bad)


# --- Deep ensemble ----------------------------------------------------------------------


def test_over_members_forms_agree():
    fn = lambda w, x: jnp.tanh(x @ w["a"]) + w["b"]
    w = {"a": jax.random.normal(jax.random.key(0), (3, 2, 4)), "b": jnp.arange(3.0)[:, None]}
    x = jax.random.normal(jax.random.key(1), (5, 2))
    np.testing.assert_allclose(over_members(fn, (0, None), 3, "unroll")(w, x),
                               over_members(fn, (0, None), 3, "vmap")(w, x), rtol=1e-6)


@pytest.mark.slow
def test_sample_forms_agree(monkeypatch):
    """Posterior samples in sequence (CPU's form) or vmapped in groups (GPU/TPU's) give the
    same probabilities: the GLM of a tiny CNN's KFAC Laplace, and MC dropout;
    20 samples, so the last group of 16 is partial."""
    import jaxal.batching
    from jaxal.posteriors import mc_dropout

    model = cnn(10, channels=(3,), hidden=6, hidden_dropout_rate=0.3)
    params = init_params(model, jax.random.key(0), (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (12, 8, 8, 1))
    y = jnp.arange(12) % 10
    options = LaplaceOptions(structure="kfac", subset="all", samples=20, prior_fit="none",
                             prior_precision=1.0)
    post = fit_laplace(jax.random.key(2), model, params, x, y, jnp.ones(12), 1.0, options)
    key = jax.random.key(3)
    # All-weights MC goes through the same over_samples call as the GLM's JVPs.
    fns = {"glm": lambda: laplace_glm_sample_probs(key, model, post, x, options),
           "dropout": lambda: mc_dropout.sample_probs(key, model, mc_dropout.MCDropout(params),
                                                      x, MCDropoutOptions(samples=20))}
    got = {}
    for form in jaxal.batching.SAMPLE_FORMS:
        monkeypatch.setattr(jaxal.batching, "default_sample_form", lambda f=form: f)
        got[form] = {name: np.asarray(fn()) for name, fn in fns.items()}
    for name in fns:
        assert got["map"][name].shape == (20, 12, 10)
        np.testing.assert_allclose(got["map"][name], got["vmap"][name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    # Different samples differ (the forms do not both collapse to one network).
    assert np.abs(got["map"]["dropout"][0] - got["map"]["dropout"][1]).max() > 1e-3


@pytest.mark.slow
def test_stacked_training_is_the_same_unrolled_or_vmapped():
    """One step of M stacked networks: the CPU form (unrolled) and the GPU form (vmap)
    give the same members, each as if trained alone with its key."""
    toy = _toy()
    model = mlp(2, hidden=(6,))
    base = make_trainer(model, TrainConfig(batch_size=8), 30)
    init_one = lambda key: init_params(model, key, (2,))
    labelled = jnp.arange(60) < 20
    idx = jnp.nonzero(labelled, size=60)[0]
    out = {}
    for form in ("unroll", "vmap"):
        trainer, init_many = stacked(base, init_one, 3, form)
        state = trainer.init(init_many(jax.random.key(0)))
        state, loss = jax.jit(trainer.step)(jax.random.key(1), state, toy.pool_x, toy.pool_y,
                                            idx, labelled.sum())
        out[form] = (state.params, loss)
    for a, b in zip(jax.tree.leaves(out["unroll"]), jax.tree.leaves(out["vmap"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Member 1 alone, with member 1's keys, ends where the stack's member 1 does.
    keys = jax.random.split(jax.random.key(1), 3)
    alone = base.init(init_one(jax.random.split(jax.random.key(0), 3)[1]))
    alone, _ = base.step(keys[1], alone, toy.pool_x, toy.pool_y, idx, labelled.sum())
    for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(out["unroll"][0]),
                    strict=True):
        np.testing.assert_allclose(a, b[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ensemble_run_samples_are_its_members():
    toy = _toy()
    config = ALConfig(posterior="ensemble", predictive="mc", acquisition="bald", rounds=1,
                      query_size=3, posterior_options=EnsembleOptions(size=3),
                      train=TrainConfig(steps=30))
    model = mlp(2, hidden=(6,))
    learner = make_learner(model, config, (2,), 2)
    (_state, _), (state1, _info) = list(run_rounds(jax.random.key(0), learner, toy))
    members = state1.posterior.members
    assert jax.tree.leaves(members)[0].shape[0] == 3
    probs = [jax.nn.softmax(model.apply(jax.tree.map(lambda p, m=m: p[m], members),
                                        toy.test_x)) for m in range(3)]
    assert not np.allclose(probs[0], probs[1])   # independent inits differ
    out = learner.evaluate(jax.random.key(0), state1.posterior, toy.test_x, toy.test_y)
    nll = -np.log(np.take_along_axis(np.mean(probs, 0), np.asarray(toy.test_y)[:, None],
                                     1)).mean()
    np.testing.assert_allclose(out[0], nll, rtol=1e-5)
    with pytest.raises(ConfigError, match="--ensemble-size >= 2"):
        validate_config(config._replace(posterior_options=EnsembleOptions(size=1)))


# --- Pool subsets, ECE, validation -----------------------------------------------------------


def test_pool_subset_scores_the_labelled_buffer_and_fresh_unlabelled_points():
    labelled = jnp.zeros(50, bool).at[jnp.asarray([3, 9, 20])].set(True)
    idx = np.asarray(pool_subset_indices(jax.random.key(0), labelled, 5, 12))
    assert idx.shape == (17,)
    assert set(idx[:5].tolist()) == {3, 9, 20}           # padded with a labelled point
    fresh = idx[5:]
    assert len(set(fresh.tolist())) == 12 and not np.asarray(labelled)[fresh].any()
    other = np.asarray(pool_subset_indices(jax.random.key(1), labelled, 5, 12))[5:]
    assert set(other.tolist()) != set(fresh.tolist())    # a fresh draw each round


@pytest.mark.slow
def test_pool_subset_run_queries_unlabelled_points_only():
    toy = _toy()
    config = ALConfig(acquisition="entropy", rounds=3, query_size=4, pool_subset=10,
                      train=TrainConfig(steps=10))
    learner = make_learner(mlp(2), config, (2,), 2)
    rounds = list(run_rounds(jax.random.key(0), learner, toy))
    queried = np.concatenate([info.queried for _, info in rounds[1:]])
    assert len(set(queried.tolist())) == queried.size == 12
    initial = np.flatnonzero(np.asarray(rounds[0][0].labelled))
    assert not set(initial.tolist()) & set(queried.tolist())


def test_pool_subset_bad_input():
    config = ALConfig(query_size=10, pool_subset=5)
    with pytest.raises(ConfigError, match="at least the query size 10"):
        validate_config(config)
    # 10 initial + 2 queries of 10 before the last: 100 - 30 = 70 unlabelled left.
    config = ALConfig(query_size=10, rounds=3, init_per_class=1, pool_subset=70)
    validate_data(config, 100, None, 10)
    with pytest.raises(ConfigError, match="exceeds the 70 unlabelled"):
        validate_data(config._replace(pool_subset=71), 100, None, 10)


def test_expected_calibration_error_closed_form():
    # Two bins used: confidence 0.95 (2 points, 1 right) and 0.55 (2 points, 2 right).
    probs = jnp.asarray([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    y = jnp.asarray([0, 1, 0, 1])
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55)
    np.testing.assert_allclose(expected_calibration_error(probs, y), expected, rtol=1e-6)


def test_new_options_are_refused_with_the_fix():
    cases = [
        (ALConfig(posterior="plugin", predictive="glm"), "--posterior laplace"),
        (ALConfig(posterior="laplace", predictive="glm",
                  posterior_options=LaplaceOptions(prior_fit="evidence-layerwise")),
         "--prior-precision auto .*--subset all"),
        (ALConfig(eval_samples=0), "--eval-samples"),
        # BatchBALD's joint entropies need one model per sample across the pool.
        (ALConfig(posterior="laplace", predictive="glm-logits", acquisition="batchbald"),
         "draws each point's samples alone; use --predictive mc or glm$"),
        (ALConfig(posterior="laplace", predictive="glm-logits",
                  posterior_options=LaplaceOptions(structure="full", subset="all")),
         "glm-logits predictive over all weights .*--predictive glm$"),
    ]
    for config, match in cases:
        with pytest.raises(ConfigError, match=match):
            validate_config(config)


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["kfac", "diag"])
def test_all_weights_glm_samples_are_joint_over_chunks_and_batchbald_runs_on_them(structure):
    """Sample s of the all-weights GLM predictive is one linearised network for every pool
    point: two chunks scored apart give the rows of the pool scored at once (BatchBALD's
    joint entropies and power-BALD read them so), and BatchBALD on it picks distinct
    unlabelled points."""
    toy, model, _, post, config = _mlp_laplace(structure, "glm", 16)
    x = toy.pool_x[:20]
    whole = laplace_glm_sample_probs(jax.random.key(7), model, post, x,
                                     config.options("posterior"))
    parts = [laplace_glm_sample_probs(jax.random.key(7), model, post, x[i:i + 10],
                                      config.options("posterior")) for i in (0, 10)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-5, atol=1e-6)
    batch = config._replace(acquisition="batchbald", rounds=1, query_size=4,
                            train=TrainConfig(steps=10, batch_size=8),
                            acquisition_options=BatchBALDOptions(candidates=20, configs=30))
    validate_config(batch)
    toy2 = _toy()
    infos = [i for _, i in run_rounds(jax.random.key(0), make_learner(
        mlp(2, hidden=(5,)), batch, (2,), 2), toy2)]
    queried = infos[-1].queried
    assert len(set(queried.tolist())) == 4 and np.isfinite(infos[-1].scores).all()
