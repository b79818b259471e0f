"""How a function runs over a leading axis of stacked networks (ensemble members) or of
posterior samples, chosen by backend in this one place.

``vmap`` over the weights turns every convolution into a grouped one, which XLA:CPU runs
far slower than M plain ones: one training step of 5 seed CNNs took 15-16x one network's
time vmapped, 9.8x vmapped with im2col convolutions (batched matmuls), and 4.7-5.2x as
5 plain steps unrolled in one program (``benchmarks/posterior_curves.py`` notes; a
``lax.map`` is a while loop, in which XLA:CPU's convolutions are slower still). So on CPU
the members are unrolled in one jitted program (one compilation, M copies of the step); on
GPU and TPU, where batched convolutions are what the hardware is for, they are vmapped.
Both forms compute the same numbers (tested on CPU).

Posterior samples (MC over all weights, the GLM's JVPs, MC dropout's masks) follow the
same rule (``over_samples``): on CPU one sample at a time in a ``lax.map`` (plain
convolutions, memory of one sample's activations: vmapping the weights made them ~9x
slower); on GPU and TPU vmapped in groups of ``SAMPLE_GROUP`` (``lax.map`` with a batch
size: the hardware's batched convolutions, memory of a group's activations).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxal.errors import ConfigError
from jaxal.sharding import data_axis_size, data_parallel, samples_may_split

FORMS = ("unroll", "vmap")
SAMPLE_FORMS = ("map", "vmap")
# Samples vmapped at once off CPU: bounds memory to this many samples' activations.
SAMPLE_GROUP = 16


def default_form() -> str:
    """``unroll`` on CPU, ``vmap`` elsewhere (measured on CPU only; see above)."""
    return "unroll" if jax.default_backend() == "cpu" else "vmap"


def _split_members(tree, members: int):
    """``tree``'s [M, ...] leaves split over the data axis of the mesh in effect, when M
    is a multiple of its size (else as they are: replicated)."""
    size = data_axis_size()
    # Several processes: members stay whole on every device, so that every process can
    # read (checkpoint) the trained stack.
    if size == 1 or members % size or jax.process_count() > 1:
        return tree
    return jax.tree.map(lambda a: data_parallel(a, 0), tree)


def over_members(fn: Callable, in_axes: Sequence[int | None], members: int,
                 form: str | None = None, split: bool = False) -> Callable:
    """``fn`` mapped over axis 0 of the arguments whose ``in_axes`` entry is 0 (pytrees
    of [M, ...] leaves), the others passed as they are; outputs stacked on axis 0, as
    ``jax.vmap(fn, in_axes)``. ``form``: one of ``FORMS`` (None: ``default_form()``).

    ``split``: in the vmap form, under a mesh with a data axis (``jaxal.sharding``), the
    members are split over its devices (M / devices each; M a multiple of the device
    count, else replicated). The ensemble's training asks for it; its pool passes do not,
    as their rows are split over the same axis already.
    """
    form = form or default_form()
    if form == "vmap":
        mapped = jax.vmap(fn, in_axes=tuple(in_axes))
        if not split:
            return mapped

        def split_mapped(*args):
            args = [_split_members(a, members) if axis == 0 else a
                    for a, axis in zip(args, in_axes, strict=True)]
            return _split_members(mapped(*args), members)

        return split_mapped

    def unrolled(*args):
        outs = [fn(*(jax.tree.map(lambda a, m=m: a[m], arg) if axis == 0 else arg
                     for arg, axis in zip(args, in_axes, strict=True)))
                for m in range(members)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

    return unrolled


TRAIN_FORMS = ("python", "loop")


def default_train_form(conv: str | None = None) -> str:
    """How MAP training iterates its steps, given the kernel ``conv`` its model's
    convolutions run on (None: a model without convolutions).

    ``loop`` (one ``lax.fori_loop`` program: no dispatch per step, which a GPU step is
    short enough to feel) off CPU, and on CPU when the convolutions run on oneDNN
    (measured there, paired runs: 1.09x / 1.10x / 1.04x the Python loop's images/s at
    batch 32 / 64 / 128; ``benchmarks/al_round.py`` records the form). ``python`` on CPU
    otherwise (a Python loop around the jitted step): XLA:CPU runs its own convolutions
    ~12x slower inside a while loop (190 vs 2,400 images/s; 316 vs 4,660 at batch 32
    with this jaxlib), and oneDNN's are custom calls, which do not slow down there.
    """
    if jax.default_backend() != "cpu" or conv == "onednn":
        return "loop"
    return "python"


SEEDS_FORMS = ("sequential", "vmapped")


def default_seeds_form() -> str:
    """How ``jaxal.compare`` runs the seeds of a strategy: one after another on CPU
    (measured: ``benchmarks/scaling.py``, vmapped seeds train grouped convolutions, as
    vmapped members do), as one vmapped program elsewhere (``jaxal.apps.seeds``)."""
    return "sequential" if jax.default_backend() == "cpu" else "vmapped"


def padded_conv_channels(kernel: str | None = None) -> dict[int, int]:
    """Input-channel counts a convolution on ``kernel`` (None: ``conv_kernel()``) is
    zero-padded to, ``{C: C'}``: with XLA's kernels on CPU ``{3: 4}``, since XLA:CPU
    convolved 3 channels at ~33 GFLOP/s against ~200 for wider inputs (the seed CNN's
    first block on 32x32x3: 50.9 µs/image as it is, 21.9 on 4 channels, 28.8 on 8;
    MNIST's 1 channel is fastest as it is: 8.5 µs/image, 12.0 on 2, 15.3 on 4;
    ``benchmarks/cifar10_curves.py layers``). oneDNN's are as fast or faster on 3 as on 4
    (32x32x3 -> 32 at batch 128: forward 1.34 vs 1.48 ms, filter gradient 1.29 vs 1.95):
    none. Elsewhere none (not measured). ``jaxal.model.conv_padded_channels`` applies it."""
    if jax.default_backend() != "cpu" or (kernel or conv_kernel()) == "onednn":
        return {}
    return dict(CPU_PADDED_CHANNELS)


# What ``padded_conv_channels`` pads on CPU.
CPU_PADDED_CHANNELS = {3: 4}


def default_sample_form() -> str:
    """``map`` on CPU, ``vmap`` (in groups) elsewhere (see above)."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def over_samples(fn: Callable, xs, form: str | None = None):
    """``fn`` over the leading axis of the pytree ``xs`` (one posterior sample, key or
    mask each), outputs stacked, as ``jax.lax.map(fn, xs)``. ``form``: one of
    ``SAMPLE_FORMS`` (None: ``default_sample_form()``); ``vmap`` maps groups of
    ``SAMPLE_GROUP`` samples with ``vmap`` inside the ``lax.map``, and under a mesh of
    several devices whose rows are not split (``jaxal.sharding.samples_may_split``) splits
    each group's samples over them (sample-parallel)."""
    form = form or default_sample_form()
    if form == "map":
        return jax.lax.map(fn, xs)
    if not samples_may_split(SAMPLE_GROUP):
        return jax.lax.map(fn, xs, batch_size=SAMPLE_GROUP)
    # Sample-parallel: each group's samples split over the devices of the mesh (its rows
    # were too few to split). Padding samples repeat the first; their outputs are dropped.
    s = jax.tree.leaves(xs)[0].shape[0]
    groups = -(-s // SAMPLE_GROUP)

    def grouped(a):
        a = jnp.concatenate([a, jnp.repeat(a[:1], groups * SAMPLE_GROUP - s, axis=0)])
        return data_parallel(a.reshape(groups, SAMPLE_GROUP, *a.shape[1:]), 1)

    out = jax.lax.map(lambda g: data_parallel(jax.vmap(fn)(g), 0), jax.tree.map(grouped, xs))
    return jax.tree.map(lambda o: o.reshape(groups * SAMPLE_GROUP, *o.shape[2:])[:s], out)


CONV_KERNELS = ("xla", "onednn")
CONV_VARIABLE = "JAXAL_CONV"


def conv_kernel() -> str:
    """Which kernels run the CNN's convolutions: ``onednn`` on CPU when jaxal's oneDNN
    extension is installed (``pip install -e ".[onednn]"``; ``jaxal.conv``: the seed
    CNN's training steps 1.3-1.6x faster than on XLA:CPU's, docs/performance.md), else
    ``xla``. The environment variable ``JAXAL_CONV=xla|onednn`` overrides it (read, never
    written).

    Raises:
      ConfigError: JAXAL_CONV names neither, or asks for ``onednn`` without the extension.
    """
    chosen = os.environ.get(CONV_VARIABLE, "").strip().lower()
    if chosen and chosen not in CONV_KERNELS:
        raise ConfigError(f"{CONV_VARIABLE}={chosen!r} is not a convolution kernel; "
                          f"set it to one of {list(CONV_KERNELS)} or unset it")
    from jaxal import conv

    if chosen == "onednn":
        conv.require()
        return "onednn"
    if chosen == "xla":
        return "xla"
    return "onednn" if jax.default_backend() == "cpu" and conv.available() else "xla"


def kernel_choices() -> dict:
    """What ``config.json`` records of the kernels chosen here: the convolution kernel and,
    for oneDNN's, its version."""
    kernel = conv_kernel()
    if kernel != "onednn":
        return {"conv": kernel}
    from jaxal import conv

    return {"conv": kernel, "onednn_version": conv.extension().onednn_version()}


def kernels_line() -> str:
    """'convolutions: oneDNN 3.2.0' or 'convolutions: XLA': what a run prints at start."""
    choices = kernel_choices()
    if choices["conv"] == "onednn":
        return f"convolutions: oneDNN {choices['onednn_version']}"
    return "convolutions: XLA"
