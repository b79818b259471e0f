"""MC dropout posterior (Gal & Ghahramani 2016): the network trained with dropout, and
predicted with dropout on, one network per mask.

"Consistent" MC dropout (Kirsch et al. 2019): sample s draws its masks from one key and
shares them across every example, so sample s is the same network for every point and every
chunk of the pool, as BALD's and BatchBALD's joint entropies need. The masks come from the
model's own dropout layers: ``ModelConfig.dropout`` after each hidden block (the CNN's conv
blocks, spatially; the toy MLP's layers), and the CNN's dropout before the last layer. Its
options record is ``jaxal.components.MCDropoutOptions`` (``samples``: S, and its checks).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxal.batching import over_samples
from jaxal.components import MCDropoutOptions
from jaxal.model import Classifier
from jaxal.posteriors import Posterior


class MCDropout(NamedTuple):
    params: Any          # the weights trained with dropout (θ_MAP of the dropout net)


def fit(key: jax.Array, model: Classifier, params, x, y, weights, prior_precision,
        options: MCDropoutOptions) -> MCDropout:
    # The posterior is the trained network itself.
    del key, model, x, y, weights, prior_precision, options
    return MCDropout(params)


def sample_probs(key: jax.Array, model: Classifier, state: MCDropout, x: jax.Array,
                 options: MCDropoutOptions) -> jax.Array:
    """softmax(f(x; θ ⊙ m_s)) [S, n, C] for S = ``options.samples`` mask draws, one
    network per draw (``jaxal.batching.over_samples``: one at a time on CPU, vmapped in
    groups elsewhere; memory is one chunk's activations, or a group's, whatever S is).
    The same key gives the same S networks for every chunk."""
    keys = jax.random.split(key, options.samples)
    return over_samples(lambda k: jax.nn.softmax(
        model.apply(state.params, x, sample=True, rngs={"dropout": k})), keys)


MC_DROPOUT = Posterior(fit, sample_probs=sample_probs,
                       default_predictive=lambda options, needs_samples: "mc")
