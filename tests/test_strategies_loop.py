"""Query strategies inside the loop and the CLI: every choice runs, bad ones are refused,
pseudo-labels train but are never counted as labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxal import data as datasets
from jaxal.acquisition import ACQUISITIONS
from jaxal.apps.experiment import to_device
from jaxal.cli.run import config_from_args, main, parser
from jaxal.components import BatchBALDOptions, HybridOptions, LaplaceOptions, StochasticOptions
from jaxal.errors import ConfigError
from jaxal.loop import (
    ALConfig,
    default_predictive,
    init_state,
    make_learner,
    run_rounds,
    validate_config,
    validate_data,
)
from jaxal.model import init_params, mlp
from jaxal.selection import batch_selectors, strategies
from jaxal.train import TrainConfig, make_trainer, train_map


@pytest.fixture(scope="module")
def toy():
    return to_device(datasets.toy_al_split(0, n_pool=80, n_val=20, n_test=40))


def strategy_config(acquisition, batch="topk", **kw):
    config = ALConfig(acquisition=acquisition, batch=batch, posterior="laplace",
                      rounds=2, query_size=4, init_per_class=2,
                      acquisition_options=(BatchBALDOptions(candidates=20, configs=30)
                                           if acquisition == "batchbald" else ()),
                      train=TrainConfig(steps=20, batch_size=8),
                      posterior_options=LaplaceOptions(samples=8, prior_fit="none"))
    return config._replace(predictive=default_predictive(config))._replace(**kw)


CHOICES = ([(a, "topk") for a in [*ACQUISITIONS, *strategies()]]
           + [("entropy", b) for b in batch_selectors() if b != "topk"] + [("bald", "power")])


@pytest.mark.slow
@pytest.mark.parametrize("acquisition, batch", CHOICES, ids="-".join)
def test_every_strategy_runs_in_the_loop(toy, acquisition, batch):
    config = strategy_config(acquisition, batch)
    validate_config(config)
    validate_data(config, 80, np.asarray(toy.pool_y), 2)
    learner = make_learner(mlp(2, hidden=(8,)), config, (2,), 2)
    labelled = None
    for state, info in run_rounds(jax.random.key(0), learner, toy):
        if info.round > 0:
            assert not np.asarray(labelled)[info.queried].any(), "re-queried a label"
            assert len(set(info.queried.tolist())) == 4
            assert np.isfinite(info.scores).all()
            np.testing.assert_array_equal(info.queried_labels,
                                          np.asarray(toy.pool_y)[info.queried])
        labelled = state.labelled
        assert info.num_labels == int(labelled.sum()) == 4 + 4 * info.round
        assert info.pseudo.count == 0


@pytest.mark.slow
def test_batchbald_query_with_one_point_is_the_bald_top_1(toy):
    """Through the learner: BatchBALD and BALD see the same posterior samples."""
    bald_learner = make_learner(mlp(2, hidden=(8,)), strategy_config("bald", query_size=1),
                                (2,), 2)
    state, _ = init_state(jax.random.key(0), bald_learner, toy)
    bb_learner = make_learner(mlp(2, hidden=(8,)), strategy_config("batchbald", query_size=1),
                              (2,), 2)
    a = bald_learner.query(jax.random.key(1), state.posterior, toy.pool_x, state.labelled)
    b = bb_learner.query(jax.random.key(1), state.posterior, toy.pool_x, state.labelled)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)


@pytest.mark.slow
def test_pseudo_labels_train_but_never_enter_the_labelled_set(toy):
    config = strategy_config("entropy", pseudo_label=0.6, rounds=3, posterior="plugin",
                             predictive="plugin", posterior_options=(),
                             train=TrainConfig(steps=100, batch_size=8, learning_rate=1e-2))
    learner = make_learner(mlp(2, hidden=(8,)), config, (2,), 2)
    labelled = None
    total = 0
    for state, info in run_rounds(jax.random.key(0), learner, toy):
        assert info.num_labels == int(state.labelled.sum()) == 4 + 4 * info.round
        if info.round == 0:
            labelled = state.labelled
            continue
        # Exactly the queried points were added: no pseudo-labelled point.
        np.testing.assert_array_equal(
            np.flatnonzero(state.labelled & ~labelled), np.sort(info.queried))
        assert 0 <= info.pseudo.correct <= info.pseudo.count
        assert info.pseudo.count <= 80 - int(state.labelled.sum())
        total += info.pseudo.count
        labelled = state.labelled
    assert total > 0, "a 0.6 threshold on two moons must pseudo-label something"


def test_pseudo_label_query_reports_confident_unqueried_points(toy):
    config = strategy_config("entropy", pseudo_label=0.7, posterior="plugin",
                             predictive="plugin", posterior_options=())
    learner = make_learner(mlp(2, hidden=(8,)), config, (2,), 2)
    state, _ = init_state(jax.random.key(0), learner, toy)
    query = learner.query(jax.random.key(1), state.posterior, toy.pool_x, state.labelled)
    probs = np.asarray(jax.nn.softmax(mlp(2, hidden=(8,)).apply(state.params, toy.pool_x)))
    pseudo = np.asarray(query.pseudo_labels)
    excluded = np.asarray(state.labelled).copy()
    excluded[np.asarray(query.indices)] = True
    assert (pseudo[excluded] == -1).all()
    chosen = pseudo >= 0
    assert chosen.any()
    assert (probs[~chosen & ~excluded].max(1) < 0.7 + 1e-6).all()
    assert (probs[chosen].max(1) >= 0.7 - 1e-6).all()
    np.testing.assert_array_equal(pseudo[chosen], probs[chosen].argmax(1))


@pytest.mark.slow
def test_train_map_fits_the_pseudo_labels():
    """Two labelled points of class 0; every other point pseudo-labelled 1: the fit must
    follow the pseudo-labels, which it cannot without them."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(40, 2)), jnp.float32)
    y = jnp.zeros(40, jnp.int32)
    labelled = jnp.zeros(40, bool).at[:2].set(True)
    pseudo = jnp.where(labelled, -1, 1)
    model = mlp(2, hidden=(8,))
    trainer = make_trainer(model, TrainConfig(steps=100, batch_size=16,
                                              learning_rate=1e-2), 40)
    trainer = trainer._replace(step=jax.jit(trainer.step))
    params0 = init_params(model, jax.random.key(0), (2,))
    with_pl, info = train_map(jax.random.key(1), trainer, params0, x, y, labelled, pseudo)
    without, _ = train_map(jax.random.key(1), trainer, params0, x, y, labelled)
    predict = lambda p: np.asarray(model.apply(p, x).argmax(1))
    assert (predict(with_pl)[2:] == 1).mean() > 0.8
    assert (predict(without) == 0).mean() > 0.8
    # train_nll is the NLL of the true labels (class 0) of the two labelled points.
    logits = model.apply(with_pl, x[:2])
    np.testing.assert_allclose(info.train_nll,
                               -jax.nn.log_softmax(logits)[:, 0].mean(), rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(acquisition="bald", posterior="plugin", predictive="plugin"),
     "the 'plugin' posterior gives none (every sample of a point mass is the MAP"),
    (dict(acquisition="mean_std", predictive="probit"), "use --predictive mc"),
    (dict(acquisition="batchbald", predictive="probit"), "use --predictive mc"),
    (dict(acquisition="kcenter", batch="hybrid"), "--acq kcenter picks its batch itself"),
    (dict(batch="sample"), "unknown batch selector 'sample'"),
    # Each selector checks its own hyperparameters (Selector.check), when it is used.
    (dict(batch="hybrid", batch_options=HybridOptions(beta=1.5)),
     "hybrid beta must be in [0, 1]"),
    (dict(batch="power", batch_options=StochasticOptions(beta=0.0)),
     "stochastic beta must be a finite number > 0"),
    (dict(acquisition="batchbald", acquisition_options=BatchBALDOptions(candidates=3)),
     "must be >= the query size"),
    # Options of another component than the one chosen are refused with the fix.
    (dict(batch="hybrid", batch_options=StochasticOptions(beta=2.0)),
     "--batch hybrid takes HybridOptions, not StochasticOptions"),
    (dict(pseudo_label=1.5), "pseudo-label threshold 1.5 is out of range"),
    (dict(pseudo_label=0.0, pseudo_label_by="entropy"), "entropy needs t > 0"),
    (dict(pseudo_label_by="margin"), "unknown pseudo-label criterion 'margin'"),
])
def test_bad_strategy_configs_name_the_fix(change, message):
    config = strategy_config("bald")._replace(**change)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
        validate_data(config, num_pool=80, pool_labels=None, num_classes=2)
    assert message in str(err.value)


def test_cli_lists_every_strategy_and_picks_mc_for_sample_scores():
    text = parser().format_help()
    for name in [*ACQUISITIONS, *strategies(), *batch_selectors()]:
        assert name in text
    args = parser().parse_args(["--acq", "bald", "--posterior", "laplace"])
    assert config_from_args(args).al.predictive == "mc"
    args = parser().parse_args(["--acq", "entropy", "--posterior", "laplace", "--batch",
                                "hybrid", "--hybrid-beta", "0.3", "--pseudo-label", "0.95"])
    al = config_from_args(args).al
    assert (al.predictive, al.batch, al.batch_options.beta, al.pseudo_label) == (
        "probit", "hybrid", 0.3, 0.95)


def test_cli_refuses_bald_with_the_plugin_before_loading_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--acq", "bald", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    assert "--posterior laplace --predictive mc" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
