"""Predictive distributions p(y | x, D) for a fitted posterior; one registry for all.

Every entry has the signature ``predict(key, model, posterior, x) -> PredictiveOutput``
and works on one chunk of inputs; ``jaxal.acquisition.map_chunks`` bounds memory over a
pool. The key is shared by all chunks, so sampling predictives use the same posterior
samples for every pool point (BALD-type scores need that).
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from jaxal.model import Classifier
from jaxal.posterior import PointMass


class PredictiveOutput(NamedTuple):
    """What acquisition needs from a predictive.

    probs: [n, c] predictive mean probabilities p(y | x, D).
    sample_probs: [s, n, c] per-posterior-sample probabilities, or None for predictives
      without samples (plugin, closed-form).
    """

    probs: jax.Array
    sample_probs: jax.Array | None = None


def plugin_predictive(key: jax.Array, model: Classifier, posterior: PointMass,
                      x: jax.Array) -> PredictiveOutput:
    """p(y | x, D) ≈ softmax(f(x; θ_MAP))."""
    del key
    return PredictiveOutput(jax.nn.softmax(model.apply(posterior.params, x)))


PREDICTIVES = {"plugin": plugin_predictive}

# Which predictives each posterior supports, so bad combinations fail before training.
PREDICTIVES_FOR_POSTERIOR = {"plugin": ("plugin",)}
