"""jaxal: deep active learning with Laplace-approximated Bayesian neural networks, in JAX.

The package follows the pipeline, one module per stage:

    data -> model -> objective/train (MAP) -> posterior -> predictive -> acquisition
         -> selection -> loop -> run (CLI) / results / plots
"""

from jaxal.acquisition import ACQUISITIONS, map_chunks, score_pool, select_top_k
from jaxal.loop import (
    ActiveLearner,
    ALConfig,
    ALData,
    ALState,
    ConfigError,
    Metrics,
    RoundInfo,
    al_round,
    init_state,
    make_learner,
    run_rounds,
    validate_config,
)
from jaxal.model import Classifier, apply_head, cnn, init_params, mlp, num_params
from jaxal.objective import log_likelihood, log_prior, map_objective
from jaxal.posterior import POSTERIORS
from jaxal.predictive import PREDICTIVES, PredictiveOutput
from jaxal.runtime import MALLOC_TUNED  # noqa: F401  (importing it applies the settings)
from jaxal.selection import SELECTORS, Pool
from jaxal.train import TrainConfig, make_trainer, train_map

__all__ = [
    "ACQUISITIONS", "POSTERIORS", "PREDICTIVES", "SELECTORS", "ALConfig", "ALData", "ALState",
    "ActiveLearner", "Classifier", "ConfigError", "Metrics", "Pool", "PredictiveOutput",
    "RoundInfo",
    "TrainConfig", "al_round", "apply_head", "cnn", "init_params", "init_state",
    "log_likelihood", "log_prior", "make_learner", "make_trainer", "map_chunks",
    "map_objective", "mlp", "num_params", "run_rounds", "score_pool", "select_top_k",
    "train_map", "validate_config",
]
__version__ = "0.1.0"
