"""Data parallelism over devices with ``jax.sharding``: the pool passes split over a mesh.

A run on N devices runs under a 1-D mesh over N local devices whose one axis is
``DATA_AXIS`` (``use_devices``, which enters ``jax.set_mesh``). The functions that evaluate
rows independently, the chunked passes of ``jaxal.chunks.map_chunks`` (pool scoring,
predictive evaluation of the test and validation sets, features for k-center, BADGE and
hybrid, the selectors' distance blocks), and the all-weights curvature's sums over the
labelled set (``split_chunk_rows``), constrain each chunk's rows to that axis
(``data_parallel``); parameters and posterior stay replicated, and XLA's SPMD partitioner
splits the work and gathers the results. Each chunk is padded to a multiple of the device
count, so the chunks themselves, and with them every random draw, are the same on any
number of devices (JAX's random bits do not depend on sharding, and a draw of n rows is a
prefix of a draw of n + pad rows).

Several processes (hosts) join one run through ``jax.distributed``
(``initialize_distributed``, an explicit call the user or the CLI makes): the mesh then
spans every process's devices, each process runs the same program on the same data (the
split is seeded), the pool passes' results are replicated to every process, and process 0
alone writes the outputs (``is_writer``).

Nothing here runs on import. With no mesh, or a mesh of one device, every function here
returns its input: a one-device run is the code path it always was.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

from jaxal.errors import ConfigError

DATA_AXIS = "data"
# A chunk's rows are split over the devices only when each gets at least this many; a
# smaller chunk (a small pool) leaves the devices to the posterior samples instead.
MIN_ROWS_PER_DEVICE = 32
# True while tracing a function whose rows are split already (``map_chunks``): the data
# axis is taken, so the posterior samples inside stay whole on each device.
_ROWS_SPLIT = contextvars.ContextVar("jaxal_rows_split", default=False)


def describe(devices) -> str:
    """'cpu:0, cpu:1' for a list of devices."""
    return ", ".join(device_name(d) for d in devices)


def device_name(device) -> str:
    """'cpu:0'."""
    return f"{device.platform}:{device.id}"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join this process to a multi-process run (``jax.distributed.initialize``), before
    JAX's first computation. Unset values are detected from the cluster (SLURM, Open MPI,
    Kubernetes, Cloud TPU; ``JAX_COORDINATOR_ADDRESS``). On CPU, collectives between
    processes go through gloo (``jax_cpu_collectives_implementation``)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (ValueError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot join the multi-process run ({first}); outside a detected cluster pass "
            "--coordinator HOST:PORT --num-processes N --process-id I to every process"
        ) from None


def is_writer() -> bool:
    """Whether this process writes a run's outputs: process 0 of a multi-process run (the
    others compute the same and read its checkpoint); always, in one process."""
    return jax.process_index() == 0


def check_devices(devices: int | None) -> None:
    """Refuse a device count this run cannot give, naming the devices it has (every
    process's, in a multi-process run)."""
    have = jax.devices()
    if devices is not None and not 1 <= devices <= len(have):
        raise ConfigError(
            f"--devices {devices}: this process has {len(have)} device(s) ({describe(have)});"
            f" pass a number from 1 to {len(have)}, or leave it out to use all (CPU: more host "
            "devices with XLA_FLAGS=--xla_force_host_platform_device_count=N, set before JAX "
            "starts)")


def devices_line(devices: int | None = None) -> str:
    """'devices: 2 (cpu:0, cpu:1); convolutions: XLA': what a run on ``devices`` (None:
    all) will use, and the convolution kernels (``jaxal.batching.kernels_line``)."""
    check_devices(devices)
    from jaxal.batching import kernels_line  # batching imports this module

    chosen = jax.devices()[:devices]
    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return f"devices: {len(chosen)} ({describe(chosen)}{processes}); {kernels_line()}"


def data_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh ``(DATA_AXIS,)`` over the first ``devices`` devices (None: all; every
    process's in a multi-process run)."""
    check_devices(devices)
    chosen = jax.devices()[:devices]
    return jax.make_mesh((len(chosen),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=chosen)


@contextlib.contextmanager
def use_devices(devices: int | None = None) -> Iterator[list]:
    """Run the block on ``devices`` local devices (None: all); yields the devices used.

    More than one: the block runs under ``jax.set_mesh(data_mesh(devices))`` and the pool
    passes split over them. One: nothing is set.
    """
    mesh = data_mesh(devices)
    if mesh.size == 1:
        yield list(mesh.devices.flat)
        return
    with jax.set_mesh(mesh):
        yield list(mesh.devices.flat)


def data_axis_size() -> int:
    """Devices along ``DATA_AXIS`` of the mesh in effect (1: none, or no such axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[DATA_AXIS]


def padded_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of the data-axis size."""
    d = data_axis_size()
    return -(-rows // d) * d


def data_parallel(x: jax.Array, axis: int = 0) -> jax.Array:
    """``x`` with ``axis`` split over the data axis of the mesh in effect (other axes
    replicated); unchanged without one. ``x.shape[axis]`` must be a multiple of its size
    (``padded_rows``)."""
    if data_axis_size() == 1:
        return x
    spec = [None] * x.ndim
    spec[axis] = DATA_AXIS
    return jax.lax.with_sharding_constraint(x, P(*spec))


def replicated(x):
    """``x`` (a pytree) replicated on every device of the mesh in effect, so that every
    process can read it; unchanged without a mesh of several devices."""
    if data_axis_size() == 1:
        return x
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, P()), x)


def pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """``x`` zero-padded along ``axis`` to ``size``."""
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def split_rows(rows: int) -> bool:
    """Whether a chunk of ``rows`` rows is split over the data axis (each device gets at
    least ``MIN_ROWS_PER_DEVICE``); False without a mesh."""
    d = data_axis_size()
    return d > 1 and rows >= d * MIN_ROWS_PER_DEVICE


def split_chunk_rows(xs: jax.Array, axis: int = 1) -> jax.Array:
    """Chunks ``xs`` (rows along ``axis``) with their rows padded to a multiple of the
    device count (zeros: give padding rows weight 0) and split over the data axis, when
    ``split_rows`` says so; ``xs`` itself otherwise. For sums over examples (the
    curvature over the labelled set): each device sums its rows and XLA adds the parts."""
    rows = padded_rows(xs.shape[axis])
    if not split_rows(rows):
        return xs
    return data_parallel(pad_axis(xs, axis, rows), axis=axis)


@contextlib.contextmanager
def rows_split() -> Iterator[None]:
    """Mark the block's tracing as inside a row-split pass (see ``samples_may_split``)."""
    token = _ROWS_SPLIT.set(True)
    try:
        yield
    finally:
        _ROWS_SPLIT.reset(token)


def samples_may_split(group: int) -> bool:
    """Whether a group of ``group`` posterior samples may be split over the data axis: a
    mesh of several devices, a group they divide, and no row split around it."""
    d = data_axis_size()
    return d > 1 and group % d == 0 and not _ROWS_SPLIT.get()
