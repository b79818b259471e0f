"""Helpers the tests share (``from helpers import ...``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

# jax._src.dispatch.BACKEND_COMPILE_EVENT: recorded once per XLA compilation, never for a
# call served from the jit cache.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class Compilations:
    """How many XLA compilations a ``count_compilations`` block has run so far."""

    def __init__(self):
        self.count = 0


@contextlib.contextmanager
def count_compilations() -> Iterator[Compilations]:
    """Count the XLA backend compilations run inside the block.

    ``with count_compilations() as compiled: ...`` then ``compiled.count``. A "does not
    recompile" test should also show, with a fresh function, that it sees one.
    """
    compiled = Compilations()

    def listen(event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == BACKEND_COMPILE_EVENT:
            compiled.count += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
