"""laplace-torch's online marginal-likelihood hyperparameter step on the seed CNN: the
reference for ``benchmarks/marglik.py --hyper-timing`` (issue 30: jaxal ≥ 3x faster).

Runs in the PyTorch venv of ``laplace_torch_reference.py`` (imports neither jax nor jaxal):

    /tmp/lt-venv/bin/python benchmarks/marglik_torch.py [--n-train 220] [--repeats 5]

One hyperparameter step of ``laplace.marglik_training`` (laplace-torch 0.3), as its loop
runs it every F epochs: a Kronecker-factored GGN Laplace of the current network on the
labelled set (``KronLaplace.fit``, its default backend) and K Adam steps (lr 0.1) on
-log p(D | λ) over one λ per parameter tensor ("layerwise": laplace-torch counts weight and
bias as two; jaxal's layer is both). The network: the seed CNN (``cnn``), trained 500 Adam
steps on the first ``--n-train`` MNIST training images (jaxal's objective, λ = 1). Each
figure is the median of ``--repeats`` steps after one warm-up step, ``--threads`` torch
threads. Writes ``benchmarks/results/marglik_torch.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from laplace_torch_reference import cnn, load_mnist, train_map, versions
from machine import cpu_info

ROOT = Path(__file__).resolve().parents[1]


def hyper_step(model, loader, log_prior_precision, steps: int, lr: float) -> tuple:
    """marglik_training's step: refit the KFAC Laplace, K Adam steps on log λ."""
    from laplace import KronLaplace

    la = KronLaplace(model, "classification", prior_precision=log_prior_precision.exp().detach())
    start = time.perf_counter()
    la.fit(loader)
    fitted = time.perf_counter()
    optimizer = torch.optim.Adam([log_prior_precision], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -la.log_marginal_likelihood(log_prior_precision.exp())
        loss.backward()
        optimizer.step()
    return fitted - start, time.perf_counter() - fitted, float(-loss)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist-dir", type=Path, default=ROOT.parent / "shared/data/raw/mnist")
    p.add_argument("--n-train", type=int, default=220)
    p.add_argument("--hyper-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/marglik_torch.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_mnist(args.mnist_dir, "train", args.n_train)
    model = cnn()
    train_map(model, x, y, steps=500, batch_size=32, lr=1e-3, prior_precision=1.0, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=args.n_train)
    groups = len(list(model.parameters()))
    log_lam = torch.zeros(groups, requires_grad=True)
    steps = [hyper_step(model, loader, log_lam, args.hyper_steps, 0.1)
             for _ in range(args.repeats + 1)][1:]
    total = [fit + adam for fit, adam, _ in steps]
    result = {"cpu": cpu_info(), "versions": versions(), "command": "python " + " ".join(
                  ["benchmarks/marglik_torch.py", *sys.argv[1:]]),
              "n_train": args.n_train, "hyper_steps": args.hyper_steps, "groups": groups,
              "fit_s": statistics.median(s[0] for s in steps),
              "adam_s": statistics.median(s[1] for s in steps),
              "hyper_step_s": statistics.median(total), "times_s": total,
              "log_evidence": steps[-1][2]}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=1))


if __name__ == "__main__":
    main()
