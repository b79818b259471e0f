"""The record every curvature structure fills in, and the problem its curvature is built on.

A structure is one stored form of the curvature C of the summed NLL at θ_MAP (dense,
diagonal, isotropic, Kronecker-factored), together with the Laplace posterior
N(θ_MAP, (C + λ I)⁻¹) it gives: one module per structure (``dense``, ``diagonal``,
``isotropic``, ``kfac``), each exporting the same functions and one ``STRUCTURE`` record
of them, collected in ``jaxal.curvature.STRUCTURES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

# Shared by the structures that refuse the sampled GGN: it is computed per layer only.
SAMPLED_GGN_FIX = ("the sampled GGN (ggn-mc) is for all weights with --structure diag, iso or "
                   "kfac; elsewhere use --curvature ggn, which is exact and cheap there")


class CurvatureProblem(NamedTuple):
    """The summed NLL whose curvature at θ_MAP a structure computes.

    The generic forms (``jaxal.curvature.ggn``) take the subset's parameters ``theta`` and
    ``logits_fn(theta, inputs) -> [n, c]`` (for the last layer: the head on features
    computed once); the per-layer forms (``jaxal.curvature.layerwise``, all weights) take
    ``model``, ``params`` and ``x``. ``weights`` [n] marks the real (1) and padding (0) rows.
    """

    model: Any                 # jaxal.model.Classifier
    params: Any                # θ_MAP, all weights
    x: jax.Array               # [n, ...]
    y: jax.Array               # [n]
    weights: jax.Array         # [n]
    subset: str                # "last-layer" | "all"
    theta: Any                 # θ_MAP of the subset
    logits_fn: Callable        # (theta, inputs) -> logits [n, c]
    inputs: jax.Array          # x, or the last layer's features [n, d]
    chunk_size: int | None = None   # examples per chunk (None: each form's default)

    @property
    def layer_chunk_size(self) -> int:
        # Per-layer forms hold [C, chunk, activations].
        return self.chunk_size or 100

    @property
    def generic_chunk_size(self) -> int:
        # The generic all-weights forms hold [chunk, C-1, P] per-example factors, hence
        # their small default.
        return self.chunk_size or (256 if self.subset == "last-layer" else 16)


def generic_form(form: Callable) -> Callable:
    """A generic form ``form(logits_fn, params, x, y, weights, chunk_size)`` of
    ``jaxal.curvature.ggn`` as a ``Structure.forms`` entry ``(key, problem) -> curvature``."""
    def curvature(key: jax.Array, problem: CurvatureProblem):
        del key
        return form(problem.logits_fn, problem.theta, problem.inputs, problem.y,
                    problem.weights, problem.generic_chunk_size)
    return curvature


def replace_prior_precision(state, prior_precision: jax.Array):
    """The same state with another prior precision λ (the curvature kept)."""
    return state._replace(prior_precision=prior_precision)


class Structure(NamedTuple):
    """A stored form of the curvature and what its posterior N(θ_MAP, (C + λ I)⁻¹) offers.

    A state (what ``build`` returns) is a NamedTuple of arrays with at least ``mean``
    (θ_MAP of the subset, raveled, [p]) and ``prior_precision`` (λ): the evidence and its
    fit over λ need nothing else. ``forms`` says which curvature sources on which parameter
    subsets the structure computes: its keys are what validation accepts. A capability
    the structure lacks is None. Adding a structure is one module exporting these
    functions plus one entry in ``jaxal.curvature.STRUCTURES`` (``register_structure``).
    """

    state: type                     # the state's NamedTuple class (dispatch by type)
    # {(source, subset): (key, problem) -> curvature in this structure's stored form};
    # source "ggn" | "hessian" | "ggn-mc", subset "last-layer" | "all".
    forms: Mapping[tuple[str, str], Callable]
    build: Callable                 # (theta, curvature, λ) -> state
    log_det_precision: Callable     # state -> log det(C + λ I)
    sample: Callable                # (key, state) -> θ [p], one draw; vmap over keys
    covariance: Callable            # state -> (C + λ I)⁻¹ [p, p], dense (tests, small p)
    # (state, params) -> ``layer_variance`` of ``jaxal.curvature.layerwise.
    # logit_variance_layerwise`` (all weights); None: Σ has cross-layer blocks.
    layer_variance: Callable | None = None
    with_prior_precision: Callable = replace_prior_precision   # (state, λ) -> state
    check_size: Callable | None = None   # (num_params) -> None; raises before training
    why_not: Callable | None = None      # (source, subset) -> the refusal, naming the fix
