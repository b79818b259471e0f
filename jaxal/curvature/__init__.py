"""Curvature of the summed NLL at θ_MAP, and the structures that store it; one table for all.

    structure.py    the ``Structure`` record, ``CurvatureProblem`` (what a curvature is of)
    ggn.py          GGN / Hessian of any ``logits_fn`` over raveled parameters (generic forms)
    layerwise.py    per layer: exact/sampled GGN diagonal, KFAC factors, logit variance
    last_layer.py   the linear head's closed forms: exact GGN, logit variance
    dense.py, diagonal.py, isotropic.py, kfac.py    one module per stored structure

Each structure module exports the same functions (``build``, ``log_det_precision``,
``sample``, ``covariance``, ``layer_variance``, ``with_prior_precision``, ``why_not``),
its ``FORMS`` {(source, subset): curvature function} and one ``Structure`` record of them,
``STRUCTURE``, registered below. ``jaxal.posteriors.laplace`` fits, validates and dispatches through
``STRUCTURES`` only: adding a structure is one module and one entry (``register_structure``).
"""

from __future__ import annotations

from jaxal.curvature import dense, diagonal, isotropic, kfac
from jaxal.curvature.structure import CurvatureProblem, Structure

__all__ = ["STRUCTURES", "CurvatureProblem", "Structure", "register_structure", "sources",
           "structure_of"]

STRUCTURES: dict[str, Structure] = {
    "full": dense.STRUCTURE,
    "diag": diagonal.STRUCTURE,
    "iso": isotropic.STRUCTURE,
    "kfac": kfac.STRUCTURE,
}


def register_structure(name: str, structure: Structure) -> Structure:
    """Add ``structure`` to ``STRUCTURES`` as ``name``; what it leaves out keeps the
    record's defaults (no layer variance, no size check, a generic refusal message).

    States are dispatched by type (``structure_of``), so each structure needs its own.
    """
    if name in STRUCTURES:
        raise ValueError(f"a structure {name!r} is registered already")
    for other, registered in STRUCTURES.items():
        if registered.state is structure.state:
            raise ValueError(f"structure {other!r} has the state type "
                             f"{structure.state.__name__} already; give {name!r} its own")
    STRUCTURES[name] = structure
    return structure


def structure_of(state) -> Structure:
    """The record of the structure whose ``build`` made ``state``."""
    by_state = {structure.state: structure for structure in STRUCTURES.values()}
    if type(state) not in by_state:
        raise TypeError(f"{type(state).__name__} is no registered structure's state; "
                        f"structures: {list(STRUCTURES)}")
    return by_state[type(state)]


def sources() -> tuple[str, ...]:
    """The curvature sources some structure computes ("ggn", "hessian", "ggn-mc")."""
    return tuple(dict.fromkeys(source for structure in STRUCTURES.values()
                               for source, _ in structure.forms))
