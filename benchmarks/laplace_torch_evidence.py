"""laplace-torch's Laplace evidence on a tiny MLP: the reference values of
``tests/test_laplace_torch_reference.py``.

Runs in the PyTorch virtual environment of ``benchmarks/README.md`` (the one of
``laplace_torch_reference.py``; this script imports neither jax nor jaxal). From the
repository root:

    /tmp/lt-venv/bin/python benchmarks/laplace_torch_evidence.py

A deterministic problem in float64: jaxal's ``mlp(3, hidden=(8, 6))`` (Dense -> tanh,
Dense -> tanh, Dense head) with weights drawn from a fixed numpy seed (not trained: the
evidence formula does not need a mode), 30 points in 2-D from three Gaussian blobs. For
several prior precisions (scalars, and one value per parameter tensor, which laplace-torch
calls "per layer") it records ``la.log_marginal_likelihood(prior_precision)`` and its terms
(log likelihood, log det of the posterior and the prior precision, scatter) of

- ``Laplace(model, "classification", subset_of_weights="all", hessian_structure="diag",
  backend=BackPackGGN)``: BackPACK's exact diagonal GGN (``DiagGGNExact``);
- ``Laplace(model, "classification", subset_of_weights="last_layer",
  hessian_structure="full", backend=CurvlinopsGGN)``: the default backend, curvlinops'
  exact GGN (through Jacobians for the last layer).

Both curvatures are checked here against a dense GGN Σ_n J_nᵀ (diag p_n - p_n p_nᵀ) J_n
computed with ``torch.func.jacrev`` (the script stops if they differ), and the diagonal
also against laplace-torch's default backend (curvlinops' GGN through Jacobians).

Writes ``tests/data/laplace_torch_evidence.json`` (``--out``): the data, θ in jaxal's
layout (``{layer: {"kernel": [in, out], "bias": [out]}}``; torch's Linear weight is
[out, in]), the torch logits, the diagonal GGN per layer in jaxal's layout, each case's
prior precision (a number, or ``{layer: {"kernel": λ, "bias": λ}}``) and values, the
package versions and the command.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from laplace import Laplace
from laplace.curvature import BackPackGGN, CurvlinopsGGN
from laplace_torch_reference import versions
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES, HIDDEN, NUM_POINTS = 3, (8, 6), 30
LAYERS = ("Dense_0", "Dense_1", "head")          # jaxal's layer names, in order
SCALARS = (0.3, 1.0, 5.0)
# One λ per parameter tensor (laplace-torch's "per layer": weight and bias apart).
PER_TENSOR_ALL = {"Dense_0": {"kernel": 0.5, "bias": 2.0},
                  "Dense_1": {"kernel": 1.5, "bias": 0.7},
                  "head": {"kernel": 3.0, "bias": 0.2}}
PER_LAYER_ALL = {"Dense_0": {"kernel": 0.4, "bias": 0.4},
                 "Dense_1": {"kernel": 2.5, "bias": 2.5},
                 "head": {"kernel": 0.8, "bias": 0.8}}
PER_TENSOR_HEAD = {"head": {"kernel": 2.0, "bias": 0.25}}


def problem(seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x [n, 2], y [n], θ in jaxal's layout) from a fixed seed."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]])
    y = rng.permutation(np.arange(NUM_POINTS) % NUM_CLASSES)
    x = centers[y] + rng.normal(scale=0.9, size=(NUM_POINTS, 2))
    params, fan_in = {}, 2
    for name, width in zip(LAYERS, (*HIDDEN, NUM_CLASSES), strict=True):
        params[name] = {"kernel": rng.normal(scale=1.5 / np.sqrt(fan_in), size=(fan_in, width)),
                        "bias": rng.normal(scale=0.3, size=width)}
        fan_in = width
    return x, y, params


def torch_mlp(params: dict) -> nn.Sequential:
    """jaxal's mlp in torch: Linear weight = kernelᵀ."""
    layers: list[nn.Module] = []
    for i, name in enumerate(LAYERS):
        kernel = params[name]["kernel"]
        linear = nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            linear.bias.copy_(torch.from_numpy(params[name]["bias"]))
        layers.append(linear)
        if i < len(LAYERS) - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).eval()


def dense_ggn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_n J_nᵀ (diag p_n - p_n p_nᵀ) J_n over all parameters, in ``parameters()`` order."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def logits(theta):
        chunks, pos = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = int(np.prod(shape))
            chunks[name] = theta[pos:pos + size].reshape(shape)
            pos += size
        return torch.func.functional_call(model, chunks, (x,))

    jac = torch.func.jacrev(logits)(flat)                         # [n, c, P]
    p = torch.softmax(logits(flat), -1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", jac, h, jac)


def torch_prior(lam, sizes: dict[str, tuple[int, int]], per_tensor: bool) -> torch.Tensor:
    """λ as laplace-torch takes it: a scalar; or, for a dict, one value per parameter
    tensor in ``parameters()`` order (Linear: weight, then bias), which the all-weights
    Laplace takes as "per layer" (``per_tensor``), while the last-layer Laplace takes only
    a scalar or one value per weight (each tensor's value repeated over its weights,
    ``sizes[layer]`` = (weights, biases))."""
    if not isinstance(lam, dict):
        return torch.tensor(float(lam))
    parts = [(lam[name][part], size) for name in LAYERS if name in lam
             for part, size in zip(("kernel", "bias"), sizes[name], strict=True)]
    if per_tensor:
        return torch.tensor([value for value, _ in parts])
    return torch.cat([torch.full((size,), float(value)) for value, size in parts])


def evidence_case(la, lam, sizes, per_tensor: bool) -> dict:
    lml = la.log_marginal_likelihood(torch_prior(lam, sizes, per_tensor))
    return {"prior_precision": lam,
            "log_marginal_likelihood": lml.item(),
            "log_likelihood": la.log_likelihood.item(),
            "log_det_posterior_precision": la.log_det_posterior_precision.item(),
            "log_det_prior_precision": la.log_det_prior_precision.item(),
            "scatter": la.scatter.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "tests" / "data" / "laplace_torch_evidence.json")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)

    x_np, y_np, params = problem(args.seed)
    model = torch_mlp(params)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np.astype(np.int64))
    loader = DataLoader(TensorDataset(x, y), batch_size=NUM_POINTS)
    with torch.no_grad():
        logits = model(x)

    ggn = dense_ggn(model, x)
    sizes = {name: (linear.weight.numel(), linear.bias.numel())
             for name, linear in zip(LAYERS, model[::2], strict=True)}

    # (a) all weights, diagonal: BackPACK's DiagGGNExact; checked against the dense GGN's
    # diagonal and against the default backend (curvlinops' GGN through Jacobians). Each
    # Laplace gets its own copy of the network: BackPACK's module hooks break torch.func.
    diag = Laplace(torch_mlp(params), "classification", subset_of_weights="all",
                   hessian_structure="diag", backend=BackPackGGN)
    diag_default = Laplace(torch_mlp(params), "classification", subset_of_weights="all",
                           hessian_structure="diag", backend=CurvlinopsGGN)
    diag.fit(loader)
    diag_default.fit(loader)
    diag_error = (diag.H - torch.diagonal(ggn)).abs().max().item()
    default_error = (diag_default.H - diag.H).abs().max().item()
    scale = torch.diagonal(ggn).abs().max().item()
    assert diag_error <= 1e-10 * scale, f"BackPACK's diagonal GGN is off by {diag_error}"
    assert default_error <= 1e-10 * scale, f"the backends differ by {default_error}"

    # (b) last layer, full GGN (default backend), checked against the dense GGN's block.
    last = Laplace(torch_mlp(params), "classification", subset_of_weights="last_layer",
                   hessian_structure="full", backend=CurvlinopsGGN)
    last.fit(loader)
    head = ggn.shape[0] - sum(sizes['head'])
    ll_error = (last.H - ggn[head:, head:]).abs().max().item()
    assert ll_error <= 1e-10 * ggn[head:, head:].abs().max().item(), \
        f"the last-layer GGN is off by {ll_error}"

    # The diagonal GGN per layer, in jaxal's layout (kernel [in, out]).
    ggn_diag, pos = {}, 0
    for name, linear in zip(LAYERS, model[::2], strict=True):
        w, b = linear.weight.numel(), linear.bias.numel()
        h = diag.H[pos:pos + w + b].detach().numpy()
        ggn_diag[name] = {"kernel": h[:w].reshape(linear.weight.shape).T.tolist(),
                          "bias": h[w:].tolist()}
        pos += w + b

    cases = []
    for lam in (*SCALARS, PER_LAYER_ALL, PER_TENSOR_ALL):
        cases.append({"subset": "all", "structure": "diag", "backend": "BackPackGGN",
                      **evidence_case(diag, lam, sizes, per_tensor=True)})
    for lam in (*SCALARS, PER_TENSOR_HEAD):
        cases.append({"subset": "last-layer", "structure": "full", "backend": "CurvlinopsGGN",
                      **evidence_case(last, lam, sizes, per_tensor=False)})

    record = {
        "description": "laplace-torch's log_marginal_likelihood on jaxal's mlp(3, hidden=(8, 6)) "
                       "at fixed weights, float64; written by benchmarks/laplace_torch_evidence.py",
        "command": "/tmp/lt-venv/bin/python benchmarks/laplace_torch_evidence.py",
        "versions": versions(),
        "python": platform.python_version(),
        "dtype": "float64",
        "num_classes": NUM_CLASSES,
        "hidden": list(HIDDEN),
        "x": x_np.tolist(),
        "y": y_np.tolist(),
        "params": {name: {k: v.tolist() for k, v in layer.items()}
                   for name, layer in params.items()},
        "logits": logits.numpy().tolist(),
        "ggn_diag": ggn_diag,
        "checks": {"diag_vs_dense_ggn_max_abs": diag_error,
                   "diag_backpack_vs_curvlinops_max_abs": default_error,
                   "last_layer_vs_dense_ggn_max_abs": ll_error},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    for case in cases:
        print(f"{case['subset']:>10} {case['structure']:>4} λ={case['prior_precision']!s:.40}"
              f"  log evidence {case['log_marginal_likelihood']:.10f}")
    print("checks:", record["checks"], file=sys.stderr)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
