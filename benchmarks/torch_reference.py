"""PyTorch reference for ``benchmarks/al_round.py``: the seed CNN trained and scored in torch.

Runs in its own virtual environment (imports neither jax nor jaxal; the one of
``laplace_torch_reference.py`` serves, see ``benchmarks/README.md``). ``al_round.py
--torch-python PYTHON`` runs it before and after jaxal's own measurements, in the same
sitting, and prints jaxal/PyTorch ratios; alone:

    /tmp/lt-venv/bin/python benchmarks/torch_reference.py [--threads 2] [--out F.json]

Measured, each the median of ``--repeats`` after one warm-up call, exactly as al_round.py
measures jaxal:

- training throughput at batch 32, 64 and 128: ``--steps`` Adam steps on jaxal's minibatch
  objective (mean cross-entropy + prior_precision/(2N) ‖θ‖², dropout on), each minibatch
  drawn with replacement from 200 labelled points of the 59,000-image MNIST pool;
- pool scoring: the predictive entropy of all 59,000 pool images in chunks of 2,048
  (inference mode, eval mode), then the top 10;
- one whole AL round with the plugin posterior and entropy: score the pool and take the
  top 10, train a fresh CNN for 500 Adam steps of 32 on the 30 labelled points, evaluate
  on the 10,000 test and 1,000 validation images (in the layout's fastest scoring chunk).

Written as a PyTorch user would (``torch.optim.Adam``, ``torch.inference_mode``), in both
memory layouts: NCHW, PyTorch's default, and channels-last, which oneDNN runs faster on
these CPUs (measured: 4,200 against 2,850-3,300 images/s training at batch 32, 18,000
against 4,900 images/s scoring), and pool scoring at several chunk sizes, so that the
ratios in al_round.py are against the best PyTorch found, not its default. The images are
MNIST's, read from the raw idx files in ``../shared/data/raw/mnist``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from laplace_torch_reference import cnn, load_mnist
from machine import cpu_info
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
POOL, TEST, VAL = 59_000, 10_000, 1_000
PRIOR_PRECISION, LR = 1.0, 1e-3


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call, median of ``repeats`` further calls), seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def train_steps(model, opt, x_pool, y_pool, labelled_idx, steps, batch_size, gen):
    """``steps`` Adam steps on jaxal's minibatch objective, minibatches with replacement."""
    n = labelled_idx.shape[0]
    model.train()
    for _ in range(steps):
        idx = labelled_idx[torch.randint(0, n, (batch_size,), generator=gen)]
        sq_norm = sum((p * p).sum() for p in model.parameters())
        loss = (nn.functional.cross_entropy(model(x_pool[idx]), y_pool[idx])
                + 0.5 * PRIOR_PRECISION * sq_norm / n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def pool_entropy(model, x, chunk: int) -> torch.Tensor:
    """Predictive entropy of the plugin softmax for every row of ``x``, chunk by chunk."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            logp = torch.log_softmax(model(x[start:start + chunk]), -1)
            out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out)


def evaluate(model, x, y, chunk: int) -> tuple[float, float]:
    """(mean NLL, accuracy) on ``x``, ``y``."""
    model.eval()
    nll, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            logits = model(x[start:start + chunk])
            nll += nn.functional.cross_entropy(logits, y[start:start + chunk],
                                               reduction="sum").item()
            correct += (logits.argmax(-1) == y[start:start + chunk]).sum().item()
    return nll / x.shape[0], correct / x.shape[0]


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def in_layout(layout: str, model: nn.Module, *xs: torch.Tensor):
    """``model`` and the images ``xs`` in memory layout ``layout``."""
    fmt = LAYOUTS[layout]
    return (model.to(memory_format=fmt), *(x.contiguous(memory_format=fmt) for x in xs))


def bench_training(layout, x_pool, y_pool, batch_size: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model, x_pool = in_layout(layout, cnn(10), x_pool)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    labelled_idx = torch.arange(200)
    first, t = timed(lambda: train_steps(model, opt, x_pool, y_pool, labelled_idx, steps,
                                         batch_size, gen), repeats)
    return {"layout": layout, "batch_size": batch_size, "images_per_s": steps * batch_size / t,
            "step_ms": 1e3 * t / steps, "first_call_s": first}


def bench_scoring(layout, x_pool, chunk: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model, x_pool = in_layout(layout, cnn(10), x_pool)
    _, t = timed(lambda: pool_entropy(model, x_pool, chunk).topk(10), repeats)
    return {"layout": layout, "chunk_size": chunk, "pool": x_pool.shape[0], "seconds": t,
            "images_per_s": x_pool.shape[0] / t}


def bench_round(layout, chunk, x_pool, y_pool, x_test, y_test, x_val, y_val,
                repeats: int) -> dict:
    torch.manual_seed(0)
    previous, x_pool, x_test, x_val = in_layout(layout, cnn(10), x_pool, x_test, x_val)
    labelled = torch.zeros(x_pool.shape[0], dtype=torch.bool)
    labelled[:20] = True
    gen = torch.Generator().manual_seed(0)
    accuracy = []

    def one_round():
        scores = pool_entropy(previous, x_pool, chunk).masked_fill(labelled, -torch.inf)
        chosen = labelled.clone()
        chosen[scores.topk(10).indices] = True
        model = in_layout(layout, cnn(10))[0]   # a fresh network each round, as jaxal's
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        train_steps(model, opt, x_pool, y_pool, chosen.nonzero()[:, 0], 500, 32, gen)
        accuracy.append(evaluate(model, x_test, y_test, chunk)[1])
        evaluate(model, x_val, y_val, chunk)

    first, t = timed(one_round, repeats)
    return {"layout": layout, "chunk_size": chunk, "seconds": t, "first_call_s": first,
            "steps": 500,
            "batch_size": 32,
            "labelled": 30, "test_accuracy": accuracy[-1]}


def profile(x_pool, y_pool, batch_sizes, layouts, steps: int = 20) -> dict:
    """torch.profiler's self CPU time per operator of ``steps`` training steps, per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    for layout in layouts:
        for b in batch_sizes:
            torch.manual_seed(0)
            model, x = in_layout(layout, cnn(10), x_pool[:5000])
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            gen = torch.Generator().manual_seed(0)
            idx = torch.arange(200)
            train_steps(model, opt, x, y_pool, idx, 5, b, gen)
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                train_steps(model, opt, x, y_pool, idx, steps, b, gen)
            ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            out[f"{layout}, batch {b}"] = [
                {"name": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                 "calls_per_step": e.count / steps} for e in ops[:20]]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "raw" / "mnist"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 64, 128])
    p.add_argument("--chunk-sizes", type=int, nargs="*", default=[64, 128, 512, 2048])
    p.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--skip-round", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="only torch.profiler's per-operator times of training steps")
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    x_train, y_train = load_mnist(Path(args.mnist_dir), "train", POOL + VAL)
    x_test, y_test = load_mnist(Path(args.mnist_dir), "test", TEST)
    x_pool, y_pool = x_train[:POOL], y_train[:POOL]
    x_val, y_val = x_train[POOL:], y_train[POOL:]
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if args.profile:
        result = {"versions": versions, "machine": cpu_info(),
                  "profile": profile(x_pool, y_pool, args.batch_sizes, args.layouts)}
        text = json.dumps(result, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
        return
    result = {
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "mkldnn": torch.backends.mkldnn.is_available()},
        "machine": cpu_info(),
        "training": [bench_training(layout, x_pool, y_pool, b, args.steps, args.repeats)
                     for layout in args.layouts for b in args.batch_sizes],
        "scoring": [bench_scoring(layout, x_pool, c, args.repeats)
                    for layout in args.layouts for c in args.chunk_sizes],
    }
    if not args.skip_round:
        # Each layout's round scores and evaluates in its fastest chunk size.
        chunk = {layout: max((r for r in result["scoring"] if r["layout"] == layout),
                             key=lambda r: r["images_per_s"])["chunk_size"]
                 for layout in args.layouts}
        result["round"] = [bench_round(layout, chunk[layout], x_pool, y_pool, x_test, y_test,
                                       x_val, y_val, args.repeats) for layout in args.layouts]
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
