"""Speed of one AL round on real MNIST, against PyTorch measured in the same sitting.

    python benchmarks/al_round.py [--data-dir ../shared/data/tfds] \
        [--torch-python /tmp/lt-venv/bin/python] [--skip-run]

jaxal's training throughput (batch 32/64/128), pool-scoring throughput (59,000 images,
several chunk sizes), one whole AL round with the plugin posterior and entropy (score the
pool, train 500 steps, evaluate) and the default 20-round MNIST run. With
``--torch-python`` (a venv with torch, see ``benchmarks/README.md``) the same seed CNN is
timed in PyTorch by ``benchmarks/torch_reference.py`` before and after jaxal's
measurements, so drift on a noisy machine shows, and jaxal/PyTorch ratios are printed,
each against the fastest PyTorch figure (best layout and chunk, before or after).

``--training-pairs K`` times training alone, alternating PyTorch and jaxal K times, and
reports the median of the paired ratios: on a shared machine whose speed drifts by 20-30%
within minutes, the before/after figures of one sitting can straddle such a drift.

Writes ``benchmarks/results/al_round.json`` and a markdown table beside it, with the CPU
model and vector extensions, core count and versions. Compile time is measured apart:
first call minus steady state for each measurement, and for the default run XLA's compile
time per jitted function (``compile_s_by_function``) and the number of compilations after
round 1, which must be zero.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
from machine import cpu_info, describe
from tables import al_round_pairs
from timing import time_calls

from jaxal import batching, conv
from jaxal.acquisition import ACQUISITIONS, score_pool
from jaxal.apps.experiment import ExperimentConfig, load_split, run_experiment, to_device
from jaxal.loop import ALConfig, al_round, init_state, make_learner
from jaxal.model import cnn, init_params
from jaxal.posteriors.plugin import PointMass
from jaxal.predictive import plugin_predictive
from jaxal.runtime import configure_cpu
from jaxal.train import TrainConfig, labelled_indices, make_trainer, train_map

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[tuple[str, float]] = []    # (jitted function, XLA compile seconds)
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, fun_name="?", **kw:
        _compiles.append((fun_name, secs)) if event == COMPILE_EVENT else None)
ROOT = Path(__file__).resolve().parents[1]


def bench_training(data, batch_size: int, steps: int, kernel: str | None = None) -> dict:
    """Training throughput two ways: ``images_per_s`` through the library's own loop
    (``jaxal.train.train_map``: the step's key by its jitted ``fold_in``, the form
    ``batching.default_train_form`` picks), which is what a run trains with and what
    PyTorch's loop (``torch_reference.py``: its minibatch draw and Adam step each step)
    is set against; ``bare_step_images_per_s``, the jitted step called in a Python loop
    with an eager ``jax.random.key(t)`` per step, the figure this benchmark reported
    before (that key costs a dispatch a step that no jaxal run pays)."""
    model = cnn(10, conv_kernel=kernel)
    trainer = make_trainer(model, TrainConfig(batch_size=batch_size, steps=steps),
                           capacity=220)
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

    first = time_calls(lambda: step(jax.random.key(0), state, data.pool_x, data.pool_y,
                                    idx, n), 0).first_s
    per_step = time_calls(run_steps, repeats=3).seconds / steps
    jitted = trainer._replace(init=jax.jit(trainer.init), step=step,
                              labelled_nll=jax.jit(trainer.labelled_nll))
    fit = time_calls(lambda: train_map(jax.random.key(1), jitted, params, data.pool_x,
                                       data.pool_y, labelled)[0], repeats=3)
    per_fit_step = fit.seconds / steps
    return {"batch_size": batch_size, "conv": kernel or batching.conv_kernel(),
            "form": batching.default_train_form(trainer.conv), "steps": steps,
            "images_per_s": batch_size / per_fit_step, "step_ms": 1e3 * per_fit_step,
            "bare_step_images_per_s": batch_size / per_step,
            "bare_step_ms": 1e3 * per_step, "compile_s": first - per_step,
            # The first train_map call over a steady one: the loop form's program (or the
            # step's, already compiled above, in the Python form) and its helpers.
            "train_map_compile_s": fit.first_s - fit.seconds}


def bench_scoring(data, chunk_size: int, kernel: str | None = None) -> dict:
    model = cnn(10, conv_kernel=kernel)
    posterior = PointMass(init_params(model, jax.random.key(0), (28, 28, 1)))

    @jax.jit
    def scores(key, posterior, x):
        predict = lambda k, xc: plugin_predictive(k, model, posterior, xc)
        return score_pool(key, predict, ACQUISITIONS["entropy"].score, x, chunk_size)

    timed = time_calls(lambda: scores(jax.random.key(0), posterior, data.pool_x), 3)
    t = timed.seconds
    n = data.pool_x.shape[0]
    return {"chunk_size": chunk_size, "conv": kernel or batching.conv_kernel(), "pool": n,
            "seconds": t, "images_per_s": n / t, "compile_s": timed.first_s - t}


def bench_round(split, repeats: int) -> dict:
    """One whole AL round, plugin posterior and entropy, 500 steps of 32 (as the PyTorch
    reference's): score the 59,000-image pool and query 10, train, evaluate."""
    config = ALConfig(posterior="plugin", acquisition="entropy", predictive="plugin",
                      train=TrainConfig(steps=500, batch_size=32))
    data = to_device(split)
    learner = make_learner(cnn(split.num_classes), config, split.pool_x.shape[1:],
                           split.num_classes)
    state, _ = init_state(jax.random.key(0), learner, data)
    times = []
    for r in range(1 + repeats):
        start = time.perf_counter()
        state, info = al_round(jax.random.key(r + 1), state, learner, data)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[1:]), "first_call_s": times[0],
            "steps": 500, "batch_size": 32, "labelled": info.num_labels,
            "stages_s": dict(zip(("score", "train", "posterior", "evaluate"), info.timings,
                                 strict=True)),
            "test_accuracy": info.metrics.test_accuracy}


def torch_reference(python: str, threads: int, training_only: bool = False,
                    steps: int = 100) -> dict:
    """Run benchmarks/torch_reference.py in its own interpreter; its JSON (with
    ``training_only``: its training throughput alone, ``steps`` steps a measurement)."""
    extra = (["--skip-round", "--chunk-sizes", "--steps", str(steps)] if training_only
             else [])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        subprocess.run([python, str(ROOT / "benchmarks" / "torch_reference.py"),
                        "--threads", str(threads), "--out", str(out), *extra],
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def training_pairs(data, python: str, kernels, pairs: int, steps: int = 200) -> dict:
    """Training throughput on a machine whose speed drifts: ``pairs`` alternations of
    PyTorch's training (all layouts) and jaxal's (each kernel), PyTorch once more at the
    end; each jaxal figure is set against the mean of PyTorch's best layout just before
    and just after it, and the ratio reported is the median over the pairs."""
    torch_runs = [torch_reference(python, os.cpu_count(), True, steps)]
    jaxal_runs = []
    for _ in range(pairs):
        jaxal_runs.append([bench_training(data, b, steps, k) for b in (32, 64, 128)
                           for k in kernels])
        torch_runs.append(torch_reference(python, os.cpu_count(), True, steps))
    ratios = {}
    for i, rows in enumerate(jaxal_runs):
        for row in rows:
            around = [best(torch_runs[j]["training"], batch_size=row["batch_size"])
                      ["images_per_s"] for j in (i, i + 1)]
            ratios.setdefault(f"b{row['batch_size']}_{row['conv']}", []).append(
                {"jaxal": row["images_per_s"], "torch": statistics.mean(around),
                 "ratio": row["images_per_s"] / statistics.mean(around)})
    return {"steps": steps, "torch": torch_runs, "jaxal": jaxal_runs,
            "ratios": {k: {"median": statistics.median(r["ratio"] for r in v),
                           "pairs": v} for k, v in ratios.items()}}


def best(rows, key="images_per_s", **match):
    """The fastest row of ``rows`` whose fields equal ``match`` (None if there is none)."""
    rows = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(rows, key=lambda r: r[key]) if rows else None


def ratios(result: dict) -> dict:
    """jaxal / PyTorch for training (per batch size), pool scoring and the whole round,
    against PyTorch's fastest figure before or after jaxal's (best layout and chunk)."""
    refs = [result[k] for k in ("torch_before", "torch_after") if k in result]
    if not refs:
        return {}
    out = {}
    for t in result["training"]:
        ref = best([r for ref in refs for r in ref["training"]], batch_size=t["batch_size"])
        if ref:
            out[f"training_b{t['batch_size']}_{t['conv']}"] = {
                "jaxal": t["images_per_s"], "torch": ref["images_per_s"],
                "torch_layout": ref["layout"], "ratio": t["images_per_s"] / ref["images_per_s"]}
    ref = best([r for ref in refs for r in ref["scoring"]])
    for kernel in dict.fromkeys(r["conv"] for r in result["scoring"]):
        mine = best(result["scoring"], conv=kernel)
        out[f"scoring_{kernel}"] = {
            "jaxal": mine["images_per_s"], "jaxal_chunk": mine["chunk_size"],
            "torch": ref["images_per_s"], "torch_layout": ref["layout"],
            "torch_chunk": ref["chunk_size"], "ratio": mine["images_per_s"] / ref["images_per_s"]}
    if "round" in result and all("round" in ref for ref in refs):
        ref = min((r for ref in refs for r in ref["round"]), key=lambda r: r["seconds"])
        out["round"] = {"jaxal_s": result["round"]["seconds"], "torch_s": ref["seconds"],
                        "torch_layout": ref["layout"],
                        "ratio": ref["seconds"] / result["round"]["seconds"]}
    return out


def bench_default_run(data_dir: str | None, train: TrainConfig | None = None) -> dict:
    """The README's default run (``python -m jaxal.run --dataset mnist --acq entropy``),
    or the same with another training schedule."""
    al = ALConfig() if train is None else ALConfig(train=train)
    config = ExperimentConfig(dataset="mnist", data_dir=data_dir, al=al)
    marks = []
    first = len(_compiles)

    def progress(line):
        marks.append(len(_compiles))
        print("   ", line, flush=True)

    start = time.perf_counter()
    _, infos = run_experiment(config, out_dir=None, progress=progress)
    wall = time.perf_counter() - start
    compiles_after_round1 = marks[-1] - marks[1]
    by_function = defaultdict(lambda: {"count": 0, "total_s": 0.0, "max_s": 0.0})
    for name, secs in _compiles[first:]:
        entry = by_function[name]
        entry["count"] += 1
        entry["total_s"] += secs
        entry["max_s"] = max(entry["max_s"], secs)
    final = infos[-1].metrics
    return {
        "wall_s": wall, "xla_compile_s_total": sum(s for _, s in _compiles[first:]),
        "compile_s_by_function": dict(sorted(by_function.items(),
                                             key=lambda kv: -kv[1]["total_s"])),
        "train_config": config.al.train._asdict(),
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
    p.add_argument("--skip-round", action="store_true", help="skip the whole-round timing")
    p.add_argument("--torch-python", default=None,
                   help="python of a venv with torch: time the PyTorch reference "
                        "(benchmarks/torch_reference.py) before and after jaxal")
    p.add_argument("--epochs", type=float, default=None,
                   help="also time the default run trained by epochs (jaxal.train)")
    p.add_argument("--min-steps", type=int, default=TrainConfig().min_steps)
    p.add_argument("--max-steps", type=int, default=TrainConfig().max_steps)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "al_round.json"))
    p.add_argument("--conv-kernels", nargs="*", choices=batching.CONV_KERNELS, default=None,
                   help="time training and scoring on each of these convolution kernels "
                        "(default: the one jaxal.batching.conv_kernel() chooses; the round "
                        "and the default run always use that one)")
    p.add_argument("--training-pairs", type=int, default=0,
                   help="with --torch-python: time training only, alternating PyTorch "
                        "and jaxal this many times (paired ratios, for a machine whose "
                        "speed drifts); writes --out and its table, nothing else")
    p.add_argument("--no-cpu-settings", action="store_true",
                   help="run without jaxal.runtime.configure_cpu()")
    args = p.parse_args()
    settings = None if args.no_cpu_settings else configure_cpu()   # as jaxal's CLIs run

    result = {"machine": cpu_info(),
              "versions": {"python": sys.version.split()[0], "jax": jax.__version__,
                           **{m: version(m) for m in ("jaxlib", "flax", "optax")}},
              "backend": jax.default_backend(), "kernels": batching.kernel_choices(),
              "cpu_settings": settings._asdict() if settings else None}
    if args.torch_python and not args.training_pairs:
        print("PyTorch reference (before) ...", flush=True)
        result["torch_before"] = torch_reference(args.torch_python, os.cpu_count())

    split = load_split(ExperimentConfig(dataset="mnist", data_dir=args.data_dir))
    data = to_device(split)
    kernels = args.conv_kernels or [batching.conv_kernel()]
    if args.training_pairs:
        if not args.torch_python:
            p.error("--training-pairs sets jaxal against PyTorch: give --torch-python")
        result["training_pairs"] = training_pairs(data, args.torch_python, kernels,
                                                  args.training_pairs)
        write_result(Path(args.out), result, al_round_pairs(result))
        return
    result["training"] = [bench_training(data, b, 200, k) for b in (32, 64, 128)
                          for k in kernels]
    result["scoring"] = [bench_scoring(data, c, k) for c in (256, 512, 1024, 2048, 4096)
                         for k in kernels]
    if not args.skip_round:
        result["round"] = bench_round(split, repeats=3)
    if not args.skip_run:
        result["default_run"] = bench_default_run(args.data_dir)
        if args.epochs:
            result["epochs_run"] = bench_default_run(
                args.data_dir, TrainConfig(epochs=args.epochs, min_steps=args.min_steps,
                                           max_steps=args.max_steps))
    if args.torch_python:
        print("PyTorch reference (after) ...", flush=True)
        result["torch_after"] = torch_reference(args.torch_python, os.cpu_count())
    result["ratios"] = ratios(result)
    result["onednn_plans"] = conv.plans()   # which oneDNN kernels ran, if any

    write_result(Path(args.out), result, markdown(result))


def write_result(out: Path, result: dict, table: str) -> None:
    """``out`` (JSON) and its table beside it (``.md``); print the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


def times(r: dict | None) -> str:
    return f"{r['ratio']:.2f}x" if r else "–"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{describe(m)}; jax {result['versions']['jax']}, convolutions "
             f"{result['kernels']}, "
             + (f"torch {result['torch_before']['versions']['torch']} "
                f"({result['torch_before']['versions']['cpu_capability']})"
                if "torch_before" in result else "no PyTorch reference"), "",
             "| measurement | jaxal | PyTorch before / after (best layout) | jaxal/PyTorch |"
             " compile (s) |", "|---|---|---|---|---|"]
    refs = [result.get("torch_before"), result.get("torch_after")]
    ratio = result["ratios"]

    def torch_figure(section, fmt, key="images_per_s", pick=max, **match):
        vals = []
        for ref in refs:
            rows = [r for r in (ref or {}).get(section, [])
                    if all(r.get(k) == v for k, v in match.items())]
            vals.append(fmt(pick(r[key] for r in rows)) if rows else "–")
        return " / ".join(vals)

    for t in result["training"]:
        b = t["batch_size"]
        r = ratio.get(f"training_b{b}_{t['conv']}")
        bare = (f" (bare step {t['bare_step_images_per_s']:,.0f})"
                if "bare_step_images_per_s" in t else "")
        lines.append(f"| training, batch {b}, {t['conv']} convolutions (images/s: "
                     f"train_map, {t.get('form', 'python')} form{'; bare step' if bare else ''}) | "
                     f"{t['images_per_s']:,.0f}{bare} | "
                     f"{torch_figure('training', '{:,.0f}'.format, batch_size=b)} | "
                     f"{times(r)} | {t['compile_s']:.1f} |")
    for kernel in dict.fromkeys(r["conv"] for r in result["scoring"]):
        s = best(result["scoring"], conv=kernel)
        r = ratio.get(f"scoring_{kernel}")
        lines.append(f"| pool scoring, 59,000 images, {kernel} convolutions (images/s; best "
                     f"chunk: jaxal {s['chunk_size']}"
                     f"{', PyTorch ' + str(r['torch_chunk']) if r else ''}) | "
                     f"{s['images_per_s']:,.0f} | {torch_figure('scoring', '{:,.0f}'.format)} | "
                     f"{times(r)} | {s['compile_s']:.1f} |")
    if "round" in result:
        rd, r = result["round"], ratio.get("round")
        lines.append(f"| one AL round: score 59k, train 500 x 32, evaluate (s; "
                     f"{result['kernels']['conv']} convolutions) | "
                     f"{rd['seconds']:.2f} | "
                     f"{torch_figure('round', '{:.2f}'.format, key='seconds', pick=min)} | "
                     f"{times(r)} | "
                     f"{rd['first_call_s'] - rd['seconds']:.1f} |")
    for key in ("default_run", "epochs_run"):
        if key not in result:
            continue
        r = result[key]
        t = r["train_config"]
        fit = (f"{t['steps']} steps a fit" if t["epochs"] is None else
               f"{t['epochs']:g} epochs a fit, {t['min_steps']}-{t['max_steps']} steps")
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["seconds_per_stage"].items())
        lines.append(f"| MNIST default run ({fit}; {r['rounds']} rounds, "
                     f"{r['final_labels']} labels; s: {stages}) | "
                     f"{r['wall_s']:.0f} s, test accuracy {r['final_test_accuracy']:.4f} | "
                     f"| | {r['xla_compile_s_total']:.1f} (XLA) |")
        lines.append(f"| compilations after round 1 | {r['compiles_after_round1']} | | | |")
    if "default_run" in result:
        r = result["default_run"]
        lines += ["", "Default run, XLA compile time per jitted function:", "",
                  "| function | compilations | total (s) | longest (s) |", "|---|---|---|---|"]
        lines += [f"| {name} | {c['count']} | {c['total_s']:.2f} | {c['max_s']:.2f} |"
                  for name, c in r["compile_s_by_function"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
