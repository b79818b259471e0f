"""Posteriors over the network weights, fitted after MAP training; one registry for all.

Every entry has the signature

    fit(key, model, params, x_pool, y_pool, labelled, config) -> posterior

where ``params`` is θ_MAP and ``labelled`` the boolean mask of the data it was fitted on.
The returned posterior is a pytree that the matching predictives in ``jaxal.predictive``
consume. Today the registry holds the plugin (point-mass) posterior; Laplace
approximations are added as further entries.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxal.model import Classifier


class PointMass(NamedTuple):
    """The plugin "posterior": all mass on θ_MAP."""

    params: Any


def fit_point_mass(key: jax.Array, model: Classifier, params, x_pool, y_pool, labelled,
                   config) -> PointMass:
    del key, model, x_pool, y_pool, labelled, config
    return PointMass(params)


POSTERIORS = {"plugin": fit_point_mass}
