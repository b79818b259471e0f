"""Laplace variants on the seed CNN: curvature fit, predictives, prior fit; time and memory.

    python benchmarks/hessian_variants.py [--data-dir ../shared/data/tfds] [--repeats 3]
        [--variants all_diag all_kron ...] [--skip-sweep] [--laplace-torch PYTHON]

Setting (issue 3): the seed CNN (130,890 parameters), MAP-trained (Adam, 300 steps) on the
first ``--n-train`` MNIST training images; curvature built on those images, predictives
evaluated on the first ``--n-test`` test images, the validation-NLL prior grid on the next
``--n-train`` training images. Every variant runs in its own process, so its peak memory
(``ru_maxrss``) is its own; each time is the median of ``--repeats`` calls after a first
call, and the compile time is that first call minus the median.

Also a sweep over model width (conv channels x m, hidden x m) and over N, at the same
settings, showing how the all-weights fits grow with P and N (random weights: speed only).

laplace-torch ratios: the script reads ``benchmarks/results/laplace_torch.json`` written by
``benchmarks/laplace_torch_reference.py`` (see ``benchmarks/README.md``); with
``--laplace-torch /tmp/lt-venv/bin/python`` it first runs that script in that interpreter.

Writes ``benchmarks/results/hessian_variants.json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from timing import time_calls

from jaxal import data as datasets
from jaxal.chunks import map_chunks
from jaxal.loop import tune_prior_precision
from jaxal.model import cnn, init_params
from jaxal.objective import log_likelihood
from jaxal.posteriors import bind
from jaxal.posteriors.laplace import (
    LAPLACE,
    PROBIT_ALL_WEIGHTS_CHUNK,
    VALIDATION_GRID,
    LaplaceOptions,
    fit_laplace,
    fit_prior_precision,
    subset_problem,
)
from jaxal.predictive import PREDICTIVES
from jaxal.runtime import configure_cpu, with_huge_pages
from jaxal.train import TrainConfig, make_trainer, train_map

RESULTS = Path(__file__).parent / "results"
MC_SAMPLES = 100

# name -> (LaplaceOptions, predictives, prior fits, laplace-torch counterpart)
VARIANTS = {
    "last_layer_full": (LaplaceOptions("ggn", "full", "last-layer"), ("probit", "mc"),
                        ("evidence", "val-nll"), "last_layer_full"),
    "last_layer_full_hessian": (LaplaceOptions("hessian", "full", "last-layer"), ("probit",),
                                ("evidence",), None),
    "last_layer_diag": (LaplaceOptions("ggn", "diag", "last-layer"), ("probit", "mc"), (),
                        None),
    "all_diag": (LaplaceOptions("ggn", "diag", "all"), ("probit", "mc"), ("evidence",),
                 "all_diag"),
    "all_iso": (LaplaceOptions("ggn", "iso", "all"), ("probit", "mc"), ("evidence",), None),
    "all_kron": (LaplaceOptions("ggn", "kfac", "all"), ("probit", "mc"), ("evidence",),
                 "all_kron"),
    "all_diag_sampled": (LaplaceOptions("ggn-mc", "diag", "all"), ("probit",), (),
                         "all_diag"),
    "all_kron_sampled": (LaplaceOptions("ggn-mc", "kfac", "all"), ("probit",), (),
                         "all_kron"),
}
SWEEP_VARIANTS = ("all_diag", "all_kron", "last_layer_full")
SWEEP = [(m, 1000) for m in (0.5, 1.0, 2.0)] + [(1.0, n) for n in (250, 4000)]
# laplace-torch timings quoted in issue 3 (laplace-torch 0.3, this machine, 2 threads,
# median of 3), used when no laplace_torch.json has been written here.
ISSUE_REFERENCE = {
    "last_layer_full": {"fit_s": 1.38, "probit_s": 0.90, "mc100_s": 0.41, "prior_fit_s": 9.1},
    "all_diag": {"fit_s": 6.2, "probit_s": 34.7, "mc100_s": 25.5},
    "all_kron": {"fit_s": 4.5, "probit_s": 104.5, "mc100_s": 33.2},
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mnist_arrays(data_dir: str | None, n_train: int, n_test: int):
    ds = datasets.load_dataset("mnist", data_dir)
    x = datasets.normalise(ds.train_images[: 2 * n_train], "mnist")
    xt = datasets.normalise(ds.test_images[:n_test], "mnist")
    return (jnp.asarray(x[:n_train]), jnp.asarray(ds.train_labels[:n_train]),
            jnp.asarray(x[n_train:]), jnp.asarray(ds.train_labels[n_train: 2 * n_train]),
            jnp.asarray(xt), jnp.asarray(ds.test_labels[:n_test]))


def train(model, x, y, steps: int, seed: int = 0):
    config = TrainConfig(steps=steps)
    trainer = make_trainer(model, config, x.shape[0])
    trainer = trainer._replace(init=jax.jit(trainer.init), step=jax.jit(trainer.step),
                               labelled_nll=jax.jit(trainer.labelled_nll))
    params = init_params(model, jax.random.key(seed), x.shape[1:])
    params, _ = train_map(jax.random.key(seed + 1), trainer, params, x, y,
                          jnp.ones(x.shape[0], bool))
    return params


def quality(probs: jax.Array, y: jax.Array) -> dict:
    p_true = jnp.take_along_axis(probs, y[:, None], axis=1)[:, 0]
    entropy = -(probs * jnp.log(jnp.clip(probs, 1e-12))).sum(-1)
    return {"test_nll": float(-jnp.log(jnp.clip(p_true, 1e-12)).mean()),
            "test_accuracy": float((probs.argmax(-1) == y).mean()),
            "test_entropy": float(entropy.mean())}


def run_variant(name: str, params, model, arrays, repeats: int, predictives=None,
                prior_fits=None) -> dict:
    """All timings of one variant, in this process (call it in a fresh one)."""
    x, y, x_val, y_val, x_test, y_test = arrays
    lc, default_predictives, default_prior_fits, _ = VARIANTS[name]
    predictives = default_predictives if predictives is None else predictives
    prior_fits = default_prior_fits if prior_fits is None else prior_fits
    lc = lc._replace(samples=MC_SAMPLES)
    posterior = bind(LAPLACE, lc)   # the record's functions with these options
    prior_precision = TrainConfig().prior_precision   # the MAP objective's λ
    weights = jnp.ones(x.shape[0], x.dtype)
    out = {"num_params": int(ravel_pytree(params)[0].size), "n": int(x.shape[0]),
           "rss_before_mib": peak_rss_mib()}

    fit = jax.jit(lambda p, x, y: fit_laplace(jax.random.key(0), model, p, x, y, weights,
                                              prior_precision, lc))
    timed = time_calls(lambda: fit(params, x, y), repeats)
    out["fit"], post = timed.record(), timed.out
    print(f"   fit {out['fit']['seconds']:.2f} s", flush=True)
    for predictive in predictives:
        chunk = (PROBIT_ALL_WEIGHTS_CHUNK if (predictive, lc.subset) == ("probit", "all")
                 else x_test.shape[0])
        predict = jax.jit(lambda post, xs, predictive=predictive, chunk=chunk:
                          map_chunks(lambda i, xc: PREDICTIVES[predictive].predict(
                              jax.random.key(1), model, post, xc, posterior).probs,
                              xs, chunk))
        timed = time_calls(lambda predict=predict: predict(post, x_test), repeats)
        out[predictive], probs = timed.record(), timed.out
        out[predictive] |= quality(probs, y_test)
        print(f"   {predictive} {out[predictive]['seconds']:.2f} s", flush=True)
    inner = post.head if lc.subset == "last-layer" else post.weights
    if "evidence" in prior_fits:
        theta, logits_fn, inputs = subset_problem(model, params, x, lc.subset)
        ll = log_likelihood(logits_fn(theta, inputs), y, weights)
        evidence = jax.jit(lambda inner: fit_prior_precision(inner, ll))
        timed = time_calls(lambda: evidence(inner), repeats)
        out["prior_fit_evidence"], lam = timed.record(), timed.out
        out["prior_fit_evidence"]["prior_precision"] = float(lam)
        print(f"   evidence prior fit {out['prior_fit_evidence']['seconds']:.2f} s "
              f"(λ = {float(lam):.3g})", flush=True)
    if "val-nll" in prior_fits:
        predictive = predictives[0]
        predict = lambda key, m, p, xs: PREDICTIVES[predictive].predict(key, m, p, xs,
                                                                        posterior)
        grid = jax.jit(lambda post: tune_prior_precision(
            jax.random.key(2), model, predict, post, x_val, y_val, VALIDATION_GRID,
            x_val.shape[0]))
        timed = time_calls(lambda: grid(post), repeats)
        out["prior_fit_val_nll"], tuned = timed.record(), timed.out
        tuned_inner = tuned.head if lc.subset == "last-layer" else tuned.weights
        out["prior_fit_val_nll"]["prior_precision"] = float(tuned_inner.prior_precision)
        out["prior_fit_val_nll"]["predictive"] = predictive
        print(f"   val-NLL grid ({len(VALIDATION_GRID)} values, {predictive}) "
              f"{out['prior_fit_val_nll']['seconds']:.2f} s", flush=True)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def child(args) -> None:
    """One variant in this process; prints its JSON on the last line."""
    arrays = mnist_arrays(args.data_dir, args.n_train, args.n_test)
    if args.width is None:
        model = cnn(10)
        flat = np.load(args.params)
        params = ravel_pytree(init_params(model, jax.random.key(0), (28, 28, 1)))[1](
            jnp.asarray(flat))
        result = run_variant(args.child, params, model, arrays, args.repeats)
    else:   # sweep: random weights of a wider/narrower CNN, N training images, fit only
        m = args.width
        model = cnn(10, channels=tuple(int(c * m) for c in (32, 64, 64)), hidden=int(128 * m))
        params = init_params(model, jax.random.key(0), (28, 28, 1))
        x = datasets.normalise(datasets.load_dataset("mnist", args.data_dir)
                               .train_images[: args.n_train], "mnist")
        arrays = (jnp.asarray(x), jnp.zeros(x.shape[0], jnp.int32), *arrays[2:])
        result = run_variant(args.child, params, model, arrays, args.repeats,
                             predictives=(), prior_fits=())
    print(json.dumps(result))


def in_child(args, variant: str, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--n-train", str(args.n_train),
           "--n-test", str(args.n_test), "--repeats", str(args.repeats), *extra,
           *(["--no-cpu-settings"] if args.no_cpu_settings else [])]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    # Huge pages, as README's "Speed on Linux" asks users to export, unless --no-huge-pages.
    env = os.environ if args.no_huge_pages else with_huge_pages(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sys.stdout.write("".join(line + "\n" for line in proc.stdout.splitlines()[:-1]))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"   failed (exit {proc.returncode}): {' | '.join(tail)}", flush=True)
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"[:500]}
    return json.loads(proc.stdout.splitlines()[-1])


def reference(args) -> dict:
    """laplace-torch timings: the issue's figures, and those measured here if any."""
    path = RESULTS / "laplace_torch.json"
    if args.laplace_torch:
        cmd = [args.laplace_torch, str(Path(__file__).parent / "laplace_torch_reference.py"),
               "--n-train", str(args.n_train), "--n-test", str(args.n_test),
               "--repeats", str(args.repeats), "--out", str(path)]
        print("== laplace-torch:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
    refs = {"issue": {"source": "quoted in issue 3 (median of 3)", "results": ISSUE_REFERENCE}}
    if path.exists():
        lt = json.loads(path.read_text())
        refs["here"] = {
            "source": f"measured here ({path.name}: laplace-torch "
                      f"{lt['versions'].get('laplace-torch')}, torch "
                      f"{lt['versions'].get('torch')}, median of "
                      f"{lt['setting'].get('repeats')})",
            "results": {k: {t: v for t, v in r.items() if t.endswith("_s")}
                        for k, r in lt["results"].items()}}
    return refs


def fmt(d: dict | None, refs: list[float | None] = ()) -> str:
    """"seconds (ratio vs issue figure / ratio vs measured here)"."""
    if d is None:
        return ""
    if "error" in d:
        return "failed"
    ratios = [f"{ref / d['seconds']:.1f}x" if ref else "-" for ref in refs]
    return f"{d['seconds']:.2f}" + (f" ({' / '.join(ratios)})" if any(refs) else "")


def table(result: dict) -> str:
    s = result["setting"]
    refs = result["laplace_torch"]
    names = list(refs)
    lines = [
        f"jaxal with jax {s['jax']} on {s['platform']}, {s['cpus']} CPUs; seed CNN "
        f"({s['num_params']:,} parameters), {s['n_train']} MNIST train / {s['n_test']} test "
        f"images, median of {s['repeats']}, seconds (compile apart), glibc malloc "
        + ("on huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, see README)"
           if s.get("huge_pages") else "without huge pages") + ". In brackets: "
        "laplace-torch time / jaxal time, against "
        + " / ".join(f"laplace-torch {refs[k]['source']}" for k in names) + ".", "",
        "| variant | fit | compile | probit | MC-100 | evidence prior fit | val-NLL grid "
        "| peak RSS MiB | test acc / NLL (probit) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["variants"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} |||||||")
            continue
        lt = [refs[k]["results"].get(VARIANTS[name][3] or "", {}) for k in names]
        sampled = name.endswith("_sampled")   # approximate: compared to the exact fit
        q = r.get("probit") or r.get("mc")
        lines.append(" | ".join([
            f"| {name}", fmt(r["fit"], [t.get("fit_s") for t in lt]),
            f"{r['fit']['compile_s']:.1f}",
            fmt(r.get("probit"), [] if sampled else [t.get("probit_s") for t in lt]),
            fmt(r.get("mc"), [t.get("mc100_s") for t in lt]),
            fmt(r.get("prior_fit_evidence"), [t.get("prior_fit_s") for t in lt]),
            fmt(r.get("prior_fit_val_nll")), f"{r['peak_rss_mib']:.0f}",
            f"{q['test_accuracy']:.3f} / {q['test_nll']:.3f} |" if q else " |"]))
    lines += ["", "Sweep (random weights, fit only): seconds and peak RSS MiB", "",
              "| width x | P | N | " + " | ".join(SWEEP_VARIANTS) + " |",
              "|---|---|---|" + "---|" * len(SWEEP_VARIANTS)]
    for row in result["sweep"]:
        cells = []
        for v in SWEEP_VARIANTS:
            r = row[v]
            cells.append("failed" if "error" in r else
                         f"{r['fit']['seconds']:.2f} s, {r['peak_rss_mib']:.0f} MiB")
        p = next((row[v]["num_params"] for v in SWEEP_VARIANTS if "num_params" in row[v]), 0)
        lines.append(f"| {row['width']} | {p:,} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=300, help="MAP training steps")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--no-huge-pages", action="store_true",
                   help="run the variants without GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
    p.add_argument("--no-cpu-settings", action="store_true",
                   help="run without jaxal.runtime.configure_cpu() (glibc, JAX and "
                        "OpenBLAS defaults)")
    p.add_argument("--laplace-torch", default=None,
                   help="python of a laplace-torch venv: run the reference first")
    p.add_argument("--out", default=str(RESULTS / "hessian_variants.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--params", default=None, help=argparse.SUPPRESS)
    p.add_argument("--width", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.no_cpu_settings:
        configure_cpu()   # as jaxal's CLIs run; before JAX's first computation
    if args.child:
        return child(args)

    refs = reference(args)
    x, y, *_ = mnist_arrays(args.data_dir, args.n_train, args.n_test)
    model = cnn(10)
    start = time.perf_counter()
    params = train(model, x, y, args.steps)
    print(f"MAP: {args.steps} Adam steps in {time.perf_counter() - start:.1f} s", flush=True)
    result = {"setting": {"n_train": args.n_train, "n_test": args.n_test,
                          "repeats": args.repeats, "steps": args.steps,
                          "mc_samples": MC_SAMPLES, "jax": jax.__version__,
                          "platform": platform.platform(), "cpus": os.cpu_count(),
                          "num_params": int(ravel_pytree(params)[0].size),
                          "huge_pages": not args.no_huge_pages},
              "laplace_torch": refs, "variants": {},
              "sweep": []}
    with tempfile.TemporaryDirectory() as tmp:
        params_file = os.path.join(tmp, "params.npy")
        np.save(params_file, np.asarray(ravel_pytree(params)[0]))
        for name in args.variants:
            print(f"== {name}", flush=True)
            result["variants"][name] = in_child(args, name, ["--params", params_file])
    if not args.skip_sweep:
        for m, n in SWEEP:
            row = {"width": m, "n": n}
            for v in SWEEP_VARIANTS:
                print(f"== sweep width x{m}, N={n}: {v}", flush=True)
                sweep_args = argparse.Namespace(**{**vars(args), "n_train": n})
                row[v] = in_child(sweep_args, v, ["--width", str(m)])
            result["sweep"].append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
