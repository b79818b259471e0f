"""Deep ensemble posterior (Lakshminarayanan et al. 2017; for AL, Beluch et al. 2018): M
networks trained from independent initialisations and minibatch orders, each one sample.

The members are trained together as one jitted program over stacked parameters (one
compilation, not M; ``jaxal.loop.make_learner`` with ``Posterior.members``; unrolled on
CPU, vmapped elsewhere: ``jaxal.batching``), so the loop's
θ_MAP *is* the stack [M, ...]; member 0 stands in wherever one network is read (features
for the diversity selectors, the plugin predictive).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxal.batching import over_members
from jaxal.errors import ConfigError
from jaxal.model import Classifier


class Ensemble(NamedTuple):
    params: Any          # member 0
    members: Any         # every member, stacked [M, ...] leaf by leaf


def fit(key: jax.Array, model: Classifier, params, x, y, weights, config) -> Ensemble:
    """``params`` is the trained stack [M, ...]."""
    del key, model, x, y, weights, config
    return Ensemble(jax.tree.map(lambda p: p[0], params), params)


def sample_probs(key: jax.Array, model: Classifier, state: Ensemble, x: jax.Array,
                 config) -> jax.Array:
    """softmax(f(x; θ_m)) [M, n, C], one forward pass per member (unrolled on CPU, where a
    vmap over weights makes every convolution a grouped one; ``jaxal.batching``)."""
    del key
    predict = lambda p: jax.nn.softmax(model.apply(p, x))
    return over_members(predict, (0,), config.ensemble_size)(state.members)


def members(config) -> int:
    return config.ensemble_size


def check(config) -> None:
    if config.ensemble_size < 2:
        raise ConfigError(f"an ensemble needs --ensemble-size >= 2 (got "
                          f"{config.ensemble_size}); 5 is Beluch et al.'s, or use "
                          f"--posterior plugin for one network")
