"""Speed of one AL round on real MNIST: training and pool-scoring throughput, full default run.

    python benchmarks/al_round.py [--data-dir ../shared/data/tfds] [--skip-run]

Writes ``benchmarks/results/al_round.json`` and prints a markdown table. Compile time is
measured apart (first call minus steady state, and XLA's own compile events); the full run
also counts compilations after round 1, which must be zero.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxal.acquisition import ACQUISITIONS, score_pool
from jaxal.experiment import ExperimentConfig, load_split, run_experiment, to_device
from jaxal.loop import ALConfig
from jaxal.model import cnn, init_params
from jaxal.posterior import PointMass
from jaxal.predictive import plugin_predictive
from jaxal.runtime import configure_cpu
from jaxal.train import TrainConfig, labelled_indices, make_trainer

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: _compiles.append(secs) if event == COMPILE_EVENT else None)


def time_calls(fn, repeats: int) -> tuple[float, list[float]]:
    """(first call incl. compile, steady-state seconds of each further call)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, times


def bench_training(data, batch_size: int, steps: int) -> dict:
    model = cnn(10)
    trainer = make_trainer(model, TrainConfig(batch_size=batch_size), capacity=220)
    step = jax.jit(trainer.step)
    params = init_params(model, jax.random.key(0), (28, 28, 1))
    labelled = jnp.zeros(data.pool_y.shape, bool).at[:200].set(True)
    idx, n = labelled_indices(labelled), labelled.sum()
    state = trainer.init(params)

    def run_steps():
        s = state
        for t in range(steps):
            s, _ = step(jax.random.key(t), s, data.pool_x, data.pool_y, idx, n)
        return s

    start = time.perf_counter()
    jax.block_until_ready(step(jax.random.key(0), state, data.pool_x, data.pool_y, idx, n))
    first = time.perf_counter() - start
    _, times = time_calls(run_steps, repeats=3)
    per_step = statistics.median(times) / steps
    return {"batch_size": batch_size, "images_per_s": batch_size / per_step,
            "step_ms": 1e3 * per_step, "compile_s": first - per_step}


def bench_scoring(data, chunk_size: int) -> dict:
    model = cnn(10)
    posterior = PointMass(init_params(model, jax.random.key(0), (28, 28, 1)))

    @jax.jit
    def scores(key, posterior, x):
        predict = lambda k, xc: plugin_predictive(k, model, posterior, xc)
        return score_pool(key, predict, ACQUISITIONS["entropy"].score, x, chunk_size)

    first, times = time_calls(lambda: scores(jax.random.key(0), posterior, data.pool_x), 3)
    t = statistics.median(times)
    n = data.pool_x.shape[0]
    return {"chunk_size": chunk_size, "pool": n, "seconds": t, "images_per_s": n / t,
            "compile_s": first - t}


def bench_default_run(data_dir: str | None) -> dict:
    config = ExperimentConfig(dataset="mnist", data_dir=data_dir, al=ALConfig())
    marks = []

    def progress(line):
        marks.append((time.perf_counter(), len(_compiles), sum(_compiles)))
        print("   ", line, flush=True)

    start = time.perf_counter()
    _, infos = run_experiment(config, out_dir=None, progress=progress)
    wall = time.perf_counter() - start
    compiles_after_round1 = marks[-1][1] - marks[1][1]
    final = infos[-1].metrics
    return {
        "wall_s": wall, "xla_compile_s_total": marks[-1][2],
        "compiles_after_round1": compiles_after_round1,
        "rounds": len(infos) - 1, "final_labels": infos[-1].num_labels,
        "final_test_accuracy": final.test_accuracy,
        "test_accuracy": [i.metrics.test_accuracy for i in infos],
        "seconds_per_stage": {k: sum(getattr(i.timings, k) for i in infos)
                              for k in ("score", "train", "posterior", "evaluate")},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR"))
    p.add_argument("--skip-run", action="store_true", help="skip the full 20-round run")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "al_round.json"))
    p.add_argument("--no-cpu-settings", action="store_true",
                   help="run without jaxal.runtime.configure_cpu()")
    args = p.parse_args()
    if not args.no_cpu_settings:
        configure_cpu()   # as jaxal's CLIs run; before JAX's first computation

    split = load_split(ExperimentConfig(dataset="mnist", data_dir=args.data_dir))
    data = to_device(split)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "backend": jax.default_backend(), "jax": jax.__version__},
              "training": [bench_training(data, b, 100) for b in (32, 64, 128)],
              "scoring": [bench_scoring(data, c) for c in (1024, 2048, 4096)]}
    if not args.skip_run:
        result["default_run"] = bench_default_run(args.data_dir)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    lines = ["| measurement | value | compile (s) |", "|---|---|---|"]
    for t in result["training"]:
        lines.append(f"| training, batch {t['batch_size']} | {t['images_per_s']:,.0f} images/s "
                     f"| {t['compile_s']:.1f} |")
    for s in result["scoring"]:
        lines.append(f"| pool scoring ({s['pool']:,} images, chunk {s['chunk_size']}) | "
                     f"{s['images_per_s']:,.0f} images/s ({s['seconds']:.2f} s) | "
                     f"{s['compile_s']:.1f} |")
    if "default_run" in result:
        r = result["default_run"]
        lines.append(f"| default run ({r['rounds']} rounds, {r['final_labels']} labels) | "
                     f"{r['wall_s']:.0f} s wall, test accuracy {r['final_test_accuracy']:.4f} "
                     f"| {r['xla_compile_s_total']:.1f} (XLA) |")
        lines.append(f"| compilations after round 1 | {r['compiles_after_round1']} | |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
