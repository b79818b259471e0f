"""Query strategies on MNIST: selection time on the full pool, and learning curves.

    python benchmarks/acquisition.py timing [--data-dir ../shared/data/tfds]
    python benchmarks/acquisition.py curves [--data-dir ...] [--seeds 0 1 2] [--rounds 20]
        [--pool-size 10000] [--strategies random entropy ...]

``timing``: one MAP fit on 20 balanced labels (seed CNN) with the default Laplace posterior
(last-layer full GGN, val-NLL prior precision), then the wall time of one query of 10 from
the whole 59,000-image pool for every strategy: the pool pass (predictive, score, features
where needed) plus the batch selection, i.e. ``ActiveLearner.query``, compile time apart
(median of 3). Written to ``results/acquisition_timing.{json,md}``.

``curves``: ``jaxal.experiment.run_experiment`` per strategy and seed with the default
Laplace posterior (probit; mc with 100 samples for BALD and BatchBALD), 20 balanced
initial labels, 10 per round. All strategies of a seed share the initial labels, the
validation split, the pool subset and the initial weights. Reported: labels needed to
reach 90% and 95% test accuracy (median over seeds; "not reached" within the budget), the
area under the learning curve (trapezoid over labels, normalised by the label range) and
the final accuracy. Resumable: finished (strategy, seed) runs are kept in
``results/acquisition_curves.json``; run outputs in ``results/curves/acq-*``. With
``--epochs E [--min-steps m] [--max-steps M]`` each fit trains by epochs
(``jaxal.train.training_steps``) instead of 500 steps, written to
``results/acquisition_curves-epochsE-minm-maxM.json`` so schedules can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from timing import time_calls

from jaxal.components import BatchBALDOptions, LaplaceOptions
from jaxal.data import load_dataset, make_al_split
from jaxal.experiment import ExperimentConfig, run_experiment, to_device
from jaxal.loop import ALConfig, default_predictive, init_state, make_learner
from jaxal.model import cnn
from jaxal.runtime import configure_cpu
from jaxal.train import TrainConfig

RESULTS = Path(__file__).parent / "results"

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
TARGETS = (0.90, 0.95)


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
    lines = [f"One query of 10 from the MNIST pool ({result['setting']['pool']:,} images), "
             "seed CNN after 20 labels, last-layer Laplace (full GGN); median of "
             f"{args.repeats}, seconds. BatchBALD: {BatchBALDOptions().candidates} "
             f"candidates, {BatchBALDOptions().configs} configurations, "
             f"{LaplaceOptions().samples} samples.", "",
             "| strategy | predictive | query (s) | compile (s) |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['predictive']} | {r['seconds']:.2f} | {r['compile_s']:.1f} |"
              for n, r in rows.items()]
    (RESULTS / "acquisition_timing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def labels_to_reach(labels, accuracy, target: float):
    hit = [n for n, a in zip(labels, accuracy, strict=True) if a >= target]
    return hit[0] if hit else None


def aubc(labels, accuracy) -> float:
    """Trapezoid area under accuracy vs labels, divided by the label range (in [0, 1])."""
    labels = np.asarray(labels, float)
    return float(np.trapezoid(accuracy, labels) / (labels[-1] - labels[0]))


def curve_record(infos) -> dict:
    """What a curves benchmark keeps of one run: per round labels, test metrics and the
    seconds of query, training and posterior (``RoundInfo`` list)."""
    m = [i.metrics for i in infos]
    return {"labels": [i.num_labels for i in infos],
            "test_accuracy": [x.test_accuracy for x in m],
            "test_nll": [x.test_loss for x in m],
            "test_ece": [x.test_ece for x in m],
            "test_entropy": [x.test_entropy for x in m],
            "prior_precision": [x.prior_precision for x in m],
            "query_s": [i.timings.score for i in infos],
            "train_s": [i.timings.train for i in infos],
            "posterior_s": [i.timings.posterior for i in infos]}


def _median_labels(values):
    """Median over seeds with "not reached" (None) counted as larger than any budget."""
    keyed = sorted(values, key=lambda v: float("inf") if v is None else v)
    mid = keyed[len(keyed) // 2]
    return "not reached" if mid is None else mid


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
    result = {"setting": setting, "runs": {}}
    if out.exists():
        old = json.loads(out.read_text())
        if old["setting"] == setting:
            result["runs"] = old["runs"]
    for seed in args.seeds:
        for name in args.strategies:
            key = f"{name}-seed{seed}"
            if key in result["runs"]:
                continue
            config = ExperimentConfig(
                dataset="mnist", seed=seed, pool_size=args.pool_size, data_dir=args.data_dir,
                al=al_config(name, rounds=args.rounds, query_size=args.query_size,
                             init_per_class=args.init_per_class, train=train))
            print(f"== {key}", flush=True)
            start = time.perf_counter()
            _, infos = run_experiment(config, RESULTS / "curves" / f"acq-{key}{suffix}",
                                      progress=None)
            result["runs"][key] = {
                "labels": [i.num_labels for i in infos],
                "test_accuracy": [i.metrics.test_accuracy for i in infos],
                "query_s": [i.timings.score for i in infos],
                "train_s": [i.timings.train for i in infos],
                "seconds": time.perf_counter() - start}
            write_json(out, result)
    text = curves_table(result, args.seeds, args.strategies)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


def curves_table(result: dict, seeds, strategies) -> str:
    s = result["setting"]
    train = s.get("train")
    fit = (f"{train['epochs']:g} epochs a fit, {train['min_steps']}-{train['max_steps']} steps"
           if train else f"{TrainConfig().steps} steps a fit")
    lines = [f"MNIST, pool {s['pool_size']}, {s['init_per_class']} labels per class to start "
             f"+ {s['rounds']} rounds x {s['query_size']}; {fit}; default Laplace posterior "
             "(last-layer full GGN, val-NLL prior precision; probit, or MC-100 for BALD and "
             f"BatchBALD); seeds {list(seeds)}. Labels to reach: median over seeds.", "",
             "| strategy | labels to 90% | labels to 95% | AUBC (mean ± std) | final acc "
             "(mean ± std) | query s/round | train s/round |", "|---|---|---|---|---|---|---|"]
    for name in strategies:
        runs = [result["runs"].get(f"{name}-seed{seed}") for seed in seeds]
        runs = [r for r in runs if r is not None]
        if not runs:
            continue
        reach = [_median_labels([labels_to_reach(r["labels"], r["test_accuracy"], t)
                                 for r in runs]) for t in TARGETS]
        areas = [aubc(r["labels"], r["test_accuracy"]) for r in runs]
        final = [r["test_accuracy"][-1] for r in runs]
        query = statistics.mean(statistics.mean(r["query_s"][1:]) for r in runs)
        train_s = [statistics.mean(r["train_s"]) for r in runs if "train_s" in r]
        train_s = f"{statistics.mean(train_s):.1f}" if train_s else "–"
        std = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append(f"| {name} ({len(runs)} seeds) | {reach[0]} | {reach[1]} | "
                     f"{statistics.mean(areas):.3f} ± {std(areas):.3f} | "
                     f"{statistics.mean(final):.3f} ± {std(final):.3f} | {query:.1f} | "
                     f"{train_s} |")
    return "\n".join(lines)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (a temp file per process, then a rename), so
    concurrent benchmark processes never leave a half-written result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


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
