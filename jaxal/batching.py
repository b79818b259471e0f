"""How a function runs over a leading axis of stacked networks (ensemble members), chosen
by backend in this one place.

``vmap`` over the weights turns every convolution into a grouped one, which XLA:CPU runs
far slower than M plain ones: one training step of 5 seed CNNs took 15-16x one network's
time vmapped, 9.8x vmapped with im2col convolutions (batched matmuls), and 4.7-5.2x as
5 plain steps unrolled in one program (``benchmarks/posterior_curves.py`` notes; a
``lax.map`` is a while loop, in which XLA:CPU's convolutions are slower still). So on CPU
the members are unrolled in one jitted program (one compilation, M copies of the step); on
GPU and TPU, where batched convolutions are what the hardware is for, they are vmapped.
Both forms compute the same numbers (tested on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

FORMS = ("unroll", "vmap")


def default_form() -> str:
    """``unroll`` on CPU, ``vmap`` elsewhere (measured on CPU only; see above)."""
    return "unroll" if jax.default_backend() == "cpu" else "vmap"


def over_members(fn: Callable, in_axes: Sequence[int | None], members: int,
                 form: str | None = None) -> Callable:
    """``fn`` mapped over axis 0 of the arguments whose ``in_axes`` entry is 0 (pytrees
    of [M, ...] leaves), the others passed as they are; outputs stacked on axis 0, as
    ``jax.vmap(fn, in_axes)``. ``form``: one of ``FORMS`` (None: ``default_form()``)."""
    form = form or default_form()
    if form == "vmap":
        return jax.vmap(fn, in_axes=tuple(in_axes))

    def unrolled(*args):
        outs = [fn(*(jax.tree.map(lambda a, m=m: a[m], arg) if axis == 0 else arg
                     for arg, axis in zip(args, in_axes, strict=True)))
                for m in range(members)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

    return unrolled
