"""The AL loop: state passing, static shapes (no recompilation), validation before work."""

import jax
import numpy as np
import pytest
from helpers import count_compilations

from jaxal import data as datasets
from jaxal.apps.experiment import ExperimentConfig, load_split, to_device
from jaxal.errors import ConfigError
from jaxal.loop import (
    ALConfig,
    al_round,
    init_state,
    initial_labelled,
    make_learner,
    run_rounds,
    validate_config,
    validate_data,
)
from jaxal.model import cnn, mlp
from jaxal.train import TrainConfig


@pytest.fixture(scope="module")
def mnist_small(mnist_data_dir):
    config = ExperimentConfig(dataset="mnist", seed=0, val_size=200, pool_size=1000,
                              data_dir=str(mnist_data_dir))
    split = load_split(config)
    # A 2,000-image test set keeps evaluation quick; the loop does not care.
    return to_device(split._replace(test_x=split.test_x[:2000], test_y=split.test_y[:2000]))


@pytest.mark.slow
def test_cnn_rounds_do_not_recompile(mnist_small):
    config = ALConfig(acquisition="entropy", rounds=4, query_size=7, init_per_class=1,
                      train=TrainConfig(steps=5, batch_size=8))
    learner = make_learner(cnn(10), config, (28, 28, 1), 10)
    rounds = run_rounds(jax.random.key(0), learner, mnist_small)
    next(rounds)   # round 0 compiles training, posterior and evaluation
    with count_compilations() as first_query:
        next(rounds)   # round 1 compiles scoring and selection
    with count_compilations() as later:
        infos = [info for _, info in rounds]   # rounds 2..4: labelled set grows 24 -> 38
    assert [i.num_labels for i in infos] == [24, 31, 38]
    assert first_query.count > 0, "the counter sees the first query's compilations"
    assert later.count == 0


def test_initial_labelled_is_balanced():
    y = np.repeat(np.arange(5), 30)
    mask = np.asarray(initial_labelled(jax.random.key(3), y, 5, 4))
    assert mask.sum() == 20
    np.testing.assert_array_equal(np.bincount(y[mask], minlength=5), [4] * 5)
    again = np.asarray(initial_labelled(jax.random.key(3), y, 5, 4))
    other = np.asarray(initial_labelled(jax.random.key(4), y, 5, 4))
    np.testing.assert_array_equal(mask, again)
    assert not np.array_equal(mask, other)


def test_initial_labelled_is_uniform_within_each_class_and_compiles_once():
    """Every member of a class is picked with probability per_class / class size (Monte
    Carlo over 400 keys), and classes of 10 different sizes compile one draw, not 10."""
    y = np.concatenate([np.full(6 + c, c) for c in range(10)])   # class c: 6 + c members
    draw = lambda k: np.asarray(initial_labelled(jax.random.key(k), y, 10, 2))
    with count_compilations() as compiled:
        draw(0)     # a pool length no other test uses: nothing cached
    assert 0 < compiled.count <= 4   # a choice per class compiled 3 programs per class
    freq = np.mean([draw(k) for k in range(1, 401)], axis=0)
    for c in range(10):
        p = 2 / (6 + c)
        # 5 standard errors of a frequency over 400 draws.
        np.testing.assert_allclose(freq[y == c], p, atol=5 * np.sqrt(p * (1 - p) / 400))


@pytest.fixture(scope="module")
def toy():
    return to_device(datasets.toy_al_split(0, n_pool=120, n_val=40, n_test=100))


@pytest.mark.slow
@pytest.mark.parametrize("acquisition", ["random", "entropy", "margin", "least_confidence"])
def test_round_queries_new_unlabelled_points(toy, acquisition):
    config = ALConfig(acquisition=acquisition, rounds=3, query_size=5, init_per_class=2,
                      train=TrainConfig(steps=30, batch_size=8, learning_rate=1e-2))
    learner = make_learner(mlp(2), config, (2,), 2)
    state, info0 = init_state(jax.random.key(0), learner, toy)
    assert info0.num_labels == 4 and info0.queried.size == 0
    seen = np.asarray(state.labelled).copy()
    for r in range(1, 4):
        before = np.asarray(state.labelled)
        state, info = al_round(jax.random.key(r), state, learner, toy)
        after = np.asarray(state.labelled)
        assert state.round == r and info.round == r
        assert len(set(info.queried.tolist())) == 5, "a point was queried twice"
        assert not before[info.queried].any(), "an already labelled point was queried"
        assert after[info.queried].all() and after.sum() == before.sum() + 5
        # Nothing else changed, and the old state is untouched (no mutation).
        np.testing.assert_array_equal(after & ~before, np.isin(np.arange(120), info.queried))
        np.testing.assert_array_equal(np.asarray(toy.pool_y)[info.queried],
                                      info.queried_labels)
        assert np.isfinite(info.scores).all()
        seen |= after
    assert seen.sum() == 4 + 3 * 5


def test_score_order_and_metrics(toy):
    """Entropy queries the highest-entropy unlabelled points; metrics are sane."""
    config = ALConfig(acquisition="entropy", rounds=1, query_size=5, init_per_class=3,
                      train=TrainConfig(steps=200, batch_size=8, learning_rate=1e-2))
    learner = make_learner(mlp(2), config, (2,), 2)
    state, info = init_state(jax.random.key(1), learner, toy)
    m = info.metrics
    # Independent reference: the plugin predictive by hand in numpy.
    logits = np.asarray(mlp(2).apply(state.params, toy.test_x), np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = np.asarray(toy.test_y)
    np.testing.assert_allclose(m.test_loss, -np.log(probs[np.arange(y.size), y]).mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(m.test_accuracy, (probs.argmax(1) == y).mean(), atol=1e-6)
    np.testing.assert_allclose(m.test_entropy, -(probs * np.log(probs)).sum(1).mean(),
                               rtol=1e-4)
    assert m.test_accuracy > 0.7, "200 Adam steps on 6 moons points should beat chance"
    probs = np.asarray(jax.nn.softmax(mlp(2).apply(state.params, toy.pool_x)), np.float64)
    scores = -(probs * np.log(probs)).sum(1)
    scores[np.asarray(state.labelled)] = -np.inf
    _, info1 = al_round(jax.random.key(2), state, learner, toy)
    np.testing.assert_array_equal(np.sort(info1.queried), np.sort(np.argsort(-scores)[:5]))


def test_runs_are_reproducible(toy):
    config = ALConfig(acquisition="random", rounds=2, query_size=3, init_per_class=2,
                      train=TrainConfig(steps=20, batch_size=8))
    learner = make_learner(mlp(2), config, (2,), 2)
    a = [i for _, i in run_rounds(jax.random.key(5), learner, toy)]
    b = [i for _, i in run_rounds(jax.random.key(5), learner, toy)]
    c = [i for _, i in run_rounds(jax.random.key(6), learner, toy)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.queried, y.queried)
        assert x.metrics == y.metrics
    assert any(not np.array_equal(x.queried, y.queried) for x, y in zip(a, c, strict=True))


@pytest.mark.slow
def test_warm_start_starts_from_previous_params(toy):
    base = ALConfig(acquisition="entropy", rounds=1, query_size=3, init_per_class=2,
                    train=TrainConfig(steps=1, batch_size=4, learning_rate=1e-3))
    cold = make_learner(mlp(2), base, (2,), 2)
    warm = make_learner(mlp(2), base._replace(warm_start=True), (2,), 2)
    state, _ = init_state(jax.random.key(0), cold, toy)
    # Pretend the previous round ended far from the initial weights.
    far = jax.tree.map(lambda p: p + 3.0, state.params)
    state = state._replace(params=far)
    dist = lambda a, b: sum(float(((x - y) ** 2).sum()) for x, y in
                            zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    warm_state, _ = al_round(jax.random.key(1), state, warm, toy)
    cold_state, _ = al_round(jax.random.key(1), state, cold, toy)
    assert dist(warm_state.params, far) < dist(cold_state.params, far)


@pytest.mark.parametrize("change, message", [
    (dict(query_size=0), "query size must be > 0"),
    (dict(acquisition="bold"), "unknown acquisition 'bold'; choose one of"),
    (dict(init_per_class=500), "exceeds the pool of 1000"),
    (dict(rounds=100, query_size=10), "lower --rounds or --query-size"),
    (dict(predictive="mc"), "use --posterior laplace or mc-dropout or ensemble, or with 'plugin' "
                              "--predictive plugin"),
    (dict(train=TrainConfig(steps=0)), "training steps must be > 0"),
    (dict(train=TrainConfig(prior_precision=-1.0)), "prior precision must be a finite number >= 0"),
])
def test_validate_config_names_the_fix(change, message):
    config = ALConfig()._replace(**change)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
        validate_data(config, num_pool=1000, pool_labels=None, num_classes=10)
    assert message in str(err.value)


def test_validate_config_checks_classes_in_pool():
    y = np.array([0] * 50 + [1])
    with pytest.raises(ConfigError, match=r"classes \[1\] have fewer than 2"):
        validate_data(ALConfig(rounds=1), num_pool=51, pool_labels=y, num_classes=2)


@pytest.mark.slow
@pytest.mark.parametrize("posterior, predictive", [("laplace", "mc"), ("plugin", "plugin")])
def test_the_map_networks_own_test_metrics_are_recorded_beside_the_predictive(
        posterior, predictive):
    """map_test_accuracy / map_test_loss: the θ_MAP network's softmax on the test set,
    computed here directly; for the plugin predictive they are its own metrics."""
    from jaxal.components import LaplaceOptions

    toy = to_device(datasets.toy_al_split(0, n_pool=60, n_val=20, n_test=50))
    config = ALConfig(posterior=posterior, predictive=predictive, rounds=0, query_size=3,
                      train=TrainConfig(steps=20, batch_size=8),
                      posterior_options=(LaplaceOptions(samples=4, prior_fit="none")
                                         if posterior == "laplace" else ()))
    model = mlp(2, hidden=(6,))
    state, info = init_state(jax.random.key(0), make_learner(model, config, (2,), 2), toy)
    probs = np.asarray(jax.nn.softmax(model.apply(state.params, toy.test_x)))
    y = np.asarray(toy.test_y)
    m = info.metrics
    assert m.map_test_accuracy == pytest.approx((probs.argmax(1) == y).mean())
    assert m.map_test_loss == pytest.approx(-np.log(probs[np.arange(y.size), y]).mean(),
                                            rel=1e-5)
    if predictive == "plugin":
        assert (m.map_test_accuracy, m.map_test_loss) == (m.test_accuracy, m.test_loss)
    else:   # 4 posterior samples: another predictive than the network's
        assert m.map_test_loss != m.test_loss
