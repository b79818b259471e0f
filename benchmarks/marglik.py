"""Does online marginal-likelihood training give the all-weights KFAC-GLM Laplace a sane
per-layer prior on MNIST, at what cost? (issue 30, build item 1)

On N random balanced labels of the MNIST pool (10,000 images) the seed CNN is trained as
the loop trains it (500 Adam steps of 32, ``jaxal.loop.make_learner``'s trainer) and the
all-weights KFAC GGN Laplace is fitted, with these priors:

- ``evidence-layerwise``: trained with λ = 1, then the post-hoc evidence fit per layer
  (the row the last measurements found worse than random);
- ``marglik-layerwise F/B/K`` (new): λ per layer learned during training
  (``--prior-precision marglik-layerwise``, ``jaxal.posteriors.marglik``): every F steps from step B
  on, K Adam steps on log λ; one row per (F, B, K) in ``--settings``;
- ``marglik F/B/K``: the same with one λ.

Reported per row: per layer λ_l, γ_l, the prior variance 1/λ_l against the mean square
weight θ²/P (``jaxal.posteriors.evidence.evidence_diagnosis``; the issue's target: within 10x); the
GLM logit std against the MAP's logit spread (first 1,000 test images); accuracy, NLL and
ECE on the test images of the MAP network (plugin), the GLM predictive (100 weight
samples) and the probit predictive; seconds of training (compilation apart: the second of
two identical fits) against plain training in the same sitting.

The command that made benchmarks/results/marglik.{json,md}:

    python benchmarks/marglik.py --sizes 20 50 220 --test-size 1000 --settings 50/100/10 25/50/10

(about 30 minutes on 2 shared cores). The hyperparameter step against laplace-torch's,
same sitting (results/marglik_timing.json):

    /tmp/lt-venv/bin/python benchmarks/marglik_torch.py
    python benchmarks/marglik.py --hyper-timing --data-dir ../shared/data/tfds

Peak memory of this issue's fits (results/marglik_memory.{json,md}): each row trained and
fitted on N = 1,000 labels in its own process (``ru_maxrss``), with jaxal's malloc tuning
(as the CLI runs) and without (``JAXAL_MALLOC_TUNING=0``):

    python benchmarks/marglik.py --peak-rss --data-dir ../shared/data/tfds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, mnist_pool, result_header, write_json
from tables import TABLES
from timing import time_calls

from jaxal import batching
from jaxal.runtime import configure_cpu

PREDICTIVES_REPORTED = ("plugin", "glm", "probit")


def variants(settings: list[str]) -> dict:
    """{row name: LaplaceOptions fields}: today's post-hoc fit, then online marglik."""
    out = {"evidence-layerwise": {"prior_fit": "evidence-layerwise"}}
    for setting in settings:
        every, burn_in, steps = map(int, setting.split("/"))
        fields = {"marglik_every": every, "marglik_burn_in": burn_in,
                  "marglik_steps": steps}
        out[f"marglik-layerwise {setting}"] = {"prior_fit": "marglik-layerwise", **fields}
    every, burn_in, steps = map(int, settings[0].split("/"))
    out[f"marglik {settings[0]}"] = {"prior_fit": "marglik", "marglik_every": every,
                                     "marglik_burn_in": burn_in, "marglik_steps": steps}
    return out


def evaluators(model, record, chunk_size: int) -> dict:
    """{predictive: jitted (key, posterior, x, y) -> (nll, accuracy, entropy, ece)}."""
    from jaxal.loop import evaluate
    from jaxal.predictive import PREDICTIVES

    return {name: jax.jit(partial(evaluate, model=model, chunk_size=chunk_size,
                                  predict=partial(PREDICTIVES[name].predict, posterior=record)))
            for name in PREDICTIVES_REPORTED}


def row_learner(args, fields: dict, num_labels: int, data):
    """The loop's learner of a row (``variants``' ``fields``): seed CNN, all-weights KFAC
    GGN Laplace, GLM predictive, room for ``num_labels``."""
    from jaxal.config import ALConfig, LaplaceOptions, TrainConfig
    from jaxal.loop import make_learner
    from jaxal.model import cnn

    options = LaplaceOptions(structure="kfac", subset="all", samples=100, **fields)
    config = ALConfig(posterior="laplace", predictive="glm", posterior_options=options,
                      chunk_size=args.chunk_size, train=TrainConfig(steps=args.steps))
    return make_learner(cnn(data.num_classes), config, data.pool_x.shape[1:],
                        data.num_classes, capacity=num_labels), options


def one_row(args, name: str, fields: dict, seed: int, num_labels: int, data, x_test,
            y_test) -> dict:
    from jaxal.components import POSTERIORS
    from jaxal.loop import initial_labelled
    from jaxal.model import cnn
    from jaxal.posteriors import bind
    from jaxal.posteriors.evidence import evidence_diagnosis
    from jaxal.posteriors.laplace import layer_groups

    model = cnn(data.num_classes)
    key = jax.random.fold_in(jax.random.key(seed), num_labels)
    key_labels, key_init, key_train, key_fit, key_eval = jax.random.split(key, 5)
    labelled = initial_labelled(key_labels, np.asarray(data.pool_y), data.num_classes,
                                num_labels // data.num_classes)
    learner, options = row_learner(args, fields, num_labels, data)
    params0 = learner.init(key_init)
    trained = time_calls(lambda: learner.train(key_train, params=params0, x_pool=data.pool_x,
                                               y_pool=data.pool_y, labelled=labelled), 1)
    params, info = trained.out
    fitted = time_calls(lambda: learner.fit(key_fit, params, data.pool_x, data.pool_y,
                                            labelled, data.val_x, data.val_y), 1)
    posterior = fitted.out
    theta = posterior.params
    names = layer_groups(theta)[1]
    diagnosis = jax.jit(lambda params, post, x: evidence_diagnosis(model, params, post, x,
                                                                   "all"))
    row = {"name": name, "seed": seed, "labels": num_labels, "options": fields,
           "train_seconds": trained.seconds, "train_compile_and_run_seconds": trained.first_s,
           "fit_seconds": fitted.seconds, "fit_compile_and_run_seconds": fitted.first_s,
           "train_nll": float(info.train_nll),
           "diagnosis": diagnosis(theta, posterior.weights, x_test[:1000]).as_dict(names)}
    record = bind(POSTERIORS["laplace"], options)
    row["test"] = {}
    for predictive, fn in evaluators(model, record, args.chunk_size).items():
        evaluated = time_calls(partial(fn, key_eval, posterior=posterior, x=x_test,
                                       y=y_test), 0)
        nll, accuracy, _, ece = evaluated.out
        row["test"][predictive] = {"accuracy": float(accuracy), "nll": float(nll),
                                   "ece": float(ece), "seconds": evaluated.first_s}
    return row


def peak_rss_child(args, name: str) -> dict:
    """Train and fit the row ``name`` of ``variants`` on ``args.peak_rss_n`` labels, as
    ``one_row`` does (no test evaluation), in this process: its peak RSS after each."""
    from jaxal.loop import initial_labelled

    peak_mib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    data = mnist_pool(args.data_dir, 1)[0]
    n = args.peak_rss_n
    labelled = initial_labelled(jax.random.key(0), np.asarray(data.pool_y), data.num_classes,
                                n // data.num_classes)
    learner = row_learner(args, variants(args.settings)[name], n, data)[0]
    out = {"name": name, "labels": n, "malloc_tuning": os.environ.get(
        "JAXAL_MALLOC_TUNING", "1") != "0", "loaded_mib": peak_mib()}
    trained = time_calls(lambda: learner.train(jax.random.key(1),
                                               params=learner.init(jax.random.key(2)),
                                               x_pool=data.pool_x, y_pool=data.pool_y,
                                               labelled=labelled), 0)
    out["train_peak_mib"], out["train_s"] = peak_mib(), trained.first_s
    fitted = time_calls(lambda: jax.block_until_ready(learner.fit(
        jax.random.key(3), trained.out[0], data.pool_x, data.pool_y, labelled, data.val_x,
        data.val_y)), 0)
    out["fit_peak_mib"], out["fit_s"] = peak_mib(), fitted.first_s
    return out


def peak_rss(args) -> dict:
    """Every row of ``variants`` in its own process, with and without jaxal's malloc
    tuning (``jaxal.runtime.configure_cpu``): a process's peak is its own."""
    rows = []
    for tuning in ("1", "0"):
        for name in variants(args.settings):
            argv = [sys.executable, __file__, "--peak-rss-child", name, "--settings",
                    *args.settings, "--steps", str(args.steps), "--peak-rss-n",
                    str(args.peak_rss_n), "--chunk-size", str(args.chunk_size)]
            argv += ["--data-dir", args.data_dir] if args.data_dir else []
            done = subprocess.run(argv, capture_output=True, text=True, check=True,
                                  env={**os.environ, "JAXAL_MALLOC_TUNING": tuning})
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return {"rows": rows, "steps": args.steps}


def hyper_timing(args, data) -> dict:
    """Seconds of one online-marglik update (``Hyper.update``: the KFAC refit on the
    labelled set and K Adam steps on log λ per layer) and of one training step, at N =
    ``args.hyper_n`` labels, against laplace-torch's step (``marglik_torch.py``'s JSON,
    same sitting) where present."""
    from jaxal.config import ALConfig, LaplaceOptions, TrainConfig
    from jaxal.loop import make_learner
    from jaxal.model import cnn
    from jaxal.train import labelled_indices

    n = args.hyper_n
    options = LaplaceOptions(structure="kfac", subset="all", prior_fit="marglik-layerwise",
                             marglik_steps=10)
    config = ALConfig(posterior="laplace", predictive="glm", posterior_options=options,
                      train=TrainConfig(steps=args.steps))
    learner = make_learner(cnn(data.num_classes), config, data.pool_x.shape[1:],
                           data.num_classes, capacity=n)
    labelled = jnp.zeros(data.pool_y.shape, bool).at[:n].set(True)
    params, _ = learner.train(jax.random.key(0), params=learner.init(jax.random.key(1)),
                              x_pool=data.pool_x, y_pool=data.pool_y, labelled=labelled)
    trainer, idx, num = learner.trainer, labelled_indices(labelled), labelled.sum()
    state = trainer.init(params)
    args_ = (data.pool_x, data.pool_y, idx, num)
    update = time_calls(lambda: trainer.hyper.update(jax.random.key(2), state, *args_),
                        args.repeats)
    step = time_calls(lambda: trainer.step(jax.random.key(3), state, *args_), 50)
    out = {"labels": n, "hyper_steps": options.marglik_steps,
           "update_s": update.seconds, "update_compile_and_run_s": update.first_s,
           "train_step_s": step.seconds,
           "update_in_train_steps": update.seconds / step.seconds}
    torch_json = RESULTS / "marglik_torch.json"
    if torch_json.exists():
        reference = json.loads(torch_json.read_text())
        out["laplace_torch"] = {k: reference[k] for k in ("hyper_step_s", "fit_s", "adam_s",
                                                          "n_train", "versions")}
        out["speedup_over_laplace_torch"] = reference["hyper_step_s"] / update.seconds
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[20, 120, 220])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--settings", nargs="*", default=["50/100/10"],
                   help="F/B/K of the marglik-layerwise rows (the first also for marglik)")
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--chunk-size", type=int, default=250)
    p.add_argument("--name", default="marglik", help="results/<name>.{json,md}")
    p.add_argument("--hyper-timing", action="store_true",
                   help="only time one online-marglik update against laplace-torch's "
                        "(run marglik_torch.py first, same sitting) into "
                        "results/<name>_timing.json")
    p.add_argument("--hyper-n", type=int, default=220)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-rss", action="store_true",
                   help="only the peak RSS of each row's training and fit, each in its own "
                        "process, into results/<name>_memory.json")
    p.add_argument("--peak-rss-n", type=int, default=1000)
    p.add_argument("--peak-rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    configure_cpu()   # as jaxal's CLIs run; before JAX's first computation
    if args.peak_rss_child:
        print(json.dumps(peak_rss_child(args, args.peak_rss_child)))
        return
    if args.peak_rss:
        result = {**result_header("marglik.py", sys.argv[1:], 0), **peak_rss(args)}
        del result["test_size"]
        write_json(RESULTS / f"{args.name}_memory.json", result)
        text = TABLES["marglik_memory"].make(result)
        (RESULTS / f"{args.name}_memory.md").write_text(text + "\n")
        print(text)
        return
    if args.hyper_timing:
        data = mnist_pool(args.data_dir, 1)[0]
        result = {**result_header("marglik.py", sys.argv[1:], 0),
                  **hyper_timing(args, data)}
        del result["rows"], result["test_size"]
        result["kernels"] = batching.kernel_choices()
        write_json(RESULTS / f"{args.name}_timing.json", result)
        print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=1))
        return

    data, x_test, y_test = mnist_pool(args.data_dir, args.test_size)
    result = {**result_header("marglik.py", sys.argv[1:], int(x_test.shape[0])),
              "steps": args.steps}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for num_labels in args.sizes:
            for name, fields in variants(args.settings).items():
                row = one_row(args, name, fields, seed, num_labels, data, x_test, y_test)
                result["rows"].append(row)
                d = row["diagnosis"]
                print(num_labels, name, f"train {row['train_seconds']:.1f}s",
                      {k: round(v["accuracy"], 4) for k, v in row["test"].items()},
                      f"glm std {d['glm_logit_std']:.2f} / map {d['map_logit_std']:.2f}",
                      [f"{v['variance_ratio']:.3g}" for v in d["layers"].values()],
                      flush=True)
                write_json(RESULTS / f"{args.name}.json", result)
                # results/marglik.md is the table of record; a sweep's own name its own.
                text = TABLES["marglik"].make(result)
                (RESULTS / f"{args.name}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
