"""jaxal: deep active learning with Laplace-approximated Bayesian neural networks, in JAX.

The package follows the pipeline, one module per stage:

    data/ -> model -> objective, train (MAP) -> curvature/ -> posteriors/ -> predictive
          -> acquisition -> selection -> loop/ -> apps/ (run, compare, label, plot) -> cli/

Importing jaxal changes nothing in the process, and imports JAX only when a name below
is first used (so the command-line tools can check their arguments before that slow
import). XLA:CPU process settings are one explicit call: ``jaxal.runtime.configure_cpu()``.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access (PEP 562).
_EXPORTS = {
    "ACQUISITIONS": "acquisition", "map_chunks": "acquisition", "score_pool": "acquisition",
    "select_top_k": "acquisition",
    "ConfigError": "errors", "JaxalError": "errors",
    "ActiveLearner": "loop", "ALConfig": "loop", "ALData": "loop", "ALState": "loop",
    "Metrics": "loop", "RoundInfo": "loop", "al_round": "loop", "init_state": "loop",
    "make_learner": "loop", "run_rounds": "loop", "validate_config": "loop",
    "Classifier": "model", "apply_head": "model", "cnn": "model", "init_params": "model",
    "mlp": "model", "num_params": "model",
    "log_likelihood": "objective", "log_prior": "objective", "map_objective": "objective",
    "POSTERIORS": "components",
    "PREDICTIVES": "predictive", "PredictiveOutput": "predictive",
    "SELECTORS": "selection", "Pool": "selection",
    "TrainConfig": "train", "make_trainer": "train", "train_map": "train",
}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"jaxal.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"jaxal.{name}") is not None:
        # Submodules as attributes: ``import jaxal; jaxal.runtime.configure_cpu()``.
        return importlib.import_module(f"jaxal.{name}")
    raise AttributeError(f"module 'jaxal' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
