"""How much memory a run needs, estimated before it starts; imports no JAX.

A run holds its data set, the networks it trains (with gradients and Adam's two moments),
and per pool chunk the predictive's per-sample probabilities; a component may hold more
of its own (a deep ensemble's members, a Laplace posterior's weight samples, BatchBALD's
label configurations). Each part is a ``Need``: what it is, its bytes, the product that
gives them and the option that lowers it. The components declare theirs in their options
record (``memory(sizes)``, ``jaxal.components``); ``run_needs`` adds the run's own, and
``check_memory`` refuses a run whose total exceeds the machine's memory, naming the
largest part, before anything is computed. Estimates count float32 arrays and the
largest temporaries; they are meant to catch requests off by orders of magnitude (a
billion samples), not to predict a peak to the megabyte.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from jaxal.errors import ConfigError

FLOAT = 4          # bytes of a float32
# Parameters, gradients and Adam's two moments: four copies of every weight in training.
TRAINING_COPIES = 4
# XLA's memory to compile one unrolled copy of a network's training step (CPU's form of an
# ensemble): measured 25 MB per member on the toy MLP (peak RSS 0.53 GB at M = 2, 5.5 GB at
# M = 200, `python -m jaxal.run --dataset moons --posterior ensemble --ensemble-size M
# --rounds 0 --steps 5`); a larger network needs more, so this is a floor.
UNROLLED_MEMBER_BYTES = 25 << 20


class Sizes(NamedTuple):
    """What a run's memory depends on, known before it starts."""

    examples: int         # pool + validation + test examples held on the device
    input_size: int       # values per example (28 x 28 x 1 for MNIST)
    classes: int
    params: int           # weights of one network
    head_params: int      # weights of its last layer
    chunk: int            # pool points one pass holds at once (--chunk-size, or the pool)
    samples: int          # per-sample probabilities per point of the run's predictive
    samples_flag: str     # the option that sets them ("--samples", "--ensemble-size", ...)
    unrolled: bool        # stacked networks are unrolled in one program (CPU), not vmapped


class Need(NamedTuple):
    what: str             # "posterior samples of one pool chunk"
    bytes: int
    formula: str          # "chunk 4096 x samples 1000 x classes 10 x 4 bytes x 2"
    fix: str              # "lower --samples or --chunk-size"


class ResourceError(ConfigError):
    """A request the machine cannot hold (exit code 2, before any work)."""


def gigabytes(n: int | float) -> str:
    return f"{n / (1 << 30):,.1f} GB" if n >= 1 << 27 else f"{n / (1 << 20):,.0f} MB"


def machine_memory() -> int:
    """Bytes this process may use: the machine's memory, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, "rb") as f:          # a one-line kernel file
                text = f.read(64).decode().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def run_needs(sizes: Sizes, posterior_options, selector_options) -> list[Need]:
    """The run's parts: its data, one network in training, the pool pass's probabilities,
    and what its posterior and selector declare (their options' ``memory``)."""
    needs = [
        Need("the data set", sizes.examples * sizes.input_size * FLOAT,
             f"{sizes.examples:,} examples x {sizes.input_size:,} values x {FLOAT} bytes",
             "lower --pool-size or --val-size"),
        Need("one network in training", sizes.params * FLOAT * TRAINING_COPIES,
             f"{sizes.params:,} weights x {FLOAT} bytes x {TRAINING_COPIES} (weights, "
             "gradients, Adam's moments)", "lower --channels or --hidden"),
        Need("the per-sample probabilities of one pool chunk",
             sizes.chunk * sizes.samples * sizes.classes * FLOAT * 2,
             f"chunk {sizes.chunk:,} x samples {sizes.samples:,} x classes {sizes.classes} x "
             f"{FLOAT} bytes x 2",
             f"lower {sizes.samples_flag} or --chunk-size" if sizes.samples > 1
             else "lower --chunk-size"),
    ]
    for options in (posterior_options, selector_options):
        memory = getattr(options, "memory", None)
        if memory is not None:
            needs += memory(sizes)
    return needs


def check_memory(needs: Sequence[Need], available: int | None = None) -> int:
    """The total of ``needs`` in bytes.

    Raises:
      ResourceError: the total exceeds ``available`` (default: ``machine_memory()``),
        naming the largest part, its product and the option that lowers it.
    """
    total = sum(n.bytes for n in needs)
    available = machine_memory() if available is None else available
    if total > available:
        top = max(needs, key=lambda n: n.bytes)
        raise ResourceError(
            f"this run needs about {gigabytes(total)}, {gigabytes(top.bytes)} of it for "
            f"{top.what} ({top.formula}), and the machine has {gigabytes(available)}; "
            f"{top.fix}")
    return total


def summary(needs: Sequence[Need], available: int | None = None) -> dict:
    """What config.json records and the run prints: the total, each part, the machine."""
    available = machine_memory() if available is None else available
    return {"bytes": int(sum(n.bytes for n in needs)), "machine_bytes": int(available),
            "parts": {n.what: int(n.bytes) for n in needs}}


def describe(estimate: dict) -> str:
    """'memory: about 312 MB of the machine's 23.5 GB (largest: the data set)'."""
    largest = max(estimate["parts"], key=estimate["parts"].get)
    return (f"memory: about {gigabytes(estimate['bytes'])} of the machine's "
            f"{gigabytes(estimate['machine_bytes'])} (largest: {largest})")


def image_folder_need(files: int, shape: tuple[int, int, int]) -> Need:
    """A folder's images decoded at ``shape``: uint8 as read, then float32 for the run."""
    height, width, channels = shape
    return Need(f"{files:,} images decoded at {height} x {width} x {channels}",
                files * height * width * channels * (1 + FLOAT),
                f"{files:,} images x {height} x {width} x {channels} x (1 + {FLOAT}) bytes",
                "give a smaller --image-shape")
