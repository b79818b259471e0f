"""laplace-torch on the seed CNN: Laplace fit and predictive times, the reference for jaxal.

Runs in its own virtual environment (never jaxal's; this script imports neither jax nor
jaxal). Pin torch to the CPU wheel on these machines, or pip pulls several GB of CUDA
wheels; PyPI's torchvision is a CUDA build that cannot load next to CPU torch, and
laplace-torch only lists it as a dependency (torchmetrics imports it when present), so
remove it:

    python3 -m venv /tmp/lt-venv
    echo "torch==2.13.0" > /tmp/lt-constraints.txt
    /tmp/lt-venv/bin/pip install -c /tmp/lt-constraints.txt torch==2.13.0 numpy laplace-torch
    /tmp/lt-venv/bin/pip uninstall -y torchvision
    /tmp/lt-venv/bin/pip list | grep -i nvidia     # must print nothing

Then, from the repository root:

    /tmp/lt-venv/bin/python benchmarks/laplace_torch_reference.py \
        [--n-train 1000] [--n-test 1000] [--repeats 3] [--steps 300] [--threads 2]

Same setting as ``benchmarks/hessian_variants.py``: the seed CNN (130,890 parameters),
the first ``--n-train`` MNIST training and ``--n-test`` test images read from the raw idx
files in ``../shared/data/raw/mnist``, a MAP fit with Adam on mean cross-entropy +
prior_precision/(2N) ‖θ‖² (jaxal's objective), then for each Laplace variant (last-layer
full; all weights diagonal and KFAC with the BackPACK GGN) the seconds of ``la.fit``, the
probit (linearised) predictive and the 100-sample MC (network-sampling) predictive on the
test images, and for last-layer the marginal-likelihood prior-precision fit. Each is the
median of ``--repeats`` calls after one warm-up call; a failure (out of memory, an
unsupported combination) is recorded in the JSON instead of stopping the run.

Writes ``benchmarks/results/laplace_torch.json`` (``--out``) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
NUM_PARAMS = 130_890
MEAN, STD = 0.1307, 0.3081
PACKAGES = ("torch", "laplace-torch", "backpack-for-pytorch", "curvlinops-for-pytorch",
            "asdfghjkl", "numpy")
TIMINGS = ("fit_s", "probit_s", "mc100_s", "prior_fit_s")
VARIANTS = ("last_layer_full", "all_diag", "all_kron")


def cnn(num_classes: int = 10) -> nn.Sequential:
    """jaxal's seed CNN in torch: 3 x (Conv 3x3 same -> ReLU -> MaxPool 2) -> 128 -> 10.

    A flat ``nn.Sequential`` of modules BackPACK can extend. Max-pooling floors 7 -> 3, as
    in jaxal; the flatten is NCHW (jaxal's is NHWC), which changes no parameter count.
    """
    layers: list[nn.Module] = []
    c_in = 1
    for c in (32, 64, 64):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 3 * 3, 128), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(128, num_classes))


def read_idx(path: Path, n: int, header: int, item_size: int) -> np.ndarray:
    """The first ``n`` items of a gzipped idx file, as uint8 (reads only what it needs)."""
    with gzip.open(path, "rb") as f:
        head = f.read(header)
        count = int.from_bytes(head[4:8], "big")
        if n > count:
            raise ValueError(f"{path.name} holds {count} items, asked for {n}")
        return np.frombuffer(f.read(n * item_size), np.uint8)


def load_mnist(mnist_dir: Path, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images [n, 1, 28, 28] (normalised) and labels [n] of a split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(mnist_dir / f"{prefix}-images-idx3-ubyte.gz", n, 16, 28 * 28)
    labels = read_idx(mnist_dir / f"{prefix}-labels-idx1-ubyte.gz", n, 8, 1)
    x = (images.reshape(n, 1, 28, 28).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def train_map(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
              batch_size: int, lr: float, prior_precision: float, seed: int) -> list[float]:
    """Adam on mean_b CE + prior_precision/(2N) ‖θ‖², jaxal's minibatch MAP objective."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n, losses, order, pos = x.shape[0], [], torch.randperm(x.shape[0], generator=gen), 0
    model.train()
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        sq_norm = sum((p * p).sum() for p in model.parameters())
        loss = (nn.functional.cross_entropy(model(x[idx]), y[idx])
                + 0.5 * prior_precision * sq_norm / n)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def timed(fn, repeats: int) -> tuple[dict, object]:
    """One warm-up call, then ``repeats`` timed calls.

    Returns ({"median_s", "times_s"} or {"error"}, the last call's output).
    """
    try:
        value = fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - start)
        return {"median_s": statistics.median(times), "times_s": times}, value
    except (Exception, MemoryError) as e:  # record it, keep benchmarking
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:500]}, None


def predict(la, x: torch.Tensor, chunk: int, **kwargs) -> torch.Tensor:
    """``la(x, **kwargs)``, as a user calls it, in chunks of ``chunk`` images (0: all at once)."""
    if chunk <= 0:
        return la(x, **kwargs)
    return torch.cat([la(xc, **kwargs) for xc in torch.split(x, chunk)])


def bench_variant(name: str, make, train_loader, x_test, y_test, args) -> dict:
    """Time fit, probit and MC-100 predictives (and the marglik prior fit if asked)."""
    print(f"== {name}", flush=True)
    keys = TIMINGS if name == "last_layer_full" else TIMINGS[:3]
    if args.fit_only:
        keys = TIMINGS[:1]
    out: dict = {key: None for key in keys} | {"config": None, "details": {}}
    try:
        la = make()
    except (Exception, MemoryError) as e:
        traceback.print_exc()
        return out | {"error": f"{type(e).__name__}: {e}"[:500]}
    out["config"] = {"class": type(la).__name__, "backend": la._backend_cls.__name__,
                     "prior_precision": args.prior_precision}
    steps = {
        "fit_s": lambda: la.fit(train_loader),
    } if args.fit_only else {
        "fit_s": lambda: la.fit(train_loader),
        "probit_s": lambda: predict(la, x_test, args.pred_chunk, pred_type="glm",
                                    link_approx="probit"),
        "mc100_s": lambda: predict(la, x_test, args.pred_chunk, pred_type="nn",
                                   link_approx="mc", n_samples=args.mc_samples),
    }
    if "prior_fit_s" in keys:
        steps["prior_fit_s"] = lambda: la.optimize_prior_precision(
            pred_type="glm", method="marglik", init_prior_prec=args.prior_precision)
    details = {}
    for key, fn in steps.items():
        r, value = timed(fn, args.repeats)
        details[key] = r
        out[key] = r.get("median_s")
        print(f"   {key}: {r.get('median_s', r.get('error'))}", flush=True)
        if key == "fit_s" and "error" in r:
            break  # nothing else can run without a fit
        if key in ("probit_s", "mc100_s") and value is not None:
            r["test_accuracy"] = (value.argmax(-1) == y_test).float().mean().item()
    if "prior_fit_s" in details and "error" not in details["prior_fit_s"]:
        details["prior_fit_s"]["prior_precision"] = float(la.prior_precision.mean())
    out["details"] = details
    return out


def versions() -> dict:
    v = {"python": sys.version.split()[0], "platform": platform.platform(),
         "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    for p in PACKAGES:
        try:
            v[p] = version(p)
        except PackageNotFoundError:
            v[p] = None
    return v


def table(result: dict) -> str:
    s = result["setting"]
    lines = [f"laplace-torch {result['versions']['laplace-torch']}, torch "
             f"{result['versions']['torch']}, {s['threads']} threads, {s['n_train']} train / "
             f"{s['n_test']} test images, median of {s['repeats']} (seconds)", "",
             "| variant | fit | probit predictive | MC-100 predictive | marglik prior fit |",
             "|---|---|---|---|---|"]
    for name, r in result["results"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} | | | |")
            continue
        cells = []
        for key in TIMINGS:
            d = r["details"].get(key)
            cells.append("" if d is None else
                         f"failed: {d['error'][:60]}" if "error" in d else
                         f"{d['median_s']:.2f}")
        lines.append(f"| {name} ({r['config']['backend']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    p.add_argument("--steps", type=int, default=300, help="MAP training steps")
    p.add_argument("--batch-size", type=int, default=64, help="MAP training batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--prior-precision", type=float, default=1.0)
    p.add_argument("--fit-batch-size", type=int, default=100,
                   help="batch of the train loader that la.fit iterates")
    p.add_argument("--pred-chunk", type=int, default=0,
                   help="test images per predictive call (0: all in one call)")
    p.add_argument("--mc-samples", type=int, default=100)
    p.add_argument("--fit-only", action="store_true",
                   help="time la.fit alone (the predictives of all_kron take minutes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "raw" / "mnist"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "laplace_torch.json"))
    args = p.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from laplace import Laplace  # after set_num_threads; heavy import
    from laplace.curvature import BackPackGGN

    x_train, y_train = load_mnist(Path(args.mnist_dir), "train", args.n_train)
    x_test, y_test = load_mnist(Path(args.mnist_dir), "test", args.n_test)

    model = cnn()
    num_params = sum(p.numel() for p in model.parameters())
    print(f"seed CNN: {num_params:,} parameters", flush=True)
    assert num_params == NUM_PARAMS, num_params

    start = time.perf_counter()
    losses = train_map(model, x_train, y_train, args.steps, args.batch_size, args.lr,
                       args.prior_precision, args.seed)
    train_s = time.perf_counter() - start
    with torch.no_grad():
        map_acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
    print(f"MAP: {args.steps} steps in {train_s:.1f} s, final loss {losses[-1]:.3f}, "
          f"test accuracy {map_acc:.4f}", flush=True)

    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.fit_batch_size)
    common = {"likelihood": "classification", "prior_precision": args.prior_precision}
    makers = {
        "last_layer_full": lambda: Laplace(model, subset_of_weights="last_layer",
                                           hessian_structure="full", **common),
        "all_diag": lambda: Laplace(model, subset_of_weights="all", hessian_structure="diag",
                                    backend=BackPackGGN, **common),
        "all_kron": lambda: Laplace(model, subset_of_weights="all", hessian_structure="kron",
                                    backend=BackPackGGN, **common),
    }
    results = {}
    for name in variants:
        results[name] = bench_variant(name, makers[name], train_loader, x_test, y_test, args)

    result = {
        "versions": versions(),
        "setting": {"n_train": args.n_train, "n_test": args.n_test, "repeats": args.repeats,
                    "threads": args.threads, "num_params": num_params,
                    "fit_batch_size": args.fit_batch_size, "pred_chunk": args.pred_chunk,
                    "mc_samples": args.mc_samples, "seed": args.seed},
        "map": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                "prior_precision": args.prior_precision, "train_s": train_s,
                "final_loss": losses[-1], "test_accuracy": map_acc},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
