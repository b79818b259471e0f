"""jaxal's Laplace evidence against laplace-torch 0.3's ``log_marginal_likelihood`` on the
same θ, data and prior precisions, read from ``tests/data/laplace_torch_evidence.json``
(written by ``benchmarks/laplace_torch_evidence.py`` in the PyTorch venv of
benchmarks/README.md; this suite never imports torch).

The problem: ``mlp(3, hidden=(8, 6))`` at fixed (untrained) weights, 30 points in 2-D.
The cases: all weights with the diagonal GGN (laplace-torch: BackPACK's ``DiagGGNExact``)
and the last layer with the full GGN (curvlinops), each at scalar λ (0.3, 1, 5) and at one
λ per parameter tensor (kernel and bias apart; for all weights also one per layer), which
jaxal takes as a per-weight λ [P].

Both sides compute log p(D | θ*) - ½ θ*ᵀΛθ* + ½ log det Λ - ½ log det(H + Λ)
(laplace-torch: log_lik - ½ (log det ratio + scatter)); the terms are compared one by one
too, so that a mismatch says which. Tolerances: float64, rtol 1e-9 (the reference was
computed in float64 and both curvatures are exact, so the numbers differ by rounding only:
measured at most 6e-16); float32, jaxal's default, rtol 1e-5 (measured at most 2e-7). A
wrong factor on any one term moves the evidence by 5 to 95 (measured by patching
``log_marginal_likelihood``: log det(H + Λ) or θᵀΛθ without the ½, or no ½ Σ log λ).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxal.components import LaplaceOptions
from jaxal.model import mlp
from jaxal.objective import log_likelihood
from jaxal.posteriors.laplace import (
    fit_laplace,
    head_params,
    log_det_precision,
    log_marginal_likelihood,
)

FIXTURE = Path(__file__).parent / "data" / "laplace_torch_evidence.json"
RTOL = {"float64": 1e-9, "float32": 1e-5}
# Logits and GGN diagonal: an absolute tolerance, relative to the largest entry.
ATOL_SCALED = {"float64": 1e-12, "float32": 1e-5}


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


def jaxal_params(layers: dict, dtype) -> dict:
    """{layer: {"kernel", "bias"}} (jaxal's layout, as stored) as mlp's params pytree."""
    as_array = lambda layer: {k: jnp.asarray(v, dtype) for k, v in layer.items()}
    return {"params": {"body": {name: as_array(layers[name]) for name in ("Dense_0", "Dense_1")},
                       "head": as_array(layers["head"])}}


def per_weight(lam, theta, dtype):
    """A stored λ as jaxal takes it: a scalar, or a {layer: {"kernel", "bias"}} of
    per-tensor values broadcast to each weight and raveled in θ's order ([P])."""
    if not isinstance(lam, dict):
        return jnp.asarray(lam, dtype)
    tree = jaxal_params(lam, dtype) if "Dense_0" in lam else head_params(
        {"params": {"head": lam["head"]}})
    filled = jax.tree.map(lambda v, t: jnp.full(t.shape, v, dtype), tree, theta)
    return ravel_pytree(filled)[0]


def check(name: str, got: float, want: float, rtol: float, failures: list[str]) -> None:
    if not np.isclose(got, want, rtol=rtol, atol=0.0):
        failures.append(f"{name}: jaxal {got:.12g}, laplace-torch {want:.12g} "
                        f"(diff {got - want:.3g})")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("subset, structure", [("all", "diag"), ("last-layer", "full")])
def test_evidence_matches_laplace_torch(reference, subset, structure, dtype):
    rtol = RTOL[dtype]
    cases = [c for c in reference["cases"]
             if (c["subset"], c["structure"]) == (subset, structure)]
    assert len(cases) >= 4
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with x64:
        dt = jnp.dtype(dtype)
        model = mlp(reference["num_classes"], hidden=tuple(reference["hidden"]))
        params = jaxal_params(reference["params"], dt)
        x = jnp.asarray(reference["x"], dt)
        y = jnp.asarray(reference["y"], jnp.int32)
        weights = jnp.ones(x.shape[0], dt)

        # The same network first: jaxal's logits are torch's.
        logits = model.apply(params, x)
        assert logits.dtype == dt
        want = np.asarray(reference["logits"])
        np.testing.assert_allclose(logits, want, rtol=0,
                                   atol=ATOL_SCALED[dtype] * np.abs(want).max())

        options = LaplaceOptions(curvature="ggn", structure=structure, subset=subset,
                                 prior_fit="none")
        post = fit_laplace(jax.random.key(0), model, params, x, y, weights,
                           jnp.asarray(1.0, dt), options)
        state = post.weights if subset == "all" else post.head
        theta = params if subset == "all" else head_params(params)
        if structure == "diag":
            ggn = ravel_pytree(jaxal_params(reference["ggn_diag"], dt))[0]
            np.testing.assert_allclose(state.curvature, ggn, rtol=0,
                                       atol=ATOL_SCALED[dtype] * float(jnp.abs(ggn).max()))

        ll = log_likelihood(model.apply(params, x), y, weights)
        failures: list[str] = []
        for case in cases:
            lam = per_weight(case["prior_precision"], theta, dt)
            lam_p = jnp.broadcast_to(lam, state.mean.shape)
            at = state._replace(prior_precision=lam)
            label = f"λ={case['prior_precision']}"
            check(f"{label} log likelihood", float(ll), case["log_likelihood"], rtol, failures)
            check(f"{label} log det(H + Λ)", float(log_det_precision(at)),
                  case["log_det_posterior_precision"], rtol, failures)
            check(f"{label} log det Λ", float(jnp.log(lam_p).sum()),
                  case["log_det_prior_precision"], rtol, failures)
            check(f"{label} θᵀΛθ", float(jnp.vdot(state.mean, lam_p * state.mean)),
                  case["scatter"], rtol, failures)
            evidence = log_marginal_likelihood(state, ll, lam)
            assert evidence.dtype == dt
            check(f"{label} log evidence", float(evidence),
                  case["log_marginal_likelihood"], rtol, failures)
    assert not failures, "\n".join(failures)
