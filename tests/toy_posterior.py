"""A posterior added from outside jaxal, as a user would: this module plus one registry
entry (``register``). It has options of its own (with command-line flags and a check) and
trains θ_MAP its own way through the record's ``training`` hook.

"jitter": θ_MAP plus isotropic Gaussian noise of std ``scale``, ``samples`` draws. Its
training hook starts every fit from the initial weights scaled by ``init_scale``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from jax.flatten_util import ravel_pytree

from jaxal.components import Component, Flag
from jaxal.errors import ConfigError
from jaxal.posteriors import Posterior
from jaxal.posteriors.plugin import PointMass


class JitterOptions(NamedTuple):
    scale: float = 0.05
    samples: int = 8
    init_scale: float = 1.0

    FLAGS = {  # noqa: RUF012
        "scale": Flag("--jitter-scale", "std of the noise added to θ_MAP", type=float),
        "samples": Flag("--jitter-samples", "noisy networks per prediction", type=int),
        "init_scale": Flag("--jitter-init-scale", "factor of the initial weights",
                           type=float),
    }

    def check(self, config) -> None:
        if not self.scale > 0:
            raise ConfigError(f"--jitter-scale must be > 0 (got {self.scale}); try 0.05")
        if self.samples < 1:
            raise ConfigError(f"--jitter-samples must be >= 1 (got {self.samples})")


def fit(key, model, params, x, y, weights, prior_precision, options: JitterOptions):
    del key, model, x, y, weights, prior_precision, options
    return PointMass(params)


def sample_probs(key, model, state, x, options: JitterOptions):
    flat, unravel = ravel_pytree(state.params)
    noise = options.scale * jax.random.normal(key, (options.samples, flat.size))
    return jax.vmap(lambda e: jax.nn.softmax(model.apply(unravel(flat + e), x)))(noise)


def training(trainer, init_one, options: JitterOptions, *, model, capacity):
    """Every fit starts from the initial weights times ``init_scale``."""
    del model, capacity
    def init(key):
        return jax.tree.map(lambda p: options.init_scale * p, init_one(key))
    return trainer, init


JITTER = Posterior(fit, sample_probs=sample_probs, training=training,
                   default_predictive=lambda options, needs_samples: "mc")


# The one registry entry: ``jaxal.components.POSTERIORS["jitter"] = ENTRY``.
ENTRY = Component("toy_posterior:JITTER", JitterOptions)
