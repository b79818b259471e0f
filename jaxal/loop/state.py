"""What the active-learning loop carries and reports: ``ALData`` (the arrays of one problem),
``ALState`` (what a round hands to the next), ``RoundInfo`` with its ``Metrics``, ``Timings``,
``Extremes`` and ``PseudoLabelInfo`` (what a round reports), and ``Query`` (one round's batch).

Every array the jitted functions see has a shape fixed for the whole run (the pool plus a
labelled mask), so nothing recompiles after the first round.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np


class ALData(NamedTuple):
    """Device arrays of one AL problem: a fixed pool, a validation and a test set."""

    pool_x: jax.Array
    pool_y: jax.Array      # the oracle's labels; only labelled entries are ever trained on
    val_x: jax.Array
    val_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    num_classes: int


class ALState(NamedTuple):
    """What one round hands to the next."""

    params: Any            # θ_MAP fitted on ``labelled``
    posterior: Any         # the posterior fitted at ``params`` (the MAP point for plugin)
    labelled: jax.Array    # bool [n_pool]
    round: int
    init_key: jax.Array    # rebuilds the initial weights for from-scratch retraining


class Metrics(NamedTuple):
    """The seed's Figure-5 quantities for the model of one round."""

    train_loss: float      # mean NLL on the labelled set (dropout off)
    test_loss: float       # mean NLL of the predictive on the test set
    test_accuracy: float
    test_entropy: float    # mean predictive entropy on the test set
    val_loss: float
    val_accuracy: float
    prior_precision: float  # of the posterior (fitted with --prior-precision auto|val-nll)
    # Training ended no better than a uniform guess on its own labels (mean NLL >= log C):
    # it diverged (e.g. a learning rate far too large), though the loss stayed finite.
    diverged: bool = False
    # Expected calibration error of the predictive on the test set (ECE_BINS equal-width
    # confidence bins); NaN in records written before it existed.
    test_ece: float = float("nan")
    # The MAP network's own (plugin) NLL and accuracy on the test set, beside the
    # predictive's: a posterior's predictive is told apart from the network it was
    # fitted at (for an ensemble, member 0). NaN in records written before them.
    map_test_loss: float = float("nan")
    map_test_accuracy: float = float("nan")


class Timings(NamedTuple):
    """Seconds per stage, compilation included (the first round compiles)."""

    score: float
    train: float
    posterior: float
    evaluate: float


# How many of the highest and lowest scored unlabelled points a round records (Figure 4).
NUM_EXTREMES = 5


class Extremes(NamedTuple):
    """The NUM_EXTREMES highest and lowest acquisition scores of the unlabelled pool."""

    top: np.ndarray              # int pool indices, best first
    top_scores: np.ndarray
    bottom: np.ndarray           # int pool indices, worst first
    bottom_scores: np.ndarray


class PseudoLabelInfo(NamedTuple):
    count: int                   # pool points trained on with the model's label
    correct: int                 # of those, how many labels equal the oracle's


class RoundInfo(NamedTuple):
    round: int
    num_labels: int
    queried: np.ndarray          # int [query_size] pool indices (empty in round 0)
    scores: np.ndarray           # what the selector ranked them by (see jaxal.selection)
    queried_labels: np.ndarray   # their oracle labels
    metrics: Metrics
    timings: Timings
    pseudo: PseudoLabelInfo = PseudoLabelInfo(0, 0)
    extremes: Extremes | None = None   # the round's best and worst scored pool points
    # With ``--diagnose``: the posterior's diagnosis in plain floats (``Posterior.diagnose``,
    # ``jaxal.posteriors.evidence.plain_diagnosis``), written to diagnosis.jsonl.
    diagnosis: dict | None = None


class Query(NamedTuple):
    """One round's query: the batch, and (CEAL) the pseudo-labels of the pool."""

    indices: jax.Array           # int [k] pool indices, unlabelled and distinct
    scores: jax.Array            # [k]
    pseudo_labels: jax.Array     # int [n] model labels of confident pool points, else -1
    extremes: Extremes           # of the pool pass's scores (zeros for kcenter / badge)
