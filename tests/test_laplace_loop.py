"""Laplace posteriors inside the loop: fit on the labelled set, predictives, every combination."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import bound, fit_posterior
from jax.flatten_util import ravel_pytree

from jaxal import data as datasets
from jaxal.apps.experiment import to_device
from jaxal.cli.run import main
from jaxal.curvature.ggn import ggn_full
from jaxal.errors import ConfigError
from jaxal.loop import ALConfig, make_learner, run_rounds, validate_config
from jaxal.model import apply_head, cnn, init_params, mlp
from jaxal.posteriors.laplace import (
    LaplaceOptions,
    fit_laplace,
    last_layer_logit_variance,
    posterior_covariance,
    sample_laplace,
)
from jaxal.predictive import mc_predictive, probit_predictive
from jaxal.train import TrainConfig


def linear_problem(seed=0, n=60, c=3):
    """A linear softmax model (MLP without hidden layers: features = inputs)."""
    rng = np.random.default_rng(seed)
    model = mlp(c, hidden=())
    x = jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)
    y = jnp.asarray(rng.integers(0, c, n))
    params = init_params(model, jax.random.key(seed), (2,))
    params = jax.tree.map(lambda p: p + 0.5 * jnp.asarray(rng.normal(size=p.shape),
                                                            jnp.float32), params)
    return model, params, x, y


# The Laplace posterior's options record, short for the tables below.
Options = LaplaceOptions


def laplace_config(**kw):
    return ALConfig(posterior="laplace", posterior_options=LaplaceOptions(**kw),
                    train=TrainConfig(prior_precision=2.0))


@pytest.mark.slow
def test_fit_uses_only_weighted_labelled_rows():
    model, params, x, y = linear_problem()
    weights = jnp.asarray(np.arange(60) < 40, jnp.float32)
    post = fit_posterior(jax.random.key(0), model, params, x, y, weights,
                       laplace_config(structure="full"))
    head = {"params": {"head": params["params"]["head"]}}
    np.testing.assert_allclose(np.asarray(post.head.mean), np.asarray(ravel_pytree(head)[0]))
    precision = np.linalg.inv(np.asarray(posterior_covariance(post.head), np.float64))
    reference = np.asarray(ggn_full(apply_head, head, x[:40]), np.float64) + 2.0 * np.eye(9)
    np.testing.assert_allclose(precision, reference, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["full", "diag", "iso"])
def test_probit_logit_variance_matches_samples_and_probit_matches_mc(structure):
    model, params, x, y = linear_problem(1)
    post = fit_posterior(jax.random.key(0), model, params, x, y, jnp.ones(60),
                       laplace_config(structure=structure, samples=20_000))
    x_test = x[:8]
    config = laplace_config(structure=structure, samples=20_000)
    # The logit variance J Σ Jᵀ against the variance of sampled logits (MC error ~3/√S).
    mc = mc_predictive(jax.random.key(1), model, post, x_test, bound(config))
    keys = jax.random.split(jax.random.key(1), 20_000)
    samples = jax.vmap(sample_laplace, in_axes=(0, None))(keys, post.head)
    unravel = ravel_pytree({"params": {"head": params["params"]["head"]}})[1]
    logits = jax.vmap(lambda t: apply_head(unravel(t), x_test))(samples)
    var = np.asarray(last_layer_logit_variance(post, x_test))
    # Relative standard error of a sample variance is √(2/S) ≈ 0.01; allow 6 of them.
    np.testing.assert_allclose(np.asarray(logits.var(0)), var, rtol=6 * np.sqrt(2 / 20_000))
    # The probit approximation is close to the MC predictive it approximates.
    probit = probit_predictive(jax.random.key(2), model, post, x_test, bound(config))
    np.testing.assert_allclose(np.asarray(probit.probs), np.asarray(mc.probs), atol=0.04)
    assert mc.sample_probs.shape == (20_000, 8, 3)
    np.testing.assert_allclose(np.asarray(mc.probs.sum(-1)), 1.0, rtol=1e-5)


def valid_combinations():
    for curvature, structure, subset, predictive in itertools.product(
            ("ggn", "hessian", "ggn-mc"), ("full", "diag", "iso", "kfac"), ("last-layer", "all"),
            ("mc", "probit")):
        config = ALConfig(posterior="laplace", predictive=predictive,
                          posterior_options=LaplaceOptions(curvature, structure, subset, samples=8))
        try:
            validate_config(config)
        except ConfigError:
            continue
        yield curvature, structure, subset, predictive


@pytest.fixture(scope="module")
def toy():
    return to_device(datasets.toy_al_split(0, n_pool=60, n_val=20, n_test=40))


@pytest.mark.slow
@pytest.mark.parametrize("combo", list(valid_combinations()), ids="-".join)
def test_loop_runs_every_combination(toy, combo):
    curvature, structure, subset, predictive = combo
    config = ALConfig(acquisition="entropy", posterior="laplace", predictive=predictive,
                      rounds=2, query_size=3, init_per_class=2,
                      train=TrainConfig(steps=10, batch_size=8),
                      posterior_options=LaplaceOptions(curvature, structure, subset, samples=8,
                                            prior_fit={"diag": "evidence", "iso": "val-nll"}
                                            .get(structure, "none"),
                                            prior_precision_grid=(0.1, 1.0, 10.0)))
    learner = make_learner(mlp(2, hidden=(4,)), config, (2,), 2)
    infos = [info for _, info in run_rounds(jax.random.key(0), learner, toy)]
    assert [i.num_labels for i in infos] == [4, 7, 10]
    queried = np.concatenate([i.queried for i in infos])
    assert len(set(queried.tolist())) == 6
    for info in infos:
        assert all(np.isfinite(v) for v in info.metrics)
        assert 0 <= info.metrics.test_entropy <= np.log(2) + 1e-5
        assert info.metrics.prior_precision > 0
        if structure == "iso":
            assert np.float32(info.metrics.prior_precision) in np.float32([0.1, 1.0, 10.0])


def test_expected_combinations_are_valid():
    combos = set(valid_combinations())
    assert ("ggn", "diag", "all", "mc") in combos
    assert ("hessian", "full", "last-layer", "probit") in combos
    assert ("ggn", "full", "all", "probit") not in combos      # no layer-block covariance
    assert ("ggn", "diag", "all", "probit") in combos
    assert ("ggn", "kfac", "all", "probit") in combos
    assert ("hessian", "diag", "all", "mc") not in combos      # needs the dense Hessian
    assert ("ggn", "kfac", "all", "mc") in combos
    assert ("ggn", "kfac", "last-layer", "mc") not in combos   # full is exact there
    assert ("ggn-mc", "diag", "last-layer", "mc") not in combos
    # last-layer: all 12; all weights: ggn full (mc), ggn and ggn-mc diag/iso/kfac
    # (mc, probit), hessian full (mc; the toy MLP is small enough).
    assert len(combos) == 12 + 1 + 6 + 6 + 1


@pytest.mark.parametrize("change, message", [
    (dict(predictive="probit", posterior_options=LaplaceOptions(subset="all")),
     "use --structure diag, iso or kfac, or --subset last-layer, or --predictive mc"),
    (dict(posterior_options=Options(curvature="ggn-mc")), "elsewhere use --curvature ggn"),
    (dict(posterior_options=Options(prior_fit="swag")), "unknown prior fit 'swag'"),
    (dict(posterior_options=Options(prior_precision_grid=(1.0, 0.0))), "a grid of values > 0"),
    (dict(posterior_options=Options(prior_precision_grid=())), "a grid of values > 0"),
    (dict(posterior_options=Options(curvature="hessian", structure="iso", subset="all")),
     "use --curvature ggn or --subset last-layer"),
    (dict(posterior_options=Options(samples=0)), "samples must be > 0"),
    (dict(posterior_options=Options(structure="kron")), "unknown curvature 'ggn' / structure"),
    (dict(posterior_options=Options(structure="kfac")), "on the last layer (1,290 parameters)"),
    (dict(posterior_options=Options(structure="kfac", curvature="hessian", subset="all")),
     "KFAC factorises the GGN"),
])
def test_wrong_combinations_fail_with_the_fix(change, message):
    config = ALConfig(posterior="laplace", predictive="mc")._replace(**change)
    with pytest.raises(ConfigError, match=None) as err:
        validate_config(config)
    assert message in str(err.value)


def test_full_on_all_cnn_weights_is_refused_before_training():
    config = ALConfig(posterior="laplace", predictive="mc",
                      posterior_options=LaplaceOptions(structure="full", subset="all"))
    with pytest.raises(ConfigError, match=r"130,890 x 130,890 .* use structure 'diag'"):
        make_learner(cnn(10), config, (28, 28, 1), 10)
    # The last layer (1,290 parameters) fits.
    last_layer = config.options("posterior")._replace(subset="last-layer")
    make_learner(cnn(10), config._replace(posterior_options=last_layer), (28, 28, 1), 10)


@pytest.mark.parametrize("value", ["auto", "val-nll"])
def test_cli_fitted_prior_needs_laplace(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--dataset", "moons", "--prior-precision", value, "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    assert "add --posterior laplace" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_val_nll_grid_picks_the_lowest_validation_nll(toy):
    """tune_prior_precision against a direct evaluation of every grid value."""
    from jaxal.loop import evaluate, tune_prior_precision
    from jaxal.posteriors.laplace import with_prior_precision

    model = mlp(2, hidden=(4,))
    config = laplace_config(structure="full", samples=8)._replace(predictive="probit")
    params = init_params(model, jax.random.key(0), (2,))
    post = fit_posterior(jax.random.key(0), model, params, toy.pool_x, toy.pool_y,
                       jnp.ones(toy.pool_x.shape[0]), config)
    grid = (1e-3, 0.3, 3.0, 300.0)
    predict = lambda k, m, p, x: probit_predictive(k, m, p, x, bound(config))
    nlls = [float(evaluate(jax.random.key(1), model, predict,
                           with_prior_precision(post, jnp.float32(lam)), toy.val_x, toy.val_y,
                           7)[0]) for lam in grid]
    assert len(set(np.round(nlls, 6))) == len(grid)   # the grid matters here
    tuned = tune_prior_precision(jax.random.key(1), model, predict, post, toy.val_x,
                                 toy.val_y, grid, 7)
    assert float(tuned.head.prior_precision) == pytest.approx(grid[int(np.argmin(nlls))])


def test_cli_prior_precision_defaults_and_choices():
    from jaxal.cli.run import config_from_args, parser

    def config(*argv):
        return config_from_args(parser().parse_args(["--dataset", "moons", *argv])).al

    assert config().train.prior_precision == 1.0                   # plugin: a number
    laplace = config("--posterior", "laplace")
    assert laplace.options("posterior").prior_fit == "val-nll"                  # measured default
    assert laplace.predictive == "probit" and laplace.options("posterior").subset == "last-layer"
    auto = config("--posterior", "laplace", "--prior-precision", "auto")
    assert auto.options("posterior").prior_fit == "evidence"
    fixed = config("--posterior", "laplace", "--prior-precision", "5")
    assert fixed.options("posterior").prior_fit == "none" and fixed.train.prior_precision == 5.0


@pytest.mark.slow
@pytest.mark.parametrize("prior_fit, structure, subset", [
    ("linear-mode", "full", "last-layer"), ("linear-mode-layerwise", "kfac", "all"),
    ("linear-mode-layerwise", "diag", "all")])
def test_linear_mode_prior_fit_is_the_evidence_modules_fixed_point(prior_fit, structure,
                                                                    subset, toy):
    """fit_laplace with a linear-mode prior fit sets λ to what
    ``jaxal.posteriors.evidence.fit_prior_precision_linear_mode`` returns for the same curvature
    (tested there against dense references), per layer when layerwise; and a loop with
    it runs with finite numbers."""
    from jaxal.posteriors.evidence import fit_prior_precision_linear_mode
    from jaxal.posteriors.laplace import curvature_problem, layer_groups

    model = mlp(2, hidden=(4,))
    params = init_params(model, jax.random.key(0), (2,))
    x, y, w = toy.pool_x[:30], toy.pool_y[:30], jnp.ones(30)
    fitted = fit_laplace(jax.random.key(0), model, params, x, y, w, 1.0,
                         Options(structure=structure, subset=subset, prior_fit=prior_fit))
    plain = fit_laplace(jax.random.key(0), model, params, x, y, w, 1.0,
                        Options(structure=structure, subset=subset, prior_fit="none"))
    inner = plain.weights if subset == "all" else plain.head
    problem = curvature_problem(model, params, x, y, w, subset)
    groups = layer_groups(problem.theta)[0] if prior_fit.endswith("layerwise") else None
    expected, _ = fit_prior_precision_linear_mode(inner, problem.logits_fn, problem.theta,
                                                  problem.inputs, y, w, groups=groups,
                                                  init=1.0)
    got = (fitted.weights if subset == "all" else fitted.head).prior_precision
    np.testing.assert_allclose(np.broadcast_to(got, np.shape(expected)), expected, rtol=1e-5)
    if groups is not None:   # one λ per layer, not all equal
        per_layer = [float(np.asarray(expected)[groups == g][0]) for g in set(groups)]
        assert len(set(np.round(per_layer, 6))) > 1
    config = ALConfig(posterior="laplace", predictive="mc", rounds=1, query_size=3,
                      train=TrainConfig(steps=10, batch_size=8),
                      posterior_options=Options(structure=structure, subset=subset,
                                                prior_fit=prior_fit, samples=4))
    validate_config(config)
    infos = [i for _, i in run_rounds(jax.random.key(0), make_learner(model, config, (2,), 2),
                                      toy)]
    assert all(np.isfinite(i.metrics.test_loss) for i in infos)


def test_cli_linear_mode_prior_and_its_layerwise_refusal_on_the_last_layer():
    from jaxal.cli.run import config_from_args, parser

    def options(*argv):
        args = parser().parse_args(["--dataset", "moons", "--posterior", "laplace", *argv])
        return config_from_args(args).al.options("posterior")

    assert options("--prior-precision", "linear-mode").prior_fit == "linear-mode"
    with pytest.raises(ConfigError, match=r"use --prior-precision linear-mode \(one λ\)"):
        validate_config(ALConfig(posterior="laplace", posterior_options=Options(
            prior_fit="linear-mode-layerwise")))


def test_linear_mode_prior_on_the_cnns_weights_is_refused_on_cpu_before_training():
    config = ALConfig(posterior="laplace", predictive="glm", posterior_options=Options(
        structure="kfac", subset="all", prior_fit="linear-mode-layerwise"))
    validate_config(config)
    with pytest.raises(ConfigError, match=r"on 130,890 weights .* ~75 s a Newton step .*"
                                          r"use --prior-precision auto-layerwise"):
        make_learner(cnn(10), config, (28, 28, 1), 10)
