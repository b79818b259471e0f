"""Query strategies on MNIST: selection time on the full pool, and learning curves.

    python benchmarks/acquisition.py timing [--data-dir ../shared/data/tfds]
    python benchmarks/acquisition.py curves [--data-dir ...] [--seeds 0 1 2] [--rounds 20]
        [--pool-size 10000] [--strategies random entropy ...]

``timing``: one MAP fit on 20 balanced labels (seed CNN) with the default Laplace posterior
(last-layer full GGN, val-NLL prior precision), then the wall time of one query of 10 from
the whole 59,000-image pool for every strategy: the pool pass (predictive, score, features
where needed) plus the batch selection, i.e. ``ActiveLearner.query``, compile time apart
(median of 3). Written to ``results/acquisition_timing.{json,md}``.

``curves``: ``jaxal.apps.comparison.run_comparison`` over strategies x seeds with the default
Laplace posterior (probit; mc with 100 samples for BALD and BatchBALD), 20 balanced
initial labels, 10 per round. All strategies of a seed share the initial labels, the
validation split, the pool subset and the initial weights. Reported: labels needed to
reach 90% and 95% test accuracy (median over seeds; "not reached" within the budget), the
area under the learning curve (trapezoid over labels, normalised by the label range) and
the final accuracy. Resumable: finished (strategy, seed) runs are kept in
``results/acquisition_curves.json``; run dirs (``jaxal.apps.comparison.run_comparison``) in
``results/curves/acquisition_curves/runs/``. With
``--epochs E [--min-steps m] [--max-steps M]`` each fit trains by epochs
(``jaxal.train.training_steps``) instead of 500 steps, written to
``results/acquisition_curves-epochsE-minm-maxM.json`` so schedules can be compared.
"""

from __future__ import annotations

import argparse
from functools import partial

import jax
from common import (
    RESULTS,
    area,
    labels_to,
    mean_std,
    per_round,
    run_curves,
    runs_of,
    write_json,
)
from timing import time_calls

from jaxal.apps.comparison import Run, markdown_table, target_header, targets_of
from jaxal.apps.experiment import ExperimentConfig, to_device
from jaxal.components import BatchBALDOptions, LaplaceOptions
from jaxal.data import load_dataset, make_al_split
from jaxal.loop import ALConfig, default_predictive, init_state, make_learner
from jaxal.model import cnn
from jaxal.runtime import configure_cpu
from jaxal.train import TrainConfig

# name -> ALConfig fields; the predictive follows jaxal.loop.default_predictive.
STRATEGIES = {
    "random": dict(acquisition="random"),
    "entropy": dict(acquisition="entropy"),
    "margin": dict(acquisition="margin"),
    "least_confidence": dict(acquisition="least_confidence"),
    "bald": dict(acquisition="bald"),
    "variation_ratios": dict(acquisition="variation_ratios"),
    "mean_std": dict(acquisition="mean_std"),
    "entropy_hybrid": dict(acquisition="entropy", batch="hybrid"),
    "entropy_power": dict(acquisition="entropy", batch="power"),
    "entropy_softmax": dict(acquisition="entropy", batch="softmax"),
    "entropy_softrank": dict(acquisition="entropy", batch="softrank"),
    "bald_power": dict(acquisition="bald", batch="power"),
    "kcenter": dict(acquisition="kcenter"),
    "badge": dict(acquisition="badge"),
    "batchbald": dict(acquisition="batchbald"),
    "entropy_pseudo_label": dict(acquisition="entropy", pseudo_label=0.99),
}
CURVE_STRATEGIES = ["random", "entropy", "margin", "bald", "batchbald", "badge", "kcenter"]
TARGETS = targets_of("mnist")     # the protocol's 90% / 95%


def al_config(name: str, **kw) -> ALConfig:
    fields = STRATEGIES[name]
    predictive = default_predictive(ALConfig(acquisition=fields["acquisition"],
                                             posterior="laplace"))
    return ALConfig(posterior="laplace", predictive=predictive,
                    posterior_options=LaplaceOptions(prior_fit="val-nll"), **fields, **kw)


def timing(args) -> None:
    split = make_al_split(load_dataset("mnist", args.data_dir), seed=0, val_size=1000)
    data = to_device(split)
    model = cnn(split.num_classes)
    shape = split.pool_x.shape[1:]
    base = make_learner(model, al_config("entropy"), shape, split.num_classes)
    state, _ = init_state(jax.random.key(0), base, data)
    rows = {}
    for name in args.strategies:
        learner = make_learner(model, al_config(name), shape, split.num_classes)
        query = lambda learner=learner: learner.query(jax.random.key(1), state.posterior,
                                                      data.pool_x, state.labelled)
        timed = time_calls(query, args.repeats)
        rows[name] = {"seconds": timed.seconds, "compile_s": timed.compile_s,
                      "predictive": learner.config.predictive}
        print(f"{name:>22}: {timed.seconds:6.2f} s  (compile {rows[name]['compile_s']:.1f} s, "
              f"{learner.config.predictive})", flush=True)
    result = {"setting": {"pool": int(split.pool_x.shape[0]), "query_size": 10,
                          "labelled": int(state.labelled.sum()), "repeats": args.repeats,
                          "batchbald": {"candidates": BatchBALDOptions().candidates,
                                        "configs": BatchBALDOptions().configs,
                                        "samples": LaplaceOptions().samples}},
              "strategies": rows}
    write_json(RESULTS / "acquisition_timing.json", result)
    text = (f"One query of 10 from the MNIST pool ({result['setting']['pool']:,} images), "
            "seed CNN after 20 labels, last-layer Laplace (full GGN); median of "
            f"{args.repeats}, seconds. BatchBALD: {BatchBALDOptions().candidates} "
            f"candidates, {BatchBALDOptions().configs} configurations, "
            f"{LaplaceOptions().samples} samples.\n\n" + markdown_table(
                ["strategy", "predictive", "query (s)", "compile (s)"],
                [[n, r["predictive"], f"{r['seconds']:.2f}", f"{r['compile_s']:.1f}"]
                 for n, r in rows.items()]))
    (RESULTS / "acquisition_timing.md").write_text(text + "\n")
    print(text)


def schedule(args) -> tuple[TrainConfig, str]:
    """The training schedule asked for, and the suffix of its result files."""
    if args.epochs is None:
        return TrainConfig(), ""
    train = TrainConfig(epochs=args.epochs, min_steps=args.min_steps,
                        max_steps=args.max_steps)
    return train, f"-epochs{args.epochs:g}-min{args.min_steps}-max{args.max_steps}"


def curves(args) -> None:
    train, suffix = schedule(args)
    suffix += f"-{args.tag}" if args.tag else ""
    out = RESULTS / f"acquisition_curves{suffix}.json"
    setting = {k: getattr(args, k) for k in ("pool_size", "rounds", "query_size",
                                              "init_per_class")}
    if suffix:   # the fixed 500-step schedule keeps its old setting (and results)
        setting["train"] = {k: getattr(train, k) for k in ("epochs", "min_steps", "max_steps")}
    runs = [Run(name, seed, ExperimentConfig(
        dataset="mnist", seed=seed, pool_size=args.pool_size, data_dir=args.data_dir,
        al=al_config(name, rounds=args.rounds, query_size=args.query_size,
                     init_per_class=args.init_per_class, train=train)))
        for seed in args.seeds for name in args.strategies]
    result = run_curves(out, setting, runs, RESULTS / "curves" / f"acquisition_curves{suffix}")
    text = curves_table(result, args.seeds, args.strategies)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


def curves_table(result: dict, seeds, strategies) -> str:
    s = result["setting"]
    train = s.get("train")
    fit = (f"{train['epochs']:g} epochs a fit, {train['min_steps']}-{train['max_steps']} steps"
           if train else f"{TrainConfig().steps} steps a fit")
    head = (f"MNIST, pool {s['pool_size']}, {s['init_per_class']} labels per class to start "
            f"+ {s['rounds']} rounds x {s['query_size']}; {fit}; default Laplace posterior "
            "(last-layer full GGN, val-NLL prior precision; probit, or MC-100 for BALD and "
            f"BatchBALD); seeds {list(seeds)}. Labels to reach: median over seeds.")
    rows = []
    for name in strategies:
        if not (runs := runs_of(result, name, seeds)):
            continue
        per_round_s = partial(per_round, runs)
        rows.append([f"{name} ({len(runs)} seeds)", *(labels_to(runs, t) for t in TARGETS),
                     mean_std(map(area, runs), True),
                     mean_std((r["test_accuracy"][-1] for r in runs), True),
                     f"{per_round_s('query_s'):.1f}", f"{per_round_s('train_s'):.1f}"])
    return head + "\n\n" + markdown_table(
        ["strategy", *(target_header(t, "mnist") for t in TARGETS), "AUBC (mean ± std)",
         "final acc (mean ± std)", "query s/round", "train s/round"], rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--strategies", nargs="*", default=list(STRATEGIES),
                   choices=list(STRATEGIES))
    t.add_argument("--repeats", type=int, default=3)
    c = sub.add_parser("curves")
    c.add_argument("--strategies", nargs="*", default=CURVE_STRATEGIES,
                   choices=list(STRATEGIES))
    c.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    c.add_argument("--pool-size", type=int, default=10_000)
    c.add_argument("--rounds", type=int, default=20)
    c.add_argument("--query-size", type=int, default=10)
    c.add_argument("--init-per-class", type=int, default=2)
    c.add_argument("--epochs", type=float, default=None,
                   help="train by epochs (jaxal.train.training_steps) instead of 500 steps")
    c.add_argument("--min-steps", type=int, default=TrainConfig().min_steps)
    c.add_argument("--max-steps", type=int, default=TrainConfig().max_steps)
    c.add_argument("--tag", default="",
                   help="suffix of the result files, to keep runs of another code version")
    for s in (t, c):
        s.add_argument("--data-dir", default=None)
    args = p.parse_args()
    configure_cpu()   # as jaxal's CLIs run; before JAX's first computation
    timing(args) if args.command == "timing" else curves(args)


if __name__ == "__main__":
    main()
