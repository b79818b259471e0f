"""Online marginal-likelihood training (``jaxal.posteriors.marglik``): each update is K Adam
steps on the dense Laplace evidence, the best-evidence iterate is what a fit returns, λ carries over
rounds, rounds do not recompile, seeds stacked give the seeds one at a time, a killed run
resumes, and impossible settings are refused."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_compilations, dense_ggn
from jax.flatten_util import ravel_pytree

from jaxal import data as datasets
from jaxal.apps.experiment import run_experiment, to_device
from jaxal.apps.results import read_metrics, read_queries
from jaxal.apps.seeds import run_seeds
from jaxal.cli.run import main as run_main
from jaxal.config import ALConfig, ExperimentConfig, LaplaceOptions, TrainConfig
from jaxal.errors import ConfigError
from jaxal.loop import DIAGNOSIS_POINTS, make_learner, run_rounds, validate_config
from jaxal.model import mlp
from jaxal.objective import log_likelihood, log_prior, minibatch_objective, squared_norm
from jaxal.posteriors.evidence import evidence_diagnosis
from jaxal.posteriors.laplace import layer_groups
from jaxal.posteriors.marglik import MarglikParams, network_prior_precision, prior_groups
from jaxal.train import labelled_indices

K = 4
OPTIONS = LaplaceOptions(structure="full", subset="all", prior_fit="marglik-layerwise",
                         samples=8, marglik_every=10, marglik_burn_in=20, marglik_steps=K,
                         marglik_learning_rate=0.3)
TRAIN = TrainConfig(steps=60, batch_size=8, learning_rate=1e-2)
AL = ALConfig(acquisition="bald", posterior="laplace", predictive="glm", rounds=2,
              query_size=4, init_per_class=3, posterior_options=OPTIONS, train=TRAIN)


@pytest.fixture(scope="module")
def toy():
    return to_device(datasets.toy_al_split(0, n_pool=120, n_val=40, n_test=100))


@pytest.fixture(scope="module")
def learner():
    return make_learner(mlp(2, hidden=(8,)), AL, (2,), 2)


def labelled_of(toy, count=12):
    return jnp.zeros(toy.pool_y.shape, bool).at[jnp.arange(count)].set(True)


def test_prior_energy_and_log_prior_with_one_precision_per_weight_match_dense():
    params = mlp(2, hidden=(4,)).init(jax.random.key(0), jnp.zeros((1, 2)))
    flat = np.asarray(ravel_pytree(params)[0], np.float64)
    lam = np.linspace(0.5, 3.0, flat.size)
    dense = -0.5 * flat @ (lam * flat) + 0.5 * np.log(lam / (2 * np.pi)).sum()
    np.testing.assert_allclose(log_prior(params, jnp.asarray(lam, jnp.float32)), dense,
                               rtol=1e-5)
    # One λ broadcast to every weight is the scalar prior.
    np.testing.assert_allclose(log_prior(params, jnp.full(flat.size, 2.0)),
                               log_prior(params, 2.0), rtol=1e-6)
    logits, labels = jnp.zeros((3, 2)), jnp.array([0, 1, 1])
    np.testing.assert_allclose(
        minibatch_objective(params, logits, labels, jnp.asarray(lam, jnp.float32), 7.0),
        np.log(2) + 0.5 * flat @ (lam * flat) / 7.0, rtol=1e-5)
    assert float(squared_norm(params)) == pytest.approx(flat @ flat, rel=1e-5)


def test_network_prior_precision_keeps_the_body_at_the_runs_lambda_for_the_last_layer():
    params = mlp(2, hidden=(4,)).init(jax.random.key(0), jnp.zeros((1, 2)))
    groups = prior_groups(mlp(2, hidden=(4,)), params, OPTIONS._replace(
        subset="last-layer", prior_fit="marglik"))
    lam = network_prior_precision(jnp.log(jnp.array([5.0])), groups, 0.25)
    marks = jax.tree.map(jnp.zeros_like, params)
    marks["params"]["head"] = jax.tree.map(jnp.ones_like, params["params"]["head"])
    head = np.asarray(ravel_pytree(marks)[0], bool)
    np.testing.assert_allclose(np.asarray(lam)[head], 5.0)
    np.testing.assert_allclose(np.asarray(lam)[~head], 0.25)


def dense_evidence(model, params, x, y, log_lam, group):
    """The Laplace evidence with the dense GGN (``helpers.dense_ggn``), float64 numpy."""
    theta = np.asarray(ravel_pytree(params)[0], np.float64)
    ggn = dense_ggn(model.apply, params, x)
    ll = float(log_likelihood(model.apply(params, x), y))

    def evidence(log_lam):
        lam = jnp.exp(log_lam)[group]
        precision = jnp.asarray(ggn) + jnp.diag(lam)
        return (ll - 0.5 * jnp.vdot(theta, lam * theta) + 0.5 * jnp.log(lam).sum()
                - 0.5 * jnp.linalg.slogdet(precision)[1])
    return evidence


def test_one_update_is_K_adam_steps_on_the_dense_evidence(toy, learner):
    """The first update from λ = 1: K Adam steps on -log p(D | λ) per layer, the dense
    GGN and the evidence written out here (float64)."""
    trainer, model = learner.trainer, mlp(2, hidden=(8,))
    labelled = labelled_of(toy)
    idx, num = labelled_indices(labelled), labelled.sum()
    state = trainer.init(learner.init(jax.random.key(1)))
    for t in range(20):
        state, _ = trainer.step(jax.random.key(t), state, toy.pool_x, toy.pool_y, idx, num)
    updated = trainer.hyper.update(jax.random.key(99), state, toy.pool_x, toy.pool_y, idx,
                                   num)

    group = layer_groups(state.params)[0]
    jax.config.update("jax_enable_x64", True)
    try:
        evidence = dense_evidence(model, state.params, toy.pool_x[:12], toy.pool_y[:12],
                                  None, group)
        optimizer = optax.adam(OPTIONS.marglik_learning_rate)
        log_lam = jnp.zeros(int(group.max()) + 1, jnp.float64)
        opt_state = optimizer.init(log_lam)
        for _ in range(K):
            grad = jax.grad(lambda v: -evidence(v))(log_lam)
            step, opt_state = optimizer.update(grad, opt_state)
            log_lam = optax.apply_updates(log_lam, step)
        expected, expected_evidence = np.asarray(log_lam), float(evidence(log_lam))
    finally:
        jax.config.update("jax_enable_x64", False)
    assert np.abs(expected).max() > 0.5, "the update moves λ"
    np.testing.assert_allclose(updated.hyper.log_prior_precision, expected, atol=2e-3)
    np.testing.assert_allclose(updated.hyper.log_evidence, expected_evidence, rtol=1e-4)
    # The objective's λ per weight follows: layer l's λ on its weights.
    np.testing.assert_allclose(updated.prior_precision, np.exp(expected)[group], rtol=5e-3)


def test_a_non_finite_evidence_keeps_the_last_lambda_and_best_iterate(toy, learner):
    """An update whose evidence is not finite (here θ is NaN) changes neither λ nor the
    best iterate; the NaN θ then stops the run in the loop's finiteness check."""
    trainer = learner.trainer
    labelled = labelled_of(toy)
    idx, num = labelled_indices(labelled), labelled.sum()
    state = trainer.init(learner.init(jax.random.key(1)))
    state = trainer.hyper.update(jax.random.key(0), state, toy.pool_x, toy.pool_y, idx, num)
    broken = state._replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    after = trainer.hyper.update(jax.random.key(1), broken, toy.pool_x, toy.pool_y, idx,
                                 num)
    assert not np.isfinite(after.hyper.log_evidence)
    np.testing.assert_array_equal(after.hyper.log_prior_precision,
                                  state.hyper.log_prior_precision)
    np.testing.assert_array_equal(after.prior_precision, state.prior_precision)
    assert float(after.hyper.best_log_evidence) == float(state.hyper.best_log_evidence)
    # Adam's moments too: the next finite update goes on as if this one had not run.
    for got, want in zip(jax.tree.leaves(after.hyper.opt_state),
                         jax.tree.leaves(state.hyper.opt_state), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(jax.tree.leaves(trainer.result(after)),
                         jax.tree.leaves(trainer.result(state)), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_fit_returns_the_best_evidence_iterate(toy, learner):
    """Train by hand as ``train_map`` does, recording (θ, λ, evidence) at each update; the
    fit's result is the iterate of highest evidence, not the last."""
    trainer = learner.trainer
    labelled = labelled_of(toy)
    idx, num = labelled_indices(labelled), labelled.sum()
    state = trainer.init(learner.init(jax.random.key(2)))
    seen = []
    for t in range(TRAIN.steps):
        state, _ = trainer.step(jax.random.key(t), state, toy.pool_x, toy.pool_y, idx, num)
        if trainer.hyper.due(t + 1):
            state = trainer.hyper.update(jax.random.key(t), state, toy.pool_x, toy.pool_y,
                                         idx, num)
            seen.append((float(state.hyper.log_evidence), state.params,
                         state.hyper.log_prior_precision))
    assert [t + 1 for t in range(TRAIN.steps) if trainer.hyper.due(t + 1)] == [20, 30, 40,
                                                                              50, 60]
    best = max(range(len(seen)), key=lambda i: seen[i][0])
    result = trainer.result(state)
    assert isinstance(result, MarglikParams)
    for got, want in zip(jax.tree.leaves(result), jax.tree.leaves((seen[best][1],
                                                                   seen[best][2])),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    # Before any update the fit ends where training did, at its initial λ.
    fresh = trainer.init(learner.init(jax.random.key(3)))
    np.testing.assert_array_equal(trainer.result(fresh).log_prior_precision,
                                  fresh.hyper.log_prior_precision)


def test_lambda_carries_over_rounds_and_rounds_do_not_recompile(toy):
    config = AL._replace(rounds=4, posterior_options=OPTIONS._replace(structure="kfac"))
    learner = make_learner(mlp(2, hidden=(8,)), config, (2,), 2)
    rounds = run_rounds(jax.random.key(0), learner, toy)
    state, _ = next(rounds)
    first = state.params.log_prior_precision
    assert not np.allclose(first, 0.0), "round 0 learned λ"
    # From scratch: fresh weights, the last round's λ.
    start = learner.restart(state.params, state.init_key)
    np.testing.assert_array_equal(start.log_prior_precision, first)
    # Training starts there: the burn-in with the run's λ (1), the updates from the last λ.
    train_state = learner.trainer.init(start)
    np.testing.assert_array_equal(train_state.prior_precision, 1.0)
    np.testing.assert_array_equal(train_state.hyper.log_prior_precision, first)
    for got, want in zip(jax.tree.leaves(start.params),
                         jax.tree.leaves(learner.init(state.init_key).params), strict=True):
        np.testing.assert_array_equal(got, want)
    with count_compilations() as first_query:
        next(rounds)
    with count_compilations() as later:
        infos = [info for _, info in rounds]
    assert first_query.count > 0, "the counter sees the first query's compilations"
    assert later.count == 0 and [i.num_labels for i in infos] == [14, 18, 22]
    # The reported λ is the posterior's: the learned one.
    assert all(i.metrics.prior_precision != 1.0 for i in infos)


def flat(tree: dict) -> dict:
    """{path: leaf} of a nested dict (``pytest.approx`` compares flat mappings)."""
    return {jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_each_round_reports_the_evidence_diagnosis_of_its_posterior(toy):
    """``--diagnose``: a round's diagnosis is ``evidence_diagnosis`` of the posterior it
    fitted, on the first validation points, per layer of its subset."""
    config = AL._replace(rounds=1, diagnose=True)
    model = mlp(2, hidden=(8,))
    learner = make_learner(model, config, (2,), 2)
    (_, info0), (state, info1) = run_rounds(jax.random.key(0), learner, toy)
    expected = evidence_diagnosis(model, state.posterior.params, state.posterior.weights,
                                  toy.val_x[:DIAGNOSIS_POINTS], "all")
    names = layer_groups(state.posterior.params)[1]
    assert flat(info1.diagnosis) == pytest.approx(flat(expected.as_dict(names)), rel=1e-5)
    assert list(info1.diagnosis["layers"]) == list(names)
    lam = np.exp(np.asarray(state.params.log_prior_precision))
    np.testing.assert_allclose([v["prior_precision"] for v in
                                info1.diagnosis["layers"].values()], lam, rtol=1e-5)
    assert info0.diagnosis["layers"] != info1.diagnosis["layers"]
    with pytest.raises(ConfigError, match="--diagnose"):
        validate_config(config._replace(posterior="plugin", predictive="plugin",
                                        acquisition="entropy", posterior_options=()))


def experiment(seed: int) -> ExperimentConfig:
    return ExperimentConfig(dataset="moons", seed=seed, val_size=40, pool_size=120,
                            al=AL._replace(posterior_options=OPTIONS._replace(
                                structure="diag"), diagnose=True))


@pytest.mark.slow
def test_stacked_seeds_and_a_resumed_run_repeat_the_runs(tmp_path):
    for seed in (0, 1):
        run_experiment(experiment(seed), tmp_path / f"s{seed}", progress=None)
    run_seeds([experiment(0), experiment(1)], [tmp_path / "v0", tmp_path / "v1"],
              progress=None)
    for seed in (0, 1):
        a, b = read_metrics(tmp_path / f"s{seed}"), read_metrics(tmp_path / f"v{seed}")
        assert [r["num_labels"] for r in a] == [r["num_labels"] for r in b]
        for ra, rb in zip(a, b, strict=True):
            for k in ("prior_precision", "test_accuracy", "train_loss"):
                np.testing.assert_allclose(ra[k], rb[k], rtol=2e-3, atol=1e-5, err_msg=k)
        diagnosis = [(tmp_path / f"{d}{seed}" / "diagnosis.jsonl").read_text().splitlines()
                     for d in "sv"]
        assert len(diagnosis[0]) == len(diagnosis[1]) == 3
        for a, b in zip(*diagnosis, strict=True):
            assert flat(json.loads(a)) == pytest.approx(flat(json.loads(b)), rel=2e-3,
                                                        abs=1e-5)
    # Killed after round 1 and resumed (the checkpoint holds θ and log λ): the same run.
    def kill_after_round_1(line: str):
        if line.startswith("round   1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment(0), tmp_path / "r0", progress=kill_after_round_1)
    assert len(read_metrics(tmp_path / "r0")) == 2
    run_experiment(experiment(0), tmp_path / "r0", progress=None)
    assert read_queries(tmp_path / "r0") == read_queries(tmp_path / "s0")
    drop = ("score_s", "train_s", "posterior_s", "eval_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]
    assert strip(read_metrics(tmp_path / "r0")) == strip(read_metrics(tmp_path / "s0"))
    assert ((tmp_path / "r0" / "diagnosis.jsonl").read_text()
            == (tmp_path / "s0" / "diagnosis.jsonl").read_text())


@pytest.mark.parametrize(("flags", "says"), [
    (["--marglik-every", "0"], "--marglik-every"),
    (["--marglik-steps", "0"], "--marglik-steps"),
    (["--marglik-burn-in", "160"], "lower --marglik-burn-in"),
    (["--posterior", "plugin"], "add --posterior laplace"),
    (["--subset", "last-layer", "--structure", "full"],
     "a layerwise prior needs more than one layer"),
])
def test_impossible_settings_are_refused_in_one_line_before_work(tmp_path, capsys, flags,
                                                                 says):
    args = ["--dataset", "moons", "--posterior", "laplace", "--subset", "all",
            "--structure", "kfac", "--prior-precision", "marglik-layerwise", "--steps", "200",
            "--out", str(tmp_path / "out"), *flags]
    with pytest.raises(SystemExit) as e:
        run_main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()


def test_options_check_refuses_what_the_flags_cannot_express():
    with pytest.raises(ConfigError, match="never be learned"):
        validate_config(AL._replace(train=TRAIN._replace(steps=25)))
    with pytest.raises(ConfigError, match="no log"):
        validate_config(AL._replace(train=TRAIN._replace(prior_precision=0.0)))
    with pytest.raises(ConfigError, match="--marglik-lr"):
        validate_config(AL._replace(posterior_options=OPTIONS._replace(
            marglik_learning_rate=float("inf"))))
