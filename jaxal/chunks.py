"""Memory-bounded evaluation over a leading axis in chunks of a static size."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxal.sharding import (
    padded_rows,
    replicated,
    rows_split,
    split_chunk_rows,
    split_rows,
)


def chunk_array(x: jax.Array, chunk_size: int) -> jax.Array:
    """[n, ...] -> [ceil(n / chunk), chunk, ...], the last chunk zero-padded."""
    n = x.shape[0]
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return xs.reshape(num_chunks, chunk_size, *x.shape[1:])


def chunk_at(x: jax.Array, index: jax.Array, chunk: int) -> jax.Array:
    """Chunk ``index`` of ``chunk_array(x, chunk)`` without materialising the padded
    copy of ``x``: rows [index · chunk, (index + 1) · chunk) of ``x``, zeros past its end.

    The slice starts at most at n - chunk (``dynamic_slice`` clamps), and the last chunk's
    rows are rolled to the front with the rows already seen zeroed: the same array as
    the padded chunk, read from ``x`` itself. Requires ``chunk <= n``.
    """
    n = x.shape[0]
    start = jnp.minimum(index * chunk, n - chunk)
    rows = jax.lax.dynamic_slice_in_dim(x, start, chunk)
    shift = index * chunk - start                      # > 0 in the last chunk only

    def tail(rows):
        keep = jnp.arange(chunk) < chunk - shift
        return jnp.where(keep.reshape(-1, *[1] * (x.ndim - 1)),
                         jnp.roll(rows, -shift, axis=0), jnp.zeros((), x.dtype))

    # Only the last chunk pays for the roll and the mask (two copies of a chunk).
    return jax.lax.cond(shift > 0, tail, lambda rows: rows, rows)


def map_chunks(fn: Callable, x: jax.Array, chunk_size: int):
    """``fn(chunk_index, x_chunk)`` over ``x`` in chunks of a static size, concatenated.

    Memory is bounded by one chunk's intermediates (e.g. s x chunk x c per-sample
    probabilities instead of s x n x c). The last chunk is zero-padded and the padding
    dropped from the outputs, which must have the chunk as leading axis and depend on
    each row alone.

    Under a mesh with a data axis (``jaxal.sharding.use_devices``) each chunk's rows are
    split over its devices when each gets ``MIN_ROWS_PER_DEVICE`` or more: the chunk is
    padded to a multiple of the device count, so the chunks, and the rows of each, are the
    same on any number of devices. Smaller chunks leave the devices to the samples.
    """
    n = x.shape[0]
    chunk = min(chunk_size, n)
    # Too few rows to split (a small pool): the rows stay whole and the devices take the
    # posterior samples instead (``jaxal.batching.over_samples``).
    split = split_rows(padded_rows(chunk))

    def one_chunk(index):
        # Each chunk is read from x inside the loop: a padded copy of the whole pool
        # (chunk_array) would double the memory of a large pool.
        rows = chunk_at(x, index, chunk)
        if split:
            rows = split_chunk_rows(rows, axis=0)
        return fn(index, rows)

    # ``fn`` is traced inside: with the rows split, its samples keep to their rows' device.
    with rows_split() if split else contextlib.nullcontext():
        out = jax.lax.map(one_chunk, jnp.arange(-(-n // chunk)))
    # Replicated: every process of a multi-process run reads the whole result.
    return replicated(jax.tree.map(lambda o: o[:, :chunk].reshape(-1, *o.shape[2:])[:n], out))
