"""What decides a run, as plain data: the configs of MAP training, the Laplace posterior,
the AL loop and one experiment. Imports no JAX, so the command-line tools can build their
options and defaults, and check arguments, before the slow imports; the modules that use
a config re-export it (``jaxal.loop.ALConfig`` is this ``ALConfig``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from jaxal.components import KINDS, options_of, options_to_dict
from jaxal.components import VALIDATION_GRID as VALIDATION_GRID  # re-exported
from jaxal.components import LaplaceOptions as LaplaceOptions  # re-exported

TOY_DATASETS = ("moons", "blobs")
# The dataset of a folder of the user's own images (``jaxal.data.image_folder``); never a TFDS
# name (those have no '-').
IMAGE_FOLDER = "image-folder"


class TrainConfig(NamedTuple):
    """How one MAP fit runs: minibatches of ``batch_size`` from the labelled set.

    The number of steps per fit is ``steps`` when ``epochs`` is None; otherwise it follows
    the labelled-set size N, ``clip(ceil(epochs · N / batch_size), min_steps, max_steps)``
    (see ``jaxal.train.training_steps``): the floor keeps tiny sets trained, the cap bounds
    a round's time on large ones.
    """

    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    prior_precision: float = 1.0
    epochs: float | None = None
    min_steps: int = 100
    max_steps: int = 5000
    # Random crop (zero padding 4) and horizontal flip of each training minibatch, keyed
    # per step (``jaxal.train.random_crop_flip``); never for scoring or the curvature.
    augment: bool = False


class ModelConfig(NamedTuple):
    """Options of the models; the defaults are the seed CNN and the toy MLP themselves."""

    # Dropout after each hidden block: each conv block of the CNN, one mask entry per
    # channel (spatial dropout, as in Kirsch et al. 2019's MNIST model; the CNN's dropout
    # before the last layer is always there), each hidden layer of the toy MLP; 0: none.
    # The MC dropout posterior needs it (0.5: Kirsch et al.).
    dropout: float = 0.0
    # The CNN's conv channels per block and hidden width (the seed CNN's by default; wider
    # for 32x32x3 images, e.g. --channels 64 128 128 --hidden 256).
    channels: tuple[int, ...] = (32, 64, 64)
    hidden: int = 128


class ALConfig(NamedTuple):
    """Everything that decides what an AL run computes (apart from data and seed): the
    chosen component of each kind with its options (``jaxal.components``: the options
    record of that component, ``()`` for its defaults), and the schedule."""

    acquisition: str = "entropy"   # a score (ACQUISITIONS) or a strategy (SELECTORS)
    batch: str = "topk"            # how a score becomes a batch (a batch selector)
    posterior: str = "plugin"
    predictive: str = "plugin"
    posterior_options: Any = ()    # e.g. LaplaceOptions(subset="all"), EnsembleOptions(5)
    batch_options: Any = ()        # e.g. StochasticOptions(beta=2.0) for --batch power
    acquisition_options: Any = ()  # a strategy's, e.g. BatchBALDOptions(candidates=500)
    pseudo_label: float | None = None  # CEAL confidence threshold (None: off)
    pseudo_label_by: str = "max-prob"  # max-prob (p_max >= t) or entropy (H <= t)
    rounds: int = 20
    query_size: int = 10
    init_per_class: int = 2
    warm_start: bool = False
    chunk_size: int = 4096
    # Score the labelled set and a fresh random K unlabelled pool points each round
    # (None: the whole pool), so costly posteriors stay affordable (Gal et al. 2017).
    pool_subset: int | None = None
    train: TrainConfig = TrainConfig()
    model: ModelConfig = ModelConfig()
    # Posterior samples of the predictive when evaluating (test/validation metrics and the
    # val-nll prior fit); None: as many as the query uses. Fewer keep costly sampling
    # posteriors affordable over the 11,000 evaluation images.
    eval_samples: int | None = None
    # Per round, the posterior's diagnosis (Laplace: the evidence diagnosis per layer and
    # the GLM logit std against the MAP's spread, on the first DIAGNOSIS_POINTS validation
    # points) into diagnosis.jsonl.
    diagnose: bool = False

    def options(self, kind: str):
        """The options record of the chosen component of ``kind`` (defaults filled in)."""
        return options_of(self, kind)


class Protocol(NamedTuple):
    """A dataset's active-learning protocol: the defaults a run on it gets (each one
    overridable), with where they come from."""

    init_per_class: int = 2        # balanced initial labels per class
    query_size: int = 10           # labels per round
    rounds: int = 20
    train: TrainConfig = TrainConfig()
    source: str = ""
    # Test accuracies a comparison reports the labels to reach (``jaxal.apps.comparison``),
    # and where they come from ("" for the literature's 90% / 95% on MNIST).
    targets: tuple[float, ...] = (0.90, 0.95)
    targets_source: str = ""


# MNIST-like data keep the protocol of Gal et al. 2017 and Kirsch et al. 2019 (20
# labels, 10 a round, 20 rounds; labels to 90% / 95% test accuracy). CIFAR-10 gets the
# scale of its literature: 1,000 initial labels and 1,000 a round (Beluch et al. 2018;
# Sener & Savarese 2018; Ash et al. 2020 start from 1,000-5,000 and query 1,000+), trained
# by epochs: 30 over the labelled set, at least 500 and at most 3,000 steps of 128
# (provisional: the CIFAR-10 benchmark decides them). Its targets sit inside the seed
# CNN's range, which 90% is far above: random labels reach 0.63 at 5,000 and 0.68 at
# 10,000 on the stand-in, the whole 49,000-image pool 0.71
# (benchmarks/results/cifar10_curves.md, cifar10_timing.md). Fashion-MNIST's targets
# are provisional (not measured here): a small CNN reaches about 0.70-0.75 on 100-220
# labels, where 90% needs the whole training set.
PROTOCOLS: dict[str, Protocol] = {
    "mnist": Protocol(source="Gal et al. 2017; Kirsch et al. 2019"),
    "fashion_mnist": Protocol(source="as MNIST", targets=(0.70, 0.75),
                              targets_source="fashion_mnist protocol"),
    "cifar10": Protocol(100, 1000, 10, TrainConfig(batch_size=128, epochs=30.0, min_steps=500,
                                                   max_steps=3000, augment=True),
                        source="Beluch et al. 2018; Sener & Savarese 2018; Ash et al. 2020",
                        targets=(0.60, 0.65), targets_source="cifar10 protocol"),
}


def protocol_of(dataset: str) -> Protocol:
    """The dataset's protocol; others (toy data, new datasets) get MNIST's."""
    return PROTOCOLS.get(dataset, Protocol(source="the default"))


def describe_protocol(dataset: str) -> str:
    """'cifar10: 100 labels per class to start, 1000 a round, 10 rounds, 30 epochs a fit
    (500-3000 steps of 128)'."""
    p = protocol_of(dataset)
    t = p.train
    fit = (f"{t.steps} steps of {t.batch_size}" if t.epochs is None else
           f"{t.epochs:g} epochs a fit ({t.min_steps}-{t.max_steps} steps of {t.batch_size})")
    return (f"{dataset}: {p.init_per_class} labels per class to start, {p.query_size} a "
            f"round, {p.rounds} rounds, {fit}" + (", augmented" if t.augment else ""))


# Fields added after run dirs were written with this config format: ``to_dict`` leaves
# each out at its default, which computes what runs before it computed, so the config
# (and the checkpoint's digest of it) of an existing run dir still matches and it resumes.
ADDED_LATER: dict[tuple[str, ...], object] = {
    ("al", "train", "augment"): False,
    ("al", "model", "channels"): (32, 64, 64),
    ("al", "model", "hidden"): 128,
    ("image_shape",): None,
    ("classes",): (),
    ("resize",): True,
    ("al", "diagnose"): False,
}


class ExperimentConfig(NamedTuple):
    dataset: str = "mnist"
    seed: int = 0
    val_size: int = 1000
    pool_size: int | None = None      # a seeded subset of the pool (None: all of it)
    data_dir: str | None = None       # TFDS data dir (None: $TFDS_DATA_DIR or TFDS default)
    al: ALConfig = ALConfig()
    # Local devices the pool passes are split over (None: all; ``jaxal.sharding``).
    devices: int | None = None
    # Which fields the dataset's protocol set (the others were given); config.json says so.
    from_protocol: tuple[str, ...] = ()
    # An image folder (dataset IMAGE_FOLDER, ``data_dir`` the folder): the declared
    # (height, width, channels) its images are read at, its class names in label order
    # (empty: the subfolders'), and whether images of another size are resized.
    image_shape: tuple[int, int, int] | None = None
    classes: tuple[str, ...] = ()
    resize: bool = True

    def to_dict(self) -> dict:
        d = self._asdict()
        al = self.al
        d["al"] = {**al._asdict(), "train": al.train._asdict(), "model": al.model._asdict()}
        for kind, (_, field, _) in KINDS.items():
            d["al"][field] = options_to_dict(options_of(al, kind))
        # Neither where the data lives nor how many devices share the work changes the
        # results (a run resumes on another device count); config.json records the devices
        # apart.
        del d["data_dir"], d["devices"], d["from_protocol"]
        for *parents, name in ADDED_LATER:
            node = d
            for key in parents:
                node = node[key]
            if node[name] == ADDED_LATER[(*parents, name)]:
                del node[name]
        return d


# The ALConfig fields of the format before components carried their options
# (jaxal <= 57b3532): where each component's options were, by component.
_LEGACY_OPTIONS = {
    ("posterior", "laplace"): lambda al: al["laplace"],
    ("posterior", "mc-dropout"): lambda al: {"samples": al["dropout_samples"]},
    ("posterior", "ensemble"): lambda al: {"size": al["ensemble_size"]},
    ("batch", "hybrid"): lambda al: {"beta": al["hybrid_beta"]},
    ("batch", "power"): lambda al: {"beta": al["stochastic_beta"]},
    ("batch", "softmax"): lambda al: {"beta": al["stochastic_beta"]},
    ("batch", "softrank"): lambda al: {"beta": al["stochastic_beta"]},
    ("acquisition", "batchbald"): lambda al: {"candidates": al["batchbald_candidates"],
                                              "configs": al["batchbald_configs"]},
}
_LEGACY_FIELDS = ("laplace", "dropout_samples", "ensemble_size", "hybrid_beta",
                  "stochastic_beta", "batchbald_candidates", "batchbald_configs")


def migrate_config_dict(d: dict) -> dict:
    """An ``experiment`` dict of config.json in today's format: one written before
    components carried their options (flat ``ensemble_size``, ``hybrid_beta``, ... and a
    ``laplace`` object in ``al``) becomes the same run's dict now, so its run dir resumes.
    Today's dicts are returned as they are."""
    al = d.get("al") if isinstance(d, dict) else None
    if not isinstance(al, dict) or "laplace" not in al:
        return d
    new_al = {k: v for k, v in al.items() if k not in _LEGACY_FIELDS}
    for kind, (name_field, field, _) in KINDS.items():
        legacy = _LEGACY_OPTIONS.get((kind, al.get(name_field)))
        new_al[field] = legacy(al) if legacy is not None else {}
    return {**d, "al": new_al}
