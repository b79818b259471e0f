"""The active-learning loop, one module per job:

    state       what a round carries (``ALState``) and reports (``RoundInfo``, ``Metrics``)
    validation  a run's configuration checked once, before any work, from the records
    learner     ``make_learner``: the run's jitted functions, options bound in
    metrics     what a round measures (NLL, accuracy, entropy, ECE) and the finiteness check
    round       the round, written once: ``init_state``, ``al_round``, ``run_rounds``

    state, info = init_state(key, learner, data)                 # round 0: initial labels
    state, info = al_round(key, state, learner, data)            # query -> label -> refit

The names below are re-exported from those modules.
"""

from __future__ import annotations

from jaxal.config import ALConfig
from jaxal.loop.learner import (
    DIAGNOSIS_POINTS,
    ActiveLearner,
    evaluation_options,
    make_learner,
    pool_subset_indices,
    tune_prior_precision,
)
from jaxal.loop.metrics import (
    ECE_BINS,
    check_finite,
    evaluate,
    expected_calibration_error,
    pseudo_label_info,
    round_metrics,
)
from jaxal.loop.round import (
    Stages,
    al_round,
    fit_and_evaluate,
    init_state,
    initial_labelled,
    run_rounds,
    single_stages,
    train_and_fit,
)
from jaxal.loop.state import (
    NUM_EXTREMES,
    ALData,
    ALState,
    Extremes,
    Metrics,
    PseudoLabelInfo,
    Query,
    RoundInfo,
    Timings,
)
from jaxal.loop.validation import (
    default_predictive,
    label_budget,
    needs_samples,
    query_strategy,
    selector_options,
    validate_config,
    validate_data,
)

__all__ = [
    "DIAGNOSIS_POINTS", "ECE_BINS", "NUM_EXTREMES", "ALConfig", "ALData", "ALState",
    "ActiveLearner", "Extremes", "Metrics", "PseudoLabelInfo", "Query", "RoundInfo", "Stages",
    "Timings", "al_round", "check_finite", "default_predictive", "evaluate",
    "evaluation_options", "expected_calibration_error", "fit_and_evaluate", "init_state",
    "initial_labelled", "label_budget", "make_learner", "needs_samples", "pool_subset_indices",
    "pseudo_label_info", "query_strategy", "round_metrics", "run_rounds", "selector_options",
    "single_stages", "train_and_fit", "tune_prior_precision", "validate_config",
    "validate_data",
]
