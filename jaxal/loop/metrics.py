"""What a round measures: NLL, accuracy, entropy and expected calibration error of a
predictive (``evaluate``), a round's ``Metrics``, and the finiteness check that stops a
diverged run (``check_finite``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.acquisition import entropy, map_chunks
from jaxal.components import POSTERIORS
from jaxal.config import ALConfig
from jaxal.errors import DivergedError
from jaxal.loop.state import ALState, Metrics, PseudoLabelInfo, RoundInfo
from jaxal.model import Classifier

# Confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


def expected_calibration_error(probs: jax.Array, y: jax.Array, num_bins: int = ECE_BINS
                               ) -> jax.Array:
    """ECE = Σ_b |B_b|/n · |acc(B_b) - conf(B_b)| over equal-width bins of the confidence
    max_c p_c [n] (probs [n, c], y int [n]); empty bins count 0."""
    confidence = probs.max(-1)
    correct = (probs.argmax(-1) == y).astype(probs.dtype)
    bins = jnp.clip((confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
    gap = (jax.ops.segment_sum(correct, bins, num_bins)
           - jax.ops.segment_sum(confidence, bins, num_bins))
    return jnp.abs(gap).sum() / y.shape[0]


def evaluate(key: jax.Array, model: Classifier, predict: Callable, posterior, x: jax.Array,
             y: jax.Array, chunk_size: int
             ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Mean NLL, accuracy, mean predictive entropy and ECE of the predictive on (x, y)."""
    def one_chunk(i, x_chunk):
        del i  # same posterior samples for every chunk
        return predict(key, model, posterior, x_chunk).probs

    probs = map_chunks(one_chunk, x, chunk_size)
    p_true = jnp.take_along_axis(probs, y[:, None], axis=1)[:, 0]
    nll = -jnp.log(jnp.clip(p_true, 1e-12, 1.0)).mean()
    accuracy = (probs.argmax(-1) == y).mean()
    return nll, accuracy, entropy(probs).mean(), expected_calibration_error(probs, y)


def round_metrics(config: ALConfig, train_nll: float, test, val, posterior,
                  num_classes: int, map_test=None) -> Metrics:
    """A round's ``Metrics`` from the labelled-set NLL and the (nll, accuracy, entropy,
    ece) of the predictive on the test and validation sets, and of the MAP network's
    plugin predictive on the test set (``map_test``; None: the predictive's)."""
    map_test = test if map_test is None else map_test
    lam = POSTERIORS[config.posterior].prior_precision(posterior)
    return Metrics(
        train_loss=float(train_nll), test_loss=float(test[0]),
        test_accuracy=float(test[1]), test_entropy=float(test[2]),
        val_loss=float(val[0]), val_accuracy=float(val[1]),
        prior_precision=float(lam if lam is not None else config.train.prior_precision),
        diverged=bool(train_nll >= math.log(num_classes)),
        test_ece=float(test[3]), map_test_loss=float(map_test[0]),
        map_test_accuracy=float(map_test[1]))


def pseudo_label_info(pseudo: jax.Array, pool_y: jax.Array) -> PseudoLabelInfo:
    """How many pool points were pseudo-labelled, and how many labels were right (known
    in simulation: the oracle's labels)."""
    pseudo, pool_y = np.asarray(pseudo), np.asarray(pool_y)
    used = pseudo >= 0
    return PseudoLabelInfo(int(used.sum()), int((pseudo[used] == pool_y[used]).sum()))


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every float leaf of ``tree`` is finite: one program per tree structure (an
    eager isfinite and all per leaf compiled 2 programs per leaf shape)."""
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)
                              if jnp.issubdtype(leaf.dtype, jnp.inexact)] or [True]))


def check_finite(state: ALState, info: RoundInfo, config: ALConfig) -> None:
    """Stop a run whose training, posterior, predictive or scores became non-finite.

    Raises:
      DivergedError: naming the round, what is not finite and the likely fix. Raised
        before the round is yielded, so nothing of it is written: the checkpoint keeps
        the last good round.
    """
    def fail(what: str, fix: str):
        kept = (f"its out dir keeps rounds 0-{info.round - 1}" if info.round > 0
                else "no round was kept")
        raise DivergedError(f"round {info.round}: {what} is not finite, so the run stopped "
                            f"({kept}); {fix}, in another --out")

    m = info.metrics
    if not math.isfinite(m.train_loss):
        fail(f"the training loss ({m.train_loss})",
             f"lower --lr (now {config.train.learning_rate:g})"
             + (" or use --optimizer adam" if config.train.optimizer == "sgd" else ""))
    if not bool(_all_finite(state.posterior)):
        fail("the posterior", "use a positive prior precision (--prior-precision 1, "
             "val-nll or auto) or a lower --lr")
    if not all(math.isfinite(v) for v in (m.test_loss, m.val_loss, m.test_entropy)):
        fail(f"the predictive's test/validation loss ({m.test_loss}, {m.val_loss})",
             "use a positive prior precision or a lower --lr")
    if not np.isfinite(np.asarray(info.scores, np.float64)).all():
        fail(f"the acquisition score of the queried points ({np.asarray(info.scores)})",
             "use a positive prior precision or a lower --lr")
