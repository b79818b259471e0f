"""Command line: ``python -m jaxal.run --dataset mnist --acq entropy``. Parses; no logic.

Arguments, ranges and the out dir are checked before JAX is imported (an invalid command
fails in well under a second); see ``jaxal.cli.common``. The work is
``jaxal.apps.experiment.run_experiment``; ``jaxal/run.py`` is the shim behind ``python -m``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

from jaxal.apps.rundir import lock_out_dir
from jaxal.cli.common import (
    SEED_MAX,
    Parser,
    RegistryChoices,
    check_registry_choices,
    number,
    user_errors,
    whole,
)
from jaxal.components import (
    KINDS,
    POSTERIORS,
    PRIOR_FLAG,
    all_flags,
    flag_users,
    options_from_flags,
)
from jaxal.config import (
    PROTOCOLS,
    TOY_DATASETS,
    ALConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    describe_protocol,
    protocol_of,
)
from jaxal.data import DATASETS
from jaxal.errors import ConfigError

_AL, _TRAIN, _MODEL = ALConfig(), TrainConfig(), ModelConfig()


def add_component_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option that a component's options record offers
    (``jaxal.components``), its help naming the components that read it; a flag not
    given is absent from the namespace, and the component's default applies."""
    for flag, (_, _, spec, default) in all_flags().items():
        choices = spec.choices
        if isinstance(choices, str):        # "module:attribute" of a registry
            choices = RegistryChoices(choices)
        p.add_argument(flag, type=spec.type, choices=choices, metavar=spec.metavar,
                       default=argparse.SUPPRESS,
                       help=f"{' / '.join(flag_users(flag))}: {spec.help} (default: "
                            f"{default})")


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m jaxal.run", description="Simulated active learning with jaxal.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist",
                   help=f"{', '.join([*DATASETS, *TOY_DATASETS])}, or any TFDS "
                        "image-classification dataset prepared in --data-dir (e.g. "
                        "svhn_cropped, emnist/letters: shape, classes and normalisation "
                        "read from it). Its protocol sets --init-per-class, --query-size, "
                        "--rounds and the training schedule unless given: "
                        + "; ".join(describe_protocol(d) for d in PROTOCOLS)
                        + "; others as mnist")
    p.add_argument("--acq", default=_AL.acquisition,
                   choices=RegistryChoices("acquisition:ACQUISITIONS", "selection:strategies"),
                   help="a score (higher = queried first; bald, variation_ratios and "
                        "mean_std need posterior samples: --posterior laplace --predictive "
                        "mc) batched by --batch, or a batch strategy: kcenter (core-set "
                        "greedy in feature space), badge (k-means++ on last-layer gradient "
                        "embeddings), batchbald (greedy joint BALD over the "
                        "--batchbald-candidates points of highest BALD with --samples "
                        "posterior samples; cost per pick ~ configs x samples x candidates "
                        "x classes, ~1 s a pick at the defaults on MNIST)")
    p.add_argument("--batch", default=_AL.batch,
                   choices=RegistryChoices("selection:batch_selectors"),
                   help="how a score becomes a batch: topk; hybrid (greedy, score and "
                        "1 - redundancy, the max cosine similarity of penultimate features "
                        "to the labelled and already chosen points, weighted by "
                        "--hybrid-beta); power / softmax / softrank (stochastic batch "
                        "acquisition, sampling ∝ score^β, exp(β score), rank^-β)")
    p.add_argument("--pseudo-label", type=number(0.0, exclusive=True), default=None,
                   metavar="THRESHOLD",
                   help="CEAL: each round, also train on the model's labels of confident "
                        "pool points (never counted as labels, never added to the labelled "
                        "set); confident: max prob >= THRESHOLD (e.g. 0.99) or, with "
                        "--pseudo-label-by entropy, entropy <= THRESHOLD nats")
    p.add_argument("--pseudo-label-by", default=_AL.pseudo_label_by,
                   choices=RegistryChoices("selection:PSEUDO_LABEL_CRITERIA"))
    p.add_argument("--posterior", default=_AL.posterior,
                   choices=RegistryChoices("components:POSTERIORS"),
                   help="mc-dropout trains with dropout, so give it more steps than one "
                        "plain network: on the MNIST protocol --steps 2000 (with 500 it "
                        "underfits: 0.865 test accuracy on 220 random labels against "
                        "0.915; benchmarks/posterior_curves.py)")
    p.add_argument("--predictive", default=None, choices=RegistryChoices("predictive:PREDICTIVES"),
                   help="default: plugin for --posterior plugin; for laplace, mc when the "
                        "acquisition needs samples or --subset all, else probit. glm: "
                        "samples of the linearised network; glm-logits: the same predictive "
                        "sampled per point from N(f(x), J Σ Jᵀ) (cheaper over all weights; "
                        "not for batchbald)")
    add_component_flags(p)
    p.add_argument("--channels", type=whole(1), nargs="+", default=list(_MODEL.channels),
                   help="the CNN's conv channels, one per block (the seed CNN's by default; "
                        "wider for 32x32x3 images, e.g. 64 128 128)")
    p.add_argument("--hidden", type=whole(1), default=_MODEL.hidden,
                   help="the CNN's hidden width before the last layer")
    p.add_argument("--dropout", type=number(0.0, maximum=1.0), default=None,
                   help="dropout rate after each conv block (spatial) of the CNN, each "
                        "hidden layer of the toy MLP; default: 0.5 for --posterior "
                        "mc-dropout (Kirsch et al. 2019), else 0")
    p.add_argument("--eval-samples", type=whole(1), default=None,
                   help="posterior samples of the test/validation metrics (default: as "
                        "many as the query); fewer keep sampling posteriors affordable")
    p.add_argument("--diagnose", action="store_true",
                   help="each round, the Laplace posterior's evidence diagnosis into "
                        "diagnosis.jsonl: per layer λ, γ, the prior variance against the "
                        "mean square weight, and the GLM logit std against the MAP's logit "
                        "spread (first 256 validation points)")
    p.add_argument("--pool-subset", type=whole(1), default=None, metavar="K",
                   help="score the labelled set and a fresh random K unlabelled pool "
                        "points each round instead of the whole pool (K >= --query-size)")
    p.add_argument("--rounds", type=whole(0), default=None,
                   help="acquisition rounds; default: the dataset's protocol")
    p.add_argument("--query-size", type=whole(1), default=None,
                   help="points labelled per round; default: the dataset's protocol")
    p.add_argument("--init-per-class", type=whole(1), default=None,
                   help="balanced initial labelled set: this many per class; default: the "
                        "dataset's protocol")
    p.add_argument("--steps", type=whole(1), default=None,
                   help="optimiser steps per MAP fit (one fit per round); default: the "
                        "dataset's protocol (mnist: 500)")
    p.add_argument("--epochs", type=number(0.0, exclusive=True), default=None,
                   help="train each round for this many epochs over the labelled set "
                        "instead: ceil(epochs * labels / batch size) steps, clipped to "
                        "[--min-steps, --max-steps]; default: the dataset's protocol "
                        "(cifar10: 30)")
    p.add_argument("--min-steps", type=whole(1), default=None,
                   help="with --epochs: the fewest steps of a fit; default: the protocol's")
    p.add_argument("--max-steps", type=whole(1), default=None,
                   help="with --epochs: the most steps of a fit; default: the protocol's")
    p.add_argument("--batch-size", type=whole(1), default=None,
                   help="minibatch size, drawn with replacement from the labelled set; "
                        "default: the protocol's")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="train on randomly cropped (padding 4) and flipped minibatches "
                        "(never for scoring or the posterior); default: the protocol's "
                        "(cifar10: on). Flips digits on MNIST-like data: not advised there")
    p.add_argument("--lr", type=number(0.0, exclusive=True), default=_TRAIN.learning_rate,
                   help="learning rate")
    p.add_argument("--optimizer", default=_TRAIN.optimizer,
                   choices=RegistryChoices("train:OPTIMIZERS"))
    p.add_argument("--prior-precision", type=_float_or_auto, default=None,
                   help="precision of the Gaussian prior on all weights (sum-scaled "
                        "objective; see jaxal.objective), used for training and the "
                        "posterior. 'auto', 'auto-layerwise', 'linear-mode', "
                        "'linear-mode-layerwise', 'marglik', 'marglik-layerwise' and "
                        "'val-nll' (Laplace only) "
                        f"train with {_TRAIN.prior_precision} and refit the posterior's every "
                        "round: 'auto' maximises the Laplace evidence, 'auto-layerwise' too "
                        "with one value per layer (--subset all); 'linear-mode' takes "
                        "MacKay's fixed point with the evidence at the tangent linear "
                        "model's mode (Antorán et al. 2022), per layer with "
                        "'linear-mode-layerwise'; 'marglik' learns it while training "
                        "(online marginal likelihood, Immer et al. 2021; per layer with "
                        "'marglik-layerwise'; --marglik-*); 'val-nll' takes the value of "
                        "lowest validation NLL of the predictive on a half-decade grid "
                        "1e-2..1e4. Default: val-nll for --posterior laplace (measured "
                        f"best, see benchmarks/laplace_curves.py), {_TRAIN.prior_precision} "
                        "for plugin")
    p.add_argument("--warm-start", action="store_true",
                   help="start each round's MAP fit from the previous round's weights "
                        "instead of the initial weights")
    p.add_argument("--chunk-size", type=whole(1), default=_AL.chunk_size,
                   help="pool points scored per chunk (bounds memory)")
    p.add_argument("--seed", type=whole(0, SEED_MAX), default=0)
    p.add_argument("--val-size", type=whole(1), default=1000,
                   help="validation points held out of the train split")
    p.add_argument("--pool-size", type=whole(1), default=None,
                   help="use a seeded random subset of the pool of this size")
    p.add_argument("--data-dir", default=None,
                   help="TFDS data dir with prepared datasets (default: $TFDS_DATA_DIR, "
                        "else TFDS's default); see `python -m jaxal.data prepare --help`")
    p.add_argument("--devices", type=whole(0), default=None,
                   help="local devices (GPUs, TPU cores, host devices) the pool passes are "
                        "split over; default: all. Results do not depend on it, and a run "
                        "resumes on another count")
    p.add_argument("--distributed", action="store_true",
                   help="join a run over several processes/hosts (jax.distributed): start "
                        "the same command in every process; process 0 writes --out. "
                        "SLURM, Open MPI, Kubernetes and Cloud TPU are detected, else give "
                        "--coordinator, --num-processes and --process-id")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="with --distributed: process 0's address, the same for all")
    p.add_argument("--num-processes", type=whole(1), default=None,
                   help="with --distributed: processes in the run")
    p.add_argument("--process-id", type=whole(0), default=None,
                   help="with --distributed: this process's index, 0 to N-1")
    p.add_argument("--out", default=None,
                   help="output dir (default: runs/<dataset>-<acq>[-<batch>]-<posterior>"
                        "[-<predictive>]-seed<seed>: the batch selector when not topk, the "
                        "predictive when given)")
    return p


# --prior-precision value -> LaplaceOptions.prior_fit (a number: "none").
PRIOR_FIT_OF = {flag: fit for fit, flag in PRIOR_FLAG.items()}


def _float_or_auto(value: str) -> float | str:
    if value in PRIOR_FIT_OF:
        return value
    try:
        return number(0.0)(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a finite number >= 0 or one of {', '.join(PRIOR_FIT_OF)}, got "
            f"{value!r}") from None


SCHEDULE_CONFLICT = "--steps {} and --epochs {:g} both set how long a fit trains; give one"


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    posterior_options = POSTERIORS.options_type(args.posterior)
    # A posterior whose options fit its prior (Laplace: ``prior_fit``) takes
    # --prior-precision auto|linear-mode|val-nll|..., and its default fit by default.
    fits_prior = "prior_fit" in posterior_options._fields
    if args.prior_precision is None:
        default_fit = posterior_options._field_defaults.get("prior_fit", "none")
        args.prior_precision = PRIOR_FLAG.get(default_fit, _TRAIN.prior_precision)
    auto = args.prior_precision in PRIOR_FIT_OF
    if auto and not fits_prior:
        users = [f"--posterior {name}" for name in POSTERIORS
                 if "prior_fit" in POSTERIORS.options_type(name)._fields]
        raise ConfigError(f"--prior-precision {args.prior_precision} fits the Laplace "
                          f"posterior's prior; add {' or '.join(users)} or give a number")
    if args.steps is not None and args.epochs is not None:
        raise ConfigError(SCHEDULE_CONFLICT.format(args.steps, args.epochs))
    # What the command leaves unset comes from the dataset's protocol (recorded).
    protocol, from_protocol = protocol_of(args.dataset), []

    def given(name: str, value, default):
        if value is None:
            from_protocol.append(name)
            return default
        return value

    # An explicit --steps trains a fixed number of steps even where epochs are the default.
    schedule = protocol.train
    steps = given("steps", args.steps, schedule.steps)
    epochs = None if args.steps is not None else given("epochs", args.epochs, schedule.epochs)
    train = TrainConfig(steps=steps, epochs=epochs,
                        min_steps=given("min_steps", args.min_steps, schedule.min_steps),
                        max_steps=given("max_steps", args.max_steps, schedule.max_steps),
                        batch_size=given("batch_size", args.batch_size, schedule.batch_size),
                        augment=given("augment", args.augment, schedule.augment),
                        learning_rate=args.lr, optimizer=args.optimizer,
                        prior_precision=_TRAIN.prior_precision if auto else args.prior_precision)
    # Each chosen component's options: the flags given over its defaults.
    flags = {flag: getattr(args, flag[2:].replace("-", "_"), None) for flag in all_flags()}
    names = {"posterior": args.posterior, "batch": args.batch, "acquisition": args.acq}
    options = {KINDS[kind][1]: options_from_flags(kind, name, flags)
               for kind, name in names.items()}
    if fits_prior:
        options["posterior_options"] = options["posterior_options"]._replace(
            prior_fit=PRIOR_FIT_OF.get(args.prior_precision, "none"))
    model_defaults = getattr(posterior_options, "MODEL_DEFAULTS", {})
    dropout = args.dropout if args.dropout is not None else model_defaults.get(
        "dropout", _MODEL.dropout)
    al = ALConfig(acquisition=args.acq, batch=args.batch, pseudo_label=args.pseudo_label,
                  pseudo_label_by=args.pseudo_label_by, posterior=args.posterior, **options,
                  rounds=given("rounds", args.rounds, protocol.rounds),
                  query_size=given("query_size", args.query_size, protocol.query_size),
                  init_per_class=given("init_per_class", args.init_per_class,
                                       protocol.init_per_class),
                  warm_start=args.warm_start, chunk_size=args.chunk_size, train=train,
                  model=ModelConfig(dropout=dropout, channels=tuple(args.channels),
                                    hidden=args.hidden),
                  eval_samples=args.eval_samples, pool_subset=args.pool_subset,
                  diagnose=args.diagnose)
    from jaxal.loop import default_predictive

    al = al._replace(predictive=args.predictive or default_predictive(al))
    return ExperimentConfig(dataset=args.dataset, seed=args.seed, val_size=args.val_size,
                            pool_size=args.pool_size, data_dir=args.data_dir, al=al,
                            devices=args.devices, from_protocol=tuple(from_protocol))


def default_out_dir(args: argparse.Namespace) -> str:
    """runs/<dataset>-<acq>[-<batch>]-<posterior>[-<predictive>]-seed<seed>: what sets the
    run apart (the batch selector when not top-k, the predictive when named)."""
    parts = [args.dataset, args.acq]
    parts += [args.batch] if args.batch != _AL.batch else []
    parts += [args.posterior] + ([args.predictive] if args.predictive else [])
    return f"runs/{'-'.join(parts)}-seed{args.seed}"


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.steps is not None and args.epochs is not None:   # before JAX, like the rest
        p.error(SCHEDULE_CONFLICT.format(args.steps, args.epochs))
    out = args.out or default_out_dir(args)
    # One process: the out dir is held before JAX starts. Several: only process 0 holds
    # it, and which one this is is known once it has joined (run_experiment locks then).
    with user_errors(out), (contextlib.nullcontext() if distributed(args)
                            else lock_out_dir(out)):
        from jaxal.runtime import configure_cpu

        configure_cpu()   # before JAX's first computation
        from jaxal.sharding import devices_line, initialize_distributed, is_writer

        if distributed(args):
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        check_registry_choices(p, args)
        from jaxal.apps.experiment import check_config, run_experiment

        config = config_from_args(args)
        check_config(config)              # before the devices line: a bad --devices fails
        writer = is_writer()
        if writer:
            print(devices_line(args.devices), flush=True)
        run_experiment(config, out,
                       progress=(lambda line: print(line, flush=True)) if writer else None)
    if writer:
        print(f"outputs in {out}/ (metrics.csv, metrics.jsonl, queries.jsonl, figure5.png)")


def distributed(args) -> bool:
    """Whether the command joins a multi-process run (``jax.distributed``)."""
    return bool(args.distributed or args.coordinator or args.num_processes is not None
                or args.process_id is not None)


if __name__ == "__main__":
    main()
