"""CIFAR-10 learning curves under jaxal's CIFAR-10 protocol (the CIFAR-10 issue's benchmark).

    python benchmarks/cifar10_curves.py curves --data-dir ../shared/data/cifar10-standin/tfds
        [--seeds 0 1] [--methods random margin entropy badge ll-laplace-entropy] [--table-only]
    python benchmarks/cifar10_curves.py ceiling --data-dir ...
    python benchmarks/cifar10_curves.py round --data-dir ...     # needs a quiet machine

On these machines only the *CIFAR-10 stand-in* exists (a lossy JPEG copy of CIFAR-10, see
``../shared/README.md``): every figure this script writes says so, and none of them is a
CIFAR-10 result.

``curves``: ``run_experiment`` per method and seed with the protocol of
``jaxal.config.PROTOCOLS["cifar10"]`` untouched: 1,000 balanced initial labels, 1,000 a
round, 10 rounds (1,000 ... 11,000 labels), the seed CNN trained from scratch by epochs
with random crop and flip; the pool is the 49,000 training images outside the validation
split. All methods of a seed share the initial labels, split and initial weights. Methods:
random, margin, entropy (plugin), BADGE, and the Bayesian acquisition that measured best
on MNIST at one network's training cost (``benchmarks/posterior_curves.py``: last-layer
Laplace, λ by validation NLL, probit predictive, entropy; the deep ensemble measured higher
there but trains 5 networks a round, out of reach on 2 cores). Reported: test accuracy at
2k / 5k / 10k labels (mean ± std over seeds), AUBC (trapezoid over 1k-11k, mean ± std),
seconds per round for training / query / posterior (indicative unless the machine was
quiet). Resumable: finished runs in ``results/cifar10_curves.json``, a killed run resumes
from ``results/curves/cifar10-<method>-seed<k>/``.

``ceiling``: the seed CNN trained with the protocol's schedule on the whole pool (one fit,
no queries): the accuracy that shows the schedule trains properly.

``round``: the wall time of one whole AL round at 10,000 labels (training, posterior,
query of 1,000 from the 39,000 left, test and validation evaluation) for margin and for the
Bayesian method, compile included and apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from acquisition import aubc, curve_record, write_json
from machine import cpu_info, describe

from jaxal.config import LaplaceConfig, describe_protocol, protocol_of
from jaxal.experiment import ExperimentConfig, run_experiment
from jaxal.loop import ALConfig
from jaxal.runtime import configure_cpu

RESULTS = Path(__file__).parent / "results"
DATASET = "cifar10"
STAND_IN = "CIFAR-10 stand-in (lossy JPEG copy; not CIFAR-10 results)"
BUDGETS = (2000, 5000, 10000)

METHODS = {
    "random": {"acquisition": "random"},
    "margin": {"acquisition": "margin"},
    "entropy": {"acquisition": "entropy"},
    "badge": {"acquisition": "badge"},
    "ll-laplace-entropy": {"acquisition": "entropy", "posterior": "laplace",
                           "predictive": "probit", "laplace": LaplaceConfig(prior_fit="val-nll")},
    "ll-laplace-bald": {"acquisition": "bald", "posterior": "laplace", "predictive": "mc",
                        "laplace": LaplaceConfig(prior_fit="val-nll")},
}
DEFAULT_METHODS = ["random", "margin", "entropy", "badge", "ll-laplace-entropy"]


def experiment(method: str, seed: int, data_dir: str | None, **al) -> ExperimentConfig:
    """The protocol's run of ``method`` (``al`` overrides fields, for ``round`` only)."""
    p = protocol_of(DATASET)
    config = ALConfig(rounds=p.rounds, query_size=p.query_size,
                      init_per_class=p.init_per_class, train=p.train, **METHODS[method])
    return ExperimentConfig(dataset=DATASET, seed=seed, data_dir=data_dir,
                            al=config._replace(**al),
                            from_protocol=("rounds", "query_size", "init_per_class", "train"))


def curves(args) -> dict:
    out = RESULTS / "cifar10_curves.json"
    setting = {"protocol": describe_protocol(DATASET), "data": STAND_IN}
    result = {"setting": setting, "runs": {}}
    if out.exists() and (old := json.loads(out.read_text()))["setting"] == setting:
        result["runs"] = old["runs"]
    if args.table_only:
        return result
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}-seed{seed}"
            if key in result["runs"]:
                continue
            print(f"== {key}", flush=True)
            start = time.perf_counter()
            _, infos = run_experiment(experiment(method, seed, args.data_dir),
                                      RESULTS / "curves" / f"cifar10-{key}", progress=None)
            result["runs"][key] = {**curve_record(infos),
                                   "seconds": time.perf_counter() - start,
                                   "machine": describe(cpu_info())}
            # Other processes may run other methods into the same file: merge, ours win.
            if out.exists() and (old := json.loads(out.read_text()))["setting"] == setting:
                result["runs"] = {**old["runs"], **result["runs"]}
            write_json(out, result)
    return result


def _runs(result: dict, method: str, seeds) -> list[dict]:
    return [r for s in seeds if (r := result["runs"].get(f"{method}-seed{s}"))]


def _mean_std(values) -> str:
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {std:.3f}" if len(values) > 1 else \
        f"{values[0]:.3f}"


def table(result: dict, seeds, methods) -> str:
    lines = [f"{STAND_IN}. Protocol: {result['setting']['protocol']}; pool 49,000, test "
             "10,000. Accuracy: test set, mean ± std over the seeds run (one seed: no "
             "spread). AUBC: trapezoid over 1,000-11,000 labels / range. s/round: mean over "
             "rounds 1-10, compilation in round 0 excluded (indicative: runs shared the 2 "
             "cores).", "",
             "| method | seeds | " + " | ".join(f"acc @ {b:,}" for b in BUDGETS) +
             " | final acc (11k) | AUBC | train s | query s | posterior s |",
             "|---|---|" + "---|" * (len(BUDGETS) + 5)]
    for method in methods:
        runs = _runs(result, method, seeds)
        if not runs:
            continue
        at = [_mean_std(r["test_accuracy"][r["labels"].index(b)] for r in runs)
              for b in BUDGETS]
        per_round = lambda key, runs=runs: statistics.mean(
            statistics.mean(r[key][1:]) for r in runs)
        lines.append(
            f"| {method} | {len(runs)} | " + " | ".join(at) +
            f" | {_mean_std(r['test_accuracy'][-1] for r in runs)} | "
            f"{_mean_std(aubc(r['labels'], r['test_accuracy']) for r in runs)} | "
            f"{per_round('train_s'):.0f} | {per_round('query_s'):.1f} | "
            f"{per_round('posterior_s'):.1f} |")
    return "\n".join(lines)


def figure(result: dict, seeds, methods, path: Path) -> None:
    """Accuracy vs labels in the literature's form: linear labels axis up to the budget,
    mean over seeds with ± 1 std shaded, the protocol in the title."""
    import matplotlib
    matplotlib.use("Agg")   # no display; this script owns its figure
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for method in methods:
        runs = _runs(result, method, seeds)
        if not runs:
            continue
        labels = np.asarray(runs[0]["labels"])
        acc = np.asarray([r["test_accuracy"] for r in runs])
        (line,) = ax.plot(labels, acc.mean(0), "--" if method == "random" else "-",
                          marker=".", label=f"{method} ({len(runs)} seed"
                          f"{'s' if len(runs) > 1 else ''})")
        ax.fill_between(labels, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0),
                        color=line.get_color(), alpha=0.12)
    ax.set(xlabel="labelled images", ylabel="test accuracy",
           title=f"{result['setting']['protocol']}\n{STAND_IN}")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ceiling(args) -> None:
    """One fit with the protocol's schedule on every pool image; test accuracy."""
    import jax

    from jaxal.experiment import load_split, to_device
    from jaxal.loop import make_learner
    from jaxal.model import build_model
    from jaxal.train import training_steps

    config = experiment("random", 0, args.data_dir, rounds=0)
    split = load_split(config)
    data = to_device(split)
    learner = make_learner(build_model(DATASET, split.num_classes, config.al), config.al,
                           split.pool_x.shape[1:], split.num_classes)
    labelled = jax.numpy.ones(split.pool_x.shape[0], bool)
    start = time.perf_counter()
    params, _ = jax.block_until_ready(learner.train(
        jax.random.key(0), params=learner.init(jax.random.key(1)), x_pool=data.pool_x,
        y_pool=data.pool_y, labelled=labelled))
    seconds = time.perf_counter() - start
    posterior = learner.fit(jax.random.key(2), params, data.pool_x, data.pool_y, labelled,
                            data.val_x, data.val_y)   # the plugin: the MAP itself
    accuracy = float(learner.evaluate(jax.random.key(3), posterior, data.test_x,
                                      data.test_y)[1])
    row = {"labels": int(labelled.sum()), "accuracy": accuracy, "train_s": seconds,
           "steps": training_steps(config.al.train, int(labelled.sum())),
           "machine": describe(cpu_info()), "protocol": describe_protocol(DATASET)}
    _merge("ceiling", row)
    print(f"{STAND_IN}: whole pool, {row['labels']:,} labels, {row['steps']} steps: test "
          f"accuracy {accuracy:.3f}, {seconds:.0f} s training (compile included)")


def round_time(args) -> None:
    """One round at 10,000 labels, run twice: the first includes compilation."""
    import jax

    from jaxal.experiment import load_split, to_device
    from jaxal.loop import al_round, init_state, make_learner
    from jaxal.model import build_model

    rows = {}
    for method in args.methods:
        config = experiment(method, 0, args.data_dir, init_per_class=1000, rounds=1)
        split = load_split(config)
        data = to_device(split)
        learner = make_learner(build_model(DATASET, split.num_classes, config.al), config.al,
                               split.pool_x.shape[1:], split.num_classes)
        state, _ = init_state(jax.random.key(0), learner, data)
        seconds = []
        for r in range(2):
            start = time.perf_counter()
            _, info = al_round(jax.random.key(r + 1), state, learner, data)
            jax.block_until_ready(info.metrics.test_accuracy)
            seconds.append(time.perf_counter() - start)
        t = info.timings
        rows[method] = {"labels": int(state.labelled.sum()), "first_s": seconds[0],
                        "round_s": seconds[1], "train_s": t.train, "query_s": t.score,
                        "posterior_s": t.posterior}
        print(method, rows[method], flush=True)
    _merge("round", {"machine": describe(cpu_info()), "rows": rows})


def _merge(key: str, value) -> None:
    path = RESULTS / "cifar10_timing.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**old, key: value})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("curves", "ceiling", "round"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    p.add_argument("--methods", nargs="*", default=None, choices=sorted(METHODS))
    p.add_argument("--table-only", action="store_true", help="rewrite the table, run nothing")
    args = p.parse_args()
    configure_cpu()
    if args.mode == "ceiling":
        return ceiling(args)
    if args.mode == "round":
        args.methods = args.methods or ["margin", "ll-laplace-entropy"]
        return round_time(args)
    args.methods = args.methods or DEFAULT_METHODS
    result = curves(args)
    every = [m for m in METHODS if any(k.startswith(f"{m}-seed") for k in result["runs"])]
    seeds = sorted({int(k.rsplit("seed", 1)[1]) for k in result["runs"]})
    text = table(result, seeds, every)
    (RESULTS / "cifar10_curves.md").write_text(text + "\n")
    figure(result, seeds, every, RESULTS / "cifar10_curves.png")
    print(text)


if __name__ == "__main__":
    main()
