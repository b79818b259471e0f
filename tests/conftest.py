"""Shared fixtures: the prepared MNIST in ../shared, and a cache dir no test leaves behind."""

from pathlib import Path

import pytest

SHARED_TFDS_DIR = (Path(__file__).parents[1] / ".." / "shared" / "data" / "tfds").resolve()


@pytest.fixture(scope="session", autouse=True)
def _jaxal_cache_dir(tmp_path_factory):
    """Points JAXAL_CACHE_DIR at a session tmp dir, so no test writes to ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXAL_CACHE_DIR", str(tmp_path_factory.mktemp("jaxal_cache")))
        yield


@pytest.fixture(scope="session")
def mnist_data_dir() -> Path:
    """The TFDS data dir holding the real MNIST, prepared (array_record)."""
    if not (SHARED_TFDS_DIR / "mnist").is_dir():
        pytest.fail(
            f"The tests need the prepared MNIST in {SHARED_TFDS_DIR / 'mnist'}: check out "
            "../shared beside the repository (see ../shared/README.md)."
        )
    return SHARED_TFDS_DIR
