"""Shared fixtures: the prepared MNIST in ../shared, a cache dir no test leaves behind, and
one XLA compilation cache for the whole session."""

from pathlib import Path

import pytest

SHARED_TFDS_DIR = (Path(__file__).parents[1] / ".." / "shared" / "data" / "tfds").resolve()


@pytest.fixture(scope="session", autouse=True)
def _jaxal_cache_dir(tmp_path_factory):
    """Points JAXAL_CACHE_DIR at a session tmp dir, so no test writes to ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXAL_CACHE_DIR", str(tmp_path_factory.mktemp("jaxal_cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _xla_compilation_cache(tmp_path_factory):
    """Keeps every compiled program of the session on disk, keyed by its HLO, so a test
    that builds the same program again (a fresh factory closure, another run of a CLI, a
    subprocess) loads it instead of compiling it: most of a small run's time is
    compilation. One dir per pytest process (xdist worker) and its subprocesses, in the
    session's tmp dir: JAX writes entries without a lock, and nothing outlives the tmp dir.
    Set here, not by jaxal: importing jaxal changes no process-wide setting."""
    import jax

    path = str(tmp_path_factory.mktemp("xla_cache"))
    settings = {"jax_compilation_cache_dir": path,
                "jax_persistent_cache_min_compile_time_secs": 0.0}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings.items():   # subprocesses read the environment
            mp.setenv(name.upper(), str(value))
        old = {name: getattr(jax.config, name) for name in settings}
        for name, value in settings.items():
            jax.config.update(name, value)
        yield
        for name, value in old.items():
            jax.config.update(name, value)


@pytest.fixture(scope="session")
def mnist_data_dir() -> Path:
    """The TFDS data dir holding the real MNIST, prepared (array_record)."""
    if not (SHARED_TFDS_DIR / "mnist").is_dir():
        pytest.fail(
            f"The tests need the prepared MNIST in {SHARED_TFDS_DIR / 'mnist'}: check out "
            "../shared beside the repository (see ../shared/README.md)."
        )
    return SHARED_TFDS_DIR
