"""The plugin posterior: a point mass at θ_MAP (the MAP network's own predictive).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxal.components import POSTERIORS as POSTERIORS  # re-exported: the table
from jaxal.components import PRIOR_FITS as PRIOR_FITS
from jaxal.components import SUBSETS as SUBSETS
from jaxal.components import VALIDATION_GRID as VALIDATION_GRID
from jaxal.model import Classifier
from jaxal.posteriors import Posterior


class PointMass(NamedTuple):
    """The plugin "posterior": all mass on θ_MAP."""

    params: Any


def fit_point_mass(key: jax.Array, model: Classifier, params, x, y, weights,
                   prior_precision, options=None) -> PointMass:
    del key, model, x, y, weights, prior_precision, options
    return PointMass(params)


PLUGIN = Posterior(fit_point_mass)
