"""Contracts every registry entry keeps, over every valid (posterior, predictive,
acquisition, selector) combination, enumerated from the records (never a hand-kept list);
and: a new component is one function plus one registry entry.

Per (posterior, predictive) pair: probabilities finite and summing to 1, per-sample
probabilities exactly when the predictive declares them, the same key giving the same
output, two rounds of the loop without recompiling. Per combination: the query's indices
are unlabelled, distinct and reproducible, and a second round's query does not recompile.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compilations

from jaxal import data as datasets
from jaxal.acquisition import ACQUISITIONS, Acquisition
from jaxal.apps.experiment import to_device
from jaxal.components import (
    POSTERIORS,
    BatchBALDOptions,
    Component,
    EnsembleOptions,
    LaplaceOptions,
    MCDropoutOptions,
)
from jaxal.config import ALConfig, ModelConfig, TrainConfig
from jaxal.errors import ConfigError
from jaxal.loop import make_learner, run_rounds, train_and_fit, validate_config
from jaxal.model import mlp
from jaxal.posteriors import bind
from jaxal.predictive import PREDICTIVES, Predictive, works_with
from jaxal.selection import SELECTORS, Selector, batch_selectors, strategies, top_k

MODEL = mlp(2, hidden=(8,))
# The MC dropout posterior samples through dropout layers.
DROPOUT_MODEL = mlp(2, hidden=(8,), hidden_dropout_rate=0.2)


def model_for(posterior: str):
    return DROPOUT_MODEL if posterior == "mc-dropout" else MODEL


def num_samples(config: ALConfig) -> int:
    """S of the per-sample probabilities each posterior gives."""
    options = config.options("posterior")
    return options.size if isinstance(options, EnsembleOptions) else options.samples


# Options small enough for toy data, by component; the others run at their defaults.
SMALL = {"laplace": LaplaceOptions(samples=6, prior_fit="none"),
         "mc-dropout": MCDropoutOptions(samples=5), "ensemble": EnsembleOptions(size=3),
         "batchbald": BatchBALDOptions(candidates=16, configs=32)}


def base_config(posterior: str, predictive: str, acquisition: str = "entropy",
                batch: str = "topk") -> ALConfig:
    return ALConfig(acquisition=acquisition, batch=batch, posterior=posterior,
                    predictive=predictive, rounds=2, query_size=4, init_per_class=2,
                    posterior_options=SMALL.get(posterior, ()),
                    acquisition_options=SMALL.get(acquisition, ()),
                    model=ModelConfig(dropout=0.2 if posterior == "mc-dropout" else 0.0),
                    train=TrainConfig(steps=20, batch_size=8))


def pairs() -> list[tuple[str, str]]:
    """Every (posterior, predictive) the records say work together."""
    return [(p, q) for p, post in POSTERIORS.items() for q, pred in PREDICTIVES.items()
            if works_with(pred, post)]


# Valid combinations each (posterior, predictive) pair is tested in at least (if it has
# that many), beyond those that cover an (acquisition, selector) for the first time.
PER_PAIR = 3


def combinations() -> list[ALConfig]:
    """Valid (posterior, predictive, acquisition, selector) combinations, from the records:
    every (acquisition, selector) with a predictive that gives samples and with one that
    does not (where valid), and every (posterior, predictive) pair in ``PER_PAIR`` of them.
    A query depends on the posterior only through the predictive's output (probabilities,
    and per-sample ones or not), which the predictive contract checks per pair; the full
    cross product would multiply the suite's time by the number of pairs."""
    found, kinds, per_pair = [], set(), {}
    for (posterior, predictive), acquisition in itertools.product(
            pairs(), [*ACQUISITIONS, *strategies()]):
        for batch in (batch_selectors() if acquisition in ACQUISITIONS else ("topk",)):
            config = base_config(posterior, predictive, acquisition, batch)
            try:
                validate_config(config)
            except ConfigError:
                continue
            kind = (acquisition, batch, PREDICTIVES[predictive].gives_samples)
            if kind in kinds and per_pair.get((posterior, predictive), 0) >= PER_PAIR:
                continue
            kinds.add(kind)
            per_pair[posterior, predictive] = per_pair.get((posterior, predictive), 0) + 1
            found.append(config)
    return found


def name(config: ALConfig) -> str:
    return f"{config.posterior}-{config.predictive}-{config.acquisition}-{config.batch}"


@pytest.fixture(scope="module")
def toy():
    return to_device(datasets.toy_al_split(0, n_pool=80, n_val=20, n_test=40))


@pytest.fixture(scope="module")
def fitted(toy):
    """Per (posterior, predictive): a θ_MAP and posterior on the initial labels."""
    out = {}
    labelled = jnp.zeros(80, bool).at[jnp.arange(0, 80, 10)].set(True)
    for posterior, predictive in pairs():
        learner = make_learner(model_for(posterior), base_config(posterior, predictive),
                               (2,), 2)
        key_train, key_fit = jax.random.split(jax.random.key(0))
        _, _, state, _ = train_and_fit(key_train, key_fit, learner, toy,
                                       learner.init(jax.random.key(1)), labelled)
        out[posterior, predictive] = state, labelled
    return out


def test_every_component_takes_part_in_some_combination():
    configs = combinations()
    assert {c.posterior for c in configs} == set(POSTERIORS)
    assert {c.predictive for c in configs} == set(PREDICTIVES)
    assert {c.acquisition for c in configs} == {*ACQUISITIONS, *strategies()}
    assert {c.batch for c in configs} == set(batch_selectors())
    # Sample-reading scores only ever meet sampling predictives, and vice versa not.
    for c in configs:
        reads_samples = (ACQUISITIONS[c.acquisition].needs_samples
                         if c.acquisition in ACQUISITIONS
                         else SELECTORS[c.acquisition].needs_samples)
        assert not reads_samples or PREDICTIVES[c.predictive].gives_samples, name(c)


@pytest.mark.slow
@pytest.mark.parametrize("posterior, predictive", pairs(), ids=[f"{p}-{q}" for p, q in pairs()])
def test_predictive_contract(posterior, predictive, toy, fitted):
    state, _ = fitted[posterior, predictive]
    config = base_config(posterior, predictive)
    record = PREDICTIVES[predictive]
    bound = bind(POSTERIORS[posterior], config.options("posterior"))
    predict = jax.jit(lambda k: record.predict(k, model_for(posterior), state, toy.test_x,
                                               bound))
    out = predict(jax.random.key(3))
    n, c = toy.test_x.shape[0], toy.num_classes
    assert out.probs.shape == (n, c)
    assert np.isfinite(out.probs).all()
    np.testing.assert_allclose(np.asarray(out.probs).sum(-1), 1.0, atol=1e-5)
    if record.gives_samples:
        assert out.sample_probs.shape == (num_samples(config), n, c)
        np.testing.assert_allclose(np.asarray(out.sample_probs).sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(out.sample_probs.mean(0), out.probs, atol=1e-6)
    else:
        assert out.sample_probs is None
    again = predict(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(again.probs), np.asarray(out.probs))
    # Another key, other samples (an ensemble's samples are its members, whatever the key).
    if record.gives_samples and POSTERIORS[posterior].training is None:
        assert not np.array_equal(np.asarray(predict(jax.random.key(4)).sample_probs),
                                  np.asarray(out.sample_probs))


@pytest.mark.parametrize("posterior, predictive", pairs(), ids=[f"{p}-{q}" for p, q in pairs()])
def test_two_rounds_of_the_loop_compile_once(posterior, predictive, toy):
    config = base_config(posterior, predictive, "random")
    learner = make_learner(model_for(posterior), config, (2,), 2)
    rounds = run_rounds(jax.random.key(0), learner, toy)
    with count_compilations() as first:
        next(rounds)
        next(rounds)
    with count_compilations() as second:
        _, info = next(rounds)
    assert first.count > 0, "the counter saw no compilation at all"
    assert second.count == 0, f"round 2 recompiled {second.count} functions"
    assert info.round == 2 and math.isfinite(info.metrics.test_loss)


@pytest.mark.slow
@pytest.mark.parametrize("config", combinations(), ids=name)
def test_query_contract(config, toy, fitted):
    state, labelled = fitted[config.posterior, config.predictive]
    learner = make_learner(model_for(config.posterior), config, (2,), 2)
    key = jax.random.key(4)
    query = learner.query(key, state, toy.pool_x, labelled)
    idx = np.asarray(query.indices)
    assert idx.shape == (config.query_size,) and query.scores.shape == idx.shape
    assert len(set(idx.tolist())) == idx.size, "an index was queried twice"
    assert not np.asarray(labelled)[idx].any(), "a labelled point was queried"
    assert ((0 <= idx) & (idx < toy.pool_x.shape[0])).all()
    again = learner.query(key, state, toy.pool_x, labelled)
    np.testing.assert_array_equal(np.asarray(again.indices), idx)
    # The next round: a larger labelled set, the same shapes, no recompilation.
    key_next, labelled_next = jax.random.key(5), labelled.at[idx].set(True)  # eager ops apart
    with count_compilations() as compiled:
        nxt = learner.query(key_next, state, toy.pool_x, labelled_next)
    assert compiled.count == 0
    assert not np.isin(np.asarray(nxt.indices), idx).any()


# --- a new component is one function plus one registry entry -----------------------------

def max_prob_gap(key, out):
    """A new score: the negative margin between the top two classes, doubled."""
    del key
    top2 = jax.lax.top_k(out.probs, 2)[0]
    return 2.0 * (top2[:, 1] - top2[:, 0])


def sharpened_mc(key, model, state, x, posterior):
    """A new predictive: each posterior sample's probabilities squared and renormalised."""
    from jaxal.predictive import PredictiveOutput

    sample_probs = posterior.sample_probs(key, model, state, x)
    sample_probs = sample_probs**2 / (sample_probs**2).sum(-1, keepdims=True)
    return PredictiveOutput(sample_probs.mean(0), sample_probs)


def bottom_k(key, pool, k, options):
    """A new selector: the lowest-scoring points (reversed top-k)."""
    return top_k(key, pool._replace(scores=-pool.scores), k, options)


@pytest.mark.slow
def test_new_components_are_one_entry_each(monkeypatch, toy):
    import toy_posterior

    monkeypatch.setitem(ACQUISITIONS, "gap", Acquisition(max_prob_gap))
    monkeypatch.setitem(POSTERIORS, "jitter", toy_posterior.ENTRY)
    monkeypatch.setitem(SELECTORS, "bottomk", Component(Selector(bottom_k)))
    monkeypatch.setitem(PREDICTIVES, "sharp", Predictive(sharpened_mc, gives_samples=True,
                                                         needs=("sample_probs",)))

    # Validation follows the records: the new posterior gives samples, so BALD works with
    # the mc predictive, and it has no logit variance, so probit is refused with the fix.
    validate_config(base_config("jitter", "mc", "bald"))
    with pytest.raises(ConfigError, match=r"does not work with posterior 'jitter' .*"
                                          r"--predictive plugin or mc or sharp"):
        validate_config(base_config("jitter", "probit"))
    # The new predictive needs samples, so the plugin posterior cannot serve it.
    with pytest.raises(ConfigError, match=r"predictive 'sharp' does not work with posterior "
                                          r"'plugin'"):
        validate_config(base_config("plugin", "sharp"))
    from jaxal.loop import default_predictive
    assert default_predictive(base_config("jitter", "plugin", "bald")) == "mc"

    for config in (base_config("jitter", "mc", "bald"), base_config("plugin", "plugin", "gap"),
                   base_config("jitter", "mc", "gap", "bottomk"),
                   base_config("laplace", "sharp", "bald")):
        validate_config(config)
        learner = make_learner(MODEL, config, (2,), 2)
        infos = [info for _, info in run_rounds(jax.random.key(0), learner, toy)]
        assert [i.round for i in infos] == [0, 1, 2]
        queried = np.concatenate([i.queried for i in infos[1:]])
        assert len(set(queried.tolist())) == queried.size
        assert np.isfinite(np.asarray(infos[-1].scores)).all()

    # The command line's choices are the registries' keys, read when needed.
    from jaxal.cli.run import parser
    p = parser()
    choices = {a.dest: list(a.choices) for a in p._actions if a.choices is not None}
    assert "gap" in choices["acq"] and "jitter" in choices["posterior"]
    assert "sharp" in choices["predictive"] and "bottomk" in choices["batch"]
