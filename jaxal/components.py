"""The components of a run that have options of their own, one table per kind; imports no
JAX.

A component (a posterior, a batch selector or a strategy) is one entry here: where its
record of functions lives (``"module:attribute"``, imported on first use, since those
modules import JAX) and its *options record*, a NamedTuple whose fields are its options
with their defaults, whose ``FLAGS`` say which of them the command line offers (flag, help,
argparse type) and whose ``check(config)`` holds its own rules. The run's ``ALConfig``
names the chosen component per kind and carries its options record
(``posterior_options``, ``batch_options``, ``acquisition_options``); the loop binds them
into the component's functions when it builds the learner (``jaxal.loop.make_learner``),
as ``optax.adam(learning_rate)`` binds its hyperparameters. So the command line's flags,
their ranges and ``config.json``'s record of each component's options all derive from the
records below, before JAX is imported.

Adding a component with its own options is one module (its record of functions, and if
it trains in its own way a ``training`` hook) plus one ``register`` call or entry here.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple

from jaxal.errors import ConfigError
from jaxal.resources import FLOAT, TRAINING_COPIES, UNROLLED_MEMBER_BYTES, Need


class Flag(NamedTuple):
    """How the command line offers one option: ``--flag VALUE`` parsed by ``type``."""

    flag: str
    help: str
    type: Callable[[str], Any] | None = None    # argparse type: parses and checks range
    choices: Any = None                          # a sequence, or a cli RegistryChoices
    metavar: str | None = None


class NoOptions(NamedTuple):
    """A component without options."""

    FLAGS = {}  # noqa: RUF012 (a class constant, not a field: it has no annotation)

    def check(self, config) -> None:
        del config


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --- The option records of the built-in components ---------------------------------------
# Flag types are plain functions of this module (the command line's own range-checking
# types live in jaxal.cli.common, which imports this module's tables lazily).


def _positive_int(text: str) -> int:
    from jaxal.cli.common import whole

    return whole(1)(text)


def _whole_int(text: str) -> int:
    from jaxal.cli.common import whole

    return whole(0)(text)


def _positive_float(text: str) -> float:
    from jaxal.cli.common import number

    return number(0.0, exclusive=True)(text)


def _unit_float(text: str) -> float:
    from jaxal.cli.common import number

    return number(0.0, maximum=1.0)(text)


# Half-decade grid of the "val-nll" prior fit: 10^-2 ... 10^4.
VALIDATION_GRID = tuple(float(10.0 ** (k / 2)) for k in range(-4, 9))
# How the Laplace prior precision λ is set after each fit (the curvature is kept), and
# the --prior-precision value that asks for each (a number: "none").
PRIOR_FLAG = {"val-nll": "val-nll", "evidence": "auto",
              "evidence-layerwise": "auto-layerwise", "linear-mode": "linear-mode",
              "linear-mode-layerwise": "linear-mode-layerwise",
              "marglik": "marglik", "marglik-layerwise": "marglik-layerwise"}
# The prior fits learned during MAP training (online marginal likelihood: the Laplace
# record's training hook, ``jaxal.posteriors.marglik``) rather than after it.
ONLINE_PRIOR_FITS = ("marglik", "marglik-layerwise")
PRIOR_FITS = (*PRIOR_FLAG, "none")
SUBSETS = ("last-layer", "all")


class LaplaceOptions(NamedTuple):
    """Which Laplace approximation: ``(curvature, structure, subset)`` plus its prior."""

    curvature: str = "ggn"           # "ggn" | "hessian" | "ggn-mc" (sampled; all weights)
    structure: str = "full"          # "full" | "diag" | "iso" | "kfac" (all weights)
    subset: str = "last-layer"       # "last-layer" | "all"
    samples: int = 100               # S for the Monte Carlo predictives
    prior_precision: float | None = None  # None: the MAP objective's prior precision
    # How λ is set after each fit (the curvature is kept): "val-nll", the grid value whose
    # predictive (the run's) has the lowest validation NLL; "evidence", the Laplace
    # evidence maximiser at θ* ("evidence-layerwise": one λ per layer); "linear-mode"
    # ("linear-mode-layerwise"), MacKay's fixed point with the evidence taken at the
    # tangent linear model's mode (Antorán et al. 2022; ``jaxal.posteriors.evidence``); "marglik"
    # ("marglik-layerwise"), learned during training by online marginal likelihood
    # (Immer et al. 2021; ``jaxal.posteriors.marglik``); "none", λ as given. The
    # default is measured: ``benchmarks/laplace_curves.py`` (with λ = 1 or the evidence
    # fit the last-layer predictive on MNIST is near-uniform and its queries worse than
    # the plugin's).
    prior_fit: str = "val-nll"
    prior_precision_grid: tuple[float, ...] = VALIDATION_GRID
    chunk_size: int | None = None    # examples per curvature chunk (None: by subset)
    # Online marginal-likelihood training (prior_fit "marglik"/"marglik-layerwise"):
    # after every F = ``marglik_every`` training steps from step B = ``marglik_burn_in``
    # on, the curvature is refitted on the labelled set and K = ``marglik_steps`` Adam
    # steps (learning rate ``marglik_learning_rate``) on log λ maximise the evidence.
    marglik_every: int = 50
    marglik_burn_in: int = 100
    marglik_steps: int = 10
    marglik_learning_rate: float = 0.1

    # Fields added after run dirs were written: left out of config.json at these values
    # (``options_to_dict``), so older run dirs keep their config digest and resume.
    ADDED_LATER = {"marglik_every": 50, "marglik_burn_in": 100,  # noqa: RUF012
                   "marglik_steps": 10, "marglik_learning_rate": 0.1}

    FLAGS = {  # noqa: RUF012
        **{field: Flag(flag, f"with --prior-precision marglik[-layerwise]: {text}", kind)
           for field, flag, text, kind in (
               ("marglik_every", "--marglik-every",
                "training steps F between updates of the prior precision", _positive_int),
               ("marglik_burn_in", "--marglik-burn-in",
                "training steps B before the first update", _whole_int),
               ("marglik_steps", "--marglik-steps", "Adam steps K on log λ per update",
                _positive_int),
               ("marglik_learning_rate", "--marglik-lr", "Adam's learning rate on log λ",
                _positive_float))},
        "curvature": Flag("--curvature",
                          "generalised Gauss-Newton, exact Hessian, or the GGN sampled with "
                          "one label per example (ggn-mc: all weights, diag/iso/kfac; ~C "
                          "times cheaper, unbiased, approximate)",
                          choices="curvature:sources"),
        "structure": Flag("--structure",
                          "how the curvature is stored (full needs P x P memory; kfac: "
                          "Kronecker factors per layer, all weights)",
                          choices="curvature:STRUCTURES"),
        "subset": Flag("--subset", "parameters with a posterior (the rest stay at the MAP)",
                       choices=SUBSETS),
        "samples": Flag("--samples",
                        "posterior samples S of the mc, glm and glm-logits predictives (glm: "
                        "the linearised network f(x; θ*) + J(x)(θ - θ*), the predictive "
                        "consistent with the GGN)", type=_positive_int),
    }

    SAMPLES = "samples"   # the field that sets the posterior samples per point

    def memory(self, sizes) -> list:
        """The weight samples of a query, [S, P] of the subset, drawn at once; the full
        structure's P x P curvature (the dense structure refuses what it cannot hold
        itself, before training)."""
        p = sizes.params if self.subset == "all" else sizes.head_params
        needs = [Need("the posterior's weight samples", self.samples * p * FLOAT,
                      f"samples {self.samples:,} x {p:,} weights ({self.subset}) x {FLOAT} "
                      "bytes", "lower --samples")]
        if self.structure == "full":   # the P x P curvature and its eigenvectors
            needs.append(Need("the full curvature", 2 * p * p * FLOAT,
                              f"2 x {p:,} x {p:,} weights ({self.subset}) x {FLOAT} bytes",
                              "use --structure diag or kfac, or --subset last-layer"))
        return needs

    def check(self, config) -> None:
        """Rules of the options alone; those needing the curvature table are the record's
        (``jaxal.posteriors.laplace.check_laplace``)."""
        _need(self.samples > 0, f"samples must be > 0 (got {self.samples})")
        _need(self.prior_precision is None or (math.isfinite(self.prior_precision)
                                               and self.prior_precision > 0),
              f"Laplace prior precision must be a finite number > 0 (got "
              f"{self.prior_precision})")
        _need(self.subset in SUBSETS,
              f"unknown subset {self.subset!r}; choose one of {SUBSETS}")
        _need(self.prior_fit in PRIOR_FITS,
              f"unknown prior fit {self.prior_fit!r}; choose one of {list(PRIOR_FITS)}")
        if self.prior_fit in ONLINE_PRIOR_FITS:
            _need(self.marglik_every > 0 and self.marglik_steps > 0,
                  f"online marglik needs --marglik-every F > 0 and --marglik-steps K > 0 "
                  f"(got F {self.marglik_every}, K {self.marglik_steps}); laplace-torch's "
                  "K is 10")
            _need(math.isfinite(self.marglik_learning_rate)
                  and self.marglik_learning_rate > 0,
                  f"--marglik-lr must be a finite number > 0 (got "
                  f"{self.marglik_learning_rate}); laplace-torch's is 0.1")
            _need(self.marglik_burn_in >= 0,
                  f"--marglik-burn-in must be >= 0 (got {self.marglik_burn_in})")
            train = config.train
            shortest = train.steps if train.epochs is None else train.min_steps
            _need(self.marglik_burn_in + self.marglik_every <= shortest,
                  f"online marglik first updates λ after step {self.marglik_burn_in} + "
                  f"{self.marglik_every}, past the {shortest} steps a fit may train "
                  f"({'--steps' if train.epochs is None else '--min-steps'}), so λ would "
                  "never be learned; lower --marglik-burn-in or --marglik-every, or train "
                  "longer")


class MCDropoutOptions(NamedTuple):
    """MC dropout: S dropout masks, each shared by the whole pool (consistent)."""

    samples: int = 100

    FLAGS = {  # noqa: RUF012
        "samples": Flag("--dropout-samples",
                        "dropout masks S, each shared by the whole pool (consistent MC "
                        "dropout)", type=_positive_int),
    }
    # What the model needs by default with this posterior (Kirsch et al. 2019's rate).
    MODEL_DEFAULTS = {"dropout": 0.5}  # noqa: RUF012

    SAMPLES = "samples"

    def check(self, config) -> None:
        _need(self.samples >= 1, f"MC dropout needs --dropout-samples >= 1 (got "
                                 f"{self.samples}); 100 is Kirsch et al.'s")
        rate = config.model.dropout
        _need(0.0 < rate < 1.0,
              f"MC dropout needs a dropout rate in (0, 1) after each hidden block (got "
              f"--dropout {rate:g}); use --dropout 0.5 (Kirsch et al.)")


class EnsembleOptions(NamedTuple):
    """Deep ensemble: M networks from independent initialisations."""

    size: int = 5

    FLAGS = {  # noqa: RUF012
        "size": Flag("--ensemble-size", "members M, trained together in one program",
                     type=_positive_int),
    }

    SAMPLES = "size"      # each member is one sample

    def memory(self, sizes) -> list:
        """M networks trained at once: every member's weights, gradients and moments, and
        on CPU, where the members are unrolled in one program, XLA's compilation of M
        copies of the training step."""
        needs = [Need("the ensemble's members in training",
                      self.size * sizes.params * FLOAT * TRAINING_COPIES,
                      f"members {self.size:,} x {sizes.params:,} weights x {FLOAT} bytes x "
                      f"{TRAINING_COPIES}", "lower --ensemble-size")]
        if sizes.unrolled:
            needs.append(Need("compiling the members' unrolled training step",
                              self.size * UNROLLED_MEMBER_BYTES,
                              f"members {self.size:,} x {UNROLLED_MEMBER_BYTES >> 20} MB",
                              "lower --ensemble-size"))
        return needs

    def check(self, config) -> None:
        _need(self.size >= 2, f"an ensemble needs --ensemble-size >= 2 (got {self.size}); "
                              f"5 is Beluch et al.'s, or use --posterior plugin for one "
                              f"network")


class HybridOptions(NamedTuple):
    """Hybrid batch: score and diversity, β the weight of diversity."""

    beta: float = 0.5

    FLAGS = {  # noqa: RUF012
        "beta": Flag("--hybrid-beta", "weight of diversity; 0 = pure uncertainty",
                     type=_unit_float),
    }

    def check(self, config) -> None:
        _need(0.0 <= self.beta <= 1.0,
              f"hybrid beta must be in [0, 1] (got {self.beta}): 0 is pure uncertainty, 1 "
              "pure diversity")


class StochasticOptions(NamedTuple):
    """Stochastic batch acquisition (power, softmax, softrank): coldness β."""

    beta: float = 1.0

    FLAGS = {  # noqa: RUF012
        "beta": Flag("--stochastic-beta", "coldness β (large = top-k)",
                     type=_positive_float),
    }

    def check(self, config) -> None:
        # inf passes a "> 0" check, and an infinite coldness makes the weights NaN (the
        # selectors then picked pool indices 0..k-1).
        _need(math.isfinite(self.beta) and self.beta > 0,
              f"stochastic beta must be a finite number > 0 (got {self.beta}); large "
              "values (e.g. 100) approach top-k")


class BatchBALDOptions(NamedTuple):
    """BatchBALD: candidates of highest BALD, label configurations M."""

    candidates: int = 1000
    configs: int = 1000

    FLAGS = {  # noqa: RUF012
        "candidates": Flag("--batchbald-candidates",
                           "pool subset, the points of highest BALD", type=_positive_int),
        "configs": Flag("--batchbald-configs",
                        "label configurations M of the joint entropy (exact while "
                        "C^(picks) <= M, then sampled)", type=_positive_int),
    }

    def memory(self, sizes) -> list:
        """Its candidates' per-sample probabilities and the label configurations' joint
        probabilities under every sample."""
        return [Need("BatchBALD's candidates and label configurations",
                     (self.candidates * sizes.classes + self.configs) * sizes.samples * FLOAT,
                     f"(candidates {self.candidates:,} x classes {sizes.classes} + configs "
                     f"{self.configs:,}) x samples {sizes.samples:,} x {FLOAT} bytes",
                     "lower --batchbald-candidates, --batchbald-configs or the samples")]

    def check(self, config) -> None:
        _need(self.configs > 0, f"batchbald configs must be > 0 (got {self.configs})")
        _need(self.candidates >= config.query_size,
              f"batchbald candidates ({self.candidates}) must be >= the query size "
              f"({config.query_size}); raise --batchbald-candidates")


# --- The tables ------------------------------------------------------------------------


class Component(NamedTuple):
    """One entry: its record of functions (imported on first use) and its options."""

    # "module:attribute", e.g. "jaxal.posteriors.laplace:LAPLACE", imported on first use; or the
    # record itself (a component registered at run time, by code that imported JAX).
    record: Any
    options: type = NoOptions          # its options record (NamedTuple with defaults)


class Registry(MutableMapping):
    """name -> the component's record of functions, each imported on first use; the
    entries (and so the names and options) are read without importing anything.
    ``registry[name] = Component(...)`` registers one (``register``)."""

    def __init__(self, entries: dict[str, Component]):
        self._entries = dict(entries)
        self._records: dict[str, Any] = {}

    def __getitem__(self, name: str):
        if name not in self._records:
            record = self._entries[name].record
            if isinstance(record, str):
                module, attribute = record.split(":")
                record = getattr(importlib.import_module(module), attribute)
            self._records[name] = record
        return self._records[name]

    def __setitem__(self, name: str, component: Component) -> None:
        self.register(name, component)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def options_type(self, name: str) -> type:
        return self._entries[name].options

    def register(self, name: str, component: Component) -> None:
        """Add (or replace) an entry: a new component is its module plus this call."""
        self._entries[name] = component
        self._records.pop(name, None)

    def unregister(self, name: str) -> None:
        del self._entries[name]
        self._records.pop(name, None)


POSTERIORS = Registry({
    "plugin": Component("jaxal.posteriors.plugin:PLUGIN"),
    "laplace": Component("jaxal.posteriors.laplace:LAPLACE", LaplaceOptions),
    "mc-dropout": Component("jaxal.posteriors.mc_dropout:MC_DROPOUT", MCDropoutOptions),
    "ensemble": Component("jaxal.posteriors.ensemble:ENSEMBLE", EnsembleOptions),
})

# Batch selectors (``--batch``) and strategies (``--acq``, they bring their own score).
SELECTORS = Registry({
    "topk": Component("jaxal.selection:TOP_K"),
    "hybrid": Component("jaxal.selection:HYBRID", HybridOptions),
    "power": Component("jaxal.selection:POWER", StochasticOptions),
    "softmax": Component("jaxal.selection:SOFTMAX", StochasticOptions),
    "softrank": Component("jaxal.selection:SOFTRANK", StochasticOptions),
    "kcenter": Component("jaxal.selection:K_CENTER"),
    "badge": Component("jaxal.selection:BADGE"),
    "batchbald": Component("jaxal.selection:BATCHBALD", BatchBALDOptions),
})

# Which ``ALConfig`` field names each kind's chosen component, and which carries its options.
KINDS = {"posterior": ("posterior", "posterior_options", POSTERIORS),
         "batch": ("batch", "batch_options", SELECTORS),
         "acquisition": ("acquisition", "acquisition_options", SELECTORS)}


def options_of(config, kind: str):
    """The options record of the run's chosen component of ``kind`` ("posterior",
    "batch" or "acquisition"): the one the config carries, or the component's defaults
    when it carries none (``()``). An acquisition that is a score (no record in
    ``SELECTORS``) has none."""
    name_field, options_field, registry = KINDS[kind]
    name, given = getattr(config, name_field), getattr(config, options_field)
    if name not in registry:
        _need(given == (), f"--{kind} {name} takes no options (got {given})")
        return NoOptions()
    options = registry.options_type(name)
    if given == ():
        return options()
    _need(isinstance(given, options), f"--{kind} {name} takes {options.__name__}, not "
                                      f"{type(given).__name__}; pass {options.__name__}(...)")
    return given


def all_flags() -> dict[str, tuple[str, str, Flag, Any]]:
    """flag -> (kind, field, Flag, default) over every registered component; a flag that
    several components share (--stochastic-beta) appears once."""
    flags = {}
    for kind, (_, _, registry) in KINDS.items():
        for name in registry:
            options = registry.options_type(name)
            for field, flag in options.FLAGS.items():
                flags.setdefault(flag.flag, (kind, field, flag, options._field_defaults[field]))
    return flags


def flag_users(flag: str) -> list[str]:
    """'--posterior ensemble', ... : the components that read ``flag``."""
    users = []
    for kind, (_, _, registry) in KINDS.items():
        for name in registry:
            if any(f.flag == flag for f in registry.options_type(name).FLAGS.values()):
                users.append(f"--{'acq' if kind == 'acquisition' else kind} {name}")
    return list(dict.fromkeys(users))


def options_from_flags(kind: str, name: str, values: Mapping[str, Any]):
    """The options record of component ``name`` with the flags given on the command line
    (``values``: flag -> value, None where not given) over its defaults."""
    registry = KINDS[kind][2]
    if name not in registry:
        return ()
    options = registry.options_type(name)
    given = {field: values[flag.flag] for field, flag in options.FLAGS.items()
             if values.get(flag.flag) is not None}
    return options(**given)


def options_to_dict(options) -> dict:
    """config.json's record of ``options``: its fields, less those added later (the
    record's ``ADDED_LATER``) that hold the value older run dirs ran with."""
    if options == ():
        return {}
    later = getattr(options, "ADDED_LATER", {})
    return {k: v for k, v in options._asdict().items()
            if not (k in later and v == later[k])}
