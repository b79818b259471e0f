"""CIFAR-10 learning curves under jaxal's CIFAR-10 protocol (the CIFAR-10 issue's benchmark).

    python benchmarks/cifar10_curves.py curves --data-dir ../shared/data/cifar10-standin/tfds
        [--seeds 0 1] [--methods random margin entropy badge ll-laplace-entropy] [--table-only]
    python benchmarks/cifar10_curves.py ceiling --data-dir ...
    python benchmarks/cifar10_curves.py round --data-dir ...     # needs a quiet machine
    python benchmarks/cifar10_curves.py pool --data-dir ... --mnist-data-dir ../shared/data/tfds

On these machines only the *CIFAR-10 stand-in* exists (a lossy JPEG copy of CIFAR-10, see
``../shared/README.md``): every figure this script writes says so, and none of them is a
CIFAR-10 result.

``curves``: ``jaxal.apps.comparison.run_comparison`` over methods x seeds with the protocol of
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
from ``results/curves/cifar10_curves/runs/<method>-seed<k>/``.

``ceiling``: the seed CNN trained with the protocol's schedule on the whole pool (one fit,
no queries): the accuracy that shows the schedule trains properly.

``round``: the wall time of one whole AL round at 10,000 labels (training, posterior,
query of 1,000 from the 39,000 left, test and validation evaluation) for margin and for the
Bayesian method (round 0 on 10,000 labels compiles the training first).

``layers``: where the per-image difference of ``pool`` goes: each stage of the seed CNN's
forward pass (conv block 0-2, dense, head) jitted alone on a 4,096-image chunk of MNIST's
shape and of CIFAR-10's, interleaved, median of 5; µs/image and XLA's FLOPs per stage.

``noise``: the protocol's fit repeated (``--fits``, other training keys, same initial
weights) on one uniform labelled set of each ``--labels`` size: the spread of test
accuracy that a round carries whatever was queried.

``pool``: one query of 1,000 over the whole CIFAR-10 pool (49,000) against one of 10 over
MNIST's (59,000), each in a fresh process after a short fit on the protocol's initial
labels: margin (one forward pass), BADGE (gradient embeddings + k-means++ seeding) and
BALD with last-layer Laplace (100 samples). Per image: seconds (median of 3, compile
apart), the CNN's forward FLOPs (XLA's cost analysis), and the peak memory the query adds
to the process (VmHWM after it minus before it, the data already loaded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
from common import RESULTS, STAND_IN, read_result, run_curves, runs_of, write_json
from machine import cpu_info, describe
from tables import POOL_METHODS, write_table
from timing import time_calls

from jaxal.apps.comparison import Run
from jaxal.apps.experiment import ExperimentConfig
from jaxal.config import LaplaceOptions, describe_protocol, protocol_of
from jaxal.loop import ALConfig
from jaxal.runtime import configure_cpu

DATASET = "cifar10"
BUDGETS = (2000, 5000, 10000)

METHODS = {
    "random": {"acquisition": "random"},
    "margin": {"acquisition": "margin"},
    "entropy": {"acquisition": "entropy"},
    "badge": {"acquisition": "badge"},
    "ll-laplace-entropy": {"acquisition": "entropy", "posterior": "laplace",
                           "predictive": "probit",
                           "posterior_options": LaplaceOptions(prior_fit="val-nll")},
    "ll-laplace-bald": {"acquisition": "bald", "posterior": "laplace", "predictive": "mc",
                        "posterior_options": LaplaceOptions(prior_fit="val-nll")},
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
    """Run (or resume) ``--methods`` x ``--seeds`` into ``results/cifar10_curves.json``;
    the file also holds what its table needs (the methods' order, the budgets)."""
    out = RESULTS / "cifar10_curves.json"
    setting = {"protocol": describe_protocol(DATASET), "data": STAND_IN}
    runs = [Run(method, seed, experiment(method, seed, args.data_dir))
            for seed in args.seeds for method in args.methods]
    result = (read_result(out, setting) if args.table_only else
              run_curves(out, setting, runs, RESULTS / "curves" / "cifar10_curves",
                         extra={"machine": describe(cpu_info())}))
    result["table"] = {"methods": list(METHODS), "budgets": list(BUDGETS)}
    write_json(out, result)
    return result


def figure(result: dict, seeds, methods, path: Path) -> None:
    """Accuracy vs labels in the literature's form: linear labels axis up to the budget,
    mean over seeds with ± 1 std shaded, the protocol in the title."""
    import matplotlib
    matplotlib.use("Agg")   # no display; this script owns its figure
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for method in methods:
        runs = runs_of(result, method, seeds)
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

    from jaxal.apps.experiment import load_split, to_device
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


def fit_noise(args) -> None:
    """Test accuracy of the protocol's fit repeated on one labelled set: a uniform
    ``labels`` of the pool, the same initial weights, ``--fits`` training keys (minibatches,
    augmentation, dropout). Its spread is the noise one round's accuracy carries whatever
    the query was."""
    import jax

    from jaxal.apps.experiment import load_split, to_device
    from jaxal.loop import make_learner
    from jaxal.model import build_model

    config = experiment("random", 0, args.data_dir, rounds=0)
    split = load_split(config)
    data = to_device(split)
    learner = make_learner(build_model(DATASET, split.num_classes, config.al), config.al,
                           split.pool_x.shape[1:], split.num_classes)
    init = learner.init(jax.random.key(1))
    rows = {}
    for labels in args.labels:
        chosen = jax.random.choice(jax.random.key(labels), split.pool_x.shape[0], (labels,),
                                   replace=False)
        labelled = jax.numpy.zeros(split.pool_x.shape[0], bool).at[chosen].set(True)
        accuracies = []
        for fit in range(args.fits):
            params, _ = learner.train(jax.random.key(100 + fit), params=init,
                                      x_pool=data.pool_x, y_pool=data.pool_y,
                                      labelled=labelled)
            posterior = learner.fit(jax.random.key(2), params, data.pool_x, data.pool_y,
                                    labelled, data.val_x, data.val_y)
            accuracies.append(float(learner.evaluate(jax.random.key(3), posterior,
                                                     data.test_x, data.test_y)[1]))
            print(labels, fit, accuracies[-1], flush=True)
        rows[str(labels)] = accuracies
    _merge("fit_noise", {"machine": describe(cpu_info()), "rows": rows})


def round_time(args) -> None:
    """One AL round from 10,000 labels (query 1,000, train on 11,000, posterior,
    evaluation), after round 0 has compiled the training."""
    import jax

    from jaxal.apps.experiment import load_split, to_device
    from jaxal.loop import al_round, init_state, make_learner
    from jaxal.model import build_model
    from jaxal.train import training_steps

    rows = {}
    for method in args.methods:
        config = experiment(method, 0, args.data_dir, init_per_class=1000, rounds=1)
        split = load_split(config)
        data = to_device(split)
        learner = make_learner(build_model(DATASET, split.num_classes, config.al), config.al,
                               split.pool_x.shape[1:], split.num_classes)
        state, _ = init_state(jax.random.key(0), learner, data)
        # Round 0 compiled the training step (its shapes are the run's, fixed); the
        # round's own compilation is the query's and the new labelled-set gather's.
        start = time.perf_counter()
        _, info = al_round(jax.random.key(1), state, learner, data)
        seconds = time.perf_counter() - start
        t = info.timings
        rows[method] = {"labels": int(state.labelled.sum()), "round_s": seconds,
                        "train_s": t.train, "query_s": t.score, "posterior_s": t.posterior,
                        "eval_s": t.evaluate,
                        "train_steps": training_steps(config.al.train, info.num_labels)}
        print(method, rows[method], flush=True)
    _merge("round", {"machine": describe(cpu_info()), "rows": rows})


def pool_pass(args) -> None:
    """Each (dataset, method) in a fresh process (``pool-one``), so its peak memory is its
    own; then the table."""
    import os
    import subprocess
    import sys

    def one(dataset, data_dir, method, src=None):
        env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
        out = subprocess.run(
            [sys.executable, __file__, "pool-one", "--dataset", dataset, "--methods",
             method, "--data-dir", data_dir, "--chunk-size", str(args.chunk_size or 0)],
            capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = {}
    for dataset, data_dir in (("mnist", args.mnist_data_dir), (DATASET, args.data_dir)):
        for method in POOL_METHODS:
            row = one(dataset, data_dir, method)
            if args.reference_src:   # the previous version's jaxal, in the same sitting
                ref = one(dataset, data_dir, method, args.reference_src)
                row |= {"reference_us_per_image": ref["us_per_image"],
                        "reference_peak_mb": ref["peak_mb"]}
            rows[f"{dataset}/{method}"] = row
            print(dataset, method, row, flush=True)
    key = f"pool-chunk{args.chunk_size}" if args.chunk_size else "pool"
    reference = {}
    if args.reference_src:     # the table names it
        reference["reference"] = subprocess.run(
            ["git", "-C", args.reference_src, "log", "-1", "--format=%h %s"],
            capture_output=True, text=True).stdout.strip()
    _merge(key, {"machine": describe(cpu_info()), **reference, "rows": rows})
    print(write_table(f"cifar10_{key}"))


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pool_one(args) -> None:
    """One (dataset, method) of ``pool``: prints its JSON row last."""
    import jax

    from jaxal.apps.experiment import load_split, to_device
    from jaxal.config import TrainConfig
    from jaxal.loop import init_state, make_learner
    from jaxal.model import build_model

    method = args.methods[0]
    p = protocol_of(args.dataset)
    # The fit only has to give a posterior to query with: a few steps.
    al = ALConfig(rounds=1, query_size=p.query_size, init_per_class=p.init_per_class,
                  train=TrainConfig(steps=20, batch_size=32), **METHODS[method])
    if args.chunk_size:
        al = al._replace(chunk_size=args.chunk_size)
    config = ExperimentConfig(dataset=args.dataset, seed=0, data_dir=args.data_dir, al=al)
    split = load_split(config)
    data = to_device(split)
    model = build_model(args.dataset, split.num_classes, al)
    learner = make_learner(model, al, split.pool_x.shape[1:], split.num_classes)
    state, _ = init_state(jax.random.key(0), learner, data)
    flops = jax.jit(lambda x: model.apply(state.params, x)).lower(
        data.pool_x[:1]).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops)["flops"]
    before = _peak_mb()
    query = lambda: learner.query(jax.random.key(1), state.posterior, data.pool_x,
                                  state.labelled)
    timed = time_calls(query, 3)
    n = int(split.pool_x.shape[0])
    print(json.dumps({"pool": n, "query_size": al.query_size, "forward_flops": flops,
                      "us_per_image": 1e6 * timed.seconds / n,
                      "compile_s": timed.first_s - timed.seconds,
                      "peak_mb": _peak_mb() - before}))


def layers(args) -> None:
    """Per-stage forward time of the seed CNN, MNIST's shape against CIFAR-10's."""
    import jax
    import jax.numpy as jnp

    from jaxal.model import conv_padded_channels, relu_max_pool_2x2

    batch, repeats = 4096, 5
    key = jax.random.key(0)

    numbers = ("NHWC", "HWIO", "NHWC")

    def conv_block(x, w, b, conv):
        numbers_ = jax.lax.conv_dimension_numbers(x.shape, w.shape, numbers)
        return relu_max_pool_2x2(conv(x, w, (1, 1), "SAME", dimension_numbers=numbers_) + b)

    def stages(shape):
        """[(name, fn, input)] of the forward pass on ``shape`` images, inputs precomputed."""
        out, x = [], jax.random.normal(key, (batch, *shape))
        for i, c in enumerate((32, 64, 64)):
            w = jax.random.normal(key, (3, 3, x.shape[-1], c)) * 0.1
            name = f"conv block {i} ({x.shape[1]}x{x.shape[2]}x{x.shape[3]}->{c})"
            if i == 0:   # XLA's convolution as it is, then as jaxal runs it (padded)
                out.append((f"{name}, unpadded", jax.jit(partial(
                    conv_block, w=w, b=jnp.zeros(c), conv=jax.lax.conv_general_dilated)), x))
            fn = jax.jit(partial(conv_block, w=w, b=jnp.zeros(c),
                                 conv=conv_padded_channels()))
            out.append((name, fn, x))
            x = fn(x)
        x = x.reshape(batch, -1)
        for name, width in ((f"dense ({x.shape[1]}->128)", 128), ("head (128->10)", 10)):
            w = jax.random.normal(key, (x.shape[1], width)) * 0.01
            fn = jax.jit(lambda x, w=w: jax.nn.relu(x @ w))
            out.append((name, fn, x))
            x = fn(x)
        return out

    shapes = {"mnist": (28, 28, 1), DATASET: (32, 32, 3)}
    built = {d: stages(s) for d, s in shapes.items()}
    times = {d: [[] for _ in built[d]] for d in shapes}
    flops = {d: [] for d in shapes}
    for d in shapes:
        for fn, x in ((fn, x) for _, fn, x in built[d]):
            cost = fn.lower(x).compile().cost_analysis()
            flops[d].append((cost[0] if isinstance(cost, list) else cost)["flops"] / batch)
            jax.block_until_ready(fn(x))
    for d in shapes:   # FLOPs of the convolution, not of its zero channels
        for j, (name, _, _) in enumerate(built[d]):
            if name.endswith("unpadded"):
                flops[d][j + 1] = flops[d][j]
    for _ in range(repeats):   # interleaved, so a load change hits both shapes alike
        for d in shapes:
            for j, (_, fn, x) in enumerate(built[d]):
                times[d][j].append(time_calls(partial(fn, x), 1).times_s[0])
    rows = []
    for j in range(len(built["mnist"])):
        m, c = (1e6 * statistics.median(times[d][j]) / batch for d in shapes)
        rows.append({"mnist": built["mnist"][j][0], "cifar10": built[DATASET][j][0],
                     "mnist_us": m, "cifar10_us": c, "mnist_flops": flops["mnist"][j],
                     "cifar10_flops": flops[DATASET][j]})
    _merge("layers", {"machine": describe(cpu_info()), "rows": rows,
                      "train_step_ms": train_step_ms()})


def train_step_ms(repeats: int = 5, steps: int = 10) -> dict:
    """ms per training step of the seed CNN on a CIFAR-10-shaped minibatch of 128 (the
    protocol's), the first conv padded (as jaxal runs it on CPU) and not (the table of
    ``jaxal.batching.CPU_PADDED_CHANNELS`` emptied); interleaved, median of ``repeats``."""
    import jax
    import jax.numpy as jnp

    from jaxal import batching
    from jaxal import model as model_lib
    from jaxal.config import TrainConfig
    from jaxal.train import make_trainer

    model = model_lib.cnn(10)
    params = model_lib.init_params(model, jax.random.key(0), (32, 32, 3))
    x = jax.random.normal(jax.random.key(1), (1024, 32, 32, 3))
    y, idx = jnp.arange(1024) % 10, jnp.arange(1024)
    padded = dict(batching.CPU_PADDED_CHANNELS)
    steps_of = {}
    for name, table in (("padded", padded), ("unpadded", {})):
        batching.CPU_PADDED_CHANNELS.clear()
        batching.CPU_PADDED_CHANNELS.update(table)
        trainer = make_trainer(model, TrainConfig(batch_size=128, augment=True), 1024)
        step = jax.jit(trainer.step)
        state = trainer.init(params)
        jax.block_until_ready(step(jax.random.key(0), state, x, y, idx, jnp.int32(1024)))
        steps_of[name] = (step, state)
    batching.CPU_PADDED_CHANNELS.clear()
    batching.CPU_PADDED_CHANNELS.update(padded)
    times = {name: [] for name in steps_of}
    for _ in range(repeats):
        for name, (step, state) in steps_of.items():
            start = time.perf_counter()
            for t in range(steps):
                state = step(jax.random.key(t), state, x, y, idx, jnp.int32(1024))[0]
            jax.block_until_ready(state)
            times[name].append(1e3 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def _merge(key: str, value) -> None:
    """``value`` into ``results/cifar10_timing.json`` as ``key``; its table rewritten."""
    path = RESULTS / "cifar10_timing.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**old, key: value})
    print(write_table("cifar10_timing"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("curves", "ceiling", "round", "pool", "pool-one",
                                        "layers", "noise"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--mnist-data-dir", default=None, help="pool: MNIST's TFDS data dir")
    p.add_argument("--dataset", default=DATASET, help="pool-one only")
    p.add_argument("--reference-src", default=None,
                   help="pool: also time the jaxal found in this source dir (PYTHONPATH), "
                        "e.g. a worktree of the previous version")
    p.add_argument("--chunk-size", type=int, default=0,
                   help="pool: points per pool-pass chunk (0: the run's default, 4096)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    p.add_argument("--methods", nargs="*", default=None, choices=sorted(METHODS))
    p.add_argument("--labels", type=int, nargs="*", default=[2000, 5000],
                   help="noise: labelled-set sizes")
    p.add_argument("--fits", type=int, default=3, help="noise: fits per labelled set")
    p.add_argument("--table-only", action="store_true", help="rewrite the table, run nothing")
    args = p.parse_args()
    configure_cpu()
    if args.mode == "ceiling":
        return ceiling(args)
    if args.mode == "pool":
        return pool_pass(args)
    if args.mode == "pool-one":
        return pool_one(args)
    if args.mode == "layers":
        return layers(args)
    if args.mode == "noise":
        return fit_noise(args)
    if args.mode == "round":
        args.methods = args.methods or ["margin", "ll-laplace-entropy"]
        return round_time(args)
    args.methods = args.methods or DEFAULT_METHODS
    result = curves(args)
    every = [m for m in METHODS if any(k.startswith(f"{m}-seed") for k in result["runs"])]
    seeds = sorted({int(k.rsplit("seed", 1)[1]) for k in result["runs"]})
    text = write_table("cifar10_curves")
    figure(result, seeds, every, RESULTS / "cifar10_curves.png")
    print(text)


if __name__ == "__main__":
    main()
