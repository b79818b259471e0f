"""Pool passes on 1, 2, 4, 8 devices: what the data-parallel path (``jaxal.sharding``) costs
or gains.

    python benchmarks/scaling.py [--data-dir ../shared/data/tfds] [--devices 1 2 4 8]

Each device count runs in its own process (JAX fixes the count when it starts): on a CPU
with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` host devices, which split the
same cores, so the CPU figures show the sharded path's overhead, not a speed-up; on a GPU
machine pass ``--gpu`` to use its devices as they are. Measured per count (median of 3,
compile apart):

- pool scoring: entropy of the plugin predictive over the whole MNIST pool (59,000);
- MC-100: BALD with the last-layer Laplace posterior, 100 samples, over the same pool;
- one AL round on a 10,000-image pool (entropy, plugin): query, 500 training steps,
  evaluation of the 11,000 test and validation images. Training is not split over
  devices (every device runs it whole), so on host devices its share grows with N.

The 1-device row runs the code path of a run without ``--devices``: no mesh and no
sharding constraint, the same program as before ``jaxal.sharding`` existed.
Writes ``results/scaling.json`` and ``results/scaling.md``.

``--seeds``: the seeds of a comparison run one after another against one vmapped program
(``jaxal.apps.seeds``); ``results/scaling_seeds.{json,md}``. It decides
``jaxal.batching.default_seeds_form`` on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_json
from machine import cpu_info
from tables import write_table
from timing import time_calls


def _median_time(fn, repeats: int = 3) -> tuple[float, float]:
    """(median seconds of ``repeats`` calls after a first one, first call's extra)."""
    timed = time_calls(fn, repeats)
    return timed.seconds, timed.first_s - timed.seconds


def child(args) -> dict:
    """The measurements on this process's devices (run under the count's XLA_FLAGS)."""
    import jax

    from jaxal.apps.experiment import load_split, to_device
    from jaxal.config import ALConfig, ExperimentConfig, LaplaceOptions, TrainConfig
    from jaxal.loop import al_round, init_state, make_learner
    from jaxal.model import build_model
    from jaxal.runtime import configure_cpu
    from jaxal.sharding import use_devices

    configure_cpu()
    out = {"devices": len(jax.local_devices()), "backend": jax.default_backend()}
    with use_devices() as devices:
        out["names"] = [f"{d.platform}:{d.id}" for d in devices]
        quick = TrainConfig(steps=20)
        for name, al in (
                ("pool_scoring", ALConfig(acquisition="entropy", train=quick)),
                ("mc100_bald", ALConfig(acquisition="bald", posterior="laplace",
                                        predictive="mc", train=quick,
                                        posterior_options=LaplaceOptions(samples=100)))):
            split = load_split(ExperimentConfig(dataset="mnist", data_dir=args.data_dir, al=al))
            data = to_device(split)
            learner = make_learner(build_model("mnist", 10, al), al, split.pool_x.shape[1:], 10)
            state, _ = init_state(jax.random.key(0), learner, data)
            query = partial(learner.query, jax.random.key(1), state.posterior, data.pool_x,
                            state.labelled)
            seconds, compile_s = _median_time(query)
            out[name] = {"s": seconds, "compile_s": compile_s,
                         "images_per_s": data.pool_x.shape[0] / seconds,
                         "pool": int(data.pool_x.shape[0])}
            print(name, out[name], file=sys.stderr, flush=True)
        al = ALConfig(acquisition="entropy", rounds=3)
        split = load_split(ExperimentConfig(dataset="mnist", data_dir=args.data_dir,
                                            pool_size=10_000, al=al))
        data = to_device(split)
        learner = make_learner(build_model("mnist", 10, al), al, split.pool_x.shape[1:], 10)
        state, _ = init_state(jax.random.key(0), learner, data)      # compiles
        state, _ = al_round(jax.random.key(1), state, learner, data)   # compiles the round
        rounds = []
        for r in range(2):
            start = time.perf_counter()
            state, info = al_round(jax.random.key(2 + r), state, learner, data)
            rounds.append({"s": time.perf_counter() - start, "query_s": info.timings.score,
                           "train_s": info.timings.train, "eval_s": info.timings.evaluate})
        out["al_round"] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print("al_round", out["al_round"], file=sys.stderr, flush=True)
    return out


SEEDS = (0, 1, 2)


def seeds_form(args) -> None:
    """The seeds of one comparison strategy one after another (each a fresh run, as
    ``jaxal.compare`` runs them) against one vmapped program (``jaxal.apps.seeds``), in one
    process on this machine's device: wall time of each, compilation included (what a
    comparison pays), over 3 seeds of a small MNIST run."""
    import tempfile

    from jaxal.apps.experiment import run_experiment
    from jaxal.apps.seeds import run_seeds
    from jaxal.config import ALConfig, ExperimentConfig, TrainConfig
    from jaxal.runtime import configure_cpu

    configure_cpu()
    al = ALConfig(acquisition="entropy", rounds=2, query_size=10,
                  train=TrainConfig(steps=300, batch_size=32))
    configs = [ExperimentConfig(dataset="mnist", seed=s, pool_size=2000, data_dir=args.data_dir,
                                al=al) for s in SEEDS]
    times = {}
    with tempfile.TemporaryDirectory() as root:
        for form in ("sequential", "vmapped", "sequential again"):
            start = time.perf_counter()
            dirs = [Path(root) / form / f"seed{c.seed}" for c in configs]
            if form == "vmapped":
                run_seeds(configs, dirs, progress=None)
            else:
                for c, d in zip(configs, dirs, strict=True):
                    run_experiment(c, d, progress=None)
            times[form] = time.perf_counter() - start
            print(form, times[form], flush=True)
    result = {"machine": cpu_info(), "seeds": len(SEEDS), "rounds": al.rounds,
              "steps": al.train.steps, "seconds": times}
    write_json(RESULTS / "scaling_seeds.json", result)
    print(write_table("scaling_seeds"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--gpu", action="store_true",
                   help="use the machine's devices (one process, --devices ignored)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seeds", action="store_true",
                   help="instead: a comparison's seeds one after another vs one vmapped "
                        "program (jaxal.apps.seeds), on this machine's device")
    args = p.parse_args()
    if args.seeds:
        seeds_form(args)
        return
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    counts = [None] if args.gpu else args.devices
    for n in counts:
        env = dict(os.environ)
        if n is not None:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={n}").strip()
            env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, __file__, "--child"] + (
            ["--data-dir", args.data_dir] if args.data_dir else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write_json(RESULTS / "scaling.json", {"machine": cpu_info(), "rows": rows})
    print(write_table("scaling"))


if __name__ == "__main__":
    main()
