"""Deep ensemble posterior (Lakshminarayanan et al. 2017; for AL, Beluch et al. 2018): M
networks trained from independent initialisations and minibatch orders, each one sample.

The members are trained together as one jitted program over stacked parameters (one
compilation, not M): the record's ``training`` hook (``stacked``) turns the loop's trainer
of one network into that of M (unrolled on CPU, vmapped elsewhere: ``jaxal.batching``), so
the loop's θ_MAP *is* the stack [M, ...]; member 0 stands in wherever one network is read
(features for the diversity selectors, the plugin predictive). Its options record is
``jaxal.components.EnsembleOptions`` (``size``: M).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from jaxal.batching import over_members
from jaxal.components import EnsembleOptions
from jaxal.model import Classifier
from jaxal.posteriors import Posterior


class Ensemble(NamedTuple):
    params: Any          # member 0
    members: Any         # every member, stacked [M, ...] leaf by leaf


def fit(key: jax.Array, model: Classifier, params, x, y, weights, prior_precision,
        options: EnsembleOptions) -> Ensemble:
    """``params`` is the trained stack [M, ...]."""
    del key, model, x, y, weights, prior_precision, options
    return Ensemble(jax.tree.map(lambda p: p[0], params), params)


def sample_probs(key: jax.Array, model: Classifier, state: Ensemble, x: jax.Array,
                 options: EnsembleOptions) -> jax.Array:
    """softmax(f(x; θ_m)) [M, n, C], one forward pass per member (unrolled on CPU, where a
    vmap over weights makes every convolution a grouped one; ``jaxal.batching``)."""
    del key
    predict = lambda p: jax.nn.softmax(model.apply(p, x))
    return over_members(predict, (0,), options.size)(state.members)


def stacked(trainer, init_one: Callable, members: int, form: str | None = None):
    """The trainer and initialiser of ``members`` networks trained as one program over
    parameters stacked on a leading axis [M, ...] (a deep ensemble): independent
    initialisations (``split(init_key, M)``), minibatch draws and dropout masks
    (``split(step_key, M)``), the labelled data shared. The members are unrolled or
    vmapped by backend (``jaxal.batching``; ``form`` overrides); vmapped under a mesh of
    several devices, they are split over them. The reported NLL is the members' mean."""
    def many(fn, num_data):
        return over_members(fn, (0,) + (None,) * num_data, members, form, split=True)

    def init_many(key):
        return jax.vmap(init_one)(jax.random.split(key, members))

    def step(key, state, *data):
        keys = jax.random.split(key, members)
        return over_members(trainer.step, (0, 0) + (None,) * len(data), members, form,
                            split=True)(keys, state, *data)

    def labelled_nll(params, *data):
        return many(trainer.labelled_nll, len(data))(params, *data).mean()

    return (trainer._replace(init=many(trainer.init, 0), step=step,
                             labelled_nll=labelled_nll), init_many)


ENSEMBLE = Posterior(
    fit, sample_probs=sample_probs,
    default_predictive=lambda options, needs_samples: "mc",
    training=lambda trainer, init_one, options, *, model, capacity: stacked(
        trainer, init_one, options.size))
